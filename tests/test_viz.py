"""Attention overlays, attention grids, PNG export and report thumbnails (captioner.viz)."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import FLICKR8K, needs_shared
from PIL import Image

from captioner import viz
from captioner.errors import ImageError


def _photo(w: int = 200, h: int = 150) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _one_hot(row: int, col: int, grid: tuple[int, int] = (7, 7)) -> np.ndarray:
    a = np.zeros(grid, np.float32)
    a[row, col] = 1.0
    return a


def _caption(words: list[str], grid: tuple[int, int] = (7, 7)) -> SimpleNamespace:
    rng = np.random.default_rng(1)
    att = rng.random((len(words), *grid))
    att /= att.sum(axis=(1, 2), keepdims=True)
    return SimpleNamespace(tokens=words, token_log_probs=np.log(np.full(len(words) + 1, 0.5)), attention=att)


def test_upsample_is_smooth_in_unit_range_and_peaks_on_the_attended_cell():
    heat = viz.upsample(_one_hot(1, 5), (700, 350))  # (H, W) = (350, 700)
    assert heat.shape == (350, 700)
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 1 * 50 <= y < 2 * 50 and 5 * 100 <= x < 6 * 100  # inside cell (1, 5) of the 7×7 grid
    # Bicubic, not nearest: neighbouring pixels never jump by more than a few percent of the range.
    assert np.abs(np.diff(heat, axis=1)).max() < 0.05 and np.abs(np.diff(heat, axis=0)).max() < 0.1


def test_upsample_of_a_flat_map_is_all_zero():
    assert not viz.upsample(np.full((7, 7), 1 / 49), (64, 48)).any()


def test_overlay_keeps_size_and_opacity_zero_is_the_photo():
    photo = _photo()
    out = viz.overlay(photo, _one_hot(3, 3), opacity=0.0)
    assert out.size == (200, 150) and out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), photo)


def test_overlay_at_full_opacity_is_the_colormap_hot_where_attention_is():
    photo = np.zeros((140, 140, 3), np.uint8)
    out = np.asarray(viz.overlay(photo, _one_hot(0, 6), opacity=1.0)).astype(int)
    hot = viz.colorize(np.ones((1, 1)))[0, 0].astype(int)
    cold = viz.colorize(np.zeros((1, 1)))[0, 0].astype(int)
    distance = np.abs(out - hot).max(axis=-1)  # (H, W)
    y, x = np.unravel_index(np.argmin(distance), distance.shape)
    assert distance[y, x] <= 3 and y < 20 and x >= 120  # the hottest colour sits in the top-right cell
    assert np.abs(out[130, 10] - cold).max() <= 3  # far away: the coldest colour


def test_overlay_rejects_bad_opacity_and_non_rgb_images():
    with pytest.raises(ValueError, match="opacity"):
        viz.overlay(_photo(), _one_hot(0, 0), opacity=1.5)
    with pytest.raises(ImageError, match="uint8 RGB"):
        viz.overlay(np.zeros((10, 10), np.uint8), _one_hot(0, 0))


def test_attention_grid_has_one_titled_panel_per_word():
    fig = viz.attention_grid(_photo(), _caption(["a", "dog", "runs", "on", "the", "beach", "today"]), columns=5)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled == [
        f"{i + 1}. {w}  (p=0.50)" for i, w in enumerate(["a", "dog", "runs", "on", "the", "beach", "today"])
    ]
    assert len(fig.axes) == 10  # 2 rows of 5; unused panels are blank


def test_attention_grid_of_an_empty_caption_shows_the_photo():
    fig = viz.attention_grid(_photo(), _caption([]))
    assert [ax.get_title() for ax in fig.axes] == ["(empty caption)"]


def test_attention_grid_rejects_a_caption_whose_maps_do_not_match_its_words():
    caption = _caption(["a", "dog"])
    caption.attention = caption.attention[:1]
    with pytest.raises(ValueError, match="one attention map per word"):
        viz.attention_grid(_photo(), caption)


def test_to_png_gives_a_decodable_png():
    png = viz.to_png(viz.attention_grid(_photo(), _caption(["a", "dog"]), title="a dog"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as im:
        assert im.width > im.height > 50


def test_colorize_matches_the_matplotlib_colour_map_it_replaces():
    # Catches a lookup table that drifts from matplotlib's map (wrong order, wrong scaling, off-by-one levels).
    from matplotlib import colormaps

    heat = np.linspace(0.0, 1.0, 1000)[None, :]
    reference = (colormaps[viz.DEFAULT_CMAP](heat)[..., :3] * 255 + 0.5).astype(int)
    np.testing.assert_array_equal(viz.colorize(heat).astype(int), reference)


def test_attention_sheet_has_one_overlay_panel_per_word_at_the_grid_layout():
    # Catches a sheet that drops words, lays panels out wrongly, or pastes the photo without its heatmap.
    photo = _photo(240, 180)
    words = ["a", "dog", "runs", "on", "the", "beach", "today"]
    caption = _caption(words)
    sheet = viz.attention_sheet(photo, caption, opacity=1.0, columns=5, title="a dog runs")
    assert sheet.mode == "RGB"
    pixels = np.asarray(sheet)
    panel = np.asarray(viz.overlay(photo, caption.attention[6], 1.0))  # the 7th word: row 2, column 2
    gap, label_h, title_h = 6, 14 + 8, 16 + 12
    x, y = gap + (240 + gap), title_h + (180 + label_h + gap) + label_h
    np.testing.assert_array_equal(pixels[y : y + 180, x : x + 240], panel)
    assert sheet.size == (5 * (240 + gap) + gap, title_h + 2 * (180 + label_h + gap) + gap)
    assert pixels[y + 90, x + 240 + gap + 100].tolist() == [255, 255, 255]  # the 8th panel is blank


def test_attention_sheet_as_jpeg_of_a_14_word_caption_stays_under_250_kb():
    # Catches the display heatmap growing back towards the ~900 KB PNG figure it replaced.
    rng = np.random.default_rng(3)
    photo = np.clip(rng.normal(128, 60, (600, 800, 3)), 0, 255).astype(np.uint8)  # noisy: hard to compress
    jpeg = viz.to_jpeg(viz.attention_sheet(photo, _caption([f"w{i}" for i in range(14)], (9, 9)), title="t"))
    assert jpeg[:2] == b"\xff\xd8" and len(jpeg) <= 250 * 1024


def test_attention_sheet_of_an_empty_caption_shows_the_photo_and_rejects_mismatched_maps():
    assert viz.attention_sheet(_photo(), _caption([])).width > 200
    caption = _caption(["a", "dog"])
    caption.attention = caption.attention[:1]
    with pytest.raises(ValueError, match="one attention map per word"):
        viz.attention_sheet(_photo(), caption)


def test_fit_shrinks_keeping_aspect_and_never_enlarges():
    assert viz.fit(_photo(400, 100), 200).shape == (50, 200, 3)
    small = _photo(40, 30)
    assert viz.fit(small, 200) is small


def _write_jpeg(path: Path, w: int, h: int, orientation: int | None = None) -> Path:
    im = Image.fromarray(_photo(w, h))
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    im.save(path, "JPEG", quality=90, exif=exif.tobytes())
    return path


def test_write_thumbnails_keeps_aspect_honours_exif_and_counts_bytes(tmp_path):
    sources = [
        _write_jpeg(tmp_path / "wide.jpg", 500, 375),
        _write_jpeg(tmp_path / "rotated.jpg", 500, 375, orientation=6),  # shown 375×500
        _write_jpeg(tmp_path / "tiny.jpg", 80, 60),
    ]
    Image.fromarray(_photo(300, 300)).save(tmp_path / "drawing.png")
    sources.append(tmp_path / "drawing.png")
    out = tmp_path / "thumbs"
    total = viz.write_thumbnails(sources, out, 160)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["drawing.jpg", "rotated.jpg", "tiny.jpg", "wide.jpg"]
    assert total == sum((out / f).stat().st_size for f in files)
    sizes = {f: Image.open(out / f).size for f in files}
    assert sizes == {"wide.jpg": (160, 120), "rotated.jpg": (120, 160), "tiny.jpg": (80, 60), "drawing.jpg": (160, 160)}
    assert all(Image.open(out / f).format == "JPEG" for f in files)


def test_write_thumbnails_names_the_image_it_cannot_read(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageError, match=r"broken\.jpg"):
        viz.write_thumbnails([_write_jpeg(tmp_path / "ok.jpg", 64, 48), bad], tmp_path / "thumbs", 32)
    assert not list((tmp_path / "thumbs").glob("*.incomplete"))


@pytest.mark.slow
def test_thumbnails_of_the_whole_test_split_fit_the_12_mb_budget(tmp_path):
    needs_shared(FLICKR8K)
    names = (FLICKR8K / "Flickr_8k.testImages.txt").read_text().split()
    total = viz.write_thumbnails([FLICKR8K / "Images" / n for n in names], tmp_path, 160)
    assert len(names) == 1000 and len(list(tmp_path.iterdir())) == 1000
    assert total <= 12 * 2**20
