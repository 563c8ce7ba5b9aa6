"""What a bench runs: its options, their bounds and the constants of the load."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

from stream_server.errors import GenrecastError

#: Upper bounds: the bench is a measurement, not a load generator without limits.
MAX_STREAMS = 4096
MAX_SECONDS = 3600.0
MAX_SPEED = 1000.0
MAX_PROCS = 64
MAX_CLIPS = 64

#: Seconds of audio per PCM frame a pusher sends (s16le, mono, at the model's rate).
FRAME_S = 0.1
#: Seconds between the moment the parent hands out the start time and the start itself (the
#: time every load process needs to read it).
START_DELAY_S = 0.5
#: Seconds the server may take to load its model and say it is ready.
READY_TIMEOUT_S = 300.0
#: Seconds a load process may take to start (imports, reading the audio, opening its streams).
WORKER_START_S = 120.0
#: Seconds a stream may take to end after ``stop``; the subscriber to see the last update after
#: the pushers are done.
END_GRACE_S = 30.0
#: Seconds before the end of a ``--hold`` at which the server's idle RSS is read.
HOLD_READ_S = 1.0
#: Seconds between two samples of the server's RSS during a run.
SAMPLE_EVERY_S = 0.5
#: Seconds the server may take to stop after SIGINT before it is killed.
STOP_TIMEOUT_S = 30.0
#: Seconds of audio per synthetic clip (used when no audio directory exists).
SYNTHETIC_CLIP_S = 30.0
#: Probe length in seconds of audio per stream for ``--find-max`` when ``--seconds`` is not given,
#: and run length otherwise.
FIND_MAX_SECONDS = 20.0
RUN_SECONDS = 30.0

#: The dataset the bench plays by default: ``../shared/datasets/genres`` beside the repository.
DEFAULT_AUDIO_DIR = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "genres"


def default_procs() -> int:
    """Pusher processes by default: ``min(4, CPUs)``."""
    return max(1, min(4, os.cpu_count() or 1))


def default_audio_dir() -> Path | None:
    """:data:`DEFAULT_AUDIO_DIR` where it exists, else ``None`` (synthetic audio)."""
    return DEFAULT_AUDIO_DIR if DEFAULT_AUDIO_DIR.is_dir() else None


@dataclass(frozen=True)
class BenchOptions:
    """What to run.

    ``streams`` live streams, each of ``seconds`` seconds of audio sent at ``speed`` times real
    time by ``procs`` pusher processes (0: :func:`default_procs`). Audio: ``clips`` clips decoded
    from ``audio`` (``None``: :func:`default_audio_dir`), or synthetic music with ``synthetic`` or
    when there is no directory. Streams start at random phases within a hop, or all at once with
    ``same_instant``. ``token`` goes to the server with every request (``None``:
    ``$GENRECAST_TOKEN``). ``offline_s`` and ``seed_s``: seconds the offline and (with
    ``compare_seed``) the naive pipelines are timed for, at least. ``find_max``: search the most
    streams, up to ``find_max_limit``, that keep the p99 latency within ``max_p99_ms``
    milliseconds with no window skipped, starting from ``streams``. ``hold_s``: after its audio
    each stream stays open and silent this long, and the server's RSS is read near the end of
    it (memory per idle-but-live stream).
    """

    streams: int = 8
    seconds: float = RUN_SECONDS
    speed: float = 1.0
    procs: int = 0
    audio: Path | None = None
    clips: int = 8
    synthetic: bool = False
    same_instant: bool = False
    token: str | None = None
    compare_seed: bool = False
    offline_s: float = 5.0
    seed_s: float = 5.0
    find_max: bool = False
    max_p99_ms: float = 250.0
    find_max_limit: int = 1024
    hold_s: float = 0.0

    def check(self) -> None:
        """Raise :class:`GenrecastError` for anything out of bounds."""
        _within("--streams", self.streams, 1, MAX_STREAMS)
        _within("--procs", self.procs, 0, MAX_PROCS)
        _within("--clips", self.clips, 1, MAX_CLIPS)
        _within("--find-max-limit", self.find_max_limit, 1, MAX_STREAMS)
        _positive("--seconds", self.seconds, MAX_SECONDS)
        _positive("--speed", self.speed, MAX_SPEED)
        _positive("--max-p99-ms", self.max_p99_ms, math.inf)
        if not 0 <= self.hold_s <= MAX_SECONDS:
            raise GenrecastError(f"--hold must be 0 to {MAX_SECONDS:g} s, got {self.hold_s:g}")
        if self.hold_s and self.find_max:
            raise GenrecastError("--hold measures one run; it does not go with --find-max")
        if not (self.offline_s >= 0 and self.seed_s >= 0):
            raise GenrecastError("the offline timings need 0 s or more")
        if self.audio is not None and not self.synthetic and not self.audio.is_dir():
            raise GenrecastError(f"--audio {self.audio} is not a directory")

    def pushers(self, streams: int) -> int:
        """Pusher processes for ``streams`` streams: ``procs`` (or the default), at most one
        per stream."""
        return max(1, min(self.procs or default_procs(), streams))


def _within(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise GenrecastError(f"{name} must be {low} to {high}, got {value}")


def _positive(name: str, value: float, high: float) -> None:
    if not (0 < value <= high):
        bound = "" if math.isinf(high) else f" and at most {high:g}"
        raise GenrecastError(f"{name} must be more than 0{bound}, got {value:g}")


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """The options of ``genrecast bench``'s parsed command line (``--seconds`` left out: 30 s,
    or 20 s per probe with ``--find-max``)."""
    seconds = args.seconds
    if seconds is None:
        seconds = FIND_MAX_SECONDS if args.find_max else RUN_SECONDS
    return BenchOptions(
        streams=args.streams,
        seconds=seconds,
        speed=args.speed,
        procs=args.procs,
        audio=args.audio,
        clips=args.clips,
        synthetic=args.synthetic,
        same_instant=args.same_instant,
        token=args.token,
        compare_seed=args.compare_seed,
        find_max=args.find_max,
        max_p99_ms=args.max_p99_ms,
        find_max_limit=args.find_max_limit,
        hold_s=args.hold,
    )
