"""Offline classification of a whole file through the live pipeline.

The file is decoded with PyAV at the model's rate and fed hop by hop into a
:class:`~stream_server.session.StreamSession`, exactly as a live stream would be; due windows are
run in batches by an :class:`~stream_server.runner.InferenceRunner` and scored back in order. So a
file gives the same windows, smoothing and timeline as the same audio arriving live.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_server.config import Config
from stream_server.decode import decode_mono
from stream_server.engine import WindowJob
from stream_server.messages import GenreUpdate
from stream_server.model import LoadedModel, resolve_model
from stream_server.runner import InferenceRunner, pick_device
from stream_server.session import SessionParams, StreamSession, session_params
from stream_server.timeline import Segment


@dataclass
class ClassifyReport:
    """Result of classifying one file. ``mean_probs`` is ``(labels,)``, the mean over windows."""

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
    extra: dict[str, Any] = field(default_factory=dict)

    def ranking(self) -> list[tuple[str, float]]:
        order = np.argsort(-self.mean_probs, kind="stable")
        return [(self.labels[i], float(self.mean_probs[i])) for i in order]

    def to_json(self) -> dict[str, Any]:
        ranking = self.ranking()
        return {
            "source": self.source,
            "model": self.model,
            "device": self.device,
            "duration_s": round(self.duration_s, 3),
            "processing_s": round(self.processing_s, 3),
            "genre": ranking[0][0],
            "confidence": round(ranking[0][1], 4),
            "probabilities": {label: round(p, 4) for label, p in ranking},
            "padded": self.padded,
            "windows": [
                {
                    "start_s": w["window_start_s"],
                    "end_s": w["stream_time_s"],
                    "top": w["top"],
                    "genre": w["genre"],
                    "confidence": w["confidence"],
                }
                for w in self.windows
            ],
            "segments": [s.to_dict() for s in self.segments],
        }


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
    padded = audio.size < params.window_samples
    if padded:
        audio = np.pad(audio, (0, params.window_samples - audio.size))
    session = StreamSession(
        "offline", params, sample_rate=params.model_rate, channels=1, fmt="f32le"
    )
    updates: list[GenreUpdate] = []
    probs_out: list[np.ndarray] = []
    batch: list[WindowJob] = []
    hop = params.hop_samples
    total = audio.size

    def flush() -> None:
        if not batch:
            return
        probs = runner.run(np.stack([job.window for job in batch]))
        for job, p in zip(batch, probs, strict=True):
            scored = session.on_scores(job, p)
            updates.append(scored.update)
            probs_out.append(scored.probs)
        batch.clear()

    for offset in range(0, total, hop):
        chunk = audio[offset : offset + hop].astype("<f4", copy=False)
        job = session.feed(chunk.tobytes())
        if job is not None:
            batch.append(job)
            if len(batch) >= runner.max_batch:
                flush()
                if progress:
                    _progress(min(offset + hop, total) / total)
    flush()
    if progress:
        _progress(1.0)
        sys.stderr.write("\n")
    labels = len(params.labels)
    stacked = np.stack(probs_out) if probs_out else np.empty((0, labels), np.float32)
    return updates, stacked, session.segments(), padded


def _progress(fraction: float) -> None:
    width = 30
    filled = round(width * fraction)
    sys.stderr.write(f"\r  classifying [{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%}")
    sys.stderr.flush()


def classify_file(
    path: str, config: Config, *, model: LoadedModel | None = None, progress: bool = False
) -> ClassifyReport:
    """Decode ``path`` and classify it with the configured (or given) model."""
    loaded = model or resolve_model(config.model.path)
    eng = config.engine
    runner = InferenceRunner(
        loaded, pick_device(eng.device), half=eng.half_precision, max_batch=eng.max_batch
    )
    params = session_params(config, loaded)
    audio = decode_mono(path, params.model_rate)
    start = time.perf_counter()
    updates, probs, segments, padded = classify_audio(audio, runner, params, progress=progress)
    elapsed = time.perf_counter() - start
    return ClassifyReport(
        source=path,
        duration_s=audio.size / params.model_rate,
        labels=params.labels,
        mean_probs=probs.mean(axis=0),
        windows=updates,
        window_probs=probs,
        segments=segments,
        processing_s=elapsed,
        device=str(runner.device),
        padded=padded,
        model=loaded.source,
    )


def format_report(report: ClassifyReport) -> str:
    """Human-readable report: top genres, then the per-window timeline."""
    lines = [
        f"{report.source}: {report.duration_s:.1f} s, {len(report.windows)} windows, "
        f"{report.processing_s:.2f} s on {report.device} (model: {report.model})",
        "",
        "top genres:",
    ]
    for label, p in report.ranking()[:5]:
        lines.append(f"  {label:<14} {p:6.1%}  {'#' * round(p * 40)}")
    if report.padded:
        lines.append("  (shorter than one window: padded with silence)")
    lines += ["", "timeline:"]
    for seg in report.segments:
        lines.append(
            f"  {seg.start_s:7.1f}s - {seg.end_s:7.1f}s  {seg.genre:<14} {seg.confidence:.2f}"
        )
    lines += ["", "windows:"]
    for w in report.windows:
        top = ", ".join(f"{t['label']} {t['prob']:.2f}" for t in w["top"])
        lines.append(f"  {w['window_start_s']:7.1f}s - {w['stream_time_s']:7.1f}s  {top}")
    return "\n".join(lines)
