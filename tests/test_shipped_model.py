"""The bundled model and report: small, verified, loadable offline, and reproducing their own numbers."""

from __future__ import annotations

import json

import pytest
from conftest import FLICKR8K, PHOTOS, needs_module, needs_shared

from captioner import Captioner
from captioner.evaluate import evaluate_split
from captioner.files import sha256_file
from captioner.hub import verify_manifest
from captioner.metrics import tokenize
from captioner.paths import BUNDLED_MODEL_DIR, BUNDLED_REPORT
from captioner.report import read_report

THUMBS = BUNDLED_REPORT.parent / "thumbs"


@pytest.fixture(scope="module")
def bundled():
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"  # the default model must never need the network
    try:
        yield Captioner.load()
    finally:
        os.environ.pop("HF_HUB_OFFLINE")


def test_bundled_model_is_small_and_verified():
    total = sum(p.stat().st_size for p in BUNDLED_MODEL_DIR.iterdir())
    assert total <= 60e6, f"assets/model is {total / 1e6:.1f} MB (budget 60 MB)"
    verify_manifest(BUNDLED_MODEL_DIR)
    card = (BUNDLED_MODEL_DIR / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: keras" in card


def test_bundled_model_loads_offline_by_default(bundled):
    assert bundled.info.path.resolve() == BUNDLED_MODEL_DIR.resolve()
    assert bundled.info.weights_sha256 == sha256_file(BUNDLED_MODEL_DIR / "model.weights.h5")


def test_bundled_model_captions_real_photos_sensibly(bundled):
    needs_shared(PHOTOS)
    photos = sorted(PHOTOS.glob("*.jpg"))
    captions = bundled.caption(photos, beam_size=3)
    for c in captions:
        assert 3 <= len(c.tokens) <= bundled.config.max_length
    # Flickr8k photos show people and dogs: a working model names them in most captions.
    subjects = {"man", "woman", "boy", "girl", "dog", "dogs", "people", "child", "children", "person", "men"}
    assert sum(bool(subjects & set(c.tokens)) for c in captions) >= len(captions) // 2, [c.text for c in captions]


def test_bundled_report_matches_the_bundled_model():
    report = read_report(BUNDLED_REPORT)
    assert report["split"] == "test" and len(report["images"]) == 1000
    assert report["model"]["weights_sha256"] == sha256_file(BUNDLED_MODEL_DIR / "model.weights.h5")
    metrics = json.loads((BUNDLED_MODEL_DIR / "metrics.json").read_text())
    for mode in ("greedy", "beam"):
        for key in ("bleu1", "bleu4", "cider"):
            assert report["corpus"][mode][key] == pytest.approx(metrics["corpus"][mode][key], abs=1e-6)
    thumbs = {p.name for p in THUMBS.glob("*.jpg")}
    assert {img["image"] for img in report["images"]} <= thumbs
    assert sum(p.stat().st_size for p in THUMBS.glob("*.jpg")) <= 12e6


def test_coco_caption_scores_the_bundled_report_as_we_do():
    # Catches our BLEU or CIDEr-D drifting from the reference implementation the published numbers use.
    needs_module("pycocoevalcap", "coco-caption's scorers come with the dev extra")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    report = read_report(BUNDLED_REPORT)
    # Tokenised as our scorer does: coco-caption's own tokeniser needs Java, and both lowercase and drop punctuation.
    refs = {i: [" ".join(tokenize(c)) for c in im["references"]] for i, im in enumerate(report["images"])}
    for mode in ("greedy", "beam"):
        hyps = {i: [" ".join(tokenize(im[mode]["caption"]))] for i, im in enumerate(report["images"])}
        bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
        cider, _ = Cider().compute_score(refs, hyps)
        ours = report["corpus"][mode]
        assert [100 * b for b in bleu] == pytest.approx([ours[f"bleu{n}"] for n in range(1, 5)], abs=0.01), mode
        assert cider == pytest.approx(ours["cider"], abs=1e-6), mode


@pytest.mark.slow
def test_evaluate_reproduces_the_bundled_test_numbers():
    needs_shared(FLICKR8K)
    metrics = json.loads((BUNDLED_MODEL_DIR / "metrics.json").read_text())
    beam = metrics["decoding"]["beam_size"]
    report = evaluate_split(None, FLICKR8K, "test", beam)
    for mode in ("greedy", "beam"):
        for key in ("bleu1", "bleu2", "bleu3", "bleu4"):
            assert report["corpus"][mode][key] == pytest.approx(metrics["corpus"][mode][key], abs=0.3), (mode, key)
