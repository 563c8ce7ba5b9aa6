"""Every network request of a pulled source, through one checked client.

The puller (:mod:`stream_server.sources.puller`) and FFmpeg's HLS demuxer (through PyAV's
``io_open``) reach the network only through these functions, so the source policy
(:class:`~stream_server.sources.source_policy.SourcePolicy`) is applied to every connection, not
only to the URL a client named:

* :func:`checked_client`: an ``httpx.Client`` whose every TCP connection goes through
  :class:`CheckedBackend`, which resolves the host, checks every address and connects only to a
  checked one (no window between check and connect). No proxies from the environment.
* :func:`fetch`: ``GET`` with redirects followed here, at most :data:`MAX_REDIRECTS`, each new URL
  checked.
* :func:`icy_get`: old SHOUTcast servers answer ``ICY 200 OK``, which is not HTTP; the request is
  then made again by hand over a checked connection and the answer's headers parsed here, so that
  its audio and its ``StreamTitle`` metadata are read like any other body.
* :func:`read_playlist`: an HLS playlist's bytes, at most :data:`MAX_PLAYLIST_BYTES`.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urljoin

import httpcore
import httpx

from stream_server.errors import DecodeError, NotHttp
from stream_server.sources.source_policy import SourcePolicy

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_PLAYLIST_BYTES",
    "MAX_REDIRECTS",
    "REQUEST_HEADERS",
    "CheckedBackend",
    "IcyResponse",
    "checked_client",
    "fetch",
    "icy_get",
    "playlist_chunks",
    "read_playlist",
    "socket_of",
]

#: Redirects followed per request, each one checked.
MAX_REDIRECTS: Final = 5

#: Largest HLS playlist read (bytes).
MAX_PLAYLIST_BYTES: Final = 1 << 20

#: Largest header block of an ``ICY 200 OK`` answer (bytes).
MAX_HEADER_BYTES: Final = 16 * 1024

#: Headers of every request: ask for ICY metadata (``StreamTitle``).
REQUEST_HEADERS: Final = {"Icy-MetaData": "1", "User-Agent": "genrecast"}

_READ_BYTES: Final = 64 * 1024
_END_OF_HEADERS: Final = re.compile(rb"\r?\n\r?\n")


class CheckedBackend(httpcore.SyncBackend):
    """httpx's network layer with the source policy in it: every TCP connection resolves its
    host, checks every address (:meth:`SourcePolicy.check_address`) and connects only to those,
    trying each in turn."""

    def __init__(self, policy: SourcePolicy) -> None:
        self._policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        addresses = self._policy.check_address(host, port)
        error: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        assert error is not None  # check_address returns at least one address
        raise error


class _CheckedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connections go through :class:`CheckedBackend`."""

    def __init__(self, policy: SourcePolicy) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            network_backend=CheckedBackend(policy),
        )


def checked_client(policy: SourcePolicy, timeout: httpx.Timeout) -> httpx.Client:
    """An ``httpx.Client`` for pulled sources: no proxies from the environment, no automatic
    redirects (:func:`fetch` follows them), every connection checked by ``policy``."""
    return httpx.Client(
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        transport=_CheckedTransport(policy),
    )


@contextlib.contextmanager
def fetch(client: httpx.Client, url: str, policy: SourcePolicy) -> Iterator[httpx.Response]:
    """``GET url`` (streamed), following at most :data:`MAX_REDIRECTS` redirects, each new URL
    checked by ``policy`` (:meth:`SourcePolicy.check_url`; its addresses are checked when the
    client connects). The response is closed on exit.

    Raises:
        SourceRefused: a redirect to a URL the policy refuses, or a refused address.
        NotHttp: the server did not answer in HTTP (an ``ICY 200 OK`` server: :func:`icy_get`).
        DecodeError: more than :data:`MAX_REDIRECTS` redirects.
        httpx.HTTPError: the request failed.
    """
    for _ in range(MAX_REDIRECTS + 1):
        request = client.build_request("GET", url, headers=REQUEST_HEADERS)
        try:
            response = client.send(request, stream=True)
        except httpx.RemoteProtocolError as exc:
            raise NotHttp(url) from exc
        if not response.is_redirect:
            try:
                yield response
            finally:
                response.close()
            return
        location = response.headers["location"]
        response.close()
        url = policy.check_url(urljoin(url, location)).url
    raise DecodeError(f"more than {MAX_REDIRECTS} redirects")


