"""A deadline for receiving each HTTP request head, so slow or silent clients cannot hold sockets.

uvicorn closes a kept-alive connection that sends nothing for ``timeout_keep_alive`` seconds
between requests, but it sets no deadline on the request head itself: a client that connects and
sends nothing, or trickles a header byte now and then ("slowloris"), holds its connection, a file
descriptor and a little memory for as long as it likes, and a few thousand such clients exhaust
the server's descriptors.

:func:`header_timeout_protocol` makes uvicorn's h11 protocol with a per-connection timer: armed
when the connection is made and again at the first byte of each further request on a kept-alive
connection, cancelled once the request head (request line and headers) is complete. It is not
reset by later bytes, so trickling does not extend it. When it fires, a client that sent part of
a head gets ``408 Request Timeout``, one that sent nothing is just closed. Request bodies
(uploads) and WebSocket connections, once upgraded, are not bound by it; a WebSocket handshake is
an HTTP request head and is.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HeaderTimeoutProtocol", "header_timeout_protocol"]

log = logging.getLogger(__name__)

_TIMEOUT_BODY = b"request head not received in time\n"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\n"
    b"connection: close\r\n"
    b"\r\n" % len(_TIMEOUT_BODY)
) + _TIMEOUT_BODY


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request head (see the module docstring).

    Use :func:`header_timeout_protocol` to get a subclass with the deadline set; uvicorn takes it
    as ``uvicorn.Config(http=...)``.
    """

    #: Seconds from connecting (or from the first byte of a further request) to a complete head.
    header_timeout_s: float = 10.0

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self._awaiting_head():
            self._arm_head_timer()  # the first byte of a further request on this connection
        super().data_received(data)
        if not self._awaiting_head():
            # The head is in (or the connection failed, or became a WebSocket): no deadline.
            self._cancel_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._awaiting_head() or self.conn.our_state is not h11.IDLE:
            return
        partial = bool(self.conn.trailing_data[0])
        log.debug(
            "%s: no complete request head within %g s; closing",
            self.client,
            self.header_timeout_s,
        )
        if partial:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def header_timeout_protocol(timeout_s: float) -> type[HeaderTimeoutProtocol]:
    """A :class:`HeaderTimeoutProtocol` subclass whose request heads are due within
    ``timeout_s`` seconds.

    Raises:
        ValueError: ``timeout_s`` is not > 0.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    seconds = float(timeout_s)

    class Configured(HeaderTimeoutProtocol):
        header_timeout_s = seconds

    return Configured
