"""HTTP and WebSocket routes (Starlette). Handlers only move bytes between sockets and the service.

Routes:
    WS  /ws/ingest                 PCM in: ``start`` JSON, binary frames, ``stop``
    WS  /ws/updates                messages out; ``?stream_id=`` filter, ``?since=SEQ`` resume
    GET /health                    the process is alive
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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from stream_server.errors import ProtocolError
from stream_server.extras import EXTRAS
from stream_server.messages import StreamEnded, dumps, error, parse_client_message
from stream_server.puller import local_path
from stream_server.service import LiveStream, Service
from stream_server.timeline import segments_to_csv
from stream_server.upload import classify_endpoint

if TYPE_CHECKING:
    from stream_server.webrtc import WebRTCGateway

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: An HTTP route's handler.
Endpoint = Callable[[Request], Awaitable[Response]]

log = logging.getLogger(__name__)

#: Seconds allowed for a close handshake with a client that may have stopped reading.
CLOSE_TIMEOUT_S = 2.0

#: Closes of ingest sockets whose stream was ended elsewhere, kept until they finish.
_FINISHING: set[asyncio.Task[None]] = set()


async def _close(ws: WebSocket, code: int, reason: str = "") -> None:
    if ws.application_state == WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code, reason[:120]), CLOSE_TIMEOUT_S)


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


async def ingest(ws: WebSocket) -> None:
    service: Service = ws.app.state.service
    max_frame = service.config.server.max_frame_bytes
    await ws.accept()
    live: LiveStream | None = None
    end_reason = "client disconnected"
    try:
        while True:
            message = await ws.receive()
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
                service.feed(live, data)
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
                live, started = await service.open_stream(parsed, kind="ws", source="websocket")
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
    sub = service.hub.subscribe(stream_id, since)
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
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    service: Service = request.app.state.service
    if not service.ready or service.model is None or service.runner is None:
        body = {"ready": False, "error": service.load_error}
        return JSONResponse(body, status_code=503)
    model = service.model
    return JSONResponse(
        {
            "ready": True,
            "model": model.source,
            "trained": model.trained,
            "device": str(service.runner.device),
            "half_precision": service.runner.half,
            "labels": list(service.display_labels),
            "sample_rate": model.preprocessing.sample_rate,
            "window_s": service.window_s,
            "hop_s": service.config.engine.hop_s,
        }
    )


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


def _bad_request(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=400)


async def create_stream(request: Request) -> Response:
    """``POST /streams {"url", "name"?}``: the server pulls the source itself (201)."""
    service: Service = request.app.state.service
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _bad_request(f"the body must be a JSON object: {exc}")
    if not isinstance(body, dict):
        return _bad_request('the body must be a JSON object like {"url": "http://..."}')
    url = body.get("url")
    if not isinstance(url, str) or not url.strip() or len(url) > 4096:
        return _bad_request("'url' must be a non-empty string (a URL or a path on the server)")
    name = body.get("name", "")
    if not isinstance(name, str) or len(name) > 200:
        return _bad_request("'name' must be a string of at most 200 characters")
    path = local_path(url.strip())
    if path is not None and not path.is_file():
        return _bad_request(f"no such file on the server: {str(path)!r}")
    try:
        live = await service.pull(url.strip(), name=name)
    except ProtocolError as exc:
        return JSONResponse({"error": str(exc), "code": exc.code}, status_code=503)
    return JSONResponse(service.describe(live), status_code=201)


async def delete_stream(request: Request) -> Response:
    """``DELETE /streams/{id}``: end a live stream; 404 if it is not live."""
    service: Service = request.app.state.service
    stream_id = request.path_params["stream_id"]
    if not await service.stop_stream(stream_id):
        return JSONResponse({"error": f"no live stream {stream_id!r}"}, status_code=404)
    return JSONResponse({"stream_id": stream_id, "state": "ended"})


async def mic_page(request: Request) -> Response:
    """``GET /mic``: the browser microphone page."""
    return FileResponse(STATIC_DIR / "mic.html", media_type="text/html; charset=utf-8")


async def webrtc_not_installed(request: Request) -> Response:
    """``POST /webrtc/offer`` on a server installed without the ``webrtc`` extra: 501."""
    return JSONResponse({"error": EXTRAS["webrtc"].missing}, status_code=501)


async def metrics(request: Request) -> Response:
    service: Service = request.app.state.service
    return Response(service.metrics.render(), media_type=service.metrics.content_type)


def _webrtc(service: Service) -> tuple[WebRTCGateway | None, Endpoint]:
    """The WebRTC gateway and its offer endpoint; ``None`` and a 501 without the extra."""
    if not EXTRAS["webrtc"].installed():
        return None, webrtc_not_installed
    from stream_server.webrtc import WebRTCGateway, offer_endpoint

    return WebRTCGateway(service), offer_endpoint


def create_app(service: Service) -> Starlette:
    """The ASGI app around ``service``; its lifespan starts and stops the service."""
    webrtc, offer = _webrtc(service)

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
        ],
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.webrtc = webrtc
    return app
