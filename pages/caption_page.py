"""Caption page: upload photos (or pick examples), get greedy and beam captions with per-word attention."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st
from PIL import ExifTags, Image

from captioner import features, viz
from captioner.errors import CaptionerError, ImageError
from pages import loader, places, sidebar, widgets

if TYPE_CHECKING:
    from captioner.decode import Caption
    from captioner.imagenet import Label
    from captioner.pipeline import Captioner, Encoded

LOG = logging.getLogger("captioner.app")

DISPLAY_SIDE = 800  # the photo kept per upload for display and overlays
DISPLAY_QUALITY = 85  # JPEG quality of the photo as shown
NON_JPEG_PIXELS = 50_000_000  # PNG, WebP… must be decoded whole (JPEGs decode at reduced scale): cap their memory
HEATMAPS_BY_DEFAULT = 3  # batches up to this size open their attention heatmaps without a click
FORMATS = "JPEG, PNG, WebP, BMP or GIF"
UNFAMILIAR_NOTICE = (
    "Unfamiliar photo: it is unlike the photos this model learned from (Flickr8k: mostly people, dogs and outdoor "
    "scenes), so its caption may be wrong."
)


@dataclass(frozen=True)
class Photo:
    """One decoded upload: a display copy, its backbone features, and notes about how it was read."""

    name: str
    digest: str
    image: np.ndarray  # (H, W, 3) uint8, longest side ≤ DISPLAY_SIDE, EXIF-rotated
    jpeg: bytes  # `image` as the page shows it, encoded once (st.image re-encoded an array on every rerun)
    encoded: Encoded  # one image
    original_size: tuple[int, int]  # (width, height) upright, at full resolution
    notes: list[str] = field(default_factory=list)
    seen: list[Label] = field(default_factory=list)  # the backbone's top ImageNet classes (if the model has its head)
    unfamiliar: bool = False  # unlike the training photos (if the model carries the calibration)


@dataclass(frozen=True)
class Upload:
    """One file to caption; `data` stays empty for a file over the limit, which is refused by its size alone."""

    name: str
    data: bytes
    size: int


@dataclass(frozen=True)
class Result:
    """What the page shows for one upload: either a photo with both captions, or the reason it failed."""

    name: str
    photo: Photo | None = None
    greedy: Caption | None = None
    beam: Caption | None = None
    error: str | None = None


# ---- reading uploads (no Streamlit here) ------------------------------------------------------------------------


def digest(data: bytes) -> str:
    """Content hash of an upload; results are cached by it, so changing settings never re-runs the backbone."""
    return hashlib.sha256(data).hexdigest()


def check_size(name: str, size: int, max_bytes: int) -> None:
    """Raise ImageError naming the file if it is over the app's upload limit."""
    if size > max_bytes:
        raise ImageError(
            f"{name}: the file is {size / 2**20:.1f} MB; the upload limit is {max_bytes / 2**20:g} MB. "
            "Resize or recompress it."
        )


def read_photo(cap: Captioner, name: str, data: bytes, max_bytes: int | None = None) -> Photo:
    """Validate, decode and encode one upload; raises ImageError naming the file."""
    if max_bytes is not None:
        check_size(name, len(data), max_bytes)
    notes, size = _inspect(name, data)
    with loader.decode_lock():
        pixels = cap.prepare(data, name)  # the same preprocessing as `captioner caption`
        image = viz.fit(features.load_image(data, name, longest=DISPLAY_SIDE), DISPLAY_SIDE)
    jpeg = viz.to_jpeg(Image.fromarray(image), DISPLAY_QUALITY)
    with loader.model_lock():
        encoded = cap.encode([pixels], [name])
    # Both read the features just computed: no second backbone pass.
    seen = cap.imagenet.top(encoded.seen)[0] if cap.imagenet is not None else []
    unfamiliar = cap.familiarity is not None and cap.familiarity.unfamiliar(encoded.seen)[0]
    return Photo(name, digest(data), image, jpeg, encoded, size, notes, seen, unfamiliar)


