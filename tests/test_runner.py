"""Tests for stream_server.inference.runner: device choice and batched inference on CPU and CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stream_server.core.gate import LEVEL_FLOOR_DBFS
from stream_server.errors import ConfigError
from stream_server.inference.device import pick_device
from stream_server.inference.levels import levels_dbfs
from stream_server.inference.loading import with_speech_detector
from stream_server.inference.model import LoadedModel, load_model
from stream_server.inference.runner import BatchTiming, InferenceRunner
from tests.helpers.audio import music
from tests.helpers.constants import LABELS
from tests.helpers.devices import DEVICES, cuda_param
from tests.helpers.speech import ToneSpeech, marker


def make_windows(model: LoadedModel, count: int) -> np.ndarray:
    """``(count, window_samples)`` float32: different music in each window."""
    pre = model.preprocessing
    return np.stack(
        [
            music(pre.window_seconds, rate=pre.sample_rate, channels=1, seed=s)[:, 0]
            for s in range(count)
        ]
    )


@pytest.fixture
def fresh_model(tiny_checkpoint: Path) -> LoadedModel:
    """A private copy of the tiny model, for tests that change its device or precision."""
    return load_model(str(tiny_checkpoint))


@pytest.mark.parametrize("device", DEVICES)
def test_batch_split_equals_single_windows(fresh_model: LoadedModel, device: str) -> None:
    runner = InferenceRunner(fresh_model, torch.device(device), half=False, max_batch=4)
    windows = make_windows(fresh_model, 6)
    probs = runner.run(windows)
    assert probs.shape == (6, len(LABELS))
    assert probs.dtype == np.float32
    assert isinstance(probs, np.ndarray)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()
    singles = np.concatenate([runner.run(windows[i : i + 1]) for i in range(6)])
    np.testing.assert_allclose(probs, singles, atol=1e-5, rtol=0)
    # different windows give different outputs: the rows are not a broadcast of one result
    assert not np.allclose(probs[0], probs[1], atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_matches_classifier_directly(fresh_model: LoadedModel, device: str) -> None:
    windows = make_windows(fresh_model, 5)
    with torch.inference_mode():
        expected = fresh_model.classifier(torch.from_numpy(windows)).numpy()
    runner = InferenceRunner(fresh_model, torch.device(device), max_batch=2)
    np.testing.assert_allclose(runner.run(windows), expected, atol=1e-5, rtol=0)
    # a second call with a different batch size reuses the staging buffers correctly
    np.testing.assert_allclose(runner.run(windows[:3]), expected[:3], atol=1e-5, rtol=0)
    np.testing.assert_allclose(runner.run(windows[::-1].copy()), expected[::-1], atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_float64_and_non_contiguous_input(fresh_model: LoadedModel, device: str) -> None:
    runner = InferenceRunner(fresh_model, torch.device(device), max_batch=4)
    windows = make_windows(fresh_model, 3)
    expected = runner.run(windows)
    np.testing.assert_allclose(runner.run(windows.astype(np.float64)), expected, atol=1e-5)
    doubled = np.repeat(windows, 2, axis=0)[::2]  # a strided view
    assert not doubled.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(runner.run(doubled), expected, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(fresh_model: LoadedModel, device: str) -> None:
    runner = InferenceRunner(fresh_model, torch.device(device), max_batch=4)
    samples = fresh_model.preprocessing.window_samples
    probs = runner.run(np.zeros((0, samples), dtype=np.float32))
    assert probs.shape == (0, len(LABELS))
    assert probs.dtype == np.float32


@pytest.mark.parametrize("shape", [(100,), (1, 2, 100), ()])
def test_wrong_ndim(tiny_model: LoadedModel, shape: tuple[int, ...]) -> None:
    runner = InferenceRunner(tiny_model, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        runner.run(np.zeros(shape, dtype=np.float32))


def test_runner_properties(tiny_model: LoadedModel) -> None:
    runner = InferenceRunner(tiny_model, torch.device("cpu"), half=True, max_batch=7)
    assert runner.labels == LABELS
    assert runner.max_batch == 7
    assert runner.half is False  # half precision is for CUDA only
    assert runner.stream is None
    assert runner.device == torch.device("cpu")
    assert next(runner.classifier.model.parameters()).dtype == torch.float32


def test_timed_score(tiny_model: LoadedModel) -> None:
    runner = InferenceRunner(tiny_model, torch.device("cpu"), max_batch=2)
    windows = make_windows(tiny_model, 3)
    scores, timing = runner.timed_score(windows)
    assert isinstance(timing, BatchTiming)
    assert timing.batch_size == 3
    assert timing.seconds > 0
    np.testing.assert_allclose(scores.probs, runner.run(windows), atol=1e-6)
    _, empty = runner.timed_score(np.zeros((0, windows.shape[1]), dtype=np.float32))
    assert empty.batch_size == 0


# -- pick_device -------------------------------------------------------------------------------


def test_pick_device_auto() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected


def test_pick_device_named() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError):
        pick_device("no-such-device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_pick_device_cuda_without_cuda(name: str) -> None:
    with pytest.raises(ConfigError, match=r"engine\.device") as info:
        pick_device(name)
    assert info.value.key == "engine.device"
    assert "no CUDA device" in str(info.value)


# -- CUDA only ---------------------------------------------------------------------------------


@pytest.mark.parametrize("device", [cuda_param()])
def test_cuda_half_close_to_float32(fresh_model: LoadedModel, device: str) -> None:
    windows = make_windows(fresh_model, 6)
    full = InferenceRunner(fresh_model, torch.device(device), half=False, max_batch=4).run(windows)
    half_model = load_model(fresh_model.source)
    runner = InferenceRunner(half_model, torch.device(device), half=True, max_batch=4)
    assert runner.half is True
    assert isinstance(runner.stream, torch.cuda.Stream)
    assert next(runner.classifier.model.parameters()).dtype == torch.float16
    assert runner.classifier.features.window.dtype == torch.float32  # features stay float32
    probs = runner.run(windows)
    assert probs.dtype == np.float32
    assert probs.shape == (6, len(LABELS))
    np.testing.assert_allclose(probs, full, atol=1e-2, rtol=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("device", [cuda_param()])
def test_cuda_runner_stream(fresh_model: LoadedModel, device: str) -> None:
    runner = InferenceRunner(fresh_model, torch.device(device), half=False, max_batch=4)
    assert isinstance(runner.stream, torch.cuda.Stream)
    assert next(runner.classifier.parameters()).device.type == "cuda"
    assert pick_device(device).type == "cuda"
    assert pick_device("auto").type == "cuda"


@pytest.mark.parametrize("device", DEVICES)
def test_score_carries_levels_and_speech_next_to_the_probabilities(
    fresh_model: LoadedModel, device: str
) -> None:
    pre = fresh_model.preprocessing
    rate, n = pre.sample_rate, pre.window_samples
    windows = make_windows(fresh_model, 4)
    windows[1] = 0.0  # digital silence
    windows[2, -rate // 2 :] = 0.0  # music, then its newest half second silent
    windows[3] = marker(pre.window_seconds, rate, channels=1)[:n, 0]  # "speech"
    plain = InferenceRunner(fresh_model, torch.device(device), max_batch=3, level_samples=rate // 2)
    scores = plain.score(windows)
    assert scores.probs.shape == (4, len(LABELS))
    assert scores.level_dbfs.dtype == scores.speech.dtype == np.float32
    expected = levels_dbfs(torch.from_numpy(windows), rate // 2).numpy()
    np.testing.assert_allclose(scores.level_dbfs, expected, atol=1e-4)
    assert scores.level_dbfs[1] == scores.level_dbfs[2] == LEVEL_FLOOR_DBFS
    assert scores.level_dbfs[0] > -40
    assert scores.speech.tolist() == [0.0] * 4  # no detector: nothing is speech
    np.testing.assert_allclose(scores.probs, plain.run(windows), atol=1e-6)

    detector = ToneSpeech(rate)
    with_detector = with_speech_detector(fresh_model, detector)
    runner = InferenceRunner(with_detector, torch.device(device), max_batch=3)
    speech = runner.score(windows).speech
    assert speech[3] > 0.99
    assert speech[0] < 0.05
    np.testing.assert_allclose(speech, detector(torch.from_numpy(windows)).numpy(), atol=1e-5)
    # batched equals one by one
    singles = np.concatenate([runner.score(windows[i : i + 1]).speech for i in range(4)])
    np.testing.assert_allclose(speech, singles, atol=1e-6)


def test_a_speech_detector_of_the_wrong_shape_is_refused(fresh_model: LoadedModel) -> None:
    class Wrong(torch.nn.Module):
        def forward(self, wave: torch.Tensor) -> torch.Tensor:
            return wave[:, :2]

    runner = InferenceRunner(with_speech_detector(fresh_model, Wrong()), torch.device("cpu"))
    with pytest.raises(ValueError, match="speech detector"):
        runner.score(make_windows(fresh_model, 2))
