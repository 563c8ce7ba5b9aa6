"""Evaluating a genre model on a folder-per-genre dataset.

Each clip is cut into windows of the model's length (``hop_seconds`` apart, the last one flush
with the clip's end), the clip goes through the model as a live stream would
(:meth:`~stream_server.inference.runner.InferenceRunner.score_streams`), and

* window accuracy counts every window's argmax,
* clip accuracy counts each clip's argmax of the *mean* window probability,
* precision, recall and F1 per genre, their macro mean and the confusion matrix are clip-level,
* clip accuracy per recording source, where the dataset's manifest names the sources
  (:mod:`stream_server.training.provenance`), so a model that learnt one collection's sound shows
  it.

Folders whose name is not one of the model's labels are reported as skipped, and clips that cannot
be decoded as unreadable; neither is scored.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from stream_server.errors import DatasetError
from stream_server.inference.model import LoadedModel
from stream_server.inference.runner import InferenceRunner
from stream_server.training.dataset import Clip, load_audio, window_starts
from stream_server.training.provenance import provenance_of, read_provenance

IntMatrix = npt.NDArray[np.int64]


@dataclass(frozen=True)
class GenreFigures:
    """Clip-level figures for one genre; ``clips`` is its number of true clips (support)."""

    precision: float
    recall: float
    f1: float
    clips: int


def per_genre_figures(confusion: IntMatrix, labels: Sequence[str]) -> dict[str, GenreFigures]:
    """Precision, recall and F1 per label from a ``(labels, labels)`` confusion matrix.

    Rows are true labels, columns predictions. A ratio with a zero denominator is 0.
    """
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    actual = confusion.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        label: GenreFigures(float(precision[i]), float(recall[i]), float(f1[i]), int(actual[i]))
        for i, label in enumerate(labels)
    }


def confusion_matrix(true: Sequence[int], predicted: Sequence[int], n: int) -> IntMatrix:
    """``(n, n)`` counts; row = true label index, column = predicted label index."""
    out = np.zeros((n, n), dtype=np.int64)
    np.add.at(out, (np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return out


@dataclass
class EvalReport:
    """Figures of one evaluation. Only genres with at least one clip enter the macro-F1."""

    model: str
    labels: tuple[str, ...]
    clip_accuracy: float
    window_accuracy: float
    macro_f1: float
    per_genre: dict[str, GenreFigures]
    confusion: IntMatrix
    clips: int
    windows: int
    seconds: float
    skipped: dict[str, int] = field(default_factory=dict)
    clip_predictions: list[tuple[str, str, str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    per_source: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: What the model computed in (the runner's ``precision``: float32, bfloat16, float16).
    arithmetic: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "clip_accuracy": round(self.clip_accuracy, 4),
            "window_accuracy": round(self.window_accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "clips": self.clips,
            "windows": self.windows,
            "seconds": round(self.seconds, 2),
            "arithmetic": self.arithmetic,
            "per_genre": {
                label: {
                    "precision": round(f.precision, 4),
                    "recall": round(f.recall, 4),
                    "f1": round(f.f1, 4),
                    "clips": f.clips,
                }
                for label, f in self.per_genre.items()
            },
            "per_source": {
                source: {"clip_accuracy": round(right / total, 4), "clips": total}
                for source, (right, total) in self.per_source.items()
            },
            "confusion": {"labels": list(self.labels), "matrix": self.confusion.tolist()},
            "skipped_genres": self.skipped,
            "unreadable_clips": self.unreadable,
            "clip_predictions": [
                {"clip": c, "true": t, "predicted": p} for c, t, p in self.clip_predictions
            ],
        }


def evaluate(
    model: LoadedModel,
    root: str | Path,
    clips: Sequence[Clip],
    *,
    device: str = "cpu",
    hop_seconds: float = 2.5,
    batch_size: int = 32,
    half: bool = False,
    cache_dir: str | None = None,
    progress: bool = False,
) -> EvalReport:
    """Score ``model`` on ``clips`` (paths relative to ``root``); see the module docstring.
    ``half`` as the server's ``engine.half_precision``."""
    started = time.perf_counter()
    index = {label: i for i, label in enumerate(model.labels)}
    skipped: dict[str, int] = {}
    scored: list[Clip] = []
    for clip in clips:
        if clip.label in index:
            scored.append(clip)
        else:
            skipped[clip.label] = skipped.get(clip.label, 0) + 1
    if not scored:
        raise DatasetError(
            f"none of the genre folders match the model's labels ({', '.join(model.labels)})"
        )
    pre = model.preprocessing
    window = pre.window_samples
    hop = max(1, round(hop_seconds * pre.sample_rate))
    runner = InferenceRunner(model, torch.device(device), half=half, max_batch=batch_size)
    true_clip: list[int] = []
    pred_clip: list[int] = []
    window_hits = 0
    windows = 0
    predictions: list[tuple[str, str, str]] = []
    unreadable: list[str] = []
    for n, clip in enumerate(scored):
        try:
            _, audio = load_audio(root, [clip], pre.sample_rate, cache_dir)
        except DatasetError:
            unreadable.append(clip.path)
            continue
        wave = audio[0]
        if wave.size < window:
            wave = np.pad(wave, (0, window - wave.size))
        ends = [start + window for start in window_starts(wave.size, window, hop)]
        p = torch.from_numpy(runner.score_streams([wave], [ends], window)[0].probs)
        truth = index[clip.label]
        window_hits += int((p.argmax(1) == truth).sum())
        windows += p.shape[0]
        guess = int(p.mean(0).argmax())
        true_clip.append(truth)
        pred_clip.append(guess)
        predictions.append((clip.path, clip.label, model.labels[guess]))
        if progress:
            sys.stderr.write(f"\revaluating: {n + 1}/{len(scored)} clips")
            sys.stderr.flush()
    if progress:
        sys.stderr.write("\n")
    if not true_clip:
        raise DatasetError(f"none of the {len(scored)} clips under {root} could be decoded")
    confusion = confusion_matrix(true_clip, pred_clip, len(model.labels))
    figures = per_genre_figures(confusion, model.labels)
    sources = provenance_of((c for c, _, _ in predictions), read_provenance(root))
    present = [f.f1 for f in figures.values() if f.clips > 0]
    return EvalReport(
        model=model.source,
        labels=model.labels,
        clip_accuracy=float(np.mean(np.array(true_clip) == np.array(pred_clip))),
        window_accuracy=window_hits / windows,
        macro_f1=float(np.mean(present)),
        per_genre=figures,
        confusion=confusion,
        clips=len(true_clip),
        windows=windows,
        seconds=time.perf_counter() - started,
        skipped=skipped,
        clip_predictions=predictions,
        unreadable=unreadable,
        per_source=accuracy_by([p.source for p in sources], [t == g for _, t, g in predictions]),
        arithmetic=runner.precision,
    )


