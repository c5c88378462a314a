"""The app with `CAPTIONER_MODEL=hf://OWNER/REPO@SHA`: loads from the (fake) Hub, then from the cache offline."""

from __future__ import annotations

import sys

from conftest import REPO
from streamlit.testing.v1 import AppTest
from test_hub import fake_hub  # noqa: F401 — the fake Hub fixture, with huggingface_hub pointed at it

if str(REPO) not in sys.path:  # the pages package sits at the repository root, beside app.py
    sys.path.insert(0, str(REPO))

from pages import loader


def _about_sidebar(timeout: int = 180) -> str:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=timeout).run()
    at.switch_page("pages/about_page.py").run()  # waits for the model
    assert not at.exception, [e.value for e in at.exception]
    texts = [e.value for e in (*at.sidebar.markdown, *at.sidebar.caption, *at.sidebar.warning, *at.sidebar.error)]
    return " ".join(texts)


def test_app_loads_a_pinned_hub_model_then_serves_it_from_the_cache_when_the_hub_is_down(
    fake_hub,  # noqa: F811
    tiny_model_dir,
    monkeypatch,
):
    sha = fake_hub.commit("alice/captioner", {p.name: p.read_bytes() for p in tiny_model_dir.iterdir()})
    monkeypatch.setenv("CAPTIONER_MODEL", f"hf://alice/captioner@{sha}")
    loader._model_loader.clear()
    online = _about_sidebar()
    assert f"hf://alice/captioner@{sha}" in online and sha[:12] in online
    assert "No model" not in online and "bundled" not in online.lower()
    assert fake_hub.requests("GET", "resolve")  # the weights really came over HTTP

    fake_hub.stop()
    loader._model_loader.clear()  # a fresh process: nothing in memory, only the HF cache on disk
    offline = _about_sidebar()
    assert sha[:12] in offline and "No model" not in offline and "bundled" not in offline.lower()
