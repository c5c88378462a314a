"""The app under load: N concurrent Chromium sessions, each uploading a different full-resolution photo at once.

Starts `streamlit run app.py` (optionally pinned with taskset, or inside a cgroup capping memory and CPU as
Streamlit Community Cloud does), warms it with one session (the model loads once per server), then opens N fresh
browser sessions and, once every page is open, has them upload their photos together. Prints p50/p95/max seconds
from the upload to both captions on screen and to the attention heatmap, errors, cross-talk (a page showing another
session's photo), the server's CPU-seconds per photo (from the common start to the last heatmap; opening the pages
is reported apart) and its peak RSS. Exits 1 on any error or cross-talk. The browsers share the machine's CPUs
with the server: their CPU-seconds are printed too, with the floor that server and browsers together set on the time
to the last heatmap.

    python bench/load.py                                  # 16 sessions, ../shared/photos + bundled examples
    python bench/load.py --sessions 32
    python bench/load.py --sessions 1 --taskset 0         # the server on one core
    python bench/load.py --sessions 4 --memory 700M --cpus 1     # Community Cloud's lower bound (needs root)
    python bench/load.py --page minimal                   # the browsers' baseline: a page without a model
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED
from app_memory import Sampler, tree_cpu_seconds

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the Streamlit/Chromium harness the browser test uses too
from streamlit_server import CHROMIUM, CHROMIUM_ARGS, free_port, start_server, stop_server, wait_healthy  # noqa: E402

CGROUP_ROOT = Path("/sys/fs/cgroup")
TIMEOUT_MS = 300_000
VIEWPORT = {"width": 1400, "height": 2400}


def photos_for(count: int, folder: Path) -> list[Path]:
    """`count` photos with distinct names (../shared/photos, then the bundled examples, repeated under new names)."""
    sources = sorted((SHARED / "photos").glob("*.jpg")) + sorted((REPO / "assets" / "examples").glob("*.jpg"))
    out = []
    for i in range(count):
        src = sources[i % len(sources)]
        out.append(folder / f"s{i:02d}-{src.name}")
        shutil.copyfile(src, out[-1])
    return out


def size_bytes(text: str) -> int:
    """'700M' / '2.7G' / '1200000000' → bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def cgroup_prefix(memory: str | None, cpus: float | None) -> tuple[list[str], list[Path]]:
    """A command prefix that moves the server into fresh cgroups (v2 unified, else v1 memory/cpu) with these caps."""
    name = f"captioner-load-{os.getpid()}"
    made: list[Path] = []
    if (CGROUP_ROOT / "cgroup.controllers").exists():  # v2
        group = CGROUP_ROOT / name
        group.mkdir()
        made.append(group)
        if memory:
            (group / "memory.max").write_text(str(size_bytes(memory)))
        if cpus:
            (group / "cpu.max").write_text(f"{int(cpus * 100_000)} 100000")
    else:  # v1: one group per controller
        if memory:
            made.append(CGROUP_ROOT / "memory" / name)
            made[-1].mkdir()
            (made[-1] / "memory.limit_in_bytes").write_text(str(size_bytes(memory)))
        if cpus:
            made.append(CGROUP_ROOT / "cpu" / name)
            made[-1].mkdir()
            (made[-1] / "cpu.cfs_period_us").write_text("100000")
            (made[-1] / "cpu.cfs_quota_us").write_text(str(int(cpus * 100_000)))
    join = " && ".join(f"echo $$ > {g / 'cgroup.procs'}" for g in made)
    return ["sh", "-c", f'{join} && exec "$@"', "sh"], made


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU-seconds so far of each living thread of the server process: {tid: (name, seconds)}."""
    ticks, out = os.sysconf("SC_CLK_TCK"), {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / ticks)  # utime + stime
    return out


def machine_cpu_seconds() -> tuple[float, float]:
    """CPU-seconds the whole machine has spent busy and in all, from /proc/stat (every core, every process)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks, idle = os.sysconf("SC_CLK_TCK"), fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def by_thread(pid: int, before: dict, after: dict, total: float) -> dict[str, float]:
    """Split `total` CPU-seconds: TensorFlow's compute threads (tf_*), the event loop, and the rest (script runs, whose
    threads end with them, TensorFlow's inter-op threads and any other thread)."""
    split = {"TensorFlow compute threads": 0.0, "event loop (HTTP, websockets)": 0.0}
    for tid, (name, cpu) in after.items():
        used = cpu - before.get(tid, (name, 0.0))[1]
        if tid == pid:
            split["event loop (HTTP, websockets)"] += used
        elif name.startswith("tf_"):
            split["TensorFlow compute threads"] += used
    split["script runs and the rest"] = total - sum(split.values())
    return split


