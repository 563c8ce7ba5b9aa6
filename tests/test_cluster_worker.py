"""Inference workers of a cluster (``genrecast worker --cluster``) as real processes on a real
``nats-server``, driven by a node's engine (:class:`~stream_server.cluster.engine.ClusterEngine`):
windows scored as the one-process engine scores them, spread over the workers, and a ``kill -9``
of one worker mid-stream costs each stream at most one window."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from ring_buffer.buffer import to_pcm16
from stream_server.cluster.engine import ClusterEngine
from stream_server.cluster.protocol import pick_worker
from stream_server.config import load_config
from stream_server.core.windows import WindowJob, WindowResult
from stream_server.inference.facts import session_params
from stream_server.inference.model import DEFAULT_MODEL_DIR
from stream_server.media.decode import decode_mono
from tests.helpers.audio import clips
from tests.helpers.cli import start_server, stop_server, write_config
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import run
from tests.helpers.nats import Workers, follow, nats_cluster, start_worker, stop_workers

#: Tolerance between scores, float32 on both sides: batches of other make-ups (a worker's hold
#: only its streams) round the last bits apart, and a stream's first window runs as a whole.
ATOL = 5e-4


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_config(tmp_path_factory.mktemp("cluster") / "c.toml", DEFAULT_MODEL_DIR)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("[engine]\n", "[engine]\nhalf_precision = false\n"), "utf-8")
    return path


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, config_path: Path
) -> Iterator[tuple[str, Workers]]:
    with nats_cluster(tmp_path_factory.mktemp("nats"), 1) as (server,):
        workers = dict(start_worker(config_path, server.spec.url) for _ in range(2))
        try:
            yield server.spec.url, workers
        finally:
            stop_workers(workers)


class _Node:
    """A node's engine on the test's loop, recording what comes back."""

    def __init__(self, nc: Any, labels: int, timeout_s: float) -> None:
        self.results: dict[str, list[WindowResult]] = defaultdict(list)
        self.lost: dict[str, list[WindowJob]] = defaultdict(list)
        self.errors: list[str] = []
        self.engine = ClusterEngine(
            nc,
            labels=labels,
            max_batch=16,
            timeout_s=timeout_s,
            on_results=lambda rs: [self.results[r.job.stream_id].append(r) for r in rs],
            on_error=lambda jobs, exc: self.errors.append(str(exc)),
            on_replaced=lambda job: self.lost[job.stream_id].append(job),
        )

    def submit(self, job: WindowJob) -> None:
        """As a session submits: a window it replaces at once is skipped too."""
        replaced = self.engine.submit(job)
        if replaced is not None:
            self.lost[replaced.stream_id].append(replaced)


@pytest.fixture(scope="module")
def local(config_path: Path) -> Any:
    """The configured model and a runner of it in this process: the reference."""
    from stream_server.inference.loading import configured_runner, load_configured_model

    config = load_config(config_path)
    model = load_configured_model(config)
    return config, model, configured_runner(config, model)


def _jobs(audio: np.ndarray, stream_id: str, window: int, hop: int) -> list[WindowJob]:
    """The stream's windows one hop apart, as its session makes them."""
    return [
        WindowJob(stream_id, audio[end - window : end], end, time.monotonic(), since=0)
        for end in range(window, len(audio) + 1, hop)
    ]


def _streams(local: Any, seconds: float) -> dict[str, list[WindowJob]]:
    config, model, _ = local
    params = session_params(config, model)
    rate, window, hop = params.model_rate, params.window_samples, params.hop_samples
    out = {}
    for genre in ("rock", "jazz", "classical"):
        audio = decode_mono(str(clips(genre, 1)[0]), rate)[: round(seconds * rate)]
        out[genre] = _jobs(np.asarray(audio, dtype=np.float32), genre, window, hop)
    return out


async def _connect(url: str) -> Any:
    import nats

    return await nats.connect(servers=[url], connect_timeout=TIMEOUT_S)


