"""``genrecast serve --workers 2`` against ``genrecast serve``, both real processes on loopback:
the same pushed audio gives the same messages, and whichever worker a client lands on sees every
stream (updates, resume, listings, timelines, stops, metrics, limits)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from stream_server.inference.facts import ModelInfo
from stream_server.inference.model import DEFAULT_MODEL_DIR
from stream_server.media.decode import decode_mono
from stream_server.serve.workers import RESTART_MIN_S
from tests.helpers.audio import clips
from tests.helpers.cli import start_server, stop_server, write_config
from tests.helpers.constants import TIMEOUT_S

RATE = 16000
#: Seconds of each clip pushed.
SECONDS = 9.0
#: Stream names, one genre each.
GENRES = ("rock", "classical", "jazz", "metal")
#: Tolerance on probabilities and confidences between the two servers (float32 batches of
#: different composition round differently in the last bits).
ATOL = 1e-4


def _pcm(genre: str) -> bytes:
    (clip,) = clips(genre, 1)
    audio = decode_mono(str(clip), RATE)[: round(SECONDS * RATE)]
    return (np.clip(np.rint(audio * 32768), -32768, 32767)).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def pcm() -> dict[str, bytes]:
    return {genre: _pcm(genre) for genre in GENRES}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A one-process server and a two-worker server of the shipped model, each with its own
    database file."""
    root = tmp_path_factory.mktemp("workers")
    single = write_config(root / "one.toml", DEFAULT_MODEL_DIR, database=root / "one.db")
    multi = write_config(root / "two.toml", DEFAULT_MODEL_DIR, database=root / "two.db")
    one, one_url = start_server(single)
    try:
        two, two_url = start_server(multi, "--workers", "2")
        try:
            yield one_url, two_url
        finally:
            stop_server(two)
    finally:
        stop_server(one)


def _ws(url: str) -> str:
    return url.replace("http://", "ws://")


async def _health_by_worker(url: str, want: int) -> dict[int, dict[str, Any]]:
    """``/health`` of every worker: asked on fresh connections until ``want`` answered."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(200):
        async with httpx.AsyncClient(base_url=url) as http:  # a new connection each time
            body = (await http.get("/health")).json()
        seen[body["worker"]] = body
        if len(seen) == want:
            return seen
    raise AssertionError(f"only workers {sorted(seen)} answered /health")


def _age_s(pid: int) -> float:
    """Seconds since process ``pid`` started (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime", encoding="ascii") as f:
        uptime_s = float(f.read().split()[0])
    return uptime_s - started_ticks / os.sysconf("SC_CLK_TCK")


#: The ``seq`` of each stream's ``stream.started``, by stream id.
_STARTED_SEQ: dict[str, int] = {}


async def _open(url: str, name: str) -> tuple[ClientConnection, str]:
    conn = await connect(_ws(url) + "/ws/ingest", compression=None, max_size=None)
    start = {"type": "start", "name": name, "sample_rate": RATE, "channels": 1}
    await conn.send(json.dumps(start | {"format": "s16le"}))
    reply = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT_S))
    assert reply["type"] == "stream.started", reply
    _STARTED_SEQ[reply["stream_id"]] = reply["seq"]
    return conn, reply["stream_id"]


async def _push(conn: ClientConnection, pcm: bytes) -> dict[str, Any]:
    """Send ``pcm`` in 0.1 s frames at about real time, then ``stop``; the ``stream.ended``."""
    step = RATE // 10 * 2  # bytes
    for i in range(0, len(pcm), step):
        await conn.send(pcm[i : i + step])
        await asyncio.sleep(0.1)
    await conn.send(json.dumps({"type": "stop"}))
    while True:
        reply = json.loads(await asyncio.wait_for(conn.recv(), 3 * TIMEOUT_S))
        if reply["type"] == "stream.ended":
            await conn.close()
            return dict(reply)


async def _collect(sub: ClientConnection, ids: set[str]) -> list[dict[str, Any]]:
    """Messages of ``ids`` until each has ended."""
    ended: set[str] = set()
    out: list[dict[str, Any]] = []
    while ended != ids:
        message = json.loads(await asyncio.wait_for(sub.recv(), 3 * TIMEOUT_S))
        if message.get("stream_id") in ids:
            out.append(message)
            if message["type"] == "stream.ended":
                ended.add(message["stream_id"])
    return out