class Start:
    """The moment every session's page is open and waiting: uploads start together, after all page loads."""

    def __init__(self, sessions: int):
        self.waiting, self.sessions = 0, sessions
        self.all_open, self.go = asyncio.Event(), asyncio.Event()

    async def arrive(self) -> None:
        """Count this session as open (or failed before opening) and wait for the start."""
        self.waiting += 1
        if self.waiting == self.sessions:
            self.all_open.set()
        await self.go.wait()


async def session(context, url: str, photo: Path, others: set[str], start: Start) -> dict:
    """One fresh browser session: upload `photo`, time captions and heatmap, look for errors and cross-talk.

    The caller closes `context` (after measuring: a closed context's renderer process is gone, and its CPU with it).
    """
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    result = {"photo": photo.name, "error": None, "cross_talk": False}
    arrived = False
    try:
        await page.goto(url)
        await page.get_by_role("heading", name="Caption photos").wait_for()
        uploader = page.locator("input[type=file]").first
        await uploader.wait_for(state="attached")
        arrived = True
        await start.arrive()  # every session starts uploading at the same moment
        t0 = time.perf_counter()
        await uploader.set_input_files(str(photo))
        await page.get_by_text("log p = ", exact=False).nth(1).wait_for()
        result["captions"] = time.perf_counter() - t0
        await page.get_by_text("Greedy — attention for every word", exact=True).wait_for()
        await page.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=stImage] img')].every(i => i.complete && i.naturalWidth)"
        )
        result["heatmap"] = time.perf_counter() - t0
        headings = await page.locator("[data-testid=stHeading] h3").all_inner_texts()
        result["cross_talk"] = bool({h.strip() for h in headings} & others) or photo.name not in headings
        if await page.locator("[data-testid=stException], [data-testid=stAlertContentError]").count():
            result["error"] = "an error or exception is on the page"
    except Exception as e:  # timeouts and browser errors count as errors, the run goes on
        result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        if not arrived:
            await start.arrive()  # so the others do not wait for it
    return result


