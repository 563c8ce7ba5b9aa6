"""The /mic page in a real Chromium: a fake microphone playing music, a real server on loopback."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stream_server.config import Config
from stream_server.inference.loading import with_speech_detector
from stream_server.inference.model import LoadedModel
from stream_server.serve.server import running_server
from tests.helpers.audio import encode_audio, music
from tests.helpers.browser import (
    NEEDS_BROWSER,
    WAIT_MS,
    async_playwright,
    fake_microphone,
    launch,
)
from tests.helpers.live import run, serving
from tests.helpers.speech import ToneSpeech, marker

pytestmark = NEEDS_BROWSER


def test_mic_page_shows_the_live_genre_of_the_microphone(
    make_config: Callable[..., Config], tiny_model: LoadedModel, tmp_path: Path
) -> None:
    wav = encode_audio(tmp_path / "music.wav", music(8.0, 48000), 48000)  # 16-bit PCM WAV

    async def scenario() -> None:
        assert async_playwright is not None
        async with (
            serving(make_config(), tiny_model) as (server, http),
            async_playwright() as playwright,
        ):
            browser = await launch(playwright, *fake_microphone(wav))
            ready = (await http.get("/ready")).json()
            try:
                page = await browser.new_page()
                await page.goto(f"{server.http_url}/mic")
                assert await page.text_content("#status") is not None
                assert not await page.is_visible("#countdown")
                await page.click("#start")
                # before the first window: how long until the model has heard a window
                await page.wait_for_selector("#countdown[data-left]", timeout=WAIT_MS)
                countdown = await page.text_content("#countdown-text") or ""
                assert re.search(r"First genre in \d+\.\d s", countdown), countdown
                assert f"{ready['window_s']:g} s at a time" in countdown
                # the input level meter follows the microphone
                await page.wait_for_selector("#level-text[data-rms-db]", timeout=WAIT_MS)
                levels = [await _level(page)]
                while len(set(levels)) < 3:
                    await page.wait_for_timeout(120)
                    levels.append(await _level(page))
                    assert len(levels) < 100, levels
                assert all(-60 < rms < 0 for rms, _ in levels), levels
                assert all(peak >= rms for rms, peak in levels), levels
                await page.wait_for_selector("#genre[data-genre]", timeout=WAIT_MS)
                assert not await page.is_visible("#countdown")  # gone with the first genre
                genre = (await page.text_content("#genre") or "").strip()
                stream_id = (await page.text_content("#stream-id") or "").strip()
                labels = ready["labels"]
                assert genre in labels
                # one number, labelled, in the genre's colour of /ready
                assert re.fullmatch(r"\d{1,3} %", await page.text_content("#confidence") or "")
                assert await page.text_content("#confidence-label") == "smoothed"
                colour = await page.eval_on_selector("#genre", "e => getComputedStyle(e).color")
                assert colour == _rgb(ready["colours"][genre])
                probs = await page.eval_on_selector_all(
                    "#probs li", "ls => ls.map(l => l.dataset.label)"
                )
                assert set(probs) <= set(labels) and probs
                assert await page.locator("#timeline span").count() >= 1
                assert await page.locator("#changes li").count() >= 1
                assert not await page.is_visible("#error")
                # the timeline's axis: seconds of stream time, from 0
                await page.wait_for_function(
                    "document.querySelectorAll('#axis .tick').length >= 2", timeout=WAIT_MS
                )
                ticks = await page.eval_on_selector_all(
                    "#axis .tick", "ts => ts.map(t => [Number(t.dataset.t), t.textContent])"
                )
                assert ticks[0] == [0, "0 s"], ticks
                assert [t for t, _ in ticks] == sorted({t for t, _ in ticks}), ticks
                assert all(text.endswith(" s") or ":" in text for _, text in ticks), ticks
                # music is sent as captured: no voice processing carving it up
                settings = await page.evaluate("media.getAudioTracks()[0].getSettings()")
                assert settings["echoCancellation"] is False, settings
                assert settings["noiseSuppression"] is False, settings
                assert settings["autoGainControl"] is False, settings

                streams = (await http.get("/streams")).json()["streams"]
                [mine] = [s for s in streams if s["stream_id"] == stream_id]
                assert mine["kind"] == "webrtc" and mine["state"] == "live"
                assert mine["windows_computed"] >= 1
                assert mine["genre"] in labels

                await page.click("#stop")
                await page.wait_for_selector(
                    "#status[data-state=ended]:has-text('Stream ended')", timeout=WAIT_MS
                )
                assert await page.text_content("#level-text") == "— dBFS"  # the meter stopped
            finally:
                await browser.close()
            streams = (await http.get("/streams")).json()["streams"]
            [mine] = [s for s in streams if s["stream_id"] == stream_id]
            assert mine["state"] == "ended"
            assert not server.service.streams

    run(scenario())


def test_mic_page_explains_a_refused_microphone(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    async def scenario() -> None:
        assert async_playwright is not None
        async with (
            running_server(make_config(), model=tiny_model) as server,
            async_playwright() as playwright,
        ):
            browser = await launch(
                playwright, "--use-fake-device-for-media-stream", "--deny-permission-prompts"
            )
            try:
                page = await browser.new_page()
                await page.goto(f"{server.http_url}/mic")
                await page.click("#start")
                await page.wait_for_selector("#error.shown", timeout=WAIT_MS)
                text = await page.text_content("#error") or ""
                assert "Microphone access was refused" in text
                assert await page.get_attribute("#status", "data-state") == "error"
                assert await page.is_enabled("#start")
            finally:
                await browser.close()
            assert not server.service.streams

    run(scenario())


@pytest.mark.parametrize("kind", ["silence", "speech"])
def test_mic_page_shows_silence_and_speech_in_neutral_grey(
    kind: str, make_config: Callable[..., Config], tiny_model: LoadedModel, tmp_path: Path
) -> None:
    """Music, then digital silence or talk (the stand-in detector's marker): the page names it
    ``silence`` or ``speech``, in grey rather than a genre colour, in the live genre, its
    timeline and its changes."""
    import numpy as np

    after = np.zeros((48000 * 8, 2), np.float32) if kind == "silence" else marker(8.0, 48000)
    wav = encode_audio(tmp_path / f"{kind}.wav", np.concatenate([music(4.0, 48000), after]), 48000)
    grey = "rgb(158, 158, 158)"
    model = with_speech_detector(tiny_model, ToneSpeech(tiny_model.preprocessing.sample_rate))

    async def scenario() -> None:
        assert async_playwright is not None
        async with (
            running_server(make_config(), model=model) as server,
            async_playwright() as playwright,
        ):
            browser = await launch(playwright, *fake_microphone(wav))
            try:
                page = await browser.new_page()
                await page.goto(f"{server.http_url}/mic")
                await page.click("#start")
                await page.wait_for_selector(f"#genre[data-genre={kind}]", timeout=WAIT_MS)
                assert (await page.text_content("#genre") or "").startswith(kind)
                colour = await page.eval_on_selector("#genre", "e => getComputedStyle(e).color")
                assert colour == grey
                number = await page.text_content("#confidence") or ""
                label = await page.text_content("#confidence-label")
                if kind == "speech":  # the number says how sure the speech detector is
                    assert re.fullmatch(r"\d{1,3} %", number) and label == "speech probability"
                else:  # silence has no number
                    assert number == "" and label == ""
                blocks = await page.eval_on_selector_all(
                    "#timeline span", "spans => spans.map(s => getComputedStyle(s).backgroundColor)"
                )
                assert grey in blocks
                swatches = await page.eval_on_selector_all(
                    "#changes li",
                    "items => items.map(li => [li.textContent,"
                    " getComputedStyle(li.querySelector('.swatch')).backgroundColor])",
                )
                assert any(kind in text and bg == grey for text, bg in swatches)
                await page.click("#stop")
            finally:
                await browser.close()

    run(scenario())


async def _level(page: Any) -> tuple[float, float]:
    """The meter's RMS and peak now, in dBFS."""
    rms, peak = await page.eval_on_selector(
        "#level-text", "e => [Number(e.dataset.rmsDb), Number(e.dataset.peakDb)]"
    )
    return float(rms), float(peak)


def _rgb(colour: str) -> str:
    """``#rrggbb`` as ``getComputedStyle`` writes it."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"
