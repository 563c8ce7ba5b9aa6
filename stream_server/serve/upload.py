"""One-shot classification of an uploaded file: ``POST /classify``.

The body is a ``multipart/form-data`` form with a ``file`` field, or the raw file with a
``Content-Type`` of ``audio/*`` (``video/*``, ``application/ogg`` and ``application/octet-stream``
are taken too). The answer is a :class:`ClassifyAnswer`: a
:class:`~stream_server.messages.ClassifyResult` and the ``summary`` of its timeline
(:func:`with_summary`); a refused upload gets ``{"error": "..."}`` with a 4xx status
(:class:`UploadError`).

Pure parts, tested directly: :class:`ResultCache` (least recently used answers keyed by the
SHA-256 of the bytes) and :func:`upload_kind`. The shell around them, in order:

1. the body is received with a byte limit (``upload.max_bytes``): a larger ``Content-Length`` is
   refused before anything is read, and bytes are counted as they arrive, so a body without one
   is cut off at the limit (413). It is spooled to a temporary file and hashed on the way;
2. a cached answer for the same bytes is returned at once (``cached: true``);
3. otherwise PyAV decodes the file in a worker thread to mono at the model's rate, refusing
   files it cannot read (415), truncated or undecodable ones, and audio longer than
   ``upload.max_duration_s`` (422);
4. the audio goes through the live windows and smoothing
   (:class:`~stream_server.inference.classify.OfflineStream`); its windows run on the engine thread
   with the live streams' (:meth:`~stream_server.inference.engine.Engine.run_windows`), and the
   event loop only awaits them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections import OrderedDict, deque
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, BinaryIO, Generic, Protocol, TypeVar, cast

import av.error
import numpy as np
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive

from stream_server.config import UploadConfig
from stream_server.core.session import SessionParams
from stream_server.core.summary import summarize
from stream_server.core.timeline import Segment, segments_from_json
from stream_server.core.windows import WindowEngine, WindowScores, stack_windows
from stream_server.errors import DecodeError, EngineStopped, UploadError
from stream_server.media.decode import iter_pcm, probe
from stream_server.messages import ClassifyResult, GenreUpdate
from stream_server.serve.metrics import Metrics

log = logging.getLogger(__name__)

#: Bytes a multipart body may carry beyond ``upload.max_bytes`` for its boundaries and headers.
MULTIPART_OVERHEAD_BYTES = 16 * 1024
#: Bytes gathered in memory before they are appended to the spool file.
SPOOL_CHUNK_BYTES = 1 << 20
#: Window batches of one upload handed to the engine at a time (one runs while one is prepared).
PIPELINE_DEPTH = 2
#: Raw body types taken as a file (besides ``audio/*`` and ``video/*``).
RAW_TYPES = frozenset({"application/octet-stream", "application/ogg"})

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ClassifyAnswer(ClassifyResult):
    """The answer to ``POST /classify`` (and ``genrecast classify --json``): the
    :class:`~stream_server.messages.ClassifyResult` and ``summary``, its timeline summed up by
    :func:`~stream_server.core.summary.summarize` (``StreamSummary.to_dict``: ``genre``,
    ``duration_s``, ``windows``, ``genres`` shares, ``passages``), as ``GET /streams`` sums up a
    stream.

    Two answers, on purpose: ``genre``/``probabilities`` is the mean of the windows'
    probabilities over the whole file (what ``genrecast evaluate`` scores); ``summary.genre`` is
    the genre the smoothed timeline shows longest. A genre second in many windows can lead the
    mean while the timeline never shows it.
    """

    summary: dict[str, object]


def with_summary(result: ClassifyResult) -> ClassifyAnswer:
    """``result`` with the ``summary`` of its ``segments`` (worked out afresh, so an answer
    from an older server gets the same one)."""
    segments = segments_from_json(result["segments"])
    answer = cast(ClassifyAnswer, dict(result))
    answer["summary"] = summarize(segments).to_dict()
    return answer


class ResultCache(Generic[K, V]):
    """The ``capacity`` most recently used values by key; ``capacity`` 0 keeps nothing.

    A :meth:`get` that finds its key makes it the most recently used; a :meth:`put` beyond
    ``capacity`` evicts the least recently used. ``hits``, ``misses`` and ``evictions`` count.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: K, value: V) -> None:
        if self.capacity == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
            self.evictions += 1

    def keys(self) -> list[K]:
        """Keys from least to most recently used."""
        return list(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


def upload_kind(content_type: str | None) -> str:
    """``"form"`` for multipart, ``"raw"`` for a file body; else :class:`UploadError` (415)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        return "form"
    if media.startswith(("audio/", "video/")) or media in RAW_TYPES:
        return "raw"
    raise UploadError(
        f"unsupported Content-Type {media or '(none)'!r}: send multipart/form-data with a 'file' "
        "field, or the file itself as the body with Content-Type audio/*",
        status=415,
    )


def source_name(name: str | None) -> str:
    """A file name fit to echo back: its last path part, at most 200 characters."""
    base = PurePath((name or "").replace("\\", "/")).name
    return base[:200] or "upload"


# -- receiving ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """An upload on disk: ``path`` of ``size`` bytes with SHA-256 ``sha256`` (hex)."""

    path: str
    size: int
    sha256: str
    name: str


def _too_large(max_bytes: int) -> UploadError:
    return UploadError(f"the file is larger than the limit of {max_bytes} bytes", status=413)


def limited_receive(receive: Receive, limit: int, max_bytes: int) -> Receive:
    """``receive`` that raises :class:`UploadError` (413) once the body passes ``limit`` bytes."""
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(max_bytes)
        return message

    return limited


class Spool:
    """A temporary file written from the event loop in large pieces by a worker thread."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.path = ""
        self.size = 0
        self._hash = hashlib.sha256()
        self._buffer = bytearray()

    async def open(self) -> None:
        fd, self.path = await asyncio.to_thread(tempfile.mkstemp, prefix="genrecast-upload-")
        os.close(fd)

    async def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise _too_large(self.max_bytes)
        self._hash.update(data)
        self._buffer += data
        if len(self._buffer) >= SPOOL_CHUNK_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            await asyncio.to_thread(_append, self.path, data)

    async def copy_from(self, file: BinaryIO) -> None:
        """Append the whole of ``file`` (from its start), counting and hashing it."""
        await self.flush()
        self.size = await asyncio.to_thread(_copy_file, file, self.path, self._hash, self.max_bytes)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    async def remove(self) -> None:
        if self.path:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.unlink, self.path)


