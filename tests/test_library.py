"""Captioning a photo library: finding images, result files, resuming, bad files, and both engines (tiny model)."""

from __future__ import annotations

import csv
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.library import caption_paths, find_images, read_list
from captioner.results import ResultsError, open_results
from tests.conftest import talkative_copy

COLOURS = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (240, 240, 240), (20, 20, 20)]


@pytest.fixture(scope="module")
def talkative(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model, saying a few words per image, so equal captions are not all empty."""
    return talkative_copy(tiny_model_dir, tmp_path_factory.mktemp("talkative") / "model")


@pytest.fixture(scope="module")
def model(talkative):
    from captioner import Captioner

    return Captioner.load(str(talkative))


def _photo(path: Path, i: int, size=(48, 36)) -> Path:
    rng = np.random.default_rng(i)
    pixels = np.clip(np.array(COLOURS[i % len(COLOURS)]) + rng.normal(0, 40, (*size[::-1], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def _bomb_png(path: Path) -> Path:
    """A valid PNG claiming 60000×60000 pixels: refused before anything is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def library(tmp_path) -> tuple[Path, list[str], list[str]]:
    """Nested folders of photos plus broken and hostile files; (root, the good images, the bad ones)."""
    root = tmp_path / "photos"
    good = [
        _photo(root / "2021" / "summer" / "beach.jpg", 0),
        _photo(root / "2021" / 'a, b "quoted".png', 1),  # commas and quotes for the CSV
        _photo(root / "2022" / "IMG_0001.JPEG", 2),
        _photo(root / "top.webp", 3),
    ]
    (root / "2022" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "2022" / "empty.jpg").write_bytes(b"")
    (root / "2022" / "cut.jpg").write_bytes(_photo(tmp_path / "whole.jpg", 4).read_bytes()[:200])  # truncated
    _bomb_png(root / "2021" / "bomb.png")
    (root / "2021" / "folder.jpg").mkdir()  # a directory with an image suffix is not an image
    (root / "2021" / "notes.txt").write_text("not an image")  # wrong suffix: not picked up
    _photo(root / ".thumbnails" / "beach.jpg", 0)  # hidden folder: skipped
    (root / "2021" / "._beach.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # hidden file: skipped
    bad = [str(root / "2021" / "bomb.png"), *(str(root / "2022" / n) for n in ("broken.png", "cut.jpg", "empty.jpg"))]
    return root, sorted(map(str, good)), sorted(bad)


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "captioner.cli", "caption", *args],
        capture_output=True, text=True, timeout=600, input=stdin,
    )  # fmt: skip


def _rows(out: Path) -> list[dict]:
    """The rows of a result file of any format, as flat dicts of strings."""
    if out.suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        return [{"image": r["image"], **_flat_captions(r)} for r in rows]
    if out.suffix == ".csv":
        with out.open(newline="") as f:
            table = list(csv.DictReader(f))
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(out).to_pylist()
    return [{k: v for k, v in r.items() if v not in ("", None) and not k.endswith("log_prob")} for r in table]


def _flat_captions(row: dict) -> dict:
    if "error" in row:
        return {"error": row["error"]}
    return {"greedy_caption": row["greedy"]["caption"], "beam_caption": row["beam"]["caption"]}


def test_directories_are_walked_recursively_in_name_order_with_image_suffixes_only(library):
    """Catches unsorted os.walk order, non-image suffixes, hidden files, and an image listed twice via a glob."""
    root, good, bad = library
    found = find_images([str(root), str(root / "2021" / "*.png"), str(root / "missing.jpg"), str(root / "none*.jpg")])
    walk = ["top.webp", '2021/a, b "quoted".png', "2021/bomb.png", "2021/summer/beach.jpg", "2022/IMG_0001.JPEG",
            "2022/broken.png", "2022/cut.jpg", "2022/empty.jpg"]  # fmt: skip
    # Each once (the glob's matches were walked already); no .txt, hidden file or folder named *.jpg.
    assert found[:-2] == [str(root / p) for p in walk] and sorted(found[:-2]) == sorted(good + bad)
    assert found[-2:] == [str(root / "missing.jpg"), str(root / "none*.jpg")]  # reported, not dropped


