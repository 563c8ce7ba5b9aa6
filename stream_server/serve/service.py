"""The running service: live streams, the engine, the update hub, the store and the metrics.

This is the glue between the pure parts (sessions, hub) and the engine thread. It lives on the
event loop: engine results arrive through ``loop.call_soon_threadsafe`` and SQLite writes go to a
single writer thread, so the loop never waits on the model or the disk. The HTTP/WebSocket layer
(:mod:`stream_server.serve.app`) only moves bytes in and out of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from stream_server.config import Config
from stream_server.core.audio import validate_format
from stream_server.core.records import (
    StreamArchive,
    StreamOutcome,
    StreamRecord,
    Tail,
    TrackTitle,
)
from stream_server.core.session import SessionParams, StreamSession, score_batch
from stream_server.core.smoothing import SmoothingTable
from stream_server.core.summary import summarize
from stream_server.core.timeline import Segment
from stream_server.core.windows import WindowEngine, WindowJob, WindowResult
from stream_server.errors import ClusterError, ProtocolError, SourceRefused, StorageError
from stream_server.inference.facts import ModelFacts, session_params, window_seconds
from stream_server.messages import (
    MAX_NAME_CHARS,
    ErrorMessage,
    PublishedMessage,
    StartMessage,
    StreamEnded,
    StreamStarted,
    TrackChange,
    check_text,
    error,
)
from stream_server.serve.engine_link import EngineLink
from stream_server.serve.hub import Subscriber, UpdateHub
from stream_server.serve.metrics import Metrics, merge_metrics
from stream_server.serve.store import TimelineStore
from stream_server.serve.upload import Classifier
from stream_server.sources.puller import Puller
from stream_server.sources.source_policy import SourcePolicy, shown_source
from stream_server.types import FloatArray, SourceCounter, StreamSink, StreamState

if TYPE_CHECKING:  # torch: imported where the model runs (an ingest worker never does)
    from nats.aio.client import Client as NatsClient

    from stream_server.cluster.engine import ClusterEngine
    from stream_server.cluster.pulls import PullLeases, PullSpec
    from stream_server.cluster.store import ClusterStore
    from stream_server.cluster.updates import UpdateBus
    from stream_server.inference.runner import InferenceRunner

log = logging.getLogger(__name__)

#: PCM bytes or float32 samples, as :meth:`Service.feed` and :meth:`Service.feed_samples` take.
_Audio = TypeVar("_Audio", bytes, FloatArray)

#: Longest wait, in seconds, for a stream's last window to come back from the engine at its end.
DRAIN_TIMEOUT_S = 10.0

#: Why a cluster lists a stream as ``lost``: never ended, and no node puts it among its live ones.
LOST_REASON = "its node stopped without ending it"

#: Seconds between two prunings of the store (``storage.retention_days``) after the one at start.
PRUNE_INTERVAL_S = 3600.0

#: Streams listed by ``GET /streams`` beside the live ones: the newest stored.
LISTED_STORED = 100

#: Figures of an ended stream listed only where known (not for one whose outcome was read back
#: from its timeline).
_FIGURES_WHERE_KNOWN = ("stream_time_s", "windows_computed", "windows_skipped")

#: Outcomes of the streams that ended here kept in memory (the newest), for listings made before
#: the archive has them (a cluster's archive writes behind).
ENDED_KEPT = 256


@dataclass(eq=False)
class LiveStream:
    """A session plus what the service tracks around it on the event loop.

    ``state`` and the counters matter for pulled streams (:mod:`stream_server.sources.puller`):
    ``dropped`` audio chunks the loop could not take in time, ``corrupt_packets`` the decoder
    rejected, ``reconnects`` started, and ``last_error`` the latest failed connection (kept after
    the source is back), at ``last_error_at`` (unix seconds). Other kinds stay ``"live"`` with
    zero counters and no error.
    """

    session: StreamSession
    source: str
    outstanding: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False
    state: StreamState = "live"
    dropped: int = 0
    corrupt_packets: int = 0
    reconnects: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    title: str | None = None
    #: Who opened it (the client's address; empty: the server itself), for per-client limits.
    client: str = ""
    #: ``time.monotonic()`` of the last audio fed (or of the start): idle streams are ended.
    last_audio: float = field(default_factory=time.monotonic)
    #: Called on the loop with the ``stream.ended`` message when the stream ends, whoever ended
    #: it (the ingest connection uses it to close its socket after a ``DELETE``).
    on_end: Callable[[StreamEnded], None] | None = None
    #: A stream taken over from a node that died (a pulled station in a cluster): the
    #: segments its earlier nodes stored; this session's are numbered after them.
    earlier: list[Segment] = field(default_factory=list)

    def segments(self) -> list[Segment]:
        """The whole timeline: the earlier nodes' segments, then this session's."""
        return [*self.earlier, *self.session.segments()]

    def __post_init__(self) -> None:
        self.idle.set()

    def record(self) -> StreamRecord:
        """The stream as the store keeps it (not ended yet)."""
        s = self.session
        return StreamRecord(
            stream_id=s.stream_id,
            name=s.name,
            kind=s.kind,
            source=self.source,
            created_at=s.started_wall,
            ended_at=None,
            sample_rate=s.sample_rate,
            channels=s.channels,
            fmt=s.fmt,
        )


class Service:
    """Owns every live stream and the shared machinery; see the module docstring.

    With ``link`` the service is one ingest worker of ``genrecast serve --workers N``
    (:mod:`stream_server.serve.engine_link`): its engine is the engine process's, its messages
    are stamped there and reach every worker's hub, the stream limits are counted there, and
    listings, timelines, stops and metrics take in every worker's streams.
    """

    def __init__(
        self,
        config: Config,
        *,
        model: ModelFacts | None = None,
        link: EngineLink | None = None,
    ) -> None:
        self.config = config
        self.link = link
        self.metrics = Metrics()
        self.hub = UpdateHub(
            config.updates.queue_size,
            config.updates.history_size,
            on_drop=self._on_subscriber_dropped,
        )
        self.streams: dict[str, LiveStream] = {}
        # Streams between their checks and their registration (waiting for the store), by client.
        self._opening_by: dict[str, int] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        #: Set by :meth:`drain`: no new stream or upload is accepted.
        self.stopping = False
        #: The model: loaded here (``model``, else the configured one, once loading is done); a
        #: worker's is only its description (:class:`~stream_server.inference.facts.ModelInfo`).
        self.model: ModelFacts | None = model
        self.runner: InferenceRunner | None = None
        #: Where the model runs (``"cpu"``, ``"cuda:0"``) and in what
        #: (:attr:`~stream_server.inference.runner.InferenceRunner.precision`).
        self.device = ""
        self.precision = "float32"
        #: The model keeps state per stream (a stream's audio is taken in before its first
        #: full window: warm-up jobs).
        self.stream_state = False
        #: The live streams' smoothing and hysteresis, one slot each (made with the model).
        self.smoothing: SmoothingTable | None = None
        self.engine: WindowEngine | None = None
        #: A cluster node's engine (``cluster.urls`` set), also :attr:`engine`, and the
        #: updates stream its messages go through (stamped by JetStream, for every node).
        self.cluster_engine: ClusterEngine | None = None
        self.bus: UpdateBus | None = None
        #: The archive: the SQLite file (``storage.database``), or a cluster's buckets (also
        #: :attr:`cluster_store`, with the register of every node's live streams).
        self.store: StreamArchive | None = None
        self.cluster_store: ClusterStore | None = None
        self._nc: NatsClient | None = None
        self._live_putter: asyncio.Task[None] | None = None
        #: A cluster node's leases on the stations it pulls, and its id in them.
        self.leases: PullLeases | None = None
        self._leaser: asyncio.Task[None] | None = None
        #: Puts and deletes of the live register and the leases not done yet.
        self._cluster_tasks: set[asyncio.Future[None]] = set()
        self.node_id = secrets.token_hex(4)
        self.load_error: str | None = None
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genrecast-db")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._load_task: asyncio.Task[None] | None = None
        self.started = asyncio.Event()
        self.pullers: dict[str, Puller] = {}
        # The outcomes of the streams that ended here, newest last (at most ENDED_KEPT).
        self._ended: OrderedDict[str, StreamOutcome] = OrderedDict()
        if link is not None:
            link.on_message = self.hub.deliver
            link.on_notice = self.hub.notify_text
            link.answerer = self._answer

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and load the model (both off the event loop), then start the engine."""
        self._loop = asyncio.get_running_loop()
        if self.config.cluster.urls:
            await self.open_cluster()
        else:
            self.store = await self._in_db(TimelineStore, self.config.storage.database)
        if self.link is None:  # workers share the engine process's store, which did this
            await self._in_db(self._close_orphans)
        if self.config.storage.retention_days > 0 and self.link is None:
            await self._prune()
            self._pruner = asyncio.create_task(self._prune_periodically())
        self._load_task = asyncio.create_task(self._load_in_background())
        self._reaper = asyncio.create_task(self._reap_idle())
        self.started.set()

    async def open_cluster(self) -> None:
        """A cluster node (``cluster.urls`` set): connect to NATS and open the cluster's
        archive; put this node's live streams in its register from now on. Once; nothing
        without a cluster.

        Raises:
            ClusterError: NATS cannot be reached, or refused a bucket.
        """
        from stream_server.cluster.inference_worker import connect
        from stream_server.cluster.pulls import PullLeases
        from stream_server.cluster.store import ClusterStore

        if not self.config.cluster.urls or self._nc is not None:
            return
        nc = await connect(self.config, "genrecast-node")
        replicas = self.config.cluster.replicas
        store = ClusterStore(nc, replicas=replicas)
        leases = PullLeases(nc, self.node_id, replicas=replicas)
        try:
            await store.open()
            await leases.open()
        except BaseException:
            await nc.close()
            raise
        self._nc, self.leases = nc, leases
        self.store = self.cluster_store = store
        self._live_putter = asyncio.create_task(self._put_live_periodically(store))

    async def _put_live_periodically(self, store: ClusterStore) -> None:
        from stream_server.cluster.store import LIVE_S

        while True:
            if self.streams:
                try:
                    await store.put_live(self._describe_live())
                except Exception as exc:  # the next round tries again
                    log.warning("the live streams could not be put in the cluster: %s", exc)
            await asyncio.sleep(LIVE_S)

    async def _reap_idle(self) -> None:
        """End every pushed stream (WebSocket, WebRTC) that sent no audio for
        ``server.idle_timeout_s``: an idle client must not hold a slot. Pulled streams have
        their own stall rule (``sources.stall_s``)."""
        idle_s = self.config.server.idle_timeout_s
        while True:
            await asyncio.sleep(min(1.0, idle_s / 4))
            now = time.monotonic()
            for live in list(self.streams.values()):
                if live.session.kind != "url" and now - live.last_audio > idle_s:
                    self.metrics.errors.labels(kind="idle").inc()
                    await self.end_stream(live, f"idle: no audio for {idle_s:g} s")

    async def _prune(self) -> None:
        """Delete the streams that ended more than ``storage.retention_days`` ago (on the
        database thread); a failure is logged and counted, never raised."""
        assert self.store is not None
        cutoff = time.time() - self.config.storage.retention_days * 86400.0
        try:
            pruned: int = await self._in_db(self.store.prune, cutoff)
        except Exception as exc:
            self.metrics.errors.labels(kind="storage").inc()
            log.error("pruning old streams failed: %s", exc)
            return
        if pruned:
            log.info(
                "pruned %d stream(s) ended over %g day(s) ago",
                pruned,
                self.config.storage.retention_days,
            )

    async def _prune_periodically(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL_S)
            await self._prune()

    async def _load_in_background(self) -> None:
        try:
            if self.link is not None:
                await self._attach_engine(self.link)
            elif self.config.cluster.urls:
                await self._attach_cluster()
            else:
                await asyncio.to_thread(self._load_model)
        except Exception as exc:
            self.load_error = str(exc)
            self.metrics.errors.labels(kind="model_load").inc()
            log.error("model could not be loaded: %s", exc)

    async def wait_ready(self) -> None:
        """Wait until the model is loaded; raises if loading failed."""
        assert self._load_task is not None, "start() first"
        await asyncio.shield(self._load_task)
        if self.load_error is not None:
            raise RuntimeError(self.load_error)

    def _close_orphans(self) -> None:
        """Streams left open by a previous run ended when it stopped."""
        assert self.store is not None
        self.store.end_open_streams(time.time())

    def _load_model(self) -> None:
        from stream_server.inference.loading import load_configured_model, start_engine
        from stream_server.inference.model import LoadedModel

        given = self.model
        loaded = given if isinstance(given, LoadedModel) else load_configured_model(self.config)
        engine = start_engine(
            self.config,
            loaded,
            on_results=self._results_from_engine,
            on_error=self._error_from_engine,
        )
        runner = engine.runner
        self.model = loaded
        self.runner = runner
        self.device = str(runner.device)
        self.precision = runner.precision
        self.stream_state = runner.table is not None
        self.smoothing = SmoothingTable(len(self.display_labels), self._params().smoothing)
        self.engine = engine
        self._log_model()

    async def _describe_model(self) -> ModelFacts:
        """The model's description where the model runs elsewhere: the one given, else the
        configured model, loaded here (off the loop)."""
        if self.model is None:
            from stream_server.inference.loading import load_configured_model

            self.model = await asyncio.to_thread(load_configured_model, self.config)
        return self.model

    async def _attach_engine(self, link: EngineLink) -> None:
        """An ingest worker: wait for the engine process's model and use the remote engine.
        The model's description (labels, preprocessing) came with ``model``, else the
        configured model is loaded here for it."""
        hello = await link.hello()
        await self._describe_model()
        self.device, self.precision = hello.device, hello.precision
        self.stream_state = hello.stream_state
        self.smoothing = SmoothingTable(len(self.display_labels), self._params().smoothing)
        self.engine = link.make_engine(
            hello,
            on_results=self._deliver,
            on_error=lambda jobs, exc: self._deliver_error(jobs, str(exc)),
            on_replaced=self._replaced_later,
        )
        self._log_model()
        link.ready()

    async def _attach_cluster(self) -> None:
        """A node of a cluster (``serve --cluster``): the engine is the inference workers,
        over NATS (:class:`~stream_server.cluster.engine.ClusterEngine`). The model's
        description (labels, windows) is the configured model's, loaded here."""
        from stream_server.cluster.engine import ClusterEngine
        from stream_server.cluster.updates import UpdateBus

        model = await self._describe_model()
        nc = self._nc
        assert nc is not None, "start() opens the cluster's connection"
        engine = ClusterEngine(
            nc,
            labels=len(model.labels),
            max_batch=self.config.engine.max_batch,
            timeout_s=self.config.cluster.request_timeout_s,
            on_results=self._deliver,
            on_error=lambda jobs, exc: self._deliver_error(jobs, str(exc)),
            on_replaced=self._replaced_later,
        )
        await engine.open()
        cfg = self.config.cluster
        bus = UpdateBus(
            nc,
            self.hub,
            replicas=cfg.replicas,
            kept=cfg.updates_kept,
            history=self.config.updates.history_size,
        )
        await bus.open()
        self.bus = bus
        facts = next(iter(engine.facts.values()), {})
        self.device = f"cluster ({facts.get('device', 'no worker yet')})"
        self.precision = facts.get("precision", self.precision)
        self.stream_state = facts.get("stream_state") == "1"
        self.smoothing = SmoothingTable(len(self.display_labels), self._params().smoothing)
        self.cluster_engine = engine
        self.engine = engine
        self._log_model()
        assert self.leases is not None  # stations whose node died are taken over from now on
        self._leaser = asyncio.create_task(self.leases.run(self._take_over, self._lost_lease))

    def _log_model(self) -> None:
        assert self.model is not None
        log.info(
            "model %s on %s: %d labels, window %.1f s, hop %.1f s",
            self.model.source,
            self.device,
            len(self.model.labels),
            self.window_s,
            self.config.engine.hop_s,
        )

    async def drain(
        self, reason: str = "server stopping", timeout_s: float = DRAIN_TIMEOUT_S
    ) -> None:
        """The first step of a graceful stop, while connections are still open: refuse new
        streams and uploads (``stopping``), end every live stream once its in-flight windows
        are back (``stream.ended`` with ``reason`` to its subscribers), then wait until the
        subscribers' queues are sent. Bounded by ``timeout_s`` in all."""
        self.stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for puller in list(self.pullers.values()):
            puller.stop()
        ends = [self.end_stream(live, reason) for live in list(self.streams.values())]
        if ends:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*ends), max(0.0, deadline - loop.time()))
        # The subscribers' pumps empty the queues; look every 20 ms, until the deadline.
        while self.hub.backlog and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for task in (self._reaper, self._pruner, self._live_putter, self._leaser):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._load_task is not None:
            await asyncio.gather(self._load_task, return_exceptions=True)
        pullers = list(self.pullers.values())
        for puller in pullers:
            puller.stop()
        for live in list(self.streams.values()):
            await self.end_stream(live, "server stopping", drain=False)
        for puller in pullers:
            await asyncio.to_thread(puller.join, DRAIN_TIMEOUT_S)
        if self.cluster_engine is not None:
            if self.bus is not None:
                await self.bus.close()
            await self.cluster_engine.close()
        elif self.engine is not None:
            await asyncio.to_thread(self.engine.stop)
        try:
            if self._cluster_tasks:  # ended streams' live entries and leases, at most 5 s
                await asyncio.wait(self._cluster_tasks, timeout=5.0)
            if self.store is not None:  # after the queued writes (a cluster's need the client)
                await self._in_db(self.store.close)
        finally:
            if self._nc is not None:
                await self._nc.close()
            self._db.shutdown(wait=True)

    @property
    def opening(self) -> int:
        """Streams checked and waiting for the store, not yet registered."""
        return sum(self._opening_by.values())

    @property
    def ready(self) -> bool:
        return self.engine is not None

    @property
    def window_s(self) -> float:
        """Window length in seconds: the config's, else the model's own."""
        assert self.model is not None
        return window_seconds(self.config, self.model)

    async def _in_db(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, fn, *args)

    def _db_write(self, fn: Any, *args: Any) -> None:
        """Queue a write on the database thread without waiting for it."""
        future = self._db.submit(fn, *args)
        future.add_done_callback(self._log_db_failure)

    def _log_db_failure(self, future: Any) -> None:
        exc = future.exception()
        if exc is not None:
            self.metrics.errors.labels(kind="storage").inc()
            log.error("timeline storage failed: %s", exc)

    # -- streams ----------------------------------------------------------------------------

    def classifier(self) -> Classifier | None:
        """What an upload is classified with (:class:`~stream_server.serve.upload.UploadHost`);
        ``None`` until the model is loaded."""
        if self.engine is None or self.model is None:
            return None
        return Classifier(self.engine, self._params(), self.device, self.model.source)

    def _params(self) -> SessionParams:
        assert self.model is not None
        return session_params(self.config, self.model)

    @property
    def display_labels(self) -> tuple[str, ...]:
        """The model's labels renamed through ``[model.labels]``."""
        return self._params().labels

    async def open_stream(
        self,
        start: StartMessage,
        *,
        kind: str = "ws",
        source: str = "",
        client: str = "",
        resume: StreamRecord | None = None,
    ) -> tuple[LiveStream, str]:
        """Validate ``start`` and open a live stream; returns it and its ``stream.started`` JSON.

        ``client`` is who asks (an address): each may hold ``server.max_streams_per_client``
        streams at once ("" is not limited: the server's own). ``resume``: a stored stream
        that goes on here under its id (:meth:`pull`); it is not announced again (``""``).

        Raises:
            ProtocolError: not ready, a bad format or name, too many streams (``busy``, in all
                or for this client), or the store refused the stream.
        """
        if not self.ready:
            raise ProtocolError(
                "the model is still loading; try again", code="not_ready", close_code=1013
            )
        if self.stopping:
            raise ProtocolError("the server is stopping", code="stopping", close_code=1012)
        srv = self.config.server
        validate_format(
            start["sample_rate"],
            start["channels"],
            start["format"],
            min_rate=srv.min_sample_rate,
            max_rate=srv.max_sample_rate,
            max_channels=srv.max_channels,
        )
        name = check_text(start.get("name", ""), "name", MAX_NAME_CHARS)
        await self._admit(client)
        try:
            live = await self._register(
                start, name, kind=kind, source=source, client=client, resume=resume
            )
        except BaseException:
            self._leave(client)
            raise
        if resume is not None:
            return live, ""
        return live, await self._announce(live)

    async def _admit(self, client: str) -> None:
        """Count one more stream for ``client`` against ``server.max_streams`` and
        ``server.max_streams_per_client`` (over every worker, with a link).

        Raises:
            ProtocolError: ``busy``, in all or for this client.
        """
        srv = self.config.server
        refusal: str | None = None
        if self.link is not None:
            try:
                refusal = await self.link.admit(client)
            except (ConnectionError, TimeoutError):
                raise ProtocolError(
                    "the server is stopping", code="stopping", close_code=1012
                ) from None
        elif len(self.streams) + self.opening >= srv.max_streams:
            refusal = f"too many live streams (limit {srv.max_streams})"
        elif client:
            mine = sum(1 for live in self.streams.values() if live.client == client)
            mine += self._opening_by.get(client, 0)
            if mine >= srv.max_streams_per_client:
                refusal = (
                    f"this client already has {mine} live streams "
                    f"(limit {srv.max_streams_per_client})"
                )
        if refusal is not None:
            raise ProtocolError(refusal, code="busy", close_code=1013)

    def _leave(self, client: str) -> None:
        """A stream :meth:`_admit` counted is gone (the count is kept by the engine process)."""
        if self.link is not None:
            self.link.leave(client)

    async def _register(
        self,
        start: StartMessage,
        name: str,
        *,
        kind: str,
        source: str,
        client: str,
        resume: StreamRecord | None = None,
    ) -> LiveStream:
        """A new live stream, stored first and registered after: a stream the store refused
        never exists. ``resume``: a stored stream going on here (not stored again)."""
        stream_id = secrets.token_hex(6) if resume is None else resume.stream_id
        session = StreamSession(
            stream_id,
            dataclasses.replace(self._params(), warm_up=self.stream_state, pcm16=True),
            sample_rate=start["sample_rate"],
            channels=start["channels"],
            fmt=start["format"],
            name=name,
            kind=kind,
            table=self.smoothing,
        )
        live = LiveStream(session, source, client=client)
        if resume is not None:
            session.started_wall = resume.created_at
        else:
            await self._store_new(live, client)
        self.streams[stream_id] = live
        self.metrics.active_streams.set(len(self.streams))
        self._put_live_now(live)
        return live

    async def _store_new(self, live: LiveStream, client: str) -> None:
        """Keep a new stream's record, counted as opening for ``client`` meanwhile.

        Raises:
            ProtocolError: the store refused it (the session is closed).
        """
        assert self.store is not None
        session = live.session
        self._opening_by[client] = self._opening_by.get(client, 0) + 1
        try:
            await self._in_db(self.store.add_stream, live.record())
        except Exception as exc:
            session.close()
            self.metrics.errors.labels(kind="storage").inc()
            log.error("stream %s could not be stored: %s", session.stream_id, exc)
            raise ProtocolError(
                "the stream could not be stored; try again", code="storage", close_code=1011
            ) from None
        finally:
            self._opening_by[client] -= 1
            if not self._opening_by[client]:
                del self._opening_by[client]

    def _put_live_now(self, live: LiveStream) -> None:
        """A cluster node's new stream goes into the live register at once (not at the next
        round), so no other node lists it as lost meanwhile."""
        if self.cluster_store is not None:
            self._in_cluster(self.cluster_store.put_live([self.describe(live)]))

    def _in_cluster(self, write: Coroutine[Any, Any, None]) -> None:
        """Run a write of the live register or the leases beside the loop's work; a failure
        is logged (:func:`_log_cluster_failure`), :meth:`stop` waits for what is left."""
        task = asyncio.ensure_future(write)
        self._cluster_tasks.add(task)
        task.add_done_callback(self._cluster_tasks.discard)
        task.add_done_callback(_log_cluster_failure)

    async def _announce(self, live: LiveStream) -> str:
        """Publish a registered stream's ``stream.started``; its stamped JSON."""
        session = live.session
        message = StreamStarted(
            type="stream.started",
            seq=0,
            stream_id=session.stream_id,
            name=session.name,
            kind=session.kind,
            wall_time=time.time(),
        )
        if self.bus is not None:
            try:
                return await self.bus.publish_stamped(message)
            except ClusterError as exc:
                await self.end_stream(live, "the cluster's updates stream is not reachable")
                raise ProtocolError(str(exc), code="storage", close_code=1011) from None
        if self.link is None:
            return self.hub.publish(message)
        try:
            return await self.link.publish_stamped(message)
        except (ConnectionError, TimeoutError):
            await self.end_stream(live, "server stopping", drain=False)
            raise ProtocolError(
                "the server is stopping", code="stopping", close_code=1012
            ) from None

    async def open_sink(
        self, start: StartMessage, *, kind: str, source: str, client: str
    ) -> StreamSink:
        """:meth:`open_stream` for a source: the stream as a :class:`StreamSink`."""
        live, _ = await self.open_stream(start, kind=kind, source=source, client=client)
        return LiveSink(self, live)

    def count_error(self, kind: str) -> None:
        self.metrics.errors.labels(kind=kind).inc()

    def feed(self, live: LiveStream, data: bytes) -> None:
        """PCM bytes in; the due window (if any) goes to the engine (latest wins)."""
        if not live.ended:
            self._fed(live, live.session.feed, data, len(data))

    def feed_samples(self, live: LiveStream, samples: FloatArray) -> None:
        """Mono float32 samples at the model's rate in, shape ``(n,)`` (a pulled source decodes
        and resamples itself); the due window (if any) goes to the engine."""
        if not live.ended:
            self._fed(live, live.session.feed_samples, samples, samples.nbytes)

    def _fed(
        self,
        live: LiveStream,
        feed: Callable[[_Audio, float], WindowJob | None],
        audio: _Audio,
        size: int,
    ) -> None:
        session = live.session
        overruns, skipped = session.buffer.overruns, session.windows_skipped
        now = time.monotonic()
        live.last_audio = now
        job = feed(audio, now)
        self.metrics.ingest_bytes.inc(size)
        self._submit(live, job)
        self.metrics.buffer_overruns.inc(session.buffer.overruns - overruns)
        self.metrics.windows_skipped.inc(session.windows_skipped - skipped)

    def _submit(self, live: LiveStream, job: WindowJob | None) -> None:
        """Hand a due window to the engine; a window it replaced was skipped. Warm-up jobs are
        neither awaited nor counted."""
        if job is None or self.engine is None:
            return
        replaced = self.engine.submit(job)
        if not job.warm:
            live.outstanding += 1
            live.idle.clear()
        if replaced is not None and not replaced.warm:
            live.session.skipped()
            self._resolved(live)

    async def end_stream(
        self, live: LiveStream, reason: str, *, drain: bool = True
    ) -> StreamEnded | None:
        """End a stream once its last window is back (``drain``); publishes ``stream.ended``."""
        if live.ended:
            return None
        live.ended = True
        session = live.session
        puller = self.pullers.pop(session.stream_id, None)
        if puller is not None:
            puller.stop()
            if live.state not in ("ended", "failed"):
                live.state = "ended"
        if drain:
            skipped = session.windows_skipped
            self._submit(live, session.finish())
            self.metrics.windows_skipped.inc(session.windows_skipped - skipped)
        if drain and live.outstanding:
            try:
                await asyncio.wait_for(live.idle.wait(), DRAIN_TIMEOUT_S)
            except TimeoutError:
                log.warning("stream %s ended before its last window came back", session.stream_id)
        dropped = self._unregister(live)
        if dropped is not None and not dropped.warm:
            session.skipped()
            self.metrics.windows_skipped.inc()
        ended_at = time.time()
        outcome = _outcome(live, reason)
        self._ended[session.stream_id] = outcome
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)
        if self.store is not None:
            self._db_write(self.store.end_stream, session.stream_id, ended_at, outcome)
        if self.cluster_store is not None:
            self._in_cluster(self.cluster_store.forget_live(session.stream_id))
        if self.leases is not None and session.stream_id in self.leases.held:
            self._in_cluster(self.leases.release(session.stream_id))
        message = StreamEnded(
            type="stream.ended",
            seq=0,
            stream_id=session.stream_id,
            reason=reason,
            stream_time_s=round(session.stream_time_s, 3),
            wall_time=ended_at,
            windows_computed=session.windows_computed,
            windows_skipped=session.windows_skipped,
        )
        self._publish(message)
        if live.on_end is not None:
            live.on_end(message)
        return message

    # -- engine results ---------------------------------------------------------------------

    def _results_from_engine(self, results: Sequence[WindowResult]) -> None:
        """Engine thread: hand the batch to the event loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, results)

    def _error_from_engine(self, jobs: Sequence[WindowJob], exc: BaseException) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver_error, jobs, str(exc))

    def _deliver(self, results: Sequence[WindowResult]) -> None:
        m = self.metrics
        if self.link is None:  # else the engine process counts its batches
            m.batch_size.observe(results[0].batch_size)
            m.inference_seconds.observe(results[0].batch_seconds)
        m.windows_computed.inc(len(results))
        tails: list[Tail] = []
        taken: list[tuple[LiveStream, WindowResult]] = []
        for result in results:
            live = self.streams.get(result.job.stream_id)
            if live is None:
                continue
            if live.session.is_stale(result.job):
                self._resolved(live)
                continue
            taken.append((live, result))
        scored_all = score_batch(
            [live.session for live, _ in taken],
            [result.job for _, result in taken],
            [result.probs for _, result in taken],
            [result.level_dbfs for _, result in taken],
            [result.speech_prob for _, result in taken],
            time.monotonic(),
        )
        for (live, result), scored in zip(taken, scored_all, strict=True):
            if isinstance(scored, ValueError):  # one window's scores refused: the rest go on
                log.warning("stream %s: window dropped: %s", result.job.stream_id, scored)
                m.errors.labels(kind="scores").inc()
            else:
                self._publish(scored.update)
                if scored.change is not None:
                    self._publish(scored.change)
                m.latency_seconds.observe(scored.update["latency_ms"] / 1000.0)
                if scored.segments:
                    tails.append(_tail(live, scored.segments))
            self._resolved(live)
        if self.store is not None and tails:
            self._db_write(self._write_tails, self.store, tails)

    def _write_tails(self, store: StreamArchive, tails: Sequence[Tail]) -> None:
        """One batch's timeline tails in one transaction (database thread); a tail that cannot
        be stored is logged and counted, the others are kept."""
        for stream_id, reason in store.write_tails(tails):
            self.metrics.errors.labels(kind="storage").inc()
            log.error("timeline storage failed for stream %s: %s", stream_id, reason)

    def _store_segments(self, live: LiveStream, segments: list[tuple[int, Segment]]) -> None:
        """Queue the write of a timeline tail (``(index, segment)``, consecutive indices)."""
        if self.store is not None and segments:
            self._db_write(self.store.write_tail, *_tail(live, segments))

    def _deliver_error(self, jobs: Sequence[WindowJob], reason: str) -> None:
        self.metrics.errors.labels(kind="inference").inc()
        for job in jobs:
            live = self.streams.get(job.stream_id)
            if live is None:
                continue
            self._notify(error("inference", f"inference failed: {reason}", job.stream_id))
            self._resolved(live)

    def _publish(self, message: PublishedMessage) -> None:
        """Stamp and send ``message`` to the subscribers (every worker's, with a link; every
        node's, in a cluster)."""
        if self.bus is not None:
            self.bus.publish(message)
        elif self.link is None:
            self.hub.publish(message)
        else:
            self.link.publish(message)

    def _notify(self, message: ErrorMessage) -> None:
        if self.bus is not None:
            self.bus.notify(message)
        elif self.link is None:
            self.hub.notify(message)
        else:
            self.link.notify(message)

    def _replaced_later(self, job: WindowJob) -> None:
        """The engine process dropped ``job`` for a newer window of its stream, or because the
        stream ended (a worker's engine reports it after :meth:`_submit`)."""
        if job.warm:
            return
        self.metrics.windows_skipped.inc()
        live = self.streams.get(job.stream_id)
        if live is not None:
            live.session.skipped()
            self._resolved(live)

    def _resolved(self, live: LiveStream) -> None:
        live.outstanding -= 1
        if live.outstanding <= 0:
            live.outstanding = 0
            live.idle.set()

    def _on_subscriber_dropped(self, sub: Subscriber) -> None:
        self.metrics.subscribers_dropped.inc()

    # -- pulled streams (stream_server.sources.puller)
    # -----------------------------------------------

    async def pull(
        self, source: str, *, name: str = "", resume: StreamRecord | None = None
    ) -> LiveStream:
        """Open a stream whose audio the server fetches itself from ``source`` (URL or path).

        Returns at once in state ``"connecting"``; a worker thread connects, decodes and feeds.
        The source is checked first (:mod:`stream_server.sources.source_policy`, off the event loop:
        it resolves host names and looks at files); nothing is registered if it is refused (a
        host name that does not resolve, where the policy may say so
        (:meth:`~stream_server.sources.source_policy.SourcePolicy.may_tell_unresolved`), is
        not refused: the stream fails at its first connection with ``host not found``).
        In a cluster the station is leased (:mod:`stream_server.cluster.pulls`); ``resume`` is
        the stream of a station taken over: its id and record kept, no ``stream.started``, its
        timeline continued after a gap (the time since the station started, at least to the
        end of its stored timeline).

        Raises:
            ProtocolError: not ready, or too many streams (as :meth:`open_stream`).
            SourceRefused: the source may not be pulled, or does not exist (one message).
        """
        if not self.ready or self.model is None:
            raise ProtocolError(
                "the model is still loading; try again", code="not_ready", close_code=1013
            )
        policy = SourcePolicy.from_config(self.config.sources)
        try:
            await asyncio.to_thread(policy.check_source, source)
        except SourceRefused as exc:
            if not policy.may_tell_unresolved(exc):
                log.info("refused to pull %r: %s", source, exc.detail)
                raise
        rate = self.model.preprocessing.sample_rate
        start = StartMessage(type="start", sample_rate=rate, channels=1, format="f32le")
        shown = shown_source(source)
        start["name"] = name or shown.removesuffix("?…").rstrip("/").rsplit("/", 1)[-1] or shown
        earlier: list[Segment] = []
        if resume is not None:  # read before the stream exists here: a failure leaves nothing
            assert self.store is not None
            earlier = await self._in_db(self.store.timeline, resume.stream_id)
        live, _ = await self.open_stream(start, kind="url", source=source, resume=resume)
        live.state = "connecting"
        stream_id = live.session.stream_id
        if resume is not None:
            live.earlier = earlier
            stored_end = earlier[-1].end_s if earlier else 0.0
            live.session.mark_gap(max(stored_end, time.time() - resume.created_at))
        if self.leases is not None and resume is None:  # leased before anything is pulled
            from stream_server.cluster.pulls import PullSpec

            try:
                await self.leases.hold(PullSpec(stream_id, source, live.session.name))
            except Exception as exc:  # it is pulled, but no other node would take it over
                log.error("stream %s: its lease could not be taken: %s", stream_id, exc)
            if live.ended:  # ended meanwhile (a DELETE, the server stopping)
                await self.leases.release(stream_id)
                return live
        assert self._loop is not None
        puller = Puller(
            LiveSink(self, live),
            source,
            self.config.sources,
            self._loop,
            went_live=resume is not None,  # it delivered audio on the node it was taken from
        )
        self.pullers[stream_id] = puller
        puller.start()
        return live

    async def _take_over(self, spec: PullSpec) -> None:
        """Pull on a station whose node died (its lease is this node's now).

        Raises:
            ClusterError: its stream ended meanwhile, or is unknown.
            ProtocolError, SourceRefused: as :meth:`pull` (this node refuses it).
        """
        assert self.store is not None
        if spec.stream_id in self.streams:  # this node's own lease ran out: it pulls it still
            return
        record = await self._in_db(self.store.get_stream, spec.stream_id)
        if record is None or record.ended_at is not None:
            raise ClusterError(f"stream {spec.stream_id} ended")
        await self.pull(spec.source, name=spec.name, resume=record)
        self.metrics.takeovers.inc()

    async def _lost_lease(self, stream_id: str) -> None:
        """Another node pulls ``stream_id`` now: stop here without ending it, and without
        writing its timeline any more (the other node does)."""
        if self.cluster_store is not None:
            self.cluster_store.forget(stream_id)
        live = self.streams.get(stream_id)
        if live is None:
            return
        live.ended = True
        puller = self.pullers.pop(stream_id, None)
        if puller is not None:
            puller.stop()
        self._unregister(live)

    def _unregister(self, live: LiveStream) -> WindowJob | None:
        """A stream that ended here: its window waiting for the engine dropped (returned), out
        of the live streams and its client's count, its session closed."""
        stream_id = live.session.stream_id
        dropped = None if self.engine is None else self.engine.cancel(stream_id)
        if self.streams.pop(stream_id, None) is not None:
            self._leave(live.client)
        live.session.close()
        self.metrics.active_streams.set(len(self.streams))
        return dropped

    async def stop_stream(self, stream_id: str, reason: str = "stopped by request") -> bool:
        """End a live stream of any kind (a pulled one stops fetching), on whichever worker
        holds it; False if not live."""
        live = self.streams.get(stream_id)
        if live is not None:
            await self.end_stream(live, reason)
            return True
        if self.link is not None:
            return any(await self.link.ask("stop", [stream_id, reason]))
        return False

    def connection_failed(self, live: LiveStream, reason: str, wall_time: float) -> None:
        """A connection of a pulled stream failed for ``reason`` at ``wall_time`` (unix
        seconds): its ``last_error`` (on the loop)."""
        if not live.ended:
            live.last_error, live.last_error_at = reason, wall_time

    def mark_gap(self, live: LiveStream, gap_s: float) -> None:
        """The stream's source was away for ``gap_s`` seconds and is back (on the loop)."""
        if live.ended:
            return
        self._store_segments(live, live.session.mark_gap(gap_s))

    def track_change(self, live: LiveStream, title: str) -> None:
        """The stream announced ``title``: publish ``track.change`` and store it (on the loop)."""
        if live.ended or title == live.title:
            return
        live.title = title
        session = live.session
        record = TrackTitle(round(session.stream_time_s, 3), time.time(), title)
        self._publish(
            TrackChange(
                type="track.change",
                seq=0,
                stream_id=session.stream_id,
                title=title,
                stream_time_s=record.stream_time_s,
                wall_time=record.wall_time,
            )
        )
        if self.store is not None:
            self._db_write(self.store.add_title, session.stream_id, record)

    async def titles(self, stream_id: str) -> list[TrackTitle]:
        """Titles a stream announced, oldest first (after every queued write)."""
        assert self.store is not None
        titles: list[TrackTitle] = await self._in_db(self.store.titles, stream_id)
        return titles

    # -- queries ----------------------------------------------------------------------------

    async def timeline(self, stream_id: str) -> list[Segment] | None:
        """A stream's segments: live from memory (whichever worker holds it), else from the
        store; None if unknown."""
        live = self.streams.get(stream_id)
        if live is not None:
            return live.segments()
        if self.link is not None:
            for answer in await self.link.ask("timeline", stream_id):
                if answer is not None:
                    return [Segment(**segment) for segment in answer]
        assert self.store is not None
        record = await self._in_db(self.store.get_stream, stream_id)
        if record is None:
            return None
        segments: list[Segment] = await self._in_db(self.store.timeline, stream_id)
        return segments

    async def list_streams(self) -> list[dict[str, Any]]:
        """Live streams first (every worker's), then stored ones, as JSON-ready dicts.

        A stored stream's outcome and summary come with its record; one ended without them (by
        a previous run, or by a process that could not tell) gets them here from its timeline,
        once: they are stored back.
        """
        assert self.store is not None
        records: list[StreamRecord] = await self._in_db(self.store.list_streams, LISTED_STORED)
        missing = [
            r
            for r in records
            if r.ended_at is not None and r.outcome is None and r.stream_id not in self._ended
        ]
        if missing:
            filled = await self._in_db(self._fill_outcomes, self.store, missing)
            records = [filled.get(r.stream_id, r) for r in records]
        if self.link is not None:
            out = [stream for answer in await self.link.ask("streams") for stream in answer]
        else:
            out = self._describe_live()
        if self.cluster_store is not None:  # and every other node's
            here = {stream["stream_id"] for stream in out}
            ended = {r.stream_id for r in records if r.ended_at is not None}
            out += [
                s
                for s in await self.cluster_store.live()
                # not this node's (a put that landed after its stream ended), nor ended
                if s["stream_id"] not in here | ended and s.get("node") != self.node_id
            ]
        live = {stream["stream_id"] for stream in out}
        out += [self.describe(r) for r in records if r.stream_id not in live]
        return out

    def _describe_live(self) -> list[dict[str, Any]]:
        return [self.describe(live) for live in self.streams.values()]

    @staticmethod
    def _fill_outcomes(
        store: StreamArchive, records: Sequence[StreamRecord]
    ) -> dict[str, StreamRecord]:
        """Ended streams stored without an outcome, by id, with the outcome their timelines
        give, which is stored back (database thread). A stream that cannot be read or written
        is logged and left out."""
        filled: dict[str, StreamRecord] = {}
        for record in records:
            assert record.ended_at is not None
            try:
                outcome = StreamOutcome.of_timeline(store.timeline(record.stream_id))
                store.end_stream(record.stream_id, record.ended_at, outcome)
            except StorageError as exc:
                log.error("stream %s: its outcome could not be kept: %s", record.stream_id, exc)
                continue
            filled[record.stream_id] = dataclasses.replace(record, outcome=outcome)
        return filled

    async def subscribe(self, stream_id: str | None, since: int | None) -> Subscriber:
        """A ``/ws/updates`` subscriber of the hub (:meth:`UpdateHub.subscribe`). On a cluster
        node, a ``since`` older than the hub keeps is read back from the cluster's updates
        stream first, so a resume reaches as far back as ``cluster.updates_kept``."""
        if self.bus is None or since is None or since + 1 >= self.hub.oldest:
            return self.hub.subscribe(stream_id, since)
        older, reached = await self.bus.replay(max(since, 0), stream_id)
        return self.hub.subscribe(stream_id, reached, first=older)

    async def metrics_text(self) -> bytes:
        """The Prometheus text of ``/metrics``: with a link, every worker's metrics summed."""
        if self.link is None:
            return self.metrics.render()
        return merge_metrics(await self.link.ask("metrics"))

    async def _answer(self, what: str, arg: Any) -> Any:
        """This worker's answer to a question the engine process relays from a worker."""
        if what == "streams":
            return self._describe_live()
        if what == "metrics":
            return self.metrics.render().decode()
        if what == "timeline":
            live = self.streams.get(arg)
            if live is None:
                return None
            return [dataclasses.asdict(segment) for segment in live.segments()]
        if what == "stop":
            stream_id, reason = arg
            live = self.streams.get(stream_id)
            if live is None:
                return False
            await self.end_stream(live, reason)
            return True
        raise ValueError(f"unknown question {what!r}")

    def describe(self, stream: LiveStream | StreamRecord) -> dict[str, Any]:
        """One stream as ``GET /streams`` lists it, live or stored: the stored record's fields;
        a live stream adds its state and live figures, its ``last_error`` and the ``summary``
        of its timeline so far; a stored one adds its outcome (:class:`StreamOutcome`: final
        state, ``reason``, figures and ``summary``). A stored stream that never ended is
        ``"ended"``, or ``"lost"`` in a cluster (no node runs it), with no summary."""
        record = stream.record() if isinstance(stream, LiveStream) else stream
        described: dict[str, Any] = {
            "stream_id": record.stream_id,
            "name": record.name,
            "kind": record.kind,
            "source": shown_source(record.source),
            "state": "ended",
            "created_at": record.created_at,
            "ended_at": record.ended_at,
            "sample_rate": record.sample_rate,
            "channels": record.channels,
            "format": record.fmt,
        }
        if not isinstance(stream, LiveStream):
            outcome = self._ended.get(record.stream_id) or record.outcome
            if outcome is not None:
                final = outcome.to_dict()
                for key in _FIGURES_WHERE_KNOWN:
                    if final[key] is None:  # ended without its outcome: read from its timeline
                        del final[key]
                return described | final
            if record.ended_at is None and self.cluster_store is not None:
                described |= {"state": "lost", "reason": LOST_REASON}
            return described | {"summary": None, "last_error": None, "last_error_at": None}
        live, s = stream, stream.session
        update = s.last_update
        described["state"] = live.state
        if self.cluster_store is not None:
            described["node"] = self.node_id  # which node of the cluster runs it
        return described | {
            "stream_time_s": round(s.stream_time_s, 3),
            "lag_s": round(s.stream_time_s - update["stream_time_s"], 3) if update else None,
            "windows_computed": s.windows_computed,
            "windows_skipped": s.windows_skipped,
            "overrun_samples": s.buffer.overruns,
            "dropped": live.dropped,
            "corrupt_packets": live.corrupt_packets,
            "reconnects": live.reconnects,
            "title": live.title,
            "genre": update["genre"] if update else None,
            "confidence": update["confidence"] if update else None,
            "last_error": live.last_error,
            "last_error_at": live.last_error_at,
            "summary": summarize(live.segments()).to_dict(),
        }


class LiveSink:
    """A :class:`LiveStream` of ``service`` as a :class:`~stream_server.types.StreamSink`: what a
    source may do to its stream, and nothing else."""

    def __init__(self, service: Service, live: LiveStream) -> None:
        self._service = service
        self._live = live

    @property
    def stream_id(self) -> str:
        return self._live.session.stream_id

    @property
    def ended(self) -> bool:
        return self._live.ended

    @property
    def sample_rate(self) -> int:
        return self._live.session.params.model_rate

    def feed(self, data: bytes) -> None:
        self._service.feed(self._live, data)

    def feed_samples(self, samples: FloatArray) -> None:
        self._service.feed_samples(self._live, samples)

    def title(self, title: str) -> None:
        self._service.track_change(self._live, title)

    def connection_failed(self, reason: str, wall_time: float) -> None:
        self._service.connection_failed(self._live, reason, wall_time)

    def gap(self, seconds: float) -> None:
        self._service.mark_gap(self._live, seconds)

    def set_state(self, state: StreamState) -> None:
        if not self._live.ended:
            self._live.state = state

    def count(self, counter: SourceCounter, n: int = 1) -> None:
        live = self._live
        if counter == "dropped":
            live.dropped += n
        elif counter == "corrupt_packets":
            live.corrupt_packets += n
        else:
            live.reconnects += n

    async def end(self, reason: str, *, drain: bool = True) -> None:
        await self._service.end_stream(self._live, reason, drain=drain)

    def on_end(self, callback: Callable[[str], None]) -> None:
        self._live.on_end = lambda ended: callback(ended["reason"])


def _log_cluster_failure(future: asyncio.Future[None]) -> None:
    """A stream's entry in the cluster's live register (or its lease) could not be put or
    deleted: a live entry runs out by itself, a lease is released again each round."""
    if not future.cancelled() and future.exception() is not None:
        log.warning("an ended stream's cluster entries stay: %s", future.exception())


def _outcome(live: LiveStream, reason: str) -> StreamOutcome:
    """How ``live`` ended (for ``reason``) and what it was: its final figures and the summary
    of its whole timeline."""
    session = live.session
    update = session.last_update
    return StreamOutcome(
        state="failed" if live.state == "failed" else "ended",
        reason=reason,
        summary=summarize(live.segments()).to_dict(),
        stream_time_s=round(session.stream_time_s, 3),
        windows_computed=session.windows_computed,
        windows_skipped=session.windows_skipped,
        genre=update["genre"] if update else None,
        confidence=update["confidence"] if update else None,
        title=live.title,
        dropped=live.dropped,
        corrupt_packets=live.corrupt_packets,
        reconnects=live.reconnects,
        last_error=live.last_error,
        last_error_at=live.last_error_at,
    )


def _tail(live: LiveStream, segments: list[tuple[int, Segment]]) -> Tail:
    """A session's changed timeline tail (``(index, segment)``, consecutive indices) to store."""
    index = segments[0][0] + len(live.earlier)
    return live.session.stream_id, index, [segment for _, segment in segments]
