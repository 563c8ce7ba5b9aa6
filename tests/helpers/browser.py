"""Debian's Chromium driven by Playwright (async API), with a fake microphone: the shared steps of
the browser tests, each marked :data:`NEEDS_BROWSER`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.constants import TIMEOUT_S

CHROMIUM = Path("/usr/bin/chromium")

try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - depends on the environment
    async_playwright = None

#: Skips a test (or a module, as its ``pytestmark``) where Playwright or Chromium is missing.
NEEDS_BROWSER = pytest.mark.skipif(
    async_playwright is None or (not CHROMIUM.is_file() and shutil.which("chromium") is None),
    reason=f"needs playwright and a Chromium at {CHROMIUM}",
)

#: Selector waits, in milliseconds (Playwright's unit).
WAIT_MS = 2 * TIMEOUT_S * 1000


def chromium_args(*extra: str) -> list[str]:
    # Running as root needs --no-sandbox; /dev/shm may be small in containers.
    return ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", *extra]


async def launch(playwright: Any, *args: str) -> Any:
    return await playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=chromium_args(*args)
    )


def fake_microphone(wav: Path) -> tuple[str, ...]:
    """Chromium flags for a microphone that plays ``wav`` and is allowed without asking."""
    return (
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
    )
