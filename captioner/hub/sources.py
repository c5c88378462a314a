"""Model sources: a local model directory or `hf://OWNER/REPO[@REVISION]`, and how one is chosen."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from captioner import paths
from captioner.errors import HubError, ModelError
from captioner.hub.failures import first_line
from captioner.settings import MODEL_ENV

HF_SCHEME = "hf://"
SOURCE_FORM = "a local model directory or hf://OWNER/REPO[@REVISION]"
COMMIT = re.compile(r"[0-9a-fA-F]{40}")
LIBRARY_NAME = "captioner"  # how the Hub client names us in its user agent
BUNDLED_ID = "bundled"


@dataclass(frozen=True)
class LocalSource:
    """A model directory on disk."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class HubSource:
    """A model repository on the Hub, at a revision (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    @property
    def pinned(self) -> bool:
        """Whether the revision is a full commit SHA, the only revision that cannot move."""
        return self.revision is not None and COMMIT.fullmatch(self.revision) is not None

    def at(self, commit: str) -> str:
        """Return this repository as a source pinned to `commit`."""
        return f"{HF_SCHEME}{self.repo_id}@{commit}"

    def __str__(self) -> str:
        return f"{HF_SCHEME}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def parse_source(text: str | os.PathLike[str]) -> LocalSource | HubSource:
    """Parse a model source: `hf://OWNER/REPO[@REVISION]` or a local directory path.

    Raises:
        ModelError: the text is empty.
        HubError: an `hf://` source is malformed.
    """
    text = str(text).strip()
    if not text:
        raise ModelError(f"Expected a model source: {SOURCE_FORM}. Received an empty string.")
    if not text.startswith(HF_SCHEME):
        return LocalSource(Path(text).expanduser())
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo_id, at, revision = text[len(HF_SCHEME) :].partition("@")
    problem = None
    if repo_id.count("/") != 1:
        problem = "the repository must be OWNER/REPO"
    else:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as e:
            problem = first_line(e)
    if problem is None and at and not revision:
        problem = "the revision after '@' is empty"
    if problem is None and any(c.isspace() for c in revision):
        problem = "the revision contains whitespace"
    if problem is not None:
        raise HubError(
            f"Expected a Hub model as hf://OWNER/REPO[@REVISION] (e.g. hf://alice/captioner@<commit sha>). "
            f"Received {text!r}: {problem}."
        )
    if COMMIT.fullmatch(revision):
        revision = revision.lower()
    return HubSource(repo_id, revision or None)


def read_secret(secrets: Mapping[str, object] | None, name: str) -> str | None:
    """Return a non-empty secret as a string, or None if it is absent or there is no secrets file."""
    if secrets is None:
        return None
    try:
        value = secrets.get(name)
    except (OSError, KeyError):
        # st.secrets raises FileNotFoundError on access when no secrets.toml exists.
        return None
    text = str(value).strip() if value is not None else ""
    return text or None


def choose_source(explicit: str | os.PathLike[str] | None = None, secrets: Mapping[str, object] | None = None) -> str:
    """Pick the model source: explicit argument, then $CAPTIONER_MODEL, then the secret, then the bundled model."""
    for candidate in (explicit, os.environ.get(MODEL_ENV), read_secret(secrets, MODEL_ENV)):
        if candidate is not None and str(candidate).strip():
            return str(candidate).strip()
    return str(paths.BUNDLED_MODEL_DIR)


def model_id(source: str, path: Path, commit: str | None) -> str:
    """The logical name of a loaded model for reports: `bundled`, `hf://OWNER/REPO@SHA` or its directory's name."""
    if commit is not None:
        parsed = parse_source(source)
        if isinstance(parsed, HubSource):
            return parsed.at(commit)
    if Path(path).resolve() == Path(paths.BUNDLED_MODEL_DIR).resolve():
        return BUNDLED_ID
    return Path(path).resolve().name
