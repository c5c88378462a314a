"""Model sources: choose one, fetch it (local directory or Hugging Face Hub), verify it, and publish to the Hub.

A source is a local model directory or `hf://OWNER/REPO[@REVISION]`. Hub downloads go through huggingface_hub
into the standard HF cache (only the files a model needs); every model directory carries a `manifest.json` with
the sha256 of each file, checked before anything is loaded.

huggingface_hub (with httpx2) and yaml are imported inside the functions that talk to the Hub or write a model card:
loading a local or the bundled model never needs them, and importing them took ~0.15 s of the app's cold start.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from captioner import paths
from captioner.errors import CaptionerError, HubError, ModelError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

HF_SCHEME = "hf://"
SOURCE_ENV = "CAPTIONER_MODEL"  # also the name of the Streamlit secret
TOKEN_SECRET = "HF_TOKEN"
MANIFEST = "manifest.json"
WEIGHTS = "model.weights.h5"
REQUIRED_FILES = ("config.json", "vocab.json", WEIGHTS)
# All a Hub download fetches; the last three are optional (captioner.imagenet and captioner.familiarity).
MODEL_FILES = (
    *REQUIRED_FILES,
    "metrics.json",
    "README.md",
    MANIFEST,
    "imagenet_head.npz",
    "imagenet_labels.txt",
    "familiarity.npz",
)
DATASET_ID = "jxie/flickr8k"  # Flickr8k on the Hub (official 6000/1000/1000 split), for the card's metadata
LIBRARY_NAME = "captioner"

_SOURCE_FORM = "a local model directory or hf://OWNER/REPO[@REVISION]"
_COMMIT = re.compile(r"[0-9a-fA-F]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CITATION = (
    'M. Hodosh, P. Young and J. Hockenmaier (2013), "Framing Image Description as a Ranking Task: Data, Models '
    'and Evaluation Metrics", Journal of Artificial Intelligence Research (JAIR) 47:853–899.'
)
_BIBTEX = """@article{hodosh2013framing,
  title   = {Framing Image Description as a Ranking Task: Data, Models and Evaluation Metrics},
  author  = {Hodosh, Micah and Young, Peter and Hockenmaier, Julia},
  journal = {Journal of Artificial Intelligence Research},
  volume  = {47},
  pages   = {853--899},
  year    = {2013}
}"""


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
        return self.revision is not None and _COMMIT.fullmatch(self.revision) is not None

    def at(self, commit: str) -> str:
        """Return this repository as a source pinned to `commit`."""
        return f"{HF_SCHEME}{self.repo_id}@{commit}"

    def __str__(self) -> str:
        return f"{HF_SCHEME}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class ResolvedModel:
    """A verified model directory on disk and where it came from."""

    path: Path
    source: str
    commit: str | None
    weights_sha256: str
    notice: str | None = None


@dataclass(frozen=True)
class _Mismatch:
    name: str
    expected: str
    received: str | None  # None: the file is missing


# ---- choosing a source ---------------------------------------------------------------------------------------


def parse_source(text: str | os.PathLike[str]) -> LocalSource | HubSource:
    """Parse a model source: `hf://OWNER/REPO[@REVISION]` or a local directory path.

    Raises:
        ModelError: the text is empty.
        HubError: an `hf://` source is malformed.
    """
    text = str(text).strip()
    if not text:
        raise ModelError(f"Expected a model source: {_SOURCE_FORM}. Received an empty string.")
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
            problem = _first_line(e)
    if problem is None and at and not revision:
        problem = "the revision after '@' is empty"
    if problem is None and any(c.isspace() for c in revision):
        problem = "the revision contains whitespace"
    if problem is not None:
        raise HubError(
            f"Expected a Hub model as hf://OWNER/REPO[@REVISION] (e.g. hf://alice/captioner@<commit sha>). "
            f"Received {text!r}: {problem}."
        )
    if _COMMIT.fullmatch(revision):
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
    for candidate in (explicit, os.environ.get(SOURCE_ENV), read_secret(secrets, SOURCE_ENV)):
        if candidate is not None and str(candidate).strip():
            return str(candidate).strip()
    return str(paths.BUNDLED_MODEL_DIR)


# ---- manifests -------------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(model_dir: str | os.PathLike[str], files: Iterable[str] | None = None) -> dict:
    """Write `manifest.json` with the sha256 of each file and return it.

    Args:
        model_dir: the model directory.
        files: names to cover; default every regular, non-hidden file in the directory except the manifest.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"Expected a model directory to write {MANIFEST} into. Received {model_dir}, not a directory.")
    if files is None:
        names = sorted(p.name for p in model_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        names = sorted(set(files))
    names = [n for n in names if n != MANIFEST]
    if missing := [n for n in names if not (model_dir / n).is_file()]:
        raise ModelError(f"Cannot write {model_dir / MANIFEST}: {', '.join(missing)} not found in {model_dir}.")
    manifest = {"files": {n: sha256_file(model_dir / n) for n in names}}
    tmp = model_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, model_dir / MANIFEST)
    return manifest


