"""captioner.hub: choosing a model source, fetching it from the Hub, integrity checks, publishing.

The real Hub is unreachable here, so these tests run huggingface_hub's real client against tests/fake_hub.py, a
small HTTP server on 127.0.0.1 that answers the API, resolve, CDN and upload endpoints the way the Hub does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from fake_hub import FakeHub, Fault, sha256_hex
from huggingface_hub import ModelCard, constants
from huggingface_hub.utils import close_session

from captioner import cli, hub, paths
from captioner.errors import HubError, ModelError
from captioner.files import MANIFEST_FILE as MANIFEST
from captioner.files import MODEL_FILES
from captioner.files import WEIGHTS_FILE as WEIGHTS
from captioner.hub import (
    HubSource,
    LocalSource,
    choose_source,
    fetch,
    model_card,
    parse_source,
    push,
    verify_manifest,
    write_manifest,
)
from captioner.settings import MODEL_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
ALICE, BOB = "hf_alice_token", "hf_bob_token"
REPO = "alice/captioner-tiny"
UNKNOWN_SHA = "0123456789abcdef0123456789abcdef01234567"
METRICS = {
    "model_id": "lite0-attn-lstm",
    "split": "test",
    "decoding": {"beam_size": 3, "length_penalty": 0.7},
    "corpus": {
        "greedy": {"bleu1": 58.214, "bleu2": 39.87, "bleu3": 26.1, "bleu4": 17.456, "cider": 0.4721},
        "beam": {"bleu1": 60.5, "bleu2": 42.013, "bleu3": 28.9, "bleu4": 19.876, "cider": 0.5103},
    },
    "dev": {
        "greedy": {"bleu1": 57.0, "bleu2": 38.5, "bleu3": 25.0, "bleu4": 16.9, "cider": 0.45},
        "beam": {"bleu1": 59.9, "bleu2": 41.2, "bleu3": 28.0, "bleu4": 19.1, "cider": 0.5},
    },
}
CONFIG = {
    "backbone": "efficientnet_lite0",
    "image_size": 224,
    "grid": [7, 7],
    "feature_channels": 1280,
    "vocab_size": 9,
    "max_length": 22,
    "embed_dim": 50,
    "units": 512,
    "feature_dim": 512,
    "attention_units": 256,
    "dropout": 0.5,
    "attention_gate": True,
}


def make_model_dir(path: Path, *, seed: int = 0, metrics: bool = True) -> Path:
    """A model directory shaped like assets/model, with small dummy weights (no Keras needed)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(CONFIG, indent=2), encoding="utf-8")
    words = ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "runs", "on", "grass"]
    (path / "vocab.json").write_text(json.dumps({"words": words}), encoding="utf-8")
    weights = b"\x89HDF\r\n\x1a\n" + np.random.default_rng(seed).bytes(300_000)
    (path / WEIGHTS).write_bytes(weights)
    if metrics:
        (path / "metrics.json").write_text(json.dumps(METRICS, indent=2), encoding="utf-8")
    write_manifest(path)
    return path


def model_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}


def publish(fake: FakeHub, model_dir: Path, repo_id: str = REPO, **extra: bytes) -> str:
    """Put a model on the fake Hub's main branch (server side) and return the commit."""
    (model_dir / "README.md").write_text(model_card(model_dir, repo_id), encoding="utf-8")
    write_manifest(model_dir)
    return fake.commit(repo_id, {**model_files(model_dir), **extra})


def cache_root() -> Path:
    return Path(constants.HF_HUB_CACHE).resolve()