def test_every_window_is_scored_once_in_order_and_as_the_model_scores_it(
    cluster: tuple[str, Workers], local: Any
) -> None:
    url, _ = cluster
    _, model, runner = local
    streams = _streams(local, 12.0)

    async def scenario() -> _Node:
        nc = await _connect(url)
        node = _Node(nc, len(model.labels), timeout_s=TIMEOUT_S)
        await node.engine.open()
        for _ in range(50):  # both workers heard of
            if len(node.engine.workers) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(node.engine.workers) == 2
        for step in range(max(len(jobs) for jobs in streams.values())):
            for jobs in streams.values():  # every stream's next window at once
                if step < len(jobs):
                    node.submit(jobs[step])
            while node.engine.in_flight:  # noqa: ASYNC110 - one window per stream at a time
                await asyncio.sleep(0.005)
        shot = np.stack([job.window for job in streams["jazz"][:3]])
        oneshot = await asyncio.wrap_future(node.engine.run_windows(shot))
        node.results["oneshot"] = [
            WindowResult(job, oneshot.probs[i], 0, 0.0) for i, job in enumerate(streams["jazz"][:3])
        ]
        await node.engine.close()
        await nc.close()
        return node

    node = run(scenario())
    assert not node.errors and not node.lost
    # The reference: this process's runner on the same windows, step by step. A stream's
    # windows all go to one worker, whose stream table so sees them all, as this one does.
    want: dict[str, list[np.ndarray]] = defaultdict(list)
    for step in range(max(len(jobs) for jobs in streams.values())):
        batch = [jobs[step] for jobs in streams.values() if step < len(jobs)]
        scores = runner.score(np.stack([job.window for job in batch]), batch)
        for job, probs in zip(batch, scores.probs, strict=True):
            want[job.stream_id].append(probs)
    for name, jobs in streams.items():  # every window scored once, in order, as here
        got = node.results[name]
        assert [r.job.end_sample for r in got] == [job.end_sample for job in jobs]
        np.testing.assert_allclose(np.stack([r.probs for r in got]), want[name], atol=ATOL)
    want = runner.score(np.stack([job.window for job in streams["jazz"][:3]])).probs
    np.testing.assert_allclose(
        np.stack([r.probs for r in node.results["oneshot"]]), want, atol=ATOL
    )


async def _push_and_collect(base: str, pcm: bytes, rate: int) -> list[dict[str, Any]]:
    """One stream of ``pcm`` pushed at twice real time to ``base``; its messages to its end."""
    ws = base.replace("http://", "ws://")
    async with connect(ws + "/ws/ingest", compression=None, max_size=None) as conn:
        start = {"type": "start", "name": "n", "sample_rate": rate, "channels": 1}
        await conn.send(json.dumps(start | {"format": "s16le"}))
        started = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT_S))
        assert started["type"] == "stream.started", started
        since = started["seq"]
        async with connect(ws + f"/ws/updates?since={since - 1}", compression=None) as sub:
            step = rate // 10 * 2  # bytes of 0.1 s
            for i in range(0, len(pcm), step):
                await conn.send(pcm[i : i + step])
                await asyncio.sleep(0.05)
            await conn.send(json.dumps({"type": "stop"}))
            out: list[dict[str, Any]] = []
            while not out or out[-1]["type"] != "stream.ended":
                message = json.loads(await asyncio.wait_for(sub.recv(), 3 * TIMEOUT_S))
                if message.get("stream_id") == started["stream_id"]:
                    out.append(message)
    return out


def test_a_node_serves_streams_scored_by_the_workers_as_one_process_does(
    cluster: tuple[str, Workers], config_path: Path, local: Any
) -> None:
    url, _ = cluster
    config, _, _ = local
    rate = session_params(config, local[1]).model_rate
    audio = decode_mono(str(clips("metal", 1)[0]), rate)[: 8 * rate]
    pcm = to_pcm16(audio).astype("<i2").tobytes()
    node, node_url = start_server(config_path, "--cluster", url)
    one, one_url = start_server(config_path)
    try:

        async def both() -> list[list[dict[str, Any]]]:
            async with httpx.AsyncClient(base_url=node_url) as http:
                ready = (await http.get("/ready")).json()
            assert ready["device"].startswith("cluster"), ready
            return list(
                await asyncio.gather(
                    _push_and_collect(node_url, pcm, rate), _push_and_collect(one_url, pcm, rate)
                )
            )

        on_node, alone = run(both())
    finally:
        stop_server(node)
        stop_server(one)
    ended = on_node[-1]
    assert ended["type"] == "stream.ended" and ended["windows_computed"] >= 5, ended
    by_time = {m["stream_time_s"]: m for m in alone if m["type"] == "genre.update"}
    compared = 0
    for message in on_node:
        if message["type"] == "genre.update" and message["stream_time_s"] in by_time:
            twin = by_time[message["stream_time_s"]]
            got = {p["label"]: p["prob"] for p in message["top"]}
            want = {p["label"]: p["prob"] for p in twin["top"]}
            assert got.keys() == want.keys()
            assert all(abs(got[k] - want[k]) <= ATOL for k in got), (got, want)
            compared += 1
    assert compared >= 5