def verify_manifest(model_dir: str | os.PathLike[str]) -> None:
    """Check every file listed in `manifest.json` against its sha256 (files not listed are ignored).

    Raises:
        ModelError: the manifest is missing or malformed, or a listed file is missing or does not match.
    """
    model_dir = Path(model_dir)
    _, problems = _check_manifest(model_dir)
    if problems:
        raise ModelError(_describe(problems, model_dir))


def _read_manifest(model_dir: Path) -> dict[str, str]:
    path = model_dir / MANIFEST
    fix = "Regenerate it with captioner.hub.write_manifest(DIR) from files you trust."
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelError(f"Expected {path} listing the sha256 of each model file; it does not exist. {fix}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path} is not readable JSON ({_brief(e)}). {fix}") from e
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise ModelError(
            f'Expected {path} to hold {{"files": {{name: sha256}}}}. Received {type(data).__name__}. {fix}'
        )
    for name, digest in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..", MANIFEST):
            raise ModelError(f"{path} lists {name!r}; expected plain file names of the model directory. {fix}")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ModelError(f"{path} gives {name} the hash {digest!r}; expected 64 lowercase hex digits. {fix}")
    return files


def _check_manifest(model_dir: Path) -> tuple[dict[str, str], list[_Mismatch]]:
    files = _read_manifest(model_dir)
    problems = []
    for name, expected in sorted(files.items()):
        path = model_dir / name
        if not path.is_file():
            problems.append(_Mismatch(name, expected, None))
        elif (received := sha256_file(path)) != expected:
            problems.append(_Mismatch(name, expected, received))
    return files, problems


def _describe(problems: list[_Mismatch], where: object) -> str:
    parts = [
        f"{p.name} is missing (expected sha256 {p.expected})"
        if p.received is None
        else f"{p.name} does not match its manifest (expected sha256 {p.expected}, received {p.received})"
        for p in problems
    ]
    return f"Integrity check failed for {where}: {'; '.join(parts)}."


# ---- fetching --------------------------------------------------------------------------------------------------


def fetch(source: str | os.PathLike[str], *, fallback: bool = False, token: str | None = None) -> ResolvedModel:
    """Resolve a model source to a verified directory on disk.

    A local directory is checked against its manifest. `hf://` downloads the model files into the HF cache (or
    reuses them: a pinned commit that is cached needs no network at all), then checks them.

    Args:
        source: a local directory or `hf://OWNER/REPO[@REVISION]`.
        fallback: on any failure, load the bundled model instead, with a notice naming the cause (the app);
            otherwise raise (the CLI).
        token: a Hub token for private or gated repositories; default: HF_TOKEN or the cached `hf auth login`.

    Raises:
        HubError: the Hub model cannot be fetched or fails its integrity check (only without fallback).
        ModelError: the local directory is missing, incomplete or corrupt (only without fallback).
    """
    try:
        parsed = parse_source(source)
        if isinstance(parsed, HubSource):
            return _fetch_hub(parsed, token)
        return _fetch_local(parsed.path, str(parsed))
    except CaptionerError as error:
        bundled = Path(paths.BUNDLED_MODEL_DIR)
        if not fallback or _is_dir(source, bundled):
            raise
        try:
            model = _fetch_local(bundled, str(bundled))
        except CaptionerError as bundled_error:
            raise type(bundled_error)(f"{error} The bundled model failed too: {bundled_error}") from bundled_error
        return replace(model, notice=_join([f"{error} Using the bundled model instead.", model.notice]))


