"""HTTP and WebSocket routes (Starlette). Handlers only move bytes between sockets and the service.

Routes:
    WS  /ws/ingest                 PCM in: ``start`` JSON, binary frames, ``stop``
    WS  /ws/updates                messages out; ``?stream_id=`` filter, ``?since=SEQ`` resume
    GET /health                    the process is alive (a worker of ``--workers N``: which one)
    GET /ready                     the model is loaded (503 until then): model, device, labels
    GET /streams                   live and stored streams
    POST /streams                  ``{"url", "name"?}``: the server pulls the URL (or local path)
    DELETE /streams/{id}           stop a live stream (a pulled one stops fetching)
    GET /streams/{id}/timeline     ``{"stream_id", "segments", "titles"}``; ``?format=csv`` for CSV
    GET /metrics                   Prometheus text format
    POST /classify                 one file (multipart ``file``, or an audio/* body) -> genres
    POST /webrtc/offer             browser audio over WebRTC: SDP offer in, answer + stream_id out
                                   (501 without the ``webrtc`` extra)
    GET /mic                       the browser microphone page
    GET /                          the landing page: what runs, links to everything
    GET /docs                      the API and WebSocket protocol as a page
    GET /openapi.json              the API, generated from these routes (OpenAPI 3.1)
    GET /favicon.ico, .svg, .png   the icon
    POST /auth/ticket              a bearer token in, a short-lived browser ticket out

Every request passes :class:`~stream_server.serve.guard.Guard` first: Host and Origin checks, JSON
bodies only as ``application/json``, and with tokens configured the scope of
:func:`required_scope` (open: :data:`OPEN_PATHS`, what shows no stream data; ``read``: listings,
timelines, ``/ws/updates``, ``/metrics``; ``ingest``: ``/ws/ingest``, ``/webrtc/offer``,
``/classify``; ``admin``: ``POST /streams``, ``DELETE /streams/{id}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.exceptions import InvalidState

from stream_server import version
from stream_server.config import Config
from stream_server.core.palette import label_colours
from stream_server.core.records import FINAL_STATES
from stream_server.core.timeline import segments_to_csv
from stream_server.errors import ClusterError, ProtocolError, SourceRefused
from stream_server.extras import EXTRAS
from stream_server.messages import (
    StreamEnded,
    close_reason,
    dumps,
    error,
    parse_client_message,
    parse_stream_request,
)
from stream_server.serve.auth import ADMIN, INGEST, READ, Scope, TicketIssuer, Tokens, load_tokens
from stream_server.serve.guard import Guard, GuardPolicy, client_address
from stream_server.serve.openapi import (
    DeletedAnswer,
    ErrorAnswer,
    HealthAnswer,
    NotReadyAnswer,
    ReadyAnswer,
    openapi_schema,
)
from stream_server.serve.pages import (
    Landing,
    dashboard_running,
    render_docs,
    render_landing,
)
from stream_server.serve.service import LiveStream, Service
from stream_server.serve.upload import classify_endpoint

if TYPE_CHECKING:
    from stream_server.sources.webrtc import WebRTCGateway

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

#: An HTTP route's handler.
Endpoint = Callable[[Request], Awaitable[Response]]

log = logging.getLogger(__name__)

#: Seconds allowed for a close handshake with a client that may have stopped reading.
CLOSE_TIMEOUT_S = 2.0

#: The most of the event loop's time one ingest connection's frames may take (0..1).
FEED_SHARE = 0.25
#: Frames that took less of the loop than this (seconds) go on without a pause.
_PAUSE_AFTER_S = 0.002

#: Closes of ingest sockets whose stream was ended elsewhere, kept until they finish.
_FINISHING: set[asyncio.Task[None]] = set()


class _QuietClientErrors(logging.Filter):
    """A client's text frame of invalid UTF-8 is the client's error, which uvicorn's WebSocket
    protocol answers itself by closing with 1007; but it logs a traceback at ERROR, and when the
    client's close frame came in the same read, asyncio logs a second one (uvicorn then sends a
    close on a closing connection: "Fatal error: protocol.data_received() call failed"). Any
    client could fill the log with them: each is kept as one line at INFO. A handshake the guard
    refused is not an error either (:func:`_refused_handshake`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _refused_handshake(record):
            return False  # the guard answered the handshake with an HTTP error; logged as such
        if not _invalid_utf8_from_client(record):
            return True
        record.msg, record.args = "a WebSocket client sent invalid UTF-8 in a text frame", ()
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info = record.exc_text = None
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def _refused_handshake(record: logging.LogRecord) -> bool:
    """uvicorn's complaint after the guard refused a WebSocket handshake with an HTTP answer
    (401, 403, 421, 415): it counts only an accept or a close as completing the handshake. Every
    route here accepts or closes, so the guard is the only source; its answer is already in the
    access log ("WebSocket /ws/ingest" 401)."""
    return (
        record.name == "uvicorn.error"
        and record.msg == "ASGI callable returned without completing handshake."
    )


def _invalid_utf8_from_client(record: logging.LogRecord) -> bool:
    if record.name == "uvicorn.error":
        return record.msg == "Invalid UTF-8 sequence received from client."
    exc = record.exc_info[1] if record.exc_info else None
    return isinstance(exc, InvalidState) and isinstance(exc.__context__, UnicodeDecodeError)


def _quiet_client_errors() -> None:
    """Install :class:`_QuietClientErrors` on the loggers concerned (once)."""
    for name in ("uvicorn.error", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietClientErrors) for f in logger.filters):
            logger.addFilter(_QuietClientErrors())


