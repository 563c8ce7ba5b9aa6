"""A real server for fuzzing: one server on loopback, run by an event loop in a background thread,
a healthy stream pushing music beside it the whole time, and the checks every example must pass
(no stream left behind, no error in the log, the healthy stream still updating).

Hypothesis draws examples on the test's thread; :meth:`FuzzServer.run` hands each one to the
server's loop as a coroutine, so a whole module reuses one server, one HTTP client and one
healthy stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection

from stream_server.config import Config
from stream_server.inference.model import LoadedModel
from stream_server.serve.server import RunningServer, running_server
from tests.helpers.audio import music, to_s16le
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import expected_windows, recv_json, ws

T = TypeVar("T")

#: The healthy stream: mono s16le at this rate (Hz), in frames of ``HEALTHY_FRAME_S`` seconds.
HEALTHY_RATE = 16000
HEALTHY_FRAME_S = 0.1
#: The longest the healthy stream may go without a ``genre.update``, in seconds.
STALE_S = TIMEOUT_S / 4

#: Loggers whose records are checked: the root (every ``stream_server`` module, asyncio) and
#: uvicorn's own, which does not propagate ("Exception in ASGI application" is logged there).
CHECKED_LOGGERS = ("", "uvicorn")


class LogRecorder(logging.Handler):
    """Keeps every record at WARNING or above from :data:`CHECKED_LOGGERS`."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        #: How often each warning was logged (by its text).
        self.warnings: collections.Counter[str] = collections.Counter()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def attach(self) -> None:
        for name in CHECKED_LOGGERS:
            logging.getLogger(name).addHandler(self)

    def detach(self) -> None:
        for name in CHECKED_LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def take_problems(self) -> list[str]:
        """The records logged since the last call that a clean run never logs: ERROR and
        above, or any that carries a traceback. Warnings are only counted."""
        self.acquire()
        try:
            records, self.records = self.records, []
        finally:
            self.release()
        problems = []
        for record in records:
            text = self.format(record)
            if record.levelno >= logging.ERROR or record.exc_info or "Traceback" in text:
                problems.append(text)
            else:
                self.warnings[record.getMessage()] += 1
        return problems


@dataclass
class Healthy:
    """The stream that pushes music in real time beside the fuzzing, and what it received."""

    stream_id: str = ""
    frames_sent: int = 0
    #: ``time.monotonic()`` of every ``genre.update`` its subscriber received.
    updates: list[float] = field(default_factory=list)
    ended: dict[str, Any] | None = None
    #: The ``stream.ended`` its subscriber received.
    ended_seen: dict[str, Any] | None = None

    @property
    def seconds_sent(self) -> float:
        return self.frames_sent * HEALTHY_FRAME_S

    def max_gap_s(self) -> float:
        """The longest time between two updates (or since the last one, while it runs)."""
        times = self.updates if self.ended is not None else [*self.updates, time.monotonic()]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


