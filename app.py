"""Captioner web app: `streamlit run app.py`.

Pages live in pages/ (Caption, Test-set BLEU, About the model); this entrypoint loads the model once per process
and draws the shared sidebar. Settings it reads: CAPTIONER_MODEL (env or secret; a model directory or
hf://OWNER/REPO@COMMIT), HF_TOKEN (secret, for private Hub repos), CAPTIONER_REPORT (the BLEU page's report),
CAPTIONER_EXAMPLES (example photos folder).
"""

from __future__ import annotations

import streamlit as st

from pages import common


def pages() -> list[st.Page]:
    """The app's pages, in sidebar order."""
    return [
        st.Page("pages/caption.py", title="Caption", icon=":material/photo_camera:", url_path="caption", default=True),
        st.Page("pages/bleu.py", title="Test-set BLEU", icon=":material/leaderboard:", url_path="bleu"),
        st.Page("pages/about.py", title="About the model", icon=":material/info:", url_path="about"),
    ]


def main() -> None:
    """Route to the selected page after loading the model and drawing the sidebar."""
    st.set_page_config(page_title="Captioner", page_icon="🖼️", layout="wide")
    page = st.navigation(pages())
    cap = common.captioner_ui()
    common.sidebar_ui(cap)
    page.run()


main()
