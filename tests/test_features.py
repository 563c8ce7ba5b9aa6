"""Tests for stream_server.inference.features: log-mel spectrogram, dB against the item max, image
layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from stream_server.inference.features import (
    LogMelImage,
    db_to_image,
    mel_power,
    power_to_db_ref_max,
)
from stream_server.inference.preprocessing import PREPROCESSING_FILE, AudioPreprocessing
from tests.helpers.audio import music
from tests.helpers.devices import DEVICES

SHORT = AudioPreprocessing(window_seconds=2.0)


def sine(freq_hz: float, seconds: float, rate: int = 22050, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(round(seconds * rate), dtype=torch.float64) / rate
    return (amp * torch.sin(2 * math.pi * freq_hz * t)).float()


def music_batch(batch: int, seconds: float, rate: int = 22050) -> torch.Tensor:
    """``(batch, samples)`` float32 mono synthetic music, a different seed per item."""
    items = [music(seconds, rate=rate, channels=1, seed=s)[:, 0] for s in range(batch)]
    return torch.from_numpy(np.stack(items))


# -- AudioPreprocessing ------------------------------------------------------------------------


def test_window_samples() -> None:
    assert AudioPreprocessing().window_samples == 220500
    assert AudioPreprocessing(window_seconds=2.0).window_samples == 44100
    assert AudioPreprocessing(sample_rate=16000, window_seconds=1.5).window_samples == 24000
    # rounded, not truncated
    assert AudioPreprocessing(sample_rate=3, window_seconds=0.5).window_samples == 2


def test_json_round_trip() -> None:
    pre = AudioPreprocessing(
        sample_rate=16000,
        n_fft=1024,
        hop_length=256,
        n_mels=64,
        f_min=20.0,
        f_max=7000.0,
        top_db=60.0,
        window_seconds=3.0,
        image_size=(128, 256),
        num_channels=1,
        image_mean=(0.25,),
        image_std=(0.75,),
    )
    data = pre.to_json()
    assert data["image_size"] == [128, 256]
    assert data["image_mean"] == [0.25]
    assert data["image_std"] == [0.75]
    # survives real JSON text, not only the dict
    assert AudioPreprocessing.from_json(json.loads(json.dumps(data))) == pre
    assert AudioPreprocessing.from_json(AudioPreprocessing().to_json()) == AudioPreprocessing()


def test_from_json_int_image_size_and_unknown_keys() -> None:
    pre = AudioPreprocessing.from_json({"image_size": 96, "feature_extractor_type": "x", "n": 1})
    assert pre.image_size == (96, 96)
    assert pre == AudioPreprocessing(image_size=(96, 96))


def test_from_json_scalar_stats_and_base() -> None:
    base = AudioPreprocessing(
        sample_rate=16000, num_channels=1, image_mean=(0.5,), image_std=(0.5,)
    )
    pre = AudioPreprocessing.from_json({"image_mean": 0.1, "image_std": 0.2}, base)
    assert pre.image_mean == (0.1,)
    assert pre.image_std == (0.2,)
    assert pre.sample_rate == 16000  # from the base, not the class defaults
    assert pre.num_channels == 1


def test_save_writes_preprocessing_file(tmp_path: Path) -> None:
    pre = AudioPreprocessing(image_size=(64, 32), window_seconds=2.5)
    path = pre.save(tmp_path)
    assert path == tmp_path / PREPROCESSING_FILE
    assert path.name == "audio_preprocessing.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["image_size"] == [64, 32]
    assert data["window_seconds"] == 2.5
    assert AudioPreprocessing.from_json(data) == pre


def test_stats_must_match_channels() -> None:
    with pytest.raises(ValueError, match="one value per channel"):
        LogMelImage(AudioPreprocessing(num_channels=1))
    with pytest.raises(ValueError, match="one value per channel"):
        LogMelImage(AudioPreprocessing(image_std=(0.5, 0.5)))


# -- LogMelImage shapes ------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_default_image_shape(device: str) -> None:
    pre = AudioPreprocessing()
    module = LogMelImage(pre).to(device)
    wave = music_batch(2, pre.window_seconds).to(device)
    assert wave.shape == (2, 220500)
    image = module(wave)
    assert image.shape == (2, 3, 224, 224)
    assert image.dtype == torch.float32
    assert image.device.type == device
    assert torch.isfinite(image).all()
    # channels are the same map repeated (same mean/std on each)
    torch.testing.assert_close(image[:, 0], image[:, 2])
    # values lie in the normalised range of [0, 1]: (x - 0.5) / 0.5 in [-1, 1]
    assert image.min() >= -1.0 - 1e-5
    assert image.max() <= 1.0 + 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_custom_image_shape(device: str) -> None:
    pre = AudioPreprocessing(
        window_seconds=2.0,
        image_size=(128, 256),
        num_channels=1,
        image_mean=(0.0,),
        image_std=(1.0,),
    )
    module = LogMelImage(pre).to(device)
    image = module(music_batch(3, 2.0).to(device))
    assert image.shape == (3, 1, 128, 256)
    assert image.device.type == device
    # mean 0 / std 1: the raw [0, 1] map; the loudest bin survives resizing near 1
    assert image.min() >= -1e-5
    assert image.max() <= 1.0 + 1e-5
    assert image.max() > 0.5


@pytest.mark.parametrize("device", DEVICES)
def test_float64_input_is_cast(device: str) -> None:
    module = LogMelImage(SHORT).to(device)
    wave = music_batch(1, 2.0).to(device)
    out32 = module(wave)
    out64 = module(wave.double())
    assert out64.dtype == torch.float32
    torch.testing.assert_close(out64, out32)


# -- mel_power ---------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "pre",
    [
        SHORT,
        AudioPreprocessing(
            sample_rate=16000, n_fft=1024, hop_length=160, n_mels=64, f_min=30.0, f_max=7600.0
        ),
    ],
    ids=["default", "custom"],
)
def test_mel_power_matches_torchaudio(device: str, pre: AudioPreprocessing) -> None:
    module = LogMelImage(pre).to(device)
    wave = music_batch(2, 2.0, rate=pre.sample_rate).to(device)
    ours = mel_power(wave, module.window, module.fbanks, pre.n_fft, pre.hop_length)
    reference = torchaudio.transforms.MelSpectrogram(
        sample_rate=pre.sample_rate,
        n_fft=pre.n_fft,
        hop_length=pre.hop_length,
        f_min=pre.f_min,
        f_max=pre.f_max,
        n_mels=pre.n_mels,
        power=2.0,
        norm="slaney",
        mel_scale="slaney",
        center=True,
        pad_mode="reflect",
    ).to(device)(wave)
    assert ours.shape == (2, pre.n_mels, wave.shape[1] // pre.hop_length + 1)
    assert reference.shape == ours.shape
    scale = reference.abs().max()
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6 * float(scale))


# -- power_to_db_ref_max -----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_db_max_zero_and_floor(device: str) -> None:
    module = LogMelImage(SHORT).to(device)
    wave = music_batch(3, 2.0).to(device)
    wave[1] *= 0.01  # a much quieter item: still referenced to its own max
    power = mel_power(wave, module.window, module.fbanks, SHORT.n_fft, SHORT.hop_length)
    db = power_to_db_ref_max(power, top_db=80.0)
    assert db.shape == power.shape
    per_item_max = db.flatten(1).amax(dim=1)
    torch.testing.assert_close(per_item_max, torch.zeros(3, device=device))
    per_item_min = db.flatten(1).amin(dim=1)
    torch.testing.assert_close(per_item_min, torch.full((3,), -80.0, device=device))


def test_db_exact_values() -> None:
    power = torch.tensor([[[1.0, 10.0], [100.0, 1e-12]], [[4.0, 4.0], [4.0, 0.4]]])
    db = power_to_db_ref_max(power, top_db=15.0)
    expected = torch.tensor([[[-15.0, -10.0], [0.0, -15.0]], [[0.0, 0.0], [0.0, -10.0]]])
    torch.testing.assert_close(db, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_db_gain_invariance_per_item(device: str) -> None:
    module = LogMelImage(SHORT).to(device)
    wave = music_batch(2, 2.0).to(device)
    louder = wave.clone()
    louder[0] *= 10.0  # only item 0 changes
    args = (module.window, module.fbanks, SHORT.n_fft, SHORT.hop_length)
    db = power_to_db_ref_max(mel_power(wave, *args), 80.0)
    db_louder = power_to_db_ref_max(mel_power(louder, *args), 80.0)
    torch.testing.assert_close(db_louder, db, atol=1e-3, rtol=0)
    # the whole image is gain invariant too
    torch.testing.assert_close(module(louder), module(wave), atol=1e-4, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_db_silent_item(device: str) -> None:
    module = LogMelImage(SHORT).to(device)
    wave = music_batch(2, 2.0).to(device)
    wave[1] = 0.0
    args = (module.window, module.fbanks, SHORT.n_fft, SHORT.hop_length)
    db = power_to_db_ref_max(mel_power(wave, *args), 80.0)
    assert not torch.isnan(db).any()
    assert torch.equal(db[1], torch.zeros_like(db[1]))
    # the silent item does not change the loud one
    alone = power_to_db_ref_max(mel_power(wave[:1], *args), 80.0)
    torch.testing.assert_close(db[:1], alone, atol=1e-5, rtol=0)
    image = module(wave)
    assert torch.isfinite(image).all()
    assert torch.equal(image[1], torch.full_like(image[1], image[1, 0, 0, 0].item()))
    assert image[1, 0, 0, 0].item() == pytest.approx(1.0)  # (1 - 0.5) / 0.5


# -- db_to_image -------------------------------------------------------------------------------


def test_db_to_image_exact_layout_and_normalisation() -> None:
    top_db = 40.0
    db = -torch.arange(12, dtype=torch.float32).view(1, 4, 3) * 3.0  # row 0 = lowest mel band
    mean = torch.tensor([0.5, 0.25])
    std = torch.tensor([0.5, 2.0])
    image = db_to_image(db, top_db, (4, 3), mean, std)
    assert image.shape == (1, 2, 4, 3)
    unit = (db[0] + top_db) / top_db
    for c in range(2):
        expected = (unit.flip(0) - mean[c]) / std[c]
        torch.testing.assert_close(image[0, c], expected)
    # the lowest band (mel row 0) is the bottom image row
    torch.testing.assert_close(image[0, 0, -1], (unit[0] - 0.5) / 0.5)


def test_db_to_image_resizes() -> None:
    db = torch.full((2, 128, 87), -20.0)
    image = db_to_image(db, 80.0, (32, 48), torch.tensor([0.0]), torch.tensor([1.0]))
    assert image.shape == (2, 1, 32, 48)
    torch.testing.assert_close(image, torch.full_like(image, 0.75))


@pytest.mark.parametrize("device", DEVICES)
def test_low_sine_bottom_high_sine_top(device: str) -> None:
    pre = AudioPreprocessing(window_seconds=2.0, image_size=(128, 128))
    module = LogMelImage(pre).to(device)
    wave = torch.stack([sine(150.0, 2.0), sine(6000.0, 2.0)]).to(device)
    image = module(wave)[:, 0]  # (batch, H, W)
    height = image.shape[1]
    profile = image.mean(dim=2)  # (batch, H): mean brightness of each row
    low_row = int(profile[0].argmax())
    high_row = int(profile[1].argmax())
    assert low_row >= 0.85 * height, low_row
    assert high_row <= 0.2 * height, high_row
    half = height // 2
    assert profile[0, half:].mean() > profile[0, :half].mean()
    assert profile[1, :half].mean() > profile[1, half:].mean()


# -- batch consistency -------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "pre",
    [
        SHORT,
        AudioPreprocessing(
            window_seconds=2.0,
            image_size=(96, 160),
            num_channels=1,
            image_mean=(0.4,),
            image_std=(0.3,),
        ),
    ],
    ids=["default", "custom"],
)
def test_batch_equals_items(device: str, pre: AudioPreprocessing) -> None:
    module = LogMelImage(pre).to(device)
    wave = music_batch(4, 2.0).to(device)
    wave[2] *= 0.05
    batched = module(wave)
    for i in range(wave.shape[0]):
        single = module(wave[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], single, atol=1e-5, rtol=0)
