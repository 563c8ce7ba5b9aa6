"""The listening socket, bound before the server starts (so ``port`` 0 works and early clients
wait in the backlog); ``genrecast doctor`` binds it the same way to tell whether serving can.

``genrecast serve`` binds it first of all, before the model loads (:func:`listen_on`), so a busy
port is said at once, in words (:class:`CannotListen`), instead of after the model's load.
"""

from __future__ import annotations

import errno
import os
import socket

from stream_server.errors import CannotListen

__all__ = ["bind", "cannot_listen", "listen_on"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted connections only then,
    # and without it small responses on a kept-alive connection wait out Nagle's algorithm.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def cannot_listen(host: str, port: int, exc: OSError) -> CannotListen:
    """What ``exc``, raised by binding ``host:port``, means to the person who ran ``serve``."""
    if exc.errno == errno.EADDRINUSE:
        return CannotListen(
            f"port {port} on {host} is already in use (another genrecast serve?); "
            "choose another with --port"
        )
    if exc.errno == errno.EACCES:
        return CannotListen(
            f"no permission to listen on port {port} on {host} (ports below 1024 need "
            "privileges); choose another with --port"
        )
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return CannotListen(
            f"{host} is not an address of this machine; choose another with --host "
            "(127.0.0.1: this machine only)"
        )
    words = exc.strerror or str(exc)
    return CannotListen(f"cannot listen on port {port} on {host}: {words}")


def listen_on(host: str, port: int) -> socket.socket:
    """:func:`bind`, with a refusal said in words.

    Raises:
        CannotListen: the port is in use, needs privileges, or ``host`` is not this machine's.
    """
    try:
        return bind(host, port)
    except OSError as exc:
        raise cannot_listen(host, port, exc) from None
