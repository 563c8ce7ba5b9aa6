"""Offline classification of a whole file through the live pipeline.

The file is decoded with PyAV at the model's rate and fed hop by hop into a
:class:`~stream_server.core.session.StreamSession`, exactly as a live stream would be; due windows
are run in batches by an :class:`~stream_server.inference.runner.InferenceRunner` and scored back in
order. So a file gives the same windows, gate and smoothing as the same audio arriving live. The
timeline is then decoded as ``[offline] decoding`` says: ``"viterbi"`` (the default) decodes the
whole file at once, looking ahead (:mod:`stream_server.core.decoding`), and each window's ``genre``
and ``confidence`` are the decoded ones; ``"live"`` keeps the live session's timeline and labels.
The report says which (``decoding``).

:class:`OfflineStream` is that loop without the model: batches of windows out, probabilities in.
:func:`classify_audio` drives it with a runner here; the server's ``POST /classify`` drives it with
its engine thread (:mod:`stream_server.serve.upload`). Both give a :class:`ClassifyReport` whose
:meth:`~ClassifyReport.to_result` is the one result shape: the ``POST /classify`` answer, also
printed by ``genrecast classify --json``.
"""

from __future__ import annotations

import hashlib
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np
import torch

from stream_server.config import OFFLINE_DECODINGS, Config
from stream_server.core.decoding import Decoded, decode
from stream_server.core.session import SessionParams, StreamSession
from stream_server.core.timeline import Segment
from stream_server.core.windows import WindowJob, WindowScores
from stream_server.inference.facts import session_params
from stream_server.inference.levels import levels_dbfs
from stream_server.inference.loading import configured_runner, load_configured_model
from stream_server.inference.model import LoadedModel
from stream_server.inference.runner import InferenceRunner
from stream_server.media.decode import decode_mono
from stream_server.messages import (
    NON_MUSIC_LABELS,
    ClassifiedSegment,
    ClassifiedWindow,
    ClassifyResult,
    GenreUpdate,
)


@dataclass
class ClassifyReport:
    """Result of classifying one file. ``mean_probs`` is ``(labels,)``, the mean over the windows
    labelled music (speech and silence do not count; all windows when none is music).
    ``processing_s`` is seconds from opening the file to the report, decoding included. Its one
    outside shape is :meth:`to_result`."""

    source: str
    duration_s: float
    labels: tuple[str, ...]
    mean_probs: np.ndarray
    windows: list[GenreUpdate]
    window_probs: np.ndarray
    segments: list[Segment]
    processing_s: float
    device: str
    padded: bool = False
    model: str = ""
    decoding: str = "live"
    extra: dict[str, Any] = field(default_factory=dict)

    def ranking(self) -> list[tuple[str, float]]:
        order = np.argsort(-self.mean_probs, kind="stable")
        return [(self.labels[i], float(self.mean_probs[i])) for i in order]

    def to_result(self, *, sha256: str = "", cached: bool = False) -> ClassifyResult:
        """The report as a :class:`~stream_server.messages.ClassifyResult`: the ``POST /classify``
        answer, which ``genrecast classify --json`` prints too (``processing_ms`` from
        ``processing_s``; ``sha256`` of the file, ``cached`` whether it was answered from the
        cache)."""
        ranking = self.ranking()
        return ClassifyResult(
            source=self.source,
            sha256=sha256,
            model=self.model,
            device=self.device,
            duration_s=round(self.duration_s, 3),
            processing_ms=round(self.processing_s * 1000.0, 1),
            cached=cached,
            genre=ranking[0][0],
            confidence=round(ranking[0][1], 4),
            probabilities={label: round(p, 4) for label, p in ranking},
            padded=self.padded,
            decoding=self.decoding,
            windows=[
                ClassifiedWindow(
                    start_s=w["window_start_s"],
                    end_s=w["stream_time_s"],
                    top=w["top"],
                    genre=w["genre"],
                    confidence=w["confidence"],
                )
                for w in self.windows
            ],
            segments=[cast(ClassifiedSegment, s.to_dict()) for s in self.segments],
        )


