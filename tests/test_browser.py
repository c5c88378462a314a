"""End to end in a real browser: `streamlit run app.py` driven by headless Chromium through Playwright.

Needs Debian's chromium (/usr/bin/chromium; `apt-get install -y chromium`) and the playwright Python package;
Playwright's own browser downloads are never used. Screenshots land in test-artifacts/ at the repository root.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import PHOTOS, REPO, in_ci, needs, needs_module, talkative_copy
from PIL import Image
from streamlit_server import (
    CHROMIUM,
    FAKE_CAMERA_ARGS,
    free_port,
    launch_browser,
    start_server,
    stop_server,
    wait_healthy,
)

from captioner.report import build_report, write_report

pytestmark = pytest.mark.browser

ARTIFACTS = REPO / "test-artifacts"
TIMEOUT_MS = 180_000  # the server's first session imports TensorFlow and loads the model


def _jpeg(w: int, h: int, seed: int = 0, orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3)) + rng.normal(0, 20, (h, w, 3))
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser_report")
    names = ["dog.jpg", "bike.jpg", "pool.jpg"]
    refs = [["a dog runs on the beach"] * 5, ["a man rides a bike"] * 5, ["kids swim in a pool"] * 5]
    report = build_report(
        model={"id": "tiny-test", "config": {}, "weights_sha256": "0" * 64},
        split="test",
        decoding={"beam_size": 3, "length_penalty": 0.7, "max_length": 6},
        image_names=names,
        references=refs,
        greedy=["a dog runs", "a man rides a bike", "a child in a pool"],
        beam=["a dog runs on the beach", "a man on a bike", "kids in a pool"],
    )
    write_report(report, root / "test_report.json")
    (root / "thumbs").mkdir()
    for i, name in enumerate(names):
        (root / "thumbs" / name).write_bytes(_jpeg(160, 120, seed=i))
    return root / "test_report.json"


@contextmanager
def _serving(model_dir: Path, report_file: Path, tmp: Path, log_name: str) -> Iterator[str]:
    """`streamlit run app.py` on a free loopback port, serving the given model and report; yields its URL."""
    needs(CHROMIUM.exists(), f"needs Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)")
    needs_module("playwright", "needs the playwright Python package")
    port = free_port()
    env = {
        **os.environ,
        "CAPTIONER_MODEL": str(model_dir),
        "CAPTIONER_REPORT": str(report_file),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log_path = tmp / "streamlit.log"
    proc = start_server(env, port, log_path)
    try:
        try:
            wait_healthy(port, proc)
        except (RuntimeError, TimeoutError) as e:
            pytest.fail(f"{e}:\n{log_path.read_text(errors='replace')[-3000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)
        # Keep the server's log with the screenshots: it holds any traceback the app logged instead of showing.
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copyfile(log_path, ARTIFACTS / log_name)


@pytest.fixture(scope="module")
def talkative_model(tiny_model_dir, tmp_path_factory) -> Path:
    return talkative_copy(tiny_model_dir, tmp_path_factory.mktemp("talkative") / "model")


@pytest.fixture(scope="module")
def server(talkative_model, report_file, tmp_path_factory) -> Iterator[str]:
    """The server most tests share, serving the tiny model and the test report."""
    with _serving(talkative_model, report_file, tmp_path_factory.mktemp("server"), "browser_streamlit.log") as url:
        yield url


@contextmanager
def _browser(height: int = 2400, extra_args: list[str] | None = None):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        # A fresh profile each run; Playwright takes it as user_data_dir instead of a --user-data-dir flag.
        context = launch_browser(p, profile, height=height, extra_args=extra_args)
        try:
            tab = context.new_page()
            tab.set_default_timeout(TIMEOUT_MS)
            yield tab
        finally:
            context.close()


def test_a_deep_link_is_the_first_request_after_a_server_start_without_page_not_found(
    talkative_model, report_file, tmp_path
):
    # Catches Streamlit's legacy pages/ router answering before st.navigation has run: a cold server used to show
    # a "Page not found" dialog for /bleu (every Community Cloud wake-up that starts from a shared link).
    with _serving(talkative_model, report_file, tmp_path, "browser_deep_link.log") as url, _browser() as tab:
        tab.goto(f"{url}/bleu")
        tab.get_by_role("heading", name="Test-set BLEU").wait_for()
        _wait_until_idle(tab)
        assert tab.get_by_text("Page not found", exact=False).count() == 0
        assert tab.locator("[role=dialog]").count() == 0
        assert tab.url.endswith("/bleu")
        tab.goto(f"{url}/about")
        tab.get_by_role("heading", name="About the model").wait_for()
        assert tab.get_by_text("Page not found", exact=False).count() == 0


@pytest.fixture(scope="module")
def page(server):
    with _browser(extra_args=FAKE_CAMERA_ARGS) as tab:
        yield tab


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> list[Path]:
    """A full-resolution photo, a text file posing as a JPEG, and a file over the 25 MB upload limit."""
    folder = tmp_path_factory.mktemp("uploads")
    photos = sorted(PHOTOS.glob("*.jpg")) if PHOTOS.is_dir() else []
    needs(bool(photos) or not in_ci(), f"needs the full-resolution photos in {PHOTOS}")
    if photos:
        photo = folder / photos[0].name
        shutil.copyfile(photos[0], photo)
    else:
        photo = folder / "generated.jpg"
        photo.write_bytes(_jpeg(500, 375, orientation=6))
    notes = folder / "notes.jpg"
    notes.write_bytes(b"my holiday notes, not a photo\n" * 20)
    huge = folder / "huge.jpg"
    huge.write_bytes(_jpeg(64, 48) + bytes(26 * 2**20))
    return [photo, notes, huge]


def _wait_until_idle(page) -> None:
    """Wait until the script run has finished and every image and chart on the page has drawn."""
    page.wait_for_timeout(500)
    page.locator("[data-testid=stStatusWidget]").wait_for(state="detached")
    page.wait_for_function("() => [...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)")


def _screenshot(page, name: str) -> None:
    _wait_until_idle(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_upload_captions_heatmap_and_bleu_page_in_chromium(server, page, uploads):
    photo, notes, huge = uploads
    page.goto(server)
    page.get_by_role("heading", name="Caption photos").wait_for()
    page.locator("input[type=file]").first.set_input_files([str(p) for p in uploads])

    page.get_by_text("Captioned 1 of 3 file(s)", exact=False).wait_for()
    page.get_by_text("Greedy", exact=True).first.wait_for()
    page.get_by_text("Beam search (k=3", exact=False).first.wait_for()
    assert page.get_by_text("log p = ", exact=False).count() == 2
    assert page.get_by_text("(empty caption)").count() == 0  # real words, so the heatmaps have words to show
    page.get_by_role("heading", name=photo.name).wait_for()
    page.get_by_text(f"{notes.name}: not a recognised image", exact=False).wait_for()
    page.get_by_text(f"{huge.name}: the file is 26.0 MB; the upload limit is 25 MB", exact=False).wait_for()

    heatmap = page.get_by_text("Greedy — attention for every word", exact=True)
    heatmap.wait_for()
    images = page.locator("[data-testid=stImage] img")
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stImage] img')].every(i => i.complete)")
    widths = images.evaluate_all("els => els.map(e => e.naturalWidth)")
    assert len(widths) >= 2 and min(widths) > 0  # the photo and the attention grid both decoded in the browser
    assert page.locator("[data-testid=stException]").count() == 0
    _screenshot(page, "browser_caption.png")

    page.get_by_role("link", name="Test-set BLEU").click()
    page.get_by_role("heading", name="Test-set BLEU").wait_for()
    page.get_by_text("Show, Attend and Tell — soft attention", exact=False).first.wait_for(state="attached")
    page.locator("[data-testid=stDataFrame]").first.wait_for()
    page.get_by_text("References", exact=True).wait_for()
    page.locator("[data-testid=stVegaLiteChart]").first.wait_for()  # the per-image BLEU-4 histogram
    assert page.locator("[data-testid=stException]").count() == 0
    _screenshot(page, "browser_bleu.png")
    assert page.url.endswith("/bleu")


def test_a_camera_photo_is_captioned_in_chromium(server, page):
    # Catches a camera shot that the browser takes but the page never captions (Chromium's fake camera is the device).
    page.goto(server)
    page.get_by_role("heading", name="Caption photos").wait_for()
    page.get_by_text("Take a photo with the camera", exact=True).click()
    # The shutter only takes a frame once the fake camera streams; clicked earlier, it takes nothing.
    page.wait_for_function("() => [...document.querySelectorAll('video')].some(v => v.readyState >= 2)", timeout=60_000)
    page.get_by_role("button", name="Take Photo").click()
    page.get_by_role("heading", name="camera-", exact=False).wait_for()
    page.get_by_text("Captioned 1 of 1 file(s)", exact=False).wait_for()
    assert page.get_by_text("log p = ", exact=False).count() == 2
    assert page.locator("[data-testid=stException]").count() == 0
    _screenshot(page, "browser_camera.png")