async def _run(url: str, pcm: dict[str, bytes], workers: int) -> dict[str, Any]:
    """Push every clip as its own stream while a subscriber listens; what was seen.

    With ``workers``, streams are opened until every worker holds at least one (a new
    connection lands on whichever worker accepts it first), and the extra streams are pushed
    too, under the same names."""
    async with connect(_ws(url) + "/ws/updates", compression=None, max_size=None) as sub:
        opened: list[tuple[str, ClientConnection, str]] = []
        for genre in GENRES:
            conn, stream_id = await _open(url, genre)
            opened.append((genre, conn, stream_id))
        holders: dict[int, int] = {}
        if workers > 1:
            for attempt in range(20):
                health = await _health_by_worker(url, workers)
                holders = {w: body["streams"] for w, body in health.items()}
                if all(holders.values()):
                    break
                genre = GENRES[attempt % len(GENRES)]
                conn, stream_id = await _open(url, genre)
                opened.append((genre, conn, stream_id))
            assert all(holders.values()), holders
            assert sum(holders.values()) == len(opened), holders
        ids = {stream_id for _, _, stream_id in opened}
        async with httpx.AsyncClient(base_url=url) as http:
            listed = {s["stream_id"] for s in (await http.get("/streams")).json()["streams"]}
            assert ids <= listed
        collecting = asyncio.create_task(_collect(sub, ids))
        ended = await asyncio.gather(*(_push(conn, pcm[genre]) for genre, conn, _ in opened))
        messages = await collecting
    names = {stream_id: genre for genre, _, stream_id in opened}
    return {"messages": messages, "ended": ended, "names": names, "holders": holders}


def _by_stream(run: dict[str, Any]) -> dict[str, list[list[dict[str, Any]]]]:
    """Each name's streams, each as its list of messages."""
    streams: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for message in run["messages"]:
        stream_id = message["stream_id"]
        streams.setdefault(run["names"][stream_id], {}).setdefault(stream_id, []).append(message)
    return {name: list(by_id.values()) for name, by_id in streams.items()}


#: Fields that differ between runs by nature: times of day, latencies, ids and sequence numbers.
_VOLATILE = {"seq", "stream_id", "wall_time", "latency_ms"}


def _same(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) - _VOLATILE == set(b) - _VOLATILE, where
        for key in set(a) - _VOLATILE:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: {a} != {b}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, abs_tol=ATOL), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_two_workers_send_the_messages_one_process_sends(
    servers: tuple[str, str], pcm: dict[str, bytes]
) -> None:
    one_url, two_url = servers

    async def both() -> tuple[dict[str, Any], dict[str, Any]]:
        return await asyncio.gather(_run(one_url, pcm, 1), _run(two_url, pcm, 2))

    one, two = asyncio.run(asyncio.wait_for(both(), 12 * TIMEOUT_S))
    for run in (one, two):
        assert all(e["windows_skipped"] == 0 for e in run["ended"]), run["ended"]
        seqs = [m["seq"] for m in run["messages"] if "seq" in m]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, once
    reference = {name: streams[0] for name, streams in _by_stream(one).items()}
    compared = 0
    for name, streams in _by_stream(two).items():
        for messages in streams:  # every stream of a name, on whichever worker it ran
            assert [m["type"] for m in messages] == [m["type"] for m in reference[name]], name
            _same(messages, reference[name], name)
            compared += 1
    assert compared >= len(GENRES)
    updates = [m for m in two["messages"] if m["type"] == "genre.update"]
    assert len(updates) >= len(GENRES) * 5


async def _spread(url: str, workers: int, first: int) -> list[tuple[ClientConnection, str]]:
    """At least ``first`` streams, more until every worker holds one."""
    opened = [await _open(url, f"s{i}") for i in range(first)]
    for _ in range(20):
        health = await _health_by_worker(url, workers)
        if all(body["streams"] for body in health.values()):
            return opened
        opened.append(await _open(url, f"s{len(opened)}"))
    raise AssertionError(f"streams never reached every worker: {health}")


