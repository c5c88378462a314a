"""Image input for training and uploads, and the resumable float16 feature cache."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib

import keras
import numpy as np
import pytest
from PIL import Image

from captioner import backbones
from captioner.errors import DataError, ImageError
from captioner.features import MAX_PIXELS, extract_features, load_image, open_cache, prepare_image, use_onednn


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width×height but carries almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


RGB = Image.fromarray(np.tile(np.linspace(0, 255, 60, dtype=np.uint8)[None, :, None], (40, 1, 3)))


@pytest.mark.parametrize(
    ("fmt", "image", "kw"),
    [
        ("JPEG", RGB, {}),
        ("PNG", RGB, {}),
        ("WEBP", RGB, {}),
        ("BMP", RGB, {}),
        ("PNG", RGB.convert("L"), {}),
        ("JPEG", RGB.convert("CMYK"), {}),
        ("PNG", RGB.convert("P"), {}),
    ],
)
def test_common_formats_decode_to_rgb_uint8(fmt, image, kw):
    out = load_image(_encode(image, fmt, **kw), "x")
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    assert abs(float(out[..., 0].mean()) - float(np.asarray(RGB)[..., 0].mean())) < 8


def test_exif_orientation_is_honoured():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = load_image(_encode(RGB, "JPEG", exif=exif.tobytes()))
    assert out.shape == (60, 40, 3)


def test_sixteen_bit_png_is_scaled_not_clipped():
    wide = Image.fromarray((np.linspace(0, 65535, 60)[None, :] * np.ones((40, 1))).astype(np.uint16))
    out = load_image(_encode(wide, "PNG"))
    assert out[0, 0, 0] < 10 and out[0, -1, 0] > 245 and 100 < out[0, 30, 0] < 155


def test_transparent_png_is_composited_on_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert load_image(_encode(rgba, "PNG"))[0, 0].tolist() == [255, 255, 255]


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert load_image(buf.getvalue())[0, 0, 0] > 200


def test_one_pixel_image_is_resized_to_the_backbone_input():
    assert prepare_image(_encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), 224).shape == (224, 224, 3)


def test_non_square_upload_is_squashed_not_cropped():
    left_red = np.zeros((100, 300, 3), np.uint8)
    left_red[:, :10] = (255, 0, 0)  # a stripe a crop would cut away
    out = prepare_image(left_red, 30)
    assert out.shape == (30, 30, 3) and out[:, 0, 0].min() > 200


def test_large_png_is_reduced_before_conversion():
    big = Image.new("RGBA", (4000, 3000), (10, 200, 10, 255))
    out = load_image(_encode(big, "PNG", compress_level=1), target=224)
    assert max(out.shape[:2]) < 1000 and out[0, 0].tolist() == [10, 200, 10]


def test_large_jpeg_decodes_at_reduced_scale():
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), np.uint8))
    assert max(load_image(_encode(big, "JPEG"), target=224).shape[:2]) < 1000


@pytest.mark.parametrize("shape", [(3000, 4000, 3), (4000, 3000, 3)])
def test_display_copy_of_a_large_jpeg_decodes_at_the_smallest_scale_that_keeps_its_longest_side(shape):
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, np.uint8))
    out = load_image(_encode(big, "JPEG"), longest=800)
    # 1/4 scale (1000×750) still has a long side ≥ 800; asking for both sides ≥ 800 would have decoded at 1/2.
    assert sorted(out.shape[:2]) == [750, 1000]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "not a recognised image"),
        (_encode(RGB, "JPEG")[:300], "cannot decode"),
        (_png_header_only(30000, 30000), "limit"),
    ],
    ids=["zero-bytes", "not-an-image", "truncated-jpeg", "decompression-bomb"],
)
def test_bad_images_raise_image_error_naming_the_file(payload, message):
    with pytest.raises(ImageError, match=message) as err:
        load_image(payload, "upload.jpg")
    assert str(err.value).startswith("upload.jpg:")


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header claims width×height: a few hundred bytes, no pixels for the rest."""
    data = bytearray(_encode(RGB, "JPEG"))
    sof = data.index(b"\xff\xc0")  # baseline frame header: marker, length, precision, height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("claim", [_jpeg_claiming, _png_header_only], ids=["jpeg", "png"])
