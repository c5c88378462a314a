"""Export: bundle a training run into a self-contained model directory, with its scores, model card and manifest."""

from __future__ import annotations

import json
from pathlib import Path

from captioner import hub
from captioner.data import Flickr8k
from captioner.files import CARD_FILE, CONFIG_FILE, METRICS_FILE, VOCAB_FILE, write_atomic
from captioner.model import ModelConfig, build_decoder
from captioner.text import Vocabulary
from captioner.train import BEST_WEIGHTS


def export_run(run_dir: Path, out: Path, data: Flickr8k | None = None, log=print) -> Path:
    """Bundle a run's best decoder with its ImageNet backbone into a self-contained model directory.

    With `data`, also tune the decoding on dev, score dev and test into metrics.json, and write the model card. The
    sha256 manifest comes last, so it covers every file.
    """
    from captioner import backbones
    from captioner.model import ImageCaptioner, save_model_dir

    config = ModelConfig.load(run_dir / CONFIG_FILE)
    vocab = Vocabulary.load(run_dir / VOCAB_FILE)
    decoder = build_decoder(config)
    decoder.load_weights(run_dir / BEST_WEIGHTS)
    model = ImageCaptioner(backbones.build(config.backbone, include_top=False), decoder)
    save_model_dir(out, model, config, vocab.to_json())
    if data is None:
        hub.write_manifest(out)
        return out
    from captioner.evaluate import tune_and_score
    from captioner.pipeline import Captioner

    metrics = tune_and_score(Captioner.from_directory(out), data, log=log)
    write_atomic(out / METRICS_FILE, json.dumps(metrics, indent=2))
    return write_card(out)


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
