"""What the backbone sees (captioner.imagenet) and the unfamiliar-photo signal (captioner.familiarity)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, SHARED, needs_shared

from captioner import familiarity, hub, imagenet, paths
from captioner.files import FAMILIARITY_FILE, IMAGENET_HEAD_FILE, IMAGENET_LABELS_FILE, MANIFEST_FILE

REFERENCE = SHARED / "backbones" / "effnet_lite_reference.npz"


def test_the_bundled_model_carries_its_imagenet_head_and_calibration_under_its_manifest_within_8_mb():
    # Catches a head or calibration that is missing from the bundle, unverified, or grows past its size budget.
    files = json.loads((paths.BUNDLED_MODEL_DIR / MANIFEST_FILE).read_text())["files"]
    extras = [IMAGENET_HEAD_FILE, IMAGENET_LABELS_FILE, FAMILIARITY_FILE]
    assert set(extras) <= set(files)
    hub.verify_manifest(paths.BUNDLED_MODEL_DIR)
    assert sum((paths.BUNDLED_MODEL_DIR / f).stat().st_size for f in extras) <= 8 * 2**20
    head = imagenet.ImageNetHead.load(paths.BUNDLED_MODEL_DIR)
    assert head.kernel.shape == (1280, 1000) and head.labels[0] == "tench" and head.labels[281] == "tabby"


def test_the_bundled_head_over_the_imagenet_view_reproduces_the_reference_imagenet_logits():
    # Catches a head taken from the wrong layer, pooled wrongly, sliced from a different backbone than captions use,
    # or read from the fine-tuned stages' grid instead of the original ImageNet stages'.
    needs_shared(REFERENCE)
    from captioner.pipeline import Captioner

    cap = Captioner.from_directory(paths.BUNDLED_MODEL_DIR)
    ref = np.load(REFERENCE)
    encoded = cap.encode(list(ref["lite2_input_uint8"]))  # the reference's own 260×260 inputs
    logits = cap.imagenet.logits(encoded.seen)
    np.testing.assert_allclose(logits, ref["lite2_logits"], atol=0.15)
    assert (logits.argmax(1) == ref["lite2_logits"].argmax(1)).all()
    cat = list(ref["photos"]).index("cat.png")
    assert cap.imagenet.top(encoded.seen[cat : cat + 1])[0][0].label == "Egyptian cat"


def test_top_classes_are_sorted_probabilities_that_sum_to_at_most_one():
    # Catches an unnormalised softmax or a top-k that is not most-probable first.
    rng = np.random.default_rng(0)
    head = imagenet.ImageNetHead(rng.normal(0, 0.1, (8, 1000)), np.zeros(1000), [f"c{i}, x" for i in range(1000)])
    top = head.top(rng.random((2, 3, 3, 8)), k=5)
    assert [len(t) for t in top] == [5, 5]
    for t in top:
        ps = [c.p for c in t]
        assert ps == sorted(ps, reverse=True) and 0 < sum(ps) <= 1 and all("," not in c.label for c in t)


def test_familiarity_flags_features_far_from_training_and_round_trips_through_its_file(tmp_path):
    # Catches a score with the wrong sign, a threshold not taken from dev, or a saved file that loads differently.
    rng = np.random.default_rng(0)
    centre = rng.random(64)
    train, dev = centre + rng.normal(0, 0.05, (300, 64)), centre + rng.normal(0, 0.05, (100, 64))
    fam = familiarity.calibrate(train, dev, dims=16, k=5, quantile=0.95)
    assert np.mean(fam.unfamiliar(dev)) == pytest.approx(0.05, abs=0.011)
    far = rng.random((5, 64))[:, ::-1] * np.linspace(0, 1, 64)  # other directions entirely
    assert all(fam.unfamiliar(far))
    again = familiarity.Familiarity.load(fam.save(tmp_path).parent)
    np.testing.assert_allclose(again.score(dev), fam.score(dev), atol=2e-3)
    assert familiarity.Familiarity.load(tmp_path / "elsewhere") is None


def test_cli_caption_json_reports_imagenet_classes_and_whether_the_photo_is_unfamiliar():
    # Catches the CLI dropping the ImageNet view or the unfamiliar flag from its JSON.
    photo = sorted((REPO / "assets" / "examples").glob("*.jpg"))[0]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-m", "captioner.cli", "caption", "--json", str(photo)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=True,
    )  # fmt: skip
    (result,) = json.loads(out.stdout)
    assert len(result["imagenet"]) == 5 and set(result["imagenet"][0]) == {"label", "p"}
    assert result["unfamiliar"] is False  # a Flickr8k test photo
