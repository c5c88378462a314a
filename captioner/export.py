"""Export: bundle a training run into a self-contained model directory, with its scores, model card and manifest."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captioner import familiarity, hub, imagenet
from captioner.data import Flickr8k
from captioner.errors import ModelError
from captioner.files import (
    BEST_WEIGHTS,
    CARD_FILE,
    CONFIG_FILE,
    CONSENSUS_FILE,
    ENSEMBLE_FILE,
    IMAGENET_STAGES_FILE,
    MEMBER_WEIGHTS,
    METRICS_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
    write_atomic,
)
from captioner.model import SHARED_FIELDS, CaptionDecoder, ModelConfig, build_decoder, load_decoder
from captioner.pipeline import Captioner
from captioner.run_setup import tuned_layers
from captioner.text import Vocabulary


def export_run(
    run_dir: Path,
    out: Path,
    data: Flickr8k | None = None,
    log=print,
    members: Sequence[Path] = (),
    average: bool = False,
) -> Path:
    """Bundle a run's best decoder with its ImageNet backbone into a self-contained model directory.

    `members`: further runs or model directories (same backbone and vocabulary) whose decoders join it as one
    ensemble; `run_dir` may be a model directory too (its decoder; the backbone comes from the ImageNet weights).
    With `average`, the members (of the very same config) are averaged into one model instead: a "model soup" of
    runs fine-tuned from one start, as cheap to run as any of them.
    Any of them may carry fine-tuned top stages: the first one's go into the backbone, a further member's into its
    own weights file, and the ImageNet weights of the most stages any member tuned ship as imagenet_stages.npz.
    With `data`, also index the training photos (familiarity calibration and consensus captions), tune the decoding
    on dev, score dev and test into metrics.json, and write the model card. The sha256 manifest comes last, so it
    covers every file.
    """
    from captioner import backbones
    from captioner.model import ImageCaptioner, Member, save_ensemble, save_model_dir

    config, vocab, decoder = _best_decoder(run_dir)
    backbone = backbones.build(config.backbone, include_top=False)
    original = backbones.layer_weights(backbone)
    extra = []
    for member_dir in members:
        member_config, member_vocab, member = _best_decoder(member_dir)
        if member_vocab.words != vocab.words:
            raise ModelError(f"{member_dir} has another vocabulary than {run_dir}; ensemble members must share one.")
        if differs := [f for f in SHARED_FIELDS if getattr(member_config, f) != getattr(config, f)]:
            raise ModelError(
                f"{member_dir} differs from {run_dir} in {', '.join(differs)}; members share one backbone."
            )
        if average and member_config != config:
            raise ModelError(f"{member_dir} has another config than {run_dir}; only one model's runs average.")
        extra.append(Member(member, member_config, tuned_layers(member_dir, member_config, original)))
    tuned = tuned_layers(run_dir, config, original)
    if average:
        tuned = _average_into(decoder, tuned, extra)
        extra = []
    for name, arrays in tuned.items():
        backbone.get_layer(name).set_weights(arrays)
    save_model_dir(out, ImageCaptioner(backbone, decoder), config, vocab.to_json())
    stale = [
        out / CONSENSUS_FILE,  # in the vocabulary's ids
        out / ENSEMBLE_FILE,
        out / IMAGENET_STAGES_FILE,
        *(f for f in out.iterdir() if MEMBER_WEIGHTS.fullmatch(f.name)),
    ]
    for file in stale:
        file.unlink(missing_ok=True)  # an earlier export's
    if stages := max([config.tuned_stages, *(m.config.tuned_stages for m in extra)]):
        imagenet.save_stages(out, backbones.layer_weights(backbones.top(config.backbone, stages, original)))
    if extra:
        save_ensemble(out, extra)
    if data is None:
        hub.write_manifest(out)
        return out
    from captioner.evaluate import encode_split, tune_and_score

    model = Captioner.from_directory(out)
    splits = {split: encode_split(model, data, split) for split in ("dev", "test")}  # read once, for both steps
    index_training_photos(out, data, encode_split(model, data, "train").seen, splits["dev"].seen, model.vocab)
    metrics = tune_and_score(Captioner.from_directory(out), data, encoded=splits, log=log)  # with the index
    write_atomic(out / METRICS_FILE, json.dumps(metrics, indent=2))
    return write_card(out)


def index_training_photos(
    model_dir: Path, data: Flickr8k, train_seen: np.ndarray, dev_seen: np.ndarray, vocab: Vocabulary
) -> None:
    """Write the familiarity calibration and the consensus index of the training photos into a model directory.

    `train_seen`, `dev_seen`: the splits' pooled features (`Encoded.seen`), in the splits' order.
    """
    from captioner.consensus import Consensus

    familiarity.calibrate(train_seen, dev_seen).save(model_dir)
    Consensus.build([data.captions[n] for n in data.images("train")], vocab).save(model_dir, vocab)


def write_card(model_dir: Path) -> Path:
    """Rewrite a model directory's model card and manifest from its files; nothing is trained or scored again.

    metrics.json keeps every number; its `model_id` becomes the directory's logical name (`bundled` or the
    directory's name), never a machine path.
    """
    metrics_file = model_dir / METRICS_FILE
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        metrics["model_id"] = hub.model_id(str(model_dir), model_dir, None)
        write_atomic(metrics_file, json.dumps(metrics, indent=2))
    write_atomic(model_dir / CARD_FILE, hub.model_card(model_dir))
    hub.write_manifest(model_dir)
    return model_dir


def _average_into(decoder: CaptionDecoder, stages: dict[str, list], members: Sequence) -> dict[str, list]:
    """Set `decoder` to the mean weights of itself and the members' decoders; return the mean tuned stages."""

    def mean(*models: list[np.ndarray]) -> list[np.ndarray]:
        return [np.mean(arrays, axis=0) for arrays in zip(*models, strict=True)]

    decoder.set_weights(mean(decoder.get_weights(), *(m.decoder.get_weights() for m in members)))
    return {name: mean(own, *(m.stages[name] for m in members)) for name, own in stages.items()}


def _best_decoder(run_dir: Path) -> tuple[ModelConfig, Vocabulary, CaptionDecoder]:
    """The config, vocabulary and decoder of a run's best (kept) weights, or of an exported model directory."""
    config = ModelConfig.load(run_dir / CONFIG_FILE)
    vocab = Vocabulary.load(run_dir / VOCAB_FILE)
    if (run_dir / BEST_WEIGHTS).is_file():
        decoder = build_decoder(config)
        decoder.load_weights(run_dir / BEST_WEIGHTS)
    else:  # a model directory: its decoder, without the backbone it is saved with
        decoder = load_decoder(config, run_dir / WEIGHTS_FILE)
    return config, vocab, decoder
