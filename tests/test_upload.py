"""``POST /classify`` on a real loopback server with real files, and the parts it is made of."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.requests import Request

from stream_server.config import Config
from stream_server.core.summary import summarize
from stream_server.core.timeline import Segment
from stream_server.inference.classify import classify_file, format_result
from stream_server.inference.model import LoadedModel
from stream_server.serve.server import RunningServer, running_server
from stream_server.serve.upload import (
    ResultCache,
    Spool,
    UploadError,
    limited_receive,
    receive_upload,
    source_name,
    upload_kind,
)
from tests.helpers.audio import encode_audio, music, real_clip
from tests.helpers.cli import GENRECAST
from tests.helpers.constants import LABELS, TIMEOUT_S
from tests.helpers.live import get_metrics, run, send_audio, start_stream, stop_stream

RATE = 22050


def wav(path: Path, seconds: float, seed: int = 0) -> Path:
    """A mono 16-bit WAV at 22050 Hz: about 44 KB per second."""
    return encode_audio(path, music(seconds, RATE, channels=1, seed=seed), RATE)


def ogg(path: Path, seconds: float) -> Path:
    return encode_audio(
        path, music(seconds, 48000, channels=1), 48000, codec="libopus", container_format="ogg"
    )


def client(server: RunningServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.http_url, timeout=3 * TIMEOUT_S, trust_env=False)


async def upload(http: httpx.AsyncClient, data: bytes, name: str = "clip.wav") -> httpx.Response:
    return await http.post("/classify", files={"file": (name, data, "application/octet-stream")})


async def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def refused(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert words in body["error"], body["error"]


def check_result(result: dict[str, Any], labels: tuple[str, ...], data: bytes) -> None:
    assert set(result) == {
        "source", "sha256", "model", "device", "duration_s", "processing_ms", "cached",
        "genre", "confidence", "probabilities", "padded", "decoding", "windows", "segments",
        "summary",
    }  # fmt: skip
    assert result["decoding"] == "viterbi"
    assert list(result["probabilities"]) and set(result["probabilities"]) == set(labels)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=2e-3)
    best = max(result["probabilities"], key=result["probabilities"].get)
    assert result["genre"] == best
    assert result["confidence"] == result["probabilities"][best]
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["processing_ms"] > 0
    assert result["windows"] and result["segments"]
    for w in result["windows"]:
        assert set(w) == {"start_s", "end_s", "top", "genre", "confidence"}
        assert w["genre"] in labels
        assert w["top"][0]["label"] in labels
        assert 0.0 <= w["start_s"] < w["end_s"] <= result["duration_s"] + 1e-3
    assert {s["genre"] for s in result["segments"]} <= set(labels)
    # the timeline summed up as GET /streams sums up a stream: one definition (core/summary.py)
    summary = result["summary"]
    assert summary == summarize([Segment(**s) for s in result["segments"]]).to_dict()
    assert summary["genre"] in labels
    assert summary["windows"] == len(result["windows"])
    assert summary["passages"][0]["start_s"] == result["segments"][0]["start_s"]


# -- the pure parts ------------------------------------------------------------------------------


def test_result_cache_evicts_the_least_recently_used() -> None:
    cache: ResultCache[str, int] = ResultCache(2)
    assert cache.get("a") is None
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.put("c", 3)  # evicts "b"
    assert "b" not in cache
    assert cache.get("b") is None
    assert cache.keys() == ["a", "c"]
    assert cache.get("c") == 3
    cache.put("a", 10)  # replacing refreshes too
    cache.put("d", 4)  # evicts "c"
    assert cache.keys() == ["a", "d"]
    assert cache.get("a") == 10
    assert len(cache) == 2
    assert (cache.hits, cache.misses, cache.evictions) == (3, 2, 2)


def test_result_cache_of_size_zero_keeps_nothing() -> None:
    cache: ResultCache[str, int] = ResultCache(0)
    cache.put("a", 1)
    assert len(cache) == 0
    assert cache.get("a") is None
    with pytest.raises(ValueError, match="capacity"):
        ResultCache(-1)


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("multipart/form-data; boundary=xyz", "form"),
        ("audio/ogg", "raw"),
        ("Audio/WAV; rate=44100", "raw"),
        ("video/webm", "raw"),
        ("application/octet-stream", "raw"),
    ],
)
def test_upload_kind(content_type: str, kind: str) -> None:
    assert upload_kind(content_type) == kind


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/json"])
def test_upload_kind_refuses_other_types(content_type: str | None) -> None:
    with pytest.raises(UploadError, match="Content-Type") as info:
        upload_kind(content_type)
    assert info.value.status == 415


def test_source_name_keeps_only_the_file_name() -> None:
    assert source_name("../../etc/passwd") == "passwd"
    assert source_name("C:\\music\\song.mp3") == "song.mp3"
    assert source_name(None) == "upload"
    assert source_name("") == "upload"
    assert len(source_name("x" * 500)) == 200


def test_limited_receive_stops_reading_at_the_limit() -> None:
    chunks = [b"x" * 400] * 10
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"type": "http.request", "body": chunks[calls - 1], "more_body": calls < 10}

    async def scenario() -> None:
        limited = limited_receive(receive, 1000, 1000)
        assert (await limited())["body"] == chunks[0]
        await limited()
        with pytest.raises(UploadError, match="1000 bytes") as info:
            await limited()  # 1200 bytes > 1000
        assert info.value.status == 413

    run(scenario())
    assert calls == 3  # nothing past the chunk that crossed the limit was read


def test_a_large_content_length_is_refused_before_reading(tmp_path: Path) -> None:
    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")  # pragma: no cover

    def request(content_type: bytes, length: bytes) -> Request:
        headers = [(b"content-type", content_type), (b"content-length", length)]
        scope = {"type": "http", "method": "POST", "path": "/classify", "headers": headers}
        return Request(scope, receive)

    async def scenario() -> None:
        for content_type, length, status in [
            (b"audio/ogg", b"1001", 413),
            (b"multipart/form-data; boundary=x", str(1000 + 16 * 1024 + 1).encode(), 413),
            (b"audio/ogg", b"12abc", 400),
        ]:
            with pytest.raises(UploadError) as info:
                await receive_upload(request(content_type, length), Spool(1000), 1000)
            assert info.value.status == status

    run(scenario())


# -- the endpoint --------------------------------------------------------------------------------


def test_upload_gives_the_offline_report(
    tmp_path: Path, make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    # stereo at 44.1 kHz: resampled and downmixed on the way, as offline
    path = encode_audio(tmp_path / "clip.wav", music(5.0, 44100, channels=2, seed=3), 44100)
    data = path.read_bytes()
    short = wav(tmp_path / "short.wav", 1.0).read_bytes()
    config = make_config()

    async def scenario() -> None:
        async with running_server(config, model=tiny_model) as server, client(server) as http:
            result = await ok(await upload(http, data))
            raw = await ok(
                await http.post(
                    "/classify",
                    content=data,
                    params={"name": "raw.wav"},
                    headers={"Content-Type": "audio/wav"},
                )
            )
            padded = await ok(await upload(http, short, "short.wav"))
        check_result(result, LABELS, data)
        assert result["source"] == "clip.wav"
        assert result["cached"] is False
        assert result["model"] == tiny_model.source
        assert result["device"] == "cpu"
        assert result["padded"] is False
        assert result["duration_s"] == pytest.approx(5.0, abs=0.01)
        assert len(result["windows"]) == 7  # (5 s - 2 s window) / 0.5 s hop + 1
        # the same windows, model and smoothing as `genrecast classify` offline
        offline = classify_file(str(path), config, model=tiny_model).to_result()
        for key in ("probabilities", "windows", "segments", "genre", "duration_s"):
            assert result[key] == offline[key], key
        # the same bytes as a raw body: answered from the cache
        assert raw["cached"] is True
        assert raw["source"] == "raw.wav"
        assert raw["probabilities"] == result["probabilities"]
        text = format_result(raw)
        assert "raw.wav" in text and "cached" in text and "top genres:" in text
        # shorter than one window: padded with silence to one window
        assert padded["padded"] is True
        assert len(padded["windows"]) == 1
        assert padded["duration_s"] == pytest.approx(1.0, abs=0.01)

    run(scenario())


def test_same_file_twice_is_cached_and_another_is_not(
    tmp_path: Path, make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    first = wav(tmp_path / "a.wav", 4.0, seed=1).read_bytes()
    other = wav(tmp_path / "b.wav", 4.0, seed=2).read_bytes()

    async def scenario() -> None:
        async with (
            running_server(make_config(), model=tiny_model) as server,
            client(server) as http,
        ):
            a1 = await ok(await upload(http, first, "a.wav"))
            a2 = await ok(await upload(http, first, "a.wav"))
            b = await ok(await upload(http, other, "b.wav"))
            samples = await get_metrics(http)
        assert a1["cached"] is False
        assert a2["cached"] is True
        assert a2["processing_ms"] >= 0
        for key in ("sha256", "probabilities", "windows", "segments", "genre", "confidence"):
            assert a2[key] == a1[key], key
        assert b["cached"] is False
        assert b["sha256"] != a1["sha256"]
        assert samples["genrecast_uploads_total{result=classified}"] == 2
        assert samples["genrecast_uploads_total{result=cached}"] == 1
        assert samples["genrecast_upload_windows_total"] == 2 * 5  # (4 - 2) / 0.5 + 1 each

    run(scenario())


def test_cache_entries_zero_turns_the_cache_off_and_labels_are_display_labels(
    tmp_path: Path, make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    data = wav(tmp_path / "a.wav", 3.0).read_bytes()
    renamed = ("blues", "classical", "swing", "heavy")

    async def scenario() -> None:
        config = make_config(
            upload={"cache_entries": 0}, model={"labels": {"jazz": "swing", "rock": "heavy"}}
        )
        async with running_server(config, model=tiny_model) as server, client(server) as http:
            ready = (await http.get("/ready")).json()
            first = await ok(await upload(http, data))
            second = await ok(await upload(http, data))
        assert tuple(ready["labels"]) == renamed
        check_result(first, renamed, data)
        assert first["cached"] is False and second["cached"] is False
        assert second["probabilities"] == first["probabilities"]

    run(scenario())


def test_bad_uploads_are_refused_clearly_and_the_server_carries_on(
    tmp_path: Path, make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    good = wav(tmp_path / "good.wav", 3.0).read_bytes()  # about 130 KB, 3 s
    too_long = wav(tmp_path / "long.wav", 5.0).read_bytes()  # about 220 KB, 5 s
    too_large = wav(tmp_path / "large.wav", 10.0).read_bytes()  # about 440 KB
    truncated = ogg(tmp_path / "clip.ogg", 5.0).read_bytes()[:2048]
    config = make_config(upload={"max_bytes": 300_000, "max_duration_s": 4.0})

    async def chunked(data: bytes) -> AsyncIterator[bytes]:  # no Content-Length: counted
        for i in range(0, len(data), 16_384):
            yield data[i : i + 16_384]

    async def scenario() -> None:
        async with running_server(config, model=tiny_model) as server, client(server) as http:
            text = b"this is a text file, not audio\n" * 100
            refused(await upload(http, text, "notes.txt"), 415, "not an audio file")
            refused(await upload(http, truncated, "cut.ogg"), 422, "truncated")
            refused(await upload(http, b"", "empty.wav"), 400, "empty")
            refused(await upload(http, too_long, "long.wav"), 422, "longer than the limit of 4 s")
            refused(await upload(http, too_large, "large.wav"), 413, "300000 bytes")
            raw = {"Content-Type": "audio/wav"}
            big = await http.post("/classify", content=chunked(too_large), headers=raw)
            refused(big, 413, "larger than the limit")
            refused(
                await http.post("/classify", content=good, headers={"Content-Type": "text/plain"}),
                415,
                "Content-Type",
            )
            refused(await http.post("/classify", data={"note": "x"}), 415, "urlencoded")
            no_file = await http.post("/classify", files={"other": ("x.wav", good, "audio/wav")})
            refused(no_file, 400, "'file' field")
            assert (await http.get("/classify")).status_code == 405
            # the server carries on: a good file still works, on the same connection
            result = await ok(await upload(http, good, "good.wav"))
            check_result(result, LABELS, good)
            samples = await get_metrics(http)
        assert samples["genrecast_uploads_total{result=refused}"] == 9
        assert samples["genrecast_uploads_total{result=classified}"] == 1

    run(scenario())


def test_a_live_stream_keeps_its_windows_while_a_file_is_classified(
    tmp_path: Path, make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    data = wav(tmp_path / "long.wav", 30.0).read_bytes()  # 57 windows, in chunks of 4
    config = make_config(engine={"max_batch": 4})
    seconds = 6.0

    async def live(server: RunningServer) -> dict[str, Any]:
        from websockets.asyncio.client import connect

        async with connect(server.ws_url + "/ws/ingest", compression=None, proxy=None) as ws:
            await start_stream(ws)
            await send_audio(ws, music(seconds, 44100), pace=0.01)
            return await stop_stream(ws)

    async def scenario() -> None:
        async with running_server(config, model=tiny_model) as server, client(server) as http:
            ended, response = await asyncio.gather(live(server), upload(http, data))
        result = await ok(response)
        assert len(result["windows"]) == 57
        # every due window of the live stream was computed or skipped, none lost
        assert ended["windows_computed"] > 0
        assert ended["windows_computed"] + ended["windows_skipped"] == 9

    run(scenario())


def test_real_clip_with_the_default_model(make_config: Callable[..., Config]) -> None:
    path = real_clip("jazz")
    data = path.read_bytes()
    config = make_config(model={"path": ""}, engine={"hop_s": 1.0})

    async def scenario() -> None:
        async with running_server(config) as server, client(server) as http:
            labels = tuple((await http.get("/ready")).json()["labels"])
            first = await ok(await upload(http, data, path.name))
            again = await ok(await upload(http, data, path.name))
            cut = await upload(http, data[:2048], "cut.opus")
        assert len(labels) == 10
        check_result(first, labels, data)
        assert first["cached"] is False
        assert first["genre"] in labels
        assert first["duration_s"] == pytest.approx(30.0, abs=0.1)
        assert len(first["windows"]) == 26  # (30 s - 5 s window) / 1 s hop + 1
        assert again["cached"] is True
        assert again["probabilities"] == first["probabilities"]
        refused(cut, 422, "truncated")

    run(scenario())


# -- the command line ----------------------------------------------------------------------------


def genrecast(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GENRECAST, *args], capture_output=True, text=True, timeout=3 * TIMEOUT_S, check=False
    )


def test_classify_with_server(
    tmp_path: Path, make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    path = wav(tmp_path / "clip.wav", 5.0, seed=4)
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio\n" * 50, encoding="utf-8")

    async def scenario() -> None:
        async with running_server(make_config(), model=tiny_model) as server:
            url = server.http_url
            as_json = await asyncio.to_thread(
                genrecast, "classify", str(path), "--server", url, "--json"
            )
            as_text = await asyncio.to_thread(genrecast, "classify", str(path), "--server", url)
            bad = await asyncio.to_thread(genrecast, "classify", str(notes), "--server", url)
            missing = await asyncio.to_thread(
                genrecast, "classify", str(tmp_path / "nope.wav"), "--server", url
            )
        assert as_json.returncode == 0, as_json.stderr
        import json

        result = json.loads(as_json.stdout)
        check_result(result, LABELS, path.read_bytes())
        assert result["cached"] is False
        assert len(result["windows"]) == 7

        assert as_text.returncode == 0, as_text.stderr
        assert "clip.wav: 5.0 s, 7 windows" in as_text.stdout
        assert "cached" in as_text.stdout.splitlines()[0]  # the second upload of the file
        assert "top genres:" in as_text.stdout and "timeline:" in as_text.stdout
        assert result["genre"] in as_text.stdout
        # the mean and the smoothed timeline, each labelled, under the first line
        lines = as_text.stdout.splitlines()
        mean = (
            f"whole file (mean of 7 windows): {result['genre']} {100 * result['confidence']:.1f} %"
        )
        assert lines[2] == mean
        assert lines[3].startswith(f"timeline (smoothed): {result['summary']['genre']} ")

        assert bad.returncode == 2
        assert "Traceback" not in bad.stderr
        (line,) = bad.stderr.strip().splitlines()
        assert "notes.txt" in line and "(415)" in line and "not an audio file" in line

        assert missing.returncode == 2
        assert "nope.wav" in missing.stderr and "Traceback" not in missing.stderr

    run(scenario())


def test_classify_with_an_unreachable_server(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = wav(tmp_path / "x.wav", 1.0)
    result = genrecast("classify", str(path), "--server", f"http://127.0.0.1:{port}")
    assert result.returncode == 2
    assert "cannot reach the server" in result.stderr
    assert "Traceback" not in result.stderr


def test_format_result_matches_the_offline_report(
    tmp_path: Path, make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    from stream_server.inference.classify import format_report

    path = wav(tmp_path / "clip.wav", 4.0)
    report = classify_file(str(path), make_config(), model=tiny_model)
    assert format_report(report) == format_result(report.to_result())
    lines = format_report(report).splitlines()
    assert lines[0].startswith(f"{path}: 4.0 s, 5 windows, ")
    ranked = [line.split()[0] for line in lines[3 : 3 + len(LABELS)]]
    assert ranked == [label for label, _ in report.ranking()]
    assert np.isclose(sum(report.to_result()["probabilities"].values()), 1.0, atol=1e-3)


def test_an_upload_with_silence_and_speech_is_gated_as_offline(
    tmp_path: Path, make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    """The server's engine computes the gate's inputs for uploads too: silence and (with a
    speech detector plugged in) speech show in the answer exactly as offline."""
    from stream_server.inference.loading import with_speech_detector
    from tests.helpers.speech import ToneSpeech, marker

    model = with_speech_detector(tiny_model, ToneSpeech(RATE))
    audio = np.concatenate(
        [
            music(4.0, RATE, channels=1),
            np.zeros((4 * RATE, 1), np.float32),
            marker(4.0, RATE, channels=1),
            music(4.0, RATE, channels=1, seed=2),
        ]
    )
    path = encode_audio(tmp_path / "mixed.wav", audio, RATE)
    config = make_config()

    async def scenario() -> None:
        async with running_server(config, model=model) as server, client(server) as http:
            result = await ok(await upload(http, path.read_bytes(), "mixed.wav"))
        genres = [s["genre"] for s in result["segments"]]
        assert "silence" in genres and "speech" in genres
        assert genres.index("silence") < genres.index("speech")
        assert result["genre"] in LABELS  # the file's genre: from its music windows
        offline = classify_file(str(path), config, model=model).to_result()
        for key in ("probabilities", "windows", "segments", "genre", "decoding"):
            assert result[key] == offline[key], key

    run(scenario())