def _append(path: str, data: bytes) -> None:
    with open(path, "ab") as out:
        out.write(data)


def _copy_file(file: BinaryIO, path: str, digest: Any, max_bytes: int) -> int:
    """Append ``file`` to ``path`` and feed it to ``digest`` (a hashlib object); its size."""
    size = 0
    file.seek(0)
    with open(path, "ab") as out:
        while block := file.read(SPOOL_CHUNK_BYTES):
            size += len(block)
            if size > max_bytes:
                raise _too_large(max_bytes)
            digest.update(block)
            out.write(block)
    return size


async def receive_upload(request: Request, spool: Spool, max_bytes: int) -> str:
    """Spool the uploaded file of ``request``; returns its name. Raises :class:`UploadError`."""
    kind = upload_kind(request.headers.get("content-type"))
    limit = max_bytes + (MULTIPART_OVERHEAD_BYTES if kind == "form" else 0)
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise UploadError(f"invalid Content-Length {length!r}")
        if int(length) > limit:
            raise _too_large(max_bytes)
    limited = Request(request.scope, limited_receive(request.receive, limit, max_bytes))
    if kind == "raw":
        async for chunk in limited.stream():
            await spool.add(chunk)
        await spool.flush()
        return source_name(request.query_params.get("name"))
    parser = MultiPartParser(limited.headers, limited.stream(), max_files=1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise UploadError(f"malformed multipart body: {exc.message}") from None
    try:
        field = form.get("file")
        if not isinstance(field, UploadFile):
            raise UploadError("the multipart form has no 'file' field with a file in it")
        await spool.copy_from(field.file)
        return source_name(field.filename)
    finally:
        await form.close()
        # A body that ends inside a file part leaves that part in no field, and Starlette
        # closes its spooled file only when parsing fails: close whatever it opened.
        for leftover in getattr(parser, "_files_to_close_on_error", ()):
            leftover.close()


# -- decoding ----------------------------------------------------------------------------------


def _reason(exc: DecodeError) -> str:
    """FFmpeg's words for what went wrong, without the (temporary) file name."""
    cause = exc.__cause__
    strerror = getattr(cause, "strerror", None)
    return str(strerror) if strerror else "unknown error"


def decode_upload(path: str, sample_rate: int, max_duration_s: float) -> np.ndarray:
    """Decode the file at ``path`` to ``(samples,)`` float32 mono at ``sample_rate`` Hz.

    Raises:
        UploadError: 415 when FFmpeg cannot read it as audio; 422 when it is truncated, damaged,
            holds no decodable audio or lasts longer than ``max_duration_s`` seconds.
    """
    try:
        info = probe(path)
    except DecodeError as exc:
        if isinstance(exc.__cause__, av.error.EOFError):
            raise UploadError(
                "the file ends before its audio starts: it looks truncated", status=422
            ) from None
        if exc.__cause__ is None:
            raise UploadError(
                "the file has no audio stream that can be decoded", status=415
            ) from None
        raise UploadError(
            f"not an audio file FFmpeg can read ({_reason(exc)})", status=415
        ) from None
    too_long = UploadError(
        f"the audio is longer than the limit of {max_duration_s:g} s", status=422
    )
    if info.duration_s is not None and info.duration_s > max_duration_s:
        raise too_long
    limit = max_duration_s * sample_rate
    blocks: list[np.ndarray] = []
    total = 0
    try:
        for block in iter_pcm(path, sample_rate=sample_rate, channels=1, chunk_seconds=10.0):
            total += block.shape[0]
            if total > limit:
                raise too_long
            blocks.append(block[:, 0])
    except DecodeError as exc:
        raise UploadError(
            f"the audio could not be decoded ({_reason(exc)}): damaged or truncated?", status=422
        ) from None
    if total == 0:
        raise UploadError(
            "no audio could be decoded: the file is empty, truncated or damaged", status=422
        )
    return np.concatenate(blocks)


# -- inference ---------------------------------------------------------------------------------


async def classify_on_engine(
    audio: np.ndarray, engine: WindowEngine, params: SessionParams
) -> tuple[list[GenreUpdate], np.ndarray, list[Segment], bool]:
    """:func:`~stream_server.inference.classify.classify_audio` with the engine thread as the
    runner.

    Windows are prepared in a worker thread and run on the engine thread, ``PIPELINE_DEPTH``
    batches of ``engine.max_batch`` at a time; the event loop only awaits them.
    """
    from stream_server.inference.classify import OfflineStream  # torch, once a file comes

    stream = OfflineStream(audio, params, engine.max_batch)
    pending: deque[Future[WindowScores]] = deque()
    try:
        while True:
            while len(pending) < PIPELINE_DEPTH:
                jobs = await asyncio.to_thread(stream.next_batch)
                if jobs is None:
                    break
                windows = stack_windows(jobs)
                pending.append(engine.run_windows(windows, jobs))
            if not pending:
                return await asyncio.to_thread(stream.result)
            stream.add_scores(await asyncio.wrap_future(pending[0]))
            pending.popleft()
    finally:
        # The engine's own futures, cancelled now: a chunk not yet started never runs, so
        # nothing of this stream runs after its release (which waits for a running chunk).
        for future in pending:
            future.cancel()
        engine.release(stream.stream_id)


# -- the endpoint ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Classifier:
    """What classifying an upload takes: the engine its windows run on, the session parameters
    of the loaded model, and, for the answer, the device's and the model's names."""

    engine: WindowEngine
    params: SessionParams
    device: str
    model: str


class UploadHost(Protocol):
    """What uploads need of the service."""

    @property
    def ready(self) -> bool: ...

    @property
    def stopping(self) -> bool:
        """No new upload is taken (the server is draining)."""

    def classifier(self) -> Classifier | None:
        """The engine and parameters to classify with; ``None`` until the model is loaded."""


class Uploads:
    """The upload side of one server: its limits, its answer cache, its metrics. ``host`` is
    what it needs of the service (:class:`UploadHost`)."""

    def __init__(self, host: UploadHost, config: UploadConfig, metrics: Metrics) -> None:
        self.host = host
        self.config = config
        self.metrics = metrics
        self.cache: ResultCache[str, ClassifyAnswer] = ResultCache(self.config.cache_entries)
        #: Uploads being received or classified now (at most ``max_concurrent``).
        self.active = 0

    async def handle(self, request: Request) -> Response:
        metrics = self.metrics
        if self.host.stopping:
            return JSONResponse({"error": "the server is stopping"}, status_code=503)
        if self.active >= self.config.max_concurrent:
            metrics.uploads.labels(result="refused").inc()
            return JSONResponse(
                {
                    "error": f"{self.active} uploads are being classified (the limit is "
                    f"{self.config.max_concurrent}); try again in a moment"
                },
                status_code=503,
                headers={"Retry-After": "2"},
            )
        self.active += 1
        try:
            return await self._handle(request)
        finally:
            self.active -= 1

    async def _handle(self, request: Request) -> Response:
        metrics = self.metrics
        spool = Spool(self.config.max_bytes)
        try:
            if not self.host.ready:
                raise UploadError("the model is still loading; try again", status=503)
            await spool.open()
            name = await receive_upload(request, spool, self.config.max_bytes)
            result = await self.classify(spool, name)
        except UploadError as exc:
            metrics.uploads.labels(result="refused").inc()
            log.info("upload refused (%d): %s", exc.status, exc)
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except ClientDisconnect:
            return Response(status_code=400)
        except EngineStopped:
            metrics.uploads.labels(result="failed").inc()
            return JSONResponse({"error": "the server is stopping"}, status_code=503)
        except Exception:
            metrics.uploads.labels(result="failed").inc()
            metrics.errors.labels(kind="upload").inc()
            log.exception("classifying an upload failed")
            return JSONResponse(
                {"error": "classification failed on the server (its log says why)"},
                status_code=500,
            )
        finally:
            await spool.remove()
        metrics.uploads.labels(result="cached" if result["cached"] else "classified").inc()
        return JSONResponse(result)

    async def classify(self, spool: Spool, name: str) -> ClassifyAnswer:
        """The answer for the spooled file: from the cache, else decoded and run."""
        start = time.perf_counter()
        if spool.size == 0:
            raise UploadError("the upload is empty")
        cached = self.cache.get(spool.sha256)
        if cached is not None:
            hit = cached.copy()
            hit["source"] = name
            hit["cached"] = True
            hit["processing_ms"] = round((time.perf_counter() - start) * 1000.0, 3)
            return hit
        classifier = self.host.classifier()
        if classifier is None:
            raise UploadError("the model is still loading; try again", status=503)
        engine, params = classifier.engine, classifier.params
        audio = await asyncio.to_thread(
            decode_upload, spool.path, params.model_rate, self.config.max_duration_s
        )
        outcome = await classify_on_engine(audio, engine, params)
        self.metrics.upload_windows.inc(len(outcome[0]))
        from stream_server.inference.classify import make_report

        report = make_report(
            name,
            audio.size / params.model_rate,
            params,
            outcome,
            time.perf_counter() - start,
            device=classifier.device,
            model=classifier.model,
        )
        result = with_summary(report.to_result(sha256=spool.sha256))
        self.cache.put(spool.sha256, result)
        return result


def uploads_of(request: Request) -> Uploads:
    """The app's :class:`Uploads`, made on first use."""
    state = request.app.state
    uploads: Uploads | None = getattr(state, "uploads", None)
    if uploads is None:
        service = state.service
        uploads = Uploads(service, service.config.upload, service.metrics)
        state.uploads = uploads
    return uploads


async def classify_endpoint(request: Request) -> Response:
    """``POST /classify``: see the module docstring."""
    return await uploads_of(request).handle(request)
