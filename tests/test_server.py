"""The server on a real loopback port, driven by real WebSocket and HTTP clients."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from stream_server.config import Config
from stream_server.inference.banded import amx_available
from stream_server.inference.model import LoadedModel, load_model, save_checkpoint, tiny_vit
from stream_server.inference.preprocessing import AudioPreprocessing
from stream_server.serve.listen import bind
from stream_server.serve.server import RunningServer, running_server
from stream_server.tools.client import push_frames
from tests.helpers.audio import music, to_s16le
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import (
    FRAME_S,
    RATE,
    collect_until_end,
    expect_rejection,
    expected_windows,
    recv_json,
    run,
    send_audio,
    server_metrics,
    serving,
    start,
    start_stream,
    stop_stream,
    ws,
)

# -- ingest and updates --------------------------------------------------------------------


def test_ingest_to_updates_end_to_end(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    seconds = 6.0

    async def scenario() -> None:
        async with serving(make_config(), tiny_model) as (server, http):
            async with ws(server, "/ws/updates") as sub, ws(server, "/ws/ingest") as ingest:
                stream_id = await start_stream(ingest, name="e2e")
                await send_audio(ingest, music(seconds, RATE))
                ended = await stop_stream(ingest)
                messages = await collect_until_end(sub, stream_id)

            kinds = [m["type"] for m in messages]
            assert kinds[0] == "stream.started"
            assert kinds[-1] == "stream.ended"
            seqs = [m["seq"] for m in messages]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            updates = [m for m in messages if m["type"] == "genre.update"]
            assert updates, "no genre.update arrived"
            window_s, hop_s = 2.0, 0.5
            due = expected_windows(seconds, window_s, hop_s)
            assert ended["windows_computed"] == len(updates)
            assert ended["windows_computed"] + ended["windows_skipped"] == due
            times = [u["stream_time_s"] for u in updates]
            assert times == sorted(times)
            for update in updates:
                assert update["stream_id"] == stream_id
                assert update["genre"] in tiny_model.labels
                assert len(update["top"]) == 3
                assert {t["label"] for t in update["top"]} <= set(tiny_model.labels)
                assert sum(t["prob"] for t in update["top"]) <= 1.0001
                assert update["window_start_s"] == pytest.approx(update["stream_time_s"] - window_s)
                assert (update["stream_time_s"] / hop_s) == pytest.approx(
                    round(update["stream_time_s"] / hop_s)
                )
                assert update["latency_ms"] >= 0
            changes = [m for m in messages if m["type"] == "genre.change"]
            assert changes and changes[0]["previous"] is None
            assert changes[0]["genre"] == updates[0]["genre"]

            timeline = (await http.get(f"/streams/{stream_id}/timeline")).json()
            assert timeline["stream_id"] == stream_id
            segments = timeline["segments"]
            assert segments[0]["start_s"] == pytest.approx(updates[0]["window_start_s"])
            assert segments[-1]["end_s"] == pytest.approx(times[-1])
            for a, b in itertools.pairwise(segments):
                assert a["end_s"] == pytest.approx(b["start_s"])
                assert a["genre"] != b["genre"]
            assert sum(s["updates"] for s in segments) == len(updates)
            csv = await http.get(f"/streams/{stream_id}/timeline", params={"format": "csv"})
            assert csv.headers["content-type"].startswith("text/csv")
            rows = csv.text.strip().splitlines()
            assert rows[0].startswith("start_s,end_s,genre")
            assert len(rows) == len(segments) + 1
            streams = (await http.get("/streams")).json()["streams"]
            mine = [s for s in streams if s["stream_id"] == stream_id]
            assert mine and mine[0]["state"] == "ended" and mine[0]["name"] == "e2e"
            missing = await http.get("/streams/nope/timeline")
            assert missing.status_code == 404

    run(scenario())


def test_health_ready_and_live_stream_listing(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    config = make_config()

    async def scenario() -> None:
        async with serving(config, tiny_model) as (server, http):
            assert (await http.get("/health")).json() == {"status": "ok"}
            ready = (await http.get("/ready")).json()
            assert ready["ready"] is True
            assert ready["device"] == "cpu"
            bfloat16 = config.engine.half_precision and amx_available()
            assert ready["precision"] == ("bfloat16" if bfloat16 else "float32")
            assert ready["half_precision"] is False  # float16 is for CUDA
            assert ready["labels"] == list(tiny_model.labels)
            assert ready["window_s"] == 2.0
            async with ws(server, "/ws/updates") as sub, ws(server, "/ws/ingest") as ingest:
                stream_id = await start_stream(ingest, name="live one")
                await send_audio(ingest, music(3.0, RATE))
                while (await recv_json(sub))["type"] != "genre.update":
                    pass
                streams = (await http.get("/streams")).json()["streams"]
                live = next(s for s in streams if s["stream_id"] == stream_id)
                assert live["state"] == "live"
                assert live["kind"] == "ws"
                assert live["stream_time_s"] == pytest.approx(3.0, abs=0.01)
                assert live["genre"] in tiny_model.labels
                assert live["lag_s"] >= 0
                await stop_stream(ingest)

    run(scenario())


def test_resume_with_since(make_config: Callable[..., Config], tiny_model: LoadedModel) -> None:
    async def scenario() -> None:
        config = make_config(updates={"history_size": 8})
        async with running_server(config, model=tiny_model) as server:
            async with ws(server, "/ws/updates") as sub, ws(server, "/ws/ingest") as ingest:
                stream_id = await start_stream(ingest)
                await send_audio(ingest, music(8.0, RATE), pace=0.02)
                await stop_stream(ingest)
                everything = await collect_until_end(sub, stream_id)
            last = everything[-1]["seq"]
            assert len(everything) > 8, "the scenario must overflow the history"

            # Resume from the middle of what is kept: exactly the later messages, in order.
            since = last - 3
            async with ws(server, f"/ws/updates?since={since}") as resumed:
                replay = [await recv_json(resumed) for _ in range(3)]
            assert [m["seq"] for m in replay] == [since + 1, since + 2, since + 3]
            assert replay == [m for m in everything if m["seq"] > since]

            # Resume from before the kept history: a resume_gap error, then the oldest kept.
            async with ws(server, f"/ws/updates?since={everything[0]['seq']}") as late:
                gap = await recv_json(late)
                first = await recv_json(late)
            assert gap["type"] == "error" and gap["code"] == "resume_gap"
            assert first["seq"] == last - 7

            # Filtered by stream and resumed.
            url = f"/ws/updates?stream_id={stream_id}&since={last - 1}"
            async with ws(server, url) as filtered:
                assert (await recv_json(filtered))["seq"] == last

            async with ws(server, "/ws/updates?since=abc") as bad:
                message = await recv_json(bad)
                assert message["type"] == "error"
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(bad.recv(), TIMEOUT_S)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

    run(scenario())


def test_two_streams_are_batched_together(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    """Each stream's first window is due; the engine waits up to max_wait and runs both at once."""

    async def scenario() -> None:
        config = make_config(engine={"max_wait_ms": 2000.0, "max_batch": 2})
        async with running_server(config, model=tiny_model) as server:
            async with (
                ws(server, "/ws/updates") as sub,
                ws(server, "/ws/ingest") as a,
                ws(server, "/ws/ingest") as b,
            ):
                id_a = await start_stream(a, name="a")
                id_b = await start_stream(b, name="b")
                # A little over one window: the resampler holds back a few samples of context.
                await a.send(to_s16le(music(2.05, RATE, seed=1)))
                await b.send(to_s16le(music(2.05, RATE, seed=2)))
                got: dict[str, dict[str, Any]] = {}
                while len(got) < 2:
                    message = await recv_json(sub)
                    if message["type"] == "genre.update":
                        got[message["stream_id"]] = message
                assert set(got) == {id_a, id_b}
                await stop_stream(a)
                await stop_stream(b)
            metrics = await server_metrics(server)
            assert metrics["genrecast_batch_size_count"] == 1
            assert metrics["genrecast_batch_size_sum"] == 2
            assert metrics["genrecast_windows_computed_total"] == 2

    run(scenario())


