"""Flickr8k loading in both layouts, and one clear error for every kind of bad dataset."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import FLICKR8K, needs_shared
from PIL import Image

from captioner.data import load_flickr8k
from captioner.errors import DataError

IMAGES = ["1_a.jpg", "2_b.jpg", "3_c.jpg"]


def _images(root, folder="Images"):
    (root / folder).mkdir(parents=True)
    for name in IMAGES:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(root / folder / name)


def _splits(root):
    for split, names in {"train": IMAGES[:1], "dev": IMAGES[1:2], "test": IMAGES[2:]}.items():
        (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")


def test_kaggle_layout_with_official_split(tmp_path):
    _images(tmp_path)
    rows = ["image,caption"] + [f'{n},"A dog, running ."' for n in IMAGES for _ in range(5)]
    (tmp_path / "captions.txt").write_text("\n".join(rows) + "\n")
    _splits(tmp_path)
    data = load_flickr8k(tmp_path)
    assert data.images("train") == ["1_a.jpg"] and data.images("test") == ["3_c.jpg"]
    assert data.captions["2_b.jpg"] == ["A dog, running ."] * 5


def test_original_layout_skips_and_reports_captions_without_image(tmp_path):
    _images(tmp_path, "Flicker8k_Dataset")
    lines = [f"{n}#{i}\tA cat sits ." for n in IMAGES for i in range(5)]
    lines.append("2258277193_586949ec62.jpg.1#0\tbogus id")
    (tmp_path / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    _splits(tmp_path)
    data = load_flickr8k(tmp_path)
    assert data.skipped == ["2258277193_586949ec62.jpg.1"]
    assert "skipped 1" in data.summary()
    assert len(data.captions) == 3


def test_karpathy_json_gives_the_split(tmp_path):
    _images(tmp_path)
    (tmp_path / "captions.txt").write_text("image,caption\n" + "".join(f"{n},a cap\n" for n in IMAGES))
    split = {"1_a.jpg": "train", "2_b.jpg": "val", "3_c.jpg": "test"}
    images = [{"filename": n, "split": s, "sentences": [{"raw": "a cap"}]} for n, s in split.items()]
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": images}))
    assert load_flickr8k(tmp_path).splits == {"train": ["1_a.jpg"], "dev": ["2_b.jpg"], "test": ["3_c.jpg"]}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("nothing", "Flickr8k directory not found"),
        ("no_images", "No images folder"),
        ("no_captions", "No caption file"),
        ("bad_header", "expected the header 'image,caption'"),
        ("bad_row", "Malformed caption row at"),
        ("bad_token_row", "Malformed caption row at"),
        ("no_split", "Missing split file(s)"),
    ],
)
def test_bad_dataset_gives_one_clear_error(tmp_path, setup, message):
    root = tmp_path / "data"
    if setup != "nothing":
        _images(root) if setup != "no_images" else root.mkdir()
        if setup in ("bad_header", "bad_row", "no_split", "no_images"):
            header = "file,text" if setup == "bad_header" else "image,caption"
            row = "1_a.jpg" if setup == "bad_row" else "1_a.jpg,a cap"
            (root / "captions.txt").write_text(f"{header}\n{row}\n")
        if setup == "bad_token_row":
            (root / "Flickr8k.token.txt").write_text("1_a.jpg#0 no tab here\n")
        if setup not in ("no_split",):
            _splits(root)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_flickr8k(root)


def test_cli_reports_a_bad_dataset_in_one_line_and_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "captioner.cli", "features", "--data", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: Flickr8k directory not found")


@pytest.mark.slow
def test_shared_flickr8k_has_the_official_split():
    needs_shared(FLICKR8K)
    data = load_flickr8k(FLICKR8K)
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 6000, "dev": 1000, "test": 1000}
    assert len(data.captions) == 8091 and all(len(c) == 5 for c in data.captions.values())
