"""A node's engine in a cluster: the inference workers behind NATS, as the
:class:`~stream_server.core.windows.WindowEngine` protocol.

Each due window is a request to the workers' queue group (:mod:`stream_server.cluster.protocol`).
"Latest wins" holds here already: a stream has at most one window in flight and one waiting;
a newer window replaces the waiting one (reported through ``on_replaced``, as skipped). A
window whose scores do not come back within ``cluster.request_timeout_s`` (its worker died, or
no worker is there) is reported the same way, so a stream loses that one window and goes on
with the next, which NATS hands to a live worker. Warm-up jobs go without a reply subject.
One-shot runs (uploads) go as one request of float32 windows.

Everything runs on the node's event loop; results, failures and replaced windows are reported
on it too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_server.cluster.protocol import (
    ONESHOT,
    RELEASE,
    WINDOWS,
    job_message,
    scores_from_reply,
)
from stream_server.core.windows import (
    ErrorCallback,
    ResultsCallback,
    WindowJob,
    WindowResult,
    WindowScores,
    check_windows,
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
        await self.nc.publish(WINDOWS, payload, headers=headers)

    async def _request(self, job: WindowJob) -> None:
        from nats.errors import Error as NatsError

        headers, payload = job_message(job)
        try:
            reply = await self.nc.request(
                WINDOWS, payload, timeout=self._timeout_s, headers=headers
            )
            self._answered(job, reply)
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
                scores = scores_from_reply(reply.data, self._labels)
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
            flat = np.frombuffer(reply.data, dtype="<f4").astype(np.float32)
            if flat.size != n * (self._labels + 2):
                raise ClusterError(f"a worker sent {flat.size} values for {n} windows")
            probs = flat[: n * self._labels].reshape(n, self._labels)
            tail = flat[n * self._labels :]
            future.set_result(WindowScores(probs, tail[:n], tail[n:]))
        except (TimeoutError, NatsError) as exc:
            future.set_exception(ClusterError(f"no worker scored the windows: {exc or 'timeout'}"))
        except ClusterError as exc:
            future.set_exception(exc)
        except asyncio.CancelledError:
            future.set_exception(EngineStopped("the engine stopped"))
            raise
