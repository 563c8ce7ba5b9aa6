"""The server's REST endpoints for the dashboard: each call returns a :class:`Reply`, never raises.

Timeouts are seconds. ``Reply.error`` is a one-line reason shown to the user (server down, a
refusal with the server's own ``error`` text, a malformed answer) and ``Reply.data`` is the
decoded JSON (or text for CSV and metrics) when the call succeeded. Every request carries the
token of :func:`stream_server.tools.client.auth_headers` (``$GENRECAST_TOKEN`` unless one is given);
a 401 or a 403 for want of a scope says so in ``Reply.error``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from stream_server.serve.auth import ADMIN, INGEST, READ, Scope
from stream_server.tools.client import auth_headers, http_base, refusal

#: Seconds one quick request (lists, health, metrics, forms) may take.
QUICK_TIMEOUT_S = 3.0
#: Seconds an upload may take to be classified.
UPLOAD_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Reply:
    """The outcome of one request: ``data`` when ``ok``, else a readable ``error``."""

    data: Any = None
    error: str = ""
    status: int = 0

    @property
    def ok(self) -> bool:
        return not self.error


def _reason(response: httpx.Response, scope: Scope | None, sent_token: bool) -> str:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if scope is not None:
        access = refusal(response.status_code, body, scope, sent_token)
        if access is not None:
            return f"{response.status_code}: {access}"
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return f"{response.status_code}: {body['error']}"
    return f"{response.status_code}: {response.reason_phrase}"


class Api:
    """Thin REST client for one server (``http://host:port`` or ``ws://host:port``); ``token``:
    sent as ``Authorization: Bearer`` (``None``: ``$GENRECAST_TOKEN``, if set)."""

    def __init__(self, server: str, token: str | None = None) -> None:
        self.base = http_base(server)
        self._headers = auth_headers(token)

    def _call(
        self,
        method: str,
        path: str,
        *,
        text: bool = False,
        timeout_s: float = QUICK_TIMEOUT_S,
        scope: Scope | None = None,
        **kwargs: Any,
    ) -> Reply:
        """One request; ``scope``: the one the path needs (``None``: open), for the message a
        refusal gets."""
        try:
            response = httpx.request(
                method,
                self.base + path,
                timeout=timeout_s,
                trust_env=False,
                headers=self._headers,
                **kwargs,
            )
        except httpx.TimeoutException:
            return Reply(error=f"{self.base} did not answer within {timeout_s:g} s")
        except (httpx.HTTPError, OSError) as exc:
            return Reply(error=f"cannot reach {self.base}: {exc or type(exc).__name__}")
        if response.status_code >= 400:
            reason = _reason(response, scope, bool(self._headers))
            return Reply(error=reason, status=response.status_code)
        if text:
            return Reply(data=response.text, status=response.status_code)
        try:
            return Reply(data=response.json(), status=response.status_code)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return Reply(error=f"{path} answered something that is not JSON", status=200)

    def health(self) -> Reply:
        return self._call("GET", "/health", text=True)

    def ready(self) -> Reply:
        return self._call("GET", "/ready")

    def streams(self) -> Reply:
        """``GET /streams``: ``data`` is the list of stream dicts."""
        reply = self._call("GET", "/streams", scope=READ)
        if reply.ok:
            streams = reply.data.get("streams") if isinstance(reply.data, dict) else None
            if not isinstance(streams, list):
                return Reply(error="/streams answered without a 'streams' list")
            return Reply(data=streams, status=reply.status)
        return reply

    def timeline(self, stream_id: str) -> Reply:
        return self._call("GET", f"/streams/{stream_id}/timeline", scope=READ)

    def metrics(self) -> Reply:
        return self._call("GET", "/metrics", text=True, scope=READ)

    def add_stream(self, url: str, name: str = "") -> Reply:
        return self._call("POST", "/streams", json={"url": url, "name": name}, scope=ADMIN)

    def stop_stream(self, stream_id: str) -> Reply:
        return self._call("DELETE", f"/streams/{stream_id}", scope=ADMIN)

    def classify(self, filename: str, content: bytes, content_type: str = "") -> Reply:
        files = {"file": (filename, content, content_type or "application/octet-stream")}
        return self._call(
            "POST", "/classify", files=files, timeout_s=UPLOAD_TIMEOUT_S, scope=INGEST
        )