@dataclass
class IcyResponse:
    """An ``ICY 200 OK`` answer: its headers (names lower-case) and its body, read on demand."""

    headers: dict[str, str]
    chunks: Iterator[bytes]
    socket: socket.socket | None


@contextlib.contextmanager
def icy_get(policy: SourcePolicy, url: str, timeout: httpx.Timeout) -> Iterator[IcyResponse]:
    """``GET url`` from a server that answers ``ICY 200 OK`` instead of HTTP (old SHOUTcast).

    The URL is checked again, the connection made through :class:`CheckedBackend` (TLS for
    ``https``), and the request written by hand (``HTTP/1.0``, :data:`REQUEST_HEADERS`). The
    connection is closed on exit.

    Raises:
        SourceRefused: the URL or an address of its host is refused.
        DecodeError: the answer is not ``ICY 200``, or its headers exceed
            :data:`MAX_HEADER_BYTES` or never end.
        httpcore.NetworkError, httpcore.TimeoutException: the connection failed.
    """
    web = policy.check_url(url)
    parsed = httpx.URL(url)
    connect_s, read_s = timeout.connect, timeout.read
    stream = CheckedBackend(policy).connect_tcp(web.host, web.port, timeout=connect_s)
    try:
        if web.scheme == "https":
            context = httpx.create_ssl_context(trust_env=False)
            stream = stream.start_tls(context, server_hostname=web.host, timeout=connect_s)
        lines = [
            b"GET " + parsed.raw_path + b" HTTP/1.0",
            b"Host: " + parsed.netloc,
            *(f"{name}: {value}".encode() for name, value in REQUEST_HEADERS.items()),
        ]
        stream.write(b"\r\n".join(lines) + b"\r\n\r\n", timeout=read_s)
        head = bytearray()
        while (end := _END_OF_HEADERS.search(head)) is None:
            if len(head) > MAX_HEADER_BYTES:
                raise DecodeError(f"{url!r}: headers larger than {MAX_HEADER_BYTES} bytes")
            data = stream.read(_READ_BYTES, timeout=read_s)
            if not data:
                raise DecodeError(f"{url!r}: the connection closed inside the headers")
            head += data
        status, *fields = head[: end.start()].decode("latin-1").splitlines()
        if not re.match(r"ICY 200\b", status):
            raise DecodeError(f"{url!r} answered neither HTTP nor ICY 200: {status[:60]!r}")
        headers: dict[str, str] = {}
        for field in fields:
            name, sep, value = field.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        rest = bytes(head[end.end() :])

        def chunks() -> Iterator[bytes]:
            if rest:
                yield rest
            while data := stream.read(_READ_BYTES, timeout=read_s):
                yield data

        sock = stream.get_extra_info("socket")
        yield IcyResponse(headers, chunks(), sock if isinstance(sock, socket.socket) else None)
    finally:
        stream.close()


def read_playlist(response: httpx.Response) -> bytes:
    """The body of an HLS playlist, at most :data:`MAX_PLAYLIST_BYTES`.

    Raises:
        DecodeError: the playlist is larger.
    """
    return b"".join(playlist_chunks(response.iter_bytes()))


def playlist_chunks(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks`` of an HLS playlist, refused once they pass :data:`MAX_PLAYLIST_BYTES`.

    Raises:
        DecodeError: the playlist is larger.
    """
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > MAX_PLAYLIST_BYTES:
            raise DecodeError(f"HLS playlist larger than {MAX_PLAYLIST_BYTES} bytes")
        yield chunk


def socket_of(response: httpx.Response) -> socket.socket | None:
    """The socket under a streamed response (to wake a blocked read by shutting it)."""
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    sock = stream.get_extra_info("socket")
    return sock if isinstance(sock, socket.socket) else None
