"""Peak memory and cold start of the running app, measured through a real browser session.

Starts `streamlit run app.py` on a free loopback port, drives headless Chromium (Debian's /usr/bin/chromium via
Playwright) through a session — upload photos, wait for both captions and a heatmap, change the beam size,
open the other pages — while sampling the resident memory (RSS) of the server's whole process tree.

    python3 bench/app_memory.py                          # bundled model, photos generated in-script
    python3 bench/app_memory.py --model DIR --photos ../shared/photos --report REPORT.json

Prints the cold start, timed from spawning `streamlit run app.py` to the first photo's greedy and beam captions on
screen (then to its attention heatmap), with the milestones on the way (server healthy, uploader shown) and the CPU
time the server spent (wall time is noisy when other jobs share the machine; CPU time much less so). Chromium is
started and has an empty page open before the server is spawned, so its own start-up is not counted, as a user's
browser is already running. Also prints the peak and median RSS; exits 1 if the peak exceeds --limit-mb (1200).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the Streamlit/Chromium harness the browser test uses too
from streamlit_server import CHROMIUM, free_port, launch_browser, start_server, stop_server, wait_healthy  # noqa: E402

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _tree_sum(root: int, value) -> float:
    """Sum `value(stat_fields, pid_dir)` over a process and all its living descendants, from /proc."""
    children: dict[int, list[int]] = {}
    values: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            pid = int(entry.name)
            values[pid] = value(fields, entry.path)
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += values.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total


def tree_rss(root: int) -> int:
    """Resident bytes of a process and all its descendants."""
    return int(_tree_sum(root, lambda _, path: int(Path(path, "statm").read_text().split()[1]) * PAGE_SIZE))


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU time used so far by a process and its living descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    return _tree_sum(root, lambda fields, _: (int(fields[11]) + int(fields[12])) / ticks)  # utime, stime


class Sampler(threading.Thread):
    """Samples the RSS of a process tree every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval, self.samples = pid, interval, []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(tree_rss(self.pid))
            self._stop_event.wait(self.interval)

    def stop(self) -> list[int]:
        self._stop_event.set()
        self.join()
        return self.samples