def test_any_worker_resumes_lists_and_stops_every_stream(
    servers: tuple[str, str], pcm: dict[str, bytes]
) -> None:
    _, url = servers

    async def scenario() -> None:
        conns = await _spread(url, 2, 4)
        ids = [stream_id for _, stream_id in conns]
        step = RATE // 10 * 2  # bytes
        for i in range(0, round(6.0 * RATE) * 2, step):  # 6 s of audio, all at once
            for conn, _ in conns:
                await conn.send(pcm["rock"][i : i + step])
        await asyncio.sleep(1.0)
        # every worker lists every stream, and returns the same timeline for each
        for _ in range(6):
            async with httpx.AsyncClient(base_url=url) as http:
                listed = (await http.get("/streams")).json()["streams"]
                live = {s["stream_id"]: s for s in listed if s["state"] == "live"}
                assert set(ids) <= set(live), (ids, live)
                timelines = [
                    (await http.get(f"/streams/{stream_id}/timeline")).json()["segments"]
                    for stream_id in ids
                ]
                assert all(timelines), timelines
        # a stream is stopped from whichever worker the DELETE lands on
        stopped = ids[: len(ids) // 2]
        for stream_id in stopped:
            async with httpx.AsyncClient(base_url=url) as http:
                assert (await http.delete(f"/streams/{stream_id}")).status_code == 200
        # metrics sum every worker's
        async with httpx.AsyncClient(base_url=url) as http:
            text = (await http.get("/metrics")).text
        active = [line for line in text.splitlines() if line.startswith("genrecast_active_")]
        assert active == [f"genrecast_active_streams {len(ids) - len(stopped)}.0"], active
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if not sample.labels
        }
        # each batch counted once, by the engine process, though it mixed both workers' windows
        computed = samples["genrecast_windows_computed_total"]
        assert computed > 0 and samples["genrecast_batch_size_sum"] == computed, samples
        # every worker replays the same history from the start
        histories = set()
        for _ in range(6):
            async with connect(_ws(url) + "/ws/updates?since=0", compression=None) as sub:
                texts = []
                while True:
                    try:
                        texts.append(await asyncio.wait_for(sub.recv(), 0.5))
                    except TimeoutError:
                        break
                histories.add(tuple(t for t in texts if any(i in t for i in ids)))
        assert len(histories) == 1, "workers replay different histories"
        (history,) = histories
        ended = [json.loads(t) for t in history if '"stream.ended"' in t]
        assert {m["stream_id"] for m in ended} == set(stopped)
        for conn, _ in conns:
            await conn.close()

    asyncio.run(asyncio.wait_for(scenario(), 6 * TIMEOUT_S))


def test_the_stream_limits_count_every_workers_streams(servers: tuple[str, str]) -> None:
    _, url = servers
    per_client = 16  # server.max_streams_per_client's default; every test client is 127.0.0.1

    async def scenario() -> None:
        conns = await _spread(url, 2, per_client)
        assert len(conns) == per_client, "the limit let more streams in"
        for _ in range(4):  # refused on whichever worker the connection lands
            async with connect(_ws(url) + "/ws/ingest", compression=None) as conn:
                start = {"type": "start", "sample_rate": RATE, "channels": 1, "format": "s16le"}
                await conn.send(json.dumps(start))
                reply = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT_S))
                assert reply["type"] == "error" and reply["code"] == "busy", reply
        await conns[0][0].close()
        for _ in range(50):  # the count follows the stream's end
            try:
                conn, _ = await _open(url, "again")
            except AssertionError:
                await asyncio.sleep(0.1)
                continue
            await conn.close()
            break
        else:
            raise AssertionError("a stream was refused after another ended")
        for conn, _ in conns[1:]:
            await conn.close()

    asyncio.run(asyncio.wait_for(scenario(), 6 * TIMEOUT_S))


