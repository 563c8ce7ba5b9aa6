"""The speech detector: shapes, rates, saving and loading, and a training run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stream_server.errors import ModelLoadError
from stream_server.inference.speech import (
    CONFIG_FILE,
    N_MELS,
    RATE,
    SpeechDetector,
    load_detector,
    save_detector,
)
from stream_server.training.dataset import Clip, save_split
from stream_server.training.train_speech import (
    SpeechTrainOptions,
    format_speech_report,
    speaker_group,
    speech_split,
    train_speech,
    validation_clips,
)
from tests.helpers.audio import encode_audio, music
from tests.helpers.speech import write_speech_set


def test_detector_gives_one_probability_per_window_at_any_rate() -> None:
    torch.manual_seed(0)
    model = SpeechDetector(RATE).eval()
    wave = torch.randn(3, RATE * 5) * 0.1
    with torch.inference_mode():
        probs = model(wave)
        maps = model.features(wave)
    assert probs.shape == (3,) and bool(((probs >= 0) & (probs <= 1)).all())
    assert maps.shape == (3, 1, N_MELS, 501)  # 10 ms frames, centred
    # loudness hardly changes the map (each is normalised; only the log floor is absolute)
    with torch.inference_mode():
        assert torch.allclose(model.features(wave * 0.25), maps, atol=0.02)
    # fed at 22050 Hz, the detector resamples: the same sound gives about the same map
    t = torch.arange(RATE * 5) / RATE
    tone = torch.sin(2 * torch.pi * 440 * t).unsqueeze(0)
    t22 = torch.arange(22050 * 5) / 22050
    tone22 = torch.sin(2 * torch.pi * 440 * t22).unsqueeze(0)
    with torch.inference_mode():
        here = model.features(tone)
        there = _at_rate(model, 22050).features(tone22)
    assert there.shape == here.shape
    strongest = here[0, 0, :, 5:-5].argmax(dim=0)  # the band holding 440 Hz, frame by frame
    assert torch.equal(there[0, 0, :, 5:-5].argmax(dim=0), strongest)
    assert int(strongest.unique().numel()) == 1


def _at_rate(model: SpeechDetector, rate: int) -> SpeechDetector:
    other = SpeechDetector(rate, width=model.width)
    other.load_state_dict(model.state_dict())
    return other.eval()


def test_save_and_load_give_the_same_detector(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = SpeechDetector(RATE, width=8).eval()
    save_detector(model, tmp_path, {"note": "x"})
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["width"] == 8
    loaded = load_detector(tmp_path, sample_rate=RATE)
    wave = torch.randn(2, RATE * 2)
    with torch.inference_mode():
        assert torch.equal(loaded(wave), model(wave))
    with pytest.raises(ModelLoadError, match="speech detector"):
        load_detector(tmp_path / "missing")


def _voice(seconds: float, seed: int) -> np.ndarray:
    """A crude voice: a harmonic buzz at a wandering pitch, cut into 4 Hz syllables."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    buzz = sum(np.sin(k * phase) / k for k in range(1, 15))
    syllables = (np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)) > 0).astype(np.float64)
    return (0.2 * buzz * syllables).astype(np.float32)[:, None]


def test_training_measures_and_saves_a_detector(tmp_path: Path) -> None:
    speech_root, genres = tmp_path / "speech", tmp_path / "genres"
    write_speech_set(
        speech_root,
        [_voice(6.0, i) for i in range(4)],
        [music(6.0, RATE, channels=1, seed=i) for i in range(4)],
        RATE,
    )
    clips = []
    for genre in ("jazz", "rock"):
        for i in range(3):
            (genres / genre).mkdir(parents=True, exist_ok=True)
            encode_audio(genres / genre / f"{i}.wav", music(6.0, RATE, 1, seed=10 + i), RATE)
            clips.append(Clip(f"{genre}/{i}.wav", genre))
    split = save_split(tmp_path, clips[1:3] + clips[4:], [clips[0], clips[3]])
    opts = SpeechTrainOptions(
        speech=str(speech_root),
        music=str(genres),
        genre_split=str(split),
        out=str(tmp_path / "out"),
        epochs=2,
        steps_per_epoch=3,
        batch_size=8,
        cache_dir=str(tmp_path / "cache"),
    )
    report = train_speech(opts)
    assert report.windows["speech"] > 0
    assert report.windows["genre_music"] == 4  # two validation clips of 6 s: two windows each
    assert set(report.by_genre) == {"jazz", "rock"}
    for share in (report.speech_called_speech, report.genre_music_called_speech):
        assert 0.0 <= share <= 1.0
    assert [h["epoch"] for h in report.history] == [1, 2]
    assert "speech windows called speech" in format_speech_report(report)
    saved = json.loads((tmp_path / "out" / CONFIG_FILE).read_text())
    assert saved["validation"]["windows"] == report.windows
    # the validation side is saved, and is what the split gives
    val = speech_split(speech_root, opts.val_fraction, opts.seed)[1]
    assert saved["validation_files"] == sorted(c.path for c in val)
    assert sorted(validation_clips(speech_root, saved), key=str) == sorted(val, key=str)
    load_detector(tmp_path / "out")


@pytest.mark.parametrize(
    ("who", "group"),
    [
        ('GTZAN music_speech "news1"', 'GTZAN music_speech "news"'),
        ('GTZAN music_speech "news2"', 'GTZAN music_speech "news"'),
        ('GTZAN music_speech "acomic"', 'GTZAN music_speech "acomic"'),
        ('GTZAN music_speech "copland2"', 'GTZAN music_speech "copland"'),
        ("diarizationExample.segments speakerA", "diarizationExample.segments"),
        ("diarizationExample2.segments speakers A-F (6 turns)", "diarizationExample2.segments"),
        ("LibriSpeech spk 1320", "LibriSpeech spk 1320"),
        ("VCTK p260", "VCTK p260"),
    ],
)
def test_numbered_programmes_and_one_recordings_speakers_are_one_group(
    who: str, group: str
) -> None:
    assert speaker_group(who) == group


def test_validation_clips_follow_the_detectors_saved_files_or_its_split(tmp_path: Path) -> None:
    root = tmp_path / "speech"
    rows = ["file\tlabel\tsource_repo\tsource_path\tspeaker_or_artist"]
    for i, stem in enumerate(["news1", "news2", "talk", "acomic", "acomic2", "chat"]):
        rows.append(f'speech/{i}.wav\tspeech\tgtzan\t-\tGTZAN music_speech "{stem}"')
    root.mkdir()
    (root / "MANIFEST.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    for seed in range(6):  # numbered parts of one programme never straddle the split
        train, val = speech_split(root, 0.34, seed)
        sides = {c.path: c in val for c in train + val}
        assert sides["speech/0.wav"] == sides["speech/1.wav"]
        assert sides["speech/3.wav"] == sides["speech/4.wav"]
    saved = {"validation_files": ["speech/2.wav", "speech/5.wav"]}
    assert [c.path for c in validation_clips(root, saved)] == ["speech/2.wav", "speech/5.wav"]
    by_options = {"options": {"val_fraction": 0.34, "seed": 3}}
    assert validation_clips(root, by_options) == speech_split(root, 0.34, 3)[1]
    assert validation_clips(root, {}) == speech_split(root)[1]
