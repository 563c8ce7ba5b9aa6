"""The ASGI middleware that applies :mod:`stream_server.serve.auth` to every HTTP request and
WebSocket handshake before any route sees it.

In order: the ``Host`` must be one this server answers to (else 421); a CORS preflight is
answered for allowed origins only; a request that changes something (any method but GET and
HEAD, and every WebSocket) must not come from a foreign ``Origin`` (403); a JSON route's body
must be sent as ``application/json`` (415); a guarded route needs a
token or ticket with its scope (401 without one, 403 with too few scopes) when tokens are
configured. ``POST /auth/ticket`` turns a bearer token into a browser ticket with its scopes.
Refusals are JSON ``{"error", "code"}``; a refused WebSocket gets the same as an HTTP response
to its handshake (or a bare 403 where the ASGI server cannot send one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers, QueryParams
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stream_server.messages import close_reason
from stream_server.serve.auth import (
    Scope as AccessScope,
)
from stream_server.serve.auth import (
    TicketAnswer,
    TicketIssuer,
    Tokens,
    bearer_token,
    host_allowed,
    origin_allowed,
)

__all__ = ["TICKET_PATH", "Guard", "GuardPolicy", "client_address"]

#: Where a bearer token is exchanged for a browser ticket.
TICKET_PATH = "/auth/ticket"

#: Methods that change nothing (no Origin check).
_SAFE_METHODS = frozenset({"GET", "HEAD"})


def client_address(conn: HTTPConnection) -> str:
    """The address a request or WebSocket came from ("?" when the ASGI server does not say):
    the key of the per-client limits."""
    return conn.client.host if conn.client is not None else "?"


@dataclass(frozen=True)
class GuardPolicy:
    """What the guard enforces.

    ``required(method, path)`` is the scope a route needs (``None``: open); ``bind_host`` the
    address the server listens on; ``hosts`` and ``origins`` the ``[auth]`` lists;
    ``json_paths`` the routes whose POST body is JSON (refused, 415, under any other
    ``Content-Type``: a cross-site form cannot send ``application/json``).
    """

    tokens: Tokens
    tickets: TicketIssuer
    required: Callable[[str, str], AccessScope | None]
    bind_host: str = "127.0.0.1"
    hosts: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()
    json_paths: frozenset[str] = frozenset()


class Guard:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        policy = self.policy
        headers = Headers(scope=scope)
        host = headers.get("host")
        if not host_allowed(host, policy.bind_host, policy.hosts):
            await _refuse(
                scope, send, 421, "unknown_host", "this server does not answer to that Host"
            )
            return
        origin = headers.get("origin")
        websocket = scope["type"] == "websocket"
        method = "GET" if websocket else str(scope["method"]).upper()
        allowed_origin = origin_allowed(origin, host, policy.origins)
        if method == "OPTIONS" and origin is not None:
            await _preflight(send, origin if allowed_origin else None)
            return
        if (websocket or method not in _SAFE_METHODS) and not allowed_origin:
            await _refuse(
                scope, send, 403, "origin_not_allowed", f"requests from {origin} are not allowed"
            )
            return
        path = str(scope["path"])
        if not websocket and method == "POST" and path == TICKET_PATH:
            await self._ticket(headers, send)
            return
        if method == "POST" and path in policy.json_paths:
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                await _refuse(
                    scope, send, 415, "unsupported_media_type",
                    "the body must be JSON, sent with Content-Type: application/json",
                )  # fmt: skip
                return
        needed = policy.required(method, path)
        if needed is not None and policy.tokens.enabled:
            granted = policy.tokens.scopes_of(bearer_token(headers.get("authorization")))
            granted |= policy.tickets.scopes_of(QueryParams(scope["query_string"]).get("ticket"))
            if not granted:
                await _refuse(
                    scope, send, 401, "unauthorized", "a token is needed (Authorization: Bearer)"
                )
                return
            if needed not in granted:
                await _refuse(
                    scope, send, 403, "forbidden", f"this needs a token with the {needed!r} scope"
                )
                return
        if origin is not None and origin in policy.origins:
            send = _with_cors(send, origin)
        await self.app(scope, receive, send)

    async def _ticket(self, headers: Headers, send: Send) -> None:
        policy = self.policy
        scopes = policy.tokens.scopes_of(bearer_token(headers.get("authorization")))
        if not policy.tokens.enabled:
            await _json(send, 404, {"error": "no tokens are configured", "code": "no_auth"})
            return
        if not scopes:
            await _json(
                send, 401, {"error": "a bearer token is needed", "code": "unauthorized"}, auth=True
            )
            return
        ticket = policy.tickets.issue(scopes)
        body = TicketAnswer(
            ticket=ticket, expires_in_s=policy.tickets.lifetime_s, scopes=sorted(scopes)
        )
        await _json(send, 200, dict(body))


async def _json(send: Send, status: int, body: dict[str, Any], *, auth: bool = False) -> None:
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if auth:
        headers.append((b"www-authenticate", b'Bearer realm="genrecast"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _refuse(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    body = {"error": message, "code": code}
    if scope["type"] == "http":
        await _json(send, status, body, auth=status == 401)
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        data = json.dumps(body).encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": data})
        return
    await send({"type": "websocket.close", "code": 1008, "reason": close_reason(message)})


async def _preflight(send: Send, origin: str | None) -> None:
    """Answer a CORS preflight: the allowed origin gets its methods and headers, others 403."""
    if origin is None:
        await _json(send, 403, {"error": "origin not allowed", "code": "origin_not_allowed"})
        return
    headers = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-methods", b"GET, POST, DELETE"),
        (b"access-control-allow-headers", b"authorization, content-type"),
        (b"access-control-max-age", b"600"),
        (b"vary", b"Origin"),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _with_cors(send: Send, origin: str) -> Send:
    """``send`` that marks HTTP responses readable by ``origin`` (an allowed foreign origin)."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
            headers.append((b"vary", b"Origin"))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped
