"""Tests for stream_server.inference.classify: offline files go through the live windowing and the
runner."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from stream_server.config import Config
from stream_server.core.session import SessionParams
from stream_server.core.timeline import Segment
from stream_server.core.windows import WindowJob, WindowScores
from stream_server.inference.classify import (
    ClassifyReport,
    classify_audio,
    classify_file,
    file_sha256,
    format_report,
)
from stream_server.inference.facts import session_params
from stream_server.inference.loading import with_speech_detector
from stream_server.inference.model import LoadedModel, resolve_model
from stream_server.inference.runner import InferenceRunner
from stream_server.media.decode import decode_mono
from stream_server.messages import ClassifyResult
from stream_server.training.mixes import label_at
from tests.helpers.audio import encode_audio, music, real_clip
from tests.helpers.constants import LABELS
from tests.helpers.speech import ToneSpeech, marker

RATE = 22050  # the tiny model's rate
WINDOW_S = 2.0
HOP_S = 0.5


def mono(seconds: float, seed: int = 0) -> np.ndarray:
    return music(seconds, rate=RATE, channels=1, seed=seed)[:, 0].copy()


def expected_windows(samples: int, params: SessionParams) -> int:
    return (samples - params.window_samples) // params.hop_samples + 1


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config()


@pytest.fixture
def params(config: Config, tiny_model: LoadedModel) -> SessionParams:
    p = session_params(config, tiny_model)
    assert p.model_rate == RATE
    assert p.window_samples == round(WINDOW_S * RATE)
    assert p.hop_samples == round(HOP_S * RATE)
    return p


@pytest.fixture
def runner(tiny_model: LoadedModel) -> InferenceRunner:
    return InferenceRunner(tiny_model, torch.device("cpu"), half=False, max_batch=4)


# -- classify_audio ------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [2.0, 2.3, 4.0, 5.0, 7.7])
def test_window_count(
    seconds: float, runner: InferenceRunner, params: SessionParams, tiny_model: LoadedModel
) -> None:
    audio = mono(seconds)
    updates, probs, segments, padded = classify_audio(audio, runner, params)
    count = math.floor((seconds - WINDOW_S) / HOP_S + 1e-9) + 1
    assert count == expected_windows(audio.size, params)
    assert len(updates) == count
    assert probs.shape == (count, len(LABELS))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert padded is False
    # window ends every hop from one full window on; none skipped offline
    ends = [u["stream_time_s"] for u in updates]
    np.testing.assert_allclose(ends, [WINDOW_S + HOP_S * k for k in range(count)], atol=1e-3)
    starts = [u["window_start_s"] for u in updates]
    np.testing.assert_allclose(starts, [HOP_S * k for k in range(count)], atol=1e-3)
    assert all(u["stream_id"] == "offline" for u in updates)
    assert segments
    assert segments[0].start_s == pytest.approx(0.0, abs=1e-3)
    assert segments[-1].end_s == pytest.approx(ends[-1], abs=1e-3)
    assert {s.genre for s in segments} <= set(LABELS)


def test_windows_are_the_live_windows(runner: InferenceRunner, params: SessionParams) -> None:
    audio = mono(6.3, seed=4)
    _, probs, _, _ = classify_audio(audio, runner, params)
    count = expected_windows(audio.size, params)
    assert probs.shape[0] == count == 9
    sliced = np.stack(
        [
            audio[k * params.hop_samples : k * params.hop_samples + params.window_samples]
            for k in range(count)
        ]
    )
    direct = runner.run(sliced)
    np.testing.assert_allclose(probs, direct, atol=1e-5, rtol=0)
    # the windows differ, so the order of the rows is checked too
    assert not np.allclose(probs[0], probs[-1], atol=1e-6)


def test_top_and_genre_of_updates(runner: InferenceRunner, params: SessionParams) -> None:
    audio = mono(4.0, seed=2)
    updates, probs, _, _ = classify_audio(audio, runner, params)
    for update, p in zip(updates, probs, strict=True):
        top = update["top"]
        assert len(top) == min(params.top_k, len(LABELS))
        assert top[0]["label"] == LABELS[int(np.argmax(p))]
        assert top[0]["prob"] == pytest.approx(float(p.max()), abs=1e-4)
        assert update["genre"] in LABELS


def test_short_audio_is_padded(runner: InferenceRunner, params: SessionParams) -> None:
    audio = mono(0.7, seed=1)
    updates, probs, segments, padded = classify_audio(audio, runner, params)
    assert padded is True
    assert len(updates) == 1
    assert probs.shape == (1, len(LABELS))
    assert updates[0]["stream_time_s"] == pytest.approx(WINDOW_S)
    assert updates[0]["window_start_s"] == pytest.approx(0.0)
    window = np.zeros(params.window_samples, dtype=np.float32)
    window[: audio.size] = audio
    np.testing.assert_allclose(probs, runner.run(window[None]), atol=1e-5, rtol=0)
    assert len(segments) == 1


def test_exactly_one_window_is_not_padded(runner: InferenceRunner, params: SessionParams) -> None:
    audio = mono(WINDOW_S)
    assert audio.size == params.window_samples
    updates, _, _, padded = classify_audio(audio, runner, params)
    assert padded is False
    assert len(updates) == 1


def test_empty_audio_is_one_silent_window(runner: InferenceRunner, params: SessionParams) -> None:
    updates, probs, _, padded = classify_audio(np.zeros(0, np.float32), runner, params)
    assert padded is True
    assert len(updates) == 1
    assert np.isfinite(probs).all()


def test_batches_follow_max_batch(
    tiny_model: LoadedModel, params: SessionParams, capsys: pytest.CaptureFixture[str]
) -> None:
    audio = mono(6.0, seed=3)
    calls: list[int] = []

    class CountingRunner(InferenceRunner):
        def score(
            self, windows: np.ndarray, jobs: Sequence[WindowJob] | None = None
        ) -> WindowScores:
            calls.append(len(windows))
            return super().score(windows, jobs)

    counting = CountingRunner(tiny_model, torch.device("cpu"), max_batch=3)
    _, probs, _, _ = classify_audio(audio, counting, params, progress=True)
    assert calls == [3, 3, 3]
    plain = InferenceRunner(tiny_model, torch.device("cpu"), max_batch=32)
    _, probs_one_batch, _, _ = classify_audio(audio, plain, params)
    np.testing.assert_allclose(probs, probs_one_batch, atol=1e-5, rtol=0)
    err = capsys.readouterr().err
    assert "classifying" in err
    assert "100%" in err
    assert err.endswith("\n")


# -- classify_file -------------------------------------------------------------------------------


def check_report(report: ClassifyReport, path: Path, tiny_model: LoadedModel) -> dict:
    params_window = round(WINDOW_S * RATE)
    samples = round(report.duration_s * RATE)
    count = (samples - params_window) // round(HOP_S * RATE) + 1
    assert len(report.windows) == count
    assert report.window_probs.shape == (count, len(LABELS))
    np.testing.assert_allclose(report.mean_probs, report.window_probs.mean(axis=0), rtol=1e-6)
    assert report.labels == LABELS
    assert report.device == "cpu"
    assert report.model == tiny_model.source
    assert report.source == str(path)
    assert report.padded is False
    assert report.processing_s > 0

    data = report.to_result()
    # one shape for the local report and the server's POST /classify answer
    assert set(data) == set(ClassifyResult.__annotations__)
    assert data["processing_ms"] == round(report.processing_s * 1000.0, 1)
    assert data["sha256"] == "" and data["cached"] is False
    ranking = report.ranking()
    assert [label for label, _ in ranking] == sorted(
        LABELS, key=lambda lb: -report.mean_probs[LABELS.index(lb)]
    )
    assert data["genre"] == ranking[0][0] == LABELS[int(np.argmax(report.mean_probs))]
    assert data["confidence"] == pytest.approx(float(report.mean_probs.max()), abs=1e-4)
    assert set(data["probabilities"]) == set(LABELS)
    assert sum(data["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert len(data["windows"]) == count
    first = data["windows"][0]
    assert set(first) == {"start_s", "end_s", "top", "genre", "confidence"}
    assert first["start_s"] == pytest.approx(0.0)
    assert first["end_s"] == pytest.approx(WINDOW_S)
    assert data["segments"]
    assert {s["genre"] for s in data["segments"]} <= set(LABELS)
    assert data["duration_s"] == pytest.approx(report.duration_s, abs=1e-3)

    text = format_report(report)
    assert data["genre"] in text
    assert str(path) in text
    assert f"{count} windows" in text
    assert "top genres:" in text
    assert "timeline:" in text
    return data


def test_classify_file_wav(
    tmp_path: Path, config: Config, tiny_model: LoadedModel, params: SessionParams
) -> None:
    path = encode_audio(tmp_path / "clip.wav", music(5.0, rate=44100, channels=2, seed=7), 44100)
    report = classify_file(str(path), config, model=tiny_model)
    assert report.duration_s == pytest.approx(5.0, abs=0.05)
    check_report(report, path, tiny_model)
    # the same audio, decoded by hand, gives the same windows
    audio = decode_mono(str(path), RATE)
    runner = InferenceRunner(tiny_model, torch.device("cpu"))
    _, probs, _, _ = classify_audio(audio, runner, params)
    np.testing.assert_allclose(report.window_probs, probs, atol=1e-5, rtol=0)


def test_file_sha256_is_the_hash_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "clip.bin"
    path.write_bytes(b"\x00\x01" * 100_000)
    assert file_sha256(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_classify_file_short_is_padded(
    tmp_path: Path, config: Config, tiny_model: LoadedModel
) -> None:
    path = encode_audio(tmp_path / "short.wav", music(1.0, rate=44100, channels=2), 44100)
    report = classify_file(str(path), config, model=tiny_model)
    assert report.padded is True
    assert len(report.windows) == 1
    assert report.to_result()["padded"] is True
    assert "padded with silence" in format_report(report)


def test_classify_file_real_clip(config: Config, tiny_model: LoadedModel) -> None:
    path = real_clip("jazz")
    report = classify_file(str(path), config, model=tiny_model)
    assert report.duration_s > WINDOW_S
    data = check_report(report, path, tiny_model)
    assert np.isfinite(report.window_probs).all()
    assert data["windows"][-1]["end_s"] <= report.duration_s + 1e-3


# -- the gate and the decoding ---------------------------------------------------------------------


def seconds_labelled(segments: list[Segment], start: float, end: float) -> set[str | None]:
    """The labels of the whole seconds from ``start`` to ``end`` (at their midpoints)."""
    return {label_at(segments, k + 0.5) for k in range(math.ceil(start), math.floor(end))}


@pytest.mark.parametrize("decoding", ["viterbi", "live"])
def test_real_music_around_silence_keeps_its_genre_and_silence_is_silence(
    make_config: Callable[..., Config], decoding: str
) -> None:
    """A real classical clip, 6 s of digital silence, 4 s of low noise (-80 dBFS), the clip again:
    every second of the silence is ``silence``, the music on both sides keeps its genre."""
    clip = real_clip("classical")
    model = resolve_model("")
    config = make_config(engine={"hop_s": 1.0}, offline={"decoding": decoding})
    params = session_params(config, model)
    rate = params.model_rate
    audio = decode_mono(str(clip), rate)[: 24 * rate]
    noise = np.random.default_rng(0).standard_normal(4 * rate).astype(np.float32) * 1e-4
    joined = np.concatenate([audio[: 12 * rate], np.zeros(6 * rate, np.float32), noise, audio])
    runner = InferenceRunner(model, torch.device("cpu"), level_samples=params.hop_samples)
    updates, _, segments, _ = classify_audio(joined, runner, params)
    assert [s.genre for s in segments] == ["classical", "silence", "classical"], segments
    assert seconds_labelled(segments, 12.0, 22.0) == {"silence"}
    assert segments[1].start_s == pytest.approx(12.0)
    assert segments[1].end_s == pytest.approx(22.0)
    assert any(u["genre"] == "silence" for u in updates)


def test_zeros_alone_are_one_silence(runner: InferenceRunner, params: SessionParams) -> None:
    silent = InferenceRunner(runner.loaded, runner.device, level_samples=params.hop_samples)
    updates, _, segments, _ = classify_audio(np.zeros(5 * RATE, np.float32), silent, params)
    assert [s.genre for s in segments] == ["silence"]
    assert {u["genre"] for u in updates} == {"silence"}
    assert (segments[0].start_s, segments[0].end_s) == (0.0, 5.0)


def test_a_speech_detector_marks_its_stretch_as_speech(
    tiny_model: LoadedModel, params: SessionParams
) -> None:
    detector = ToneSpeech(RATE)
    runner = InferenceRunner(
        with_speech_detector(tiny_model, detector),
        torch.device("cpu"),
        level_samples=params.hop_samples,
    )
    audio = np.concatenate([mono(4.0, seed=1), marker(4.0, RATE, channels=1)[:, 0], mono(4.0)])
    updates, _, segments, _ = classify_audio(audio, runner, params)
    assert "speech" in [s.genre for s in segments]
    assert seconds_labelled(segments, 5.0, 7.0) == {"speech"}
    labels = [s.genre for s in segments]
    before, after = labels[: labels.index("speech")], labels[labels.index("speech") + 1 :]
    assert before and after and "speech" not in before + after
    assert {u["genre"] for u in updates} >= {"speech"}


def test_reports_say_how_they_were_decoded(
    tmp_path: Path, make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    path = encode_audio(tmp_path / "clip.wav", music(4.0, rate=44100, channels=2), 44100)
    viterbi = classify_file(str(path), make_config(), model=tiny_model)
    assert viterbi.to_result()["decoding"] == "viterbi"
    assert "decoding: viterbi (the whole file at once, looking ahead" in format_report(viterbi)
    live = classify_file(str(path), make_config(offline={"decoding": "live"}), model=tiny_model)
    assert live.to_result()["decoding"] == "live"
    assert "decoding: live (causal" in format_report(live)
    # same windows and probabilities either way; the JSON keeps its shape
    np.testing.assert_allclose(viterbi.window_probs, live.window_probs)
    assert set(viterbi.to_result()) == set(live.to_result())