def repo_cache(repo_id: str = REPO) -> Path:
    return cache_root() / ("models--" + repo_id.replace("/", "--"))


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A started fake Hub, with huggingface_hub pointed at it and a fresh HF cache and token store."""
    fake = FakeHub(tokens={ALICE: "alice", BOB: "bob"}).start()
    # huggingface_hub copies HF_ENDPOINT, HF_HUB_CACHE, ... into `constants` at import time.
    monkeypatch.setattr(constants, "ENDPOINT", fake.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "stored_tokens"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "hf" / ".agent_harnesses.json"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # LFS uploads, which the fake speaks, not Xet
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", MODEL_ENV):
        monkeypatch.delenv(var, raising=False)
    yield fake
    fake.stop()
    close_session()
    assert not fake.unhandled, [f"{c.method} {c.path}" for c in fake.unhandled]


@pytest.fixture
def bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bundled model directory standing in for assets/model."""
    path = make_model_dir(tmp_path / "bundled", seed=99)
    monkeypatch.setattr(paths, "BUNDLED_MODEL_DIR", path)
    return path


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "model")


# ---- sources ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf://alice/captioner", HubSource("alice/captioner", None)),
        ("hf://alice/captioner@main", HubSource("alice/captioner", "main")),
        (f"hf://alice/cap.v2@{UNKNOWN_SHA.upper()}", HubSource("alice/cap.v2", UNKNOWN_SHA)),
        ("  hf://alice/captioner@refs/pr/3 ", HubSource("alice/captioner", "refs/pr/3")),
        ("assets/model", LocalSource(Path("assets/model"))),
        ("~/models/m1", LocalSource(Path("~/models/m1").expanduser())),
    ],
)
def test_parse_source_accepts_directories_and_hub_uris(text: str, expected: object) -> None:
    assert parse_source(text) == expected


def test_only_a_full_commit_sha_counts_as_pinned() -> None:
    assert parse_source(f"hf://a/b@{UNKNOWN_SHA}").pinned
    assert not parse_source("hf://a/b@0123456").pinned
    assert not parse_source("hf://a/b@v1").pinned
    assert not parse_source("hf://a/b").pinned


@pytest.mark.parametrize(
    "text", ["hf://", "hf://alice", "hf://alice/", "hf://a/b/c", "hf://alice/repo@", "hf://al ice/r", "hf://a/b@x y"]
)
def test_parse_source_rejects_malformed_hub_uris_naming_the_form(text: str) -> None:
    with pytest.raises(HubError, match=re.escape("hf://OWNER/REPO[@REVISION]")):
        parse_source(text)


def test_parse_source_rejects_an_empty_source() -> None:
    with pytest.raises(ModelError, match="Expected a model source"):
        parse_source("  ")


def test_choose_source_prefers_argument_then_env_then_secret_then_bundled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MODEL_ENV, raising=False)
    secrets = {MODEL_ENV: "hf://s/secret"}
    assert choose_source() == str(paths.BUNDLED_MODEL_DIR)
    assert choose_source(secrets=secrets) == "hf://s/secret"
    monkeypatch.setenv(MODEL_ENV, "hf://e/env")
    assert choose_source(secrets=secrets) == "hf://e/env"
    assert choose_source("hf://a/arg", secrets=secrets) == "hf://a/arg"
    monkeypatch.setenv(MODEL_ENV, " ")
    assert choose_source(secrets={}) == str(paths.BUNDLED_MODEL_DIR)