async def _listed(base: str, ids: set[str], state: str) -> list[dict[str, Any]]:
    """``GET /streams`` on ``base`` until it lists every stream of ``ids`` in ``state``."""
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(round(TIMEOUT_S / 0.1)):
            answer = (await http.get("/streams")).json()["streams"]
            listed = [s for s in answer if s["stream_id"] in ids]
            if len(listed) == len(ids) and all(s["state"] == state for s in listed):
                return listed
            await asyncio.sleep(0.1)
    raise AssertionError(f"{base} never listed {ids} as {state}: {listed}")


async def _timelines(a: str, b: str, stream_id: str) -> tuple[Any, Any]:
    """A stream's timeline on nodes ``a`` and ``b`` once they agree (``a`` stores its end a
    moment after its ``stream.ended``), else as they last were."""
    path = f"/streams/{stream_id}/timeline"
    async with httpx.AsyncClient() as http:
        for _ in range(round(TIMEOUT_S / 0.1)):
            got = [(await http.get(base + path)).json() for base in (a, b)]
            if got[0] == got[1]:
                break
            await asyncio.sleep(0.1)
    return got[0], got[1]


def test_updates_pushed_to_one_node_reach_a_subscriber_on_another_once_in_order(
    cluster: tuple[str, Workers], config_path: Path, local: Any
) -> None:
    url, _ = cluster
    config, model, _ = local
    rate = session_params(config, model).model_rate
    pcm = {}
    for genre in ("blues", "reggae"):
        audio = decode_mono(str(clips(genre, 1)[0]), rate)[: 7 * rate]
        pcm[genre] = to_pcm16(audio).astype("<i2").tobytes()
    # B's hub keeps 4 messages: its resumes reach further back through the cluster's stream
    small = config_path.with_name("small-history.toml")
    small.write_text(config_path.read_text("utf-8") + "\n[updates]\nhistory_size = 4\n", "utf-8")
    a, a_url = start_server(config_path, "--cluster", url)
    b, b_url = start_server(small, "--cluster", url)

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        ws_a, ws_b = (u.replace("http://", "ws://") for u in (a_url, b_url))
        sub_b = await connect(ws_b + "/ws/updates", compression=None)
        sub_a = await connect(ws_a + "/ws/updates", compression=None)
        conns, ids = [], set()
        for genre in pcm:  # both streams pushed to node A
            conn = await connect(ws_a + "/ws/ingest", compression=None)
            start = {"type": "start", "name": genre, "sample_rate": rate, "channels": 1}
            await conn.send(json.dumps(start | {"format": "s16le"}))
            started = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT_S))
            conns.append(conn)
            ids.add(started["stream_id"])
        step = rate // 10 * 2

        async def push() -> None:
            for i in range(0, len(pcm["blues"]), step):
                for conn, genre in zip(conns, pcm, strict=True):
                    await conn.send(pcm[genre][i : i + step])
                await asyncio.sleep(0.05)
            for conn in conns:
                await conn.send(json.dumps({"type": "stop"}))

        pushing = asyncio.create_task(push())
        listed_live = asyncio.create_task(_listed(b_url, ids, "live"))
        on_a: list[dict[str, Any]] = []
        following_a = asyncio.create_task(follow(sub_a, ids, on_a))
        on_b: list[dict[str, Any]] = []
        # B's subscriber drops out after a while and resumes from the last seq it saw
        while sum(m["type"] == "genre.update" for m in on_b) < 4:
            on_b.append(json.loads(await asyncio.wait_for(sub_b.recv(), 3 * TIMEOUT_S)))
        await sub_b.close()
        await asyncio.sleep(1.0)  # updates go on meanwhile
        since = on_b[-1]["seq"]
        async with connect(ws_b + f"/ws/updates?since={since}", compression=None) as again:
            await follow(again, ids, on_b)
        await pushing
        await following_a
        await sub_a.close()
        for conn in conns:
            await conn.close()
        # node B listed A's streams while they were live, and lists them ended now
        assert all({"stream_time_s", "windows_computed"} <= set(s) for s in await listed_live)
        await _listed(b_url, ids, "ended")
        for stream_id in ids:  # the timeline A wrote, read on B
            on_node_a, on_node_b = await _timelines(a_url, b_url, stream_id)
            assert on_node_b == on_node_a and on_node_a["segments"], (on_node_a, on_node_b)
        # a late subscriber on B from before the first message: all of it, no resume_gap
        late: list[dict[str, Any]] = []
        since = on_a[0]["seq"] - 1
        async with connect(ws_b + f"/ws/updates?since={since}", compression=None) as third:
            await follow(third, ids, late)
        assert [m for m in late if m["seq"] >= on_a[0]["seq"]] == on_a
        return on_a, on_b

    try:
        on_a, on_b = run(scenario())
    finally:
        stop_server(a)
        stop_server(b)
    seqs = [m["seq"] for m in on_b]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, once
    first = on_a[0]["seq"]
    assert [m for m in on_b if m["seq"] >= first] == on_a  # the same messages as on A
    updates = [m for m in on_a if m["type"] == "genre.update"]
    assert len(updates) >= 10 and {m["stream_id"] for m in updates} == {
        m["stream_id"] for m in on_a if m["type"] == "stream.started"
    }


