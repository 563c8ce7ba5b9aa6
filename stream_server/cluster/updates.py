"""Every node's messages in one JetStream stream: one cluster-wide ``seq``, and every node's
subscribers get every stream's messages, in one order.

A node publishes each message (``stream.started``, ``genre.update``, ``genre.change``,
``title``, ``stream.ended``) to ``genrecast.updates.<stream id>`` in the stream
:data:`STREAM`, as its JSON with ``seq`` 0. The message's ``seq`` is its JetStream stream
sequence: strictly increasing across the cluster, the same for every node. Every node follows
the stream with an ordered consumer, starting ``updates.history_size`` messages back, and hands
each message, stamped with its sequence, to its hub (a :class:`Hub`: the node's
:class:`~stream_server.serve.hub.UpdateHub`), so every node's hub holds the same history and a
subscriber may resume with ``since`` on any node. The stream keeps the newest
``cluster.updates_kept`` messages, on ``replicas`` servers (``cluster.replicas``; 0: the
stream's own where it exists, else as many as the cluster has, up to 3), so it outlives the
loss of a server (with 3).

Errors (``error`` messages, not kept) go to every node on :data:`NOTICES` without JetStream.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from stream_server.errors import ClusterError
from stream_server.messages import ErrorMessage, PublishedMessage, dumps, error, stamp_seq

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

log = logging.getLogger(__name__)

_T = TypeVar("_T")

__all__ = [
    "NOTICES",
    "STREAM",
    "SUBJECTS",
    "Hub",
    "UpdateBus",
    "cluster_size",
    "jetstream_not_ready",
    "replicas_for",
    "subject_of",
    "when_jetstream_answers",
]

STREAM: Final = "GENRECAST_UPDATES"
SUBJECTS: Final = "genrecast.updates"
NOTICES: Final = "genrecast.notices"
#: Seconds per try to publish an update, and seconds an update is tried before it is given
#: up: a NATS server lost meanwhile takes the client a reconnect and the stream, if it led it,
#: an election (a few seconds); the retries, deduplicated, go on until then, the later updates
#: waiting behind them (their order is the stream's).
PUBLISH_TIMEOUT_S: Final = 2.0
PUBLISH_GIVE_UP_S: Final = 30.0
#: Seconds a node has at its start to read the kept history into its hub.
CATCH_UP_S: Final = 30.0
#: The same for a ``stream.started``, whose client waits for its answer.
STAMPED_GIVE_UP_S: Final = 10.0
#: Seconds between two tries.
PUBLISH_RETRY_S: Final = 0.25
#: Seconds a node has at its start for JetStream to answer at all.
JETSTREAM_READY_S: Final = 60.0
#: Most messages a resume reads back from the stream (the newest; a ``resume_gap`` before).
REPLAY_MAX: Final = 50_000
#: A stream id as a subject token: what genrecast makes (hex) and more, never ``.``, ``*``, ``>``.
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def subject_of(stream_id: str) -> str:
    if not _TOKEN.fullmatch(stream_id):
        raise ValueError(f"stream id {stream_id!r} is not a subject token")
    return f"{SUBJECTS}.{stream_id}"


def cluster_size(nc: Client) -> int:
    """The NATS servers ``nc`` knows of: those configured and those their cluster told of."""
    return max(1, len({(url.hostname, url.port) for url in nc.servers}))


def jetstream_not_ready(exc: BaseException) -> bool:
    """JetStream did not answer yet: a timeout, no responders, or 503 (no meta leader yet)."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeoutError
    from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

    return isinstance(
        exc, NatsTimeoutError | NoRespondersError | NoStreamResponseError | ServiceUnavailableError
    )


async def when_jetstream_answers(make: Callable[[], Awaitable[_T]], what: str) -> _T:
    """``make()``, tried again while JetStream does not answer yet (the servers of a cluster
    that just started elect a leader first), up to :data:`JETSTREAM_READY_S` seconds.

    Raises:
        ClusterError: it still did not answer then.
    """
    deadline = time.monotonic() + JETSTREAM_READY_S
    while True:
        try:
            return await make()
        except Exception as exc:
            if not jetstream_not_ready(exc):
                raise
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{what}: JetStream did not answer within {JETSTREAM_READY_S:g} s ({exc})"
                ) from None
            log.info("%s: JetStream is not ready yet (%s); trying again", what, exc)
            await asyncio.sleep(0.5)


