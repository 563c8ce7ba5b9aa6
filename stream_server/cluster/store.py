"""A cluster's archive: streams, timelines and titles in JetStream key-value buckets, written
once (by the node that runs the stream) and read from every node, kept on ``replicas``
servers so they outlive the loss of a server or a node. Also the register of live streams.

Buckets (keys are stream ids, which are subject tokens: :func:`~.updates.subject_of`):

- :data:`STREAMS`: ``<stream id>`` → the stream's :class:`~stream_server.core.records.StreamRecord`
  as JSON, with its :class:`~stream_server.core.records.StreamOutcome` (how it ended, its
  summary) once it has ended.
- :data:`TIMELINES`: ``<stream id>.s.<index>`` → segment ``index`` of its timeline
  (:class:`~stream_server.core.timeline.Segment` as JSON); ``<stream id>.t.<n>`` → a title
  it announced (:class:`~stream_server.core.records.TrackTitle`; ``n``: its wall time in
  nanoseconds, so titles read back in the order announced).
- :data:`LIVE`: ``<stream id>`` → the stream as ``GET /streams`` describes it live, put by its
  node every :data:`LIVE_S` seconds and kept :data:`LIVE_TTL_S`: a stream of a node that died
  drops out of it; its record, never ended, then reads as lost.

:class:`ClusterStore` is a :class:`~stream_server.core.records.StreamArchive`: its methods are
synchronous, called from the service's database thread; each runs its NATS calls on the node's
event loop (where the client lives) and waits for them, at most :data:`STORE_TIMEOUT_S`.
A tail of several segments is several keys: a node that dies while writing one may leave the
old tail's last segments behind the new one's first (the next write of the stream rewrites
them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from stream_server.cluster.updates import (
    jetstream_not_ready,
    replicas_for,
    subject_of,
    when_jetstream_answers,
)
from stream_server.core.records import StreamOutcome, StreamRecord, Tail, TrackTitle
from stream_server.core.timeline import Segment
from stream_server.errors import ClusterError, StorageError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

__all__ = [
    "LIVE",
    "LIVE_S",
    "LIVE_TTL_S",
    "STREAMS",
    "TIMELINES",
    "ClusterStore",
    "bucket",
    "json_bytes",
    "key_values",
]

STREAMS: Final = "GENRECAST_STREAMS"
TIMELINES: Final = "GENRECAST_TIMELINES"
LIVE: Final = "GENRECAST_LIVE"
#: Seconds between two puts of a node's live streams, and seconds one is kept without a put.
LIVE_S: Final = 2.0
LIVE_TTL_S: Final = 10.0
#: Longest wait, in seconds, for one archive operation (its NATS calls, retries included).
STORE_TIMEOUT_S: Final = 30.0
#: Seconds between two tries of writes that failed (a NATS server lost: a reconnect, an
#: election; doubling up to ``MAX_RETRY_S``), and the longest :meth:`ClusterStore.close` waits
#: for what is still unwritten.
RETRY_S: Final = 0.25
MAX_RETRY_S: Final = 4.0
CLOSE_FLUSH_S: Final = 10.0

_T = TypeVar("_T")


class ClusterStore:
    """See the module docstring: :meth:`open` on the loop, then the archive's methods from
    another thread; :meth:`put_live`, :meth:`forget_live` and :meth:`live` on the loop."""

    def __init__(self, nc: Client, *, replicas: int) -> None:
        self.nc = nc
        #: 0: each bucket's own where it exists, else as many as the servers, up to 3.
        self.replicas = replicas
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._streams: KeyValue | None = None
        self._timelines: KeyValue | None = None
        self._live: KeyValue | None = None
        #: Segments each stream this node wrote has (what a shorter tail must delete).
        self._lengths: dict[str, int] = {}
        self._closed = False
        # Writes not done yet (from the database thread, under the lock): each stream's tail,
        # merged (a later tail replaces what it overlaps), and other writes in order.
        self._lock = threading.Lock()
        self._tails: dict[str, tuple[int, list[Segment]]] = {}
        self._writing: dict[str, tuple[int, list[Segment]]] = {}  # the ones in flight
        self._ops: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self._wake: asyncio.Event | None = None
        self._write_lock: asyncio.Lock | None = None
        self._writer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Make (or bind) the buckets.

        Raises:
            ClusterError: JetStream refused a bucket (e.g. more replicas than servers).
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._streams = await bucket(self.nc, STREAMS, replicas=self.replicas, ttl=None)
        self._timelines = await bucket(self.nc, TIMELINES, replicas=self.replicas, ttl=None)
        self._live = await bucket(self.nc, LIVE, replicas=self.replicas, ttl=LIVE_TTL_S)
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._writer = asyncio.create_task(self._write_forever())

    # -- writes: behind, retried --------------------------------------------------------

    def _queue_tail(self, stream_id: str, index: int, segments: Sequence[Segment]) -> None:
        """Merge a tail into the stream's unwritten one (any thread, under the lock)."""
        pending = self._tails.get(stream_id)
        if pending is not None and pending[0] < index <= pending[0] + len(pending[1]):
            first, earlier = pending
            self._tails[stream_id] = (first, [*earlier[: index - first], *segments])
        else:  # it starts at or before the unwritten one (or there is none): it replaces it
            self._tails[stream_id] = (index, list(segments))

    def _queued(self, operation: str, write: Callable[[], Awaitable[None]]) -> None:
        with self._lock:
            self._ops.append((operation, write))
        self._kick()

    def _kick(self) -> None:
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _write_forever(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            pause = RETRY_S
            while not await self._write_pending():  # a server lost: try again, slower
                await asyncio.sleep(pause)
                pause = min(2 * pause, MAX_RETRY_S)

    async def _write_pending(self) -> bool:
        """Write everything queued once; what failed is queued again. Whether all went. One
        round at a time (a :meth:`flush` waits for the writer's round in flight)."""
        assert self._write_lock is not None
        async with self._write_lock:
            return await self._write_round()

    async def _write_round(self) -> bool:
        from nats.errors import Error as NatsError

        with self._lock:
            tails, self._tails = self._tails, {}
            ops, self._ops = self._ops, []
            self._writing = tails
        results = await asyncio.gather(
            *(self._write_tail(sid, first, segs) for sid, (first, segs) in tails.items()),
            return_exceptions=True,
        )
        failed_ops: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        for n, (operation, write) in enumerate(ops):
            try:
                await write()
            except (NatsError, TimeoutError) as exc:  # the rest after it, in order, next round
                log.warning("%s in the cluster's archive is tried again: %s", operation, exc)
                failed_ops = ops[n:]
                break
            except Exception as exc:  # nothing a retry would change
                log.error("%s in the cluster's archive failed: %s", operation, exc)
        again = []
        for (sid, tail), result in zip(tails.items(), results, strict=True):
            if isinstance(result, (NatsError, TimeoutError)):
                log.warning("stream %s: its timeline is written again: %s", sid, result)
                again.append((sid, tail))
            elif isinstance(result, Exception):  # not a server's loss: not retried
                log.error("stream %s: its timeline could not be written: %r", sid, result)
            elif isinstance(result, BaseException):
                raise result
        with self._lock:
            self._writing = {}
            for sid, (first, segs) in again:  # older than anything queued since
                newer = self._tails.pop(sid, None)
                self._tails[sid] = (first, segs)
                if newer is not None:
                    self._queue_tail(sid, *newer)
            self._ops[:0] = failed_ops
        return not again and not failed_ops

    def forget(self, stream_id: str) -> None:
        """Another node writes the stream now: drop its writes not done yet (any thread)."""
        with self._lock:
            self._tails.pop(stream_id, None)
        self._lengths.pop(stream_id, None)

    async def flush(self, timeout_s: float = CLOSE_FLUSH_S) -> bool:
        """Write what is queued, trying again until done or ``timeout_s`` seconds passed;
        whether all went."""
        try:
            async with asyncio.timeout(timeout_s):
                while not await self._write_pending():  # noqa: ASYNC110 - a server lost
                    await asyncio.sleep(RETRY_S)
        except TimeoutError:
            return False
        return True

    # -- the archive, from the database thread ------------------------------------------

    def _run(self, operation: str, coro: Coroutine[Any, Any, _T]) -> _T:
        """``coro`` on the node's loop, waited for here; NATS errors as :class:`StorageError`."""
        from nats.errors import Error as NatsError

        if self._loop is None or self._closed:
            coro.close()
            raise StorageError(f"{operation} on the cluster's archive failed: it is not open")
        if threading.get_ident() == self._loop_thread:
            coro.close()
            raise RuntimeError("the cluster's archive is called on its event loop's thread")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(STORE_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise StorageError(
                f"{operation} on the cluster's archive failed: no answer in {STORE_TIMEOUT_S:g} s"
            ) from None
        except (NatsError, TimeoutError) as exc:
            raise StorageError(f"{operation} on the cluster's archive failed: {exc}") from exc

    def add_stream(self, record: StreamRecord) -> None:
        """Keep a new stream.

        Raises:
            StorageError: a stream with the same id exists, or the write failed.
        """
        subject_of(record.stream_id)  # a key it can be
        self._run("add_stream", self._add_stream(record))

    async def _add_stream(self, record: StreamRecord) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        assert self._streams is not None
        try:
            await self._streams.create(record.stream_id, _record_bytes(record))
        except KeyWrongLastSequenceError:
            raise StorageError(
                f"add_stream on the cluster's archive failed: a stream with id "
                f"{record.stream_id!r} exists"
            ) from None

    def end_open_streams(self, ended_at: float) -> int:
        """Nothing, in a cluster: a node cannot tell the open streams a previous run of its own
        left from other nodes' live ones. A stream whose node died without ending it is
        listed as lost (its record never ended, no live entry); 0."""
        return 0

    def end_stream(
        self, stream_id: str, ended_at: float, outcome: StreamOutcome | None = None
    ) -> None:
        """Mark a stream ended at ``ended_at`` (wall-clock unix seconds), keeping ``outcome``
        with it (``None``: the outcome it has, if any, stays): queued, written behind (tried
        again through a server's loss); an unknown stream is logged then."""
        self._queued("end_stream", lambda: self._end_stream(stream_id, ended_at, outcome))

    async def _end_stream(
        self, stream_id: str, ended_at: float, outcome: StreamOutcome | None
    ) -> None:
        assert self._streams is not None
        record = await self._get_stream(stream_id)
        if record is None:
            raise StorageError(
                f"end_stream on the cluster's archive failed: no stream with id {stream_id!r}"
            )
        ended = dataclasses.replace(record, ended_at=ended_at, outcome=outcome or record.outcome)
        await self._streams.put(stream_id, _record_bytes(ended))
        self._lengths.pop(stream_id, None)

    def get_stream(self, stream_id: str) -> StreamRecord | None:
        """The stream with this id, or ``None``."""
        return self._run("get_stream", self._get_stream(stream_id))

    async def _get_stream(self, stream_id: str) -> StreamRecord | None:
        from nats.js.errors import NotFoundError

        assert self._streams is not None
        try:
            entry = await self._streams.get(stream_id, validate_keys=False)
        except NotFoundError:  # never put, deleted or purged
            return None
        return None if entry.value is None else _record(entry.value)

    def list_streams(self, limit: int = 100) -> list[StreamRecord]:
        """Up to ``limit`` (>= 0) streams of the whole cluster, newest ``created_at`` first.

        Raises:
            ValueError: ``limit`` is negative.
        """
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        records = self._run("list_streams", self._all_streams())
        records.sort(key=lambda record: record.created_at, reverse=True)
        return records[:limit]

    async def _all_streams(self) -> list[StreamRecord]:
        assert self._streams is not None
        return [_record(value) for _, value in await key_values(self._streams, ">")]

    def write_tail(self, stream_id: str, index: int, segments: Sequence[Segment]) -> None:
        """Make ``segments`` the stream's timeline from segment number ``index`` on: their keys
        put, the keys of a longer previous tail deleted. Queued (a newer tail of the stream
        merged into one not written yet) and written behind, tried again through a server's
        loss; this node reads its own unwritten tails (:meth:`timeline`).

        Raises:
            ValueError: ``index`` is negative.
        """
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index!r}")
        with self._lock:
            self._queue_tail(stream_id, index, segments)
        self._kick()

    async def _write_tail(self, stream_id: str, index: int, segments: Sequence[Segment]) -> None:
        assert self._timelines is not None
        kv = self._timelines
        length = self._lengths.get(stream_id)
        if length is None:  # a stream this node did not write yet: what the archive holds
            length = len(await key_values(kv, f"{stream_id}.s.*"))
        end = index + len(segments)
        puts = [
            kv.put(f"{stream_id}.s.{index + i}", json_bytes(dataclasses.asdict(segment)))
            for i, segment in enumerate(segments)
        ]
        deletes = [kv.delete(f"{stream_id}.s.{i}") for i in range(end, length)]
        await asyncio.gather(*puts, *deletes)
        self._lengths[stream_id] = end

    def write_tails(self, tails: Sequence[Tail]) -> list[tuple[str, str]]:
        """:meth:`write_tail` for many streams (their puts in flight together); returns
        ``(stream_id, reason)`` of each tail refused (a negative index), the others queued."""
        refused = [(sid, f"index must be >= 0, got {i!r}") for sid, i, _ in tails if i < 0]
        with self._lock:
            for stream_id, index, segments in tails:
                if index >= 0:
                    self._queue_tail(stream_id, index, segments)
        self._kick()
        return refused

    def timeline(self, stream_id: str) -> list[Segment]:
        """The stream's segments in order (empty for an unknown stream), with this node's
        tail of it not written yet."""
        with self._lock:  # before the read: a write done meanwhile is in it, or in these
            unwritten = [self._writing.get(stream_id), self._tails.get(stream_id)]
        stored = self._run("timeline", self._timeline(stream_id))
        for tail in unwritten:  # the one in flight, then the one queued since
            if tail is not None:
                stored = [*stored[: tail[0]], *tail[1]]
        return stored

    async def _timeline(self, stream_id: str) -> list[Segment]:
        assert self._timelines is not None
        found = await key_values(self._timelines, f"{stream_id}.s.*")
        found.sort(key=lambda item: int(item[0].rsplit(".", 1)[1]))
        return [Segment(**json.loads(value)) for _, value in found]

    def add_title(self, stream_id: str, title: TrackTitle) -> None:
        """Keep a title the stream announced (queued, written behind as :meth:`end_stream`)."""
        key = f"{stream_id}.t.{time.time_ns()}"
        kv = self._timelines
        assert kv is not None
        self._queued("add_title", lambda: _put(kv, key, json_bytes(dataclasses.asdict(title))))

    def titles(self, stream_id: str) -> list[TrackTitle]:
        """The stream's titles in the order announced (empty for an unknown stream)."""
        return self._run("titles", self._titles(stream_id))

    async def _titles(self, stream_id: str) -> list[TrackTitle]:
        assert self._timelines is not None
        found = await key_values(self._timelines, f"{stream_id}.t.*")
        found.sort(key=lambda item: int(item[0].rsplit(".", 1)[1]))
        return [TrackTitle(**json.loads(value)) for _, value in found]

    def prune(self, before_wall_time: float) -> int:
        """Delete every stream that ended before ``before_wall_time`` (wall-clock unix seconds),
        with its segments and titles; how many went (any node may prune: a second one finds
        nothing)."""
        return self._run("prune", self._prune(before_wall_time))

    async def _prune(self, before_wall_time: float) -> int:
        assert self._streams is not None
        js = self.nc.jetstream()
        old = [
            record.stream_id
            for record in await self._all_streams()
            if record.ended_at is not None and record.ended_at < before_wall_time
        ]
        for stream_id in old:
            await js.purge_stream(f"KV_{TIMELINES}", subject=f"$KV.{TIMELINES}.{stream_id}.>")
            await self._streams.purge(stream_id)
        return len(old)

    def close(self) -> None:
        """Write what is queued (for up to :data:`CLOSE_FLUSH_S`; what is left is logged),
        stop writing; later archive calls raise :class:`StorageError`. The client is the
        node's. Idempotent."""
        if self._closed or self._loop is None:
            self._closed = True
            return
        try:
            if not self._run("close", self.flush()):
                log.error("the cluster's archive closed with writes not done (NATS unreachable)")
        finally:
            if self._writer is not None:
                self._loop.call_soon_threadsafe(self._writer.cancel)
            self._closed = True

    # -- live streams, on the loop ------------------------------------------------------

    async def put_live(self, described: Sequence[dict[str, Any]]) -> None:
        """Put this node's live streams (as ``GET /streams`` describes them), all at once."""
        assert self._live is not None
        kv = self._live
        await asyncio.gather(*(kv.put(d["stream_id"], json_bytes(d)) for d in described))

    async def forget_live(self, stream_id: str) -> None:
        """A stream of this node ended: out of the live register at once."""
        assert self._live is not None
        await self._live.delete(stream_id)

    async def live(self) -> list[dict[str, Any]]:
        """Every node's live streams, as each node last put them."""
        assert self._live is not None
        return [json.loads(value) for _, value in await key_values(self._live, ">")]


async def bucket(nc: Client, name: str, *, replicas: int, ttl: float | None) -> KeyValue:
    """The key-value bucket ``name`` (one value per key; each forgotten ``ttl`` seconds after
    it was put, if given), made if it is not there, else bound as it is unless ``replicas``
    (:func:`~.updates.replicas_for`) asks for another count; tried again while JetStream does
    not answer yet (:func:`~.updates.when_jetstream_answers`).

    Raises:
        ClusterError: JetStream refused it (e.g. more replicas than servers), or did not answer.
    """
    return await when_jetstream_answers(
        lambda: _bucket(nc, name, replicas=replicas, ttl=ttl), f"the key-value bucket {name}"
    )


async def _bucket(nc: Client, name: str, *, replicas: int, ttl: float | None) -> KeyValue:
    from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
    from nats.js.errors import Error as JetStreamError

    js = nc.jetstream()
    stream = f"KV_{name}"
    try:
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            info = None
        if info is not None:
            if replicas and replicas != info.config.num_replicas:  # the configured count
                await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
            return await js.key_value(name)
        try:
            return await js.create_key_value(
                bucket=name, history=1, ttl=ttl, replicas=replicas_for(nc, replicas, None)
            )
        except BadRequestError as exc:  # another node made it meanwhile, else this raises
            try:
                return await js.key_value(name)
            except BucketNotFoundError:
                raise exc from None
    except JetStreamError as exc:
        if jetstream_not_ready(exc):  # tried again by bucket()
            raise
        raise ClusterError(f"the key-value bucket {name} could not be made: {exc}") from None


async def key_values(kv: KeyValue, keys: str) -> list[tuple[str, bytes]]:
    """``(key, value)`` of every key matching ``keys`` (a subject pattern), deleted ones left
    out, read through one watcher up to the bucket's present end."""
    # the consumer goes 5 s after this read (not nats-py's default 5 minutes)
    watcher: Any = await kv.watch(keys, inactive_threshold=5.0)  # nats-py leaves it untyped
    found: dict[str, bytes] = {}
    try:  # a key put or deleted while it is read: its last state counts
        while (entry := await watcher.updates(timeout=STORE_TIMEOUT_S)) is not None:
            if entry.operation is None and entry.value is not None:
                found[entry.key] = entry.value
            else:
                found.pop(entry.key, None)
        return list(found.items())
    finally:
        await watcher.stop()


async def _put(kv: KeyValue, key: str, value: bytes) -> None:
    await kv.put(key, value)


def json_bytes(value: Any) -> bytes:
    """``value`` as compact JSON bytes, as the buckets keep values."""
    return json.dumps(value, separators=(",", ":")).encode()


def _record_bytes(record: StreamRecord) -> bytes:
    return json_bytes(dataclasses.asdict(record))


def _record(value: bytes) -> StreamRecord:
    fields = json.loads(value)
    outcome = fields.pop("outcome", None)
    return StreamRecord(
        **fields, outcome=None if outcome is None else StreamOutcome.from_dict(outcome)
    )