class OfflineStream:
    """Whole audio through a live session, without the model: windows out, probabilities in.

    ``audio`` is ``(samples,)`` float32 at the model's rate; shorter than one window, it is padded
    with silence to one window (``padded``; its level is then the level of the audio itself).
    :meth:`next_batch` feeds it hop by hop until ``max_batch`` windows are due (or the audio ends)
    and returns them as ``(n, samples)``; :meth:`add_scores` takes the scores of the oldest batch
    not yet scored, so several batches may be out at once. :meth:`result` decodes the timeline
    as ``params.offline`` says. No I/O, no threads: one owner drives it.
    """

    def __init__(self, audio: np.ndarray, params: SessionParams, max_batch: int) -> None:
        if max_batch <= 0:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        self.padded = audio.size < params.window_samples
        self._padded_level: float | None = None
        if self.padded:
            self._padded_level = float(levels_dbfs(torch.from_numpy(audio).unsqueeze(0))[0])
            audio = np.pad(audio, (0, params.window_samples - audio.size))
        self._audio = audio
        self._params = params
        self._max_batch = max_batch
        self._offset = 0
        #: The runner's name for this stream (its updates say "offline").
        self.stream_id = f"offline-{uuid.uuid4().hex}"
        self._session = StreamSession(
            "offline", params, sample_rate=params.model_rate, channels=1, fmt="f32le"
        )
        self._out: deque[list[WindowJob]] = deque()
        self.updates: list[GenreUpdate] = []
        self._probs: list[np.ndarray] = []
        self._levels: list[float] = []
        self._speech: list[float] = []
        self._times: list[float] = []

    @property
    def fraction(self) -> float:
        """Share of the audio fed so far, 0 to 1."""
        return min(self._offset, self._audio.size) / self._audio.size

    def next_batch(self) -> list[WindowJob] | None:
        """The next windows' jobs, ``1 <= n <= max_batch`` (their windows ``(samples,)`` each, of
        the stream :attr:`stream_id`); None once all is fed."""
        jobs: list[WindowJob] = []
        hop = self._params.hop_samples
        while len(jobs) < self._max_batch and self._offset < self._audio.size:
            chunk = self._audio[self._offset : self._offset + hop].astype("<f4", copy=False)
            self._offset += hop
            job = self._session.feed(chunk.tobytes())
            if job is not None:
                jobs.append(job)
        if not jobs:
            return None
        self._out.append(jobs)
        return [replace(job, stream_id=self.stream_id) for job in jobs]

    def add_scores(self, scores: WindowScores) -> None:
        """Score the oldest outstanding batch with its scores (``n`` windows)."""
        if not self._out:
            raise ValueError("no batch is waiting for scores")
        jobs = self._out[0]
        if len(scores) != len(jobs):
            raise ValueError(f"expected scores for {len(jobs)} windows, got {len(scores)}")
        self._out.popleft()
        rate = self._params.model_rate
        for i, job in enumerate(jobs):
            level = float(scores.level_dbfs[i])
            if self._padded_level is not None:
                level = self._padded_level
            speech = float(scores.speech[i])
            scored = self._session.on_scores(
                job, scores.probs[i], level_dbfs=level, speech_prob=speech
            )
            self.updates.append(scored.update)
            self._probs.append(scored.probs)
            self._levels.append(level)
            self._speech.append(speech)
            self._times.append(job.end_sample / rate)

    def result(self) -> tuple[list[GenreUpdate], np.ndarray, list[Segment], bool]:
        """Updates, ``(windows, labels)`` probabilities, timeline and ``padded`` so far.

        With ``params.offline.decoding == "viterbi"`` the timeline and each update's ``genre``
        and ``confidence`` are those of :func:`~stream_server.core.decoding.decode` over every
        window so far; with ``"live"`` they are the live session's.
        """
        params = self._params
        labels = len(params.labels)
        stacked = np.stack(self._probs) if self._probs else np.empty((0, labels), np.float32)
        if params.offline.decoding == "live" or not self.updates:
            return self.updates, stacked, self._session.segments(), self.padded
        decoded = decode_whole(
            params, stacked, np.array(self._times), np.array(self._levels), np.array(self._speech)
        )
        updates: list[GenreUpdate] = []
        for update, label, confidence in zip(
            self.updates, decoded.labels, decoded.confidences, strict=True
        ):
            copy = update.copy()
            copy["genre"] = label
            copy["confidence"] = round(float(confidence), 4)
            updates.append(copy)
        return updates, stacked, decoded.segments, self.padded


def decode_whole(
    params: SessionParams,
    probs: np.ndarray,
    times_s: np.ndarray,
    level_dbfs: np.ndarray,
    speech: np.ndarray,
) -> Decoded:
    """The ``"viterbi"`` decoding of a whole file's windows under ``params``.

    ``probs`` is ``(T, labels)`` display probabilities; ``times_s``, ``level_dbfs`` and
    ``speech`` are ``(T,)``: each window's end (stream time, s), newest hop's level (dBFS) and
    speech probability.
    """
    return decode(
        params.labels,
        probs,
        times_s,
        times_s - params.window_s,
        level_dbfs=level_dbfs,
        speech=speech,
        gate=params.gate,
        hop_s=params.hop_s,
        switch_cost=params.offline.switch_cost,
    )


