"""What a soak runs: its options, its bounds and its constants."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from stream_server.errors import SoakError
from stream_server.serve.auth import is_loopback_host

#: Upper bounds of a soak: it is a bounded test, not a load generator.
MAX_MINUTES = 60.0
MAX_STREAMS = 2000
MAX_SUBSCRIBERS = 2000
#: Most client worker processes.
MAX_WORKERS = 32
#: Shortest average stream life with churn (seconds).
MIN_CHURN_S = 5.0

#: PCM the streams send: rate (Hz), seconds per frame, seconds of synthetic music looped.
SAMPLE_RATE = 44100
FRAME_S = 0.1
CLIP_S = 30.0
#: Distinct synthetic clips; stream ``i`` plays clip ``i mod CLIPS`` from its own offset.
CLIPS = 8
#: Input samples the server's resampler may hold back before a window is complete (about 14 for
#: 44100 -> 22050 Hz): a window ending at stream time ``t`` is completed by the frame holding
#: input sample ``t * SAMPLE_RATE + RESAMPLER_LAG``.
RESAMPLER_LAG = 32
#: Frame send times kept per stream (seconds of frames: this times FRAME_S); older windows have
#: no client-side delay.
SEND_TIMES_KEPT = 600

#: Seconds a stream may take to end after ``stop``, subscribers to see the last ``stream.ended``.
END_GRACE_S = 30.0
#: Seconds the server may take to load its model and print its "ready on" line.
READY_TIMEOUT_S = 300.0
#: Seconds the worker processes may take to start (imports, synthetic audio).
WORKER_START_S = 120.0
#: Seconds the server may take to stop after SIGINT before it is killed.
STOP_TIMEOUT_S = 30.0
#: Seconds of samples after the warm-up below which a growth per hour is mostly noise.
SHORT_FIT_S = 300.0
#: Exit statuses of a server that stopped as asked after SIGINT (130: the interrupt, once it
#: has drained).
CLEAN_EXITS = (0, 130)

#: Streams plus subscribers one worker process takes on, and ``genre.update`` messages per
#: second it takes in. Measured on a shared core: 40 streams and 40 subscribers (400 frames out,
#: 80 updates in a second) took 5 % of it, 20 streams and 20 subscribers following all (200
#: frames out, 800 updates in) 7 %; these bounds leave a worker well under half a core.
STREAMS_PER_WORKER = 250
UPDATES_PER_S_PER_WORKER = 4000.0

Follow = Literal["stream", "all"]


@dataclass(frozen=True)
class SoakOptions:
    """What to run. ``minutes`` of soak; ``config`` the base config (``None``: the project's);
    ``model``/``device`` override it; ``token`` the clients send (``None``: ``$GENRECAST_TOKEN``),
    also given to the server as ``$GENRECAST_TOKEN``; ``host`` a loopback address to serve on;
    ``workers`` client processes (0: :func:`auto_workers`); ``churn_s`` the average life of a
    stream in seconds (0: every stream lives the whole soak); ``server_workers`` the server's
    ingest processes (``serve --workers``; ``None``: the config's)."""

    streams: int = 10
    subscribers: int = 10
    minutes: float = 1.0
    config: Path | None = None
    model: str | None = None
    device: str | None = None
    token: str | None = None
    host: str = "127.0.0.1"
    follow: Follow = "stream"
    workers: int = 0
    churn_s: float = 0.0
    server_workers: int | None = None

    def check(self) -> None:
        """Raise :class:`SoakError` for anything outside the soak's bounds."""
        if not 1 <= self.streams <= MAX_STREAMS:
            raise SoakError(f"--streams must be 1 to {MAX_STREAMS}, got {self.streams}")
        if not 0 <= self.subscribers <= MAX_SUBSCRIBERS:
            raise SoakError(f"--subscribers must be 0 to {MAX_SUBSCRIBERS}, got {self.subscribers}")
        if not 0 < self.minutes <= MAX_MINUTES:
            raise SoakError(
                f"--minutes must be more than 0 and at most {MAX_MINUTES:g}, got {self.minutes:g}"
            )
        if self.minutes * 60.0 < 2 * FRAME_S * 10:
            raise SoakError(f"--minutes {self.minutes:g} is shorter than 2 s")
        if not is_loopback_host(self.host):
            raise SoakError(
                f"the soak runs on loopback only: {self.host!r} is not a loopback address"
            )
        if self.follow not in ("stream", "all"):
            raise SoakError(f"--follow must be 'stream' or 'all', got {self.follow!r}")
        if not 0 <= self.workers <= MAX_WORKERS:
            raise SoakError(f"--workers must be 0 (auto) to {MAX_WORKERS}, got {self.workers}")
        if self.churn_s and not MIN_CHURN_S <= self.churn_s <= self.minutes * 60.0:
            raise SoakError(
                f"--churn must be 0 (off) or {MIN_CHURN_S:g} s to the soak's length, "
                f"got {self.churn_s:g}"
            )


def auto_workers(streams: int, subscribers: int, follow: Follow, hop_s: float) -> int:
    """Client worker processes for a soak: enough that none handles more than
    :data:`STREAMS_PER_WORKER` streams plus subscribers or takes in more than
    :data:`UPDATES_PER_S_PER_WORKER` updates per second (``hop_s``: seconds between a stream's
    updates), and no more than the CPUs (at least one)."""
    followed = streams if follow == "all" else 1
    updates_per_s = subscribers * followed / hop_s
    wanted = max(
        math.ceil((streams + subscribers) / STREAMS_PER_WORKER),
        math.ceil(updates_per_s / UPDATES_PER_S_PER_WORKER),
        1,
    )
    return max(1, min(wanted, os.cpu_count() or 1, MAX_WORKERS))