def test_choose_source_tolerates_a_missing_secrets_file(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoSecretsFile(dict):
        def get(self, key: str, default: object = None) -> object:
            raise FileNotFoundError("No secrets found")  # what st.secrets does without secrets.toml

    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert choose_source(secrets=NoSecretsFile()) == str(paths.BUNDLED_MODEL_DIR)


# ---- manifests and local directories ---------------------------------------------------------------------------


def test_manifest_lists_the_sha256_of_every_file(model_dir: Path) -> None:
    manifest = json.loads((model_dir / MANIFEST).read_text())
    expected = {n: hashlib.sha256((model_dir / n).read_bytes()).hexdigest() for n in model_files(model_dir)}
    del expected[MANIFEST]
    assert manifest == {"files": expected}
    verify_manifest(model_dir)


def test_verify_manifest_names_the_file_with_expected_and_received_hashes(model_dir: Path) -> None:
    expected = hashlib.sha256((model_dir / WEIGHTS).read_bytes()).hexdigest()
    (model_dir / WEIGHTS).write_bytes(b"tampered")
    received = hashlib.sha256(b"tampered").hexdigest()
    with pytest.raises(ModelError) as error:
        verify_manifest(model_dir)
    assert WEIGHTS in str(error.value) and expected in str(error.value) and received in str(error.value)


def test_verify_manifest_reports_missing_files_and_ignores_extra_ones(model_dir: Path) -> None:
    (model_dir / "notes.txt").write_text("not in the manifest")
    verify_manifest(model_dir)
    (model_dir / "vocab.json").unlink()
    with pytest.raises(ModelError, match=r"vocab\.json is missing"):
        verify_manifest(model_dir)


def test_verify_manifest_rejects_a_malformed_manifest(model_dir: Path) -> None:
    (model_dir / MANIFEST).write_text(json.dumps({"files": {"../config.json": "0" * 64}}))
    with pytest.raises(ModelError, match="plain file names"):
        verify_manifest(model_dir)
    (model_dir / MANIFEST).write_text("{not json")
    with pytest.raises(ModelError, match="not readable JSON"):
        verify_manifest(model_dir)


def test_fetch_local_directory_reports_its_weights_hash(model_dir: Path) -> None:
    model = fetch(str(model_dir))
    assert model.path == model_dir.resolve() and model.commit is None and model.notice is None
    assert model.weights_sha256 == hashlib.sha256((model_dir / WEIGHTS).read_bytes()).hexdigest()


def test_fetch_local_directory_without_manifest_says_it_is_unchecked(model_dir: Path) -> None:
    (model_dir / MANIFEST).unlink()
    model = fetch(str(model_dir))
    assert model.notice is not None and "not integrity-checked" in model.notice


def test_corrupt_local_directory_is_an_error_or_the_bundled_model_with_a_notice(model_dir: Path, bundled: Path) -> None:
    (model_dir / WEIGHTS).write_bytes(b"bit rot")
    with pytest.raises(ModelError, match=re.escape(WEIGHTS)):
        fetch(str(model_dir))
    model = fetch(str(model_dir), fallback=True)
    assert model.path == bundled.resolve() and model.source == str(bundled)
    assert WEIGHTS in model.notice and "bundled model" in model.notice


def test_missing_directory_names_the_expected_forms(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=re.escape("hf://OWNER/REPO")) as error:
        fetch(str(tmp_path / "nowhere"))
    one_line(error)


# ---- fetching from the Hub ---------------------------------------------------------------------------------------


def test_first_download_fetches_only_the_model_files_into_the_hf_cache(fake_hub: FakeHub, model_dir: Path) -> None:
    sha = publish(fake_hub, model_dir, **{"optimizer.h5": b"\0" * 5000, "train_log.txt": b"epoch 1"})
    model = fetch(f"hf://{REPO}@{sha}")

    assert model.commit == sha and model.notice is None and model.source == f"hf://{REPO}@{sha}"
    assert model.path == repo_cache() / "snapshots" / sha  # the standard HF cache layout
    assert sorted(p.name for p in model.path.iterdir()) == sorted(MODEL_FILES)
    assert model.weights_sha256 == sha256_hex((model_dir / WEIGHTS).read_bytes())
    assert (model.path / WEIGHTS).read_bytes() == (model_dir / WEIGHTS).read_bytes()
    paths_asked = " ".join(c.path for c in fake_hub.calls)
    assert "optimizer.h5" not in paths_asked and "train_log.txt" not in paths_asked
    assert fake_hub.requests("GET", rf"^/api/models/{REPO}/tree/{sha}$")  # the real client listed the tree
    assert len(fake_hub.requests("GET", r"^/blobs/")) == 1  # the LFS weights came from the CDN origin


def test_pinned_commit_is_served_from_the_cache_even_with_the_hub_stopped(fake_hub: FakeHub, model_dir: Path) -> None:
    sha = publish(fake_hub, model_dir)
    first = fetch(f"hf://{REPO}@{sha}")
    calls = len(fake_hub.calls)
    assert fetch(f"hf://{REPO}@{sha}") == first
    assert len(fake_hub.calls) == calls  # a cached commit needs no request at all
    fake_hub.stop()
    assert fetch(f"hf://{REPO}@{sha}") == first


def test_branch_is_resolved_with_a_pin_notice_and_cached_copy_used_when_the_hub_is_down(
    fake_hub: FakeHub, model_dir: Path
) -> None:
    sha = publish(fake_hub, model_dir)
    default = fetch(f"hf://{REPO}")
    assert default.commit == sha
    assert "not pinned" in default.notice and "default branch" in default.notice and f"@{sha}" in default.notice
    main = fetch(f"hf://{REPO}@main")
    assert main.commit == sha and "'main' is a branch or tag" in main.notice and f"hf://{REPO}@{sha}" in main.notice

    fake_hub.stop()
    offline = fetch(f"hf://{REPO}@main")
    assert offline.commit == sha and offline.path == main.path
    assert "could not be reached" in offline.notice and "cached copy" in offline.notice
    assert fake_hub.url in offline.notice


def test_pinned_commit_ignores_later_commits_that_move_the_branch(fake_hub: FakeHub, model_dir: Path) -> None:
    old_sha = publish(fake_hub, model_dir)
    old_weights = sha256_hex((model_dir / WEIGHTS).read_bytes())
    fake_hub.tag(REPO, "v1", old_sha)
    (model_dir / WEIGHTS).write_bytes(b"\x89HDF retrained" + bytes(1000))
    new_sha = publish(fake_hub, model_dir)

    assert fetch(f"hf://{REPO}@{old_sha}").weights_sha256 == old_weights
    latest = fetch(f"hf://{REPO}@main")
    assert latest.commit == new_sha and latest.weights_sha256 == sha256_hex((model_dir / WEIGHTS).read_bytes())
    tagged = fetch(f"hf://{REPO}@v1")
    assert tagged.commit == old_sha and tagged.weights_sha256 == old_weights
    assert "'v1' is a branch or tag" in tagged.notice


def test_offline_mode_uses_the_cached_copy_without_any_request(
    fake_hub: FakeHub, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = publish(fake_hub, model_dir)
    fetch(f"hf://{REPO}@main")
    calls = len(fake_hub.calls)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    model = fetch(f"hf://{REPO}@main")
    assert model.commit == sha and model.notice.startswith("Offline mode is on (HF_HUB_OFFLINE=1)")
    assert len(fake_hub.calls) == calls


def test_corrupt_cached_copy_of_a_pinned_commit_is_downloaded_again(fake_hub: FakeHub, model_dir: Path) -> None:
    sha = publish(fake_hub, model_dir)
    first = fetch(f"hf://{REPO}@{sha}")
    (first.path / WEIGHTS).write_bytes(b"bit rot in the cache")  # writes through the symlink into the blob
    again = fetch(f"hf://{REPO}@{sha}")
    assert again.weights_sha256 == first.weights_sha256
    assert (again.path / WEIGHTS).read_bytes() == (model_dir / WEIGHTS).read_bytes()
    assert "was corrupt" in again.notice and WEIGHTS in again.notice


def test_unreachable_hub_without_a_cached_copy_falls_back_or_fails(fake_hub: FakeHub, bundled: Path) -> None:
    fake_hub.stop()
    with pytest.raises(HubError) as error:
        fetch(f"hf://{REPO}@{UNKNOWN_SHA}")
    assert "could not be reached" in one_line(error) and "not in the local cache" in str(error.value)
    model = fetch(f"hf://{REPO}@main", fallback=True)
    assert model.path == bundled.resolve() and model.commit is None
    assert "could not be reached" in model.notice and "bundled model" in model.notice


def test_unknown_repository_is_named_and_the_app_keeps_working(fake_hub: FakeHub, bundled: Path) -> None:
    with pytest.raises(HubError) as error:
        fetch("hf://alice/no-such-model@main")
    assert "alice/no-such-model was not found" in one_line(error) and "HF_TOKEN" in str(error.value)
    assert [c.method for c in fake_hub.requests(pattern="no-such-model")] == ["GET"]  # one 404, no retries
    model = fetch("hf://alice/no-such-model", fallback=True)
    assert model.path == bundled.resolve() and "was not found" in model.notice


@pytest.mark.parametrize("revision", ["no-such-branch", UNKNOWN_SHA])
def test_unknown_revision_is_named(fake_hub: FakeHub, model_dir: Path, revision: str) -> None:
    publish(fake_hub, model_dir)
    with pytest.raises(HubError) as error:
        fetch(f"hf://{REPO}@{revision}")
    assert f"revision '{revision}' does not exist in {REPO}" in one_line(error)


def test_gated_repository_needs_a_token_with_access(
    fake_hub: FakeHub, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.create_repo("carol/gated", gated=True, readers={"bob"})
    sha = publish(fake_hub, model_dir, "carol/gated")
    source = f"hf://carol/gated@{sha}"

    with pytest.raises(HubError) as error:
        fetch(source)
    assert "gated repository and no token was sent" in one_line(error) and "HF_TOKEN" in str(error.value)
    assert any(c.method == "HEAD" and c.token is None for c in fake_hub.requests(pattern="/resolve/"))

    with pytest.raises(HubError, match="your token has no access to the gated repository carol/gated"):
        fetch(source, token=ALICE)  # 403: alice is not on the authorized list

    model = fetch(source, token=BOB)
    assert model.commit == sha
    assert all(c.token == BOB for c in fake_hub.requests("GET", "/resolve/"))

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "second-cache"))
    monkeypatch.setenv("HF_TOKEN", BOB)  # the usual HF environment variable is used without token=
    assert fetch(source).weights_sha256 == model.weights_sha256


def test_private_repository_without_token_is_reported_as_not_found(fake_hub: FakeHub, model_dir: Path) -> None:
    fake_hub.create_repo("alice/private", private=True)
    sha = publish(fake_hub, model_dir, "alice/private")
    with pytest.raises(HubError) as error:
        fetch(f"hf://alice/private@{sha}")
    assert "was not found" in one_line(error) and "private" in str(error.value)
    assert fetch(f"hf://alice/private@{sha}", token=ALICE).commit == sha


def test_sha256_mismatch_is_an_error_and_the_corrupt_copy_is_evicted(
    fake_hub: FakeHub, model_dir: Path, bundled: Path
) -> None:
    sha = publish(fake_hub, model_dir)
    good = (model_dir / WEIGHTS).read_bytes()
    middle = len(good) // 2
    corrupt = good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1 :]
    fake_hub.inject(Fault(sha256_hex(good), "corrupt"))  # same size, one byte flipped in transit

    with pytest.raises(HubError) as error:
        fetch(f"hf://{REPO}@{sha}")
    message = one_line(error)
    assert WEIGHTS in message and sha256_hex(good) in message and sha256_hex(corrupt) in message
    assert not (repo_cache() / "snapshots" / sha / WEIGHTS).exists()
    assert not (repo_cache() / "blobs" / sha256_hex(good)).exists()

    fake_hub.inject(Fault(sha256_hex(good), "corrupt"))
    with_fallback = fetch(f"hf://{REPO}@{sha}", fallback=True)
    assert with_fallback.path == bundled.resolve() and WEIGHTS in with_fallback.notice

    assert fetch(f"hf://{REPO}@{sha}").weights_sha256 == sha256_hex(good)  # a clean transfer then loads


