"""A cluster's archive (:class:`~stream_server.cluster.store.ClusterStore`) on a real
``nats-server``: what one node writes, another reads; the same contract as the SQLite store
(an existing id refused, a shorter tail drops the old one's end, titles in order, pruning), and
the register of live streams."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from stream_server.cluster.store import ClusterStore
from stream_server.core.records import StreamRecord, TrackTitle
from stream_server.core.timeline import Segment
from stream_server.errors import StorageError
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import run
from tests.helpers.nats import nats_cluster


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with nats_cluster(tmp_path_factory.mktemp("nats"), 1) as (server,):
        yield server.spec.url


def _segment(start: float, genre: str) -> Segment:
    return Segment(start, start + 1.0, genre, 0.5, 2)


async def _two_nodes(url: str) -> tuple[Any, Any, ClusterStore, ClusterStore]:
    a = await nats.connect(servers=[url], connect_timeout=TIMEOUT_S)
    b = await nats.connect(servers=[url], connect_timeout=TIMEOUT_S)
    store_a, store_b = ClusterStore(a, replicas=0), ClusterStore(b, replicas=0)
    await store_a.open()
    await store_b.open()
    return a, b, store_a, store_b


def test_what_one_node_writes_another_reads(url: str) -> None:
    async def scenario() -> None:
        a, b, store_a, store_b = await _two_nodes(url)
        try:
            # the archive is called from a database thread, as the service calls it
            record = StreamRecord("s1", "one", "ws", "127.0.0.1", 100.0, None, 16000, 1, "s16le")
            await asyncio.to_thread(store_a.add_stream, record)
            with pytest.raises(StorageError, match="'s1' exists"):
                await asyncio.to_thread(store_b.add_stream, record)
            assert await asyncio.to_thread(store_b.get_stream, "s1") == record
            assert await asyncio.to_thread(store_b.get_stream, "nope") is None

            first = [_segment(0, "rock"), _segment(1, "jazz"), _segment(2, "rock")]
            await asyncio.to_thread(store_a.write_tail, "s1", 0, first)
            # written behind: the writer reads its own at once, the other node once written
            assert await asyncio.to_thread(store_a.timeline, "s1") == first
            assert await store_a.flush()
            assert await asyncio.to_thread(store_b.timeline, "s1") == first
            # a merged tail: shorter than the one stored, whose end goes
            merged = [Segment(1.0, 3.5, "jazz", 0.6, 4)]
            failed = await asyncio.to_thread(store_a.write_tails, [("s1", 1, merged)])
            assert failed == []
            assert await store_a.flush()
            assert await asyncio.to_thread(store_b.timeline, "s1") == [first[0], *merged]
            # tails queued before a write merge into one: the later replaces what it overlaps
            later = [_segment(1, "soul"), _segment(2, "funk")]
            await asyncio.to_thread(store_a.write_tails, [("s1", 1, [_segment(1, "x")])])
            await asyncio.to_thread(store_a.write_tails, [("s1", 2, [_segment(2, "funk")])])
            await asyncio.to_thread(store_a.write_tails, [("s1", 1, later[:1])])
            await asyncio.to_thread(store_a.write_tails, [("s1", 2, later[1:])])
            assert await store_a.flush()
            assert await asyncio.to_thread(store_b.timeline, "s1") == [first[0], *later]
            # a node that did not write the stream (a takeover) finds the stored length
            await asyncio.to_thread(store_b.write_tail, "s1", 0, [_segment(0, "pop")])
            assert await store_b.flush()
            assert await asyncio.to_thread(store_a.timeline, "s1") == [_segment(0, "pop")]
            assert await asyncio.to_thread(store_a.timeline, "nope") == []
            bad = await asyncio.to_thread(store_a.write_tails, [("s1", -1, merged)])
            assert bad == [("s1", "index must be >= 0, got -1")]

            titles = [TrackTitle(float(i), 200.0 + i, f"Artist - Song {i}") for i in range(12)]
            for title in titles:
                await asyncio.to_thread(store_a.add_title, "s1", title)
            assert await store_a.flush()
            assert await asyncio.to_thread(store_b.titles, "s1") == titles

            await asyncio.to_thread(store_a.end_stream, "s1", 150.0)
            await asyncio.to_thread(store_b.end_stream, "nope", 1.0)  # logged, not retried
            assert await store_a.flush() and await store_b.flush()
            ended = await asyncio.to_thread(store_b.get_stream, "s1")
            assert ended is not None and ended.ended_at == 150.0
            assert await asyncio.to_thread(store_b.get_stream, "nope") is None
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_listing_pruning_and_the_live_register(url: str) -> None:
    async def scenario() -> None:
        a, b, store_a, store_b = await _two_nodes(url)
        try:
            for i, ended in enumerate((10.0, None, 30.0)):
                record = StreamRecord(f"l{i}", f"n{i}", "url", "x", 1000.0 + i, ended)
                await asyncio.to_thread(store_a.add_stream, record)
                await asyncio.to_thread(store_a.write_tail, f"l{i}", 0, [_segment(0, "rock")])
                await asyncio.to_thread(store_a.add_title, f"l{i}", TrackTitle(0.0, 1.0, "A - B"))
            assert await store_a.flush()
            listed = await asyncio.to_thread(store_b.list_streams, 100)
            ours = [r.stream_id for r in listed if r.stream_id.startswith("l")]
            assert ours == ["l2", "l1", "l0"]  # newest first
            assert len(await asyncio.to_thread(store_b.list_streams, 1)) == 1
            with pytest.raises(ValueError, match="limit"):
                await asyncio.to_thread(store_b.list_streams, -1)

            # ended before 20: l0 only (l1 is live, l2 ended later)
            assert await asyncio.to_thread(store_b.prune, 20.0) == 1
            assert await asyncio.to_thread(store_a.get_stream, "l0") is None
            assert await asyncio.to_thread(store_a.timeline, "l0") == []
            assert await asyncio.to_thread(store_a.titles, "l0") == []
            assert await asyncio.to_thread(store_a.timeline, "l2") == [_segment(0, "rock")]
            assert await asyncio.to_thread(store_a.prune, 20.0) == 0  # a second node: none

            await store_a.put_live([{"stream_id": "l1", "state": "live", "genre": "rock"}])
            assert {"stream_id": "l1", "state": "live", "genre": "rock"} in await store_b.live()
            await store_a.forget_live("l1")
            assert all(s["stream_id"] != "l1" for s in await store_b.live())
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_it_is_not_called_from_its_own_loop_nor_once_closed(url: str) -> None:
    async def scenario() -> None:
        nc = await nats.connect(servers=[url], connect_timeout=TIMEOUT_S)
        try:
            store = ClusterStore(nc, replicas=0)
            with pytest.raises(StorageError, match="not open"):
                store.get_stream("x")
            await store.open()
            with pytest.raises(RuntimeError, match="called on its event loop"):
                store.get_stream("x")  # it would wait on the loop it blocks
            await asyncio.to_thread(store.close)
            with pytest.raises(StorageError, match="not open"):
                await asyncio.to_thread(store.get_stream, "x")
        finally:
            await nc.close()

    run(scenario())


def test_a_bucket_with_more_replicas_than_servers_is_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    from stream_server.errors import ClusterError

    async def scenario(server_url: str) -> None:
        nc = await nats.connect(servers=[server_url], connect_timeout=TIMEOUT_S)
        try:
            with pytest.raises(ClusterError, match="GENRECAST_STREAMS could not be made"):
                await ClusterStore(nc, replicas=3).open()
        finally:
            await nc.close()

    with nats_cluster(tmp_path, 1) as (server,):
        run(scenario(server.spec.url))