async def run_sessions(url: str, photos: list[Path], server_pid: int) -> tuple[list[dict], dict, dict, tuple]:
    """Warm the server with one session, then run one session per photo concurrently.

    Returns the results, the server's CPU-seconds while the pages opened, and from the common start of the uploads
    to the last heatmap, each split by thread; the CPU-seconds of the clients (Chromium, Playwright) over the uploads;
    and the whole machine's busy and total CPU-seconds over the uploads.
    """
    from playwright.async_api import async_playwright

    def clients_cpu() -> float:  # this process's tree holds the server, Playwright's driver and Chromium
        return tree_cpu_seconds(os.getpid()) - tree_cpu_seconds(server_pid)

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        warm_start = Start(1)
        warm_start.go.set()
        warm_context = await browser.new_context(viewport=VIEWPORT)
        warm = await session(warm_context, url, photos[-1], set(), warm_start)  # loads the model; not counted
        await warm_context.close()
        if warm["error"]:
            raise RuntimeError(f"warm-up session failed: {warm['error']}")
        start = Start(len(photos) - 1)
        names = {p.name for p in photos[:-1]}
        contexts = [await browser.new_context(viewport=VIEWPORT) for _ in photos[:-1]]
        cpu0, threads0 = tree_cpu_seconds(server_pid), thread_cpu(server_pid)
        tasks = [
            asyncio.create_task(session(c, url, ph, names - {ph.name}, start))
            for c, ph in zip(contexts, photos[:-1], strict=True)
        ]
        await start.all_open.wait()
        cpu1, threads1, machine1 = tree_cpu_seconds(server_pid), thread_cpu(server_pid), machine_cpu_seconds()
        clients1 = clients_cpu()
        start.go.set()
        results = await asyncio.gather(*tasks)
        cpu2, threads2, machine2 = tree_cpu_seconds(server_pid), thread_cpu(server_pid), machine_cpu_seconds()
        clients = clients_cpu() - clients1
        await browser.close()
    opening = by_thread(server_pid, threads0, threads1, cpu1 - cpu0)
    machine = (machine2[0] - machine1[0], machine2[1] - machine1[1])
    return results, opening, by_thread(server_pid, threads1, threads2, cpu2 - cpu1), clients, machine


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument(
        "--page",
        choices=["app", "minimal"],
        default="app",
        help="minimal: bench/minimal_page.py, the browsers' baseline (the same texts and images, no model)",
    )
    parser.add_argument("--model", help="CAPTIONER_MODEL for the server (default: the bundled model)")
    parser.add_argument("--taskset", help="pin the server to these CPUs (taskset -c LIST)")
    parser.add_argument("--memory", help="cap the server's memory in a cgroup, e.g. 700M or 2.7G (root)")
    parser.add_argument("--cpus", type=float, help="cap the server's CPU in a cgroup, e.g. 1 or 2 (root)")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"needs Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)")
    prefix, groups = [], []
    if args.memory or args.cpus:
        prefix, groups = cgroup_prefix(args.memory, args.cpus)
    if args.taskset:
        prefix = ["taskset", "-c", args.taskset, *prefix]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if args.model:
        env["CAPTIONER_MODEL"] = args.model
    with tempfile.TemporaryDirectory(prefix="captioner-load-") as tmp:
        photos = photos_for(args.sessions + 1, Path(tmp))
        port = free_port()
        script = "app.py" if args.page == "app" else "bench/minimal_page.py"
        proc = start_server(env, port, Path(tmp) / "streamlit.log", prefix=prefix, script=script)
        sampler = Sampler(proc.pid)
        try:
            wait_healthy(port, proc)
            sampler.start()
            results, opening, uploads, clients, machine = asyncio.run(
                run_sessions(f"http://127.0.0.1:{port}", photos, proc.pid)
            )
        finally:
            peak = max(sampler.stop() or [0]) if sampler.is_alive() else 0
            stop_server(proc)
            for group in groups:
                group.rmdir()
    caps = [r["captions"] for r in results if "captions" in r]
    heats = [r["heatmap"] for r in results if "heatmap" in r]
    errors = [r for r in results if r["error"]]
    talk = sum(r["cross_talk"] for r in results if not r["error"])
    where = " ".join(
        f"{k} {v}" for k, v in (("taskset", args.taskset), ("memory", args.memory), ("cpus", args.cpus)) if v
    )
    page = "" if args.page == "app" else ", the minimal page"
    print(f"{args.sessions} concurrent sessions{page}{' (' + where + ')' if where else ''}")
    for label, xs in (("to captions", caps), ("to heatmap", heats)):
        if xs:
            print(
                f"  {label:12s} p50 {percentile(xs, 50):6.2f} s  p95 {percentile(xs, 95):6.2f} s  max {max(xs):6.2f} s"
            )
    print(f"  errors {len(errors)}, cross-talk {talk}")
    for r in errors:
        print(f"    {r['photo']}: {r['error']}")
    n, cpu = max(1, args.sessions), sum(uploads.values())
    print(f"  server CPU {cpu:.1f} s = {cpu / n:.2f} CPU-s per photo; peak RSS {peak / 2**20:.0f} MB")
    print("  per photo: " + ", ".join(f"{k} {v / n:.3f}" for k, v in uploads.items()))
    busy, total = machine
    print(f"  the machine over the uploads: {busy:.1f} of {total:.1f} CPU-s busy ({100 * busy / total:.0f} %); "
          f"the browsers (Chromium and Playwright) {clients:.1f} CPU-s = {clients / n:.2f} per session")  # fmt: skip
    cores = len(os.sched_getaffinity(0))
    print(f"  CPU floor: server + browsers need {(cpu + clients) / cores:.1f} s of this machine's {cores} cores "
          "before the last heatmap can be on screen")  # fmt: skip
    print(f"  (opening the pages before: {sum(opening.values()) / n:.2f} server CPU-s per session: "
          + ", ".join(f"{k} {v / n:.3f}" for k, v in opening.items()) + ")")  # fmt: skip
    return 1 if errors or talk else 0


if __name__ == "__main__":
    sys.exit(main())