def test_connection_dropped_mid_file_leaves_nothing_taken_as_complete(fake_hub: FakeHub, model_dir: Path) -> None:
    sha = publish(fake_hub, model_dir)
    oid = sha256_hex((model_dir / WEIGHTS).read_bytes())
    # Headers promise the full Content-Length; half the bytes arrive; then the CDN is gone (retries refused).
    fake_hub.inject(Fault(oid, "drop", then_down=True))
    with pytest.raises(HubError) as error:
        fetch(f"hf://{REPO}@{sha}")
    assert "lost during the download" in one_line(error)
    assert not list(cache_root().rglob("*.incomplete"))
    assert not (repo_cache() / "blobs" / oid).exists()
    assert not (repo_cache() / "snapshots" / sha / WEIGHTS).exists()

    fake_hub.stop()  # a later run, offline: the partial snapshot must not load
    with pytest.raises(HubError, match="incomplete"):
        fetch(f"hf://{REPO}@{sha}")

    fake_hub.start()
    assert fetch(f"hf://{REPO}@{sha}").weights_sha256 == oid


def test_connection_dropped_once_is_retried_and_verified(fake_hub: FakeHub, model_dir: Path) -> None:
    sha = publish(fake_hub, model_dir)
    oid = sha256_hex((model_dir / WEIGHTS).read_bytes())
    fake_hub.inject(Fault(oid, "drop"))
    assert fetch(f"hf://{REPO}@{sha}").weights_sha256 == oid
    assert len(fake_hub.requests("GET", rf"^/blobs/{oid}$")) == 2