def generated_photos(folder: Path, count: int) -> list[Path]:
    """Photo-like JPEGs of several sizes (one 12 MP), so the bench needs no data folder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(4000, 3000), (500, 375), (375, 500), (1024, 768), (640, 480), (2048, 1536)]
    paths = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        x = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3)) * rng.uniform(0.3, 1.0, 3)
        x = x + rng.normal(0, 25, (h, w, 3))
        path = folder / f"bench_{i:02d}.jpg"
        Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def drive(page, port: int, photos: list[Path], beam_sizes: list[int], server_pid: int) -> dict[str, float]:
    """One session: upload one photo, then a batch; change the beam size; visit every page. Returns timestamps."""
    marks: dict[str, float] = {}
    page.goto(f"http://127.0.0.1:{port}/")
    uploader = page.locator("input[type=file]").first
    uploader.wait_for(state="attached")
    marks["uploader_ready"] = time.monotonic()
    uploader.set_input_files([str(photos[0])])
    page.get_by_text("Beam search (k=", exact=False).first.wait_for()  # the caption cards, greedy then beam
    page.get_by_text("log p = ", exact=False).nth(1).wait_for()
    marks["first_captions"] = time.monotonic()
    marks["first_captions_cpu"] = tree_cpu_seconds(server_pid)
    page.get_by_text("attention for every word", exact=False).first.wait_for()
    marks["first_heatmap"] = time.monotonic()
    marks["first_heatmap_cpu"] = tree_cpu_seconds(server_pid)
    if len(photos) > 1:  # the uploader adds files to the ones it holds
        uploader.set_input_files([str(p) for p in photos[1:]])
        page.get_by_text(f"Captioned {len(photos)} of {len(photos)}", exact=False).wait_for()
        marks["batch_captions"] = time.monotonic()
    for k in beam_sizes:
        slider = page.get_by_role("slider", name="Beam size")
        slider.focus()
        current = int(slider.input_value())
        for _ in range(abs(k - current)):
            page.keyboard.press("ArrowRight" if k > current else "ArrowLeft")
        page.get_by_text(f"Beam search (k={k}", exact=False).first.wait_for()
    for title in ("Test-set BLEU", "About the model"):
        page.get_by_role("link", name=title).click()
        page.get_by_role("heading", name=title).first.wait_for()
    marks["done"] = time.monotonic()
    return marks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="CAPTIONER_MODEL for the server (default: bundled model)")
    parser.add_argument("--report", default=None, help="CAPTIONER_REPORT for the server (default: bundled report)")
    parser.add_argument("--photos", default=None, help="folder of JPEGs to upload (default: generate some)")
    parser.add_argument("--count", type=int, default=6, help="photos to upload in the batch")
    parser.add_argument("--beam", type=int, nargs="*", default=[5, 10, 1], help="beam sizes to switch through")
    parser.add_argument("--limit-mb", type=float, default=1200.0, help="fail (exit 1) above this peak RSS")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for any one step")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"error: {CHROMIUM} not found; install Debian's chromium package (apt-get install -y chromium)")
        return 2

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for name, value in (("CAPTIONER_MODEL", args.model), ("CAPTIONER_REPORT", args.report)):
        if value:
            env[name] = str(Path(value).resolve()) if not value.startswith("hf://") else value
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.photos:
            photos = sorted(Path(args.photos).glob("*.jpg"))[: args.count]
        else:
            photos = generated_photos(tmp_path, args.count)
        if not photos:
            print(f"error: no .jpg photos in {args.photos}")
            return 2
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            # The browser is up before the server starts, as a user's would be: the cold start is the server's.
            browser = launch_browser(playwright, tmp_path / "profile")
            page = browser.new_page()
            page.set_default_timeout(int(args.timeout * 1000))
            port = free_port()
            start = time.monotonic()
            proc = start_server(env, port, tmp_path / "server.log")
            sampler = Sampler(proc.pid)
            sampler.start()
            try:
                wait_healthy(port, proc, args.timeout)
                healthy = time.monotonic()
                marks = drive(page, port, photos, args.beam, proc.pid)
            except Exception:
                sys.stdout.write((tmp_path / "server.log").read_text(errors="replace")[-4000:])
                raise
            finally:
                samples = sampler.stop()
                stop_server(proc)
                browser.close()
    mb = [s / 2**20 for s in samples if s]
    result = {
        "photos": len(photos),
        "cold_start_s": round(marks["first_captions"] - start, 2),
        "first_heatmap_s": round(marks["first_heatmap"] - start, 2),
        "batch_s": round(marks.get("batch_captions", marks["first_heatmap"]) - marks["first_heatmap"], 2),
        "healthy_s": round(healthy - start, 2),
        "uploader_ready_s": round(marks["uploader_ready"] - start, 2),
        "server_cpu_to_first_captions_s": round(marks["first_captions_cpu"], 2),
        "server_cpu_to_first_heatmap_s": round(marks["first_heatmap_cpu"], 2),
        "session_s": round(marks["done"] - start, 2),
        "peak_rss_mb": round(max(mb), 1),
        "median_rss_mb": round(statistics.median(mb), 1),
        "samples": len(mb),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"cold start (`streamlit run` spawned → first greedy and beam captions on screen): "
            f"{result['cold_start_s']:.1f} s, {result['server_cpu_to_first_captions_s']:.1f} server CPU-seconds; "
            f"its heatmap after {result['first_heatmap_s']:.1f} s ({result['server_cpu_to_first_heatmap_s']:.1f} CPU-s)"
        )
        print(
            f"on the way: server healthy after {result['healthy_s']:.1f} s, uploader shown after "
            f"{result['uploader_ready_s']:.1f} s; then {len(photos) - 1} more photos in {result['batch_s']:.1f} s"
        )
        print(
            f"peak RSS {result['peak_rss_mb']:.0f} MB, median {result['median_rss_mb']:.0f} MB "
            f"over {result['samples']} samples ({len(photos)} photos, beam sizes {args.beam})"
        )
    return 0 if max(mb) <= args.limit_mb else 1


if __name__ == "__main__":
    sys.exit(main())