async def _close(ws: WebSocket, code: int, reason: str = "") -> None:
    if ws.application_state == WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code, close_reason(reason)), CLOSE_TIMEOUT_S)


async def _reject(ws: WebSocket, exc: ProtocolError) -> None:
    """Tell the client what was wrong, then close with the error's close code."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.send_text(dumps(error(exc.code, str(exc)))), CLOSE_TIMEOUT_S)
    await _close(ws, exc.close_code, str(exc))


def _close_when_ended_elsewhere(ws: WebSocket, live: LiveStream) -> None:
    """When ``live`` is ended by someone else (``DELETE /streams/{id}``, server stop), tell the
    pushing client with ``stream.ended`` and close its socket instead of leaving it waiting."""

    async def finish(ended: StreamEnded) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.send_text(dumps(ended)), CLOSE_TIMEOUT_S)
        await _close(ws, 1000, f"stream ended: {ended['reason']}")

    def on_end(ended: StreamEnded) -> None:
        task = asyncio.get_running_loop().create_task(finish(ended))
        _FINISHING.add(task)
        task.add_done_callback(_FINISHING.discard)

    live.on_end = on_end


async def _yield_loop(spent_s: float) -> None:
    """After a frame that took ``spent_s`` of the event loop, pause this connection so that it
    takes at most :data:`FEED_SHARE` of the loop: a client flooding costly frames (a slow
    resampling ratio, the largest frames) is slowed down through TCP back-pressure, and every
    other stream, subscriber and request keeps its turn."""
    if spent_s > _PAUSE_AFTER_S:
        await asyncio.sleep(spent_s * (1.0 / FEED_SHARE - 1.0))


async def _first(ws: WebSocket, timeout_s: float) -> Message:
    """The first message of an ingest connection, which must come within ``timeout_s``."""
    try:
        return await asyncio.wait_for(ws.receive(), timeout_s)
    except TimeoutError:
        raise ProtocolError(
            f"no 'start' message within {timeout_s:g} s", code="start_timeout"
        ) from None


async def ingest(ws: WebSocket) -> None:
    service: Service = ws.app.state.service
    max_frame = service.config.server.max_frame_bytes
    start_timeout_s = service.config.server.start_timeout_s
    await ws.accept()
    live: LiveStream | None = None
    end_reason = "client disconnected"
    try:
        while True:
            message = await (ws.receive() if live is not None else _first(ws, start_timeout_s))
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is not None:
                if live is None:
                    raise ProtocolError("binary audio frame before the 'start' message")
                if len(data) > max_frame:
                    raise ProtocolError(
                        f"audio frame of {len(data)} bytes exceeds the limit of {max_frame} bytes",
                        code="frame_too_large",
                        close_code=1009,
                    )
                began = time.perf_counter()
                service.feed(live, data)
                await _yield_loop(time.perf_counter() - began)
                continue
            text = message.get("text")
            if text is not None and len(text) > max_frame:
                raise ProtocolError(
                    f"text message of {len(text)} characters exceeds the limit",
                    code="frame_too_large",
                    close_code=1009,
                )
            parsed = parse_client_message(text or "")
            if parsed["type"] == "start":
                if live is not None:
                    raise ProtocolError("the stream was already started")
                live, started = await service.open_stream(
                    parsed, kind="ws", source="websocket", client=client_address(ws)
                )
                await ws.send_text(started)
                _close_when_ended_elsewhere(ws, live)
            else:
                if live is None:
                    raise ProtocolError("'stop' before 'start'")
                live.on_end = None
                ended = await service.end_stream(live, "stopped by client")
                if ended is not None:
                    await ws.send_text(dumps(ended))
                await _close(ws, 1000, "stream ended")
                return
    except ProtocolError as exc:
        service.metrics.errors.labels(kind=exc.code).inc()
        log.info("ingest client rejected: %s", exc)
        end_reason = f"protocol error: {exc}"
        await _reject(ws, exc)
    except WebSocketDisconnect:
        pass
    finally:
        if live is not None and not live.ended:
            live.on_end = None
            await service.end_stream(live, end_reason)


async def _pump(ws: WebSocket, queue: asyncio.Queue[str]) -> None:
    while True:
        await ws.send_text(await queue.get())


async def _watch_disconnect(ws: WebSocket) -> None:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return


async def updates(ws: WebSocket) -> None:
    service: Service = ws.app.state.service
    await ws.accept()
    stream_id = ws.query_params.get("stream_id") or None
    since_text = ws.query_params.get("since")
    since: int | None = None
    if since_text is not None:
        try:
            since = int(since_text)
        except ValueError:
            await _reject(ws, ProtocolError(f"'since' must be an integer seq, got {since_text!r}"))
            return
    try:
        sub = await service.subscribe(stream_id, since)
    except ClusterError as exc:  # the cluster's stream could not be read back
        await _reject(ws, ProtocolError(str(exc), code="storage", close_code=1011))
        return
    service.metrics.subscribers.set(service.hub.subscribers)
    tasks = {
        asyncio.create_task(_pump(ws, sub.queue)),
        asyncio.create_task(_watch_disconnect(ws)),
        asyncio.create_task(sub.dropped.wait()),
    }
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        service.hub.unsubscribe(sub)
        service.metrics.subscribers.set(service.hub.subscribers)
    if sub.dropped.is_set():
        log.info("dropped a subscriber that fell %d messages behind", service.hub.queue_size)
        await _close(ws, 1013, "subscriber too slow; reconnect with ?since=SEQ")


async def health(request: Request) -> Response:
    """``{"status": "ok"}``; an ingest worker of ``serve --workers N`` adds its ``worker``
    index (0..N-1), process id and how many live streams it holds; a cluster node its
    ``node`` id (as ``GET /streams`` names the node of a live stream) and its streams."""
    service: Service = request.app.state.service
    body = HealthAnswer(status="ok")
    if service.link is not None:
        body |= {"worker": service.link.index, "pid": os.getpid(), "streams": len(service.streams)}
    if service.cluster_store is not None:
        body |= {"node": service.node_id, "streams": len(service.streams)}
    return JSONResponse(body)


def ready_answer(service: Service) -> ReadyAnswer | NotReadyAnswer:
    """What ``GET /ready`` answers (the landing page shows the same)."""
    if not service.ready or service.model is None:
        return NotReadyAnswer(ready=False, error=service.load_error)
    model = service.model
    return ReadyAnswer(
        ready=True,
        model=model.source,
        trained=model.trained,
        device=service.device,
        half_precision=service.precision == "float16",
        precision=service.precision,
        labels=list(service.display_labels),
        colours=label_colours(service.display_labels),
        sample_rate=model.preprocessing.sample_rate,
        window_s=service.window_s,
        hop_s=service.config.engine.hop_s,
    )


async def ready(request: Request) -> Response:
    """The model is loaded (200), or not yet or not at all (503)."""
    answer = ready_answer(request.app.state.service)
    return JSONResponse(answer, status_code=200 if answer["ready"] else 503)


async def list_streams(request: Request) -> Response:
    service: Service = request.app.state.service
    return JSONResponse({"streams": await service.list_streams()})


async def timeline(request: Request) -> Response:
    service: Service = request.app.state.service
    stream_id = request.path_params["stream_id"]
    segments = await service.timeline(stream_id)
    if segments is None:
        return JSONResponse({"error": f"unknown stream {stream_id!r}"}, status_code=404)
    fmt = request.query_params.get("format", "json")
    if fmt == "csv":
        return PlainTextResponse(segments_to_csv(segments), media_type="text/csv")
    if fmt != "json":
        return JSONResponse({"error": "format must be 'json' or 'csv'"}, status_code=400)
    titles = [t.to_dict() for t in await service.titles(stream_id)]
    return JSONResponse(
        {"stream_id": stream_id, "segments": [s.to_dict() for s in segments], "titles": titles}
    )


async def create_stream(request: Request) -> Response:
    """``POST /streams {"url", "name"?}``: the server pulls the source itself (201)."""
    service: Service = request.app.state.service
    try:
        parsed = parse_stream_request(await request.body())
    except ProtocolError as exc:
        return JSONResponse({"error": str(exc), "code": exc.code}, status_code=400)
    url, name = parsed["url"], parsed.get("name", "")
    try:
        live = await service.pull(url, name=name)
    except SourceRefused as exc:  # one answer for "no such file" and "not allowed"
        return JSONResponse({"error": str(exc), "code": "source_not_allowed"}, status_code=403)
    except ProtocolError as exc:
        return JSONResponse({"error": str(exc), "code": exc.code}, status_code=503)
    return JSONResponse(service.describe(live), status_code=201)


async def delete_stream(request: Request) -> Response:
    """``DELETE /streams/{id}``: end a live stream; 404 if it is not live."""
    service: Service = request.app.state.service
    stream_id = request.path_params["stream_id"]
    if not await service.stop_stream(stream_id):
        return JSONResponse(ErrorAnswer(error=f"no live stream {stream_id!r}"), status_code=404)
    return JSONResponse(DeletedAnswer(stream_id=stream_id, state="ended"))


async def mic_page(request: Request) -> Response:
    """``GET /mic``: the browser microphone page."""
    return FileResponse(STATIC_DIR / "mic.html", media_type="text/html; charset=utf-8")


#: The icons, by path: the file in ``static/`` and its media type.
ICONS: dict[str, tuple[str, str]] = {
    "/favicon.ico": ("favicon.ico", "image/x-icon"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/favicon.png": ("favicon.png", "image/png"),
}


async def icon(request: Request) -> Response:
    """The icon, as ICO, SVG or PNG (the dashboard takes the PNG too)."""
    name, media_type = ICONS[request.url.path]
    return FileResponse(
        STATIC_DIR / name, media_type=media_type, headers={"cache-control": "max-age=86400"}
    )


async def landing_page(request: Request) -> Response:
    """``GET /``: what runs here, and links to the dashboard, the pages and the API."""
    service: Service = request.app.state.service
    guarded: bool = request.app.state.guarded
    streams: tuple[int, int] | None = None
    if not guarded:  # anyone may read them: the page shows them at once
        with contextlib.suppress(ClusterError):
            listed = await service.list_streams()
            live = sum(1 for s in listed if s.get("state") not in FINAL_STATES)
            streams = (live, len(listed) - live)
    port = service.config.server.dashboard_port
    dashboard = None
    if port and await dashboard_running(port):
        dashboard = str(request.url.replace(port=port, path="/", query="", fragment=""))
    page = Landing(
        ready=ready_answer(service),
        version=version(),
        streams=streams,
        guarded=guarded,
        dashboard_url=dashboard,
        dashboard_port=port,
        open_metrics=service.config.auth.open_metrics,
    )
    return HTMLResponse(render_landing(page), headers={"cache-control": "no-store"})


def api_document(request: Request) -> dict[str, Any]:
    """The OpenAPI document of the app serving ``request`` (made once per app)."""
    state = request.app.state
    if getattr(state, "openapi", None) is None:
        state.openapi = openapi_schema(
            request.app.routes,
            required=state.required,
            guarded=state.guarded,
            json_paths=JSON_PATHS,
            version=version(),
        )
    document: dict[str, Any] = state.openapi
    return document


async def openapi_json(request: Request) -> Response:
    """``GET /openapi.json``: the API, generated from the app's routes."""
    return JSONResponse(api_document(request))