def test_the_projects_own_megapixel_limit_refuses_an_image_just_above_it(claim):
    assert MAX_PIXELS < Image.MAX_IMAGE_PIXELS  # so Pillow's own bomb guard stays quiet at this size
    with pytest.raises(ImageError, match=r"^big: image is 10000×8001 = 80 MP; the limit is 80 MP\.$"):
        load_image(claim(10_000, MAX_PIXELS // 10_000 + 1), "big")


def test_an_image_just_below_the_megapixel_limit_gets_past_it():
    out = load_image(_jpeg_claiming(10_000, MAX_PIXELS // 10_000 - 1), "big", target=224)  # decoded at 1/8 scale
    assert out.dtype == np.uint8 and min(out.shape[:2]) >= 224
    with pytest.raises(ImageError, match="cannot decode") as err:  # a PNG has no draft mode: its missing pixels fail
        load_image(_png_header_only(10_000, MAX_PIXELS // 10_000 - 1), "big", target=224)
    assert "limit" not in str(err.value)


def test_an_array_over_the_megapixel_limit_is_refused():
    wide = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (MAX_PIXELS // 10_000 + 1, 10_000, 3))  # no memory used
    with pytest.raises(ImageError, match="limit 80"):
        load_image(wide, "big")


def test_missing_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


# ---- feature cache ------------------------------------------------------------------------------


@pytest.fixture
def tiny_backbone():
    def builder(include_top=False, weights=None):
        inputs = keras.Input((16, 16, 3), dtype="uint8")
        x = keras.layers.Rescaling(1 / 255)(inputs)
        return keras.Model(inputs, keras.layers.Conv2D(4, 3, strides=4, padding="same")(x))

    spec = backbones.BackboneSpec("tiny_test", 16, 4, 4, builder, "x/255", "random")
    backbones.register(spec, overwrite=True)
    return spec


def _images(tmp_path, n):
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"{i}.jpg")
        Image.new("RGB", (20, 30), (i * 20, 0, 0)).save(paths[-1])
    return paths


def test_feature_cache_is_float16_memmapped_and_ordered(tmp_path, tiny_backbone):
    paths = _images(tmp_path, 5)
    cache = extract_features(paths, tmp_path / "cache", "tiny_test", batch_size=2, progress=False)
    assert cache.features.dtype == np.float16 and cache.features.shape == (5, 4, 4, 4)
    assert isinstance(cache.features, np.memmap)
    assert cache.images == [p.name for p in paths]
    assert cache.rows(["3.jpg", "1.jpg"]).tolist() == [3, 1]


def test_rerun_reuses_a_complete_cache(tmp_path, tiny_backbone, monkeypatch):
    paths = _images(tmp_path, 3)
    first = np.array(extract_features(paths, tmp_path / "c", "tiny_test", progress=False).features)
    monkeypatch.setattr(backbones, "build_inference", lambda *a, **k: pytest.fail("a complete cache must not rebuild"))
    again = extract_features(paths, tmp_path / "c", "tiny_test", progress=False)
    np.testing.assert_array_equal(first, again.features)


def test_interrupted_run_is_not_complete_and_resumes(tmp_path, tiny_backbone, monkeypatch):
    paths = _images(tmp_path, 6)
    calls = {"n": 0}
    real = backbones.build("tiny_test")

    class Crashing:
        output_shape = real.output_shape

        def predict_on_batch(self, x):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return real.predict_on_batch(x)

    monkeypatch.setattr(backbones, "build_inference", lambda *a, **k: Crashing())
    with pytest.raises(KeyboardInterrupt):
        extract_features(paths, tmp_path / "c", "tiny_test", batch_size=2, progress=False)
    with pytest.raises(DataError, match="No complete feature cache"):
        open_cache(tmp_path / "c", "tiny_test", 16)
    cache = extract_features(paths, tmp_path / "c", "tiny_test", batch_size=2, progress=False)
    assert calls["n"] == 4  # 1 good batch before the crash, then only the 2 remaining batches
    expected = real.predict_on_batch(np.stack([prepare_image(p, 16) for p in paths]))
    np.testing.assert_allclose(cache.features, expected, atol=1e-2)


def test_unreadable_image_in_dataset_names_the_file(tmp_path, tiny_backbone):
    paths = _images(tmp_path, 2)
    paths[1].write_bytes(b"garbage")
    with pytest.raises(ImageError, match=r"1\.jpg"):
        extract_features(paths, tmp_path / "c", "tiny_test", progress=False)


def test_use_onednn_before_tensorflow_is_imported_turns_its_onednn_kernels_on() -> None:
    code = (
        "from captioner.features import use_onednn; requested = use_onednn(); "
        "from tensorflow.python.util import _pywrap_util_port; print(requested, _pywrap_util_port.IsMklEnabled())"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True"]


def test_use_onednn_after_tensorflow_is_imported_warns_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    assert "tensorflow" in sys.modules  # keras, imported above, has imported it
    with pytest.warns(UserWarning, match="already imported"):
        assert use_onednn() is False
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert use_onednn() is False  # the user's choice stands