def test_a_killed_worker_is_started_again_and_the_other_keeps_serving(
    servers: tuple[str, str], pcm: dict[str, bytes]
) -> None:
    _, url = servers

    async def scenario() -> None:
        conns = await _spread(url, 2, 2)
        health = await _health_by_worker(url, 2)
        victim = health[0]["pid"]
        # a worker that stops younger than RESTART_MIN_S is not started again (a crash loop)
        await asyncio.sleep(max(0.0, RESTART_MIN_S + 0.5 - _age_s(victim)))
        os.kill(victim, signal.SIGKILL)
        # the streams of the killed worker are cut, the other's go on: a stream is alive when
        # its server answers a ping sent after all of its audio (a killed process answers
        # nothing; sends alone can succeed into a socket whose process is still being torn down)
        alive, cut = [], []
        for conn, stream_id in conns:
            try:
                for i in range(0, round(6.0 * RATE) * 2, RATE // 5):
                    await conn.send(pcm["jazz"][i : i + RATE // 5])
                    await asyncio.sleep(0.01)
                await asyncio.wait_for(await conn.ping(), TIMEOUT_S)
                alive.append(stream_id)
            except ConnectionClosed:
                cut.append(stream_id)
        assert alive and cut, (alive, cut)
        # a subscriber on the surviving worker, from before these streams started
        since = min(_STARTED_SEQ[stream_id] for _, stream_id in conns) - 1
        async with connect(_ws(url) + f"/ws/updates?since={since}", compression=None) as sub:
            updated: set[str] = set()
            ended: dict[str, str] = {}
            while updated != set(alive) or set(ended) != set(cut):
                try:
                    received = await asyncio.wait_for(sub.recv(), 3 * TIMEOUT_S)
                except TimeoutError:
                    raise AssertionError(
                        f"alive {alive}, updated {sorted(updated)}; cut {cut}, ended {ended}"
                    ) from None
                message = json.loads(received)
                if message["type"] == "genre.update":
                    updated.add(message["stream_id"])
                elif message["type"] == "stream.ended":
                    ended[message["stream_id"]] = message["reason"]
            assert set(ended.values()) == {"its worker process stopped"}, ended
        restarted = False
        for _ in range(300):  # started again, under the same index
            try:
                health = await _health_by_worker(url, 2)
            except AssertionError:  # not serving yet
                continue
            if health[0]["pid"] != victim:
                restarted = True
                break
            await asyncio.sleep(0.1)
        assert restarted
        # a resume on any worker, the restarted one included, replays the ends of the cut streams
        for _ in range(6):  # fresh connections, spread over the workers by the kernel
            async with connect(_ws(url) + f"/ws/updates?since={since}", compression=None) as sub:
                missing = set(cut)
                while missing:
                    message = json.loads(await asyncio.wait_for(sub.recv(), TIMEOUT_S))
                    if message["type"] == "stream.ended":
                        missing.discard(message["stream_id"])
        async with httpx.AsyncClient(base_url=url) as http:  # the store ended the cut streams
            listed = {s["stream_id"]: s for s in (await http.get("/streams")).json()["streams"]}
        assert all(listed[stream_id]["ended_at"] is not None for stream_id in cut)
        for stream_id in cut:  # with why (kept with the record, not read back from a timeline)
            assert listed[stream_id]["reason"] == "its worker process stopped", listed[stream_id]
            assert listed[stream_id]["summary"] is not None, listed[stream_id]
        for conn, _ in conns:
            await conn.close()

    asyncio.run(asyncio.wait_for(scenario(), 12 * TIMEOUT_S))


def test_an_upload_is_classified_alike_by_one_process_and_by_any_worker(
    servers: tuple[str, str],
) -> None:
    (clip,) = clips("blues", 1)
    body = clip.read_bytes()

    def classify(url: str) -> dict[str, Any]:
        with httpx.Client(base_url=url, timeout=6 * TIMEOUT_S) as http:  # a new connection
            reply = http.post("/classify", files={"file": (clip.name, body, "audio/ogg")})
        assert reply.status_code == 200, reply.text
        result: dict[str, Any] = reply.json()
        for volatile in ("processing_ms", "cached"):
            result.pop(volatile)
        return result

    one_url, two_url = servers
    reference = classify(one_url)
    assert reference["windows"]
    for _ in range(3):
        _same(classify(two_url), reference, "upload")


def test_an_ingest_worker_imports_no_torch() -> None:
    """A worker holds no weights: the half a gigabyte torch takes per process stays in the
    engine process (the model's description is all a worker needs)."""
    code = (
        "import pickle, sys\n"
        "import stream_server.serve.ingest_worker\n"
        "from stream_server.inference.facts import ModelInfo\n"
        "info = pickle.loads(sys.stdin.buffer.read())\n"
        "assert isinstance(info, ModelInfo) and info.labels\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    from stream_server.inference.model import resolve_model

    info = pickle.dumps(ModelInfo.of(resolve_model(str(DEFAULT_MODEL_DIR))))
    done = subprocess.run(
        [sys.executable, "-c", code], input=info, capture_output=True, timeout=60, check=True
    )
    assert done.stdout.decode().strip() == "[]", done.stdout
