"""The Streamlit dashboard as a separate process, its server, and a page of Debian's Chromium
(Playwright's sync API): the steps the dashboard test and ``docs/screenshots.py`` share."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.browser import CHROMIUM, WAIT_MS, chromium_args
from tests.helpers.cli import GENRECAST, free_port
from tests.helpers.constants import TIMEOUT_S

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

ROOT = Path(__file__).resolve().parents[2]
TITLE = "genrecast live dashboard"


def cli(*args: str) -> list[str]:
    return [*GENRECAST, *args]


class Proc:
    """A child process whose output lines are read by a thread (so its pipe never fills)."""

    def __init__(self, command: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._reader.join(5)
        assert self.popen.stdout is not None
        if not self._reader.is_alive():  # closing under a blocked reader would wait for it
            self.popen.stdout.close()


@contextlib.contextmanager
def genrecast_server(tmp_path: Path, dashboard_port: int = 0) -> Iterator[str]:
    """``genrecast serve`` on a free port with the default model; yields its http URL. Its
    landing page links to a dashboard on ``dashboard_port`` (0: none)."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nport = 0\nlog_level = "warning"\ndashboard_port = {dashboard_port}\n'
        '[engine]\ndevice = "cpu"\n'
        f'[storage]\ndatabase = "{tmp_path / "timeline.db"}"\n'
        # the test's radio station is on loopback: a LAN set-up
        "[sources]\nallow_private_addresses = true\n"
    )
    proc = Proc(cli("serve", "--config", str(config)))
    lines = proc.lines
    try:
        deadline = time.monotonic() + 3 * TIMEOUT_S
        seen: list[str] = []
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                pytest.fail(f"the server did not get ready: {''.join(seen)[-2000:]}")
            seen.append(line)
            match = re.search(r"genrecast ready on (http://\S+)", line)
            if match:
                break
        yield match.group(1).rstrip("/")
    finally:
        proc.stop()


@contextlib.contextmanager
def dashboard(server: str, port: int = 0) -> Iterator[str]:
    """``genrecast dashboard`` on ``port`` (0: a free one); yields its URL once Streamlit
    answers."""
    port = port or free_port()
    proc = Proc(cli("dashboard", "--server", server, "--port", str(port)))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 3 * TIMEOUT_S
        while True:
            assert proc.popen.poll() is None, "the dashboard exited"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/_stcore/health", timeout=1.0, trust_env=False).is_success:
                    break
            assert time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.2)
        yield url
    finally:
        proc.stop()


@contextlib.contextmanager
def browser_page() -> Iterator[Any]:
    """A 1400x900 page of a headless Chromium, its waits :data:`WAIT_MS` long."""
    assert sync_playwright is not None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=chromium_args()
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(WAIT_MS)
            yield page
        finally:
            browser.close()