def classify_audio(
    audio: np.ndarray,
    runner: InferenceRunner,
    params: SessionParams,
    *,
    progress: bool = False,
) -> tuple[list[GenreUpdate], np.ndarray, list[Segment], bool]:
    """Run ``(samples,)`` float32 audio at the model's rate through a session, hop by hop.

    Audio shorter than one window is padded with silence to one window (reported as ``padded``).
    Returns the per-window updates, their ``(windows, labels)`` probabilities, the timeline and
    whether padding was needed.
    """
    stream = OfflineStream(audio, params, runner.max_batch)
    try:
        while (jobs := stream.next_batch()) is not None:
            stream.add_scores(runner.score_jobs(jobs))
            if progress:
                _progress(stream.fraction)
    finally:
        runner.release(stream.stream_id)
    if progress:
        _progress(1.0)
        sys.stderr.write("\n")
    return stream.result()


def _progress(fraction: float) -> None:
    width = 30
    filled = round(width * fraction)
    sys.stderr.write(f"\r  classifying [{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%}")
    sys.stderr.flush()


def classify_file(
    path: str, config: Config, *, model: LoadedModel | None = None, progress: bool = False
) -> ClassifyReport:
    """Decode ``path`` and classify it with the configured (or given) model."""
    loaded = model or load_configured_model(config)
    params = session_params(config, loaded)
    runner = configured_runner(config, loaded)
    start = time.perf_counter()
    audio = decode_mono(path, params.model_rate)
    outcome = classify_audio(audio, runner, params, progress=progress)
    return make_report(
        path,
        audio.size / params.model_rate,
        params,
        outcome,
        time.perf_counter() - start,
        device=str(runner.device),
        model=loaded.source,
    )


def file_sha256(path: str) -> str:
    """SHA-256 (hex) of the file at ``path``, as ``POST /classify`` keys its answers."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def make_report(
    source: str,
    duration_s: float,
    params: SessionParams,
    outcome: tuple[list[GenreUpdate], np.ndarray, list[Segment], bool],
    processing_s: float,
    *,
    device: str,
    model: str,
) -> ClassifyReport:
    """The report for ``outcome`` (what :func:`classify_audio` or the engine path returned):
    ``duration_s`` of audio classified in ``processing_s`` seconds. The file's probabilities are
    the mean over its windows labelled music (over all of them when none is)."""
    updates, probs, segments, padded = outcome
    music = np.array([u["genre"] not in NON_MUSIC_LABELS for u in updates], dtype=bool)
    return ClassifyReport(
        source=source,
        duration_s=duration_s,
        labels=params.labels,
        mean_probs=probs[music].mean(axis=0) if music.any() else probs.mean(axis=0),
        windows=updates,
        window_probs=probs,
        segments=segments,
        processing_s=processing_s,
        device=device,
        padded=padded,
        model=model,
        decoding=params.offline.decoding,
    )


def format_report(report: ClassifyReport) -> str:
    """Human-readable report: top genres, then the per-window timeline."""
    return format_result(report.to_result())


def format_result(result: ClassifyResult) -> str:
    """Human-readable form of a ``POST /classify`` answer, as :func:`format_report` prints it."""
    seconds = result["processing_ms"] / 1000.0
    cached = ", cached" if result["cached"] else ""
    lines = [
        f"{result['source']}: {result['duration_s']:.1f} s, {len(result['windows'])} windows, "
        f"{seconds:.2f} s on {result['device']} (model: {result['model']}{cached})",
        "",
        "top genres:",
    ]
    ranking = sorted(result["probabilities"].items(), key=lambda item: -item[1])
    for label, p in ranking[:5]:
        lines.append(f"  {label:<14} {p:6.1%}  {'#' * round(p * 40)}")
    if result["padded"]:
        lines.append("  (shorter than one window: padded with silence)")
    decoding = result.get("decoding")
    if decoding:
        text = OFFLINE_DECODINGS.get(decoding)
        lines += ["", f"decoding: {decoding}" + (f" ({text})" if text else "")]
    lines += ["", "timeline:"]
    for seg in result["segments"]:
        lines.append(
            f"  {seg['start_s']:7.1f}s - {seg['end_s']:7.1f}s  {seg['genre']:<14} "
            f"{seg['confidence']:.2f}"
        )
    lines += ["", "windows:"]
    for w in result["windows"]:
        top = ", ".join(f"{t['label']} {t['prob']:.2f}" for t in w["top"])
        lines.append(f"  {w['start_s']:7.1f}s - {w['end_s']:7.1f}s  {top}")
    return "\n".join(lines)
