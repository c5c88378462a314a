"""Captioner web app: `streamlit run app.py`.

Pages live in pages/ (Caption, Test-set BLEU, About the model); this entrypoint loads the model once per process
and draws the shared sidebar. `streamlit run` finds the `st.App` below and starts loading the model with the server,
so TensorFlow is on its way before the first browser connects; each session then runs this file as its script.
Settings it reads: CAPTIONER_MODEL (env or secret; a model directory or hf://OWNER/REPO@COMMIT), HF_TOKEN (secret,
for private Hub repos), CAPTIONER_REPORT (the BLEU page's report), CAPTIONER_EXAMPLES (example photos folder).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import streamlit as st

from pages import loader, sidebar


def pages() -> list[st.Page]:
    """The app's pages, in sidebar order.

    No url_path equals a file name in pages/: Streamlit also treats pages/ as a legacy page folder, and a URL
    matching a file there would run that file without this entrypoint.
    """
    return [
        st.Page(
            "pages/caption_page.py", title="Caption", icon=":material/photo_camera:", url_path="caption", default=True
        ),
        st.Page("pages/bleu_page.py", title="Test-set BLEU", icon=":material/leaderboard:", url_path="bleu"),
        st.Page("pages/about_page.py", title="About the model", icon=":material/info:", url_path="about"),
    ]


def main() -> None:
    """Start the model loading, draw the shared sidebar, and run the selected page."""
    st.set_page_config(page_title="Captioner", page_icon="🖼️", layout="wide")
    page = st.navigation(pages())
    loader.model_loader()  # started with the server; this starts it again after "Try again" or under AppTest
    model_slot = st.sidebar.container()
    sidebar.settings_ui()
    page.run()
    with model_slot:  # filled last, so it reports a model that the page has just finished loading
        sidebar.model_info_ui()


@asynccontextmanager
async def load_model_at_startup(_app: st.App) -> AsyncIterator[None]:
    """Server lifespan: start loading the model (in the background) as the server starts."""
    loader.model_loader()
    yield


if __name__ == "__main__":  # a session runs this file as its script
    main()
else:  # `streamlit run app.py` imports it to find the server app
    from streamlit.runtime.pages_manager import PagesManager

    # Until a script run first calls st.navigation, Streamlit routes by the legacy pages/ folder (caption_page,
    # bleu_page, …), so the first request after a server start that is a deep link (/bleu) got "Page not found".
    # Our pages are declared with st.navigation only: say so before any session starts.
    PagesManager.uses_pages_directory = False
    app = st.App(__file__, lifespan=load_model_at_startup)
