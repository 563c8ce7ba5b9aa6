"""Screenshots for the README: ``python docs/screenshots.py`` from the repo root.

Starts a server with the default model and pushes real clips at real time (three live streams, one
short one that ends, a pull of a dead address that fails), opens the dashboard, the landing page
and ``/mic`` (with a fake microphone playing a clip) in Chromium at 1400x900, and writes
``docs/dashboard-live.png`` (the selected stream on top), ``docs/dashboard-wall.png`` (every
stream), ``docs/dashboard-upload.png``, ``docs/landing.png`` and ``docs/mic.png``. Needs the
shared clips (``../shared/datasets/genres``) and Debian's Chromium.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_server.media.decode import decode_mono  # noqa: E402
from tests.helpers.audio import clips, encode_audio  # noqa: E402
from tests.helpers.browser import CHROMIUM, chromium_args, fake_microphone  # noqa: E402
from tests.helpers.cli import free_port  # noqa: E402
from tests.helpers.dashboard import (  # noqa: E402
    TITLE,
    Proc,
    browser_page,
    cli,
    dashboard,
    genrecast_server,
    sync_playwright,
)

DOCS = ROOT / "docs"


def main() -> None:
    [jazz] = clips("jazz", 1)
    [rock] = clips("rock", 1)
    [classical] = clips("classical", 1)
    [country] = clips("country", 1)
    [blues] = clips("blues", 1)
    with (
        tempfile.TemporaryDirectory() as tmp,
        genrecast_server(Path(tmp)) as server,
        dashboard(server) as url,
    ):
        # one stream that has ended by the time the pictures are taken
        Proc(cli("push", str(country), "--server", server, "--name", "country (ended)")).popen.wait(
            120
        )
        pushes = [
            Proc(cli("push", str(path), "--server", server, "--realtime", "--name", name))
            for path, name in ((rock, "rock radio"), (classical, "classical fm"), (jazz, "jazz"))
        ]
        dead = f"http://127.0.0.1:{free_port()}/stream"
        httpx.post(f"{server}/streams", json={"url": dead, "name": "dead station"}, trust_env=False)
        try:
            with browser_page() as page:
                page.goto(url)
                page.get_by_text(TITLE).first.wait_for()
                page.wait_for_selector("#timeline[data-segments]:not([data-segments='0'])")
                page.wait_for_function(  # about 20 s of timeline
                    "() => document.querySelectorAll('#changes li').length >= 1"
                    " && performance.now() > 22000"
                )
                page.screenshot(path=str(DOCS / "dashboard-live.png"))
                page.locator("#wall").scroll_into_view_if_needed()
                page.mouse.wheel(0, 300)
                page.wait_for_timeout(500)
                page.screenshot(path=str(DOCS / "dashboard-wall.png"))
                page.set_input_files("input[type=file]", str(blues))
                result = page.wait_for_selector("#upload-result[data-genre]", timeout=120_000)
                page.wait_for_timeout(1500)
                result.scroll_into_view_if_needed()
                page.mouse.wheel(0, 400)
                page.wait_for_timeout(500)
                page.screenshot(path=str(DOCS / "dashboard-upload.png"))
            landing_and_mic(server, jazz, Path(tmp))
        finally:
            for push in pushes:
                push.stop()


def landing_and_mic(server: str, clip: Path, tmp: Path) -> None:
    """The landing page, and ``/mic`` with a fake microphone playing ``clip`` for 15 s."""
    assert sync_playwright is not None
    wav = encode_audio(tmp / "mic.wav", decode_mono(str(clip), 48000)[: 40 * 48000, None], 48000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=chromium_args(*fake_microphone(wav)),
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{server}/")
            page.wait_for_selector("#dashboard")
            page.screenshot(path=str(DOCS / "landing.png"))
            page.goto(f"{server}/mic")
            page.click("#start")
            page.wait_for_selector("#genre[data-genre]", timeout=60_000)
            page.wait_for_timeout(12_000)
            page.screenshot(path=str(DOCS / "mic.png"))
        finally:
            browser.close()


if __name__ == "__main__":
    main()
