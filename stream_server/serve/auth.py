"""Who may do what: bearer tokens with scopes, browser tickets, and the Host and Origin rules.

Pure rules, no sockets: :mod:`stream_server.serve.guard` applies them to every request.

**Scopes.** ``read`` (stream listings, timelines, ``/ws/updates``, ``/metrics`` unless
``[auth] open_metrics``), ``ingest`` (``/ws/ingest``, ``/webrtc/offer``, ``POST /classify``) and
``admin`` (``POST`` and ``DELETE /streams``). What shows no stream data is open: ``/health``,
``/ready``, the pages (``/``, ``/mic``, ``/docs``), ``/openapi.json`` and the icons.

**Tokens.** The environment variable ``GENRECAST_TOKEN`` is one token with every scope;
``[auth] read_tokens``, ``ingest_tokens`` and ``admin_tokens`` list more, each entry
``"env:NAME"`` (an environment variable) or ``"file:PATH"`` (a file holding the token), so no
token is ever written in the config or logged. A token listed under several scopes has them all.
Clients send ``Authorization: Bearer <token>``; a presented token is compared with every known
one in constant time (SHA-256 digests, :func:`hmac.compare_digest`). With no token at all the
server is open, and may then listen on loopback only (:func:`exposure_problem`).

**Browser tickets.** A browser cannot set headers on a WebSocket, so a page that holds a token
(the ``/mic`` and ``/`` pages take it from the address's ``#token=`` fragment, which never leaves
the browser) asks ``POST /auth/ticket`` for a **short-lived signed ticket** carrying the token's
scopes and passes it as ``?ticket=`` on the WebSocket. A ticket is
``base64url(scopes|expiry).base64url(HMAC-SHA256)`` under a random key drawn when the server
starts, valid ``[auth] ticket_s`` seconds (and never after a restart).

**Hosts and origins.** Every request's ``Host`` must be a name the server answers to: loopback
names, the address it listens on, and ``[auth] hosts`` (so a DNS-rebinding page cannot reach a
loopback server through its own name). A request that carries an ``Origin`` -- every WebSocket
handshake from a browser, every cross-site form or script -- must come from the server's own
origin or one listed in ``[auth] origins``; requests without one (command-line clients) pass.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypedDict
from urllib.parse import urlsplit

from stream_server.config import parse_host_entry
from stream_server.errors import ConfigError

__all__ = [
    "ADMIN",
    "INGEST",
    "READ",
    "SCOPES",
    "TOKEN_ENV",
    "Scope",
    "TicketAnswer",
    "TicketIssuer",
    "Tokens",
    "bearer_token",
    "exposure_problem",
    "host_allowed",
    "is_loopback_host",
    "load_tokens",
    "origin_allowed",
]

Scope = Literal["read", "ingest", "admin"]
READ: Final[Scope] = "read"
INGEST: Final[Scope] = "ingest"
ADMIN: Final[Scope] = "admin"
SCOPES: Final[tuple[Scope, ...]] = (READ, INGEST, ADMIN)

#: The environment variable holding one token with every scope (servers and clients alike).
TOKEN_ENV: Final = "GENRECAST_TOKEN"

#: Shortest token accepted, in characters: anything shorter is guessable.
MIN_TOKEN_CHARS: Final = 16

#: Names that always mean this machine.
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Tokens:
    """The known tokens (as SHA-256 digests) and their scopes; empty: authentication is off."""

    entries: tuple[tuple[bytes, frozenset[Scope]], ...] = ()

    @property
    def enabled(self) -> bool:
        """Whether any token is configured (then every guarded request needs one)."""
        return bool(self.entries)

    def scopes_of(self, token: str | None) -> frozenset[Scope]:
        """The scopes of ``token`` (empty for an unknown one, or none). Every known digest is
        compared, in constant time, whatever matches."""
        if not token:
            return frozenset()
        presented = _digest(token)
        found: frozenset[Scope] = frozenset()
        for digest, scopes in self.entries:
            if hmac.compare_digest(presented, digest):
                found = found | scopes
        return found


def _read_entry(key: str, entry: str, environ: Mapping[str, str]) -> str:
    """The token an ``"env:NAME"`` or ``"file:PATH"`` entry names; errors name the key, never a
    token."""
    kind, _, where = entry.partition(":")
    if kind == "env" and where:
        value = environ.get(where)
        if value is None:
            raise ConfigError(key, f"the environment variable {where!r} is not set")
    elif kind == "file" and where:
        try:
            with open(os.path.expanduser(where), encoding="utf-8") as f:
                value = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(key, f"cannot read the token file {where!r}: {exc}") from None
    else:
        raise ConfigError(key, f"an entry must be 'env:NAME' or 'file:PATH', got {entry!r}")
    token = value.strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConfigError(
            key,
            f"the token from {entry!r} must be at least {MIN_TOKEN_CHARS} characters without "
            "spaces (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')",
        )
    return token


def load_tokens(
    lists: Mapping[Scope, Sequence[str]], environ: Mapping[str, str] | None = None
) -> Tokens:
    """The tokens of ``GENRECAST_TOKEN`` (every scope) and of the ``[auth]`` lists
    (``{scope: ["env:NAME" | "file:PATH", ...]}``).

    Raises:
        ConfigError: an entry cannot be read or its token is too short (``auth.<scope>_tokens``;
            ``GENRECAST_TOKEN`` is reported as ``auth.GENRECAST_TOKEN``).
    """
    env = os.environ if environ is None else environ
    scopes: dict[str, set[Scope]] = {}
    if env.get(TOKEN_ENV):
        token = _read_entry(f"auth.{TOKEN_ENV}", f"env:{TOKEN_ENV}", env)
        scopes.setdefault(token, set()).update(SCOPES)
    for scope in SCOPES:
        for entry in lists.get(scope, ()):
            token = _read_entry(f"auth.{scope}_tokens", entry, env)
            scopes.setdefault(token, set()).add(scope)
    return Tokens(tuple((_digest(t), frozenset(s)) for t, s in scopes.items()))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not authorization:
        return None
    kind, _, token = authorization.strip().partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TicketAnswer(TypedDict):
    """A browser ticket, seconds it stays valid, and the scopes it carries."""

    ticket: str
    expires_in_s: float
    scopes: list[Scope]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class TicketIssuer:
    """Short-lived signed tickets for browsers (see the module docstring).

    ``lifetime_s``: seconds a ticket stays valid; ``key``: the HMAC key (random by default, so
    tickets die with the process).
    """

    lifetime_s: float
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def issue(self, scopes: Iterable[Scope], now: float | None = None) -> str:
        """A ticket for ``scopes`` valid ``lifetime_s`` from ``now`` (unix seconds)."""
        expiry = int((time.time() if now is None else now) + self.lifetime_s)
        payload = f"{','.join(sorted(scopes))}|{expiry}".encode("ascii")
        mac = hmac.new(self.key, payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(mac)}"

    def scopes_of(self, ticket: str | None, now: float | None = None) -> frozenset[Scope]:
        """The scopes of a valid, unexpired ticket; empty for anything else."""
        if not ticket or len(ticket) > 512:
            return frozenset()
        try:
            head, _, tail = ticket.partition(".")
            payload, mac = _unb64(head), _unb64(tail)
            expected = hmac.new(self.key, payload, hashlib.sha256).digest()
            if not hmac.compare_digest(mac, expected):
                return frozenset()
            names, _, expiry = payload.decode("ascii").partition("|")
            if (time.time() if now is None else now) > int(expiry):
                return frozenset()
        except ValueError:  # bad base64, bad text, bad number
            return frozenset()
        return frozenset(s for s in SCOPES if s in names.split(","))


# -- hosts and origins ---------------------------------------------------------------------------


def _split_host(host_header: str) -> tuple[str, int | None] | None:
    """``Host`` header -> ``(lower-case host without brackets, port or None)``; None if bad."""
    try:
        return parse_host_entry(host_header)
    except ValueError:
        return None


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 without brackets) is this machine only."""
    if host.lower().rstrip(".") in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: str | None, bind_host: str, names: Sequence[str]) -> bool:
    """Whether a request's ``Host`` is a name this server answers to: a loopback name or
    address, the address it listens on (unless a wildcard), or one of ``names``
    (``[auth] hosts``, case-insensitive; ``"*"`` allows any)."""
    if "*" in names:
        return True
    if not host_header:
        return False
    split = _split_host(host_header)
    if split is None:
        return False
    host = split[0].rstrip(".")
    if is_loopback_host(host):
        return True
    if bind_host not in ("", "0.0.0.0", "::") and host == bind_host.strip("[]").lower():
        return True
    return host in {n.lower().rstrip(".") for n in names}


def origin_allowed(origin: str | None, host_header: str | None, origins: Sequence[str]) -> bool:
    """Whether a request's ``Origin`` may act here: absent (not a browser's cross-site
    request), the server's own origin (its host and port as the request's ``Host`` names them),
    or one of ``origins`` (``[auth] origins``, ``scheme://host[:port]``)."""
    if origin is None:
        return True
    if origin in origins:
        return True
    if origin == "null" or not host_header:
        return False
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    return parts.netloc.lower() == host_header.lower()


def exposure_problem(bind_host: str, tokens: Tokens, insecure: bool) -> str | None:
    """Why the server must not listen on ``bind_host``, or None: without a token it listens on
    loopback only, unless ``insecure`` (``genrecast serve --insecure``) says otherwise."""
    if tokens.enabled or insecure or is_loopback_host(bind_host.strip("[]")):
        return None
    return (
        f"refusing to listen on {bind_host!r} without a token: anyone who can reach it could "
        f"read, feed and stop every stream. Set {TOKEN_ENV} (or [auth] tokens) to require one, "
        "listen on 127.0.0.1, or pass --insecure to expose it anyway"
    )
