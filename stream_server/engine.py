"""The one owner of the model: a thread that batches due windows across streams.

Streams hand in :class:`WindowJob` objects with :meth:`Engine.submit` from any thread. Each stream
has at most one pending job: a newer job replaces an older one that has not started (latest
wins), and the replaced job is returned to the caller to count as skipped, so a slow engine never
builds up lag. The engine thread waits for the first pending job, then up to ``max_wait_s`` more
for the batch to fill to ``max_batch``, runs the batch and hands the results to ``on_results``
(called on the engine thread; the server forwards them to its event loop with
``loop.call_soon_threadsafe``). A failed batch goes to ``on_error`` and the engine carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from stream_server.runner import InferenceRunner

log = logging.getLogger(__name__)


@dataclass(eq=False)
class WindowJob:
    """One window of one stream, due for inference.

    ``window`` is ``(samples,)`` float32 at the model's rate; ``end_sample`` the absolute index one
    past its last sample; ``arrival`` the ``time.monotonic()`` at which that last sample arrived.
    """

    stream_id: str
    window: np.ndarray
    end_sample: int
    arrival: float
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, eq=False)
class WindowResult:
    """Probabilities ``(labels,)`` for a job, with the batch it ran in."""

    job: WindowJob
    probs: np.ndarray
    batch_size: int
    batch_seconds: float


ResultsCallback = Callable[[Sequence[WindowResult]], None]
ErrorCallback = Callable[[Sequence[WindowJob], BaseException], None]


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
    ) -> None:
        self.runner = runner
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._on_results = on_results
        self._on_error = on_error
        self._cond = threading.Condition()
        self._pending: dict[str, WindowJob] = {}
        self._in_flight: set[str] = set()
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
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: WindowJob) -> WindowJob | None:
        """Queue ``job``; returns the older pending job of the same stream it replaced, if any."""
        with self._cond:
            if self._stopping:
                return job
            replaced = self._pending.get(job.stream_id)
            self._pending[job.stream_id] = job
            self._cond.notify_all()
        return replaced

    def cancel(self, stream_id: str) -> WindowJob | None:
        """Drop the stream's pending job (returned) if it has not started."""
        with self._cond:
            job = self._pending.pop(stream_id, None)
            self._cond.notify_all()
            return job

    def busy(self, stream_id: str) -> bool:
        """Whether the stream has a job pending or running."""
        with self._cond:
            return stream_id in self._pending or stream_id in self._in_flight

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def _take_batch(self) -> list[WindowJob] | None:
        with self._cond:
            while True:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                deadline = min(j.enqueued for j in self._pending.values()) + self.max_wait_s
                while self._pending and len(self._pending) < self.max_batch and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._stopping:
                    return None
                if self._pending:  # else every waiting job was cancelled: wait afresh
                    break
            jobs = sorted(self._pending.values(), key=lambda j: j.enqueued)[: self.max_batch]
            for job in jobs:
                del self._pending[job.stream_id]
                self._in_flight.add(job.stream_id)
            return jobs

    def _loop(self) -> None:
        while (jobs := self._take_batch()) is not None:
            try:
                windows = np.stack([job.window for job in jobs])
                probs, timing = self.runner.timed_run(windows)
            except Exception as exc:
                log.exception("inference failed for a batch of %d windows", len(jobs))
                self._finish(jobs)
                self._on_error(jobs, exc)
                continue
            self.batches += 1
            self.computed += len(jobs)
            results = [
                WindowResult(job, probs[i], timing.batch_size, timing.seconds)
                for i, job in enumerate(jobs)
            ]
            self._finish(jobs)
            try:
                self._on_results(results)
            except Exception:  # the callback belongs to the caller; keep the engine alive
                log.exception("result callback failed")

    def _finish(self, jobs: Sequence[WindowJob]) -> None:
        with self._cond:
            for job in jobs:
                self._in_flight.discard(job.stream_id)
            self._cond.notify_all()
