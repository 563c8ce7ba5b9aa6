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
from typing import TYPE_CHECKING, Final

from stream_server.cluster.store import bucket, json_bytes, key_values

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


#: Called on the loop with a station to pull from now on (its lease is this node's). Raising
#: :class:`~stream_server.errors.ProtocolError` (this node is full or stopping) leaves the
#: station to another node; raising anything else gives it up (its spec and lease deleted).
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
        #: Stations that ended whose spec and lease are still to delete (tried each round).
        self._releasing: set[str] = set()
        self._taking: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        """Make (or bind) the buckets.

        Raises:
            ClusterError: JetStream refused a bucket.
        """
        self._pulls = await bucket(self.nc, PULLS, replicas=self.replicas, ttl=None)
        self._leases = await bucket(self.nc, LEASES, replicas=self.replicas, ttl=LEASE_TTL_S)

    async def hold(self, spec: PullSpec) -> None:
        """This node pulls ``spec`` (a new station): its lease taken first (so no other node
        can take the station over between the two), then its spec kept.

        Raises:
            nats.errors.Error: NATS refused either (nothing is left behind).
        """
        assert self._pulls is not None and self._leases is not None
        revision = await self._leases.create(spec.stream_id, self.node.encode())
        self.held[spec.stream_id] = revision
        try:
            await self._pulls.put(spec.stream_id, json_bytes(asdict(spec)))
        except BaseException:
            self.held.pop(spec.stream_id, None)
            await self._leases.delete(spec.stream_id)
            raise

    async def release(self, stream_id: str) -> None:
        """The station ended for good: its spec, then its lease deleted (if this node holds
        it); tried again each round until both are gone."""
        from nats.errors import Error as NatsError

        assert self._pulls is not None and self._leases is not None
        if stream_id not in self.held and stream_id not in self._releasing:
            return
        self._releasing.add(stream_id)
        self.held.pop(stream_id, None)
        try:
            await self._pulls.delete(stream_id)
            await self._leases.delete(stream_id)
        except (NatsError, TimeoutError) as exc:
            log.warning("stream %s: its lease is released later: %s", stream_id, exc)
            return
        self._releasing.discard(stream_id)

    async def run(self, take_over: TakeOver, lost: Lost) -> None:
        """Renew this node's leases and take over stations without one, every :data:`RENEW_S`
        seconds, until cancelled (a take-over runs beside the renewals, which it never holds
        up); a failed round is logged and the next one tries again."""
        from nats.errors import Error as NatsError

        try:
            while True:
                try:
                    for stream_id in list(self._releasing):
                        await self.release(stream_id)
                    await self._renew(lost)
                    await self._take_over(take_over)
                except (NatsError, TimeoutError) as exc:
                    log.warning("pulled stations' leases: %s", exc)
                await asyncio.sleep(RENEW_S)
        finally:
            for task in self._taking:
                task.cancel()

    async def _renew(self, lost: Lost) -> None:
        assert self._leases is not None
        held = list(self.held.items())
        results = await asyncio.gather(
            *(self._renew_one(sid, revision) for sid, revision in held), return_exceptions=True
        )
        for (stream_id, _), result in zip(held, results, strict=True):
            if result is False and self.held.pop(stream_id, None) is not None:
                log.warning("stream %s: another node pulls it now", stream_id)
                await lost(stream_id)
            elif isinstance(result, BaseException):
                log.warning("stream %s: its lease is renewed later: %s", stream_id, result)

    async def _renew_one(self, stream_id: str, revision: int) -> bool:
        """Renew one lease; False if another node holds it now. One that ran out unclaimed
        (this node was slow) is taken again."""
        from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

        assert self._leases is not None
        try:
            self.held[stream_id] = await self._leases.update(
                stream_id, self.node.encode(), last=revision
            )
            return True
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self._leases.get(stream_id)
        except NotFoundError:  # ran out, nobody took it: take it again
            try:
                self.held[stream_id] = await self._leases.create(stream_id, self.node.encode())
            except KeyWrongLastSequenceError:  # someone was quicker after all
                return False
            return True
        return entry.value == self.node.encode()

    async def _take_over(self, take_over: TakeOver) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        assert self._pulls is not None and self._leases is not None
        owned = {key for key, _ in await key_values(self._leases, ">")}
        for key, value in await key_values(self._pulls, ">"):
            if key in owned or key in self.held or key in self._releasing:
                continue
            try:
                revision = await self._leases.create(key, self.node.encode())
            except KeyWrongLastSequenceError:  # another node was quicker
                continue
            self.held[key] = revision
            task = asyncio.create_task(self._take_one(take_over, PullSpec(**json.loads(value))))
            self._taking.add(task)
            task.add_done_callback(self._taking.discard)

    async def _take_one(self, take_over: TakeOver, spec: PullSpec) -> None:
        from stream_server.errors import ProtocolError

        key = spec.stream_id
        log.info("stream %s: taking over %s, its node is gone", key, spec.source)
        try:
            await take_over(spec)
        except ProtocolError as exc:  # full or stopping here: another node may take it
            log.warning("stream %s: left to another node: %s", key, exc)
            if self.held.pop(key, None) is not None and self._leases is not None:
                await self._leases.delete(key)
        except Exception as exc:
            log.error("stream %s could not be taken over, given up: %s", key, exc)
            await self.release(key)
