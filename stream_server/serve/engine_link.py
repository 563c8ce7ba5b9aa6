"""An ingest worker's link to the engine process (``genrecast serve --workers N``).

A worker serves HTTP and WebSockets, decodes and windows its own streams and keeps their
smoothing, like a one-process server; what it cannot do alone goes over this link
(:mod:`stream_server.serve.wire` frames) to the engine process (:mod:`.engine_host`):

- **windows**: :class:`RemoteEngine` is the worker's engine. A due window goes as int16 PCM (the
  streams' ring buffers hold 16-bit PCM, so this is exact) and its scores come back; the engine
  process keeps "latest wins" per stream and says which windows a newer one replaced. Upload
  windows go as float32.
- **messages**: every message a worker publishes is stamped by the engine process with the next
  server-wide ``seq`` and sent to every worker, its own included, so each worker's hub holds the
  same history and a subscriber may land on, and resume from, any of them.
- **questions for all workers** (:meth:`EngineLink.ask`): the live streams, a live stream's
  timeline, stopping a stream, the metrics; each worker answers for its own streams.
- **admission**: the stream limits (``server.max_streams``, ``server.max_streams_per_client``)
  are counted by the engine process over every worker (:meth:`EngineLink.admit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from stream_server.core.windows import (
    ErrorCallback,
    ResultsCallback,
    WindowJob,
    WindowResult,
    WindowScores,
    check_windows,
    pcm16_bytes,
    scores_from_bytes,
)
from stream_server.errors import EngineStopped
from stream_server.messages import ErrorMessage, PublishedMessage, dumps
from stream_server.serve.wire import Frame, read_frame, write_frame

log = logging.getLogger(__name__)

__all__ = ["EngineLink", "Hello", "RemoteEngine", "job_header"]

#: Seconds a question to every worker may take before it is answered with what came.
ASK_TIMEOUT_S = 5.0

#: Called on the loop with a stamped message: its ``seq``, its stream and its JSON text.
MessageCallback = Callable[[int, str, str], None]
#: Called on the loop with a notice (an ``error`` message not kept): its stream (or None), JSON.
NoticeCallback = Callable[[str | None, str], None]
#: Answers a question for this worker's streams: ``(what, argument) -> JSON-ready value``.
Answerer = Callable[[str, Any], Awaitable[Any]]


def job_header(job: WindowJob) -> dict[str, Any]:
    """What the engine process needs of a job besides its audio."""
    return {
        "stream_id": job.stream_id,
        "end_sample": job.end_sample,
        "since": job.since,
        "warm": job.warm,
    }


def publish_header(message: PublishedMessage) -> dict[str, Any]:
    """What the engine process reads of a message to publish, beside its JSON (which it stamps
    without parsing): its type, its stream and, for an update, its stream time."""
    header: dict[str, Any] = {
        "op": "publish",
        "type": message["type"],
        "stream_id": message["stream_id"],
    }
    if message["type"] == "genre.update":
        header["stream_time_s"] = message["stream_time_s"]
    return header


class Hello:
    """What the engine process tells a worker once its model is loaded and warm."""

    def __init__(self, header: dict[str, Any]) -> None:
        self.device = str(header["device"])
        self.precision = str(header["precision"])
        #: The model keeps state per stream (warm-up jobs are worth sending).
        self.stream_state = bool(header["stream_state"])
        self.max_batch = int(header["max_batch"])
        self.labels = int(header["labels"])


class EngineLink:
    """The worker's end of the link; see the module docstring. Runs on the worker's loop."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        self.index = index
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._hello: asyncio.Future[Hello] = asyncio.get_running_loop().create_future()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._answering: set[asyncio.Task[None]] = set()
        self.engine: RemoteEngine | None = None
        self.on_message: MessageCallback = lambda seq, stream_id, text: None
        self.on_notice: NoticeCallback = lambda stream_id, text: None
        self.answerer: Answerer | None = None
        #: Called once when the engine process is gone (the worker should stop).
        self.on_lost: Callable[[], None] = lambda: None
        self.closed = False

    # -- the read loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Read frames until the engine process closes the link."""
        try:
            while (frame := await read_frame(self._reader)) is not None:
                self._dispatch(frame)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            log.error("worker %d: the link to the engine process broke: %s", self.index, exc)
        finally:
            self._lost()

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        gone = ConnectionError("the engine process is gone")
        if not self._hello.done():
            self._hello.set_exception(gone)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(gone)
        self._waiting.clear()
        if self.engine is not None:
            self.engine.fail_all(EngineStopped("the engine process is gone"))
        self.on_lost()

    def _dispatch(self, frame: Frame) -> None:
        header, payload = frame
        op = header["op"]
        if op == "message":
            text = payload.decode()
            ack = header.get("ack")
            if ack is not None:
                self._settle(ack, text)
            self.on_message(header["seq"], header["stream_id"], text)
        elif op == "notice":
            self.on_notice(header.get("stream_id"), payload.decode())
        elif op in ("answers", "admitted"):
            self._settle(header["id"], header["value"])
        elif op == "query":
            task = asyncio.create_task(self._answer(header))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)
        elif op == "hello":
            if not self._hello.done():
                self._hello.set_result(Hello(header))
        elif self.engine is not None:
            self.engine.dispatch(op, header, payload)

    def _settle(self, request: int, value: Any) -> None:
        future = self._waiting.pop(request, None)
        if future is not None and not future.done():
            future.set_result(value)

    async def _answer(self, header: dict[str, Any]) -> None:
        value: Any = None
        if self.answerer is not None:
            try:
                value = await self.answerer(header["what"], header.get("arg"))
            except Exception:
                log.exception("worker %d could not answer %r", self.index, header["what"])
        self.send({"op": "answer", "qid": header["qid"], "value": value})

    # -- requests ---------------------------------------------------------------------------

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        """Queue a frame to the engine process (dropped once the link is closed; an engine
        process that stopped reading is given up: the worker stops)."""
        if self.closed:
            return
        try:
            write_frame(self._writer, header, payload)
        except ConnectionError as exc:
            log.error("worker %d gives up the engine process: %s", self.index, exc)
            self._writer.transport.abort()
            self._lost()

    async def _request(self, header: dict[str, Any], timeout_s: float, payload: bytes = b"") -> Any:
        """Send ``header`` with a fresh ``id`` and wait for the answer of that ``id``."""
        if self.closed:
            raise ConnectionError("the engine process is gone")
        request = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request] = future
        self.send(header | {"id": request}, payload)
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._waiting.pop(request, None)

    async def hello(self) -> Hello:
        """Wait until the engine process has loaded its model; what it told."""
        return await asyncio.shield(self._hello)

    def ready(self) -> None:
        """Tell the engine process this worker serves."""
        self.send({"op": "ready", "worker": self.index})

    def publish(self, message: PublishedMessage) -> None:
        """Have ``message`` stamped and sent to every worker (this one's hub included)."""
        self.send(publish_header(message), dumps(message).encode())

    async def publish_stamped(self, message: PublishedMessage) -> str:
        """:meth:`publish`, then wait for the stamped JSON text (as the hubs got it)."""
        header = publish_header(message)
        text: str = await self._request(header, ASK_TIMEOUT_S, dumps(message).encode())
        return text

    def notify(self, message: ErrorMessage) -> None:
        """Send an ``error`` to the subscribers of its stream on every worker; not kept."""
        header: dict[str, Any] = {"op": "notify", "stream_id": message.get("stream_id")}
        self.send(header, dumps(message).encode())

    async def ask(self, what: str, arg: Any = None) -> list[Any]:
        """Every worker's answer to ``what`` (this one's included), in worker order; a worker
        that does not answer within :data:`ASK_TIMEOUT_S` is left out."""
        answers: list[Any] = await self._request(
            {"op": "ask", "what": what, "arg": arg}, ASK_TIMEOUT_S * 2
        )
        return answers

    async def admit(self, client: str) -> str | None:
        """Count one more stream for ``client`` against the server-wide limits; the reason it
        is refused, or ``None`` (then :meth:`leave` once the stream is gone)."""
        refusal: str | None = await self._request({"op": "admit", "client": client}, ASK_TIMEOUT_S)
        return refusal

    def leave(self, client: str) -> None:
        """A stream :meth:`admit` counted is gone."""
        self.send({"op": "leave", "client": client})

    def make_engine(
        self,
        hello: Hello,
        *,
        on_results: ResultsCallback,
        on_error: ErrorCallback,
        on_replaced: Callable[[WindowJob], None],
    ) -> RemoteEngine:
        """The worker's engine over this link (one per link)."""
        self.engine = RemoteEngine(self, hello, on_results, on_error, on_replaced)
        return self.engine

    async def close(self) -> None:
        self.closed = True
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class RemoteEngine:
    """The engine process's engine, as a worker uses it (the
    :class:`~stream_server.core.windows.WindowEngine` protocol).

    :meth:`submit` never returns a replaced job: the engine process decides which pending
    window a newer one replaces and says so later, through ``on_replaced`` (on the loop).
    Results and failures arrive on the loop too.
    """

    def __init__(
        self,
        link: EngineLink,
        hello: Hello,
        on_results: ResultsCallback,
        on_error: ErrorCallback,
        on_replaced: Callable[[WindowJob], None],
    ) -> None:
        self._link = link
        self.max_batch = hello.max_batch
        self._labels = hello.labels
        self._on_results = on_results
        self._on_error = on_error
        self._on_replaced = on_replaced
        self._ids = itertools.count(1)
        #: Scored jobs sent and not yet back, by id (warm jobs are not tracked: nothing comes
        #: back for them).
        self._jobs: dict[int, WindowJob] = {}
        self._shots: dict[int, Future[WindowScores]] = {}
        self._stopped = False

    def start(self) -> None:
        """Nothing to start: the engine runs in the engine process."""

    def stop(self, timeout: float = 10.0) -> None:
        """Fail the one-shot runs still waiting; the engine process stops on its own."""
        self._stopped = True
        self.fail_all(EngineStopped("the engine stopped"))

    def submit(self, job: WindowJob) -> WindowJob | None:
        """Send ``job``'s window; what it replaces is reported through ``on_replaced``."""
        if self._stopped or self._link.closed:
            return job
        job_id = 0
        if not job.warm:
            job_id = next(self._ids)
            self._jobs[job_id] = job
        header = {"op": "submit", "id": job_id} | job_header(job)
        self._link.send(header, pcm16_bytes(job.window))
        return None

    def cancel(self, stream_id: str) -> WindowJob | None:
        """Drop the stream's pending window in the engine process and free its state there; a
        window dropped comes back through ``on_replaced``."""
        self._link.send({"op": "cancel", "stream_id": stream_id})
        return None

    def release(self, stream_id: str) -> None:
        self._link.send({"op": "release", "stream_id": stream_id})

    def run_windows(
        self, windows: np.ndarray, jobs: Sequence[WindowJob] | None = None
    ) -> Future[WindowScores]:
        """``(n, samples)`` float32 windows run in the engine process (as
        :meth:`Engine.run_windows <stream_server.inference.engine.Engine.run_windows>`)."""
        future = check_windows(windows, jobs, self._labels)
        if future.done():
            return future
        if self._stopped or self._link.closed:
            future.set_exception(EngineStopped("the engine is stopped"))
            return future
        shot = next(self._ids)
        self._shots[shot] = future
        header = {
            "op": "oneshot",
            "id": shot,
            "shape": list(windows.shape),
            "jobs": None if jobs is None else [job_header(job) for job in jobs],
        }
        self._link.send(header, np.ascontiguousarray(windows, dtype="<f4").tobytes())
        future.add_done_callback(lambda f: self._cancelled(shot, f))
        return future

    def _cancelled(self, shot: int, future: Future[WindowScores]) -> None:
        self._shots.pop(shot, None)
        if future.cancelled():
            self._link.send({"op": "oneshot_cancel", "id": shot})

    def fail_all(self, exc: BaseException) -> None:
        """Fail every one-shot run still waiting (the engine is gone)."""
        shots, self._shots = self._shots, {}
        for future in shots.values():
            if not future.done():
                future.set_exception(exc)

    # -- frames from the engine process -----------------------------------------------------

    def dispatch(self, op: str, header: dict[str, Any], payload: bytes) -> None:
        if op == "results":
            self._results(header, payload)
        elif op == "replaced":
            job = self._jobs.pop(header["id"], None)
            if job is not None:
                self._on_replaced(job)
        elif op == "failed":
            jobs = [job for i in header["ids"] if (job := self._jobs.pop(i, None)) is not None]
            if jobs:
                self._on_error(jobs, RuntimeError(header["reason"]))
        elif op == "oneshot_done":
            future = self._shots.pop(header["id"], None)
            if future is not None and not future.done():
                future.set_result(scores_from_bytes(payload, header["n"], self._labels))
        elif op == "oneshot_failed":
            future = self._shots.pop(header["id"], None)
            if future is not None and not future.done():
                future.set_exception(RuntimeError(header["reason"]))
        else:
            log.warning("worker %d: unknown frame %r from the engine process", self._link.index, op)

    def _results(self, header: dict[str, Any], payload: bytes) -> None:
        ids: list[int] = header["ids"]
        scores = scores_from_bytes(payload, len(ids), self._labels)
        results = []
        for i, job_id in enumerate(ids):
            job = self._jobs.pop(job_id, None)
            if job is None:
                continue
            results.append(
                WindowResult(
                    job,
                    scores.probs[i],
                    header["batch_size"],
                    header["batch_seconds"],
                    float(scores.level_dbfs[i]),
                    float(scores.speech[i]),
                )
            )
        if results:
            self._on_results(results)
