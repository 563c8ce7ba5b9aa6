"""The engine process's side of ``serve --workers N`` over real socket pairs, without a model:
a worker that connects late (a restarted one) first gets the kept history, the same bytes and
seqs the others got, so a client resuming with ``since`` on it misses nothing."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace
from typing import Any

from stream_server.config import Config
from stream_server.messages import StreamEnded, dumps
from stream_server.serve.engine_host import EngineHost
from stream_server.serve.engine_link import publish_header
from stream_server.serve.wire import read_frame, write_frame
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import run

HISTORY = 3


class _FakeWorker:
    """The worker end of one link: frames written and read as an ingest worker would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def frame(self) -> tuple[dict[str, Any], bytes]:
        frame = await asyncio.wait_for(read_frame(self.reader), TIMEOUT_S)
        assert frame is not None, "the engine process closed the link"
        return frame

    def publish(self, stream_id: str) -> None:
        message = StreamEnded(
            type="stream.ended",
            seq=0,
            stream_id=stream_id,
            reason="stopped by the client",
            stream_time_s=1.0,
            wall_time=0.0,
            windows_computed=1,
            windows_skipped=0,
        )
        write_frame(self.writer, publish_header(message), dumps(message).encode())


async def _connect(host: EngineHost, index: int, tasks: list[asyncio.Task[None]]) -> _FakeWorker:
    ours, theirs = socket.socketpair()
    host_reader, host_writer = await asyncio.open_unix_connection(sock=ours)
    tasks.append(asyncio.create_task(host.serve(index, host_reader, host_writer)))
    reader, writer = await asyncio.open_unix_connection(sock=theirs)
    return _FakeWorker(reader, writer)


def test_a_worker_that_connects_late_gets_the_kept_history_first() -> None:
    async def scenario() -> None:
        config = Config()
        host = EngineHost(replace(config, updates=replace(config.updates, history_size=HISTORY)))
        tasks: list[asyncio.Task[None]] = []
        first = await _connect(host, 0, tasks)
        ids = [f"s{i}" for i in range(HISTORY + 2)]
        for stream_id in ids:
            first.publish(stream_id)
        seen = [await first.frame() for _ in ids]
        assert [h["seq"] for h, _ in seen] == list(range(1, len(ids) + 1))

        late = await _connect(host, 1, tasks)
        kept = [await late.frame() for _ in range(HISTORY)]
        assert kept == seen[-HISTORY:]  # the newest HISTORY, in order, byte for byte
        assert [json.loads(text)["stream_id"] for _, text in kept] == ids[-HISTORY:]
        first.publish("after")  # then it follows like every other worker
        header, text = await late.frame()
        assert header["seq"] == len(ids) + 1 and json.loads(text)["stream_id"] == "after"

        for worker in (first, late):
            worker.writer.close()
        await asyncio.gather(*tasks)
        assert not host.workers

    run(scenario())