def test_a_file_list_skips_blank_lines_and_reads_stdin_for_a_dash(tmp_path):
    (tmp_path / "list.txt").write_text("a.jpg\n\n  \nb c.jpg\r\n")
    assert read_list(str(tmp_path / "list.txt")) == ["a.jpg", "b c.jpg"]
    assert read_list("-", ["x.jpg\n", "\n", "y.jpg\n"]) == ["x.jpg", "y.jpg"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_library_with_broken_and_hostile_files_gets_one_row_per_file(library, talkative, tmp_path, suffix):
    """Catches a bad file aborting the run, a lost or doubled row, and fields mangled by a format's quoting."""
    root, good, bad = library
    out = tmp_path / f"captions{suffix}"
    if suffix == ".csv":  # the same library named one file per line on stdin
        proc = _cli("--files-from", "-", "--out", str(out), "--model", str(talkative), "--batch", "3",
                    stdin="\n".join(find_images([str(root)])) + "\n")  # fmt: skip
    else:
        proc = _cli(str(root), "--out", str(out), "--model", str(talkative), "--batch", "3")
    assert proc.returncode == 1, proc.stderr
    rows = _rows(out)
    assert sorted(r["image"] for r in rows) == sorted(good + bad)
    assert sorted(r["image"] for r in rows if "error" in r) == bad
    assert all(r["greedy_caption"] and r["beam_caption"] for r in rows if "error" not in r)
    assert "decompression bomb" in next(r["error"] for r in rows if r["image"].endswith("bomb.png"))
    assert proc.stderr.count("error:") == len(bad)
    assert f"captioned {len(good)}, failed {len(bad)}, skipped 0 already done" in proc.stderr
    again = _cli(str(root), "--out", str(out), "--model", str(talkative))
    skipped = f"captioned 0, failed 0, skipped {len(good) + len(bad)} already done ({len(bad)} of them failed)"
    assert skipped in again.stderr
    assert again.returncode == 1 and sorted(map(str, _rows(out))) == sorted(map(str, rows))


def test_batched_captions_equal_per_file_decode_and_captioner_evaluate(model, talkative, tmp_path):
    """Catches batching that mixes up rows, drops the tuned decoding, or decodes differently from `evaluate`."""
    from captioner.evaluate import evaluate_split

    flickr = tmp_path / "flickr"
    names = [f"{i}.jpg" for i in range(7)]
    for i, n in enumerate(names):
        _photo(flickr / "Images" / n, i, size=(64 + 8 * i, 48))
    (flickr / "captions.txt").write_text("image,caption\n" + "".join(f"{n},a red square\n" * 5 for n in names))
    for split in ("train", "dev", "test"):
        (flickr / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names))
    paths = [str(flickr / "Images" / n) for n in names]
    d = model.tuned.overridden(beam_size=3)
    rows = list(caption_paths(model, [*paths[:3], str(tmp_path / "gone.jpg"), *paths[3:]], d, batch_size=4))
    assert rows.pop(3) == {"image": str(tmp_path / "gone.jpg"), "error": f"{tmp_path / 'gone.jpg'}: no such file."}
    assert [r["image"] for r in rows] == paths
    for path, row in zip(paths, rows, strict=True):
        encoded = model.encode([path])
        greedy = model.decode(encoded, 1, d.length_penalty, block_repeats=d.block_repeats)[0]
        beam = model.decode(encoded, 3, d.length_penalty, block_repeats=d.block_repeats)[0]
        assert (row["greedy"]["caption"], row["beam"]["caption"]) == (greedy.text, beam.text)
        assert row["beam"]["log_prob"] == pytest.approx(beam.log_prob, abs=1e-3)
    report = evaluate_split(str(talkative), flickr, "test", beam_size=3)
    by_name = {img["image"]: img for img in report["images"]}
    assert [(r["greedy"]["caption"], r["beam"]["caption"]) for r in rows] == [
        (by_name[n]["greedy"]["caption"], by_name[n]["beam"]["caption"]) for n in names
    ]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_an_interrupted_run_resumes_to_every_image_exactly_once(talkative, tmp_path, sig):
    """Catches rows lost or written twice across a Ctrl-C or a kill, and a torn last line counted as done."""
    images = [str(_photo(tmp_path / "lib" / f"{i:03d}.png", i, size=(24, 24))) for i in range(150)]
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "captioner.cli", "caption", str(tmp_path / "lib"), "--out", str(out),
           "--model", str(talkative), "--batch", "2"]  # fmt: skip
    # A test run started in the background inherits SIGINT ignored, and Python then installs no Ctrl-C handler.
    reset = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=reset)
    deadline = time.monotonic() + 600  # the model loads and traces first: slow on a loaded machine
    while not (out.exists() and out.read_bytes().count(b"\n") >= 4) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    first = out.read_text().count("\n")
    assert 4 <= first < len(images), "the run must be stopped part-way for this test to mean anything"
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "rerun the same command to resume" in stderr
    else:
        with out.open("a") as f:
            f.write('{"image": "/torn/by/the/kill.png", "gree')  # as a kill in the middle of a write leaves it
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["image"] for r in rows) == images  # each exactly once, the torn line gone
    assert f"skipped {first} already done" in done.stderr
    assert f"captioned {len(images) - first}, failed 0" in done.stderr