async def docs_page(request: Request) -> Response:
    """``GET /docs``: ``/openapi.json`` as a page."""
    return HTMLResponse(render_docs(api_document(request)))


async def webrtc_not_installed(request: Request) -> Response:
    """``POST /webrtc/offer`` on a server installed without the ``webrtc`` extra: 501."""
    return JSONResponse({"error": EXTRAS["webrtc"].missing}, status_code=501)


async def metrics(request: Request) -> Response:
    service: Service = request.app.state.service
    return Response(await service.metrics_text(), media_type=service.metrics.content_type)


def _webrtc(service: Service) -> tuple[WebRTCGateway | None, Endpoint]:
    """The WebRTC gateway and its offer endpoint; ``None`` and a 501 without the extra."""
    if not EXTRAS["webrtc"].installed():
        return None, webrtc_not_installed
    from stream_server.sources.webrtc import WebRTCGateway, answer_request

    gateway = WebRTCGateway(service, service.config.webrtc)

    async def offer_endpoint(request: Request) -> Response:
        """``POST /webrtc/offer``: see :mod:`stream_server.sources.webrtc`."""
        return await answer_request(gateway, request, client_address(request))

    return gateway, offer_endpoint


#: What anyone may read, tokens or not: it shows no stream data.
OPEN_PATHS = frozenset({"/", "/health", "/ready", "/mic", "/docs", "/openapi.json", *ICONS})