def _is_dir(source: str | os.PathLike[str], directory: Path) -> bool:
    text = str(source).strip()
    if not text or text.startswith(HF_SCHEME):
        return False
    try:
        return Path(text).expanduser().resolve() == directory.resolve()
    except OSError:
        return False


def _fetch_local(path: Path, source: str) -> ResolvedModel:
    if not path.is_dir():
        raise ModelError(
            f"Expected {_SOURCE_FORM}. Received {source!r}, which is not a directory. "
            "Point --model or CAPTIONER_MODEL at a model directory, or use hf://OWNER/REPO@COMMIT."
        )
    if missing := [n for n in REQUIRED_FILES if not (path / n).is_file()]:
        raise ModelError(
            f"{path} is not a captioner model directory: {', '.join(missing)} missing. "
            f"Expected {', '.join(REQUIRED_FILES)} (and {MANIFEST})."
        )
    if not (path / MANIFEST).is_file():
        notice = f"{path} has no {MANIFEST}, so its files were not integrity-checked."
        return ResolvedModel(path.resolve(), source, None, sha256_file(path / WEIGHTS), notice)
    files, problems = _check_manifest(path)
    if problems:
        raise ModelError(
            _describe(problems, path) + " Restore the files, or regenerate the manifest if you changed them."
        )
    if uncovered := [n for n in REQUIRED_FILES if n not in files]:
        raise ModelError(f"{path / MANIFEST} does not cover {', '.join(uncovered)}; regenerate it with write_manifest.")
    return ResolvedModel(path.resolve(), source, None, files[WEIGHTS], None)


def _fetch_hub(src: HubSource, token: str | None) -> ResolvedModel:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    notices: list[str] = []
    partial = False
    if src.pinned:
        # A commit never changes: if it is fully cached, nothing needs the network.
        try:
            cached = _snapshot(src, token, local_files_only=True)
        except LocalEntryNotFoundError as e:
            partial = isinstance(e, IncompleteSnapshotError)
        else:
            try:
                files, problems = _check_snapshot(cached, src, src.revision)
            except HubError:
                partial = True  # an incomplete or odd cached copy: let a fresh download decide
            else:
                if not problems:
                    return ResolvedModel(cached, str(src), src.revision, files[WEIGHTS], None)
                _evict(cached, problems)
                notices.append(f"The cached copy of {src} was corrupt ({_describe(problems, 'it')}); downloaded again.")

    try:
        info = HfApi(library_name=LIBRARY_NAME).repo_info(src.repo_id, revision=src.revision, token=token)
    except (OSError, *_network_errors()) as error:
        if not _is_unreachable(error):
            raise HubError(f"Cannot load {src}: {_explain(src, error)}.") from error
        return _from_cache_offline(src, error, token, partial)

    try:
        folder = _snapshot(src, token, local_files_only=False)
    except (OSError, *_network_errors()) as error:
        raise HubError(f"Cannot load {src}: {_explain(src, error, downloading=True)}.") from error
    commit = folder.name if _COMMIT.fullmatch(folder.name) else str(info.sha)
    if not src.pinned:
        notices.append(_unpinned_notice(src, commit))
    files, problems = _check_snapshot(folder, src, commit)
    if problems:
        _evict(folder, problems)
        raise HubError(
            f"Cannot load {src.at(commit)}: {_describe(problems, 'the download')} The corrupt copy was removed from "
            "the cache; retry, and if this persists the repository does not match its manifest — re-publish it "
            "with `captioner push`."
        )
    return ResolvedModel(folder, str(src), commit, files[WEIGHTS], _join(notices))


def _snapshot(src: HubSource, token: str | None, *, local_files_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        src.repo_id,
        revision=src.revision,
        allow_patterns=list(MODEL_FILES),
        token=token,
        local_files_only=local_files_only,
        library_name=LIBRARY_NAME,
    )
    return Path(folder)


