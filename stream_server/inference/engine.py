"""The one owner of the model: a thread that batches due windows across streams.

Streams hand in :class:`WindowJob` objects with :meth:`Engine.submit` from any thread. Each stream
has at most one pending job: a newer job replaces an older one that has not started (latest
wins), and the replaced job is returned to the caller to count as skipped, so a slow engine never
builds up lag. Warm-up jobs (audio ahead of a stream's window, :attr:`WindowJob.warm
<stream_server.core.windows.WindowJob.warm>`) wait while any window does, and never displace a
window. The engine thread waits for the first pending job, then up to ``max_wait_s`` more
for the batch to fill to ``max_batch``, runs the batch and hands the results to ``on_results``
(called on the engine thread; the server forwards them to its event loop with
``loop.call_soon_threadsafe``). A failed batch goes to ``on_error`` and the engine carries on.

One-shot work (a whole uploaded file) comes in through :meth:`Engine.run_windows`, which returns a
:class:`concurrent.futures.Future` of :class:`~stream_server.core.windows.WindowScores`. The
same thread runs it in chunks of ``max_batch`` windows, taking turns with live batches, so a long
file delays a live stream by at most one chunk.

Between batches the thread tidies up with ``on_tidy`` (by default
:func:`~stream_server.inference.heap.trim_heap`: memory the batches freed goes back to the system,
so the server does not keep its peak size): once when it ran out of work and none came for
:data:`IDLE_S`, and every :data:`TIDY_EVERY_S` while work never stops.

A runner may keep state per stream (:meth:`InferenceRunner.release
<stream_server.inference.runner.InferenceRunner.release>`): :meth:`Engine.cancel` and
:meth:`Engine.release` free it on the engine thread, after any batch of the stream that is
running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from stream_server.core.windows import (
    ErrorCallback,
    ResultsCallback,
    WindowJob,
    WindowResult,
    WindowScores,
    check_windows,
    stack_windows,
)
from stream_server.errors import EngineStopped
from stream_server.inference.heap import trim_heap
from stream_server.inference.runner import InferenceRunner

log = logging.getLogger(__name__)

#: Seconds without work after a batch before the engine calls ``on_tidy``.
IDLE_S = 0.5
#: Seconds of work without a pause after which the engine calls ``on_tidy`` after a batch.
TIDY_EVERY_S = 60.0

#: What :meth:`Engine._take_batch` returns when the engine went idle.
_IDLE = object()


@dataclass(eq=False)
class _OneShot:
    """Windows ``(n, samples)`` queued by :meth:`Engine.run_windows`; ``done`` of them are run."""

    windows: np.ndarray
    future: Future[WindowScores]
    jobs: Sequence[WindowJob] | None = None
    done: int = 0
    parts: list[WindowScores] = field(default_factory=list)


def _settle(future: Future[WindowScores], outcome: WindowScores | BaseException) -> None:
    """Resolve ``future`` with a result or an exception, unless its caller cancelled it."""
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass


class Engine:
    """Batches :class:`WindowJob` across streams on a single thread."""

    def __init__(
        self,
        runner: InferenceRunner,
        *,
        max_batch: int,
        max_wait_s: float,
        on_results: ResultsCallback,
        on_error: ErrorCallback,
        on_tidy: Callable[[], object] = trim_heap,
    ) -> None:
        self.runner = runner
        self._on_tidy = on_tidy
        self._tidied = time.monotonic()
        # Batches ran since the engine last went idle (engine thread only).
        self._worked = False
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._on_results = on_results
        self._on_error = on_error
        self._cond = threading.Condition()
        self._pending: dict[str, WindowJob] = {}
        self._in_flight: set[str] = set()
        self._oneshots: deque[_OneShot] = deque()
        self._oneshot_turn = False
        self._released: set[str] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="genrecast-engine", daemon=True)
        self.batches = 0
        self.computed = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to finish its current batch and exit; pending jobs are dropped."""
        with self._cond:
            self._stopping = True
            self._pending.clear()
            shots = list(self._oneshots)
            self._oneshots.clear()
            self._cond.notify_all()
        for shot in shots:
            _settle(shot.future, EngineStopped("the engine stopped"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: WindowJob) -> WindowJob | None:
        """Queue ``job``; returns the job that will not run: the older pending job of the same
        stream it replaced, if any, or ``job`` itself when it is a warm-up job and the stream's
        pending job is a window (that window takes the same audio in)."""
        with self._cond:
            if self._stopping:
                return job
            replaced = self._pending.get(job.stream_id)
            if job.warm and replaced is not None and not replaced.warm:
                return job
            self._pending[job.stream_id] = job
            self._cond.notify_all()
        return replaced

    def run_windows(
        self, windows: np.ndarray, jobs: Sequence[WindowJob] | None = None
    ) -> Future[WindowScores]:
        """Run ``(n, samples)`` float32 windows on the engine thread; their scores come back.

        The windows are run in chunks of ``max_batch``, taking turns with live batches, after
        the one-shot work queued before them. ``jobs`` (one per window: an offline stream's,
        in order) go to the runner with them; :meth:`release` the stream when it is done. The
        future fails with the runner's exception if a chunk fails, or with
        :class:`EngineStopped`; a caller that cancels it before it is done stops the chunks still
        to run.
        """
        future = check_windows(windows, jobs, len(self.runner.labels))
        if future.done():
            return future
        with self._cond:
            if self._stopping:
                future.set_exception(EngineStopped("the engine is stopped"))
                return future
            self._oneshots.append(_OneShot(windows, future, jobs))
            self._cond.notify_all()
        return future

    def cancel(self, stream_id: str) -> WindowJob | None:
        """The stream ended: drop its pending job (returned) if it has not started, and
        :meth:`release` it."""
        with self._cond:
            job = self._pending.pop(stream_id, None)
            self._released.add(stream_id)
            self._cond.notify_all()
            return job

    def release(self, stream_id: str) -> None:
        """Free the runner's state for a stream that is done, on the engine thread."""
        with self._cond:
            self._released.add(stream_id)
            self._cond.notify_all()

    def _release(self) -> None:
        """Hand the released streams to the runner (engine thread, between batches)."""
        with self._cond:
            released, self._released = self._released, set()
        for stream_id in released:
            self.runner.release(stream_id)

    def busy(self, stream_id: str) -> bool:
        """Whether the stream has a job pending or running."""
        with self._cond:
            return stream_id in self._pending or stream_id in self._in_flight

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def _idle(self) -> bool:
        return not (self._pending or self._oneshots or self._released or self._stopping)

    def _take_batch(self) -> list[WindowJob] | _OneShot | object | None:
        """The next work: a live batch, or the one-shot whose next chunk is due (alternating);
        an empty batch when there are only streams to release; :data:`_IDLE` once after work
        when none came for :data:`IDLE_S`."""
        with self._cond:
            while True:
                while self._idle():
                    if not self._worked:
                        self._cond.wait()
                        continue
                    self._cond.wait(IDLE_S)
                    if self._idle():
                        self._worked = False
                        return _IDLE
                if self._stopping:
                    return None
                if not self._pending and not self._oneshots:
                    return []
                if self._oneshots and (self._oneshot_turn or not self._pending):
                    self._oneshot_turn = False
                    return self._oneshots[0]
                deadline = min(j.enqueued for j in self._pending.values()) + self.max_wait_s
                # With one-shot work queued the thread does not idle waiting for a fuller batch.
                while (
                    self._pending
                    and len(self._pending) < self.max_batch
                    and not self._oneshots
                    and not self._stopping
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._stopping:
                    return None
                if self._pending:  # else every waiting job was cancelled: wait afresh
                    break
            waiting = sorted(self._pending.values(), key=lambda j: j.enqueued)
            # Warm-up jobs run only while no window waits: under load the streams' windows
            # replace them (and bring their audio), when the engine is idle they cut its work
            # at the next due instant.
            windows = [job for job in waiting if not job.warm]
            jobs = (windows or waiting)[: self.max_batch]
            for job in jobs:
                del self._pending[job.stream_id]
                self._in_flight.add(job.stream_id)
            self._oneshot_turn = True
            return jobs

    def _loop(self) -> None:
        while (jobs := self._take_batch()) is not None:
            if jobs is _IDLE:
                self._tidy()
                continue
            assert isinstance(jobs, (list, _OneShot))
            self._worked = self._worked or bool(jobs)  # a batch ran, not only releases
            try:
                self._run(jobs)
            finally:
                self._release()  # after the batch: a stream ended during it is freed after it
            if time.monotonic() - self._tidied >= TIDY_EVERY_S:
                self._tidy()

    def _tidy(self) -> None:
        self._tidied = time.monotonic()
        try:
            self._on_tidy()
        except Exception:
            log.exception("tidying up between batches failed")

    def _run(self, jobs: list[WindowJob] | _OneShot) -> None:
        """Run one batch of live jobs (none: nothing but releases) or one one-shot chunk."""
        if isinstance(jobs, _OneShot):
            self._run_chunk(jobs)
            return
        warm = [job for job in jobs if job.warm]
        if warm:  # audio taken in ahead of the streams' first windows: no scores
            try:
                self.runner.warm(warm)
            except Exception:
                log.exception("warm-up failed for %d streams", len(warm))
            self._finish(warm)
            jobs = [job for job in jobs if not job.warm]
        if not jobs:
            return
        try:
            windows = stack_windows(jobs)
            scores, timing = self.runner.timed_score(windows, jobs)
        except Exception as exc:
            log.exception("inference failed for a batch of %d windows", len(jobs))
            self._finish(jobs)
            self._on_error(jobs, exc)
            return
        self.batches += 1
        self.computed += len(jobs)
        results = [
            WindowResult(
                job,
                scores.probs[i],
                timing.batch_size,
                timing.seconds,
                float(scores.level_dbfs[i]),
                float(scores.speech[i]),
            )
            for i, job in enumerate(jobs)
        ]
        self._finish(jobs)
        try:
            self._on_results(results)
        except Exception:  # the callback belongs to the caller; keep the engine alive
            log.exception("result callback failed")

    def _run_chunk(self, shot: _OneShot) -> None:
        """Run the next ``max_batch`` windows of ``shot``; settle its future after the last."""
        outcome: WindowScores | BaseException | None = None
        if not shot.future.cancelled():
            part = slice(shot.done, shot.done + self.max_batch)
            chunk = shot.windows[part]
            try:
                scores, _ = self.runner.timed_score(
                    chunk, None if shot.jobs is None else shot.jobs[part]
                )
            except Exception as exc:
                log.exception("inference failed for %d windows of a one-shot run", len(chunk))
                outcome = exc
            else:
                self.batches += 1
                self.computed += len(chunk)
                shot.parts.append(scores)
                shot.done += len(chunk)
                if shot.done >= len(shot.windows):
                    outcome = WindowScores.concat(shot.parts)
        if outcome is None and not shot.future.cancelled():
            return
        with self._cond:
            if self._oneshots and self._oneshots[0] is shot:
                self._oneshots.popleft()
        if outcome is not None:
            _settle(shot.future, outcome)

    def _finish(self, jobs: Sequence[WindowJob]) -> None:
        with self._cond:
            for job in jobs:
                self._in_flight.discard(job.stream_id)
            self._cond.notify_all()
