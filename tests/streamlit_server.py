"""Harness shared by the browser test and bench/app_memory.py: run `streamlit run app.py`, drive Chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling hosts this closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    env: dict[str, str], port: int, log: Path, prefix: list[str] | None = None, script: str = "app.py"
) -> subprocess.Popen:
    """`streamlit run app.py` (or another `script` of the repository) on 127.0.0.1:port, headless, in its own process
    group, output to `log`.

    `prefix` goes before the command (e.g. `taskset -c 0`, or a shell that joins a cgroup and execs the rest).
    """
    cmd = [*(prefix or []), sys.executable, "-m", "streamlit", "run", script, "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Block until the server answers its health check; raises if it exits or times out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"streamlit did not become healthy on port {port} within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate the server (its own process group) and wait for it."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


# A fake camera (a generated test pattern) that the page may use without a permission prompt.
FAKE_CAMERA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def launch_browser(playwright, profile: str | Path, height: int = 1000, extra_args: list[str] | None = None):
    """Headless Debian Chromium with a fresh profile (Playwright takes it as user_data_dir, not as a flag)."""
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS + (extra_args or []),
        viewport={"width": 1400, "height": height},
    )  # fmt: skip
