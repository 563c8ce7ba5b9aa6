"""Runs a :class:`~stream_server.model.GenreClassifier` on one device, batch by batch.

On CUDA the runner owns a ``torch.cuda.Stream``: windows are staged in a pinned host buffer,
copied to the device without blocking, run (in half precision when asked) and the probabilities
copied back into a pinned buffer before the stream is synchronised. On CPU it is a plain call.
Only one thread may use a runner: the engine thread in the server, the caller in offline use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from stream_server.model import LoadedModel


@dataclass(frozen=True)
class BatchTiming:
    """Seconds spent on one batch: host staging + device work + copy back."""

    batch_size: int
    seconds: float


class InferenceRunner:
    """``run(windows)``: ``(batch, samples)`` float32 numpy -> ``(batch, labels)`` float32 numpy."""

    def __init__(
        self, loaded: LoadedModel, device: torch.device, *, half: bool = False, max_batch: int = 32
    ) -> None:
        self.loaded = loaded
        self.device = device
        self.max_batch = max_batch
        self.half = half and device.type == "cuda"
        classifier = loaded.classifier.to(device)
        if self.half:
            classifier.model.half()  # features stay float32: STFT and dB need the range
        self.classifier = classifier.eval()
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
        if windows.ndim != 2:
            raise ValueError(f"windows must be (batch, samples), got shape {windows.shape}")
        out = [
            self._run_chunk(windows[i : i + self.max_batch])
            for i in range(0, len(windows), self.max_batch)
        ]
        if not out:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        return np.concatenate(out)

    def timed_run(self, windows: np.ndarray) -> tuple[np.ndarray, BatchTiming]:
        start = time.perf_counter()
        probs = self.run(windows)
        return probs, BatchTiming(len(windows), time.perf_counter() - start)

    @torch.inference_mode()
    def _run_chunk(self, windows: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        if self.stream is None:
            cpu_out: np.ndarray = self.classifier(batch).numpy().copy()
            return cpu_out
        n, samples = batch.shape
        if self._host_in is None or self._host_in.shape[1] != samples:
            self._host_in = torch.empty((self.max_batch, samples), pin_memory=True)
        host_in = self._host_in[:n]
        host_in.copy_(batch)
        assert self._host_out is not None
        with torch.cuda.stream(self.stream):
            gpu_in = host_in.to(self.device, non_blocking=True)
            probs = self.classifier(gpu_in)
            host_out = self._host_out[:n]
            host_out.copy_(probs, non_blocking=True)
        self.stream.synchronize()
        out: np.ndarray = host_out.numpy().copy()
        return out
