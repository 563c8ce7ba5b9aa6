"""The engine process of ``genrecast serve --workers N``: the one owner of the model.

It holds the :class:`~stream_server.inference.engine.Engine` (and so the device) and serves the
ingest workers over their links (:mod:`stream_server.serve.engine_link` is the other end):

- windows from every worker go to the one engine, so a batch mixes every worker's streams;
  scores go back to the worker that sent the window, a window a newer one replaced is named to
  its worker, and the streams of a worker that died are dropped from the engine;
- every published message is stamped here with the next server-wide ``seq`` and sent to every
  worker (the publisher gets its stamped text back); the last ``updates.history_size`` stamped
  messages are kept here too, and a worker that connects (a restarted one) gets them first, so a
  client resuming with ``since`` on it finds the same history as on any other worker;
- a question for all workers is sent to every live worker and the answers, in worker order,
  go back to the asker once all are in (or after :data:`ASK_TIMEOUT_S`); the metrics get the
  engine's own (batch sizes and seconds: a batch mixes workers' windows, so it is counted here);
- the stream limits are counted here, over every worker.

Everything runs on the process's event loop; the engine thread hands its results over with
``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_server.config import Config
from stream_server.core.records import StreamOutcome
from stream_server.core.windows import (
    WindowJob,
    WindowResult,
    WindowScores,
    pcm16_window,
    scores_bytes,
)
from stream_server.errors import StorageError
from stream_server.inference.engine import Engine
from stream_server.inference.facts import session_params
from stream_server.inference.loading import start_engine
from stream_server.inference.model import LoadedModel
from stream_server.messages import StreamEnded, dumps, stamp_seq
from stream_server.serve.engine_link import ASK_TIMEOUT_S
from stream_server.serve.metrics import Metrics
from stream_server.serve.store import TimelineStore
from stream_server.serve.wire import read_frame, write_frame

log = logging.getLogger(__name__)

#: Why the streams of an ingest worker that died ended.
WORKER_STOPPED = "its worker process stopped"

__all__ = ["EngineHost"]


@dataclass(eq=False)
class _Worker:
    """One worker's link and what the engine process counts for it."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    alive: bool = True
    ready: bool = False
    #: Streams whose windows it sent (dropped from the engine if it dies).
    streams: set[str] = field(default_factory=set)
    #: Streams admitted and not yet gone, by client address.
    clients: Counter[str] = field(default_factory=Counter)

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        """Queue a frame to the worker; a worker that stopped reading is cut off (its link
        closed: it stops, and is started again)."""
        if not self.alive:
            return
        try:
            write_frame(self.writer, header, payload)
        except ConnectionError as exc:
            log.error("worker %d: %s; cutting it off", self.index, exc)
            self.alive = False
            self.writer.transport.abort()


@dataclass(eq=False)
class _LiveEntry:
    worker: _Worker
    stream_time_s: float = 0.0
    windows: int = 0


@dataclass(eq=False)
class _Question:
    """A question to every worker, waiting for their answers."""

    asker: _Worker
    request: int
    what: str
    waiting: set[int]
    answers: dict[int, Any] = field(default_factory=dict)