def _inspect(name: str, data: bytes) -> tuple[list[str], tuple[int, int]]:
    """Notes about an image that needed converting, and its upright size.

    Raises ImageError for a non-JPEG too large to decode within the app's memory budget.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, mode, size = im.format, im.mode, im.size
            animated = bool(getattr(im, "is_animated", False))
            frames = getattr(im, "n_frames", 1) if animated and fmt == "GIF" and len(data) < 2**20 else None
            orientation = _orientation(im)
            transparent = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info)
    except Exception:  # unreadable: load_image reports it with the right message
        return [], (0, 0)
    w, h = size
    notes = []
    if animated:
        notes.append(f"animated ({frames or 'several'} frames): captioning the first frame")
    if mode == "CMYK":
        notes.append("CMYK colours converted to RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        notes.append("16-bit or float image scaled to 8 bits")
    if mode in ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I", "F"):
        notes.append("grayscale: the model sees it as a gray RGB photo")
    if transparent:
        notes.append("transparent areas shown on white")
    if orientation not in (0, 1):
        notes.append("rotated upright as its EXIF orientation says")
    upright = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    if min(w, h) < 32:
        notes.append(f"only {w}×{h} pixels: far below what the model was trained on, so the caption is a guess")
    if max(w, h) > 4 * max(1, min(w, h)):
        notes.append("very elongated: it is squashed to a square for the model")
    if fmt != "JPEG" and w * h > NON_JPEG_PIXELS:
        raise ImageError(
            f"{name}: a {fmt} image of {w}×{h} = {w * h / 1e6:.0f} MP; the app decodes {fmt} images up to "
            f"{NON_JPEG_PIXELS / 1e6:.0f} MP (JPEGs of any size). Save it as JPEG or downscale it."
        )
    return notes, upright


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation from the header alone (PIL's PNG getexif would decode the whole image to find it)."""
    if im.format == "PNG":
        exif = Image.Exif()
        if "exif" in im.info:
            exif.load(im.info["exif"])
    else:
        exif = im.getexif()
    return int(exif.get(ExifTags.Base.Orientation, 1) or 1)


def captions_csv(results: Sequence[Result], settings: sidebar.Settings) -> bytes:
    """The batch's captions as CSV: one row per file, failures included with their error."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "greedy_caption", "greedy_log_prob", "beam_caption", "beam_log_prob", "beam_score",
                     "beam_size", "length_penalty", "error"])  # fmt: skip
    for r in results:
        if r.greedy is None or r.beam is None:
            writer.writerow([r.name, "", "", "", "", "", "", "", r.error or ""])
            continue
        writer.writerow([r.name, r.greedy.text, f"{r.greedy.log_prob:.4f}", r.beam.text, f"{r.beam.log_prob:.4f}",
                         f"{r.beam.score:.4f}", settings.beam_size, settings.length_penalty, ""])  # fmt: skip
    return buf.getvalue().encode("utf-8")


def captions_json(results: Sequence[Result], settings: sidebar.Settings, cap: Captioner) -> bytes:
    """The batch's captions as JSON, with word probabilities, the beam's n-best list and the model's identity."""

    def entry(c: Caption) -> dict:
        probs = viz.word_probabilities(c)
        words = [{"word": w, "p": round(float(p), 4)} for w, p in zip(c.tokens, probs, strict=True)]
        return {"caption": c.text, "log_prob": round(c.log_prob, 4), "score": round(c.score, 4), "words": words}

    images = []
    for r in results:
        if r.greedy is None or r.beam is None:
            images.append({"file": r.name, "error": r.error})
            continue
        beam = {**entry(r.beam), "n_best": [entry(h) for h in r.beam.n_best]}
        image = {"file": r.name, "greedy": entry(r.greedy), "beam": beam}
        if r.photo is not None:
            image["imagenet"] = [c.to_json() for c in r.photo.seen]
            image["unfamiliar"] = r.photo.unfamiliar
        images.append(image)
    doc = {
        "model": {"source": cap.info.source, "commit": cap.info.commit, "weights_sha256": cap.info.weights_sha256},
        "decoding": {
            "beam_size": settings.beam_size,
            "length_penalty": settings.length_penalty,
            "max_length": cap.config.max_length,
            "block_repeats": settings.block_repeats,
            "consensus": settings.consensus,
            "consensus_weight": settings.consensus_weight,
        },
        "images": images,
    }
    return json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")


# ---- the page ------------------------------------------------------------------------------------------------------


def caption_page() -> None:
    """Upload photos or pick examples; show captions, n-best lists and attention; export the batch."""
    st.title("Caption photos")
    st.caption(
        f"{FORMATS}; any size or aspect ratio; EXIF orientation is honoured. Captions come from greedy decoding and "
        "from beam search with the sidebar's settings."
    )
    uploads = uploads_ui()
    if not uploads:
        st.info("Upload one or more photos, or pick an example, to caption them.", icon="🖼️")
        return
    cap = loader.captioner_ui()
    if cap is None:
        return
    if not sidebar.has_model_defaults():
        st.rerun()  # the sidebar was drawn before the model loaded: draw it with the model's tuned settings first
    settings = sidebar.current_settings()
    results = caption_batch_ui(cap, uploads, settings)
    if not results:
        return
    summary_ui(results, settings, cap)
    default_heatmaps = len(results) <= HEATMAPS_BY_DEFAULT
    for index, result in enumerate(results):
        if result.photo is not None and result.greedy is not None and result.beam is not None:
            photo_ui(result.name, result.photo, result.greedy, result.beam, settings, index, default_heatmaps)
        else:
            st.error(result.error or f"{result.name}: not captioned.", icon="⚠️")


