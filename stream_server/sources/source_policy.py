"""What the server may pull on a client's say-so: web URLs it may reach and files it may serve.

``POST /streams {"url": ...}`` names a source; :meth:`SourcePolicy.check_source` decides whether
the server may open it, from the ``[sources]`` config:

* **Web URLs**: ``http`` and ``https`` only, with a host and without credentials
  (``user:password@`` is refused, so no secret is stored or listed with the stream). Every
  address the host resolves to (``getaddrinfo``) must be public: loopback, private, link-local
  and shared (carrier-grade NAT) addresses are refused unless ``allow_private_addresses`` (a
  LAN); unspecified, multicast, reserved and cloud metadata addresses (:data:`METADATA_ADDRESSES`)
  are always refused. An IPv4 address inside IPv6 (``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``,
  6to4 ``2002::/16``) is judged as that IPv4 address. A host in ``allowed_hosts`` (optionally
  with a port) is pulled whatever it resolves to.
* **Local files**: only inside ``media_dir`` (none by default), named by an absolute path, a path
  relative to the folder or a ``file://`` URL; the path is resolved (symlinks followed) and must
  still be inside the folder and a regular file.
* **Everything else** is refused: every other ``scheme:`` (FFmpeg's ``concat:``, ``subfile:``,
  ``unix:``, ``tcp:``, ``ftp:``, ``gopher:``, ``rtmp://``, ...), whatever its spelling.

Every refusal is one :class:`~stream_server.errors.SourceRefused` with one message, so that a
client learns nothing about which files exist or what a name resolves to; its ``detail`` says
why, for the server's log. One exception (:meth:`SourcePolicy.may_tell_unresolved`): where the
policy does not judge a host by its addresses (``allow_private_addresses``, ``allowed_hosts``),
a name that does not resolve is not refused at ``POST /streams``; the stream fails at its first
connection with ``host not found: <host>``.

The checks are pure but for two seams: name resolution (the ``resolver``, injectable) and the
file system (resolving a path, and :func:`open_media`). The puller repeats the check at every
connection, checks every redirect (:meth:`SourcePolicy.check_url`) and checks the address of
every connection it makes (:meth:`SourcePolicy.check_address`); see
:mod:`stream_server.sources.puller`. HLS playlists are read by :func:`playlist_uris` so that the
hosts of their segments can be checked before FFmpeg fetches them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final
from urllib.parse import unquote, urljoin, urlsplit

from stream_server.config import SourcesConfig, parse_host_entry
from stream_server.errors import SourceRefused

__all__ = [
    "METADATA_ADDRESSES",
    "WEB_SCHEMES",
    "CheckedSource",
    "MediaFile",
    "Resolver",
    "SourcePolicy",
    "WebUrl",
    "address_problem",
    "is_master_playlist",
    "is_url",
    "open_media",
    "playlist_uris",
    "shown_source",
    "system_resolver",
]

#: The only URL schemes that may be pulled.
WEB_SCHEMES: Final = ("http", "https")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Cloud instance metadata services (AWS, GCP, Azure, Alibaba, AWS ECS task metadata, AWS over
#: IPv6): refused even with ``allow_private_addresses``.
METADATA_ADDRESSES: Final[frozenset[IPAddress]] = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)

_THIS_NETWORK: Final = ipaddress.ip_network("0.0.0.0/8")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")

#: ``host, port -> addresses``: every IP address (as text) a host name resolves to.
Resolver = Callable[[str, int], Sequence[str]]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for TCP (``getaddrinfo``), in the order to try them.

    Raises:
        OSError: the name does not resolve (``socket.gaierror``).
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def is_url(source: str) -> bool:
    """Whether ``source`` is a URL (``scheme://...``) rather than a local path."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64 or 6to4), else ``None``."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return ip.sixtofour


def address_problem(address: str, *, allow_private: bool = False) -> str | None:
    """Why the server may not connect to ``address`` (an IP address as text), or ``None``.

    Always refused: metadata, unspecified (``0.0.0.0/8``, ``::``), multicast and reserved
    addresses. Refused unless ``allow_private``: every other address that is not global
    (loopback, private, link-local, shared ``100.64.0.0/10``, documentation ranges).
    """
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone dropped
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            ip = embedded
    if ip in METADATA_ADDRESSES:
        return f"a cloud metadata address ({ip})"
    if ip.is_unspecified or ip in _THIS_NETWORK:
        return f"an unspecified address ({ip})"
    if ip.is_multicast:
        return f"a multicast address ({ip})"
    if ip.is_loopback:
        return None if allow_private else f"a loopback address ({ip})"
    if ip.is_link_local:
        return None if allow_private else f"a link-local address ({ip})"
    if ip.is_reserved:
        return f"a reserved address ({ip})"
    if ip.is_global or allow_private:
        return None
    return f"a private address ({ip})"


@dataclass(frozen=True)
class WebUrl:
    """An ``http``/``https`` URL that passed :meth:`SourcePolicy.check_url`.

    Attributes:
        url: the URL as given.
        scheme: ``"http"`` or ``"https"``.
        host: the host, lower-case, an IPv6 address without brackets.
        port: the TCP port (80 or 443 when the URL names none).
    """

    url: str
    scheme: str
    host: str
    port: int


@dataclass(frozen=True)
class MediaFile:
    """A regular file inside the media folder; ``path`` is resolved (no symlinks left)."""

    path: Path


CheckedSource = WebUrl | MediaFile


@dataclass(frozen=True)
class SourcePolicy:
    """The rules of the module docstring, from ``[sources]``.

    Attributes:
        media_dir: the folder local files must be in (resolved), or ``None``: no local files.
        allow_private_addresses: pull from loopback, private and link-local addresses too.
        allowed_hosts: ``(host, port)`` pairs pulled whatever they resolve to; port ``None``:
            any port.
        resolver: name resolution (:func:`system_resolver`; tests may pass their own).
    """

    media_dir: Path | None = None
    allow_private_addresses: bool = False
    allowed_hosts: frozenset[tuple[str, int | None]] = frozenset()
    resolver: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def from_config(
        cls, config: SourcesConfig, *, resolver: Resolver = system_resolver
    ) -> SourcePolicy:
        media = Path(config.media_dir).expanduser().resolve() if config.media_dir else None
        return cls(
            media_dir=media,
            allow_private_addresses=config.allow_private_addresses,
            allowed_hosts=frozenset(parse_host_entry(e) for e in config.allowed_hosts),
            resolver=resolver,
        )

    # -- the whole decision ---------------------------------------------------------------

    def check_source(self, source: str) -> CheckedSource:
        """What ``source`` (from ``POST /streams``) is, if the server may pull it.

        A web URL's host is resolved and every address checked (:meth:`check_address`); a
        file is checked on disk (:meth:`check_file`).

        Raises:
            SourceRefused: anything else, with the same message whatever the reason.
        """
        if is_url(source) and source.split(":", 1)[0].lower() == "file":
            return self.check_file(_file_url_path(source))
        if _SCHEME.match(source):
            web = self.check_url(source)
            self.check_address(web.host, web.port)
            return web
        return self.check_file(source)

    # -- web URLs -------------------------------------------------------------------------

    def check_url(self, url: str) -> WebUrl:
        """``url`` if it is ``http``/``https`` with a host and no credentials (no DNS here).

        Raises:
            SourceRefused: another scheme, no host, credentials, a bad port, spaces or
                control characters, a backslash.
        """
        if any(c <= " " or c in "\x7f\\" for c in url):
            raise SourceRefused(f"{url!r} has spaces, control characters or a backslash")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise SourceRefused(f"{url!r} is not a valid URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in WEB_SCHEMES:
            raise SourceRefused(f"{url!r}: scheme {scheme!r} is not http or https")
        if parts.username is not None or parts.password is not None:
            raise SourceRefused(f"{url!r}: credentials in URLs are not accepted")
        host = parts.hostname
        if not host:
            raise SourceRefused(f"{url!r} has no host")
        if port == 0:
            raise SourceRefused(f"{url!r}: port 0")
        return WebUrl(url, scheme, host, port or _DEFAULT_PORTS[scheme])

    def host_allowed(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is in ``allowed_hosts`` (then any address goes)."""
        host = host.lower().strip("[]")
        return (host, port) in self.allowed_hosts or (host, None) in self.allowed_hosts

    def check_address(self, host: str, port: int) -> tuple[str, ...]:
        """Resolve ``host`` and check every address; returns them, in the order to try.

        Raises:
            SourceRefused: an address is not allowed (:func:`address_problem`), or the name
                does not resolve (then ``transient``).
        """
        host = host.lower().strip("[]")
        try:
            addresses = tuple(dict.fromkeys(self.resolver(host, port)))
        except (OSError, UnicodeError) as exc:
            raise SourceRefused(
                f"{host!r} does not resolve: {exc}", transient=True, host=host, port=port
            ) from None
        if not addresses:
            raise SourceRefused(
                f"{host!r} resolves to no address", transient=True, host=host, port=port
            )
        if self.host_allowed(host, port):
            return addresses
        for address in addresses:
            problem = address_problem(address, allow_private=self.allow_private_addresses)
            if problem is not None:
                raise SourceRefused(f"{host!r} resolves to {problem}")
        return addresses

    def may_tell_unresolved(self, refusal: SourceRefused) -> bool:
        """Whether a client may learn that the host of a source does not resolve, rather than
        get the one refusal: only where the policy would not refuse that host for the addresses
        it resolves to (``allow_private_addresses``, or the host in ``allowed_hosts``), so the
        difference tells nothing about names that resolve to refused addresses. Then the stream
        is made, and its first connection fails with ``host not found: <host>``.
        """
        if not refusal.transient or refusal.host is None or refusal.port is None:
            return False
        return self.allow_private_addresses or self.host_allowed(refusal.host, refusal.port)

    # -- local files ----------------------------------------------------------------------

    def check_file(self, path: str) -> MediaFile:
        """``path`` (absolute, or relative to the media folder) if it is a regular file inside
        the media folder once every symlink is resolved.

        Raises:
            SourceRefused: no media folder, no such file, outside the folder, not a regular
                file, or not readable.
        """
        if self.media_dir is None:
            raise SourceRefused(f"{path!r}: local files are off (no sources.media_dir)")
        try:
            resolved = (self.media_dir / path).resolve(strict=True)
            info = resolved.stat()
        except (OSError, RuntimeError, ValueError) as exc:  # missing, a symlink loop, a NUL
            raise SourceRefused(f"{path!r}: {exc}") from None
        if not resolved.is_relative_to(self.media_dir):
            raise SourceRefused(f"{path!r} resolves to {str(resolved)!r}, outside the media dir")
        if not stat.S_ISREG(info.st_mode):
            raise SourceRefused(f"{path!r} is not a regular file")
        if not os.access(resolved, os.R_OK):
            raise SourceRefused(f"{path!r} is not readable")
        return MediaFile(resolved)


def _file_url_path(url: str) -> str:
    """The path of a ``file://`` URL whose host is empty or ``localhost``.

    Raises:
        SourceRefused: another host, a query or a fragment.
    """
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise SourceRefused(f"{url!r} is not a local file URL")
    return unquote(parts.path)


def open_media(media: MediaFile) -> BinaryIO:
    """Open a checked media file for reading, refusing a symlink or a non-regular file that
    replaced it since the check.

    Raises:
        SourceRefused: it cannot be opened or is no longer a regular file.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(media.path, flags)
    except OSError as exc:
        raise SourceRefused(f"{str(media.path)!r}: {exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceRefused(f"{str(media.path)!r} is no longer a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# -- HLS playlists ----------------------------------------------------------------------------

_URI_ATTRIBUTE = re.compile(r'URI="([^"]*)"')


def is_master_playlist(text: str) -> bool:
    """Whether an HLS playlist lists other playlists (variants, renditions) rather than media."""
    return "#EXT-X-STREAM-INF" in text or "#EXT-X-MEDIA:" in text


def playlist_uris(text: str, base_url: str) -> tuple[list[str], list[str]]:
    """Every URI an HLS playlist names, made absolute against ``base_url``.

    Returns ``(playlists, others)``: in a master playlist, ``playlists`` are the variant and
    rendition playlists (``#EXT-X-STREAM-INF`` lines, ``#EXT-X-MEDIA`` URIs); ``others`` are
    every other URI (segments, keys, init sections, I-frame playlists).
    """
    master = is_master_playlist(text)
    playlists: list[str] = []
    others: list[str] = []
    after_stream_inf = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            for uri in _URI_ATTRIBUTE.findall(line):
                target = playlists if master and line.startswith("#EXT-X-MEDIA:") else others
                target.append(urljoin(base_url, uri))
            after_stream_inf = line.startswith("#EXT-X-STREAM-INF")
            continue
        (playlists if master and after_stream_inf else others).append(urljoin(base_url, line))
        after_stream_inf = False
    return playlists, others


def shown_source(source: str) -> str:
    """``source`` as it may be shown to anyone who lists streams: an ``http(s)`` URL without
    its user, password and query (any of which may hold a secret: a query left out shows as
    ``?…``); anything else (a media file's path) as it is."""
    try:
        parts = urlsplit(source.strip())
        port = parts.port
    except ValueError:
        return source
    if parts.scheme.lower() not in WEB_SCHEMES or not parts.hostname:
        return source
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    where = f"{parts.scheme.lower()}://{host}{f':{port}' if port is not None else ''}{parts.path}"
    return where + ("?…" if parts.query else "")
