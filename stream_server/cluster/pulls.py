"""Pulled stations that outlive their node: each is owned through a lease with a TTL, and a
node takes over the stations whose lease ran out, under the same stream id.

Two JetStream key-value buckets, keyed by stream id:

- :data:`PULLS`: the station (:class:`PullSpec` as JSON), put when a node starts pulling it and
  deleted when the stream ends for good (its source ended or failed, a ``DELETE``, its node
  stopping).
- :data:`LEASES`: the node that pulls it now; the owner renews it every :data:`RENEW_S`
  seconds, and the bucket forgets an entry :data:`LEASE_TTL_S` after its last renewal.

Every node looks every :data:`RENEW_S` seconds for stations without a lease and claims each
with a create (which only one node can win); the winner pulls it. So a station whose node died
is pulled again within ``LEASE_TTL_S + RENEW_S`` seconds (8 s) plus its connection time.
A node that finds its lease taken (it was cut off longer than the TTL and another took over)
stops pulling the station.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

from stream_server.cluster.store import bucket, key_values

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

__all__ = ["LEASES", "LEASE_TTL_S", "PULLS", "RENEW_S", "PullLeases", "PullSpec"]

PULLS: Final = "GENRECAST_PULLS"
LEASES: Final = "GENRECAST_LEASES"
#: Seconds between a node's renewals (and its looks for stations to take over), and seconds a
#: lease lasts without one.
RENEW_S: Final = 2.0
LEASE_TTL_S: Final = 6.0


@dataclass(frozen=True)
class PullSpec:
    """A pulled station, as another node needs it to pull it on.

    Attributes:
        stream_id: Its stream id (kept through a takeover).
        source: The URL (or path) pulled.
        name: Its name.
    """

    stream_id: str
    source: str
    name: str


#: Called on the loop with a station to pull from now on (its lease is this node's); raising
#: gives the station up (its spec and lease deleted).
TakeOver = Callable[[PullSpec], Awaitable[None]]
#: Called on the loop with a stream id whose lease another node holds now.
Lost = Callable[[str], Awaitable[None]]


class PullLeases:
    """This node's leases: :meth:`open`, :meth:`hold` each station it starts pulling,
    :meth:`release` each that ends; :meth:`run` renews and takes over."""

    def __init__(self, nc: Client, node: str, *, replicas: int) -> None:
        self.nc = nc
        #: This node's id in the leases.
        self.node = node
        self.replicas = replicas
        self._pulls: KeyValue | None = None
        self._leases: KeyValue | None = None
        #: Stations this node holds, with their lease's revision.
        self.held: dict[str, int] = {}

    async def open(self) -> None:
        """Make (or bind) the buckets.

        Raises:
            ClusterError: JetStream refused a bucket.
        """
        self._pulls = await bucket(self.nc, PULLS, replicas=self.replicas, ttl=None)
        self._leases = await bucket(self.nc, LEASES, replicas=self.replicas, ttl=LEASE_TTL_S)

    async def hold(self, spec: PullSpec) -> None:
        """This node pulls ``spec`` (a new station): its spec kept, its lease this node's."""
        assert self._pulls is not None and self._leases is not None
        await self._pulls.put(spec.stream_id, _json(asdict(spec)))
        self.held[spec.stream_id] = await self._leases.put(spec.stream_id, self.node.encode())

    async def release(self, stream_id: str) -> None:
        """The station ended for good: its spec and lease deleted (if this node holds it)."""
        assert self._pulls is not None and self._leases is not None
        if self.held.pop(stream_id, None) is None:
            return
        await self._pulls.delete(stream_id)
        await self._leases.delete(stream_id)

    async def run(self, take_over: TakeOver, lost: Lost) -> None:
        """Renew this node's leases and take over stations without one, every :data:`RENEW_S`
        seconds, until cancelled; a failed round is logged and the next one tries again."""
        from nats.errors import Error as NatsError

        while True:
            try:
                await self._renew(lost)
                await self._take_over(take_over)
            except (NatsError, TimeoutError) as exc:
                log.warning("pulled stations' leases: %s", exc)
            await asyncio.sleep(RENEW_S)

    async def _renew(self, lost: Lost) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        assert self._leases is not None
        for stream_id, revision in list(self.held.items()):
            try:
                self.held[stream_id] = await self._leases.update(
                    stream_id, self.node.encode(), last=revision
                )
            except KeyWrongLastSequenceError:  # expired and taken (or re-made) meanwhile
                if self.held.pop(stream_id, None) is not None:
                    log.warning("stream %s: another node pulls it now", stream_id)
                    await lost(stream_id)

    async def _take_over(self, take_over: TakeOver) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        assert self._pulls is not None and self._leases is not None
        owned = {key for key, _ in await key_values(self._leases, ">")}
        for key, value in await key_values(self._pulls, ">"):
            if key in owned or key in self.held:
                continue
            try:
                revision = await self._leases.create(key, self.node.encode())
            except KeyWrongLastSequenceError:  # another node was quicker
                continue
            self.held[key] = revision
            spec = PullSpec(**json.loads(value))
            log.info("stream %s: taking over %s, its node is gone", key, spec.source)
            try:
                await take_over(spec)
            except Exception as exc:
                log.error("stream %s could not be taken over, given up: %s", key, exc)
                await self.release(key)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
