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


def test_dashboard_follows_a_live_stream_classifies_uploads_and_adds_streams(
    tmp_path: Path,
) -> None:
    [pushed] = clips("jazz", 1)
    [classical] = clips("classical", 1)
    # an upload with music then silence, and a live stream of silence alone
    song = decode_mono(str(classical), 22050)[: 8 * 22050]
    upload = encode_audio(
        tmp_path / "classical-then-silence.wav",
        np.concatenate([song, np.zeros(6 * 22050, np.float32)])[:, None],
        22050,
    )
    quiet = encode_audio(tmp_path / "quiet.wav", np.zeros((22050 * 12, 1), np.float32), 22050)
    mp3 = mp3_file(tmp_path, 6.0).read_bytes()
    with (
        EndlessMp3(mp3) as radio_station,
        genrecast_server(tmp_path) as server,
        dashboard(server) as url,
    ):
        labels = httpx.get(f"{server}/ready", trust_env=False).json()["labels"]
        push = Proc(
            cli("push", str(pushed), "--server", server, "--realtime", "--name", "live jazz")
        )
        hush: Proc | None = None
        try:
            with browser_page() as page:
                page.goto(url)
                page.get_by_text(TITLE).first.wait_for()
                page.wait_for_selector("#server-status[data-state=up]")

                # the pushed stream appears, with a timeline of at least one segment
                row = page.wait_for_selector("#streams tr[data-stream-id]")
                stream_id = row.get_attribute("data-stream-id")
                [mine] = [s for s in streams_of(server) if s["stream_id"] == stream_id]
                assert mine["kind"] == "ws" and mine["name"] == "live jazz"
                page.wait_for_selector(f"#current-genre[data-stream-id='{stream_id}']")
                page.wait_for_selector("#timeline:not([data-segments='0'])")
                page.wait_for_selector(".vega-embed")

                # the genre shown is the server's latest one for that stream
                def same_genre() -> bool:
                    shown = page.get_attribute("#current-genre", "data-genre")
                    [now] = [s for s in streams_of(server) if s["stream_id"] == stream_id]
                    return bool(shown) and shown == now["genre"] and shown in labels

                until(same_genre, "the dashboard's genre to match GET /streams")
                assert page.locator("#changes li").count() >= 1

                # a silent stream shows "silence", in the neutral grey, not as a genre
                hush = Proc(
                    cli("push", str(quiet), "--server", server, "--realtime", "--name", "quiet")
                )
                cell = page.wait_for_selector(
                    "#streams tr[data-genre=silence] span.neutral", timeout=3 * WAIT_MS
                )
                assert cell.text_content() == "silence"
                assert cell.evaluate("e => getComputedStyle(e).color") == "rgb(158, 158, 158)"

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
                page.wait_for_selector(f"#streams tr[data-stream-id='{added_id}'][data-genre]")
                assert not page.get_by_text("Traceback").count()
        finally:
            push.stop()
            if hush is not None:
                hush.stop()


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
