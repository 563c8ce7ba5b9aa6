"""``genrecast serve --workers N``: one engine process and N ingest worker processes.

::

    clients ──► listening socket (bound once, shared by the workers: the kernel hands each new
                connection to one of them)
                 ├─► worker 0: HTTP, WebSockets, WebRTC, pulls, decoding, windows, smoothing
                 ├─► worker 1:   "                                                        "
                 └─► ...        │ link (socketpair): int16 windows, scores, messages, questions
                                ▼
                engine process: the model and the one engine (batches across every worker's
                streams), the message ``seq``, the stream limits

The engine process binds the socket (so a busy port fails before anything starts, and port 0
picks one port for all), closes the streams a previous run left open in the store, starts the
workers (``spawn``: each imports afresh) and its engine, and says ``genrecast ready on ...`` once
every worker serves. SIGINT or SIGTERM stops the workers first (each drains its streams through
the engine, as a one-process server does), then the engine. A worker that dies is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import socket
import time
from multiprocessing.process import BaseProcess

from stream_server.config import Config
from stream_server.inference.facts import ModelInfo
from stream_server.inference.model import LoadedModel
from stream_server.serve.engine_host import EngineHost
from stream_server.serve.ingest_worker import run_worker
from stream_server.serve.listen import bind
from stream_server.serve.server import checked_tokens
from stream_server.serve.store import TimelineStore

log = logging.getLogger(__name__)

__all__ = ["serve_workers"]

#: Seconds a stopping worker may take to drain before it is killed.
STOP_TIMEOUT_S = 20.0
#: A worker that dies within this many seconds of its start is not started again.
RESTART_MIN_S = 10.0


def serve_workers(config: Config, model: LoadedModel, sock: socket.socket | None = None) -> None:
    """Serve ``config`` with ``server.workers`` ingest processes and this one as the engine
    process, until SIGINT or SIGTERM. ``sock``: the listening socket, bound already
    (:func:`~stream_server.serve.listen.listen_on`, before the model loaded); ``None``: bound
    here. It is closed at the end either way.

    Raises:
        ConfigError: as :func:`~stream_server.serve.server.serve` (checked before anything
            starts).
        OSError: the address cannot be bound.
    """
    checked_tokens(config)
    listen = sock if sock is not None else bind(config.server.host, config.server.port)
    try:
        _close_orphans(config)
        asyncio.run(_Supervisor(config, model, listen, config.server.workers).run())
    finally:
        listen.close()


def _close_orphans(config: Config) -> None:
    """End the streams a previous run left open (the workers share the store and skip this)."""
    store = TimelineStore(config.storage.database)
    try:
        store.end_open_streams(time.time())
    finally:
        store.close()


class _Supervisor:
    """The engine process: starts, restarts and stops the workers around the engine host."""

    def __init__(
        self, config: Config, model: LoadedModel, listen: socket.socket, workers: int
    ) -> None:
        self.config = config
        self.model = model
        self.listen = listen
        self.count = workers
        self.stopping = False
        self.procs: dict[int, BaseProcess] = {}
        self.links: dict[int, asyncio.Task[None]] = {}
        self._ctx = multiprocessing.get_context("spawn")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.host = EngineHost(self.config)
        self.host.expect(self.count)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop)
        for index in range(self.count):
            await self._start(index)
        await asyncio.to_thread(self.host.load, self.model)
        ready = asyncio.create_task(self.host.all_ready.wait())
        while self.links and not ready.done():
            await asyncio.wait([ready, *self.links.values()], return_when="FIRST_COMPLETED")
        if ready.done():
            port = self.listen.getsockname()[1]
            print(
                f"genrecast ready on http://{self.config.server.host}:{port}  "
                f"(updates: ws://{self.config.server.host}:{port}/ws/updates; "
                f"{self.count} ingest workers)",
                flush=True,
            )
        else:
            ready.cancel()
            log.error("every worker stopped before serving")
        while self.links:
            await asyncio.wait(list(self.links.values()), return_when="FIRST_COMPLETED")
        await asyncio.to_thread(self.host.stop)
        for proc in self.procs.values():
            await asyncio.to_thread(proc.join, STOP_TIMEOUT_S)

    async def _start(self, index: int) -> None:
        """Start worker ``index`` and serve its link."""
        ours, theirs = socket.socketpair()
        proc = self._ctx.Process(
            target=run_worker,
            args=(self.config, ModelInfo.of(self.model), self.listen, theirs, index),
            name=f"genrecast-worker-{index}",
        )
        proc.start()
        theirs.close()
        self.procs[index] = proc
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        task = asyncio.create_task(self._serve_link(index, proc, reader, writer))
        self.links[index] = task

    async def _serve_link(
        self,
        index: int,
        proc: BaseProcess,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        started = time.monotonic()
        await self.host.serve(index, reader, writer)
        del self.links[index]
        await asyncio.to_thread(proc.join, STOP_TIMEOUT_S)
        if self.stopping:
            return
        lived = time.monotonic() - started
        log.error("worker %d stopped (exit code %s) after %.0f s", index, proc.exitcode, lived)
        if lived >= RESTART_MIN_S:
            await self._start(index)

    def _stop(self) -> None:
        """SIGINT / SIGTERM: stop the workers (they drain), then the engine."""
        if self.stopping:
            return
        self.stopping = True
        for proc in self.procs.values():
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        asyncio.get_running_loop().call_later(STOP_TIMEOUT_S, self._kill)

    def _kill(self) -> None:
        for proc in self.procs.values():
            if proc.is_alive():
                proc.kill()
