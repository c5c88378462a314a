"""Publishing: one commit to a Hub model repository with the model card and manifest, optionally tagged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.errors import HubError, ModelError
from captioner.files import CARD_FILE, MANIFEST_FILE, REQUIRED_FILES, WEIGHTS_FILE, published_files
from captioner.hub.card import model_card
from captioner.hub.failures import explain_push, network_errors
from captioner.hub.integrity import write_manifest
from captioner.hub.sources import HF_SCHEME, LIBRARY_NAME, parse_source

if TYPE_CHECKING:
    from huggingface_hub import HfApi


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

    (model_dir / CARD_FILE).write_text(model_card(model_dir, repo_id=repo_id), encoding="utf-8")
    names = [n for n in published_files(model_dir) if n != MANIFEST_FILE]
    manifest = write_manifest(model_dir, names)
    names.append(MANIFEST_FILE)

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
            commit_description=f"Weights sha256 {manifest['files'][WEIGHTS_FILE]}. Published with `captioner push`.",
            token=token,
        )
    except HubError:
        raise
    except (OSError, ValueError, *network_errors()) as error:
        raise HubError(f"Cannot push {model_dir} to {where}: {explain_push(repo_id, error)}.") from error
    commit = str(info.oid)
    if tag:
        try:
            api.create_tag(repo_id, tag=tag, revision=commit, tag_message=f"captioner model {tag}", token=token)
        except (OSError, ValueError, *network_errors()) as error:
            raise HubError(
                f"Pushed commit {commit} to {where} but could not tag it '{tag}': {explain_push(repo_id, error)}. "
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
