"""What travels between a genrecast node and the inference workers over NATS: subjects, and one
window or its scores as a NATS message (headers and payload).

- A due window is a request on :data:`WINDOWS` to the queue group :data:`WORKERS` (so NATS hands
  it to one live worker; adding one adds capacity, losing one moves its work): headers
  ``stream_id``, ``end_sample``, ``since`` (sample indices) and ``warm`` (``"1"``: a warm-up job,
  sent without a reply subject: nothing comes back), the payload the window as little-endian
  int16 PCM (:func:`~stream_server.core.windows.pcm16_bytes`, exact: the streams' ring buffers
  hold 16-bit PCM; the model's rate, mono).
- The reply: header ``status`` ``ok`` with the scores as payload
  (:func:`~stream_server.core.windows.scores_bytes` of the one window) and ``batch``/``seconds``
  (the batch it ran in: its size, its seconds), or ``replaced`` (the worker dropped it for a
  newer window of its stream), or ``failed`` with ``reason``.
- A one-shot run (an upload's windows) is a request on :data:`WINDOWS` with headers ``oneshot``
  (the number of windows ``n``) and ``samples``, the payload ``(n, samples)`` little-endian
  float32; the reply's payload their :func:`~stream_server.core.windows.scores_bytes`.
- :data:`RELEASE` (every worker, no queue group): header ``stream_id``; the stream ended, the
  workers drop what they keep for it.

**A stream stays on one worker.** A model that keeps state per stream (the stream table) scores
a window with context from the stream's earlier audio, which only the worker that saw it has, so
a node sends each stream's windows to one worker: to ``WINDOWS.<worker id>``
(:func:`direct_subject`), the worker picked by rendezvous hashing of the stream id over the live
workers (:func:`pick_worker`). Every node hears the same workers, so they all pick alike; a worker
that goes only moves its own streams, one that comes takes about ``1/N`` of them. Workers say
they are there on :data:`PRESENCE` every :data:`PRESENCE_S` seconds (header ``worker``;
``leaving`` ``1`` when they stop), and again at once when a node asks on :data:`WHO`. A node
that knows no worker sends to the queue group.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Final

from stream_server.core.windows import WindowJob, pcm16_bytes, pcm16_window

__all__ = [
    "ONESHOT",
    "PRESENCE",
    "PRESENCE_S",
    "RELEASE",
    "WHO",
    "WINDOWS",
    "WORKERS",
    "WORKER_TTL_S",
    "direct_subject",
    "job_from_message",
    "job_message",
    "pick_worker",
]

WINDOWS: Final = "genrecast.windows"
#: The header that makes a request on :data:`WINDOWS` a one-shot run.
ONESHOT: Final = "oneshot"
WORKERS: Final = "genrecast-workers"
RELEASE: Final = "genrecast.release"
PRESENCE: Final = "genrecast.workers.presence"
WHO: Final = "genrecast.workers.who"
#: Seconds between a worker's presence messages; one unheard of for :data:`WORKER_TTL_S` is gone.
PRESENCE_S: Final = 1.0
WORKER_TTL_S: Final = 3.5


def direct_subject(worker: str) -> str:
    """Where the windows of the streams that ``worker`` holds go."""
    return f"{WINDOWS}.{worker}"


def pick_worker(stream_id: str, workers: Iterable[str]) -> str | None:
    """The worker of ``stream_id`` among ``workers`` (rendezvous hashing: the highest
    ``blake2b(stream, worker)``), ``None`` for none."""
    best, best_score = None, b""
    for worker in workers:
        score = hashlib.blake2b(f"{stream_id}\0{worker}".encode(), digest_size=8).digest()
        if best is None or score > best_score:
            best, best_score = worker, score
    return best


Headers = dict[str, str]


def job_message(job: WindowJob) -> tuple[Headers, bytes]:
    """``job`` as a request's headers and payload."""
    headers = {
        "stream_id": job.stream_id,
        "end_sample": str(job.end_sample),
        "since": str(job.since),
        "warm": "1" if job.warm else "0",
    }
    return headers, pcm16_bytes(job.window)


def job_from_message(headers: Headers | None, payload: bytes) -> WindowJob:
    """The inverse of :func:`job_message` (the window as a 16-bit ring buffer reads it).

    Raises:
        ValueError: a header missing or not a number, or a payload of an odd length.
    """
    if headers is None:
        raise ValueError("a window without headers")
    try:
        stream_id = headers["stream_id"]
        end_sample, since = int(headers["end_sample"]), int(headers["since"])
    except KeyError as exc:
        raise ValueError(f"a window without the header {exc}") from None
    return WindowJob(
        stream_id,
        pcm16_window(payload),
        end_sample,
        time.monotonic(),
        since=since,
        warm=headers.get("warm") == "1",
    )
