"""Shared fixtures: locating ../shared, and a tiny random-weight model directory for fast tests."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FLICKR8K = SHARED / "flickr8k"
PHOTOS = SHARED / "photos"


def in_ci() -> bool:
    """True under CI=true, where .ci/run has put ../shared beside the clone and installed every extra."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def needs(available: bool, reason: str) -> None:
    """Skip the calling test when something it needs is absent; under CI=true fail instead, so CI cannot go green
    without the tests that need ../shared, the weight wheels or the browser."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason)


def needs_shared(path: Path = SHARED) -> None:
    """Skip (fail under CI=true) the calling test with a clear reason when ../shared (or a part of it) is absent."""
    needs(path.exists(), f"needs {path} (the team's ../shared data folder); absent on a fresh clone")


def needs_module(module: str, reason: str) -> None:
    """Skip (fail under CI=true) the calling test when a module (a weight wheel, playwright) is not installed."""
    needs(importlib.util.find_spec(module) is not None, reason)


TINY_CAPTIONS = {
    "red.png": ["a red square", "a red block", "red square on nothing", "a big red square", "red"],
    "blue.png": ["a blue circle", "blue round shape", "a blue disk", "the blue circle", "blue"],
    "green.png": ["two green lines", "green stripes", "a green pattern", "green lines", "green"],
}


# Output biases that make a random decoder say a few real words: <end> is rare, <pad>/<start>/<unk> never chosen.
TALKATIVE_BIAS = {"<pad>": -20.0, "<start>": -20.0, "<unk>": -20.0, "<end>": -4.0}


def tiny_model(talkative: bool = False):
    """(ImageCaptioner, ModelConfig, Vocabulary): a random Lite0 backbone and a small decoder, in memory."""
    import keras

    from captioner import backbones
    from captioner.model import ImageCaptioner, ModelConfig, build_decoder
    from captioner.text import Vocabulary

    keras.utils.set_random_seed(0)
    vocab = Vocabulary.build([c for caps in TINY_CAPTIONS.values() for c in caps], min_count=1)
    config = ModelConfig(backbone="efficientnet_lite0", image_size=224, grid=(7, 7), vocab_size=len(vocab),
                         max_length=6, units=32, feature_dim=32, attention_units=16, image_input=False)  # fmt: skip
    model = ImageCaptioner(backbones.build(config.backbone, weights=None), build_decoder(config))
    if talkative:
        kernel, bias = model.decoder.logits.get_weights()
        for word, value in TALKATIVE_BIAS.items():
            bias[vocab.id(word)] = value
        model.decoder.logits.set_weights([kernel, bias])
    return model, config, vocab


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A complete model directory (random Lite0 backbone + small decoder) that loads like the bundled one."""
    from captioner.hub import write_manifest
    from captioner.model import save_model_dir

    model, config, vocab = tiny_model()
    path = save_model_dir(tmp_path_factory.mktemp("tiny") / "model", model, config, vocab.to_json())
    write_manifest(path)
    return path


@pytest.fixture(scope="session")
def photo_bytes() -> bytes:
    """A small real-looking JPEG (gradient + noise), generated so tests never need ../shared."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, 320)[None, :, None] * np.ones((240, 1, 3)) + rng.normal(0, 20, (240, 320, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def talkative_copy(model_dir: Path, out: Path, end_bias: float = TALKATIVE_BIAS["<end>"]) -> Path:
    """A copy of the tiny model whose logits rarely pick <end> and never <pad>/<start>/<unk>.

    Random weights often end a caption at once; this copy always says a few real words, so attention has something
    to show. Only the output bias changes, so it loads and runs exactly like the original. A higher `end_bias` makes
    `<end>` likely enough at every word that the length penalty α decides how long the beam caption is.
    """
    import json
    import shutil

    import h5py

    from captioner.hub import write_manifest

    shutil.copytree(model_dir, out)
    words = json.loads((out / "vocab.json").read_text())["words"]
    with h5py.File(out / "model.weights.h5", "r+") as f:
        vectors = []  # the logits bias is the only (V,) vector whose kernel ends in V too
        f.visititems(lambda n, o: vectors.append(n) if getattr(o, "shape", None) == (len(words),) else None)
        (name,) = [n for n in vectors if f[n.replace("vars/1", "vars/0")].shape[-1] == len(words)]
        bias = f[name][()]
        for word, value in {**TALKATIVE_BIAS, "<end>": end_bias}.items():
            bias[words.index(word)] = value
        f[name][...] = bias
    write_manifest(out)
    return out


def rerank_to_second_caption(model_dir: Path, image) -> tuple:
    """Make a model directory rerank `image`'s beam-3 n-best to its second caption (decoding tuned so, weight 0).

    Adds a familiarity calibration with two training photos like the image, whose captions are that caption, and four
    unlike it, with other captions, and the consensus index of those captions (the manifest is left as it was).
    Returns (encoded, own beam caption, its second caption).
    """
    import json

    from captioner import familiarity
    from captioner.consensus import Consensus
    from captioner.pipeline import Captioner

    cap = Captioner.from_directory(model_dir)
    encoded = cap.encode([image], ["photo"])
    own = cap.decode(encoded, 3, 0.7, consensus=0)[0]
    second = own.n_best[1]
    noise = np.random.default_rng(0).normal(0, 0.01, (6, encoded.seen.shape[1]))
    train = np.concatenate([np.repeat(encoded.seen, 2, axis=0), np.repeat(-encoded.seen, 4, axis=0)]) + noise
    familiarity.calibrate(train, encoded.seen, dims=4).save(model_dir)
    others = [[["a", "red", "square"]], [["a", "blue", "circle"]], [["two", "green", "lines"]], [["big", "red"]]]
    Consensus([[second.tokens] * 2] * 2 + others).save(model_dir, cap.vocab)
    tuned = {"beam_size": 3, "length_penalty": 0.7, "block_repeats": False, "consensus": 2, "consensus_weight": 0}
    (model_dir / "metrics.json").write_text(json.dumps({"decoding": tuned}))
    return encoded, own, second