def test_hf_endpoint_environment_variable_is_honoured(fake_hub: FakeHub, model_dir: Path, tmp_path: Path) -> None:
    sha = publish(fake_hub, model_dir)
    env = {
        **os.environ,
        "HF_ENDPOINT": fake_hub.url,
        "HF_HOME": str(tmp_path / "subprocess-hf-home"),  # cache, token and client state all stay in tmp
        "PYTHONPATH": str(REPO_ROOT),
    }
    for var in ("HF_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "HF_HUB_OFFLINE"):
        env.pop(var, None)
    code = f"from captioner.hub import fetch; m = fetch('hf://{REPO}@{sha}'); print(m.commit, m.weights_sha256)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [sha, sha256_hex((model_dir / WEIGHTS).read_bytes())]
    assert (tmp_path / "subprocess-hf-home" / "hub" / "models--alice--captioner-tiny" / "snapshots" / sha).is_dir()


# ---- model card ----------------------------------------------------------------------------------------------------


def split_card(card: str) -> tuple[dict, str]:
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", card, re.S)
    assert match is not None, "the card must start with YAML front matter between --- lines"
    meta = yaml.safe_load(match.group(1))
    assert isinstance(meta, dict)
    return meta, match.group(2)


def test_model_card_has_hub_metadata_with_the_test_bleu_scores(model_dir: Path) -> None:
    meta, _ = split_card(model_card(model_dir, repo_id=REPO))
    assert meta["library_name"] == "keras" and meta["pipeline_tag"] == "image-to-text"
    assert meta["datasets"] == [hub.DATASET_ID] and "bleu" in meta["metrics"]
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "test" and result["task"]["type"] == "image-to-text"
    scores = {m["name"]: m["value"] for m in result["metrics"]}
    assert scores["BLEU-4 (beam 3, length penalty 0.7)"] == 19.88
    assert scores["BLEU-1 (greedy)"] == 58.21 and scores["CIDEr (greedy)"] == 0.472
    # huggingface_hub's own card parser reads the same results
    results = ModelCard(model_card(model_dir, repo_id=REPO)).data.eval_results
    assert {(r.metric_name, r.metric_value) for r in results} >= {("BLEU-2 (greedy)", 39.87)}


def test_model_card_body_is_markdown_with_the_required_sections(model_dir: Path) -> None:
    markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py (a Streamlit dependency) parses the card")
    _, body = split_card(model_card(model_dir, repo_id=REPO))
    tokens = markdown_it.MarkdownIt("commonmark").enable("table").parse(body)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h2"]
    assert headings == [
        "Architecture",
        "Training data and split",
        "Evaluation",
        "Decoding",
        "How to use",
        "Limitations",
        "Citation",
    ]
    assert sum(t.type == "table_open" for t in tokens) == 3  # config, test scores, dev scores
    fences = {t.info: t.content for t in tokens if t.type == "fence"}
    assert f'Captioner.load("hf://{REPO}@COMMIT_SHA")' in fences["python"]
    assert "Hodosh" in fences["bibtex"] and "853--899" in fences["bibtex"]
    assert "60.50" in body and "beam size 3, length penalty 0.7" in body and "efficientnet_lite0" in body
    assert "Framing Image Description as a Ranking Task" in body and "47:853–899" in body
    assert "6,000 train, 1,000 dev, 1,000 test" in body


def test_model_card_names_consensus_reranking_when_the_model_was_tuned_with_it(model_dir: Path) -> None:
    # Catches a card whose scores and usage omit the reranking the scores were made with.
    metrics = json.loads((model_dir / "metrics.json").read_text())
    metrics["decoding"] |= {"consensus": 10, "consensus_weight": 2.0}
    (model_dir / "metrics.json").write_text(json.dumps(metrics))
    meta, body = split_card(model_card(model_dir, repo_id=REPO))
    names = {m["name"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert "BLEU-4 (beam 3, length penalty 0.7, reranked by 10 similar training photos)" in names
    assert "BLEU-4 (greedy)" in names  # greedy has one caption: nothing to rerank
    assert "the 10 most similar training photos" in body and "plus 2.0 × its beam score" in body
    assert "consensus=10)" in body


def test_model_card_without_metrics_says_not_evaluated(tmp_path: Path) -> None:
    path = make_model_dir(tmp_path / "unevaluated", metrics=False)
    meta, body = split_card(model_card(path))
    assert "model-index" not in meta and meta["library_name"] == "keras"
    assert "Not evaluated" in body


# ---- publishing -----------------------------------------------------------------------------------------------------


def test_push_uploads_model_card_and_manifest_in_one_tagged_commit(fake_hub: FakeHub, model_dir: Path) -> None:
    (model_dir / "train_log.txt").write_text("not part of the model")
    sha = push(model_dir, REPO, tag="v1", token=ALICE)

    repo = fake_hub.repos[REPO]
    assert repo.branches["main"] == sha and repo.tags["v1"] == sha
    files = fake_hub.files(REPO, sha)
    assert set(files) == {".gitattributes", *MODEL_FILES}
    assert {n: files[n] for n in MODEL_FILES} == {n: (model_dir / n).read_bytes() for n in MODEL_FILES}
    split_card(files["README.md"].decode())
    assert set(json.loads(files[MANIFEST])["files"]) == set(MODEL_FILES) - {MANIFEST}

    (create,) = fake_hub.requests("POST", r"^/api/repos/create$")
    assert create.json() == {"name": "captioner-tiny", "organization": "alice", "visibility": "public"}
    (validate,) = fake_hub.requests("POST", r"^/api/validate-yaml$")
    assert validate.json()["content"] == files["README.md"].decode()
    (preupload,) = fake_hub.requests("POST", rf"^/api/models/{REPO}/preupload/main$")
    assert sorted(f["path"] for f in preupload.json()["files"]) == sorted(MODEL_FILES)
    (batch,) = fake_hub.requests("POST", rf"^/{REPO}\.git/info/lfs/objects/batch$")
    weights_oid = sha256_hex(files[WEIGHTS])
    assert [o["oid"] for o in batch.json()["objects"]] == [weights_oid]
    assert len(fake_hub.requests("PUT", rf"^/upload/{weights_oid}$")) == 1
    (commit,) = fake_hub.requests("POST", rf"^/api/models/{REPO}/commit/main$")
    lines = commit.ndjson()
    assert lines[0]["key"] == "header"
    assert {v["value"]["path"]: v["key"] for v in lines[1:]} == {
        **{n: "file" for n in MODEL_FILES if n != WEIGHTS},
        WEIGHTS: "lfsFile",
    }
    (tag,) = fake_hub.requests("POST", rf"^/api/models/{REPO}/tag/{sha}$")
    assert tag.json()["tag"] == "v1"
    writes = [c for c in fake_hub.calls if c.method in ("POST", "PUT") and not c.path.startswith("/upload/")]
    assert writes and all(c.token == ALICE for c in writes)

    assert fetch(f"hf://{REPO}@{sha}").weights_sha256 == weights_oid  # what was pushed loads and verifies


def test_push_refuses_an_existing_tag_before_uploading(fake_hub: FakeHub, model_dir: Path) -> None:
    sha = publish(fake_hub, model_dir)
    fake_hub.tag(REPO, "v1", sha)
    with pytest.raises(HubError, match="'v1' already exists") as error:
        push(model_dir, REPO, tag="v1", token=ALICE)
    one_line(error)
    assert not fake_hub.requests("POST", "/commit/")


@pytest.mark.parametrize(
    ("token", "expected"), [(None, "hf auth login"), (BOB, "cannot write to alice/captioner-tiny")]
)
def test_push_without_write_access_explains_how_to_authenticate(
    fake_hub: FakeHub, model_dir: Path, token: str | None, expected: str
) -> None:
    with pytest.raises(HubError, match=re.escape(expected)) as error:
        push(model_dir, REPO, token=token)
    one_line(error)
    assert REPO not in fake_hub.repos


def test_run_push_prints_the_commit_to_pin(
    fake_hub: FakeHub, model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    parser = argparse.ArgumentParser(prog="captioner push")
    cli.add_push_arguments(parser)
    args = parser.parse_args(["--model", str(model_dir), "--repo-id", REPO, "--tag", "v1"])
    monkeypatch.setenv("HF_TOKEN", ALICE)
    assert cli.run_push(args) == 0
    sha = fake_hub.repos[REPO].branches["main"]
    assert f"--model hf://{REPO}@{sha}" in capsys.readouterr().out


def test_run_push_failure_is_one_error_line_and_nonzero_exit(
    fake_hub: FakeHub, model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    parser = argparse.ArgumentParser(prog="captioner push")
    cli.add_push_arguments(parser)
    assert cli.run_push(parser.parse_args(["--model", str(model_dir), "--repo-id", REPO])) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1


def test_loading_a_local_model_never_imports_the_hub_client(tiny_model_dir: Path) -> None:
    code = (
        "import sys; from captioner import hub; hub.fetch(sys.argv[1]); "
        "print(sorted(m for m in ('huggingface_hub', 'httpx2') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir)], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_model_ids_are_logical_names_never_machine_paths(bundled: Path, tmp_path: Path) -> None:
    assert hub.model_id(str(bundled), bundled, None) == "bundled"
    assert hub.model_id("runs/../elsewhere/my-model", tmp_path / "my-model", None) == "my-model"
    sha = "ab" * 20
    assert hub.model_id(f"hf://{REPO}@v1", tmp_path / "snapshots" / sha, sha) == f"hf://{REPO}@{sha}"


def test_an_ensembles_member_files_are_pushed_fetched_and_verified(fake_hub: FakeHub, model_dir: Path) -> None:
    members = {"ensemble.json": b'{"members": []}', "decoder1.weights.h5": b"\x89HDF member one"}
    for name, data in members.items():
        (model_dir / name).write_bytes(data)
    sha = push(model_dir, REPO, token=ALICE)
    files = fake_hub.files(REPO, sha)
    assert {n: files[n] for n in members} == members
    assert set(json.loads(files[MANIFEST])["files"]) == {*MODEL_FILES, *members} - {MANIFEST}

    model = fetch(f"hf://{REPO}@{sha}")
    assert sorted(p.name for p in model.path.iterdir()) == sorted([*MODEL_FILES, *members])

    # A member that does not match the manifest is refused like the main weights would be.
    tampered = fake_hub.commit(REPO, {**files, "decoder1.weights.h5": b"\x89HDF something else"})
    with pytest.raises(HubError, match=re.escape("decoder1.weights.h5")):
        fetch(f"hf://{REPO}@{tampered}")
