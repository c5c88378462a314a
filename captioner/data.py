"""Load Flickr8k in its Kaggle or original layout, with the official or Karpathy split."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from captioner.errors import DataError

SPLITS = ("train", "dev", "test")
IMAGE_DIRS = ("Images", "Flicker8k_Dataset", "Flickr8k_Dataset")
SPLIT_FILES = {s: f"Flickr_8k.{s}Images.txt" for s in SPLITS}
KARPATHY_JSON = "dataset_flickr8k.json"
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "dev", "test": "test"}


@dataclass(frozen=True)
class Flickr8k:
    """Captions per image and the train/dev/test split of one Flickr8k directory."""

    root: Path
    image_dir: Path
    captions: dict[str, list[str]]  # image file name -> raw captions
    splits: dict[str, list[str]]  # split name -> image file names (only images that exist)
    skipped: list[str] = field(default_factory=list)  # caption or split ids whose image is missing

    def image_path(self, name: str) -> Path:
        return self.image_dir / name

    def images(self, split: str | None = None) -> list[str]:
        """Image names of a split, or every captioned image (sorted) when `split` is None."""
        if split is None:
            return sorted(self.captions)
        if split not in self.splits:
            raise DataError(f"Expected a split in {list(self.splits)}. Received: {split!r}.")
        return self.splits[split]

    def summary(self) -> str:
        sizes = ", ".join(f"{s} {len(v)}" for s, v in self.splits.items())
        n_caps = sum(len(c) for c in self.captions.values())
        line = f"Flickr8k at {self.root}: {len(self.captions)} images, {n_caps} captions; split: {sizes}"
        if self.skipped:
            line += f"; skipped {len(self.skipped)} id(s) with no image: {', '.join(self.skipped[:3])}"
        return line


def load_flickr8k(root: str | Path) -> Flickr8k:
    """Read a Flickr8k directory; raises DataError with one actionable line on any problem."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"Flickr8k directory not found: {root}. Pass --data pointing at the dataset folder.")
    image_dir = _find_image_dir(root)
    on_disk = {p.name for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    raw = _read_captions(root)
    captions = {k: v for k, v in raw.items() if k in on_disk}
    skipped = sorted(k for k in raw if k not in on_disk)
    if not captions:
        raise DataError(f"No caption in {root} names an image in {image_dir}: check the images folder.")
    splits, split_skipped = _read_splits(root, captions)
    return Flickr8k(root, image_dir, captions, splits, skipped + split_skipped)


def _find_image_dir(root: Path) -> Path:
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"No images folder in {root}: expected one of {', '.join(IMAGE_DIRS)}.")


def _read_captions(root: Path) -> dict[str, list[str]]:
    if (root / "captions.txt").is_file():
        return _read_kaggle_csv(root / "captions.txt")
    if (root / "Flickr8k.token.txt").is_file():
        return _read_token_file(root / "Flickr8k.token.txt")
    if (root / KARPATHY_JSON).is_file():
        return {img["filename"]: [s["raw"] for s in img["sentences"]] for img in _read_karpathy(root)}
    raise DataError(
        f"No caption file in {root}: expected captions.txt (Kaggle), Flickr8k.token.txt or {KARPATHY_JSON}."
    )


def _add(captions: dict[str, list[str]], image: str, caption: str, where: str) -> None:
    image, caption = image.strip(), caption.strip()
    if not image or not caption:
        raise DataError(f"Malformed caption row at {where}: expected an image name and a caption.")
    captions.setdefault(image, []).append(caption)


def _read_kaggle_csv(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
            raise DataError(f"Malformed {path}: expected the header 'image,caption'. Received: {header}.")
        for line_no, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise DataError(f"Malformed caption row at {path}:{line_no}: expected 'image,caption'.")
            # Captions may contain commas; the csv module handles quoted ones, this handles unquoted ones.
            _add(captions, row[0], ",".join(row[1:]), f"{path}:{line_no}")
    return captions


def _read_token_file(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            key, tab, caption = line.rstrip("\n").partition("\t")
            if not tab:
                raise DataError(f"Malformed caption row at {path}:{line_no}: expected 'image.jpg#N<TAB>caption'.")
            _add(captions, key.rsplit("#", 1)[0], caption, f"{path}:{line_no}")
    return captions


def _read_karpathy(root: Path) -> list[dict]:
    path = root / KARPATHY_JSON
    try:
        images = json.loads(path.read_text(encoding="utf-8"))["images"]
        for img in images:
            img["filename"], img["split"], img["sentences"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"Malformed {path}: expected Karpathy's format with images/filename/split.") from e
    return images


def _read_splits(root: Path, captions: dict[str, list[str]]) -> tuple[dict[str, list[str]], list[str]]:
    if all((root / f).is_file() for f in SPLIT_FILES.values()):
        names = {s: _read_lines(root / f) for s, f in SPLIT_FILES.items()}
    elif (root / KARPATHY_JSON).is_file():
        names = {s: [] for s in SPLITS}
        for img in _read_karpathy(root):
            names[KARPATHY_SPLITS.get(img["split"], "train")].append(img["filename"])
    else:
        missing = [f for f in SPLIT_FILES.values() if not (root / f).is_file()]
        raise DataError(f"Missing split file(s) in {root}: {', '.join(missing)} (or provide {KARPATHY_JSON}).")
    splits = {s: [n for n in v if n in captions] for s, v in names.items()}
    skipped = sorted({n for v in names.values() for n in v if n not in captions})
    return splits, skipped


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