def uploads_ui() -> list[Upload]:
    """The uploader and the example picker; returns the files in upload order."""
    limit_mb = places.upload_limit_mb()
    files = st.file_uploader(
        "Photos",
        type=["image"],
        accept_multiple_files=True,
        key="uploads",
        help=f"{FORMATS}, up to {limit_mb:g} MB each. Drop several at once to caption a batch.",
    )
    examples = places.example_photos()
    picked: list[str] = []
    if examples:
        picked = st.multiselect(
            "…or try example photos",
            [p.name for p in examples],
            key="examples",
            help="Photos from the Flickr8k test split shipped with the app.",
        )
    max_bytes = int(limit_mb * 2**20)
    # A file over the limit is never read into a second copy: its size alone decides.
    uploads = [Upload(f.name, f.getvalue() if f.size <= max_bytes else b"", f.size) for f in files or []]
    # Behind a toggle: the camera widget asks the browser for camera access as soon as it is drawn.
    if st.toggle("Take a photo with the camera", key="use_camera", help="Captioned like an upload."):
        shot = st.camera_input("Camera", key="camera")
        if shot is not None:
            data = shot.getvalue()
            uploads.insert(0, Upload(f"camera-{digest(data)[:8]}.jpg", data, len(data)))
    by_name = {p.name: p for p in examples}
    for name in picked:
        try:
            data = by_name[name].read_bytes()
        except OSError as e:
            LOG.warning("example %s unreadable: %s", name, e)
            data = b""
        uploads.append(Upload(name, data, len(data)))
    return uploads


def caption_batch_ui(cap: Captioner, uploads: list[Upload], settings: sidebar.Settings) -> list[Result]:
    """Read, encode and decode every upload with a progress bar; failures become results with a message."""
    max_bytes = int(places.upload_limit_mb() * 2**20)
    items = [(u, (u.name, digest(u.data) if u.size <= max_bytes else f"size:{u.size}")) for u in uploads]
    pending = [i for i, (_, key) in enumerate(items) if not _is_cached(key, settings)]
    bar = st.progress(0.0, text=f"Captioning {len(pending)} photo(s)…") if pending else None
    results = []
    for i, (upload, key) in enumerate(items):
        if bar is not None and i in pending:
            done = pending.index(i)
            bar.progress(done / len(pending), text=f"Captioning {upload.name} ({done + 1} of {len(pending)})…")
        results.append(_caption_one(cap, upload, key, settings, max_bytes))
    if bar is not None:
        bar.empty()
    return results


def _is_cached(key: tuple[str, str], settings: sidebar.Settings) -> bool:
    if not widgets.is_remembered("photo", key):
        return False
    if isinstance(st.session_state["_cache_photo"][key], str):
        return True
    return all(
        widgets.is_remembered("caption", (*key, k, settings.length_penalty, settings.block_repeats, settings.consensus))
        for k in (1, settings.beam_size)
    )


def _caption_one(
    cap: Captioner, upload: Upload, key: tuple[str, str], settings: sidebar.Settings, max_bytes: int
) -> Result:
    """One upload → Result; the UI edge for per-file errors, so one bad file never stops the batch."""
    name = upload.name
    try:
        photo = widgets.remember("photo", key, lambda: _photo_or_error(cap, upload, max_bytes))
        if isinstance(photo, str):
            return Result(name, error=photo)
        greedy = _decoded(cap, photo, key, 1, settings)
        beam = _decoded(cap, photo, key, settings.beam_size, settings)
        return Result(name, photo, greedy, beam)
    except CaptionerError as e:
        return Result(name, error=f"{name}: {e}")
    except Exception as e:  # the UI edge: report, log, and carry on with the rest of the batch
        LOG.exception("captioning %s failed", name)
        return Result(name, error=f"{name}: unexpected {type(e).__name__} while captioning ({e}).")


