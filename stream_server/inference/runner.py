"""Runs a :class:`~stream_server.inference.model.GenreClassifier` on one device, batch by batch.

On CUDA the runner owns a ``torch.cuda.Stream``: windows are staged in a pinned host buffer,
copied to the device without blocking, run (in half precision when asked) and the probabilities
copied back into a pinned buffer before the stream is synchronised. On CPU it is a plain call;
half precision there means bfloat16 for the widest convolutions where the CPU has AMX tiles
(:attr:`InferenceRunner.bfloat16`), float32 elsewhere.
Only one thread may use a runner: the engine thread in the server, the caller in offline use.

:meth:`InferenceRunner.score` also computes the gate's inputs for the same batch
(:mod:`stream_server.core.gate`): each window's level in dBFS (of its newest ``level_samples``) and,
when the model carries a speech detector, its speech probability (on the same device, in float32).

A hybrid whose frames see the whole stream (``context = "stream"``) keeps a stream table
(:class:`~stream_server.inference.musicnn_stream.StreamTokens`): :meth:`InferenceRunner.score`
with the windows' jobs pushes only the audio each stream added since its previous window and
takes the newest tokens; the caller releases (:meth:`~InferenceRunner.release`) a stream once
it ended. Windows without jobs are each a stream of their own. The gate's inputs always come
from the windows themselves.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch

from stream_server.core.windows import WindowJob, WindowScores, stack_windows
from stream_server.inference.banded import amx_available
from stream_server.inference.levels import levels_dbfs
from stream_server.inference.model import LoadedModel
from stream_server.inference.musicnn import use_banded
from stream_server.inference.musicnn_stream import PIECE, StreamTokens
from stream_server.inference.musicnn_tokens import MusicnnTokens
from stream_server.inference.speech import for_inference


@dataclass(frozen=True)
class BatchTiming:
    """Seconds spent on one batch: host staging + device work + copy back."""

    batch_size: int
    seconds: float


#: Most windows per model call on a CPU (:attr:`InferenceRunner.chunk`).
CPU_CHUNK = 16


class InferenceRunner:
    """``run(windows)``: ``(batch, samples)`` float32 numpy -> ``(batch, labels)`` float32 numpy;
    ``score(windows)``: the same with the gate's inputs (:class:`WindowScores`).

    ``level_samples`` is how many of each window's newest samples its level is measured over
    (the hop, so the level describes the audio a window adds; ``0``: the whole window).

    With a stream table, a live stream the engine fell more than a window behind restarts from
    its newest ``catch_up_samples`` samples (``0``: its whole window): its next window holds
    only their tokens (the rest zero, as at a stream's start) and the windows after it fill up
    again, so an overloaded server computes a little per stream instead of a whole window each.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        device: torch.device,
        *,
        half: bool = False,
        max_batch: int = 32,
        level_samples: int = 0,
        catch_up_samples: int = 0,
    ) -> None:
        if catch_up_samples < 0:
            raise ValueError(f"catch_up_samples must be >= 0, got {catch_up_samples}")
        self.catch_up_samples = catch_up_samples
        self.loaded = loaded
        self.device = device
        self.max_batch = max_batch
        #: Windows per model call: on a CPU the front-end's maps of more than 16 windows outgrow
        #: the caches and cost more per window (measured: 10 ms at 8-16, 15 ms at 32, 2 cores).
        self.chunk = max_batch if device.type == "cuda" else min(max_batch, CPU_CHUNK)
        self.level_samples = level_samples
        self.half = half and device.type == "cuda"
        classifier = loaded.classifier.to(device)
        if self.half:
            classifier.model.half()  # features stay float32: STFT and dB need the range
        #: Half precision asked on a CPU with AMX tiles: musicnn's timbral filters as bfloat16
        #: products (:mod:`~stream_server.inference.banded`), the speech detector's convolutions
        #: in bfloat16; the rest (STFT, mel, temporal filters, transformer) in float32.
        self.bfloat16 = half and device.type == "cpu" and amx_available()
        use_banded(classifier, self.bfloat16)
        self.classifier = classifier.eval()
        detector = loaded.speech_detector
        self.speech_detector = (
            None if detector is None else for_inference(detector.to(device), bfloat16=self.bfloat16)
        )
        features = getattr(classifier, "features", None)
        self.table: StreamTokens | None = None
        if isinstance(features, MusicnnTokens) and features.pre.context == "stream":
            self.table = StreamTokens(features, features.tokens, device=device)
        #: Each stream's (end, since) of its newest window in the table.
        self._ends: dict[str, tuple[int, int]] = {}
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

    @property
    def precision(self) -> str:
        """``"float16"`` (the model on CUDA, features in float32), ``"bfloat16"`` (the widest
        convolutions on a CPU with AMX, see :attr:`bfloat16`) or ``"float32"``."""
        if self.half:
            return "float16"
        return "bfloat16" if self.bfloat16 else "float32"

    def run(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of windows (any batch size; split by :attr:`chunk`)."""
        return self.score(windows).probs

    def score(self, windows: np.ndarray, jobs: Sequence[WindowJob] | None = None) -> WindowScores:
        """Probabilities, levels and speech probabilities for ``(batch, samples)`` windows (any
        batch size; split by :attr:`chunk`). ``jobs`` (one per window, each of another stream)
        name their streams and where the windows end, for a model that keeps state per stream;
        it sees each stream's windows in order."""
        if windows.ndim != 2:
            raise ValueError(f"windows must be (batch, samples), got shape {windows.shape}")
        if jobs is not None and len(jobs) != len(windows):
            raise ValueError(f"{len(jobs)} jobs for {len(windows)} windows")
        out = [
            self._run_chunk(
                windows[i : i + self.chunk],
                None if jobs is None else jobs[i : i + self.chunk],
            )
            for i in range(0, len(windows), self.chunk)
        ]
        if not out:
            return WindowScores.empty(len(self.labels))
        return WindowScores.concat(out)

    def score_jobs(self, jobs: Sequence[WindowJob]) -> WindowScores:
        """:meth:`score` of the jobs' windows, with the jobs."""
        if not jobs:
            return WindowScores.empty(len(self.labels))
        return self.score(stack_windows(jobs), jobs)

    def timed_score(
        self, windows: np.ndarray, jobs: Sequence[WindowJob] | None = None
    ) -> tuple[WindowScores, BatchTiming]:
        """:meth:`score` and the seconds it took."""
        start = time.perf_counter()
        scores = self.score(windows, jobs)
        return scores, BatchTiming(len(windows), time.perf_counter() - start)

    def score_streams(
        self, audio: Sequence[np.ndarray], ends: Sequence[Sequence[int]], window: int
    ) -> list[WindowScores]:
        """Score whole recordings as streams: ``audio[i]`` ``(samples,)`` at the model's rate,
        its windows of ``window`` samples ending at ``ends[i]`` (increasing, each at least
        ``window``). The windows of all recordings go in turns (the first window of each, then
        the second, ...), so batches hold many streams. Returns each recording's scores."""
        keys = [f"recording-{uuid.uuid4().hex}" for _ in audio]
        turns = max((len(e) for e in ends), default=0)
        jobs = [
            WindowJob(keys[i], audio[i][e[k] - window : e[k]], e[k], 0.0)
            for k in range(turns)
            for i, e in enumerate(ends)
            if k < len(e)
        ]
        try:
            scores = WindowScores.concat(
                [
                    self.score_jobs(jobs[i : i + self.max_batch])
                    for i in range(0, len(jobs), self.max_batch)
                ]
                or [WindowScores.empty(len(self.labels))]
            )
        finally:
            for key in keys:
                self.release(key)
        rows: dict[str, list[int]] = {key: [] for key in keys}
        for row, job in enumerate(jobs):
            rows[job.stream_id].append(row)
        return [
            scores[rows[key]] if rows[key] else WindowScores.empty(len(self.labels)) for key in keys
        ]

    def warm_up(self, window: int, hop: int) -> None:
        """Score noise before serving: one stream's three ``window``-sample windows ``hop``
        samples apart, then a batch of every size up to :attr:`chunk`. The first calls' costs
        (kernels compiled for each shape, buffers the allocator grows into) are paid here, at
        load, and not by the first streams' windows; nothing is kept.

        A stream table's batches are warmed as a live stream's hop meets them: one
        :data:`~stream_server.inference.musicnn_stream.PIECE` of new audio per stream.
        """
        rng = np.random.default_rng(0)
        ends = [window, window + hop, window + 2 * hop]
        audio = (0.1 * rng.standard_normal(ends[-1])).astype(np.float32)
        self.score_streams([audio], [ends], window)
        for count in range(1, self.chunk + 1):
            noise = (0.1 * rng.standard_normal((count, window))).astype(np.float32)
            if self.table is None:
                self.score(noise)
            else:
                self._warm_table(noise)

    @torch.inference_mode()
    def _warm_table(self, noise: np.ndarray) -> None:
        """One :data:`PIECE` of ``noise`` ``(batch, samples)`` pushed as new streams' audio,
        their windows scored and the streams forgotten (on the runner's CUDA stream, if any)."""
        assert self.table is not None
        keys = [f"warm-up-{uuid.uuid4().hex}" for _ in range(len(noise))]
        on_stream = (
            contextlib.nullcontext() if self.stream is None else torch.cuda.stream(self.stream)
        )
        with on_stream:
            try:
                self.table.push(keys, list(noise[:, :PIECE]))
                self.classifier.from_features(self.table.window(keys))
                self._speech(torch.from_numpy(noise).to(self.device))
            finally:
                for key in keys:
                    self.table.release(key)
        if self.stream is not None:
            self.stream.synchronize()

    def release(self, stream_id: str) -> None:
        """Forget a stream's state (it ended); no error if there is none."""
        self._ends.pop(stream_id, None)
        if self.table is not None:
            self.table.release(stream_id)

    @torch.inference_mode()
    def warm(self, jobs: Sequence[WindowJob]) -> None:
        """Take in warm-up jobs' audio (:attr:`WindowJob.warm`) ahead of the streams' windows,
        :attr:`chunk` streams per call; nothing is scored. A no-op for a model without state per
        stream."""
        if self.table is not None:
            for start in range(0, len(jobs), self.chunk):
                self._stream_inputs(jobs[start : start + self.chunk], inputs=False)

    @overload
    def _stream_inputs(self, jobs: Sequence[WindowJob]) -> torch.Tensor: ...

    @overload
    def _stream_inputs(self, jobs: Sequence[WindowJob], *, inputs: bool) -> torch.Tensor | None: ...

    def _stream_inputs(
        self, jobs: Sequence[WindowJob], *, inputs: bool = True
    ) -> torch.Tensor | None:
        """Push each job's new audio into the stream table; the model input of its window.

        New audio is what the window holds past the stream's previous window. A stream not seen
        before, one whose ``since`` moved (a gap) or one that missed more than a window (its
        skipped windows' audio is gone) starts afresh with its whole window. Several windows of
        one stream (an offline stream's batch) go in rounds, in order.
        """
        assert self.table is not None
        rounds: list[list[int]] = []
        seen: dict[str, int] = {}
        for i, job in enumerate(jobs):
            turn = seen[job.stream_id] = seen.get(job.stream_id, -1) + 1
            if turn == len(rounds):
                rounds.append([])
            rounds[turn].append(i)
        parts: list[torch.Tensor] = []
        order: list[int] = []
        for members in rounds:
            chunks = [self._new_audio(jobs[i]) for i in members]
            keys = [jobs[i].stream_id for i in members]
            try:
                self.table.push(keys, chunks)
                if inputs:
                    parts.append(self.table.window(keys))
            except BaseException:
                for key in keys:  # half-pushed state: each starts afresh with its next window
                    self._ends.pop(key, None)
                raise
            order.extend(members)
        if not inputs:
            return None
        out = torch.cat(parts)
        if len(parts) > 1:
            out = out[torch.from_numpy(np.argsort(order)).to(out.device)]
        return out

    def _new_audio(self, job: WindowJob) -> np.ndarray:
        """The samples of ``job``'s window the table has not seen. A new stream, or one after a
        gap, starts afresh with its whole window; one more than a window behind starts afresh
        with its newest :attr:`catch_up_samples` (all its window when 0)."""
        assert self.table is not None
        key, length = job.stream_id, len(job.window)
        last = self._ends.get(key)
        self._ends[key] = (job.end_sample, job.since)
        unseen = job.end_sample - last[0] if last is not None and last[1] == job.since else None
        if unseen is not None and 0 <= unseen <= length:
            new = unseen  # it goes on
        else:
            self.table.restart(key)
            behind = unseen is not None and unseen > length and self.catch_up_samples > 0
            new = min(length, self.catch_up_samples) if behind else length
        return np.asarray(job.window[length - new :], dtype=np.float32)

    def _probs(self, batch: torch.Tensor, jobs: Sequence[WindowJob] | None) -> torch.Tensor:
        """``(n, labels)`` probabilities on ``batch``'s device."""
        if jobs is None or self.table is None:
            probs: torch.Tensor = self.classifier(batch)
            return probs
        return self.classifier.from_features(self._stream_inputs(jobs))

    @torch.inference_mode()
    def _run_chunk(
        self, windows: np.ndarray, jobs: Sequence[WindowJob] | None = None
    ) -> WindowScores:
        batch = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        levels = levels_dbfs(batch, self.level_samples).numpy()
        n, samples = batch.shape
        if self.stream is None:
            probs: np.ndarray = self._probs(batch, jobs).numpy().copy()
            return _finite(WindowScores(probs, levels, self._speech(batch).cpu().numpy()))
        if self._host_in is None or self._host_in.shape[1] != samples:
            self._host_in = torch.empty((self.max_batch, samples), pin_memory=True)
        host_in = self._host_in[:n]
        host_in.copy_(batch)
        assert self._host_out is not None
        with torch.cuda.stream(self.stream):
            gpu_in = host_in.to(self.device, non_blocking=True)
            gpu_probs = self._probs(gpu_in, jobs)
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
