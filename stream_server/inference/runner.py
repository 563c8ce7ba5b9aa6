"""Runs a :class:`~stream_server.inference.model.GenreClassifier` on one device, batch by batch.

On CUDA the runner owns a ``torch.cuda.Stream``: windows are staged in a pinned host buffer,
copied to the device without blocking, run (in half precision when asked) and the probabilities
copied back into a pinned buffer before the stream is synchronised. On CPU it is a plain call.
Only one thread may use a runner: the engine thread in the server, the caller in offline use.

:meth:`InferenceRunner.score` also computes the gate's inputs for the same batch
(:mod:`stream_server.core.gate`): each window's level in dBFS (of its newest ``level_samples``) and,
when the model carries a speech detector, its speech probability (on the same device, in float32).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stream_server.inference.levels import levels_dbfs
from stream_server.inference.model import LoadedModel


@dataclass(frozen=True)
class BatchTiming:
    """Seconds spent on one batch: host staging + device work + copy back."""

    batch_size: int
    seconds: float


@dataclass(frozen=True)
class WindowScores:
    """What the runner computed for ``n`` windows.

    Attributes:
        probs: ``(n, labels)`` float32 genre probabilities (each row sums to 1).
        level_dbfs: ``(n,)`` float32 level of each window's newest ``level_samples``, in dBFS.
        speech: ``(n,)`` float32 speech probabilities ``0..1``; zeros without a speech detector.
    """

    probs: np.ndarray
    level_dbfs: np.ndarray
    speech: np.ndarray

    def __len__(self) -> int:
        return len(self.probs)

    def __getitem__(self, index: slice) -> WindowScores:
        """The scores of a slice of the windows."""
        return WindowScores(self.probs[index], self.level_dbfs[index], self.speech[index])

    @staticmethod
    def empty(labels: int) -> WindowScores:
        """Scores of no window, for ``labels`` labels."""
        none = np.empty(0, dtype=np.float32)
        return WindowScores(np.empty((0, labels), dtype=np.float32), none, none.copy())

    @staticmethod
    def concat(parts: Sequence[WindowScores]) -> WindowScores:
        """The parts' windows one after another (at least one part)."""
        return WindowScores(
            np.concatenate([p.probs for p in parts]),
            np.concatenate([p.level_dbfs for p in parts]),
            np.concatenate([p.speech for p in parts]),
        )


class InferenceRunner:
    """``run(windows)``: ``(batch, samples)`` float32 numpy -> ``(batch, labels)`` float32 numpy;
    ``score(windows)``: the same with the gate's inputs (:class:`WindowScores`).

    ``level_samples`` is how many of each window's newest samples its level is measured over
    (the hop, so the level describes the audio a window adds; ``0``: the whole window).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        device: torch.device,
        *,
        half: bool = False,
        max_batch: int = 32,
        level_samples: int = 0,
    ) -> None:
        self.loaded = loaded
        self.device = device
        self.max_batch = max_batch
        self.level_samples = level_samples
        self.half = half and device.type == "cuda"
        classifier = loaded.classifier.to(device)
        if self.half:
            classifier.model.half()  # features stay float32: STFT and dB need the range
        self.classifier = classifier.eval()
        detector = loaded.speech_detector
        self.speech_detector = None if detector is None else detector.to(device).eval()
        self.stream: torch.cuda.Stream | None = None
        self._host_in: torch.Tensor | None = None
        self._host_out: torch.Tensor | None = None
        if device.type == "cuda":
            self.stream = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
            # The weights were moved (and cast) on the default stream: order ours after it.
            self.stream.wait_stream(torch.cuda.current_stream(device))
            self._host_out = torch.empty((max_batch, len(loaded.labels)), pin_memory=True)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.loaded.labels

    def run(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of windows (any batch size; split by ``max_batch``)."""
        return self.score(windows).probs

    def score(self, windows: np.ndarray) -> WindowScores:
        """Probabilities, levels and speech probabilities for ``(batch, samples)`` windows (any
        batch size; split by ``max_batch``)."""
        if windows.ndim != 2:
            raise ValueError(f"windows must be (batch, samples), got shape {windows.shape}")
        out = [
            self._run_chunk(windows[i : i + self.max_batch])
            for i in range(0, len(windows), self.max_batch)
        ]
        if not out:
            return WindowScores.empty(len(self.labels))
        return WindowScores.concat(out)

    def timed_score(self, windows: np.ndarray) -> tuple[WindowScores, BatchTiming]:
        """:meth:`score` and the seconds it took."""
        start = time.perf_counter()
        scores = self.score(windows)
        return scores, BatchTiming(len(windows), time.perf_counter() - start)

    @torch.inference_mode()
    def _run_chunk(self, windows: np.ndarray) -> WindowScores:
        batch = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        levels = levels_dbfs(batch, self.level_samples).numpy()
        n, samples = batch.shape
        if self.stream is None:
            probs: np.ndarray = self.classifier(batch).numpy().copy()
            return _finite(WindowScores(probs, levels, self._speech(batch).cpu().numpy()))
        if self._host_in is None or self._host_in.shape[1] != samples:
            self._host_in = torch.empty((self.max_batch, samples), pin_memory=True)
        host_in = self._host_in[:n]
        host_in.copy_(batch)
        assert self._host_out is not None
        with torch.cuda.stream(self.stream):
            gpu_in = host_in.to(self.device, non_blocking=True)
            gpu_probs = self.classifier(gpu_in)
            gpu_speech = self._speech(gpu_in)
            host_out = self._host_out[:n]
            host_out.copy_(gpu_probs, non_blocking=True)
            speech_out = gpu_speech.to("cpu", non_blocking=True)
        self.stream.synchronize()
        return _finite(WindowScores(host_out.numpy().copy(), levels, speech_out.numpy().copy()))

    def _speech(self, batch: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` float32 speech probabilities on ``batch``'s device; zeros without a
        detector."""
        if self.speech_detector is None:
            return torch.zeros(batch.shape[0], dtype=torch.float32, device=batch.device)
        speech: torch.Tensor = self.speech_detector(batch)
        if speech.shape != (batch.shape[0],):
            raise ValueError(
                f"the speech detector must return ({batch.shape[0]},) probabilities, "
                f"got shape {tuple(speech.shape)}"
            )
        return speech.float().clamp(0.0, 1.0)


def _finite(scores: WindowScores) -> WindowScores:
    """``scores`` with any window whose probabilities are not finite (a model overflowing on
    extreme input) made uniform, and non-finite speech probabilities made 0, so one bad window
    never stops a stream."""
    bad = ~np.isfinite(scores.probs).all(axis=1)
    if bad.any():
        scores.probs[bad] = 1.0 / scores.probs.shape[1]
    np.nan_to_num(scores.speech, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return scores