# -- bad input -----------------------------------------------------------------------------


def test_bad_input_is_rejected_clearly_and_hurts_no_other_stream(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    async def scenario() -> None:
        config = make_config(server={"max_frame_bytes": 65536})
        async with running_server(config, model=tiny_model) as server:
            async with ws(server, "/ws/updates") as sub, ws(server, "/ws/ingest") as healthy:
                healthy_id = await start_stream(healthy, name="healthy")
                audio = music(5.0, RATE)
                half = len(audio) // 2
                await send_audio(healthy, audio[:half])

                text = await expect_rejection(server, [b"\x00" * 400], "protocol", 1008)
                assert "before the 'start'" in text
                text = await expect_rejection(
                    server, [start(format="mp3")], "unsupported_format", 1003
                )
                assert "mp3" in text
                text = await expect_rejection(
                    server, [start(sample_rate=10_000_000)], "unsupported_format", 1003
                )
                assert "10000000" in text
                await expect_rejection(server, [start(sample_rate=0)], "unsupported_format", 1003)
                await expect_rejection(server, [start(channels=64)], "unsupported_format", 1003)
                await expect_rejection(server, [start(sample_rate="fast")], "protocol", 1008)
                text = await expect_rejection(
                    server, [start(), b"\x00" * 70000], "frame_too_large", 1009
                )
                assert "70000" in text
                text = await expect_rejection(server, ["{not json"], "invalid_json", 1007)
                assert "invalid JSON" in text
                await expect_rejection(server, ["[1, 2]"], "invalid_json", 1007)
                await expect_rejection(server, [json.dumps({"type": "hello"})], "protocol", 1008)
                await expect_rejection(server, [json.dumps({"type": "stop"})], "protocol", 1008)
                await expect_rejection(server, [start(), start()], "protocol", 1008)

                # A client that vanishes mid-stream: its stream ends, nobody else notices.
                async with ws(server, "/ws/ingest") as vanishing:
                    gone_id = await start_stream(vanishing)
                    await vanishing.send(to_s16le(music(0.3, RATE)))

                await send_audio(healthy, audio[half:])
                ended = await stop_stream(healthy)
                messages = await collect_until_end(sub, healthy_id)
            updates = [
                m for m in messages if m["type"] == "genre.update" and m["stream_id"] == healthy_id
            ]
            assert updates and ended["windows_computed"] == len(updates)
            due = expected_windows(5.0, 2.0, 0.5)
            assert ended["windows_computed"] + ended["windows_skipped"] == due
            gone = [
                m for m in messages if m["type"] == "stream.ended" and m["stream_id"] == gone_id
            ]
            assert gone and gone[0]["reason"] == "client disconnected"
            metrics = await server_metrics(server)
            assert metrics["genrecast_errors_total{kind=unsupported_format}"] == 4
            assert metrics["genrecast_errors_total{kind=invalid_json}"] == 2
            assert metrics["genrecast_errors_total{kind=frame_too_large}"] == 1
            assert metrics["genrecast_errors_total{kind=protocol}"] == 5
            assert metrics["genrecast_active_streams"] == 0

    run(scenario())


# -- slow subscribers ----------------------------------------------------------------------


def open_stalled_subscriber(port: int) -> socket.socket:
    """A raw WebSocket client on /ws/updates that completes the handshake and never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /ws/updates HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode())
    sock.settimeout(TIMEOUT_S)
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A tiny model with 1000 labels: with top_k 1000 each update is about 48 kB.

    A peer that stops reading is only noticed once the kernel's socket buffers are full (Linux
    grows a loopback send buffer to 4 MB), so the test needs megabytes of updates.
    """
    labels = tuple(f"genre-label-number-{i:04d}" for i in range(1000))
    pre = AudioPreprocessing(image_size=(64, 64), window_seconds=2.0)
    model, pre = tiny_vit(labels, pre, seed=2)
    return load_model(str(save_checkpoint(model, pre, tmp_path_factory.mktemp("wide"))))


def test_stalled_subscriber_is_dropped_without_delaying_a_healthy_one(
    make_config: Callable[..., Config], wide_model: LoadedModel
) -> None:
    async def scenario() -> None:
        config = make_config(
            updates={"queue_size": 4},
            engine={"hop_s": 0.1, "top_k": 1000, "max_wait_ms": 0.0},
        )
        async with running_server(config, model=wide_model) as server:
            stalled = await asyncio.to_thread(open_stalled_subscriber, server.port)
            try:
                async with ws(server, "/ws/updates") as healthy, ws(server, "/ws/ingest") as ingest:
                    stream_id = await start_stream(ingest)
                    # 2x real time: every window is computed, about 20 updates a second.
                    feeder = asyncio.create_task(send_audio(ingest, music(12.0, RATE), pace=0.05))
                    messages = await collect_until_end_after(healthy, stream_id, feeder, ingest)
                    metrics = await server_metrics(server)
            finally:
                stalled.close()
        updates = [m for m in messages if m["type"] == "genre.update"]
        seqs = [m["seq"] for m in messages]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "healthy subscriber missed some"
        assert len(updates) >= 50
        latencies = sorted(u["latency_ms"] for u in updates)
        assert latencies[len(latencies) // 2] < 1000
        assert metrics["genrecast_subscribers_dropped_total"] == 1
        assert metrics["genrecast_subscribers"] == 1

    run(scenario())


async def collect_until_end_after(
    sub: ClientConnection, stream_id: str, feeder: asyncio.Task[None], ingest: ClientConnection
) -> list[dict[str, Any]]:
    async def finish() -> None:
        await feeder
        await stop_stream(ingest)

    closer = asyncio.create_task(finish())
    messages = await collect_until_end(sub, stream_id)
    await closer
    return messages


# -- persistence ---------------------------------------------------------------------------


def test_timeline_survives_a_restart(
    make_config: Callable[..., Config], tiny_model: LoadedModel, tmp_path: Path
) -> None:
    async def scenario() -> None:
        config = make_config()
        async with serving(config, tiny_model) as (server, http):
            async with ws(server, "/ws/ingest") as ingest:
                stream_id = await start_stream(ingest, name="persisted")
                await send_audio(ingest, music(5.0, RATE))
                await stop_stream(ingest)
            before = (await http.get(f"/streams/{stream_id}/timeline")).json()
        assert before["segments"]
        async with serving(config, tiny_model) as (_, http):
            after = (await http.get(f"/streams/{stream_id}/timeline")).json()
            streams = (await http.get("/streams")).json()["streams"]
        assert after == before
        assert any(s["stream_id"] == stream_id and s["state"] == "ended" for s in streams)
        assert (tmp_path / "timeline.db").is_file()

    run(scenario())


def test_an_ended_stream_keeps_what_it_was_across_a_restart(
    make_config: Callable[..., Config], tiny_model: LoadedModel, tmp_path: Path
) -> None:
    """A live stream lists its summary so far; once ended, its summary, last genre, windows and
    reason are listed from what the store kept with it, after a restart too, without its
    timeline being read. A stream ended without them (by an older version) gets them from its
    timeline once, stored back."""
    config = make_config()

    def check_summary(summary: dict[str, Any], info: dict[str, Any]) -> None:
        assert summary["genre"] in tiny_model.labels
        assert summary["genres"][0]["genre"] == summary["genre"]
        assert sum(g["share"] for g in summary["genres"]) == pytest.approx(1.0, abs=1e-3)
        assert 0 <= summary["duration_s"] <= info["stream_time_s"]
        assert summary["passages"] and summary["more_passages"] == 0

    async def scenario() -> None:
        async with serving(config, tiny_model) as (server, http):
            async with ws(server, "/ws/ingest") as ingest:
                stream_id = await start_stream(ingest, name="kept")
                other_id = await start_stream_elsewhere(server)
                await send_audio(ingest, music(6.0, RATE))
                while True:  # its windows are scored
                    live = await listed(http, stream_id)
                    if live["summary"]["windows"] >= 1:
                        break
                    await asyncio.sleep(0.05)
                assert live["state"] == "live" and "reason" not in live, live
                assert live["last_error"] is None and live["last_error_at"] is None
                check_summary(live["summary"], live)
                ended = await stop_stream(ingest)
            first = await listed(http, stream_id)
            assert first["state"] == "ended" and first["reason"] == "stopped by client"
            assert first["windows_computed"] == ended["windows_computed"] > 0
            assert first["windows_skipped"] == ended["windows_skipped"]
            assert first["stream_time_s"] == ended["stream_time_s"]
            assert first["genre"] in tiny_model.labels and first["last_error"] is None
            check_summary(first["summary"], first)
            assert 0 < first["summary"]["windows"] <= first["windows_computed"]
        db = tmp_path / "timeline.db"
        with sqlite3.connect(db) as raw:  # as a version that kept no outcome left it
            raw.execute("UPDATE streams SET outcome = NULL WHERE stream_id = ?", (other_id,))
        raw.close()
        async with serving(config, tiny_model) as (_, http):
            after = await listed(http, stream_id)
            assert after == first
            filled = await listed(http, other_id)
            assert filled["state"] == "ended" and filled["reason"] is None
            assert filled["summary"]["windows"] > 0 and "windows_computed" not in filled
            assert filled["genre"] == filled["summary"]["passages"][-1]["genre"]
        with sqlite3.connect(db) as raw:
            rows = dict(raw.execute("SELECT stream_id, outcome FROM streams").fetchall())
        raw.close()
        assert json.loads(rows[other_id])["summary"] == filled["summary"]  # stored back

    async def start_stream_elsewhere(server: RunningServer) -> str:
        async with ws(server, "/ws/ingest") as other:
            other_id = await start_stream(other, name="other")
            await send_audio(other, music(4.0, RATE))
            await stop_stream(other)
        return other_id

    run(scenario())


async def listed(http: httpx.AsyncClient, stream_id: str) -> dict[str, Any]:
    streams = (await http.get("/streams")).json()["streams"]
    (info,) = [s for s in streams if s["stream_id"] == stream_id]
    return dict(info)


def test_listening_socket_is_tcp_so_replies_are_not_delayed() -> None:
    """asyncio turns on TCP_NODELAY for accepted connections only when the listening socket says
    IPPROTO_TCP; without it small replies on a kept-alive connection wait out Nagle's algorithm."""
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_deleting_a_pushed_stream_tells_and_disconnects_its_client(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    """``DELETE /streams/{id}`` on a stream pushed over ``/ws/ingest``: the pusher gets
    ``stream.ended`` and its socket is closed at once, and another stream carries on."""

    async def scenario() -> None:
        async with serving(make_config(), tiny_model) as (server, http):
            async with ws(server, "/ws/ingest") as doomed, ws(server, "/ws/ingest") as other:
                doomed_id = await start_stream(doomed, name="doomed")
                other_id = await start_stream(other, name="other")
                await send_audio(doomed, music(1.0, RATE))
                assert (await http.delete(f"/streams/{doomed_id}")).status_code == 200
                ended = await recv_json(doomed)
                assert ended["type"] == "stream.ended", ended
                assert ended["stream_id"] == doomed_id
                assert ended["reason"] == "stopped by request"
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(doomed.recv(), TIMEOUT_S)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
                await send_audio(other, music(3.0, RATE))
                assert (await stop_stream(other))["windows_computed"] >= 1
            streams = (await http.get("/streams")).json()["streams"]
            assert {s["stream_id"] for s in streams} >= {doomed_id, other_id}
            assert all(s["state"] == "ended" for s in streams)

    run(scenario())


def test_push_returns_cleanly_when_its_stream_is_deleted(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    async def scenario() -> None:
        async with serving(make_config(), tiny_model) as (server, http):
            started: asyncio.Queue[str] = asyncio.Queue()
            audio = music(20.0, RATE).astype(np.float32)
            step = round(FRAME_S * RATE)
            push = asyncio.create_task(
                push_frames(
                    (audio[i : i + step] for i in range(0, len(audio), step)),
                    server=server.ws_url,
                    sample_rate=RATE,
                    channels=2,
                    pace="realtime",
                    on_started=started.put_nowait,
                )
            )
            stream_id = await asyncio.wait_for(started.get(), TIMEOUT_S)
            assert (await http.delete(f"/streams/{stream_id}")).status_code == 200
            result = await asyncio.wait_for(push, TIMEOUT_S)
            assert result.stream_id == stream_id
            assert result.ended is not None and result.ended["reason"] == "stopped by request"
            assert result.seconds_sent < 10.0

    run(scenario())


# -- music, speech, silence ------------------------------------------------------------------


async def push_mono(server: RunningServer, audio: np.ndarray, rate: int, name: str) -> str:
    """Stream ``(samples,)`` mono float32 as s16le at ``rate``, paced; returns the stream id."""
    async with ws(server, "/ws/ingest") as ingest:
        start = {"type": "start", "name": name, "sample_rate": rate, "channels": 1}
        await ingest.send(json.dumps({**start, "format": "s16le"}))
        reply = await recv_json(ingest)
        stream_id: str = reply["stream_id"]
        step = round(FRAME_S * rate)
        for i in range(0, audio.size, step):
            await ingest.send(to_s16le(audio[i : i + step]))
            await asyncio.sleep(0.01)
        await stop_stream(ingest)
    return stream_id


def test_real_music_around_silence_on_a_live_stream(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """A real clip, digital silence, low noise, the clip again, pushed live: the updates and
    changes say ``silence``, the stored timeline has the silence where it was and the music's
    genre on both sides, and it is the same after a restart."""
    from stream_server.inference.model import resolve_model
    from stream_server.media.decode import decode_mono
    from tests.helpers.audio import real_clip

    model = resolve_model("")
    rate = model.preprocessing.sample_rate
    clip = decode_mono(str(real_clip("classical")), rate)
    noise = np.random.default_rng(1).standard_normal(3 * rate).astype(np.float32) * 1e-4
    audio = np.concatenate([clip[: 10 * rate], np.zeros(5 * rate, np.float32), noise, clip])
    audio = audio[: 30 * rate]
    config = make_config(engine={"hop_s": 1.0})

    async def scenario() -> None:
        async with serving(config, model) as (server, http):
            async with ws(server, "/ws/updates") as sub:
                stream_id = await push_mono(server, audio, rate, "silence")
                messages = await collect_until_end(sub, stream_id)
            stored = (await http.get(f"/streams/{stream_id}/timeline")).json()["segments"]
        updates = [m for m in messages if m["type"] == "genre.update"]
        changes = [(m["previous"], m["genre"]) for m in messages if m["type"] == "genre.change"]
        assert changes == [(None, "classical"), ("classical", "silence"), ("silence", "classical")]
        assert any(u["genre"] == "silence" and u["confidence"] == 1.0 for u in updates)
        assert [s["genre"] for s in stored] == ["classical", "silence", "classical"]
        assert stored[1]["start_s"] == pytest.approx(10.0, abs=1.0)
        assert stored[1]["end_s"] == pytest.approx(18.0, abs=1.0)
        for a, b in itertools.pairwise(stored):
            assert a["end_s"] == b["start_s"]
        async with serving(config, model) as (_, http):
            after = (await http.get(f"/streams/{stream_id}/timeline")).json()["segments"]
        assert after == stored

    run(scenario())


def test_a_plugged_in_speech_detector_shows_speech_live_and_stored(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    from stream_server.inference.loading import with_speech_detector
    from tests.helpers.speech import ToneSpeech, marker

    rate = tiny_model.preprocessing.sample_rate
    model = with_speech_detector(tiny_model, ToneSpeech(rate))
    song = music(4.0, rate=rate, channels=1)[:, 0]
    audio = np.concatenate([song, marker(4.0, rate, channels=1)[:, 0], song])

    async def scenario() -> None:
        async with serving(make_config(), model) as (server, http):
            async with ws(server, "/ws/updates") as sub:
                stream_id = await push_mono(server, audio, rate, "speech")
                messages = await collect_until_end(sub, stream_id)
            stored = (await http.get(f"/streams/{stream_id}/timeline")).json()["segments"]
        updates = [m for m in messages if m["type"] == "genre.update"]
        assert "speech" in {u["genre"] for u in updates}
        changes = [m for m in messages if m["type"] == "genre.change"]
        assert any(c["genre"] == "speech" for c in changes)
        speech = [s for s in stored if s["genre"] == "speech"]
        assert len(speech) == 1
        assert speech[0]["start_s"] <= 5.0 and speech[0]["end_s"] >= 7.0
        assert all(s["genre"] in tiny_model.labels for s in stored if s is not speech[0])

    run(scenario())
