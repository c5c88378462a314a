"""Turn any image into backbone input, and cache backbone feature grids for a whole dataset."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captioner.errors import DataError, ImageError
from captioner.files import atomic_path, write_atomic

MAX_PIXELS = 80_000_000  # a 12 MP photo is fine; a 30000×30000 "bomb" is refused before decoding
RESIZE = Image.Resampling.BILINEAR  # closest to how the 224×224 Flickr8k copy was squashed (measured)
FEATURE_VERSION = 1  # bump when preprocessing changes so old caches are not reused

ImageSource = str | Path | bytes | Image.Image | np.ndarray
_REDUCIBLE = ("RGB", "RGBA", "L", "LA", "I", "F", "I;16", "CMYK")


def describe(src: ImageSource, name: str | None = None) -> str:
    """A short name for an image source, used in error messages."""
    if name:
        return name
    if isinstance(src, str | Path):
        return str(src)
    return f"<{type(src).__name__}>"


def load_image(
    src: ImageSource, name: str | None = None, target: int | None = None, longest: int | None = None
) -> np.ndarray:
    """Decode any image to uint8 RGB (H, W, 3), EXIF-rotated; raises ImageError naming the image.

    Large images may decode at a reduced scale: one that keeps both sides at least `target` pixels (backbone
    input), or the longest side at least `longest` (a display copy, about 4× less to decode for a 4:3 photo).
    """
    label = describe(src, name)
    if isinstance(src, np.ndarray):
        return _array_to_rgb(src, label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = _open(src, label)
            w, h = image.size
            if w * h > MAX_PIXELS:
                raise ImageError(
                    f"{label}: image is {w}×{h} = {w * h / 1e6:.0f} MP; the limit is {MAX_PIXELS / 1e6:.0f} MP."
                )
            image.seek(0)  # first frame of animations
            need = (target, target) if target else (_fitted(image.size, longest) if longest else None)
            if need and image.format == "JPEG":
                image.draft("RGB", need)
            image.load()
            factor = min(image.size[0] // need[0], image.size[1] // need[1]) // 2 if need else 1
            if factor > 1 and image.mode in _REDUCIBLE:
                image = image.reduce(factor)  # shrink big PNG/WebP/BMP before any full-size colour conversion
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image, label)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        claimed = re.search(r"\((\d+) pixels\)", str(e))  # PIL refuses at open(), before our own size check
        size = f"it claims {int(claimed.group(1)) / 1e6:,.0f} megapixels, " if claimed else ""
        raise ImageError(
            f"{label}: refused as a decompression bomb: {size}over the {MAX_PIXELS / 1e6:.0f} MP limit."
        ) from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{label}: not a recognised image (expected JPEG, PNG, WebP, BMP or GIF).") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"{label}: cannot decode the image ({e}).") from e


def _fitted(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """(w, h) scaled so the longest side is `longest` (rounded up, so a draft decode never goes below it)."""
    scale = longest / max(size)
    return max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))


def _open(src: ImageSource, label: str) -> Image.Image:
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, bytes | bytearray):
        if not src:
            raise ImageError(f"{label}: the file is empty (0 bytes).")
        return Image.open(io.BytesIO(src))
    path = Path(src)
    if not path.is_file():
        raise ImageError(f"{label}: no such file.")
    if path.stat().st_size == 0:
        raise ImageError(f"{label}: the file is empty (0 bytes).")
    return Image.open(path)


def _to_rgb(image: Image.Image, label: str) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float images: scale to 0..255 instead of letting PIL clip them to white.
        return _array_to_rgb(np.asarray(image), label)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"))


def _array_to_rgb(array: np.ndarray, label: str) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or 0 in a.shape:
        raise ImageError(f"{label}: expected an (H, W), (H, W, 3) or (H, W, 4) array. Received: {a.shape}.")
    if a.shape[0] * a.shape[1] > MAX_PIXELS:
        raise ImageError(f"{label}: image has {a.shape[0] * a.shape[1] / 1e6:.0f} MP; limit {MAX_PIXELS / 1e6:.0f}.")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        hi = 65535.0 if a.max() > 255 else (1.0 if a.max() <= 1.0 else 255.0)
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def prepare_image(src: ImageSource, size: int, name: str | None = None) -> np.ndarray:
    """Decode and squash-resize an image to the backbone input, uint8 (size, size, 3), no crop."""
    rgb = load_image(src, name, target=size)
    if rgb.shape[:2] == (size, size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), RESIZE))


# ---- the on-disk feature cache -------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureCache:
    """A complete, memory-mapped float16 cache of feature grids, rows in `images` order."""

    path: Path
    images: list[str]
    features: np.ndarray  # (N, H, W, C) float16, memory-mapped
    manifest: dict

    def rows(self, names: Sequence[str]) -> np.ndarray:
        """Row indices of the given image names."""
        index = {n: i for i, n in enumerate(self.images)}
        missing = [n for n in names if n not in index]
        if missing:
            raise DataError(f"Feature cache {self.path} lacks {len(missing)} image(s), e.g. {missing[0]}.")
        return np.array([index[n] for n in names])


def cache_key(backbone: str, input_size: int, flip: bool = False, stages: int = 0) -> str:
    """Hash of everything that determines the cached features (`flip`: of the mirrored images; `stages`: see below)."""
    settings = {"backbone": backbone, "size": input_size, "resize": "bilinear", "v": FEATURE_VERSION}
    # Unflipped, uncut caches keep their original key.
    settings |= ({"flip": True} if flip else {}) | ({"cut": stages} if stages else {})
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]


def cache_dir_for(root: str | Path, backbone: str, input_size: int, flip: bool = False, stages: int = 0) -> Path:
    """Where a cache lives: one folder per backbone, input size, mirroring and cut."""
    return Path(root) / f"{backbone}_{input_size}{'_flip' if flip else ''}{f'_cut{stages}' if stages else ''}"


def open_cache(root: str | Path, backbone: str, input_size: int, flip: bool = False, stages: int = 0) -> FeatureCache:
    """Open a complete cache; raises DataError if missing, partial or built otherwise.

    `flip`: of the mirrored images. `stages` > 0: of the activation entering the backbone's last `stages` stages
    (what fine-tuning those stages trains from) instead of the feature grid.
    """
    path = cache_dir_for(root, backbone, input_size, flip, stages)
    manifest = _read_manifest(path)
    if manifest is None or not manifest.get("complete"):
        command = f"captioner features --backbone {backbone}{' --flip' if flip else ''}"
        command += f" --tune-stages {stages}" if stages else ""
        raise DataError(f"No complete feature cache at {path}. Run `{command}` first.")
    if manifest["key"] != cache_key(backbone, input_size, flip, stages):
        raise DataError(f"Feature cache {path} was built with other settings; rerun `captioner features`.")
    shape = tuple(manifest["shape"])
    features = np.memmap(path / "features.f16", dtype=np.float16, mode="r", shape=shape)
    return FeatureCache(path, manifest["images"], features, manifest)


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def use_onednn() -> bool:
    """Ask for TensorFlow's oneDNN CPU kernels (before TensorFlow is imported) unless TF_ENABLE_ONEDNN_OPTS is set."""
    # TensorFlow turns them on by default only on CPUs with AVX-512 VNNI/BF16, AVX-VNNI or AMX, and reads the switch
    # once, at import. On an AVX2-only CPU they run the batched backbone ~2x faster than the default Eigen kernels,
    # but one image at a time about 2x slower, so this is for batch feature extraction, not the app.
    if "tensorflow" in sys.modules and "TF_ENABLE_ONEDNN_OPTS" not in os.environ:
        warnings.warn("TensorFlow is already imported, so its oneDNN kernels stay as they are.", stacklevel=2)
        return False
    return os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1").lower() in ("1", "true")