def test_a_killed_worker_costs_each_stream_at_most_one_window(
    cluster: tuple[str, Workers], local: Any
) -> None:
    url, workers = cluster
    _, model, _ = local
    streams = _streams(local, 20.0)
    timeout_s = 1.0
    # the victim: the worker holding rock (and whichever others hash to it)
    victim = pick_worker("rock", workers)
    assert victim is not None
    held = [name for name in streams if pick_worker(name, workers) == victim]

    async def scenario() -> tuple[_Node, float, dict[str, float]]:
        nc = await _connect(url)
        node = _Node(nc, len(model.labels), timeout_s=timeout_s)
        await node.engine.open()
        assert sorted(node.engine.workers) == sorted(workers)
        killed_at = 0.0
        first_after: dict[str, float] = {}
        steps = max(len(jobs) for jobs in streams.values())
        for step in range(steps):
            if step == steps // 3:
                os.kill(workers[victim].pid, signal.SIGKILL)
                killed_at = time.monotonic()
            for jobs in streams.values():
                if step < len(jobs):
                    node.submit(jobs[step])
            await asyncio.sleep(0.1)  # faster than real time: a hop every 0.1 s
            for name, results in node.results.items():
                mark = streams[name][steps // 3].end_sample  # the first window after the kill
                if killed_at and name not in first_after and results[-1].job.end_sample >= mark:
                    first_after[name] = time.monotonic() - killed_at
        for _ in range(100):  # the last windows come back
            if not node.engine.in_flight:
                break
            await asyncio.sleep(0.05)
        await node.engine.close()
        await nc.close()
        return node, killed_at, first_after

    node, _, first_after = run(scenario())
    workers[victim].wait()
    assert not node.errors
    # at most one window per stream lost with the killed worker (the others a stream skipped
    # were replaced by its newer ones, as on one machine)
    assert node.engine.timed_out <= len(held)
    for name, jobs in streams.items():
        done = {r.job.end_sample for r in node.results[name]}
        lost = {job.end_sample for job in node.lost[name]}
        assert jobs[-1].end_sample in done, name  # it went on to its end
        assert done | lost == {job.end_sample for job in jobs} and not done & lost, name
        assert first_after[name] <= timeout_s + 1.0, first_after  # updating again soon