def _from_cache_offline(src: HubSource, error: BaseException, token: str | None, partial: bool) -> ResolvedModel:
    """The Hub is unreachable: use the cached copy of this revision, or explain that there is none."""
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    reason = _unreachable(error)
    if not src.pinned:
        try:
            cached = _snapshot(src, token, local_files_only=True)
        except LocalEntryNotFoundError as e:
            partial = isinstance(e, IncompleteSnapshotError)
        else:
            commit = cached.name
            files, problems = _check_snapshot(cached, src, commit)
            if problems:
                _evict(cached, problems)
                raise HubError(
                    f"Cannot load {src}: {reason}, and the cached copy (commit {commit}) is corrupt: "
                    f"{_describe(problems, 'it')} It was removed; retry when the Hub is reachable."
                ) from error
            notice = (
                f"{reason[0].upper()}{reason[1:]}; using the cached copy of {src} (commit {commit}), which may be "
                f"out of date. Pin it as {src.at(commit)}."
            )
            return ResolvedModel(cached, str(src), commit, files[WEIGHTS], notice)
    state = (
        "the cached copy of this revision is incomplete (an earlier download was interrupted)"
        if partial
        else "this revision is not in the local cache"
    )
    raise HubError(
        f"Cannot load {src}: {reason} and {state}. Retry when the Hub is reachable, or use a local model directory."
    ) from error


def _check_snapshot(folder: Path, src: HubSource, commit: str | None) -> tuple[dict[str, str], list[_Mismatch]]:
    where = src.at(commit) if commit else str(src)
    if missing := [n for n in (*REQUIRED_FILES, MANIFEST) if not (folder / n).is_file()]:
        raise HubError(
            f"Cannot load {where}: it is not a captioner model repository ({', '.join(missing)} missing). "
            f"Expected {', '.join(REQUIRED_FILES)} and {MANIFEST}, as `captioner push` uploads them."
        )
    try:
        files, problems = _check_manifest(folder)
    except ModelError as e:
        raise HubError(f"Cannot load {where}: {e}") from e
    if uncovered := [n for n in REQUIRED_FILES if n not in files]:
        raise HubError(f"Cannot load {where}: its {MANIFEST} does not cover {', '.join(uncovered)}.")
    return files, problems


def _evict(folder: Path, problems: list[_Mismatch]) -> None:
    """Remove bad files (and the cache blobs they link to) so the next download fetches them again."""
    for problem in problems:
        link = folder / problem.name
        try:
            blob = link.resolve() if link.is_symlink() else None
            link.unlink(missing_ok=True)
            if blob is not None:
                blob.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only cache keeps the bad file; verification keeps refusing it


def _unpinned_notice(src: HubSource, commit: str) -> str:
    moving = f"'{src.revision}' is a branch or tag" if src.revision else "it follows the default branch"
    return (
        f"{src} is not pinned: {moving} and can move; it resolved to commit {commit}. "
        f"Pin it as {src.at(commit)} for reproducible results."
    )


# ---- error messages --------------------------------------------------------------------------------------------


