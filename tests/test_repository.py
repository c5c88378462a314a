"""What the repository commits: documents and JSON speak of the product, never of the machine they were made on."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCANNED = (".json", ".md", ".toml", ".txt", ".cfg", ".yaml", ".yml")
# An absolute path into a machine's own folders (POSIX home, work and temp folders, macOS users, Windows drives).
MACHINE_PATH = re.compile(
    r"(?<![\w.~-])(?:/(?:work|root|home|Users|tmp|mnt|srv|private|var/folders)/|[A-Za-z]:\\\\?\w)"
)


def committed_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout to know which files are committed")
    return [REPO_ROOT / name for name in out.splitlines() if name.endswith(SCANNED) or name == ".ci/run"]


def test_committed_documents_and_json_hold_no_absolute_machine_paths() -> None:
    found = []
    for path in committed_files():
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if match := MACHINE_PATH.search(line):
                found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {match.group(0)}…")
    assert not found, "absolute machine paths committed:\n" + "\n".join(found[:20])


def test_the_machine_path_pattern_catches_real_paths_and_spares_urls() -> None:
    assert MACHINE_PATH.search('"id": "/work/main/assets/model"')
    assert MACHINE_PATH.search("cached in /root/.cache/captioner")
    assert MACHINE_PATH.search(r"C:\Users\alice\model")
    assert not MACHINE_PATH.search("https://huggingface.co/datasets/jxie/flickr8k and ~/.cache/captioner")
    assert not MACHINE_PATH.search("assets/model, ../shared/flickr8k, hf://alice/captioner@v1")


def test_the_bundled_report_and_metrics_name_the_model_logically() -> None:
    metrics = json.loads((REPO_ROOT / "assets" / "model" / "metrics.json").read_text(encoding="utf-8"))
    with (REPO_ROOT / "assets" / "report" / "test_report.json").open(encoding="utf-8") as f:
        head = f.readline() + f.readline()  # '{' and the "model" line: the report is one field per line
    assert metrics["model_id"] == "bundled"
    assert '"id": "bundled"' in head


def test_every_bench_script_imports_only_helpers_that_exist() -> None:
    import ast

    common = ast.parse((REPO_ROOT / "bench" / "_common.py").read_text(encoding="utf-8"))
    helpers = {node.name for node in common.body if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    helpers |= {t.id for node in common.body if isinstance(node, ast.Assign) for t in node.targets}
    for script in sorted((REPO_ROOT / "bench").glob("*.py")):
        tree = ast.parse(script.read_text(encoding="utf-8"))
        wanted = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "_common"
                  for a in node.names}  # fmt: skip
        assert wanted <= helpers, f"{script.name} imports {sorted(wanted - helpers)} from bench/_common.py"
