"""``genrecast worker --cluster URLS``: an inference worker, the one owner of its device.

It loads the configured model behind a local :class:`~stream_server.inference.engine.Engine`
(the same batching, "latest wins" per stream and stream table as ``genrecast serve``), joins
the queue group :data:`~stream_server.cluster.protocol.WORKERS` on
:data:`~stream_server.cluster.protocol.WINDOWS` and answers each window request with its scores
(:mod:`stream_server.cluster.protocol`), so one batch mixes the windows of every node that sent
some. It also takes windows on its own subject (the streams the nodes route to it) and says it
is there every :data:`~stream_server.cluster.protocol.PRESENCE_S` seconds. SIGINT/SIGTERM: it
says it leaves (the nodes move its streams at once), leaves the queue group and exits (a window
it still held is counted as skipped by its node after ``cluster.request_timeout_s``, as one a
killed worker held).

NATS callbacks run on the event loop; the engine thread hands its results over with
``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_server.cluster.protocol import (
    ONESHOT,
    PRESENCE,
    PRESENCE_S,
    RELEASE,
    WHO,
    WINDOWS,
    WORKERS,
    direct_subject,
    job_from_message,
)
from stream_server.config import Config
from stream_server.core.windows import (
    WindowEngine,
    WindowJob,
    WindowResult,
    WindowScores,
    scores_bytes,
)
from stream_server.errors import ClusterError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

log = logging.getLogger(__name__)

__all__ = ["InferenceWorker", "connect", "run_inference_worker"]


#: Seconds a node or worker has at its start to log in to a NATS server; after that it only
#: reconnects (for ever) to a server lost on the way.
CONNECT_GIVE_UP_S = 15.0


def nats_password(config: Config) -> str | None:
    """The password for ``cluster.user`` (from ``$cluster.password_env``); ``None`` without a
    user. Checked before anything loads.

    Raises:
        ClusterError: ``cluster.urls`` is empty, or the user has no password.
    """
    cfg = config.cluster
    if not cfg.urls:
        raise ClusterError("cluster.urls is empty: name a NATS server (or pass --cluster)")
    password = os.environ.get(cfg.password_env) if cfg.user else None
    if cfg.user and not password:
        raise ClusterError(f"cluster.user is set but ${cfg.password_env} is empty")
    return password


async def connect(config: Config, name: str) -> Client:
    """A NATS client on ``cluster.urls`` that reconnects for ever once connected (credentials
    from ``cluster.user`` and the ``cluster.password_env`` variable).

    Raises:
        ClusterError: no server could be reached within :data:`CONNECT_GIVE_UP_S`, or the
            servers refused the credentials.
    """
    import nats
    from nats.errors import Error as NatsError

    cfg = config.cluster
    password = nats_password(config)
    servers = ", ".join(cfg.urls)
    refused: list[str] = []

    async def report(exc: Exception) -> None:
        if "authorization" in str(exc).lower():
            refused.append(str(exc))  # a wrong user or password: no retry will do
        log.warning("NATS: %s", exc)

    connecting = asyncio.ensure_future(
        nats.connect(
            servers=list(cfg.urls),
            name=name,
            user=cfg.user or None,
            password=password,
            connect_timeout=5,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=report,
        )
    )
    deadline = asyncio.get_running_loop().time() + CONNECT_GIVE_UP_S
    while not connecting.done() and not refused:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    if not connecting.done():
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        if refused:
            raise ClusterError(
                f"NATS at {servers} refused the credentials of cluster.user {cfg.user!r} "
                f"(${cfg.password_env}): {refused[0]}"
            )
        raise ClusterError(f"cannot reach NATS at {servers} within {CONNECT_GIVE_UP_S:g} s")
    try:
        return connecting.result()
    except (OSError, NatsError) as exc:
        raise ClusterError(f"cannot reach NATS at {servers}: {exc}") from None


class InferenceWorker:
    """Answers window requests with ``engine`` (started, results through
    :meth:`results_threadsafe` and :meth:`failed_threadsafe`)."""

    def __init__(self, nc: Client, loop: asyncio.AbstractEventLoop) -> None:
        self.nc = nc
        #: This worker's name among the workers (its direct subject's last token).
        self.id = uuid.uuid4().hex[:12]
        self.engine: WindowEngine | None = None
        self._loop = loop
        self._presence: asyncio.Task[None] | None = None
        #: Reply subjects of the windows the engine holds.
        self._replies: dict[WindowJob, str] = {}

    async def serve(self, engine: WindowEngine) -> None:
        """Join the queue group with ``engine``."""
        self.engine = engine
        await self.nc.subscribe(WINDOWS, queue=WORKERS, cb=self._on_window)
        await self.nc.subscribe(direct_subject(self.id), cb=self._on_window)
        await self.nc.subscribe(RELEASE, cb=self._on_release)
        await self.nc.subscribe(WHO, cb=self._on_who)
        await self.nc.flush()
        self._presence = asyncio.create_task(self._say_present())

    async def leave(self) -> None:
        """Stop saying it is there, and tell the nodes it goes (they move its streams now)."""
        if self._presence is not None:
            self._presence.cancel()
            await asyncio.gather(self._presence, return_exceptions=True)
        await self.nc.publish(PRESENCE, headers={"worker": self.id, "leaving": "1"})
        await self.nc.flush()

    def presence(self) -> dict[str, str]:
        """What a presence message says: the worker, its device and precision, whether its
        model keeps state per stream (``1``/``0``) and its largest batch."""
        headers = {"worker": self.id}
        runner = getattr(self.engine, "runner", None)
        if runner is not None and self.engine is not None:
            headers |= {
                "device": str(runner.device),
                "precision": runner.precision,
                "stream_state": "1" if runner.table is not None else "0",
                "max_batch": str(self.engine.max_batch),
            }
        return headers

    async def _say_present(self) -> None:
        while True:
            await self.nc.publish(PRESENCE, headers=self.presence())
            await asyncio.sleep(PRESENCE_S)

    async def _on_who(self, msg: Msg) -> None:
        await self.nc.publish(PRESENCE, headers=self.presence())

    async def _on_window(self, msg: Msg) -> None:
        assert self.engine is not None
        if msg.headers and ONESHOT in msg.headers:
            self._spawn(self._oneshot(msg))
            return
        try:
            job = job_from_message(msg.headers, msg.data)
        except ValueError as exc:
            if msg.reply:
                await self.nc.publish(msg.reply, headers={"status": "failed", "reason": str(exc)})
            return
        if not job.warm and msg.reply:
            self._replies[job] = msg.reply
        replaced = self.engine.submit(job)
        if replaced is not None:
            reply = self._replies.pop(replaced, None)
            if reply is not None:
                await self.nc.publish(reply, headers={"status": "replaced"})

    async def _oneshot(self, msg: Msg) -> None:
        assert self.engine is not None and msg.headers is not None
        try:
            n, samples = int(msg.headers[ONESHOT]), int(msg.headers["samples"])
            windows = np.frombuffer(msg.data, dtype="<f4").reshape(n, samples).astype(np.float32)
            scores = await asyncio.wrap_future(self.engine.run_windows(windows))
        except Exception as exc:  # a bad request or a failed run: the node hears why
            if msg.reply:
                await self.nc.publish(msg.reply, headers={"status": "failed", "reason": str(exc)})
            return
        if msg.reply:
            await self.nc.publish(msg.reply, scores_bytes(scores), headers={"status": "ok"})

    async def _on_release(self, msg: Msg) -> None:
        stream_id = (msg.headers or {}).get("stream_id")
        if stream_id and self.engine is not None:
            dropped = self.engine.cancel(stream_id)
            if dropped is not None and (reply := self._replies.pop(dropped, None)) is not None:
                await self.nc.publish(reply, headers={"status": "replaced"})
            self.engine.release(stream_id)

    def results_threadsafe(self, results: Sequence[WindowResult]) -> None:
        self._loop.call_soon_threadsafe(self._spawn, self._results(results))

    def failed_threadsafe(self, jobs: Sequence[WindowJob], exc: BaseException) -> None:
        self._loop.call_soon_threadsafe(self._spawn, self._failed(jobs, str(exc)))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(_log_failure)

    async def _results(self, results: Sequence[WindowResult]) -> None:
        for result in results:
            reply = self._replies.pop(result.job, None)
            if reply is not None:
                payload = scores_bytes(WindowScores.of_results([result]))
                headers = {
                    "status": "ok",
                    "batch": str(result.batch_size),
                    "seconds": f"{result.batch_seconds:.6f}",
                }
                await self.nc.publish(reply, payload, headers=headers)

    async def _failed(self, jobs: Sequence[WindowJob], reason: str) -> None:
        for job in jobs:
            reply = self._replies.pop(job, None)
            if reply is not None:
                await self.nc.publish(reply, headers={"status": "failed", "reason": reason})


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a reply could not be sent: %s", task.exception())


def _where(nc: Client) -> str:
    url = nc.connected_url
    return "?" if url is None else f"nats://{url.netloc}"


def run_inference_worker(config: Config) -> None:
    """The worker's main: load, serve until SIGINT/SIGTERM, stop (blocking)."""
    asyncio.run(_main(config))


async def _main(config: Config) -> None:
    from stream_server.inference.loading import load_configured_model, start_engine

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await connect(config, "genrecast-worker")
    worker = InferenceWorker(nc, loop)
    try:
        model = await asyncio.to_thread(load_configured_model, config)
        engine = await asyncio.to_thread(
            start_engine,
            config,
            model,
            on_results=worker.results_threadsafe,
            on_error=worker.failed_threadsafe,
        )
        try:
            await worker.serve(engine)
            runner = engine.runner
            print(
                f"genrecast worker {worker.id} ready: {model.source} on {runner.device} "
                f"({runner.precision}), serving {WINDOWS} in queue group {WORKERS} via "
                f"{_where(nc)}",
                flush=True,
            )
            await stop.wait()
            await worker.leave()
            await nc.drain()  # leave the group; what was received is handed to the engine
        finally:
            await asyncio.to_thread(engine.stop)
    finally:
        if not nc.is_closed:
            await nc.close()
