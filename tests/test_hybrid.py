"""The hybrid ViT: frozen musicnn tokens in, a ViT over them, trained, saved and served."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from stream_server.errors import GenrecastError, ModelLoadError
from stream_server.inference.features import make_features
from stream_server.inference.model import load_model, save_checkpoint
from stream_server.inference.musicnn_tokens import (
    FRAME_FEATURES,
    TOKEN_FEATURES,
    MusicnnTokens,
    pool_runs,
    token_count,
)
from stream_server.inference.preprocessing import PREPROCESSING_FILE, MusicnnPreprocessing
from stream_server.training.dataset import windows_of
from stream_server.training.hybrid_data import clip_tokens
from stream_server.training.recipes import ARCHITECTURES, Architecture, TrainOptions
from stream_server.training.train import REPORT_FILE, build_model, train
from stream_server.training.train_hybrid import feature_stats, lowpass, lowpass_for, mask_tokens
from tests.helpers.audio import encode_audio, music

GENRES = ("drone", "whistle")
#: One-second windows: 63 musicnn frames, three tokens of 16 frames.
TINY = Architecture("hybrid", 32, 1, 2, 16, (1, 3), TOKEN_FEATURES, 1.0, dropout=0.0)


def _stats(seed: int = 0) -> MusicnnPreprocessing:
    rng = np.random.default_rng(seed)
    return MusicnnPreprocessing(
        window_seconds=1.0,
        feature_mean=tuple(rng.normal(size=TOKEN_FEATURES).tolist()),
        feature_std=tuple(rng.uniform(0.5, 2.0, TOKEN_FEATURES).tolist()),
    )


def test_the_shipped_recipe_fills_its_token_grid() -> None:
    arch = ARCHITECTURES["musicnn-vit"]
    pre = arch.preprocessing()
    assert isinstance(pre, MusicnnPreprocessing)
    assert arch.image_size == (1, token_count(pre)) == (1, 19)  # 5 s: 313 frames, 19 tokens


def test_pool_runs_takes_the_mean_and_maximum_of_each_run() -> None:
    frames = torch.arange(2 * 753 * 35, dtype=torch.float32).reshape(2, 753, 35)
    assert torch.equal(pool_runs(frames, 16, "mean"), pool_runs(frames, 16, "mean+max")[:, :753])
    tokens = pool_runs(frames, 16, "mean+max")
    assert tokens.shape == (2, 1506, 2)  # the 3 frames left over are dropped
    torch.testing.assert_close(tokens[:, :753, 1], frames[:, :, 16:32].mean(dim=2))
    torch.testing.assert_close(tokens[:, 753:, 0], frames[:, :, 15])


def test_tokens_are_standardised_raw_tokens_and_the_front_end_stays_frozen() -> None:
    pre = _stats()
    tokens = MusicnnTokens(pre)
    wave = torch.from_numpy(music(1.0, rate=16000, channels=1)[:, 0].copy()).unsqueeze(0)
    raw = tokens.raw(wave)
    assert raw.shape == (1, TOKEN_FEATURES, 3)
    mean = torch.tensor(pre.feature_mean)[:, None]
    std = torch.tensor(pre.feature_std)[:, None]
    torch.testing.assert_close(tokens(wave), ((raw - mean) / std).unsqueeze(2))
    tokens.train()
    assert not tokens.training and not tokens.net.training
    assert not any(p.requires_grad for p in tokens.parameters())


def test_mean_pooled_tokens_are_the_first_half_of_the_raw_ones() -> None:
    tokens = MusicnnTokens(MusicnnPreprocessing(window_seconds=1.0, pooling="mean"))
    wave = torch.from_numpy(music(1.0, rate=16000, channels=1)[:, 0].copy()).unsqueeze(0)
    torch.testing.assert_close(tokens(wave), tokens.raw(wave)[:, :FRAME_FEATURES, None])
    with pytest.raises(ValueError, match="pooling must be one of"):
        MusicnnTokens(MusicnnPreprocessing(pooling="median"))


def test_other_rates_are_resampled_to_musicnn_s() -> None:
    pre = MusicnnPreprocessing(sample_rate=22050, window_seconds=1.0)
    wave = torch.from_numpy(music(1.0, rate=22050, channels=1)[:, 0].copy()).unsqueeze(0)
    assert MusicnnTokens(pre)(wave).shape == (1, TOKEN_FEATURES, 1, 3)


def test_bad_front_end_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="feature_mean needs 1506"):
        MusicnnTokens(MusicnnPreprocessing(feature_mean=(0.0, 1.0)))
    with pytest.raises(ValueError, match="no musicnn weights 'elsewhere'"):
        MusicnnTokens(MusicnnPreprocessing(weights="elsewhere"))


def test_a_hybrid_checkpoint_round_trips_and_serves_what_it_computes(tmp_path: Path) -> None:
    pre = _stats()
    model = build_model(TINY, GENRES).eval()
    directory = save_checkpoint(model, pre, tmp_path / "hybrid")
    saved = json.loads((directory / PREPROCESSING_FILE).read_text())
    assert saved["kind"] == "musicnn-tokens" and len(saved["feature_std"]) == TOKEN_FEATURES
    assert not any("frontend" in k for k in _weight_names(directory))  # musicnn is not copied

    loaded = load_model(str(directory))
    assert loaded.preprocessing == pre and loaded.labels == GENRES
    wave = torch.from_numpy(music(1.0, rate=16000, channels=1, seed=2)[:, 0].copy())[None]
    with torch.inference_mode():
        direct = torch.softmax(model(pixel_values=make_features(pre)(wave)).logits, dim=-1)
        torch.testing.assert_close(loaded.classifier(wave), direct)


def test_a_checkpoint_naming_missing_front_end_weights_does_not_load(tmp_path: Path) -> None:
    directory = save_checkpoint(build_model(TINY, GENRES), _stats(), tmp_path / "hybrid")
    data = json.loads((directory / PREPROCESSING_FILE).read_text())
    (directory / PREPROCESSING_FILE).write_text(json.dumps({**data, "weights": "musicnn_none"}))
    with pytest.raises(ModelLoadError, match="musicnn_none"):
        load_model(str(directory))


def _weight_names(directory: Path) -> list[str]:
    from safetensors.torch import load_file

    return list(load_file(str(directory / "model.safetensors")))


def test_clip_tokens_are_computed_once_per_clip_and_variant(tmp_path: Path) -> None:
    tokens = MusicnnTokens(MusicnnPreprocessing(window_seconds=1.0))
    audio = music(2.5, rate=16000, channels=1, seed=4)[:, 0].copy()
    first = clip_tokens(tokens, audio, "clip", tmp_path, hop_s=0.5)
    assert first.dtype == np.float32 and first.shape == (4, TOKEN_FEATURES, 3)  # 0, .5, 1, 1.5 s
    with torch.inference_mode():
        wins = torch.from_numpy(windows_of(audio, 16000, 8000))
        np.testing.assert_allclose(first, tokens.raw(wins).half().float().numpy())
    assert len(list(tmp_path.iterdir())) == 1
    again = clip_tokens(tokens, np.zeros_like(audio), "clip", tmp_path, hop_s=0.5)
    np.testing.assert_array_equal(again, first)  # read back, not recomputed
    clip_tokens(tokens, audio, "clip", tmp_path, hop_s=0.5, variant="lowpass@4000")
    assert len(list(tmp_path.iterdir())) == 2


def test_lowpass_removes_what_lies_above_its_band() -> None:
    t = np.arange(16000) / 16000
    audio = (np.sin(2 * np.pi * 500 * t) + np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    out = lowpass(audio, 16000, 4000.0)
    spectrum = np.abs(np.fft.rfft(out))
    assert spectrum[6000] < 1e-3 * spectrum[500]
    assert lowpass_for("a/b.mp3", (4000.0, 8000.0)) == lowpass_for("a/b.mp3", (4000.0, 8000.0))


def test_mask_tokens_zeroes_runs_and_feature_stats_standardise() -> None:
    x = torch.ones(64, 4, 10)
    masked = mask_tokens(x, torch.Generator().manual_seed(0), masks=2, max_run=3)
    per_item = (masked[:, 0, :] == 0).sum(dim=1)
    assert per_item.max() <= 6 and per_item.sum() > 0
    assert torch.equal(mask_tokens(x, torch.Generator(), masks=0, max_run=3), x)

    rng = np.random.default_rng(0)
    data = [rng.normal(3.0, 2.0, (50, TOKEN_FEATURES, 3)).astype(np.float32) for _ in range(2)]
    mean, std = feature_stats(data)
    assert mean.shape == std.shape == (TOKEN_FEATURES,)
    assert abs(float(mean.mean()) - 3.0) < 0.05 and abs(float(std.mean()) - 2.0) < 0.05


def _tone_set(root: Path) -> Path:
    for g, genre in enumerate(GENRES):
        (root / genre).mkdir(parents=True)
        for i in range(5):
            rng = np.random.default_rng(10 * g + i)
            t = np.arange(2 * 22050) / 22050
            hz = (90 + 20 * rng.random()) if genre == "drone" else (3000 + 500 * rng.random())
            wave = (0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32).reshape(-1, 1)
            encode_audio(root / genre / f"{i}.wav", wave, 22050)
    return root


def test_training_a_hybrid_learns_and_serves_its_training_tokens(tmp_path: Path) -> None:
    data = _tone_set(tmp_path / "genres")
    out = tmp_path / "model"
    opts = TrainOptions(
        data=str(data),
        out=str(out),
        arch="musicnn-vit",
        epochs=4,
        batch_size=8,
        lr=3e-3,
        val_fraction=0.4,
        grid_seconds=0.5,
        mixup_prob=0.0,
        codec_prob=0.0,
        lowpass_prob=0.5,
        lowpass_hz=(4000.0,),
        min_clips=1,
        cache_dir=str(tmp_path / "cache" / "audio"),
        progress=False,
    )
    result = train(opts, TINY)
    assert [h.epoch for h in result.history] == [1, 2, 3, 4]
    assert result.history[-1].val_clip_accuracy == 1.0, result.history
    assert len(list((tmp_path / "cache" / "tokens").iterdir())) == 10 + 6  # clean + low-passed
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["architecture"]["family"] == "hybrid"

    loaded = load_model(str(out))
    pre = loaded.preprocessing
    assert isinstance(pre, MusicnnPreprocessing) and len(pre.feature_mean) == TOKEN_FEATURES
    assert replace(pre, feature_mean=(), feature_std=()) == TINY.preprocessing()
    drone = torch.from_numpy(music(1.0, rate=16000, channels=1)[:, 0].copy())[None]
    assert loaded.classifier(drone).shape == (1, 2)


def test_a_hybrid_is_taught_by_musicnn_or_by_nobody(tmp_path: Path) -> None:
    opts = TrainOptions(data=str(tmp_path), out=str(tmp_path / "m"), teacher="cnn")
    with pytest.raises(GenrecastError, match="'cnn' does not teach a hybrid recipe"):
        train(opts, TINY)


def test_a_hybrid_says_it_cannot_resume(tmp_path: Path) -> None:
    data = _tone_set(tmp_path / "genres")
    opts = TrainOptions(data=str(data), out=str(tmp_path / "m"), resume=True, min_clips=1)
    with pytest.raises(GenrecastError, match="a hybrid keeps no state"):
        train(opts, TINY)
    assert not (tmp_path / "m").exists()  # refused before anything was written
