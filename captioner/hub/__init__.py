"""Model sources and the Hugging Face Hub: choose a source, fetch and verify it, card and publish a model.

A source is a local model directory or `hf://OWNER/REPO[@REVISION]` (`sources`). Hub downloads go through
huggingface_hub into the standard HF cache, only the files a model needs (`fetching`); every model directory carries
a `manifest.json` with the sha256 of each file, checked before anything is loaded (`integrity`). `card` writes the
model card, `publish` pushes a model directory in one commit, and `failures` turns the client's exceptions into one
actionable line.

huggingface_hub (with httpx2) is imported inside the functions that talk to the Hub or write a model card: loading a
local or the bundled model never needs it, and importing it took ~0.15 s of the app's cold start.
"""

from captioner.hub.card import DATASET_ID, model_card
from captioner.hub.fetching import ResolvedModel, fetch
from captioner.hub.integrity import verify_manifest, write_manifest
from captioner.hub.publish import push
from captioner.hub.sources import HF_SCHEME, HubSource, LocalSource, choose_source, model_id, parse_source, read_secret

__all__ = [
    "DATASET_ID",
    "HF_SCHEME",
    "HubSource",
    "LocalSource",
    "ResolvedModel",
    "choose_source",
    "fetch",
    "model_card",
    "model_id",
    "parse_source",
    "push",
    "read_secret",
    "verify_manifest",
    "write_manifest",
]