def _network_errors() -> tuple[type[BaseException], ...]:
    """Failures that mean "the Hub cannot be reached" rather than "the Hub said no".

    OfflineModeIsEnabled (HF_HUB_OFFLINE=1) is a ConnectionError.
    """
    import httpx2

    return httpx2.TransportError, ConnectionError, TimeoutError


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _is_unreachable(error: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    for exc in _chain(error):
        if isinstance(exc, _network_errors()):
            return True
        if isinstance(exc, HfHubHTTPError) and (_status(exc) or 0) >= 500:
            return True
    return False


def _first_line(error: BaseException | str) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= 200 else line[:197] + "..."


def _brief(error: BaseException) -> str:
    detail = _first_line(error)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def _unreachable(error: BaseException) -> str:
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    for exc in _chain(error):
        if isinstance(exc, OfflineModeIsEnabled):
            return "offline mode is on (HF_HUB_OFFLINE=1)"
        if isinstance(exc, HfHubHTTPError) and (_status(exc) or 0) >= 500:
            return f"the Hub at {constants.ENDPOINT} is unavailable (HTTP {_status(exc)})"
    root = next((e for e in _chain(error) if isinstance(e, _network_errors())), error)
    return f"the Hub at {constants.ENDPOINT} could not be reached ({_brief(root)})"


def _explain(src: HubSource, error: BaseException, *, downloading: bool = False) -> str:
    """One actionable line for a failure of huggingface_hub, looking through the exception chain."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    page = f"{constants.ENDPOINT}/{src.repo_id}"
    for exc in _chain(error):
        if isinstance(exc, GatedRepoError):
            if _status(exc) == 403:
                return (
                    f"your token has no access to the gated repository {src.repo_id}; request access at {page} "
                    "or use a token of an account that has it"
                )
            return (
                f"{src.repo_id} is a gated repository and no token was sent; accept its conditions at {page}, "
                "then set HF_TOKEN (or run `hf auth login`)"
            )
        if isinstance(exc, RevisionNotFoundError):
            return (
                f"revision '{src.revision or constants.DEFAULT_REVISION}' does not exist in {src.repo_id}; "
                "use an existing commit SHA (preferred), tag or branch"
            )
        if isinstance(exc, RepositoryNotFoundError):
            return (
                f"repository {src.repo_id} was not found on {constants.ENDPOINT}; check OWNER/REPO, and if it is "
                "private set HF_TOKEN to a token that can read it"
            )
        if isinstance(exc, HfHubHTTPError) and _status(exc) == 401:
            return "the Hub rejected the token (HTTP 401); set HF_TOKEN to a valid token, or unset it for public repos"
        if isinstance(exc, HfHubHTTPError) and _status(exc) == 403:
            return f"access to {src.repo_id} was denied (HTTP 403); use a token with read access to it"
    if _is_unreachable(error):
        if downloading:
            root = next((e for e in _chain(error) if isinstance(e, _network_errors())), error)
            return (
                f"the connection to the Hub was lost during the download ({_brief(root)}); the partial file was "
                "discarded, retry when the connection is stable"
            )
        return _unreachable(error)
    if isinstance(error, HfHubHTTPError):
        return f"the Hub answered HTTP {_status(error)} ({_first_line(error)})"
    if "consistency check failed" in str(error).lower():
        return f"a file arrived incomplete ({_first_line(error)}); it was discarded, retry the download"
    return f"could not store it in the Hugging Face cache {constants.HF_HUB_CACHE} ({_brief(error)})"


def _join(parts: Iterable[str | None]) -> str | None:
    text = " ".join(p for p in parts if p)
    return text or None


# ---- model card ------------------------------------------------------------------------------------------------


def _load_json(path: Path, *, required: bool) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        if not required:
            return None
        raise ModelError(f"Expected {path} (the model's JSON); it does not exist.") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path} is not readable JSON ({_brief(e)}).") from e
    if not isinstance(data, dict):
        raise ModelError(f"Expected {path} to hold a JSON object. Received {type(data).__name__}.")
    return data


_SCORES = (("bleu1", "BLEU-1"), ("bleu2", "BLEU-2"), ("bleu3", "BLEU-3"), ("bleu4", "BLEU-4"), ("cider", "CIDEr"))


def _decoding_label(kind: str, decoding: Mapping[str, object]) -> str:
    blocked = ", repeated trigrams blocked" if decoding.get("block_repeats") else ""
    if kind == "greedy":
        return f"greedy{blocked}"
    if not kind.startswith("beam"):
        return kind
    size = decoding.get("beam_size", "?") if kind == "beam" else kind.removeprefix("beam")  # "beam3": beam size 3
    return f"beam {size}, length penalty {decoding.get('length_penalty', '?')}{blocked}"


def _score(value: object, key: str) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    return f"{value:.3f}" if key == "cider" else f"{value:.2f}"


def _index_metrics(metrics: Mapping[str, object]) -> list[dict]:
    decoding = metrics.get("decoding") if isinstance(metrics.get("decoding"), Mapping) else {}
    corpus = metrics.get("corpus") if isinstance(metrics.get("corpus"), Mapping) else {}
    results = []
    for kind, scores in corpus.items():
        if not isinstance(scores, Mapping):
            continue
        for key, label in _SCORES:
            value = scores.get(key)
            if isinstance(value, (int, float)):
                results.append(
                    {
                        "type": "cider" if key == "cider" else "bleu",
                        "name": f"{label} ({_decoding_label(kind, decoding)})",
                        "value": round(float(value), 3 if key == "cider" else 2),
                    }
                )
    return results


def _score_table(block: Mapping[str, object], decoding: Mapping[str, object]) -> str:
    rows = ["| Decoding | " + " | ".join(label for _, label in _SCORES) + " |", "|---" * (len(_SCORES) + 1) + "|"]
    for kind, scores in block.items():
        if isinstance(scores, Mapping):
            cells = " | ".join(_score(scores.get(key), key) for key, _ in _SCORES)
            rows.append(f"| {_decoding_label(kind, decoding)} | {cells} |")
    return "\n".join(rows)


def _cell(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text.replace("|", "\\|")


def _size(value: object) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}×{value[1]}"
    return f"{value}×{value}" if isinstance(value, int) else str(value)


def _decoder_text(config: Mapping[str, object]) -> str:
    units, attention = config.get("units", "?"), config.get("attention_units", "?")
    gate = ", gated" if config.get("attention_gate") else ""
    return (
        f"an attention LSTM ({units} units, started from the mean image region) queries additive (Bahdanau) "
        f"attention ({attention} units{gate}) over the grid regions; a language LSTM ({units} units) turns the "
        f"attended context into next-word probabilities over {config.get('vocab_size', '?')} words "
        f"({config.get('embed_dim', '?')}-d word embeddings)"
    )


def model_card(model_dir: str | os.PathLike[str], repo_id: str | None = None) -> str:
    """Build the model card (`README.md`: YAML metadata + Markdown) from config.json and metrics.json."""
    model_dir = Path(model_dir)
    config = _load_json(model_dir / "config.json", required=True) or {}
    metrics = _load_json(model_dir / "metrics.json", required=False)
    model_id = str((metrics or {}).get("model_id") or config.get("model_id") or model_dir.resolve().name)
    repo = repo_id or "OWNER/REPO"
    decoding = (metrics or {}).get("decoding") if isinstance((metrics or {}).get("decoding"), Mapping) else {}
    index_metrics = _index_metrics(metrics) if metrics else []

    meta: dict[str, object] = {
        "library_name": "keras",
        "pipeline_tag": "image-to-text",
        "language": ["en"],
        "tags": ["image-captioning", "keras", "flickr8k", "lstm", "attention"],
        "datasets": [DATASET_ID],
    }
    if index_metrics:
        meta["metrics"] = sorted({m["type"] for m in index_metrics})
        meta["model-index"] = [
            {
                "name": model_id,
                "results": [
                    {
                        "task": {"type": "image-to-text", "name": "Image captioning"},
                        "dataset": {"type": DATASET_ID, "name": "Flickr8k", "split": "test"},
                        "metrics": index_metrics,
                    }
                ],
            }
        ]
    import yaml

    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)

    backbone = config.get("backbone", "unknown")
    weights = model_dir / WEIGHTS
    weights_line = f"`{WEIGHTS}` sha256: `{sha256_file(weights)}`" if weights.is_file() else f"`{WEIGHTS}`"
    config_rows = "\n".join(
        f"| `{_cell(k)}` | {_cell(v)} |" for k, v in config.items() if not isinstance(v, dict) or len(str(v)) < 80
    )

    if metrics and isinstance(metrics.get("corpus"), Mapping):
        results = (
            "Corpus BLEU (percent, all five references per image) and CIDEr on the 1,000-image Flickr8k **test** "
            f"split:\n\n{_score_table(metrics['corpus'], decoding)}"
        )
        if isinstance(metrics.get("dev"), Mapping):
            results += f"\n\nOn the dev split (used for tuning):\n\n{_score_table(metrics['dev'], decoding)}"
    else:
        results = (
            "**Not evaluated:** this model directory has no `metrics.json`, so no BLEU scores are reported. "
            "Evaluate it on the test split and push again."
        )

    beam = decoding.get("beam_size", 3)
    penalty = decoding.get("length_penalty", 0.7)
    block = decoding.get("block_repeats") is True
    max_length = config.get("max_length") or decoding.get("max_length")
    sections = [
        f"# Captioner — {model_id}",
        "An image-captioning model: it writes one English sentence describing a photo, and shows where it "
        "looked for each word. Trained with the `captioner` package (Keras 3) on Flickr8k.",
        "## Architecture",
        f"- **Encoder:** the `{backbone}` convolutional backbone (EfficientNet-Lite, ImageNet-pretrained), input "
        f"{_size(config.get('image_size', '?'))} RGB, giving a {_size(config.get('grid', '?'))} grid of image "
        "features.\n"
        f"- **Decoder:** {_decoder_text(config)}; each caption comes with its per-word attention maps.\n"
        f"- **Files:** `config.json` (hyper-parameters), `vocab.json` (word list), `{WEIGHTS}` (all Keras "
        f"weights, backbone included), `metrics.json` (scores), `{MANIFEST}` (sha256 of every file).",
        f"| Setting | Value |\n|---|---|\n{config_rows}" if config_rows else "",
        "## Training data and split",
        "[Flickr8k](https://huggingface.co/datasets/" + DATASET_ID + ") (Hodosh et al., 2013): 8,091 Flickr "
        "photos with five English captions each, official split — 6,000 train, 1,000 dev, 1,000 test images. "
        "The model was trained on the train split; hyper-parameters and decoding settings were tuned on dev "
        "only; the test split was used once, for the scores below.",
        "## Evaluation",
        results,
        "## Decoding",
        f"Captions are decoded with beam search: beam size {beam}, length penalty {penalty} (finished captions "
        f"ranked by log-probability / length^{penalty})"
        + (f", at most {max_length} words" if max_length else "")
        + (", and no three-word phrase repeated within a caption (greedy too)" if block else "")
        + ". Beam size 1 is greedy decoding. The settings were chosen on the dev split.",
        "## How to use",
        "Install the `captioner` package, then load this model by its Hub address. Pin a commit SHA — a branch "
        "or tag works but can move, and `captioner` says so:",
        f'```python\nfrom captioner import Captioner\n\ncap = Captioner.load("hf://{repo}@COMMIT_SHA")\n'
        f'print(cap.caption(["photo.jpg"], beam_size={beam}, length_penalty={penalty}'
        + (", block_repeats=True" if block else "")
        + ")[0].text)\nprint(cap.info)  # source, commit, "
        "weights sha256\n```",
        f"The command line and the app take the same address: `--model hf://{repo}@COMMIT_SHA`, or "
        f"`CAPTIONER_MODEL=hf://{repo}@COMMIT_SHA`. Files are downloaded once into the Hugging Face cache and "
        f"checked against `{MANIFEST}`; a mismatch is an error, never loaded. {weights_line}.",
        "## Limitations",
        "- Trained on 6,000 photos of everyday scenes (many people and dogs): it describes unfamiliar content "
        "with generic or wrong captions, and may name objects that are not there.\n"
        "- English only; the vocabulary is limited to words frequent in the training captions.\n"
        "- It inherits the biases of Flickr8k's photos and captions (e.g. gendered words guessed from "
        "appearance).\n"
        "- BLEU and CIDEr measure overlap with five reference captions, not correctness; do not rely on the "
        "captions where errors matter (e.g. accessibility) without human review.\n"
        "- Flickr8k's images come from Flickr; the dataset is meant for research and demonstration, not "
        "commercial use.",
        "## Citation",
        f"Dataset: {_CITATION}",
        f"```bibtex\n{_BIBTEX}\n```",
    ]
    return f"---\n{front}---\n\n" + "\n\n".join(s for s in sections if s) + "\n"


# ---- publishing ------------------------------------------------------------------------------------------------


def push(
    model_dir: str | os.PathLike[str],
    repo_id: str,
    tag: str | None = None,
    token: str | None = None,
    private: bool = False,
) -> str:
    """Publish a model directory to the Hub in one commit and return that commit's SHA (the one to pin).

    Writes `README.md` (the model card) and `manifest.json` into the directory first, creates the repository
    if needed, uploads the model files, and tags the commit if asked.

    Raises:
        ModelError: the directory is not a complete model directory.
        HubError: the upload failed (no token, no write access, Hub unreachable, tag already exists, ...).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    model_dir = Path(model_dir)
    if "@" in repo_id:
        raise HubError(f"Expected the repository as OWNER/REPO, without a revision. Received {repo_id!r}.")
    parse_source(HF_SCHEME + repo_id)  # raises HubError naming the expected form
    if not model_dir.is_dir():
        raise ModelError(f"Expected a model directory to push. Received {model_dir}, which is not a directory.")
    if missing := [n for n in REQUIRED_FILES if not (model_dir / n).is_file()]:
        raise ModelError(
            f"Cannot push {model_dir}: {', '.join(missing)} missing. Expected {', '.join(REQUIRED_FILES)}."
        )

    (model_dir / "README.md").write_text(model_card(model_dir, repo_id=repo_id), encoding="utf-8")
    names = [n for n in MODEL_FILES if n != MANIFEST and (model_dir / n).is_file()]
    manifest = write_manifest(model_dir, names)
    names.append(MANIFEST)

    api = HfApi(library_name=LIBRARY_NAME)
    where = f"{HF_SCHEME}{repo_id}"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        if tag:
            _ensure_new_tag(api, repo_id, tag, token)
        info = api.create_commit(
            repo_id,
            [CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(model_dir / n)) for n in names],
            commit_message=f"Upload captioner model {model_dir.resolve().name}",
            commit_description=f"Weights sha256 {manifest['files'][WEIGHTS]}. Published with `captioner push`.",
            token=token,
        )
    except HubError:
        raise
    except (OSError, ValueError, *_network_errors()) as error:
        raise HubError(f"Cannot push {model_dir} to {where}: {_explain_push(repo_id, error)}.") from error
    commit = str(info.oid)
    if tag:
        try:
            api.create_tag(repo_id, tag=tag, revision=commit, tag_message=f"captioner model {tag}", token=token)
        except (OSError, ValueError, *_network_errors()) as error:
            raise HubError(
                f"Pushed commit {commit} to {where} but could not tag it '{tag}': {_explain_push(repo_id, error)}. "
                f"Pin hf://{repo_id}@{commit}, or tag it on the Hub."
            ) from error
    return commit