#: The routes whose POST body must be JSON (the guard refuses any other ``Content-Type``).
JSON_PATHS = frozenset({"/streams", "/webrtc/offer"})


def required_scope(method: str, path: str, *, open_metrics: bool = False) -> Scope | None:
    """The scope a request needs (``None``: open to anyone); see :mod:`stream_server.serve.auth`.
    Paths no route serves need ``read``, so a stranger learns nothing from them."""
    if path in OPEN_PATHS:
        return None
    if path == "/metrics":
        return None if open_metrics else READ
    if path in ("/ws/ingest", "/webrtc/offer", "/classify"):
        return INGEST
    if path == "/streams" or path.startswith("/streams/"):
        changes = (method == "POST" and path == "/streams") or method == "DELETE"
        return ADMIN if changes else READ
    return READ


def configured_tokens(config: Config) -> Tokens:
    """The tokens of ``[auth]`` and ``GENRECAST_TOKEN``; raises :class:`ConfigError`."""
    auth = config.auth
    return load_tokens(
        {READ: auth.read_tokens, INGEST: auth.ingest_tokens, ADMIN: auth.admin_tokens}
    )


def create_app(service: Service, tokens: Tokens | None = None) -> Starlette:
    """The ASGI app around ``service``; its lifespan starts and stops the service.

    Every request passes the :class:`~stream_server.serve.guard.Guard` first, with ``tokens``
    (default: :func:`configured_tokens`). The landing page links to the dashboard when one
    answers on ``server.dashboard_port`` of this machine."""
    webrtc, offer = _webrtc(service)
    auth = service.config.auth
    open_metrics = auth.open_metrics

    def required(method: str, path: str) -> Scope | None:
        return required_scope(method, path, open_metrics=open_metrics)

    policy = GuardPolicy(
        tokens=configured_tokens(service.config) if tokens is None else tokens,
        tickets=TicketIssuer(auth.ticket_s),
        required=required,
        bind_host=service.config.server.host,
        hosts=tuple(auth.hosts),
        origins=tuple(auth.origins),
        json_paths=JSON_PATHS,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            if webrtc is not None:
                await webrtc.close()
            await service.stop()

    app = Starlette(
        routes=[
            WebSocketRoute("/ws/ingest", ingest),
            WebSocketRoute("/ws/updates", updates),
            Route("/health", health),
            Route("/ready", ready),
            Route("/streams", list_streams),
            Route("/streams", create_stream, methods=["POST"]),
            Route("/streams/{stream_id}", delete_stream, methods=["DELETE"]),
            Route("/streams/{stream_id}/timeline", timeline),
            Route("/metrics", metrics),
            Route("/classify", classify_endpoint, methods=["POST"]),
            Route(
                "/webrtc/offer",
                offer,
                methods=["POST"],
            ),
            Route("/mic", mic_page),
            Route("/", landing_page),
            Route("/docs", docs_page),
            Route("/openapi.json", openapi_json),
            *(Route(path, icon) for path in ICONS),
        ],
        lifespan=lifespan,
        middleware=[Middleware(Guard, policy=policy)],
    )
    app.state.service = service
    app.state.webrtc = webrtc
    app.state.required = required
    app.state.guarded = policy.tokens.enabled
    app.state.openapi = None
    _quiet_client_errors()
    return app
