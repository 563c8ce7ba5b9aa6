"""``genrecast bench``: throughput and latency of a real server process under live streams.

Processes. The bench starts ``genrecast serve`` as a separate process on a free loopback port,
with a temporary config (the given one, with the stream limits raised to the streams run, the
database in a temporary folder, warnings and errors only in its log) and waits for ``/health``.
The load comes from other processes: one subscriber on ``/ws/updates`` and ``--procs`` pushers,
each with one asyncio loop and its share of the streams. The bench process itself only prepares
the audio, times the model alone, starts and stops the others, samples the server's CPU time and
RSS (``/proc/PID``) and adds up. So the server is measured from outside: none of the clients'
work is in its figures.

Audio. A few clips (``--clips``, one genre after another) are decoded once from ``--audio``
(default: ``../shared/datasets/genres`` beside the repository, where it exists) to mono int16 at
the model's rate, or, without a directory, synthetic music is made (vectorised numpy). Stream
``i`` plays clip ``i mod clips`` from its own offset, looped, as s16le PCM in frames of 0.1 s
over ``/ws/ingest`` (uncompressed), paced at ``--speed`` times real time for ``--seconds``
seconds of audio, then sends ``stop`` and takes ``stream.ended``. Streams start at random phases
within a hop (as independent sources do), or all at once with ``--same-instant``.

Latency. Each pusher records, per stream, the cumulative samples sent after each frame and the
``time.monotonic()`` just after the frame went out; the subscriber records the
``time.monotonic()`` at which each ``genre.update`` arrived. An update for a window ending at
sample ``S`` (its ``stream_time_s``) has the latency receipt minus the send time of the frame
holding sample ``S`` (:mod:`~stream_server.tools.bench.figures`): the whole path, from the last
sample leaving the client to the update reaching a client, through TCP, the server's event loop,
batching and the model. ``time.monotonic()`` is one clock for all processes on Linux.

Figures. ``offline_windows_per_s``: the server's ``InferenceRunner`` alone (same model, device,
precision and ``engine.max_batch``) on full batches of windows of the clips, timed in the bench
process before the load starts; ``e2e_windows_per_s``: windows the server computed per second of
the run's wall time, and its share of the offline figure. With ``--compare-seed``, the naive
pipeline (one window per call, float32, features from scratch each time) is timed the same way.
``--find-max`` searches, with short runs, the most streams at ``--speed`` that keep the p99
latency within ``--max-p99-ms`` with no window skipped and no error
(:func:`~stream_server.tools.bench.search.find_max`).

Tokens: the server runs in this process's environment, so the tokens of the config and
``$GENRECAST_TOKEN`` apply to it; every client sends ``token`` (default ``$GENRECAST_TOKEN``),
which needs the ``ingest`` and ``read`` scopes. Linux only (``/proc``).
"""

from stream_server.tools.bench.figures import (
    BenchReport,
    Geometry,
    RunFigures,
    StreamLog,
    Throughput,
    UpdateLog,
    format_report,
    join_latencies_ms,
    summarise,
    window_end_samples,
)
from stream_server.tools.bench.options import BenchOptions, options_from_args
from stream_server.tools.bench.runner import run_bench
from stream_server.tools.bench.search import Search, find_max

__all__ = [
    "BenchOptions",
    "BenchReport",
    "Geometry",
    "RunFigures",
    "Search",
    "StreamLog",
    "Throughput",
    "UpdateLog",
    "find_max",
    "format_report",
    "join_latencies_ms",
    "options_from_args",
    "run_bench",
    "summarise",
    "window_end_samples",
]
