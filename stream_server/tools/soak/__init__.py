"""``genrecast soak``: a real server under N live streams and M subscribers for T minutes.

Processes. The soak starts ``genrecast serve`` as a separate process on a free loopback port, with
a temporary config (the given one, with the stream limits raised to N, the database in a temporary
folder, ``--model``/``--device`` applied) and drives it from client worker processes: the server
is measured from outside, never from inside its own event loop. Each worker runs one asyncio loop
with its share of the streams and of the subscribers (:func:`auto_workers` picks how many
workers); the soak process itself only starts and stops the others, samples the server and adds up.

Streams. Each stream pushes real-time paced PCM (44.1 kHz mono s16le, 0.1 s frames) of synthetic
music (decaying chords, a bass line and a noise beat, looped every 30 s) to ``/ws/ingest``. The
N stream slots start spread over the first tenth of the soak (at most 10 s), push until the
soak's end, then send ``stop`` and take ``stream.ended`` (``windows_computed``,
``windows_skipped``). With ``churn_s``, each slot instead ends its stream and opens a new one
(a new id, a new connection) after ``churn_s`` seconds on average (0.5 to 1.4 times, varied by
slot and generation), again and again until the soak's end: streams come and go all the time,
as on a real server, and per-stream state that is never released shows as RSS growth.

Subscribers. ``follow="stream"`` (the default): subscriber ``j`` follows slot ``j mod N`` only:
each stream of the slot in turn (``/ws/updates?stream_id=ID&since=SEQ``, from the stream's own
``stream.started``, until its ``stream.ended``);
``follow="all"``: every subscriber follows every stream (``/ws/updates?since=0``), so the
server sends N times as many messages. Subscribers read promptly (parse and count, nothing else)
and never reconnect: one the server drops for being slow (close code 1013) keeps the updates it
got, and every one it did not get is lost.

What is counted.

* Lost updates: for each subscriber, the ``genre.update`` messages published for the streams it
  follows (each stream's ``windows_computed``, which counts exactly the updates published for
  it) minus those it received. Also counted: subscribers dropped, messages whose ``seq`` does not
  increase, and, with ``follow="all"``, gaps in the server-wide ``seq`` sequence.
* Latency, per delivered update: the server's ``latency_ms`` (arrival of the window's last sample
  to publication) and the client-side delay (receipt minus the moment the frame that completed the
  window was sent; for streams pushed from the subscriber's own worker, to within one frame).
* Server RSS in MiB (``VmRSS`` of ``/proc/PID/status``), sampled every ``T/60`` (0.5 to 5 s):
  idle before the streams, at the end of the warm-up (until the streams' ring buffers are full,
  at least 60 s, at most half the soak: :func:`schedule`), at the end of the streams, after they
  ended, the maximum, and its growth per hour (least-squares slope over the samples from the end
  of the warm-up to the end of the streams). Also the server's CPU share (``/proc/PID/stat``), the
  workers' CPU share and event-loop lag (a loop that lags is a client that cannot keep up: the
  figures then say less about the server).
* Errors: streams refused or cut, subscribers closed, streams without ``stream.ended``,
  ``ERROR`` lines and tracebacks in the server's log (``WARNING`` lines are only counted), a server
  that does not stop within :data:`STOP_TIMEOUT_S` of SIGINT or exits otherwise than
  :data:`CLEAN_EXITS`.

Bounds: at most :data:`MAX_MINUTES` minutes, :data:`MAX_STREAMS` streams and
:data:`MAX_SUBSCRIBERS` subscribers; loopback only. Linux only (``/proc``).
"""

from stream_server.errors import SoakError
from stream_server.tools.soak.figures import Histogram, SoakResult, format_report
from stream_server.tools.soak.options import SoakOptions, auto_workers
from stream_server.tools.soak.runner import config_toml, run_soak, schedule, soak_config

__all__ = [
    "Histogram",
    "SoakError",
    "SoakOptions",
    "SoakResult",
    "auto_workers",
    "config_toml",
    "format_report",
    "run_soak",
    "schedule",
    "soak_config",
]
