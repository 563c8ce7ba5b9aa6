"""Offline decoding of a whole file: the best label path over all its windows at once.

The live server must decide as the audio comes (:mod:`stream_server.core.labelling`); a whole file
can be decoded looking ahead as well as back. :func:`decode` does that in three steps:

1. **the gate** (:mod:`stream_server.core.gate`) judges every window music, speech or silence, then
   runs spanning less than ``min_run_s`` between two runs of one same kind take that kind (the
   non-causal counterpart of the live rule);
2. **the genres** of the music windows are the most likely path of a hidden Markov chain over
   the genre labels (:func:`viterbi`): each window's emission is its log-probability per genre,
   staying costs nothing and every switch costs ``switch_cost`` nats. A music window whose audio
   is mostly a silence that just ended, and a short non-music run absorbed into music, carry no
   genre evidence. Each window's confidence is the posterior probability of its genre
   (:func:`forward_backward`);
3. **the timeline**: segments of equal labels; a boundary next to silence lies at the start of
   the newest hop of the first window after it, any other boundary midway between the centres of
   the two windows either side (as the live path dates its changes back).

Times are seconds; pure functions on arrays, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stream_server.config import OFFLINE_DECODINGS, OfflineParams
from stream_server.core.gate import MUSIC, SILENCE, SPEECH, GateParams, judge
from stream_server.core.labelling import mostly_after_silence
from stream_server.core.timeline import Segment
from stream_server.messages import SILENCE as SILENCE_LABEL
from stream_server.messages import SPEECH as SPEECH_LABEL

__all__ = [
    "DECODINGS",
    "Decoded",
    "OfflineParams",
    "absorb_short_runs",
    "decode",
    "forward_backward",
    "segments_of",
    "viterbi",
]

#: ``viterbi``: :func:`decode`; ``live``: the causal live path, as a stream would show it.
DECODINGS = tuple(OFFLINE_DECODINGS)

_EPS = 1e-6

FloatArray = npt.NDArray[np.float64]


def _log_transitions(states: int, switch_cost: float) -> tuple[float, float]:
    """``(log stay, log switch)``: a row of the transition matrix, normalised."""
    switch = math.exp(-switch_cost)
    norm = math.log1p((states - 1) * switch)
    return -norm, -switch_cost - norm


def viterbi(log_emissions: npt.ArrayLike, switch_cost: float) -> npt.NDArray[np.int64]:
    """The most likely state path.

    Args:
        log_emissions: ``(T, S)`` log-likelihood of each state at each step.
        switch_cost: Nats each change of state costs (staying costs nothing), ``>= 0``.

    Returns:
        ``(T,)`` state indices; the lowest index wins ties.
    """
    e = np.asarray(log_emissions, dtype=np.float64)
    steps, states = e.shape
    path = np.zeros(steps, dtype=np.int64)
    if steps == 0:
        return path
    stay, switch = _log_transitions(states, switch_cost)
    back = np.zeros((steps, states), dtype=np.int64)
    score = e[0].copy()
    for t in range(1, steps):
        best = int(np.argmax(score))
        stay_score = score + stay
        switch_score = score[best] + switch
        take_switch = switch_score > stay_score
        back[t] = np.where(take_switch, best, np.arange(states))
        score = np.where(take_switch, switch_score, stay_score) + e[t]
    path[-1] = int(np.argmax(score))
    for t in range(steps - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def _logsumexp(x: FloatArray, axis: int) -> FloatArray:
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    out: FloatArray = np.log(np.sum(np.exp(x - top), axis=axis)) + np.squeeze(top, axis=axis)
    return out


def forward_backward(log_emissions: npt.ArrayLike, switch_cost: float) -> FloatArray:
    """Posterior probability of each state at each step, given every step.

    Same chain as :func:`viterbi`, uniform start. Returns ``(T, S)`` rows summing to 1.
    """
    e = np.asarray(log_emissions, dtype=np.float64)
    steps, states = e.shape
    if steps == 0:
        return np.zeros((0, states))
    stay, switch = _log_transitions(states, switch_cost)
    log_a = np.full((states, states), switch)
    np.fill_diagonal(log_a, stay)
    alpha = np.zeros((steps, states))
    beta = np.zeros((steps, states))
    alpha[0] = e[0] - math.log(states)
    for t in range(1, steps):
        alpha[t] = e[t] + _logsumexp(alpha[t - 1][:, None] + log_a, axis=0)
    for t in range(steps - 2, -1, -1):
        beta[t] = _logsumexp(log_a + (e[t + 1] + beta[t + 1])[None, :], axis=1)
    post = alpha + beta
    post -= _logsumexp(post, axis=1)[:, None]
    return np.exp(post)


def absorb_short_runs(
    kinds: npt.ArrayLike, times_s: npt.ArrayLike, min_run_s: float
) -> npt.NDArray[np.int8]:
    """Kinds with short runs absorbed: a run of one kind spanning less than ``min_run_s`` (from
    its first window's time to its last's) between two runs of one same other kind -- or at
    either end, next to one run -- takes that kind. ``kinds``, ``times_s``: ``(T,)``."""
    out = np.asarray(kinds, dtype=np.int8).copy()
    times = np.asarray(times_s, dtype=np.float64)
    if out.size == 0:
        return out
    changed = True
    while changed:
        changed = False
        edges = np.flatnonzero(np.diff(out)) + 1
        starts = np.concatenate(([0], edges))
        ends = np.concatenate((edges, [out.size]))
        if starts.size < 2:
            break
        # the shortest absorbable run first, so one blip does not decide for a longer one
        spans = times[ends - 1] - times[starts]
        for r in np.argsort(spans, kind="stable"):
            if spans[r] >= min_run_s:
                break
            left = out[starts[r] - 1] if r > 0 else None
            right = out[ends[r]] if r + 1 < starts.size else None
            side = left if right is None else right if left is None else left
            if side is not None and (left is None or right is None or left == right):
                out[starts[r] : ends[r]] = side
                changed = True
                break
    return out


def segments_of(
    labels: Sequence[str],
    confidences: npt.ArrayLike,
    times_s: npt.ArrayLike,
    starts_s: npt.ArrayLike,
    hop_s: float,
) -> list[Segment]:
    """The timeline of per-window labels (see the module docstring for the boundaries).

    Args:
        labels: ``T`` labels, one per window, in time order.
        confidences: ``(T,)`` each window's confidence in its label.
        times_s, starts_s: ``(T,)`` each window's end and start (stream time, s).
        hop_s: Seconds between windows.

    Returns:
        Contiguous segments from the first window's start to the last window's end; each holds
        the windows whose label it carries (``updates``) and their mean confidence.
    """
    conf = np.asarray(confidences, dtype=np.float64)
    times = np.asarray(times_s, dtype=np.float64)
    starts = np.asarray(starts_s, dtype=np.float64)
    if not labels:
        return []
    centres = (times + starts) / 2
    runs: list[list[int]] = [[0]]
    for i in range(1, len(labels)):
        if labels[i] == labels[runs[-1][0]]:
            runs[-1].append(i)
        else:
            runs.append([i])
    out: list[Segment] = []
    begin = float(starts[0])
    for n, run in enumerate(runs):
        if n + 1 < len(runs):
            i = runs[n + 1][0]
            if SILENCE_LABEL in (labels[i - 1], labels[i]):
                end = float(times[i] - hop_s)
            else:
                end = float((centres[i - 1] + centres[i]) / 2)
            end = min(max(end, begin), float(times[i]))
        else:
            end = float(times[-1])
        genre = labels[run[0]]
        mean = float(conf[run].mean())
        if out and end <= begin:  # squeezed out by its neighbours: its windows join the last
            last = out[-1]
            last.confidence = (last.confidence * last.updates + mean * len(run)) / (
                last.updates + len(run)
            )
            last.updates += len(run)
            continue
        if out and out[-1].genre == genre:
            last = out[-1]
            last.confidence = (last.confidence * last.updates + mean * len(run)) / (
                last.updates + len(run)
            )
            last.updates += len(run)
            last.end_s = end
        else:
            out.append(Segment(begin, end, genre, mean, len(run)))
        begin = end
    out[-1].end_s = max(out[-1].end_s, float(times[-1]))
    return out


@dataclass(frozen=True)
class Decoded:
    """Per-window labels and confidences of a whole file, and its timeline."""

    labels: list[str]
    confidences: npt.NDArray[np.float64]
    kinds: npt.NDArray[np.int8]
    segments: list[Segment]


def decode(
    genres: Sequence[str],
    probs: npt.ArrayLike,
    times_s: npt.ArrayLike,
    starts_s: npt.ArrayLike,
    *,
    level_dbfs: npt.ArrayLike | None = None,
    speech: npt.ArrayLike | None = None,
    gate: GateParams,
    hop_s: float,
    switch_cost: float,
) -> Decoded:
    """Decode a whole file's windows non-causally (see the module docstring).

    Args:
        genres: The ``C`` genre labels, in probability order.
        probs: ``(T, C)`` window probabilities, in time order.
        times_s, starts_s: ``(T,)`` window ends and starts (stream time, s).
        level_dbfs: ``(T,)`` level of each window's newest hop (dBFS); ``None``: none silent.
        speech: ``(T,)`` speech probabilities; ``None``: zeros.
        gate: Gate thresholds and ``min_run_s``.
        hop_s: Seconds between windows.
        switch_cost: Nats per switch between genres.
    """
    p = np.asarray(probs, dtype=np.float64)
    times = np.asarray(times_s, dtype=np.float64)
    starts = np.asarray(starts_s, dtype=np.float64)
    steps = p.shape[0]
    levels = np.zeros(steps) if level_dbfs is None else np.asarray(level_dbfs, np.float64)
    speech_p = np.zeros(steps) if speech is None else np.asarray(speech, np.float64)
    judged = judge(levels, speech_p, gate)
    kinds = absorb_short_runs(judged, times, gate.min_run_s)
    evidence = np.zeros(steps, dtype=bool)
    silence_until: float | None = None
    for i in range(steps):
        if kinds[i] == SILENCE:
            silence_until = float(times[i])
        evidence[i] = (
            kinds[i] == MUSIC
            and judged[i] == MUSIC
            and not mostly_after_silence(float(starts[i]), float(times[i]), silence_until)
        )
    labels = [SPEECH_LABEL if k == SPEECH else SILENCE_LABEL for k in kinds]
    confidences = np.where(kinds == SPEECH, speech_p, 1.0)
    music = np.flatnonzero(kinds == MUSIC)
    if music.size:
        log_e = np.where(evidence[music][:, None], np.log(p[music] + _EPS), 0.0)
        path = viterbi(log_e, switch_cost)
        post = forward_backward(log_e, switch_cost)
        for j, i in enumerate(music.tolist()):
            labels[i] = genres[int(path[j])]
            confidences[i] = post[j, path[j]]
    return Decoded(
        labels, confidences, kinds, segments_of(labels, confidences, times, starts, hop_s)
    )