def _photo_or_error(cap: Captioner, upload: Upload, max_bytes: int) -> Photo | str:
    """A Photo, or the message for why this file cannot be captioned (cached like a result)."""
    name = upload.name
    try:
        check_size(name, upload.size, max_bytes)
        return read_photo(cap, name, upload.data)
    except ImageError as e:
        return str(e)  # load_image and check_size name the file and say what is wrong


def _decoded(cap: Captioner, photo: Photo, key: tuple[str, str], beam: int, settings: sidebar.Settings) -> Caption:
    alpha, block, rerank = settings.length_penalty, settings.block_repeats, settings.consensus

    def run() -> Caption:
        with loader.model_lock():
            captions = cap.decode(
                photo.encoded, beam, alpha, block_repeats=block,
                consensus=rerank, consensus_weight=settings.consensus_weight,
            )  # fmt: skip
            return captions[0]

    return widgets.remember("caption", (*key, beam, alpha, block, rerank), run)


def summary_ui(results: list[Result], settings: sidebar.Settings, cap: Captioner) -> None:
    """Batch summary and export buttons."""
    ok = sum(r.error is None for r in results)
    failed = len(results) - ok
    line = f"Captioned **{ok}** of {len(results)} file(s)."
    if failed:
        line += f" {failed} could not be read; see the messages below."
    left, csv_col, json_col = st.columns([4, 1, 1], vertical_alignment="center")
    left.markdown(line)
    # The exports are built when a button is pressed, not on every rerun.
    csv_col.download_button(
        "CSV",
        lambda: captions_csv(results, settings),
        file_name="captions.csv",
        mime="text/csv",
        icon=":material/download:",
        on_click="ignore",
        help="Captions of this batch as CSV",
    )
    json_col.download_button(
        "JSON",
        lambda: captions_json(results, settings, cap),
        file_name="captions.json",
        mime="application/json",
        icon=":material/download:",
        on_click="ignore",
        help="Captions, word probabilities and n-best lists as JSON",
    )


def photo_ui(
    name: str, photo: Photo, greedy: Caption, beam: Caption, settings: sidebar.Settings, index: int, heatmaps: bool
) -> None:
    """One photo: the image, greedy and beam captions side by side, the n-best list and attention on demand."""
    key = f"{index}:{photo.digest[:16]}"
    with st.container(border=True):
        st.subheader(name, anchor=False)
        if photo.unfamiliar:
            st.warning(UNFAMILIAR_NOTICE, icon="🧭")
        for note in photo.notes:
            st.caption(f"ℹ️ {widgets.md_escape(name)}: {note}.")
        left, right = st.columns([2, 3])
        w, h = photo.original_size
        left.image(photo.jpeg, caption=f"{w}×{h} px" if w else None)
        with right:
            g, b = st.columns(2)
            caption_card_ui(g, "Greedy", greedy)
            caption_card_ui(b, f"Beam search (k={settings.beam_size}, α={settings.length_penalty:.2f})", beam)
            if photo.seen:
                seen_ui(photo.seen)
            if st.toggle("Beam n-best list", key=f"{key}:nbest"):
                nbest_ui(beam)
        if st.toggle("Attention heatmaps", value=heatmaps, key=f"{key}:attention"):
            stem = Path(name).stem
            widgets.attention_ui(photo.image, {"Greedy": greedy, "Beam": beam}, settings.opacity, key, stem)


def caption_card_ui(column, title: str, caption: Caption) -> None:
    """One caption with its log-probability."""
    with column:
        st.markdown(f"**{title}**")
        text = widgets.md_escape(caption.text) if caption.text else "*(empty caption)*"
        st.markdown(f"#### {text}")
        st.caption(widgets.caption_stats(caption))


def seen_ui(seen: Sequence[Label]) -> None:
    """The backbone's top ImageNet classes for the photo, from the same pass that feeds the captioner."""
    st.markdown(
        "**What the backbone sees**",
        help="The top ImageNet classes of the encoder's own ImageNet classifier (1000 classes), from the same "
        "features the captions come from. The captioner itself only knows Flickr8k's words.",
    )
    st.caption(" · ".join(f"{widgets.md_escape(c.label)} {c.p:.2f}" for c in seen))


def nbest_ui(beam: Caption) -> None:
    """The beam's finished hypotheses, best first."""
    rows = [
        {
            "rank": i + 1,
            "caption": h.text or "(empty)",
            "log p": round(h.log_prob, 3),
            "score": round(h.score, 3),
            "words": len(h.tokens),
        }
        for i, h in enumerate(beam.n_best)
    ]
    st.dataframe(rows, hide_index=True, width="stretch")


if __name__ == "__main__":
    caption_page()
