"""Fetching: resolve a model source to a verified directory on disk (a local directory, or the Hub via its cache)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from captioner import paths
from captioner.errors import CaptionerError, HubError, ModelError
from captioner.files import MANIFEST_FILE, MODEL_FILES, OPTIONAL_PATTERNS, REQUIRED_FILES, WEIGHTS_FILE, sha256_file
from captioner.hub.failures import explain, is_unreachable, network_errors, unreachable
from captioner.hub.integrity import Mismatch, check_manifest, describe
from captioner.hub.sources import COMMIT, HF_SCHEME, LIBRARY_NAME, SOURCE_FORM, HubSource, parse_source


@dataclass(frozen=True)
class ResolvedModel:
    """A verified model directory on disk and where it came from."""

    path: Path
    source: str
    commit: str | None
    weights_sha256: str
    notice: str | None = None


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
            f"Expected {SOURCE_FORM}. Received {source!r}, which is not a directory. "
            "Point --model or CAPTIONER_MODEL at a model directory, or use hf://OWNER/REPO@COMMIT."
        )
    if missing := [n for n in REQUIRED_FILES if not (path / n).is_file()]:
        raise ModelError(
            f"{path} is not a captioner model directory: {', '.join(missing)} missing. "
            f"Expected {', '.join(REQUIRED_FILES)} (and {MANIFEST_FILE})."
        )
    if not (path / MANIFEST_FILE).is_file():
        notice = f"{path} has no {MANIFEST_FILE}, so its files were not integrity-checked."
        return ResolvedModel(path.resolve(), source, None, sha256_file(path / WEIGHTS_FILE), notice)
    files, problems = check_manifest(path)
    if problems:
        raise ModelError(
            describe(problems, path) + " Restore the files, or regenerate the manifest if you changed them."
        )
    if uncovered := [n for n in REQUIRED_FILES if n not in files]:
        raise ModelError(
            f"{path / MANIFEST_FILE} does not cover {', '.join(uncovered)}; regenerate it with write_manifest."
        )
    return ResolvedModel(path.resolve(), source, None, files[WEIGHTS_FILE], None)


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
                    return ResolvedModel(cached, str(src), src.revision, files[WEIGHTS_FILE], None)
                _evict(cached, problems)
                notices.append(f"The cached copy of {src} was corrupt ({describe(problems, 'it')}); downloaded again.")

    try:
        info = HfApi(library_name=LIBRARY_NAME).repo_info(src.repo_id, revision=src.revision, token=token)
    except (OSError, *network_errors()) as error:
        if not is_unreachable(error):
            raise HubError(f"Cannot load {src}: {explain(src, error)}.") from error
        return _from_cache_offline(src, error, token, partial)

    try:
        folder = _snapshot(src, token, local_files_only=False)
    except (OSError, *network_errors()) as error:
        raise HubError(f"Cannot load {src}: {explain(src, error, downloading=True)}.") from error
    commit = folder.name if COMMIT.fullmatch(folder.name) else str(info.sha)
    if not src.pinned:
        notices.append(_unpinned_notice(src, commit))
    files, problems = _check_snapshot(folder, src, commit)
    if problems:
        _evict(folder, problems)
        raise HubError(
            f"Cannot load {src.at(commit)}: {describe(problems, 'the download')} The corrupt copy was removed from "
            "the cache; retry, and if this persists the repository does not match its manifest — re-publish it "
            "with `captioner push`."
        )
    return ResolvedModel(folder, str(src), commit, files[WEIGHTS_FILE], _join(notices))


def _snapshot(src: HubSource, token: str | None, *, local_files_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        src.repo_id,
        revision=src.revision,
        allow_patterns=[*MODEL_FILES, *OPTIONAL_PATTERNS],
        token=token,
        local_files_only=local_files_only,
        library_name=LIBRARY_NAME,
    )
    return Path(folder)


def _from_cache_offline(src: HubSource, error: BaseException, token: str | None, partial: bool) -> ResolvedModel:
    """The Hub is unreachable: use the cached copy of this revision, or explain that there is none."""
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    reason = unreachable(error)
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
                    f"{describe(problems, 'it')} It was removed; retry when the Hub is reachable."
                ) from error
            notice = (
                f"{reason[0].upper()}{reason[1:]}; using the cached copy of {src} (commit {commit}), which may be "
                f"out of date. Pin it as {src.at(commit)}."
            )
            return ResolvedModel(cached, str(src), commit, files[WEIGHTS_FILE], notice)
    state = (
        "the cached copy of this revision is incomplete (an earlier download was interrupted)"
        if partial
        else "this revision is not in the local cache"
    )
    raise HubError(
        f"Cannot load {src}: {reason} and {state}. Retry when the Hub is reachable, or use a local model directory."
    ) from error


def _check_snapshot(folder: Path, src: HubSource, commit: str | None) -> tuple[dict[str, str], list[Mismatch]]:
    where = src.at(commit) if commit else str(src)
    if missing := [n for n in (*REQUIRED_FILES, MANIFEST_FILE) if not (folder / n).is_file()]:
        raise HubError(
            f"Cannot load {where}: it is not a captioner model repository ({', '.join(missing)} missing). "
            f"Expected {', '.join(REQUIRED_FILES)} and {MANIFEST_FILE}, as `captioner push` uploads them."
        )
    try:
        files, problems = check_manifest(folder)
    except ModelError as e:
        raise HubError(f"Cannot load {where}: {e}") from e
    if uncovered := [n for n in REQUIRED_FILES if n not in files]:
        raise HubError(f"Cannot load {where}: its {MANIFEST_FILE} does not cover {', '.join(uncovered)}.")
    return files, problems


def _evict(folder: Path, problems: list[Mismatch]) -> None:
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


def _join(parts: Iterable[str | None]) -> str | None:
    text = " ".join(p for p in parts if p)
    return text or None
