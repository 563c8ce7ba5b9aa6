"""Screenshots of the dashboard for the README: ``python docs/screenshots.py`` from the repo root.

Starts a server with the default model, pushes a real clip at real time, opens the dashboard in
Chromium (1400x900) and writes ``docs/dashboard-live.png`` and ``docs/dashboard-upload.png``.
Needs the shared clips (``../shared/datasets/genres``) and Debian's Chromium.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.audio import clips  # noqa: E402
from tests.helpers.dashboard import (  # noqa: E402
    TITLE,
    Proc,
    browser_page,
    cli,
    dashboard,
    genrecast_server,
)


def main() -> None:
    [pushed] = clips("jazz", 1)
    [upload] = clips("classical", 1)
    with (
        tempfile.TemporaryDirectory() as tmp,
        genrecast_server(Path(tmp)) as server,
        dashboard(server) as url,
    ):
        push = Proc(cli("push", str(pushed), "--server", server, "--realtime", "--name", "jazz"))
        try:
            with browser_page() as page:
                page.goto(url)
                page.get_by_text(TITLE).first.wait_for()
                page.wait_for_selector("#timeline[data-segments]:not([data-segments='0'])")
                page.wait_for_selector(".vega-embed")
                page.wait_for_function(  # about 15 s of timeline
                    "() => document.querySelectorAll('#changes li').length >= 1"
                    " && performance.now() > 20000"
                )
                page.screenshot(path=str(ROOT / "docs" / "dashboard-live.png"))
                page.set_input_files("input[type=file]", str(upload))
                result = page.wait_for_selector("#upload-result[data-genre]")
                page.wait_for_timeout(1500)  # let the charts draw
                result.scroll_into_view_if_needed()
                page.mouse.wheel(0, 400)
                page.wait_for_timeout(500)
                page.screenshot(path=str(ROOT / "docs" / "dashboard-upload.png"))
        finally:
            push.stop()


if __name__ == "__main__":
    main()
