"""A cluster's archive keeps how a stream ended and what it was (its
:class:`~stream_server.core.records.StreamOutcome`, with its summary) with its record, on a real
``nats-server``: what one node ends, another lists without reading its timeline."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats

from stream_server.cluster.store import ClusterStore
from stream_server.core.records import StreamOutcome, StreamRecord
from stream_server.core.summary import summarize
from stream_server.core.timeline import Segment
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import run
from tests.helpers.nats import nats_cluster


def test_an_outcome_written_by_one_node_is_read_by_another(tmp_path: Path) -> None:
    segments = [Segment(0.0, 30.0, "jazz", 0.8, 61), Segment(30.0, 40.0, "rock", 0.6, 21)]
    outcome = StreamOutcome(
        state="failed",
        reason="HTTP 404 Not Found from http://radio.example/live",
        summary=summarize(segments).to_dict(),
        stream_time_s=40.0,
        windows_computed=82,
        windows_skipped=0,
        genre="rock",
        confidence=0.6,
        reconnects=3,
        last_error="HTTP 404 Not Found from http://radio.example/live",
        last_error_at=1_700_000_100.0,
    )

    async def scenario(url: str) -> None:
        a = await nats.connect(servers=[url], connect_timeout=TIMEOUT_S)
        b = await nats.connect(servers=[url], connect_timeout=TIMEOUT_S)
        try:
            store_a, store_b = ClusterStore(a, replicas=0), ClusterStore(b, replicas=0)
            await store_a.open()
            await store_b.open()
            record = StreamRecord("s1", "fm", "url", "http://radio.example/live", 100.0)
            await asyncio.to_thread(store_a.add_stream, record)
            await asyncio.to_thread(store_a.end_stream, "s1", 150.0, outcome)
            assert await store_a.flush()
            (listed,) = await asyncio.to_thread(store_b.list_streams)
            assert listed.ended_at == 150.0 and listed.outcome == outcome
            assert listed.outcome.summary["genre"] == "jazz"
            # ended again without one (a second end): the outcome kept stays
            await asyncio.to_thread(store_b.end_stream, "s1", 160.0)
            assert await store_b.flush()
            again = await asyncio.to_thread(store_a.get_stream, "s1")
            assert again is not None and again.ended_at == 160.0 and again.outcome == outcome
            await asyncio.to_thread(store_a.close)
            await asyncio.to_thread(store_b.close)
        finally:
            await a.close()
            await b.close()

    with nats_cluster(tmp_path / "nats", 1) as (server,):
        run(scenario(server.spec.url))