def replicas_for(nc: Client, configured: int, existing: int | None) -> int:
    """The replicas of a stream or bucket: ``configured`` (``cluster.replicas``) when set,
    else the one that exists keeps its own (a node started while a server was down does not
    shrink it), else as many as the servers, up to 3."""
    return configured or existing or min(3, cluster_size(nc))


class Hub(Protocol):
    """What the bus needs of a node's hub (:class:`~stream_server.serve.hub.UpdateHub`)."""

    @property
    def seq(self) -> int: ...

    def deliver(self, seq: int, stream_id: str, text: str) -> None: ...

    def notify_text(self, stream_id: str | None, text: str) -> None: ...


class UpdateBus:
    """See the module docstring: :meth:`open`, then :meth:`publish`."""

    def __init__(self, nc: Client, hub: Hub, *, replicas: int, kept: int, history: int) -> None:
        self.nc = nc
        self.hub = hub
        #: 0: the stream's own where it exists, else as many as the servers, up to 3.
        self.replicas = replicas
        self.kept = kept
        self.history = history
        self._js: Any = None
        self._sub: Any = None
        self._notices: Any = None
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        #: JetStream drops a message whose id it stored in the last two minutes: a publish
        #: retried after a lost acknowledgement is stored once.
        self._ids = (f"{uuid.uuid4().hex[:12]}-{n}" for n in itertools.count(1))
        self._sender: asyncio.Task[None] | None = None
        #: Updates given up after :data:`PUBLISH_GIVE_UP_S`.
        self.lost = 0

    async def open(self) -> None:
        """Make (or update) the stream and follow it.

        Raises:
            ClusterError: JetStream refused the stream (e.g. more replicas than servers).
        """
        from nats.js.api import ConsumerConfig, DeliverPolicy

        js = self.nc.jetstream()
        last = await when_jetstream_answers(lambda: self._make(js), f"the updates stream {STREAM}")
        self._js = js
        start = max(1, last - self.history + 1)
        consumer = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
        )
        self._sub = await js.subscribe(
            f"{SUBJECTS}.>", cb=self._on_message, ordered_consumer=True, config=consumer
        )
        self._notices = await self.nc.subscribe(NOTICES, cb=self._on_notice)
        self._sender = asyncio.create_task(self._send())
        # caught up with what was there before it opened: a resume finds it
        deadline = time.monotonic() + CATCH_UP_S
        while self.hub.seq < last:
            if time.monotonic() > deadline:
                raise ClusterError(f"the updates stream was not read up to {last} in time")
            await asyncio.sleep(0.01)

    async def _make(self, js: Any) -> int:
        """Make (or update) the stream; its last sequence."""
        from nats.errors import Error as NatsApiError
        from nats.js.api import DiscardPolicy, StorageType, StreamConfig
        from nats.js.errors import BadRequestError, NotFoundError
        from nats.js.errors import Error as JetStreamError

        try:
            try:
                existing: StreamConfig | None = (await js.stream_info(STREAM)).config
            except NotFoundError:
                existing = None
            replicas = replicas_for(
                self.nc, self.replicas, existing.num_replicas if existing else None
            )
            config = StreamConfig(
                name=STREAM,
                subjects=[f"{SUBJECTS}.>"],
                num_replicas=replicas,
                max_msgs=self.kept,
                discard=DiscardPolicy.OLD,
                storage=StorageType.FILE,
            )
            if existing is None:
                try:
                    await js.add_stream(config)
                except BadRequestError:  # another node made it meanwhile, else this raises
                    await js.stream_info(STREAM)
            elif (existing.num_replicas, existing.max_msgs) != (replicas, self.kept):
                await js.update_stream(config)  # the configured limits
            return int((await js.stream_info(STREAM)).state.last_seq)
        except (JetStreamError, NatsApiError) as exc:
            if jetstream_not_ready(exc):
                raise
            raise ClusterError(f"the updates stream {STREAM} could not be made: {exc}") from None

    async def close(self) -> None:
        """Send what is queued, then stop following."""
        if self._sender is not None:
            await self._queue.join()
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        for sub in (self._sub, self._notices):
            if sub is not None:
                await sub.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        stream_id = msg.subject[len(SUBJECTS) + 1 :]
        self.hub.deliver(seq, stream_id, stamp_seq(msg.data.decode(), seq))

    async def _on_notice(self, msg: Msg) -> None:
        stream_id = (msg.headers or {}).get("stream_id") or None
        self.hub.notify_text(stream_id, msg.data.decode())

    async def replay(self, since: int, stream_id: str | None) -> tuple[list[str], int]:
        """The kept messages after ``since`` (of ``stream_id``, else every stream's), stamped,
        for a subscriber resuming further back than its node's hub keeps; and the ``seq`` they
        reach (up to the stream's last message when asked). At most :data:`REPLAY_MAX`, the
        newest; a ``resume_gap`` error first where older ones are not kept (any more)."""
        from nats.js.api import ConsumerConfig, DeliverPolicy

        info = await self._js.stream_info(STREAM)
        first, last = int(info.state.first_seq), int(info.state.last_seq)
        start = max(since + 1, first, last - REPLAY_MAX + 1)
        texts: list[str] = []
        if since < last and start > since + 1:
            gap = error(
                "resume_gap",
                f"messages {since + 1}..{start - 1} are no longer kept; resuming from {start}",
            )
            texts.append(dumps(gap))
        if start > last:
            return texts, last
        subject = subject_of(stream_id) if stream_id else f"{SUBJECTS}.>"
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        sub = await self._js.subscribe(subject, ordered_consumer=True, config=config)
        reached = last
        try:
            # messages the server sent before it answered are queued here already: count them
            if (await sub.consumer_info()).num_pending or sub.pending_msgs:
                while True:
                    msg = await sub.next_msg(timeout=CATCH_UP_S)
                    seq = int(msg.metadata.sequence.stream)
                    texts.append(stamp_seq(msg.data.decode(), seq))
                    reached = max(reached, seq)
                    if msg.metadata.num_pending == 0:
                        break
        finally:
            await sub.unsubscribe()
        return texts, reached

    def publish(self, message: PublishedMessage) -> None:
        """Queue ``message`` (seq 0) for the stream; sent in order, each once acknowledged."""
        self._queue.put_nowait((subject_of(message["stream_id"]), dumps(message)))

    async def publish_stamped(self, message: PublishedMessage) -> str:
        """Send ``message`` now and wait for its sequence; its stamped JSON (as every hub gets
        it)."""
        text = dumps(message)
        headers = {"Nats-Msg-Id": next(self._ids)}
        seq = await self._publish(
            subject_of(message["stream_id"]), text, headers, STAMPED_GIVE_UP_S
        )
        if seq is None:
            raise ClusterError("the cluster's updates stream took no message")
        return stamp_seq(text, seq)

    async def _publish(
        self, subject: str, text: str, headers: dict[str, str], give_up_s: float
    ) -> int | None:
        """Publish until acknowledged (its sequence) or ``give_up_s`` passed (``None``)."""
        from nats.errors import Error as NatsError

        give_up = time.monotonic() + give_up_s
        while True:  # through a server's loss
            try:
                ack = await self._js.publish(
                    subject, text.encode(), timeout=PUBLISH_TIMEOUT_S, headers=headers
                )
                return int(ack.seq)
            except (TimeoutError, NatsError) as exc:
                if time.monotonic() > give_up:
                    self.lost += 1
                    log.error("an update on %s was lost: %s", subject, exc)
                    return None
                log.warning("an update on %s is tried again: %s", subject, exc)
                await asyncio.sleep(PUBLISH_RETRY_S)

    def notify(self, message: ErrorMessage) -> None:
        """An ``error`` to the subscribers of its stream on every node; not kept."""
        headers = {"stream_id": message.get("stream_id") or ""}
        task = asyncio.ensure_future(
            self.nc.publish(NOTICES, dumps(message).encode(), headers=headers)
        )
        task.add_done_callback(_logged)

    async def _send(self) -> None:
        while True:
            subject, text = await self._queue.get()
            headers = {"Nats-Msg-Id": next(self._ids)}
            try:
                await self._publish(subject, text, headers, PUBLISH_GIVE_UP_S)
            finally:
                self._queue.task_done()


def _logged(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a notice could not be sent: %s", task.exception())