def test_a_ctrl_c_just_after_rows_reach_the_disk_writes_them_once(talkative, tmp_path, monkeypatch, capsys):
    """Catches the rows of a batch written again on the way out when Ctrl-C lands as their write returns."""
    from captioner import cli
    from captioner.results import JsonlResults

    images = [str(_photo(tmp_path / "lib" / f"{i}.png", i, size=(24, 24))) for i in range(6)]
    args = ["caption", str(tmp_path / "lib"), "--out", str(tmp_path / "out.jsonl"), "--model", str(talkative)]
    write, calls = JsonlResults.write, []

    def write_then_ctrl_c(self, rows):
        write(self, rows)
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(JsonlResults, "write", write_then_ctrl_c)
    assert cli.main([*args, "--batch", "2"]) == 130
    assert calls == [2, 2]
    monkeypatch.undo()
    assert cli.main(args) == 0
    assert "captioned 2, failed 0, skipped 4 already done" in capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["image"] for r in rows) == images


def test_a_torn_last_record_is_cut_and_not_counted(tmp_path):
    """Catches a torn tail left in place (it would glue onto the next row) or counted as done."""
    dog = {"caption": "a dog", "log_prob": -1.0}
    ok = {"image": "a.jpg", "greedy": dog, "beam": dog}
    with open_results(tmp_path / "r.jsonl") as r:
        r.write([ok, {"image": "b.jpg", "error": "b.jpg: not an image"}])
    with (tmp_path / "r.jsonl").open("ab") as f:
        f.write(b'{"image": "c.jpg", "greedy": {"capt')
    with open_results(tmp_path / "r.jsonl") as r:
        assert r.done == {"a.jpg": False, "b.jpg": True}
        r.write([{**ok, "image": "c.jpg"}])
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert [json.loads(line)["image"] for line in lines] == ["a.jpg", "b.jpg", "c.jpg"]

    with open_results(tmp_path / "r.csv") as r:
        r.write([{**ok, "image": 'x, "y"\nz.jpg'}, {"image": "b.jpg", "error": "b.jpg: not an image"}])
    whole = (tmp_path / "r.csv").read_bytes()
    (tmp_path / "r.csv").write_bytes(whole + b'"c.jpg\n, with a newline",a dog')  # torn inside a quoted field
    with open_results(tmp_path / "r.csv") as r:
        assert r.done == {'x, "y"\nz.jpg': False, "b.jpg": True}
    assert (tmp_path / "r.csv").read_bytes() == whole

    (tmp_path / "bad.jsonl").write_text('{"image": "a.jpg"}\nnot json\n{"image": "b.jpg"}\n')
    with pytest.raises(ResultsError, match=r"Record 2 of .*bad\.jsonl is not a result row"):
        open_results(tmp_path / "bad.jsonl")
    with pytest.raises(ResultsError, match=r"Expected --out to end in \.jsonl, \.csv, \.parquet"):
        open_results(tmp_path / "r.txt")


def test_parquet_parts_merge_once_and_a_half_written_part_is_dropped(tmp_path):
    """Catches a part being written at a crash counted as done, and a merge interrupted half-way doubling rows."""
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    out = tmp_path / "r.parquet"
    r = open_results(out)
    r.write([{"image": "a.jpg", "error": "a.jpg: empty"}])
    r.write([{"image": "b.jpg", "greedy": {"caption": "a cat", "log_prob": -2.0}}])
    (out / "part-00009.tmp").write_bytes(b"PAR1 half written")
    second = open_results(out)  # as if the first run were killed: its two parts and a torn one are on disk
    assert second.done == {"a.jpg": True, "b.jpg": False} and not list(out.glob("*.tmp"))
    pq.write_table(pq.read_table(next(out.glob("part-*.parquet"))), out / "part-00000.parquet")  # merge stopped
    second.close()
    assert len(list(out.iterdir())) == 1
    assert sorted(pq.read_table(out).column("image").to_pylist()) == ["a.jpg", "b.jpg"]


def test_engine_ray_without_ray_installed_says_how_to_install_it(tmp_path):
    (tmp_path / "ray.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "captioner.cli", "caption", "x.jpg", "--engine", "ray"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and 'pip install -e ".[scale]"' in proc.stderr, proc.stderr


@pytest.mark.ray
def test_engine_ray_with_two_local_actors_writes_the_local_engines_captions(library, talkative, tmp_path):
    """Catches actors loading another model or decoding, lost or doubled rows, and resume not filtering first."""
    if os.environ.get("CI") != "true":
        pytest.importorskip("ray", reason='the Ray engine needs pip install -e ".[scale]"')
    root, good, bad = library
    local, distributed = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert _cli(str(root), "--out", str(local), "--model", str(talkative), "--batch", "2").returncode == 1
    with open_results(distributed) as r:  # one image already done: the job must skip it
        r.write([json.loads(local.read_text().splitlines()[0])])
    proc = _cli(str(root), "--out", str(distributed), "--model", str(talkative), "--engine", "ray", "--workers", "2",
                "--batch", "2")  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert f"captioned {len(good) - 1}, failed {len(bad)}, skipped 1 already done" in proc.stderr
    assert sorted(map(str, _rows(distributed))) == sorted(map(str, _rows(local)))
