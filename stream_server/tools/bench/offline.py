"""The model alone, in the bench's own process: how many windows per second the server's
inference runner computes in full batches of streams one hop on (the ceiling of the server), and
the naive pipeline for comparison (one window per call, float32, every window's features computed
from scratch)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import torch

from stream_server.config import Config
from stream_server.core.windows import WindowJob
from stream_server.inference.device import pick_device
from stream_server.inference.facts import session_params
from stream_server.inference.model import LoadedModel
from stream_server.inference.musicnn import use_banded
from stream_server.inference.runner import InferenceRunner
from stream_server.tools.bench.audio import Pcm, looped
from stream_server.tools.bench.figures import Throughput

Windows = npt.NDArray[np.float32]


def sample_windows(clips: Sequence[Pcm], window_samples: int, count: int, seed: int = 0) -> Windows:
    """``(count, window_samples)`` float32 windows of the clips in ``[-1, 1]``: each from a
    random clip at a random offset (looped)."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, window_samples), dtype=np.float32)
    for i in range(count):
        clip = clips[int(rng.integers(len(clips)))]
        out[i] = looped(clip, int(rng.integers(len(clip))), window_samples) / 32768.0
    return out


def _timed(step: Callable[[int], int], min_s: float, min_steps: int) -> Throughput:
    """Run ``step(i)`` (it returns the windows it scored) once untimed, then until ``min_s``
    seconds and ``min_steps`` steps have passed."""
    step(0)
    windows = steps = 0
    start = time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < min_s:
        windows += step(steps + 1)
        steps += 1
    return Throughput(windows, time.perf_counter() - start)


def time_offline(
    model: LoadedModel, config: Config, clips: Sequence[Pcm], min_s: float
) -> Throughput:
    """Windows per second of an :class:`InferenceRunner` as the server builds it (device,
    precision, ``engine.max_batch``, levels over a hop) in its steady state: full batches of
    ``engine.max_batch`` streams of the clips, each batch every stream's next window (one hop
    later), so a model that keeps state per stream does the work a live server does; for at least
    ``min_s`` seconds and two batches."""
    throughput = _time_runner(model, config, clips, min_s)
    _release(config)
    return throughput


def _time_runner(
    model: LoadedModel, config: Config, clips: Sequence[Pcm], min_s: float
) -> Throughput:
    batch = config.engine.max_batch
    params = session_params(config, model)
    window, hop = params.window_samples, params.hop_samples
    runner = InferenceRunner(
        model,
        pick_device(config.engine.device),
        half=config.engine.half_precision,
        max_batch=batch,
        level_samples=hop,
    )
    rng = np.random.default_rng(0)
    sources = [clips[b % len(clips)] for b in range(batch)]
    offsets = [int(rng.integers(len(clip))) for clip in sources]

    def step(i: int) -> int:
        end = window + i * hop
        windows = np.stack(
            [
                looped(clip, offset + end - window, window).astype(np.float32) / 32768.0
                for clip, offset in zip(sources, offsets, strict=True)
            ]
        )
        jobs = [WindowJob(f"bench-{b}", windows[b], end, 0.0) for b in range(batch)]
        runner.score(windows, jobs)
        return batch

    return _timed(step, min_s, 2)


def time_seed(model: LoadedModel, config: Config, windows: Windows, min_s: float) -> Throughput:
    """Windows per second of the naive pipeline: a float32 copy of the model's classifier on the
    configured device, one window per call (features from scratch, probabilities copied back
    each time), for at least ``min_s`` seconds and three windows."""
    throughput = _time_seed(model, config, windows, min_s)
    _release(config)
    return throughput


def _time_seed(model: LoadedModel, config: Config, windows: Windows, min_s: float) -> Throughput:
    device = pick_device(config.engine.device)
    classifier = copy.deepcopy(model.classifier).to(device).float().eval()
    use_banded(classifier, False)  # float32 convolutions, whatever a runner set before

    @torch.inference_mode()
    def step(i: int) -> int:
        wave = torch.from_numpy(windows[i % len(windows)][None, :]).to(device)
        classifier(wave).cpu()
        return 1

    return _timed(step, min_s, 3)


def _release(config: Config) -> None:
    """Give cached device memory back (the server shares the device)."""
    if torch.cuda.is_available() and pick_device(config.engine.device).type == "cuda":
        torch.cuda.empty_cache()