def _decoded(paths: Sequence[Path], size: int, batch: int, flip: bool = False) -> Iterator[np.ndarray]:
    """Yield uint8 batches (mirrored left to right with `flip`); decoding runs in threads ahead of the model."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(paths), batch):
            chunk = np.stack(list(pool.map(lambda p: prepare_image(p, size), paths[start : start + batch])))
            yield np.ascontiguousarray(chunk[:, :, ::-1]) if flip else chunk


def extract_features(
    image_paths: Sequence[Path],
    root: str | Path,
    backbone: str,
    batch_size: int = 32,
    progress: bool = True,
    flip: bool = False,
    stages: int = 0,
) -> FeatureCache:
    """Write the feature grid of every image into the cache under `root`; resumes.

    `flip`: of its mirror image; `stages` > 0: the activation entering the backbone's last `stages` stages instead.
    """
    from tqdm.auto import tqdm

    from captioner import backbones

    spec = backbones.get(backbone)
    size = spec.input_size
    path = cache_dir_for(root, backbone, size, flip, stages)
    path.mkdir(parents=True, exist_ok=True)
    names = [p.name for p in image_paths]
    key = cache_key(backbone, size, flip, stages)
    manifest = _read_manifest(path)
    if manifest and manifest.get("complete") and manifest["key"] == key and manifest["images"] == names:
        return open_cache(root, backbone, size, flip, stages)

    # ImageNet weights, BatchNorm folded: the whole backbone, or what lies below its last `stages` stages.
    model = backbones.split(backbone, stages)[0] if stages else backbones.build_inference(backbone)
    grid_shape = tuple(int(d) for d in model.output_shape[1:])
    shape = (len(names), *grid_shape)
    fresh = not (manifest and manifest["key"] == key and manifest["images"] == names)
    if fresh:
        manifest = {
            "key": key,
            "backbone": backbone,
            "input_size": size,
            "stages": stages,
            "shape": list(shape),
            "images": names,
            "complete": False,
        }
        write_atomic(path / "manifest.json", json.dumps(manifest))
        np.save(path / "done.npy", np.zeros(len(names), dtype=bool))
    done = np.load(path / "done.npy", allow_pickle=False)
    data = np.memmap(path / "features.f16", dtype=np.float16, mode="r+" if not fresh else "w+", shape=shape)
    todo = np.flatnonzero(~done)
    bar = tqdm(
        total=len(names), initial=len(names) - len(todo), unit="img", disable=not progress, desc=f"features {backbone}"
    )
    todo_paths = [image_paths[i] for i in todo]
    for start, batch in zip(range(0, len(todo), batch_size), _decoded(todo_paths, size, batch_size, flip), strict=True):
        rows = todo[start : start + len(batch)]
        data[rows] = model.predict_on_batch(batch).astype(np.float16)
        data.flush()
        # Mark rows done only after their features are on disk, so a crash loses at most one batch.
        done[rows] = True
        with atomic_path(path / "done.npy", suffix=".npy") as tmp:
            np.save(tmp, done)
        bar.update(len(rows))
    bar.close()
    del data
    manifest["complete"] = True
    write_atomic(path / "manifest.json", json.dumps(manifest))
    return open_cache(root, backbone, size, flip, stages)
