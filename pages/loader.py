"""The model, loaded once per server process on a background thread and shared by every session."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st
import threadpoolctl

from captioner.errors import CaptionerError
from pages import coldstart
from pages.places import MODEL_ENV

if TYPE_CHECKING:  # importing this starts TensorFlow; the model loader does that on its own thread
    from captioner.pipeline import Captioner

LOG = logging.getLogger("captioner.app")

MAX_BEAM = 10
LOADING_MESSAGE = "Loading the captioning model (once per server start)…"
# This module is imported once per server process.
_MODEL_LOCK = threading.RLock()
_DECODE_LOCK = threading.Lock()
# Sessions take turns at the model (model_lock), and one photo is a few small calls: with more than one thread per
# pool, the idle threads spun between calls (docs/serving.md). An explicit setting in the environment wins.
TF_THREADS = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def read_secrets() -> dict[str, Any]:
    """Streamlit secrets as a plain dict; empty when the app has none."""
    try:
        return st.secrets.to_dict()
    except Exception:  # no secrets.toml, or one that does not parse: run with the environment alone
        return {}


class ModelLoader:
    """Loads the model on a background thread, so pages render and uploads arrive while TensorFlow starts."""

    def __init__(self, secrets: Mapping[str, Any]):
        self._future: Future[Captioner] = Future()
        keep_keras_state_between_runs()
        one_thread_per_pool()
        threading.Thread(target=self._load, args=(dict(secrets),), name="captioner-load", daemon=True).start()

    def _load(self, secrets: dict[str, Any]) -> None:
        try:
            with coldstart.loading():
                with coldstart.importing():
                    from captioner.pipeline import Captioner  # imports Keras and TensorFlow

                cap = Captioner.load(None, secrets=secrets, fallback=True)  # $CAPTIONER_MODEL, secret, or bundled
                with model_lock():  # compile the backbone and the search now, not on the first upload
                    image = np.zeros((cap.config.image_size, cap.config.image_size, 3), np.uint8)
                    # One decoding graph serves greedy and every beam size, so one call compiles it for all of them.
                    cap.decode(cap.encode([image], ["warm-up"]), beam_size=default_beam(cap))
        except BaseException as e:
            if not isinstance(e, CaptionerError):
                LOG.exception("the model failed to load")
            self._future.set_exception(e)
        else:
            # matplotlib's first figure (~0.35 CPU-s) is left to the first heatmap: warming it up here competed
            # with the first caption for the GIL (bench/app_memory.py: first captions ~0.4 s later).
            self._future.set_result(cap)

    def done(self) -> bool:
        """Whether loading has finished (or failed)."""
        return self._future.done()

    def result(self) -> Captioner:
        """Wait for the model; raises what loading raised."""
        return self._future.result()


def keep_keras_state_between_runs() -> None:
    """Stop Streamlit from calling keras.backend.clear_session() after every script run.

    Streamlit clears Keras' state after each run for apps that build a model per run. This app builds its model once
    per process, and the clear empties TensorFlow's kernel cache, so the next backbone and decoder calls instantiate
    their graphs again: 0.07 → 0.40 CPU-s per photo, and under load every run of any session did it (docs/serving.md).
    Pyplot figures are still closed after each run, the other half of Streamlit's clean-up.
    """
    from streamlit.runtime.scriptrunner import script_runner

    if not hasattr(script_runner, "_clean_problem_modules"):
        LOG.warning("Streamlit's post-run clean-up has moved: Keras' caches may be cleared after every script run")
        return
    script_runner._clean_problem_modules = _close_pyplot_figures


def one_thread_per_pool() -> None:
    """TensorFlow's pools (read when TensorFlow starts) and numpy's BLAS get one thread each."""
    for name, value in TF_THREADS.items():
        os.environ.setdefault(name, value)
    if "OPENBLAS_NUM_THREADS" not in os.environ:
        threadpoolctl.threadpool_limits(1, user_api="blas")


def _close_pyplot_figures() -> None:
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@st.cache_resource(show_spinner=False)
def _model_loader(env_source: str | None, secret_source: str | None) -> ModelLoader:
    """One loader, hence one model, per process and model source; concurrent sessions share it."""
    return ModelLoader(read_secrets())


def model_lock() -> threading.RLock:
    """One lock per process around model calls, so concurrent sessions queue, not pile up."""
    return _MODEL_LOCK


def decode_lock() -> threading.Lock:
    """One upload decoded at a time per process: a big PNG briefly needs hundreds of MB, and sessions must not stack
    them. Apart from the model lock, so one session's photo decodes while another's is encoded."""
    return _DECODE_LOCK


def model_loader() -> ModelLoader:
    """Start loading the model if no session has yet (returns at once)."""
    # Keyed by what decides the source, so starting the load needs neither TensorFlow nor huggingface_hub here.
    secret = read_secrets().get(MODEL_ENV)
    return _model_loader(os.environ.get(MODEL_ENV), None if secret is None else str(secret))


def captioner_ui() -> Captioner | None:
    """Wait for the model behind a spinner; on failure show why (and allow a retry) and return None."""
    loader = model_loader()
    try:
        if loader.done():
            return loader.result()
        with st.spinner(LOADING_MESSAGE):
            return loader.result()
    except Exception as e:  # the UI edge: a message, never a traceback
        reason = str(e) if isinstance(e, CaptionerError) else f"Unexpected {type(e).__name__}: {e}"
        st.error(f"The captioning model could not be loaded. {reason}", icon="🚫")
        st.markdown(
            f"Point the `{MODEL_ENV}` environment variable (or Streamlit secret) at a model directory or at "
            "`hf://OWNER/REPO@COMMIT`, or restore the bundled model in `assets/model/`."
        )
        if st.button("Try again"):
            _model_loader.clear()
            st.rerun()
        return None


def loaded_captioner() -> Captioner | None:
    """The model if it has finished loading successfully, without waiting."""
    loader = model_loader()
    if not loader.done():
        return None
    try:
        return loader.result()
    except Exception:
        return None


def default_beam(cap: Captioner) -> int:
    """The beam size the model was evaluated with (metrics.json), else 3; within the slider's range."""
    return min(cap.tuned.beam_size, MAX_BEAM)
