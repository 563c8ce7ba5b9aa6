"""A node's engine in a cluster: the inference workers behind NATS, as the
:class:`~stream_server.core.windows.WindowEngine` protocol.

Each due window is a request to the stream's worker (:mod:`stream_server.cluster.protocol`:
rendezvous hashing over the workers heard of, so a stream keeps its worker and that worker's
state; the queue group while none is known). "Latest wins" holds here already: a stream has at
most one window in flight and one waiting; a newer window replaces the waiting one (reported
through ``on_replaced``, as skipped). A worker NATS says is not there (no responders) is
forgotten and the window goes to the next one at once; a window whose scores do not come back
within ``cluster.request_timeout_s`` (its worker died with it) is reported as replaced, so a
stream loses that one window, and its worker is forgotten until it is heard again. Warm-up jobs
go without a reply subject. One-shot runs (uploads) go as one request of float32 windows to the
queue group.

Everything runs on the node's event loop; results, failures and replaced windows are reported
on it too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_server.cluster.protocol import (
    ONESHOT,
    PRESENCE,
    PRESENCE_S,
    RELEASE,
    WHO,
    WINDOWS,
    WORKER_TTL_S,
    direct_subject,
    job_message,
    pick_worker,
)
from stream_server.core.windows import (
    ErrorCallback,
    ResultsCallback,
    WindowJob,
    WindowResult,
    WindowScores,
    check_windows,
    scores_from_bytes,
)
from stream_server.errors import ClusterError, EngineStopped

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

log = logging.getLogger(__name__)

__all__ = ["ClusterEngine"]


class ClusterEngine:
    """See the module docstring. ``labels``: the model's probabilities per window."""

    def __init__(
        self,
        nc: Client,
        *,
        labels: int,
        max_batch: int,
        timeout_s: float,
        on_results: ResultsCallback,
        on_error: ErrorCallback,
        on_replaced: Callable[[WindowJob], None],
    ) -> None:
        self.nc = nc
        self.max_batch = max_batch
        self._labels = labels
        self._timeout_s = timeout_s
        self._on_results = on_results
        self._on_error = on_error
        self._on_replaced = on_replaced
        #: By stream: the window sent and not back, and the newest one waiting for it.
        self._in_flight: dict[str, WindowJob] = {}
        self._waiting: dict[str, WindowJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False
        #: Windows whose scores did not come back in time.
        self.timed_out = 0
        #: Workers heard of: ``time.monotonic()`` of the last word from each.
        self._workers: dict[str, float] = {}
        #: What each worker said of itself last (its presence headers: ``device``,
        #: ``precision``, ``stream_state``, ``max_batch``).
        self.facts: dict[str, dict[str, str]] = {}
        self._presence: Any = None

    async def open(self, wait_s: float = PRESENCE_S) -> None:
        """Listen to the workers' presence, ask who is there, and wait up to ``wait_s`` for a
        first answer."""
        self._presence = await self.nc.subscribe(PRESENCE, cb=self._on_presence)
        await self.nc.publish(WHO)
        deadline = time.monotonic() + wait_s
        while not self._workers and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self.stop()
        if self._presence is not None:
            await self._presence.unsubscribe()
            self._presence = None

    async def _on_presence(self, msg: Msg) -> None:
        headers = msg.headers or {}
        worker = headers.get("worker")
        if not worker:
            return
        if headers.get("leaving") == "1":
            self._workers.pop(worker, None)
            self.facts.pop(worker, None)
        else:
            self._workers[worker] = time.monotonic()
            self.facts[worker] = dict(headers)

    @property
    def workers(self) -> list[str]:
        """The workers heard of within :data:`WORKER_TTL_S`."""
        now = time.monotonic()
        for worker in [w for w, seen in self._workers.items() if now - seen > WORKER_TTL_S]:
            del self._workers[worker]
            self.facts.pop(worker, None)
        return sorted(self._workers)

    def _subject(self, stream_id: str) -> tuple[str, str | None]:
        """Where a stream's windows go now, and the worker it names (``None``: any)."""
        worker = pick_worker(stream_id, self.workers)
        return (WINDOWS, None) if worker is None else (direct_subject(worker), worker)

    @property
    def in_flight(self) -> int:
        """Windows sent and not back yet."""
        return len(self._in_flight)

    def start(self) -> None:
        """Nothing to start: the workers run on their own."""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sending; the requests in flight are cancelled (their windows reported as
        replaced)."""
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()

    def submit(self, job: WindowJob) -> WindowJob | None:
        """Send ``job`` (or keep it until its stream's window in flight is back)."""
        if self._stopped:
            return job
        sid = job.stream_id
        if job.warm:
            if sid not in self._in_flight:  # else the window in flight brings its audio
                self._spawn(self._send_warm(job))
            return None
        if sid in self._in_flight:
            older = self._waiting.get(sid)
            self._waiting[sid] = job
            return older
        self._send(job)
        return None

    def cancel(self, stream_id: str) -> WindowJob | None:
        """Forget the stream's waiting window (returned); one in flight is let go."""
        return self._waiting.pop(stream_id, None)

    def release(self, stream_id: str) -> None:
        """The stream ended: every worker drops its state."""
        self._spawn(self.nc.publish(RELEASE, headers={"stream_id": stream_id}))

    def run_windows(
        self, windows: np.ndarray, jobs: Sequence[WindowJob] | None = None
    ) -> Future[WindowScores]:
        """Score ``(n, samples)`` float32 windows on one worker (an upload)."""
        future = check_windows(windows, jobs, self._labels)
        if future.done():
            return future
        if self._stopped:
            future.set_exception(EngineStopped("the engine stopped"))
            return future
        self._spawn(self._oneshot(np.ascontiguousarray(windows, dtype="<f4"), future))
        return future

    # -- requests ---------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, job: WindowJob) -> None:
        self._in_flight[job.stream_id] = job
        self._spawn(self._request(job))

    async def _send_warm(self, job: WindowJob) -> None:
        headers, payload = job_message(job)
        subject, _ = self._subject(job.stream_id)
        await self.nc.publish(subject, payload, headers=headers)

    async def _ask_workers(self, job: WindowJob) -> Msg:
        """The reply to ``job`` from its stream's worker, the next one when NATS says a worker
        is not there (each forgotten), the queue group when none is left."""
        from nats.errors import NoRespondersError

        headers, payload = job_message(job)
        while True:
            subject, worker = self._subject(job.stream_id)
            try:
                reply: Msg = await self.nc.request(
                    subject, payload, timeout=self._timeout_s, headers=headers
                )
                return reply
            except NoRespondersError:
                if worker is None:
                    raise
                self._workers.pop(worker, None)
            except TimeoutError:
                if worker is not None:  # heard again at its next presence if it lives
                    self._workers.pop(worker, None)
                raise

    async def _request(self, job: WindowJob) -> None:
        from nats.errors import Error as NatsError

        try:
            self._answered(job, await self._ask_workers(job))
        except (TimeoutError, NatsError) as exc:  # no worker, or it died with the window
            self.timed_out += 1
            log.warning("window of stream %s lost: %s", job.stream_id, exc or "timeout")
            self._on_replaced(job)
        except asyncio.CancelledError:
            self._on_replaced(job)
            raise
        finally:
            if self._in_flight.get(job.stream_id) is job:
                del self._in_flight[job.stream_id]
            following = self._waiting.pop(job.stream_id, None)
            if following is not None and not self._stopped:
                self._send(following)

    def _answered(self, job: WindowJob, reply: Msg) -> None:
        headers = reply.headers or {}
        status = headers.get("status")
        if status == "ok":
            try:
                scores = scores_from_bytes(reply.data, 1, self._labels)
            except ValueError as exc:
                self._on_error([job], ClusterError(f"a worker sent bad scores: {exc}"))
                return
            result = WindowResult(
                job,
                scores.probs[0],
                batch_size=int(headers.get("batch", "1")),
                batch_seconds=float(headers.get("seconds", "0")),
                level_dbfs=float(scores.level_dbfs[0]),
                speech_prob=float(scores.speech[0]),
            )
            self._on_results([result])
        elif status == "replaced":
            self._on_replaced(job)
        else:
            reason = headers.get("reason", f"status {status!r}")
            self._on_error([job], ClusterError(f"a worker failed the window: {reason}"))

    async def _oneshot(self, windows: np.ndarray, future: Future[WindowScores]) -> None:
        from nats.errors import Error as NatsError

        n, samples = windows.shape
        headers = {ONESHOT: str(n), "samples": str(samples)}
        try:
            reply = await self.nc.request(
                WINDOWS, windows.tobytes(), timeout=self._timeout_s * max(1, n), headers=headers
            )
            status = (reply.headers or {}).get("status")
            if status != "ok":
                reason = (reply.headers or {}).get("reason", f"status {status!r}")
                raise ClusterError(f"a worker failed the windows: {reason}")
            try:
                future.set_result(scores_from_bytes(reply.data, n, self._labels))
            except ValueError as exc:
                raise ClusterError(f"a worker sent bad scores: {exc}") from None
        except (TimeoutError, NatsError) as exc:
            future.set_exception(ClusterError(f"no worker scored the windows: {exc or 'timeout'}"))
        except ClusterError as exc:
            future.set_exception(exc)
        except asyncio.CancelledError:
            future.set_exception(EngineStopped("the engine stopped"))
            raise
