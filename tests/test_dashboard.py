"""The Streamlit dashboard in a real Chromium, against a real server fed with real music.

Processes: ``genrecast serve`` (default model, SQLite in a temp dir), ``genrecast push
--realtime`` of a real clip, ``genrecast dashboard``; Playwright drives Debian's Chromium.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from stream_server.media.decode import decode_mono
from tests.helpers.audio import clips, encode_audio
from tests.helpers.browser import CHROMIUM, WAIT_MS
from tests.helpers.cli import free_port
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.dashboard import (
    TITLE,
    Proc,
    browser_page,
    cli,
    dashboard,
    genrecast_server,
    sync_playwright,
)
from tests.helpers.radio import EndlessMp3, mp3_file

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed"),
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM}"),
]


def streams_of(server: str) -> list[dict[str, Any]]:
    streams: list[dict[str, Any]] = httpx.get(f"{server}/streams", trust_env=False).json()[
        "streams"
    ]
    return streams


def until(check: Any, what: str, timeout_s: float = 2 * TIMEOUT_S) -> Any:
    """Call ``check`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def rgb(hex_colour: str) -> str:
    """``#rrggbb`` as the browser's computed ``rgb(r, g, b)``."""
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def background(page: Any, selector: str) -> str:
    colour: str = page.eval_on_selector(selector, "e => getComputedStyle(e).backgroundColor")
    return colour


def test_dashboard_shows_live_failed_and_ended_streams_in_one_palette(tmp_path: Path) -> None:
    """Three live streams (two songs, one silence) and a pull that fails: the wall lists them
    all with the failure's reason; a genre has one colour in the wall, the timeline and the
    bars; an upload is classified; a URL added in the form is pulled."""
    [jazz] = clips("jazz", 1)
    [classical] = clips("classical", 1)
    song = decode_mono(str(classical), 22050)[: 8 * 22050]
    upload = encode_audio(
        tmp_path / "classical-then-silence.wav",
        np.concatenate([song, np.zeros(6 * 22050, np.float32)])[:, None],
        22050,
    )
    quiet = encode_audio(tmp_path / "quiet.wav", np.zeros((22050 * 30, 1), np.float32), 22050)
    mp3 = mp3_file(tmp_path, 6.0).read_bytes()
    dead = f"http://127.0.0.1:{free_port()}/none"  # nothing listens there
    port = free_port()
    with (
        EndlessMp3(mp3) as radio_station,
        genrecast_server(tmp_path, dashboard_port=port) as server,
        dashboard(server, port) as url,
    ):
        ready = httpx.get(f"{server}/ready", trust_env=False).json()
        labels, colours = ready["labels"], ready["colours"]
        pushes = [
            Proc(cli("push", str(path), "--server", server, "--realtime", "--name", name))
            for path, name in ((jazz, "live jazz"), (classical, "live classical"), (quiet, "quiet"))
        ]
        try:
            failed = httpx.post(
                f"{server}/streams", json={"url": dead, "name": "dead"}, trust_env=False
            ).json()["stream_id"]
            with browser_page() as page:
                page.goto(url)
                page.get_by_text(TITLE).first.wait_for()
                page.wait_for_selector("#server-status[data-state=up]")

                # the wall lists the three live streams and the failed pull with its reason
                page.wait_for_selector("#wall tr[data-state=live][data-genre]:not([data-genre=''])")
                [dead_row] = [s for s in streams_of(server) if s["stream_id"] == failed]
                assert dead_row["state"] == "failed", dead_row
                reason = dead_row["reason"]
                assert reason and "refused" in reason and reason == dead_row["last_error"], dead_row
                cell = page.wait_for_selector(
                    f"#wall tr[data-stream-id='{failed}'][data-state=failed] .error"
                )
                assert cell.text_content() == reason

                def pushed_live() -> bool:
                    names = {"live jazz", "live classical", "quiet"}
                    ids = [s["stream_id"] for s in streams_of(server) if s["name"] in names]
                    rows = [f"#wall tr[data-stream-id='{i}'][data-state=live]" for i in ids]
                    return len(ids) == 3 and all(page.locator(r).count() for r in rows)

                until(pushed_live, "the three pushed streams live on the wall")

                # the newest live stream is selected, and the selected one's genre has one
                # colour in its wall chip, its timeline and its bars: the server's
                selected = page.get_attribute("#current-genre", "data-stream-id")
                live = [s for s in streams_of(server) if s["state"] == "live"]
                assert selected == max(live, key=lambda s: s["created_at"])["stream_id"]
                page.get_by_role("combobox", name="stream").click()
                page.get_by_role("option", name="live jazz", exact=False).click()
                page.wait_for_selector("#current-genre[data-genre]:not([data-genre=''])")
                [jazz_row] = [s for s in streams_of(server) if s["name"] == "live jazz"]
                until(
                    lambda: (
                        page.get_attribute("#current-genre", "data-stream-id")
                        == jazz_row["stream_id"]
                    ),
                    "live jazz to be selected",
                )
                sid = jazz_row["stream_id"]

                def one_colour() -> bool:
                    genre = page.get_attribute("#current-genre", "data-genre")
                    if not genre or genre not in labels:
                        return False
                    wall = f"#wall tr[data-stream-id='{sid}'] .chip[data-genre='{genre}']"
                    timeline = f"#timeline .segment[data-genre='{genre}']"
                    bar = f"#bars .bar[data-genre='{genre}']"
                    if not all(page.locator(s).count() for s in (wall, timeline, bar)):
                        return False
                    seen = {background(page, s) for s in (wall, timeline, bar)}
                    return seen == {rgb(colours[genre])}

                until(one_colour, "one colour for the genre in the wall, timeline and bars")
                assert page.locator("#changes li").count() >= 1
                assert page.locator("#smoothed-chart polygon.area").count() >= 1

                # silence is neutral grey on the wall, not a genre's colour
                chip = page.wait_for_selector(
                    "#wall tr[data-genre=silence] .chip[data-genre=silence]", timeout=3 * WAIT_MS
                )
                assert chip.text_content() == "silence"
                assert (
                    chip.evaluate("e => getComputedStyle(e).backgroundColor")
                    == rgb(colours["silence"])
                    == "rgb(158, 158, 158)"
                )

                # an upload is classified by the server and shown, its silence too
                page.set_input_files("input[type=file]", str(upload))
                result = page.wait_for_selector("#upload-result[data-genre]")
                assert result.get_attribute("data-genre") in labels
                assert "processed in" in (result.text_content() or "")
                timeline = page.wait_for_selector("#upload-timeline[data-decoding=viterbi]")
                assert "silence" in (timeline.get_attribute("data-labels") or "").split()

                # a radio URL added in the form becomes a stream the server pulls
                page.get_by_label("URL (or a file in the server's media folder)").fill(
                    radio_station.url
                )
                page.get_by_label("name (optional)").fill("dashboard radio")
                page.get_by_role("button", name="Add stream").click()
                added = page.wait_for_selector("#add-result[data-stream-id]")
                added_id = added.get_attribute("data-stream-id")
                [pulled] = [s for s in streams_of(server) if s["stream_id"] == added_id]
                assert pulled["kind"] == "url" and pulled["name"] == "dashboard radio"
                assert pulled["source"] == radio_station.url
                page.wait_for_selector(f"#wall tr[data-stream-id='{added_id}'][data-state=live]")
                assert not page.get_by_text("Traceback").count()

                # the server's landing page: the model, the streams, and links that all answer,
                # the dashboard's among them
                page.goto(f"{server}/")
                page.wait_for_selector("#live-count")
                assert page.title() == "genrecast"
                hrefs = page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)")
                assert f"http://127.0.0.1:{port}/" in hrefs, hrefs
                assert {f"{server}{p}" for p in ("/mic", "/docs", "/openapi.json")} <= set(hrefs)
                for href in hrefs:
                    assert page.request.get(href).status == 200, href
                page.click("#dashboard")
                page.get_by_text(TITLE).first.wait_for()
        finally:
            for push in pushes:
                push.stop()


def test_dashboard_says_when_the_server_is_down() -> None:
    server = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with dashboard(server) as url, browser_page() as page:
        page.goto(url)
        page.get_by_text(TITLE).first.wait_for()
        status = page.wait_for_selector("#server-status[data-state=down]")
        assert status is not None
        # the message is drawn just after the status marker: wait for it rather than race it
        page.get_by_text("is not reachable").first.wait_for()
        assert page.get_by_text("Retrying").count() >= 1
        assert not page.get_by_text("Traceback").count()
