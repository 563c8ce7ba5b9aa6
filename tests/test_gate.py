"""Tests for stream_server.core.gate: window levels, the music / speech / silence decision, the
speech-detector plug."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stream_server.core.gate import (
    LEVEL_FLOOR_DBFS,
    MUSIC,
    SILENCE,
    SPEECH,
    GateParams,
    judge,
)
from stream_server.inference.levels import levels_dbfs
from stream_server.inference.loading import with_speech_detector
from stream_server.inference.model import LoadedModel
from tests.helpers.devices import DEVICES
from tests.helpers.speech import ToneSpeech


@pytest.mark.parametrize("device", DEVICES)
def test_levels_of_known_signals(device: str) -> None:
    n = 22050
    t = torch.arange(n, dtype=torch.float32) / 22050
    windows = torch.stack(
        [
            torch.zeros(n),
            torch.ones(n),  # full-scale square (constant): 0 dBFS
            torch.sin(2 * math.pi * 440 * t),  # full-scale sine: -3.01 dBFS
            0.01 * torch.sin(2 * math.pi * 440 * t),  # -43.01 dBFS
        ]
    ).to(device)
    levels = levels_dbfs(windows)
    assert levels.shape == (4,)
    assert levels.dtype == torch.float32
    assert levels.device.type == device
    expected = [LEVEL_FLOOR_DBFS, 0.0, -3.0103, -43.0103]
    np.testing.assert_allclose(levels.cpu().numpy(), expected, atol=1e-3)


def test_levels_measure_the_newest_samples() -> None:
    windows = torch.zeros(2, 1000)
    windows[0, :900] = 0.5  # loud, then 100 silent samples at the end
    windows[1, 950:] = 0.5  # silent, then loud at the end
    tail = levels_dbfs(windows, 100).numpy()
    assert tail[0] == LEVEL_FLOOR_DBFS
    assert tail[1] == pytest.approx(20 * math.log10(0.5) + 10 * math.log10(0.5), abs=1e-3)
    whole = levels_dbfs(windows, 0).numpy()
    np.testing.assert_allclose(whole, levels_dbfs(windows, 5000).numpy())
    assert whole[0] == pytest.approx(10 * math.log10(0.25 * 0.9), abs=1e-3)


def test_batched_levels_equal_one_by_one() -> None:
    rng = np.random.default_rng(0)
    windows = torch.from_numpy(rng.standard_normal((5, 800)).astype(np.float32) * 0.1)
    batched = levels_dbfs(windows, 300)
    singles = torch.cat([levels_dbfs(windows[i : i + 1], 300) for i in range(5)])
    torch.testing.assert_close(batched, singles)


def test_levels_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="batch, samples"):
        levels_dbfs(torch.zeros(10))
    with pytest.raises(ValueError, match="tail_samples"):
        levels_dbfs(torch.zeros(1, 10), -1)
    assert levels_dbfs(torch.zeros(0, 10)).shape == (0,)
    assert levels_dbfs(torch.zeros(2, 0)).tolist() == [LEVEL_FLOOR_DBFS] * 2


def test_judge_silence_by_level_speech_by_probability() -> None:
    params = GateParams(silence_dbfs=-60.0, speech_threshold=0.5)
    levels = np.array([-20.0, -20.0, -70.0, -70.0, -60.0, -59.9])
    speech = np.array([0.1, 0.5, 0.9, 0.0, 0.0, 0.49])
    kinds = judge(levels, speech, params)
    assert kinds.dtype == np.int8
    # silence wins over speech; the thresholds are "below" and "at least"
    assert kinds.tolist() == [MUSIC, SPEECH, SILENCE, SILENCE, MUSIC, MUSIC]


def test_judge_scalars_and_broadcast() -> None:
    params = GateParams()
    assert int(judge(-100.0, 0.0, params)) == SILENCE
    assert int(judge(-10.0, 1.0, params)) == SPEECH
    assert judge(np.array([-10.0, -100.0]), 0.0, params).tolist() == [MUSIC, SILENCE]


def test_judge_disabled_is_always_music() -> None:
    params = GateParams(enabled=False)
    assert judge(np.array([-200.0, -10.0]), np.array([0.0, 1.0]), params).tolist() == [
        MUSIC,
        MUSIC,
    ]


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"silence_dbfs": math.nan}, "silence_dbfs"),
        ({"speech_threshold": 1.5}, "speech_threshold"),
        ({"min_run_s": -1.0}, "min_run_s"),
    ],
)
def test_params_validation(changes: dict[str, float], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        GateParams(**changes)  # type: ignore[arg-type]


def test_with_speech_detector_plugs_a_module_in(tiny_model: LoadedModel) -> None:
    assert tiny_model.speech_detector is None
    detector = ToneSpeech(22050)
    plugged = with_speech_detector(tiny_model, detector)
    assert plugged.speech_detector is detector
    assert plugged.classifier is tiny_model.classifier
    assert with_speech_detector(plugged, None).speech_detector is None


def test_the_test_speech_module_hears_the_marker_tone() -> None:
    from tests.helpers.audio import music
    from tests.helpers.speech import marker

    rate = 22050
    tone = marker(2.0, rate, channels=1)[:, 0]
    song = music(2.0, rate=rate, channels=1)[:, 0]
    half = np.concatenate([song[: rate // 2], tone[rate // 2 :]])
    probs = ToneSpeech(rate)(torch.from_numpy(np.stack([tone, song, half]))).numpy()
    assert probs[0] > 0.99
    assert probs[1] < 0.05
    assert 0.3 < probs[2] < 0.9