class FuzzServer:
    """A server on loopback run by an event loop in a thread of its own; use as a context manager.

    ``examples`` counts the examples run, by kind.
    """

    def __init__(self, config: Config, model: LoadedModel) -> None:
        self.config = config
        self.model = model
        self.log = LogRecorder()
        self.healthy = Healthy()
        self.examples: dict[str, int] = {}
        self._server: RunningServer | None = None
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._finish: asyncio.Event | None = None
        self._finished = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main_thread, name="fuzz-server", daemon=True)

    @property
    def server(self) -> RunningServer:
        assert self._server is not None
        return self._server

    @property
    def http(self) -> httpx.AsyncClient:
        assert self._http is not None
        return self._http

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> FuzzServer:
        self._thread.start()
        if not self._ready.wait(6 * TIMEOUT_S):
            raise TimeoutError("the fuzz server did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(6 * TIMEOUT_S)
        assert not self._thread.is_alive(), "the fuzz server did not stop"
        if self._error is not None:
            raise self._error

    def _main_thread(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            self._finished.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._finish = asyncio.Event()
        async with (
            running_server(self.config, model=self.model) as server,
            httpx.AsyncClient(base_url=server.http_url, timeout=TIMEOUT_S) as http,
        ):
            self._server, self._http = server, http
            self.log.attach()
            try:
                await self._with_healthy_stream(server)
            finally:
                self.log.detach()

    async def _with_healthy_stream(self, server: RunningServer) -> None:
        assert self._stop is not None and self._finish is not None
        healthy = self.healthy
        async with ws(server, "/ws/ingest") as ingest:
            start = {"type": "start", "name": "healthy", "sample_rate": HEALTHY_RATE}
            await ingest.send(json.dumps({**start, "channels": 1, "format": "s16le"}))
            started = await recv_json(ingest)
            assert started["type"] == "stream.started", started
            healthy.stream_id = started["stream_id"]
            async with ws(server, f"/ws/updates?stream_id={healthy.stream_id}") as sub:
                watch = asyncio.create_task(self._watch(sub))
                push = asyncio.create_task(self._push(ingest))
                await self._first_update(watch)
                self._ready.set()
                stop = asyncio.create_task(self._stop.wait())
                finish = asyncio.create_task(self._finish.wait())
                await asyncio.wait({stop, finish, push}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                finish.cancel()
                push.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await push
                await ingest.send(json.dumps({"type": "stop"}))
                healthy.ended = await recv_json(ingest)
                await asyncio.wait_for(watch, TIMEOUT_S)
            await self._stop.wait()

    async def _first_update(self, watch: asyncio.Task[None]) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not self.healthy.updates:
            assert not watch.done(), "the healthy stream's subscriber stopped"
            assert time.monotonic() < deadline, "the healthy stream got no update"
            await asyncio.sleep(0.05)

    async def _push(self, conn: ClientConnection) -> None:
        """Music in real time, looped, for as long as the module runs."""
        pcm = to_s16le(music(4.0, HEALTHY_RATE, channels=1, seed=3))
        step = round(HEALTHY_FRAME_S * HEALTHY_RATE) * 2
        frames = [pcm[i : i + step] for i in range(0, len(pcm) - step + 1, step)]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while True:
            await conn.send(frames[self.healthy.frames_sent % len(frames)])
            self.healthy.frames_sent += 1
            await asyncio.sleep(max(0.0, t0 + self.healthy.seconds_sent - loop.time()))

    async def _watch(self, sub: ClientConnection) -> None:
        async for raw in sub:
            message = json.loads(raw)
            if message["type"] == "genre.update":
                self.healthy.updates.append(time.monotonic())
            elif message["type"] == "stream.ended":
                self.healthy.ended_seen = message
                return

    # -- examples -----------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 6 * TIMEOUT_S) -> T:
        """Run ``coro`` on the server's loop and return its result (or raise its error)."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def example(self, kind: str, coro: Coroutine[Any, Any, str], *, listing: bool = True) -> str:
        """Run one example, then check that nothing is left behind (:meth:`settle`; ``listing``:
        the stream listing too), that the log holds no error and that the healthy stream is
        still updating. Returns what the example returned (what happened, for the
        statistics)."""
        self.examples[kind] = self.examples.get(kind, 0) + 1
        try:
            outcome = self.run(coro)
        finally:
            self.run(self.settle(listing=listing))
            self.check_log()
        self.check_healthy()
        return outcome

    def check_log(self) -> None:
        problems = self.log.take_problems()
        assert not problems, "the server logged:\n" + "\n".join(problems)

    def check_healthy(self) -> None:
        healthy = self.healthy
        assert healthy.ended is None, f"the healthy stream ended: {healthy.ended}"
        assert self.healthy.max_gap_s() <= STALE_S, (
            f"the healthy stream went {healthy.max_gap_s():.1f} s without an update"
        )

    async def settle(self, *, listing: bool = True) -> None:
        """Wait until the healthy stream is the only live one (streams an example started may
        still be closing), then check the listing (unless not ``listing``): it answers 200 and
        every other stream in it has ended. Raises AssertionError after ``TIMEOUT_S``."""
        service = self.server.service
        healthy = {self.healthy.stream_id}
        deadline = time.monotonic() + TIMEOUT_S
        # ``opening``: streams between their checks and their registration.
        while set(service.streams) != healthy or service.pullers or service.opening:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"streams left behind: {sorted(set(service.streams) - healthy)}, "
                    f"pullers: {sorted(service.pullers)}"
                )
            await asyncio.sleep(0.002)
        if not listing:
            return
        reply = await self.http.get("/streams")
        assert reply.status_code == 200, reply.text
        for described in reply.json()["streams"]:
            if described["stream_id"] in healthy:
                assert described["state"] == "live", described
            else:
                assert described["state"] in ("ended", "failed"), described
                assert described["ended_at"] is not None, described

    # -- the end ------------------------------------------------------------------------------

    def finish_healthy(self) -> Healthy:
        """Stop the healthy stream (once) and return what it sent and received."""
        assert self._loop is not None and self._finish is not None
        self._loop.call_soon_threadsafe(self._finish.set)
        deadline = time.monotonic() + 2 * TIMEOUT_S
        while self.healthy.ended_seen is None and time.monotonic() < deadline:
            if self._finished.is_set():
                break
            time.sleep(0.05)
        assert self._error is None, self._error
        return self.healthy


def due_windows(healthy: Healthy, window_s: float, hop_s: float) -> int:
    """The windows due for the audio the healthy stream sent."""
    return expected_windows(healthy.seconds_sent, window_s, hop_s)


def random_bytes(size: int, seed: int) -> bytes:
    """``size`` reproducible random bytes (large frames, without drawing each byte)."""
    return np.random.default_rng(seed).bytes(size)