class EngineHost:
    """The engine process's side of the links; see the module docstring."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.engine: Engine | None = None
        self.workers: dict[int, _Worker] = {}
        self.seq = 0
        self.all_ready = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._hello: dict[str, Any] | None = None
        self._owners: dict[WindowJob, tuple[_Worker, int]] = {}
        self._shots: dict[tuple[int, int], Future[WindowScores]] = {}
        self._questions: dict[int, _Question] = {}
        self._qids = itertools.count(1)
        self._expected = 0
        #: The engine's figures (batch sizes and seconds), added to the workers' metrics.
        self.metrics = Metrics()
        #: Live streams (from their messages): the worker holding each, the stream time of its
        #: last update and its updates so far, to end them if that worker dies.
        self._live: dict[str, _LiveEntry] = {}
        #: The last stamped messages, ``(seq, stream_id, text)``: a new worker's hub history.
        self._history: deque[tuple[int, str, bytes]] = deque(maxlen=config.updates.history_size)

    # -- the engine -------------------------------------------------------------------------

    def load(self, model: LoadedModel) -> None:
        """Start the engine on ``model`` (blocking: run it in a thread)."""
        engine = start_engine(
            self.config,
            model,
            on_results=self._results_threadsafe,
            on_error=self._failed_threadsafe,
        )
        runner = engine.runner
        self._hello = {
            "op": "hello",
            "device": str(runner.device),
            "precision": runner.precision,
            "stream_state": runner.table is not None,
            "max_batch": engine.max_batch,
            "labels": len(session_params(self.config, model).labels),
        }
        self.engine = engine
        for worker in self.workers.values():
            worker.send(self._hello)

    def _results_threadsafe(self, results: Sequence[WindowResult]) -> None:
        self._loop.call_soon_threadsafe(self._results, results)

    def _failed_threadsafe(self, jobs: Sequence[WindowJob], exc: BaseException) -> None:
        self._loop.call_soon_threadsafe(self._failed, jobs, str(exc))

    def stop(self) -> None:
        """Stop the engine (blocking)."""
        if self.engine is not None:
            self.engine.stop()

    # -- links ------------------------------------------------------------------------------

    def expect(self, workers: int) -> None:
        """``all_ready`` is set once this many workers said they serve."""
        self._expected = workers

    async def serve(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve worker ``index``'s link until it closes."""
        worker = _Worker(index, reader, writer)
        self.workers[index] = worker
        for seq, stream_id, stamped in self._history:  # before the hello the worker waits for
            worker.send({"op": "message", "seq": seq, "stream_id": stream_id}, stamped)
        if self._hello is not None:
            worker.send(self._hello)
        try:
            while (frame := await read_frame(reader)) is not None:
                header, payload = frame
                try:
                    self._dispatch(worker, header, payload)
                except (KeyError, TypeError, ValueError) as exc:
                    log.error("worker %d sent a bad %r frame: %s", index, header["op"], exc)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            log.error("the link to worker %d broke: %s", index, exc)
        finally:
            self._gone(worker)
            writer.close()

    def _gone(self, worker: _Worker) -> None:
        """Forget a worker whose link closed: its streams leave the engine, its one-shot runs
        are cancelled, the questions stop waiting for it."""
        worker.alive = False
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self.engine is not None:
            for stream_id in worker.streams:
                self.engine.cancel(stream_id)
        for key in [key for key in self._shots if key[0] == worker.index]:
            self._shots.pop(key).cancel()
        for qid, question in list(self._questions.items()):
            question.waiting.discard(worker.index)
            self._maybe_answer(qid)
        orphans = [sid for sid, entry in self._live.items() if entry.worker is worker]
        figures: dict[str, tuple[float, int]] = {}
        for stream_id in orphans:
            entry = self._live[stream_id]
            figures[stream_id] = (entry.stream_time_s, entry.windows)
            ended = StreamEnded(
                type="stream.ended",
                seq=0,
                stream_id=stream_id,
                reason=WORKER_STOPPED,
                stream_time_s=entry.stream_time_s,
                wall_time=time.time(),
                windows_computed=entry.windows,
                windows_skipped=0,
            )
            self._stamp(dict(ended), dumps(ended), None, None)
        if orphans:
            self._end_in_store(figures)

    def _end_in_store(self, figures: dict[str, tuple[float, int]]) -> None:
        """Mark a dead worker's streams ended in the store (they would stay open for ever), with
        why and what they were; ``figures``: stream id to (stream time in seconds, windows)."""
        try:
            store = TimelineStore(self.config.storage.database)
        except StorageError as exc:
            log.error("could not end a stopped worker's streams: %s", exc)
            return
        try:
            for stream_id, (stream_time_s, windows) in figures.items():
                try:
                    outcome = dataclasses.replace(
                        StreamOutcome.of_timeline(store.timeline(stream_id), WORKER_STOPPED),
                        stream_time_s=stream_time_s,
                        windows_computed=windows,
                        windows_skipped=0,
                    )
                    store.end_stream(stream_id, time.time(), outcome)
                except StorageError as exc:
                    log.error("could not end stream %s: %s", stream_id, exc)
        finally:
            store.close()

    def _dispatch(self, worker: _Worker, header: dict[str, Any], payload: bytes) -> None:
        op = header["op"]
        if op == "submit":
            self._submit(worker, header, payload)
        elif op == "publish":
            self._stamp(header, payload.decode(), worker, header.get("id"))
        elif op == "notify":
            for other in list(self.workers.values()):
                other.send({"op": "notice", "stream_id": header.get("stream_id")}, payload)
        elif op == "cancel":
            worker.streams.discard(header["stream_id"])
            if self.engine is not None:
                self._replaced(self.engine.cancel(header["stream_id"]))
        elif op == "release":
            if self.engine is not None:
                self.engine.release(header["stream_id"])
        elif op == "oneshot":
            self._oneshot(worker, header, payload)
        elif op == "oneshot_cancel":
            shot = self._shots.pop((worker.index, header["id"]), None)
            if shot is not None:
                shot.cancel()
        elif op == "ask":
            self._ask(worker, header)
        elif op == "answer":
            self._answer(worker, header)
        elif op == "admit":
            refusal = self._admit(worker, header)
            worker.send({"op": "admitted", "id": header["id"], "value": refusal})
        elif op == "leave":
            client = header["client"]
            if worker.clients[client] > 0:
                worker.clients[client] -= 1
        elif op == "ready":
            worker.ready = True
            if sum(w.ready for w in self.workers.values()) >= self._expected:
                self.all_ready.set()
        else:
            raise ValueError(f"unknown op {op!r}")

    # -- windows ----------------------------------------------------------------------------

    def _submit(self, worker: _Worker, header: dict[str, Any], payload: bytes) -> None:
        job = WindowJob(
            header["stream_id"],
            pcm16_window(payload),
            int(header["end_sample"]),
            time.monotonic(),
            since=int(header["since"]),
            warm=bool(header["warm"]),
        )
        worker.streams.add(job.stream_id)
        if header["id"]:
            self._owners[job] = (worker, header["id"])
        if self.engine is None:
            self._replaced(job)
            return
        self._replaced(self.engine.submit(job))

    def _replaced(self, job: WindowJob | None) -> None:
        """Tell a worker that its window was replaced (or dropped) before it ran."""
        if job is None:
            return
        owner = self._owners.pop(job, None)
        if owner is not None:
            worker, job_id = owner
            worker.send({"op": "replaced", "id": job_id})

    def _results(self, results: Sequence[WindowResult]) -> None:
        self.metrics.batch_size.observe(results[0].batch_size)
        self.metrics.inference_seconds.observe(results[0].batch_seconds)
        by_worker: dict[_Worker, list[tuple[int, WindowResult]]] = defaultdict(list)
        for result in results:
            owner = self._owners.pop(result.job, None)
            if owner is not None:
                by_worker[owner[0]].append((owner[1], result))
        for worker, taken in by_worker.items():
            scores = WindowScores.of_results([result for _, result in taken])
            first = taken[0][1]
            header = {
                "op": "results",
                "ids": [job_id for job_id, _ in taken],
                "batch_size": first.batch_size,
                "batch_seconds": first.batch_seconds,
            }
            worker.send(header, scores_bytes(scores))

    def _failed(self, jobs: Sequence[WindowJob], reason: str) -> None:
        by_worker: dict[_Worker, list[int]] = defaultdict(list)
        for job in jobs:
            owner = self._owners.pop(job, None)
            if owner is not None:
                by_worker[owner[0]].append(owner[1])
        for worker, ids in by_worker.items():
            worker.send({"op": "failed", "ids": ids, "reason": reason})

    def _oneshot(self, worker: _Worker, header: dict[str, Any], payload: bytes) -> None:
        shot_id = header["id"]
        n, samples = (int(x) for x in header["shape"])
        windows = np.frombuffer(payload, dtype="<f4").astype(np.float32).reshape(n, samples)
        jobs = None
        if header["jobs"] is not None:
            jobs = [
                WindowJob(
                    meta["stream_id"],
                    windows[i],
                    int(meta["end_sample"]),
                    time.monotonic(),
                    since=int(meta["since"]),
                    warm=bool(meta["warm"]),
                )
                for i, meta in enumerate(header["jobs"])
            ]
        if self.engine is None:
            worker.send({"op": "oneshot_failed", "id": shot_id, "reason": "no engine yet"})
            return
        future = self.engine.run_windows(windows, jobs)
        self._shots[(worker.index, shot_id)] = future
        future.add_done_callback(
            lambda f: self._loop.call_soon_threadsafe(self._shot_done, worker, shot_id, f)
        )

    def _shot_done(self, worker: _Worker, shot_id: int, future: Future[WindowScores]) -> None:
        self._shots.pop((worker.index, shot_id), None)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            worker.send({"op": "oneshot_failed", "id": shot_id, "reason": str(exc)})
            return
        scores = future.result()
        worker.send({"op": "oneshot_done", "id": shot_id, "n": len(scores)}, scores_bytes(scores))

    # -- messages, questions, limits --------------------------------------------------------

    def _stamp(
        self,
        facts: dict[str, Any],
        text: str,
        origin: _Worker | None,
        request: int | None,
    ) -> None:
        """Give the message ``text`` (seq 0; ``facts``: its ``type``, ``stream_id`` and, for an
        update, ``stream_time_s``) the next ``seq`` and send it to every worker (with
        ``request``, the origin gets it as the answer to that request)."""
        kind, stream_id = facts["type"], facts["stream_id"]
        if kind == "stream.started" and origin is not None:
            self._live[stream_id] = _LiveEntry(origin)
        elif kind == "stream.ended":
            self._live.pop(stream_id, None)
        elif kind == "genre.update" and (entry := self._live.get(stream_id)) is not None:
            entry.stream_time_s = facts["stream_time_s"]
            entry.windows += 1
        self.seq += 1
        stamped = stamp_seq(text, self.seq).encode()
        self._history.append((self.seq, stream_id, stamped))
        header = {"op": "message", "seq": self.seq, "stream_id": stream_id}
        for worker in list(self.workers.values()):
            if worker is origin and request is not None:
                worker.send(header | {"ack": request}, stamped)
            else:
                worker.send(header, stamped)

    def _ask(self, asker: _Worker, header: dict[str, Any]) -> None:
        qid = next(self._qids)
        workers = list(self.workers.values())
        self._questions[qid] = _Question(
            asker, header["id"], header["what"], {w.index for w in workers}
        )
        query = {"op": "query", "qid": qid, "what": header["what"], "arg": header.get("arg")}
        for worker in workers:
            worker.send(query)
        self._loop.call_later(ASK_TIMEOUT_S, self._time_out, qid)

    def _answer(self, worker: _Worker, header: dict[str, Any]) -> None:
        question = self._questions.get(header["qid"])
        if question is None or worker.index not in question.waiting:
            return
        question.waiting.discard(worker.index)
        question.answers[worker.index] = header["value"]
        self._maybe_answer(header["qid"])

    def _time_out(self, qid: int) -> None:
        question = self._questions.get(qid)
        if question is not None:
            log.warning("workers %s did not answer in time", sorted(question.waiting))
            question.waiting.clear()
            self._maybe_answer(qid)

    def _maybe_answer(self, qid: int) -> None:
        question = self._questions[qid]
        if question.waiting:
            return
        del self._questions[qid]
        answers = [question.answers[i] for i in sorted(question.answers)]
        if question.what == "metrics":  # the batches are counted here, once each
            answers.append(self.metrics.render().decode())
        question.asker.send({"op": "answers", "id": question.request, "value": answers})

    def _admit(self, worker: _Worker, header: dict[str, Any]) -> str | None:
        """Count a new stream of ``client`` (from ``worker``); the refusal, or None."""
        client: str = header["client"]
        limits = self.config.server
        live = sum(w.clients.total() for w in self.workers.values())
        if live >= limits.max_streams:
            return f"too many live streams (limit {limits.max_streams})"
        if client:
            mine = sum(w.clients[client] for w in self.workers.values())
            if mine >= limits.max_streams_per_client:
                return (
                    f"this client already has {mine} live streams "
                    f"(limit {limits.max_streams_per_client})"
                )
        worker.clients[client] += 1
        return None
