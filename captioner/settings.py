"""The names of the settings the package, the CLI and the app read from the environment (and Streamlit secrets)."""

from __future__ import annotations

MODEL_ENV = "CAPTIONER_MODEL"  # the model source: a directory or hf://OWNER/REPO@REV; also a Streamlit secret
TOKEN_SECRET = "HF_TOKEN"  # a Hub token for private or gated repositories (environment or Streamlit secret)
REPORT_ENV = "CAPTIONER_REPORT"  # the evaluation report the BLEU page reads; thumbnails in <its folder>/thumbs
EXAMPLES_ENV = "CAPTIONER_EXAMPLES"  # the folder of example photos the Caption page offers
CACHE_ENV = "CAPTIONER_CACHE"  # the per-user cache (converted backbone weights, feature caches)
