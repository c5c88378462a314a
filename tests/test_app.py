"""The Streamlit app through AppTest: navigation, captioning uploads (good and hostile), the BLEU page, exports.

The app runs against the tiny random-weight model (CAPTIONER_MODEL), a small report built here
(CAPTIONER_REPORT, with thumbnails) and a folder of example photos (CAPTIONER_EXAMPLES).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
import os
import runpy
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from conftest import PHOTOS, REPO, in_ci, talkative_copy
from PIL import Image
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from captioner import paths
from captioner.files import IMAGENET_HEAD_FILE, IMAGENET_LABELS_FILE
from captioner.report import build_report, write_report

if str(REPO) not in sys.path:  # the pages package sits at the repository root, beside app.py
    sys.path.insert(0, str(REPO))

from pages import bleu_page as bleu
from pages import caption_page as caption
from pages import coldstart, loader, places, sidebar

APP = REPO / "app.py"
TIMEOUT = 180  # the first run in a test session loads TensorFlow and the model


# ---- inputs ------------------------------------------------------------------------------------------------------


def _jpeg(w: int, h: int, seed: int = 0, orientation: int | None = None, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3)) + rng.normal(0, 20, (h, w, 3))
    im = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).convert(mode)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=88, exif=exif.tobytes())
    return buf.getvalue()


def _png(im: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def _png_header_bomb(w: int = 30000, h: int = 30000) -> bytes:
    """A valid PNG whose header claims w×h pixels: tiny on disk, gigabytes if decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _gif_animation() -> bytes:
    frames = [Image.new("RGB", (64, 48), c) for c in ("red", "green", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


@pytest.fixture(scope="module")
def full_photo() -> tuple[str, bytes]:
    """A full-resolution Flickr8k original from ../shared, else a generated 500×375 photo with EXIF orientation."""
    photos = sorted(PHOTOS.glob("*.jpg")) if PHOTOS.is_dir() else []
    if not photos and in_ci():
        pytest.fail(f"needs the full-resolution photos in {PHOTOS}; CI=true, so this is a failure", pytrace=False)
    if photos:
        return photos[0].name, photos[0].read_bytes()
    return "generated.jpg", _jpeg(500, 375, orientation=6)


REPORT_IMAGES = {
    # name: (references, greedy, beam)
    "dog_beach.jpg": (
        [
            "a dog runs on the beach",
            "a brown dog on sand",
            "dog running by the sea",
            "a dog plays at the beach",
            "the dog is running",
        ],
        "a dog runs on the beach",
        "a dog runs on the beach",
    ),
    "dog_park.jpg": (
        ["a dog in a park", "a black dog on grass", "a dog plays in the park", "dog on the grass", "a dog outside"],
        "a man in a park",
        "a dog plays in the park",
    ),
    "kids_pool.jpg": (
        [
            "two children swim in a pool",
            "kids in the pool",
            "children swimming",
            "two kids play in water",
            "a child in a pool",
        ],
        "a child in a pool",
        "two dogs run",
    ),
    "man_bike.jpg": (
        [
            "a man rides a bike",
            "a cyclist on a road",
            "a man on a bicycle",
            "a person riding a bike",
            "a biker on the street",
        ],
        "a man rides a bike",
        "a man rides a bike on the road",
    ),
    "girl_swing.jpg": (
        ["a girl on a swing", "a young girl swings", "a child on a swing", "a girl swinging", "a kid plays on a swing"],
        "a girl on a swing",
        "a girl on a swing",
    ),
}


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    """A small evaluation report (scored by build_report) with a thumbnail per image."""
    root = tmp_path_factory.mktemp("report")
    names = list(REPORT_IMAGES)
    report = build_report(
        model={"id": "tiny-test", "config": {}, "weights_sha256": "0" * 64},
        split="test",
        decoding={"beam_size": 3, "length_penalty": 0.7, "max_length": 6},
        image_names=names,
        references=[REPORT_IMAGES[n][0] for n in names],
        greedy=[REPORT_IMAGES[n][1] for n in names],
        beam=[REPORT_IMAGES[n][2] for n in names],
    )
    path = root / "test_report.json"
    write_report(report, path)
    (root / "thumbs").mkdir()
    for i, name in enumerate(names):
        (root / "thumbs" / name).write_bytes(_jpeg(160, 120, seed=i))
    return path


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("examples")
    (folder / "example_street.jpg").write_bytes(_jpeg(400, 300, seed=7))
    return folder


@pytest.fixture(scope="module")
def talkative_model(tiny_model_dir, tmp_path_factory) -> Path:
    return talkative_copy(tiny_model_dir, tmp_path_factory.mktemp("talkative") / "model")


@pytest.fixture
def app_env(monkeypatch, talkative_model, report_file, examples_dir) -> None:
    monkeypatch.setenv("CAPTIONER_MODEL", str(talkative_model))
    monkeypatch.setenv(places.REPORT_ENV, str(report_file))
    monkeypatch.setenv(places.EXAMPLES_ENV, str(examples_dir))


def _app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    return at.run()


def _no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _texts(elements) -> list[str]:
    return [e.value for e in elements]


def _image_captions(at: AppTest) -> list[str]:
    return [c for im in at.image for c in im.captions]


# ---- navigation and the sidebar ------------------------------------------------------------------------------------


def test_navigation_reaches_every_page_with_the_shared_sidebar(app_env):
    at = _app()
    _no_exceptions(at)
    assert _texts(at.title) == ["Caption photos"]
    assert [s.label for s in at.sidebar.slider] == ["Beam size", "Length penalty α", "Heatmap opacity"]
    assert "Upload one or more photos" in at.info[0].value

    at.switch_page("pages/bleu_page.py").run()
    _no_exceptions(at)
    assert _texts(at.title) == ["Test-set BLEU"]

    at.switch_page("pages/about_page.py").run()  # waits for the model
    _no_exceptions(at)
    assert _texts(at.title) == ["About the model"]
    sidebar = " ".join(_texts(at.sidebar.markdown))
    assert "Weights from" in sidebar and "talkative" in sidebar
    assert any("Configuration" in e.label for e in at.expander)

    at.switch_page("pages/caption_page.py").run()
    assert _texts(at.title) == ["Caption photos"]


def test_streamlit_run_starts_loading_the_model_with_the_server_and_sessions_reuse_it(app_env, monkeypatch):
    made = []

    def recording_loader(secrets):
        made.append(real_loader(secrets))
        return made[-1]

    real_loader = loader.ModelLoader
    monkeypatch.setattr(loader, "ModelLoader", recording_loader)
    monkeypatch.setattr(st_config, "_main_script_path", st_config._main_script_path)  # st.App pins it
    loader._model_loader.clear()
    server = runpy.run_path(str(APP), run_name="app")  # what `streamlit run app.py` imports to find the server app
    assert isinstance(server["app"], st.App)

    async def start_server() -> None:
        async with server["load_model_at_startup"](server["app"]):
            pass

    asyncio.run(start_server())
    assert len(made) == 1  # loading began with the server, before any session
    made[0].result()
    assert gc.isenabled()
    at = _app()
    at.switch_page("pages/about_page.py").run()
    _no_exceptions(at)
    assert "talkative" in " ".join(_texts(at.sidebar.markdown))
    assert len(made) == 1  # the session got the model the server had loaded


def test_garbage_collection_is_paused_while_the_model_loads_and_resumes_after_a_freeze(monkeypatch):
    from captioner.errors import ModelError
    from captioner.pipeline import Captioner

    collecting = []

    def failing_load(*args, **kwargs):
        collecting.append(gc.isenabled())
        raise ModelError("no model in this test")

    monkeypatch.setattr(Captioner, "load", failing_load)
    monkeypatch.setattr(gc, "freeze", lambda: collecting.append("frozen"))
    with pytest.raises(ModelError):
        loader.ModelLoader({}).result()
    assert collecting == [False, "frozen"] and gc.isenabled()


def test_the_app_loads_and_captions_with_every_cold_start_measure_switched_off(app_env, monkeypatch):
    # Catches the app depending on a cold-start measure to work at all (or the switch leaving one of them on).
    from captioner.pipeline import Captioner

    during_load = []
    real_load = Captioner.load.__func__

    def recording_load(cls, *args, **kwargs):
        during_load.append(gc.isenabled())
        return real_load(cls, *args, **kwargs)

    def measure(name: str):
        return lambda *args: during_load.append(name) or contextlib.nullcontext()

    monkeypatch.setenv(coldstart.SWITCH_ENV, "off")
    monkeypatch.setattr(Captioner, "load", classmethod(recording_load))
    monkeypatch.setattr(coldstart, "_collector_paused", measure("collector paused"))
    monkeypatch.setattr(coldstart, "_unimportable_here", measure("imports blocked"))
    loader._model_loader.clear()
    try:
        at = _app()
        at.file_uploader(key="uploads").set_value(("plain.jpg", _jpeg(320, 240, seed=9), "image/jpeg")).run()
        _no_exceptions(at)
        assert "Captioned **1** of 1 file(s)." in _texts(at.markdown)
        assert during_load == [True]  # no measure was taken and the collector ran as usual
    finally:
        loader._model_loader.clear()  # later tests load with the measures on again


def test_keras_extras_are_unimportable_only_on_the_loading_thread(monkeypatch, tmp_path):
    import threading

    (tmp_path / "extra_for_this_test.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    elsewhere = []
    with coldstart._unimportable_here(frozenset({"extra_for_this_test"})):
        with pytest.raises(ModuleNotFoundError, match="while the model loads"):
            import extra_for_this_test
        # Another thread (a page drawing a table while the model loads) imports it as usual.
        thread = threading.Thread(target=lambda: elsewhere.append(__import__("extra_for_this_test").VALUE))
        thread.start()
        thread.join()
        sys.modules.pop("extra_for_this_test")
    assert elsewhere == [1]
    import extra_for_this_test  # after the block it imports on this thread too

    assert extra_for_this_test.VALUE == 1
    sys.modules.pop("extra_for_this_test")


def test_a_model_that_cannot_load_is_explained_without_a_traceback(monkeypatch, tmp_path, report_file):
    missing = tmp_path / "no_model_here"
    monkeypatch.setenv("CAPTIONER_MODEL", str(missing))
    monkeypatch.setattr(paths, "BUNDLED_MODEL_DIR", tmp_path / "no_bundled_model_either")
    monkeypatch.setenv(places.REPORT_ENV, str(report_file))
    at = _app()
    at.file_uploader(key="uploads").set_value(("photo.jpg", _jpeg(64, 48), "image/jpeg")).run()
    _no_exceptions(at)
    assert any("could not be loaded" in e.value and "no_model_here" in e.value for e in at.error)
    assert any(b.label == "Try again" for b in at.button)
    at.switch_page("pages/bleu_page.py").run()  # the report needs no model
    _no_exceptions(at)
    assert _texts(at.title) == ["Test-set BLEU"] and not at.main.error
    assert "no_model_here" in at.sidebar.error[0].value


# ---- the Caption page ----------------------------------------------------------------------------------------------


def test_uploading_a_photo_shows_greedy_and_beam_captions_and_heatmaps(app_env, full_photo):
    name, data = full_photo
    at = _app()
    at.file_uploader(key="uploads").set_value((name, data, "image/jpeg")).run()
    _no_exceptions(at)
    assert not at.error
    markdown = _texts(at.markdown)
    assert "Captioned **1** of 1 file(s)." in markdown
    assert "**Greedy**" in markdown and "**Beam search (k=3, α=0.70)**" in markdown
    assert sum("log p = " in c for c in _texts(at.caption)) == 2
    assert [s.value for s in at.main.subheader] == [name]
    assert "Greedy — attention for every word" in _image_captions(at)
    assert [b.label for b in at.get("download_button")][:2] == ["CSV", "JSON"]

    at.radio(key=f"0:{caption.digest(data)[:16]}:which").set_value("Beam").run()
    assert "Beam — attention for every word" in _image_captions(at)
    assert [b.label for b in at.get("download_button")][2:] == ["Download this figure (PNG)"]

    key = f"0:{caption.digest(data)[:16]}"
    at.toggle(key=f"{key}:nbest").set_value(True).run()
    nbest = at.dataframe[0].value
    assert list(nbest.columns) == ["rank", "caption", "log p", "score", "words"] and len(nbest) == 3


def test_word_by_word_stepper_walks_through_the_caption(app_env):
    data = _jpeg(400, 300, seed=11)
    at = _app()
    at.file_uploader(key="uploads").set_value(("steps.jpg", data, "image/jpeg")).run()
    key = f"0:{caption.digest(data)[:16]}"
    greedy = next(m for m in _texts(at.markdown) if m.startswith("#### ")).removeprefix("#### ").split()
    assert len(greedy) >= 2  # the talkative tiny model always says a few words
    at.radio(key=f"{key}:view").set_value("Word by word").run()
    _no_exceptions(at)
    assert at.select_slider(key=f"{key}:step:Greedy").options == [f"{i + 1}. {w}" for i, w in enumerate(greedy)]
    assert any(c.startswith(f"Greedy, word 1: “{greedy[0]}”") for c in _image_captions(at))
    at.button(key=f"{key}:step:Greedy:next").click().run()
    assert any(c.startswith(f"Greedy, word 2: “{greedy[1]}”") for c in _image_captions(at))
    highlighted = " ".join([greedy[0], f"**:orange-background[{greedy[1]}]**", *greedy[2:]])
    assert highlighted in _texts(at.markdown)
    for _ in range(len(greedy)):  # past the end it stays on the last word
        at.button(key=f"{key}:step:Greedy:next").click().run()
    assert any(c.startswith(f"Greedy, word {len(greedy)}:") for c in _image_captions(at))
    at.button(key=f"{key}:step:Greedy:prev").click().run()
    assert any(c.startswith(f"Greedy, word {len(greedy) - 1}:") for c in _image_captions(at))


def test_exif_orientation_is_honoured(app_env):
    at = _app()
    at.file_uploader(key="uploads").set_value(("portrait.jpg", _jpeg(500, 375, orientation=6), "image/jpeg")).run()
    _no_exceptions(at)
    assert "375×500 px" in _image_captions(at)
    assert any("EXIF orientation" in c for c in _texts(at.caption))


def test_broken_uploads_get_messages_naming_them_while_the_rest_is_captioned(app_env, full_photo):
    name, data = full_photo
    good = [
        (name, data),
        ("cmyk.jpg", _jpeg(120, 90, mode="CMYK")),
        ("deep.png", _png(Image.fromarray((np.random.default_rng(0).random((60, 80)) * 65535).astype(np.uint16)))),
        ("gray.png", _png(Image.new("L", (80, 60), 128))),
        ("clear.png", _png(Image.new("RGBA", (80, 60), (255, 0, 0, 0)))),
        ("moving.gif", _gif_animation()),
        ("dot.png", _png(Image.new("RGB", (1, 1), "red"))),
    ]
    jpeg = _jpeg(300, 200)
    bad = [
        ("notes.jpg", b"these are my holiday notes, not a photo\n" * 10),
        ("cut.jpg", jpeg[: len(jpeg) // 2]),
        ("empty.jpg", b""),
        ("bomb.png", _png_header_bomb()),
        ("panorama.png", _png_header_bomb(8000, 7000)),  # under the bomb limit, over the app's non-JPEG budget
    ]
    at = _app()
    at.file_uploader(key="uploads").set_value([(n, d, "image/png") for n, d in good + bad]).run()
    _no_exceptions(at)
    errors = _texts(at.error)
    assert len(errors) == len(bad)
    for (bad_name, _), message in zip(bad, errors, strict=True):
        assert message.startswith(f"{bad_name}:"), message
    assert "empty" in errors[2] and "900 megapixels" in errors[3] and "8000×7000 = 56 MP" in errors[4]
    assert "BytesIO" not in errors[0]
    assert [s.value for s in at.main.subheader] == [n for n, _ in good]
    assert f"Captioned **{len(good)}** of {len(good) + len(bad)} file(s)." in _texts(at.markdown)[0]
    notes = " ".join(_texts(at.caption))
    for expected in ("CMYK", "16-bit", "grayscale", "transparent", "animated (3 frames)", "only 1×1 pixels"):
        assert expected in notes


def test_a_file_over_the_upload_limit_is_refused_by_name(app_env):
    before = st_config.get_option("server.maxUploadSize")
    st_config.set_option("server.maxUploadSize", 1)
    try:
        at = _app()
        big = ("huge.bmp", b"BM" + bytes(1_300_000), "image/bmp")
        at.file_uploader(key="uploads").set_value([big, ("ok.jpg", _jpeg(64, 48), "image/jpeg")]).run()
    finally:
        st_config.set_option("server.maxUploadSize", before)
    _no_exceptions(at)
    assert len(at.error) == 1 and at.error[0].value.startswith("huge.bmp: the file is 1.2 MB; the upload limit is 1 MB")
    assert [s.value for s in at.main.subheader] == ["ok.jpg"]


def test_example_photos_can_be_captioned(app_env):
    at = _app()
    at.multiselect(key="examples").set_value(["example_street.jpg"]).run()
    _no_exceptions(at)
    assert [s.value for s in at.main.subheader] == ["example_street.jpg"]
    assert "**Greedy**" in _texts(at.markdown)


def test_a_camera_photo_is_captioned_like_an_upload(app_env):
    # Catches a camera shot that is drawn but never reaches the captioning (or only when no file is uploaded).
    at = _app()
    assert not at.camera_input  # the browser is not asked for the camera until the user wants it
    at.toggle(key="use_camera").set_value(True).run()
    shot = _jpeg(640, 480, seed=5)
    at.camera_input(key="camera").set_value(("camera.jpg", shot, "image/jpeg")).run()
    at.file_uploader(key="uploads").set_value(("ok.jpg", _jpeg(400, 300, seed=6), "image/jpeg")).run()
    _no_exceptions(at)
    assert [s.value for s in at.main.subheader] == [f"camera-{caption.digest(shot)[:8]}.jpg", "ok.jpg"]
    assert "Captioned **2** of 2 file(s)." in _texts(at.markdown)
    assert "640×480 px" in _image_captions(at)


FAMILIAR, STRANGE = _jpeg(400, 300, seed=21), np.full((300, 400, 3), 250, np.uint8)


@pytest.fixture(scope="module")
def seeing_model(talkative_model, tmp_path_factory) -> Path:
    """The talkative model with an ImageNet head that sees a "tabby" and a calibration that knows only FAMILIAR."""
    import shutil

    from captioner import familiarity, hub, imagenet
    from captioner.pipeline import Captioner

    out = tmp_path_factory.mktemp("seeing") / "model"
    shutil.copytree(talkative_model, out)
    shutil.copyfile(paths.BUNDLED_MODEL_DIR / IMAGENET_LABELS_FILE, out / IMAGENET_LABELS_FILE)
    bias = np.zeros(1000, np.float16)
    bias[281] = 20.0  # "tabby, tabby cat"
    np.savez(out / IMAGENET_HEAD_FILE, kernel=np.zeros((1280, 1000), np.float16), bias=bias)
    cap = Captioner.from_directory(out)
    familiar = cap.encode([FAMILIAR]).features
    fam = familiarity.calibrate(np.repeat(imagenet.pool(familiar), 5, axis=0), imagenet.pool(familiar), k=1)
    strange = float(fam.score(cap.encode([STRANGE]).features)[0])
    assert strange > 1e-4  # the random backbone tells the two photos apart
    familiarity.Familiarity(fam.basis, fam.refs, strange / 2, 1).save(out)
    hub.write_manifest(out)
    return out


def test_photos_show_what_the_backbone_sees_and_only_unfamiliar_ones_get_the_notice(app_env, monkeypatch, seeing_model):
    # Catches the ImageNet view or the "Unfamiliar photo" notice going missing, or the notice shown for every photo.
    monkeypatch.setenv("CAPTIONER_MODEL", str(seeing_model))
    at = _app()
    strange = _png(Image.fromarray(STRANGE))
    at.file_uploader(key="uploads").set_value(
        [("familiar.jpg", FAMILIAR, "image/jpeg"), ("strange.png", strange, "image/png")]
    ).run()
    _no_exceptions(at)
    assert [s.value for s in at.main.subheader] == ["familiar.jpg", "strange.png"]
    assert "**What the backbone sees**" in _texts(at.markdown)
    assert sum(c.startswith("tabby 1.00 · ") for c in _texts(at.caption)) == 2
    (notice,) = _texts(at.warning)
    assert notice.startswith("Unfamiliar photo") and "Flickr8k" in notice and "may be wrong" in notice
    photos = {name: photo for (name, _), photo in at.session_state["_cache_photo"].items()}
    assert (photos["familiar.jpg"].unfamiliar, photos["strange.png"].unfamiliar) == (False, True)


def test_the_beam_caption_is_reranked_as_tuned_until_the_sidebar_turns_it_off(app_env, monkeypatch, tmp_path):
    # Catches the app ignoring the model's tuned reranking, or its toggle not reaching the decoding.
    import shutil

    from conftest import rerank_to_second_caption

    from captioner import hub

    data = _jpeg(320, 240, seed=5)
    model = shutil.copytree(os.environ["CAPTIONER_MODEL"], tmp_path / "model")
    _, own, second = rerank_to_second_caption(model, data)
    hub.write_manifest(model)
    monkeypatch.setenv("CAPTIONER_MODEL", str(model))

    at = _app()
    at.file_uploader(key="uploads").set_value(("photo.jpg", data, "image/jpeg")).run()
    _no_exceptions(at)

    def beams() -> dict[int, str]:  # the cached beam-3 captions by their reranking setting (photos, 0 for none)
        return {k[-1]: c.text for k, c in at.session_state["_cache_caption"].items() if k[-4] == 3}

    assert at.toggle(key="consensus").value is True
    assert beams() == {2: second.text}
    at.toggle(key="consensus").set_value(False).run()
    assert beams() == {2: second.text, 0: own.text} and own.text != second.text


def test_changing_decoding_settings_reuses_the_encoded_photo(app_env, monkeypatch):
    from captioner.pipeline import Captioner

    calls = []
    encode = Captioner.encode

    def counting_encode(self, images, names=None, batch_size=16):
        calls.append(list(names or []))
        return encode(self, images, names, batch_size)

    at = _app()
    at.file_uploader(key="uploads").set_value(("reuse.jpg", _jpeg(320, 240, seed=3), "image/jpeg")).run()
    monkeypatch.setattr(Captioner, "encode", counting_encode)
    at.sidebar.slider(key="beam_size").set_value(5).run()
    at.sidebar.slider(key="length_penalty").set_value(1.2).run()
    at.sidebar.slider(key="opacity").set_value(0.9).run()
    _no_exceptions(at)
    assert "**Beam search (k=5, α=1.20)**" in _texts(at.markdown)
    assert calls == []


def test_script_runs_leave_the_models_tensorflow_caches_alone(app_env, monkeypatch):
    # Streamlit calls keras.backend.clear_session() after every script run unless the app stops it; that emptied
    # TensorFlow's kernel cache, so every upload paid for instantiating the backbone and decoder graphs again.
    import keras

    cleared = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *args, **kwargs: cleared.append(True))
    at = _app()
    at.file_uploader(key="uploads").set_value(("cached.jpg", _jpeg(320, 240, seed=5), "image/jpeg")).run()
    at.sidebar.slider(key="beam_size").set_value(4).run()
    _no_exceptions(at)
    assert "Captioned **1** of 1 file(s)." in _texts(at.markdown)
    assert cleared == []


def test_the_server_gives_tensorflow_and_blas_one_thread_per_pool(monkeypatch):
    # Sessions take turns at the model, so more threads per pool only spun between one photo's small calls.
    import threadpoolctl

    monkeypatch.setattr(os, "environ", {})
    with threadpoolctl.threadpool_limits(None):  # whatever the loader sets is undone after the test
        loader.one_thread_per_pool()
        blas = [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
        assert blas and set(blas) == {1}
        assert all(os.environ[name] == "1" for name in loader.TF_THREADS)

        os.environ["TF_NUM_INTRAOP_THREADS"] = "2"  # an operator's setting wins
        loader.one_thread_per_pool()
        assert os.environ["TF_NUM_INTRAOP_THREADS"] == "2"


def _slider(at: AppTest, label: str):
    return next(s for s in at.sidebar.slider if s.label == label)


def _shown_captions(at: AppTest) -> list[str]:
    """The captions the page shows, in order (greedy, then beam, for each photo)."""
    shown = [m.removeprefix("#### ") for m in _texts(at.markdown) if m.startswith("#### ")]
    return ["" if text == "*(empty caption)*" else text for text in shown]


def test_the_captions_shown_are_what_captioner_decodes_with_the_sidebar_settings(
    monkeypatch, tiny_model_dir, report_file, examples_dir, tmp_path
):
    from captioner.pipeline import Captioner

    # <end> is likely at every word, so α decides how long the beam caption is: an app that ignored α would show one.
    model_dir = talkative_copy(tiny_model_dir, tmp_path / "model", end_bias=0.0)
    monkeypatch.setenv("CAPTIONER_MODEL", str(model_dir))
    monkeypatch.setenv(places.REPORT_ENV, str(report_file))
    monkeypatch.setenv(places.EXAMPLES_ENV, str(examples_dir))
    data = _jpeg(320, 240, seed=3)
    cap = Captioner.load(str(model_dir))
    encoded = cap.encode([data])
    at = _app()
    at.file_uploader(key="uploads").set_value(("alpha.jpg", data, "image/jpeg")).run()
    beams = set()
    for beam_size, alpha in [(5, 2.0), (5, 0.0), (3, 2.0), (3, 0.0)]:
        _slider(at, "Beam size").set_value(beam_size)
        _slider(at, "Length penalty α").set_value(alpha).run()
        _no_exceptions(at)
        greedy, beam = (cap.decode(encoded, k, alpha)[0].text for k in (1, beam_size))
        assert _shown_captions(at) == [greedy, beam], (beam_size, alpha)
        beams.add(beam)
    assert len(beams) >= 2  # the settings change the beam caption on this model


# ---- exports -------------------------------------------------------------------------------------------------------


def _caption_result(text: str, n_best: int = 0):
    from captioner.decode import Caption

    words = text.split()
    hyp = Caption(text, words, -3.5, -1.2, np.log(np.full(len(words) + 1, 0.5)), np.full((len(words), 7, 7), 1 / 49))
    return Caption(**{**hyp.__dict__, "n_best": [hyp] * n_best})


def test_exports_list_every_file_with_captions_or_its_error(tiny_model_dir):
    from captioner.pipeline import ModelInfo

    results = [
        caption.Result("a.jpg", photo=None, greedy=_caption_result("a dog"), beam=_caption_result("a brown dog", 2)),
        caption.Result("b.png", error="b.png: the file is empty (0 bytes)."),
    ]
    settings = sidebar.Settings(2, 0.5, 0.4, block_repeats=True, consensus=10, consensus_weight=0.5)
    rows = caption.captions_csv(results, settings).decode().splitlines()
    assert rows[0].startswith("file,greedy_caption,greedy_log_prob,beam_caption")
    assert rows[1].startswith("a.jpg,a dog,-3.5000,a brown dog,-3.5000,-1.2000,2,0.5,")
    assert rows[2] == "b.png,,,,,,,,b.png: the file is empty (0 bytes)."

    fake = type("Fake", (), {})()
    fake.info = ModelInfo("tiny", tiny_model_dir, None, "f" * 64)
    fake.config = type("Cfg", (), {"max_length": 6})()
    doc = json.loads(caption.captions_json(results, settings, fake))
    assert doc["decoding"] == {"beam_size": 2, "length_penalty": 0.5, "max_length": 6, "block_repeats": True,
                               "consensus": 10, "consensus_weight": 0.5}  # fmt: skip
    assert doc["images"][0]["greedy"]["words"] == [{"word": "a", "p": 0.5}, {"word": "dog", "p": 0.5}]
    assert len(doc["images"][0]["beam"]["n_best"]) == 2
    assert doc["images"][1] == {"file": "b.png", "error": "b.png: the file is empty (0 bytes)."}


# ---- the Test-set BLEU page ----------------------------------------------------------------------------------------


def _bleu_app() -> AppTest:
    at = _app()
    at.switch_page("pages/bleu_page.py").run()
    _no_exceptions(at)
    return at


def _table(at: AppTest):
    return at.dataframe[0].value


def test_corpus_table_names_the_reranking_the_beam_scores_were_made_with():
    # Catches the table presenting reranked scores as plain beam search.
    scores = {"bleu1": 68.3, "bleu2": 50.0, "bleu3": 35.6, "bleu4": 24.9, "cider": 0.632}
    report = {"corpus": {"greedy": scores, "beam": scores}, "decoding": {"beam_size": 10, "consensus": 10}}
    assert bleu.corpus_table(report)[""][1] == "This model — beam (k=10, reranked by 10 similar training photos)"
    del report["decoding"]["consensus"]  # a report from before reranking
    assert bleu.corpus_table(report)[""][1] == "This model — beam (k=10)"


def test_bleu_page_shows_corpus_scores_beside_the_published_anchors(app_env, report_file):
    at = _bleu_app()
    corpus = at.table[0].value
    assert list(corpus.index) == [
        "This model — greedy",
        "This model — beam (k=3)",
        "Show, Attend and Tell — soft attention",
        "Show, Attend and Tell — hard attention",
    ]
    assert list(corpus["BLEU-4"])[2:] == ["19.5", "21.3"] and list(corpus["CIDEr"])[2:] == ["—", "—"]
    report = json.loads(report_file.read_text())
    assert corpus["BLEU-4"].iloc[0] == f"{report['corpus']['greedy']['bleu4']:.1f}"
    assert [m.label for m in at.metric][:2] == ["BLEU-4, greedy", "BLEU-4, beam"]
    assert len(at.get("vega_lite_chart")) == 1  # the histogram


def test_bleu_table_sorts(app_env):
    at = _bleu_app()
    table = _table(at)
    assert len(table) == len(REPORT_IMAGES)
    assert list(table["Beam BLEU-4"]) == sorted(table["Beam BLEU-4"], reverse=True)  # default: best beam first

    at.selectbox(key="bleu_sort").set_value("image")
    at.toggle(key="bleu_descending").set_value(False).run()
    assert list(_table(at)["Image"]) == sorted(REPORT_IMAGES)

    at.selectbox(key="bleu_sort").set_value("delta").run()
    delta = list(_table(at)["Δ BLEU-4"])
    assert delta == sorted(delta)


def test_bleu_table_filters_by_words_agreement_and_score(app_env, report_file):
    at = _bleu_app()
    at.text_input(key="bleu_ref_words").input("dog").run()
    assert sorted(_table(at)["Image"]) == ["dog_beach.jpg", "dog_park.jpg"]

    at.text_input(key="bleu_ref_words").input("")
    at.text_input(key="bleu_pred_words").input("dogs").run()  # whole words only: "dogs" is not "dog"
    assert list(_table(at)["Image"]) == ["kids_pool.jpg"]

    at.text_input(key="bleu_pred_words").input("")
    at.selectbox(key="bleu_agreement").set_value("Greedy and beam differ").run()
    assert sorted(_table(at)["Image"]) == ["dog_park.jpg", "kids_pool.jpg", "man_bike.jpg"]
    at.selectbox(key="bleu_agreement").set_value("Beam scores higher").run()
    report = json.loads(report_file.read_text())
    higher = sorted(i["image"] for i in report["images"] if i["beam"]["bleu4"] > i["greedy"]["bleu4"])
    assert "dog_park.jpg" in higher and sorted(_table(at)["Image"]) == higher

    at.selectbox(key="bleu_agreement").set_value("All images")
    at.slider(key="bleu_beam_bleu4").set_value((50.0, 100.0)).run()
    table = _table(at)
    assert len(table) and (table["Beam BLEU-4"] >= 50).all()
    assert "kids_pool.jpg" not in set(table["Image"])

    at.slider(key="bleu_beam_bleu4").set_value((99.5, 100.0))
    at.selectbox(key="bleu_agreement").set_value("Greedy scores higher").run()
    assert _table(at).empty
    assert "No image matches the filters." in _texts(at.info)


def test_bleu_detail_view_shows_photo_references_scores_and_heatmaps(app_env):
    at = _bleu_app()
    at.selectbox(key="bleu_image").set_value("kids_pool.jpg").run()
    _no_exceptions(at)
    assert "kids_pool.jpg" in _image_captions(at)
    refs = next(m for m in _texts(at.markdown) if m.startswith("1. "))
    assert refs.count("\n") == 4 and "two children swim in a pool" in refs
    assert "#### a child in a pool" in _texts(at.markdown) and "#### two dogs run" in _texts(at.markdown)
    assert any(c.startswith("BLEU-1 ") and "CIDEr" in c for c in _texts(at.caption))

    at.toggle(key="bleu_attention").set_value(True).run()
    _no_exceptions(at)
    assert any("Computed now from the 160×120 thumbnail" in c for c in _texts(at.caption))
    assert "Greedy — attention for every word" in _image_captions(at)


def test_bleu_page_without_a_report_says_how_to_create_it(app_env, monkeypatch, tmp_path):
    monkeypatch.setenv(places.REPORT_ENV, str(tmp_path / "nowhere" / "test_report.json"))
    at = _bleu_app()
    assert "No evaluation report" in at.warning[0].value
    assert "captioner evaluate --data DIR --split test --beam 3 --out" in at.code[0].value


def test_bleu_page_reports_a_malformed_report_without_a_traceback(app_env, monkeypatch, tmp_path):
    broken = tmp_path / "test_report.json"
    broken.write_text('{"model": {}, "images": [', encoding="utf-8")
    monkeypatch.setenv(places.REPORT_ENV, str(broken))
    at = _bleu_app()
    assert "cannot be used" in at.error[0].value and "valid JSON" in at.error[0].value


def test_filters_treat_the_slider_ends_as_open_so_no_image_is_lost():
    import pandas as pd

    table = pd.DataFrame({
        "image": ["a", "b"], "greedy_cider": [0.5, 4.26], "beam_cider": [1.0, 4.4], "ref_words": [" x ", " y "],
        "pred_words": [" x ", " y "], "differ": [False, True],
    })  # fmt: skip
    hi = 4.0  # the slider's top, rounded below the data's maximum
    whole = bleu._open_range((0.0, hi), hi)
    assert whole == (-np.inf, np.inf)
    f = bleu.Filters(metric="cider", greedy_range=whole, beam_range=whole, sort_by="beam")
    assert list(bleu.apply_filters(table, f)["image"]) == ["b", "a"]
    f = bleu.Filters(metric="cider", greedy_range=bleu._open_range((1.0, hi), hi), beam_range=whole)
    assert list(bleu.apply_filters(table, f)["image"]) == ["b"]


def test_the_shipped_config_watches_no_files_and_never_reruns_on_save():
    # Catches the production config following every file under the repository (a .venv inside it cost ~3× the server
    # CPU per photo and flooded the log with inotify overflows).
    import tomllib

    server = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["server"]
    assert server["fileWatcherType"] == "none" and server["runOnSave"] is False
