"""Integrity: `manifest.json` lists the sha256 of every model file, and nothing is loaded that does not match it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from captioner.errors import ModelError
from captioner.files import MANIFEST_FILE, sha256_file, write_atomic
from captioner.hub.failures import brief

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Mismatch:
    """A manifest entry whose file is missing or has another hash."""

    name: str
    expected: str
    received: str | None  # None: the file is missing


def write_manifest(model_dir: str | os.PathLike[str], files: Iterable[str] | None = None) -> dict:
    """Write `manifest.json` with the sha256 of each file and return it.

    Args:
        model_dir: the model directory.
        files: names to cover; default every regular, non-hidden file in the directory except the manifest.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(
            f"Expected a model directory to write {MANIFEST_FILE} into. Received {model_dir}, not a directory."
        )
    if files is None:
        names = sorted(p.name for p in model_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        names = sorted(set(files))
    names = [n for n in names if n != MANIFEST_FILE]
    if missing := [n for n in names if not (model_dir / n).is_file()]:
        raise ModelError(f"Cannot write {model_dir / MANIFEST_FILE}: {', '.join(missing)} not found in {model_dir}.")
    manifest = {"files": {n: sha256_file(model_dir / n) for n in names}}
    write_atomic(model_dir / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def verify_manifest(model_dir: str | os.PathLike[str]) -> None:
    """Check every file listed in `manifest.json` against its sha256 (files not listed are ignored).

    Raises:
        ModelError: the manifest is missing or malformed, or a listed file is missing or does not match.
    """
    model_dir = Path(model_dir)
    _, problems = check_manifest(model_dir)
    if problems:
        raise ModelError(describe(problems, model_dir))


def _read_manifest(model_dir: Path) -> dict[str, str]:
    path = model_dir / MANIFEST_FILE
    fix = "Regenerate it with captioner.hub.write_manifest(DIR) from files you trust."
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelError(f"Expected {path} listing the sha256 of each model file; it does not exist. {fix}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path} is not readable JSON ({brief(e)}). {fix}") from e
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise ModelError(
            f'Expected {path} to hold {{"files": {{name: sha256}}}}. Received {type(data).__name__}. {fix}'
        )
    for name, digest in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..", MANIFEST_FILE):
            raise ModelError(f"{path} lists {name!r}; expected plain file names of the model directory. {fix}")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ModelError(f"{path} gives {name} the hash {digest!r}; expected 64 lowercase hex digits. {fix}")
    return files


def check_manifest(model_dir: Path) -> tuple[dict[str, str], list[Mismatch]]:
    files = _read_manifest(model_dir)
    problems = []
    for name, expected in sorted(files.items()):
        path = model_dir / name
        if not path.is_file():
            problems.append(Mismatch(name, expected, None))
        elif (received := sha256_file(path)) != expected:
            problems.append(Mismatch(name, expected, received))
    return files, problems


def describe(problems: list[Mismatch], where: object) -> str:
    parts = [
        f"{p.name} is missing (expected sha256 {p.expected})"
        if p.received is None
        else f"{p.name} does not match its manifest (expected sha256 {p.expected}, received {p.received})"
        for p in problems
    ]
    return f"Integrity check failed for {where}: {'; '.join(parts)}."