def _ensure_new_tag(api: HfApi, repo_id: str, tag: str, token: str | None) -> None:
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        api.repo_info(repo_id, revision=tag, token=token)
    except RevisionNotFoundError:
        return
    raise HubError(
        f"Cannot push to {HF_SCHEME}{repo_id}: a tag or branch named '{tag}' already exists. A tag marks one "
        "published model; choose a new one (e.g. the next version)."
    )


def _explain_push(repo_id: str, error: BaseException) -> str:
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    namespace = repo_id.split("/")[0]
    for exc in _chain(error):
        status = _status(exc) if isinstance(exc, HfHubHTTPError) else None
        if status == 401 or isinstance(exc, RepositoryNotFoundError):
            return (
                "the Hub did not accept the credentials (no token, or an invalid one); run `hf auth login` or set "
                "HF_TOKEN to a token with write access"
            )
        if status == 403:
            return f"the token cannot write to {repo_id} (HTTP 403); use a write token of {namespace} or of a member"
        if status is not None and status < 500:
            return f"the Hub answered HTTP {status} ({_first_line(exc)})"
        if isinstance(exc, ValueError) and "metadata" in str(exc):
            return f"the Hub rejected the model card metadata ({_first_line(exc)})"
    if _is_unreachable(error):
        return _unreachable(error)
    return _brief(error)


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `captioner push` to a (sub)parser."""
    parser.add_argument("--model", required=True, type=Path, metavar="DIR", help="model directory to publish")
    parser.add_argument("--repo-id", required=True, metavar="OWNER/REPO", help="Hub model repository")
    parser.add_argument("--tag", default=None, help="also tag the commit, e.g. v1 (must not exist yet)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.epilog = "Authenticate with `hf auth login` or the HF_TOKEN environment variable (a write token)."


def run_push(args: argparse.Namespace) -> int:
    """Run `captioner push`: print the commit SHA to pin; on failure print one error line and return 1."""
    from huggingface_hub import constants

    try:
        commit = push(args.model, args.repo_id, tag=args.tag, private=args.private)
    except CaptionerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    tagged = f" and tagged {args.tag}" if args.tag else ""
    print(f"Pushed {args.model} to {constants.ENDPOINT}/{args.repo_id}{tagged}: commit {commit}")
    print(f"Pin it with: --model {HF_SCHEME}{args.repo_id}@{commit}")
    return 0