def accuracy_by(keys: Sequence[str], right: Sequence[bool]) -> dict[str, tuple[int, int]]:
    """``key -> (right, total)`` over paired ``keys`` and outcomes, keys sorted."""
    out: dict[str, tuple[int, int]] = {}
    for key, ok in zip(keys, right, strict=True):
        hits, total = out.get(key, (0, 0))
        out[key] = (hits + int(ok), total + 1)
    return dict(sorted(out.items()))


def format_report(report: EvalReport) -> str:
    """A human-readable summary: headline figures, a per-genre table and the confusion matrix."""
    lines = [
        f"model: {report.model} ({report.arithmetic})",
        f"clips: {report.clips}, windows: {report.windows}",
        f"clip accuracy:   {report.clip_accuracy:.3f}",
        f"window accuracy: {report.window_accuracy:.3f}",
        f"macro F1:        {report.macro_f1:.3f}",
        "",
        f"{'genre':<14}{'clips':>6}{'precision':>11}{'recall':>8}{'F1':>7}",
    ]
    for label, f in report.per_genre.items():
        lines.append(f"{label:<14}{f.clips:>6}{f.precision:>11.3f}{f.recall:>8.3f}{f.f1:>7.3f}")
    if set(report.per_source) - {"unknown"}:
        lines += ["", f"{'source':<14}{'clips':>6}{'clip accuracy':>15}"]
        for source, (right, total) in report.per_source.items():
            lines.append(f"{source:<14}{total:>6}{right / total:>15.3f}")
    width = max(5, *(len(label) for label in report.labels))
    lines += ["", "confusion (rows: true, columns: predicted)"]
    lines.append(" " * (width + 1) + " ".join(f"{label[:5]:>5}" for label in report.labels))
    for label, row in zip(report.labels, report.confusion, strict=True):
        lines.append(f"{label:>{width}} " + " ".join(f"{int(v):>5}" for v in row))
    if report.skipped:
        names = ", ".join(f"{g} ({n})" for g, n in report.skipped.items())
        lines += ["", f"skipped genres the model does not know: {names}"]
    if report.unreadable:
        lines += ["", f"clips that could not be decoded (not scored): {len(report.unreadable)}"]
    return "\n".join(lines)


def save_confusion_png(report: EvalReport, path: str | Path) -> Path:
    """Draw the clip-level confusion matrix (counts, row-normalised colour) to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = report.confusion
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)
    n = len(report.labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 1.0 + 0.55 * n), dpi=110)
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), report.labels, rotation=45, ha="right")
    ax.set_yticks(range(n), report.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"clip accuracy {report.clip_accuracy:.3f} ({report.clips} clips)")
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(int(m[i, j])), ha="center", va="center", color=colour)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def save_report(
    report: EvalReport, directory: str | Path, extra: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``evaluation.json`` (the report's figures, plus ``extra``'s keys beside them, e.g.
    ``mixes``) and ``confusion.png`` into ``directory``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    js = folder / "evaluation.json"
    data = {**report.to_json(), **(extra or {})}
    js.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return js, save_confusion_png(report, folder / "confusion.png")
