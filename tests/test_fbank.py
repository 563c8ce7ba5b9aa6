"""Tests for stream_server.inference.fbank and AST checkpoints: Kaldi filter banks, loading,
classifying."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from stream_server.config import Config
from stream_server.errors import ModelLoadError
from stream_server.inference.classify import classify_audio, classify_file
from stream_server.inference.facts import session_params
from stream_server.inference.fbank import (
    AST_MEAN,
    AST_STD,
    PROCESSOR_FILE,
    FbankPreprocessing,
    KaldiFbank,
    frame_signal,
    normalize,
    pad_or_truncate,
)
from stream_server.inference.features import LogMelImage, make_features
from stream_server.inference.model import GenreClassifier, LoadedModel, load_model, save_checkpoint
from stream_server.inference.preprocessing import AudioPreprocessing
from stream_server.inference.runner import InferenceRunner
from tests.helpers.audio import encode_audio, music
from tests.helpers.devices import DEVICES, cuda_param

RATE = 16000
GENRES = ("ska", "drone", "gospel")
MAX_LENGTH = 128  # frames of 10 ms: 1.28 s windows
SHORT = FbankPreprocessing(max_length=MAX_LENGTH)


def music_batch(batch: int, seconds: float, rate: int = RATE) -> torch.Tensor:
    """``(batch, samples)`` float32 mono synthetic music, a different seed per item."""
    items = [music(seconds, rate=rate, channels=1, seed=s)[:, 0] for s in range(batch)]
    return torch.from_numpy(np.stack(items))


def torchaudio_reference(wave: torch.Tensor, pre: FbankPreprocessing) -> torch.Tensor:
    """``torchaudio.compliance.kaldi.fbank`` item by item, then padded and normalised."""
    items = [
        kaldi.fbank(
            item[None],
            htk_compat=True,
            sample_frequency=pre.sample_rate,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=pre.num_mel_bins,
            dither=0.0,
            frame_shift=10,
        )
        for item in wave
    ]
    fbank = pad_or_truncate(torch.stack(items), pre.max_length)
    return normalize(fbank, pre.mean, pre.std) if pre.do_normalize else fbank


def ast_extractor(pre: FbankPreprocessing) -> Any:
    """``ASTFeatureExtractor`` with the settings of ``pre``."""
    from transformers import ASTFeatureExtractor

    return ASTFeatureExtractor(
        sampling_rate=pre.sample_rate,
        num_mel_bins=pre.num_mel_bins,
        max_length=pre.max_length,
        mean=pre.mean,
        std=pre.std,
        do_normalize=pre.do_normalize,
    )


# -- FbankPreprocessing --------------------------------------------------------------------------


def test_defaults_are_ast_defaults() -> None:
    from transformers import ASTFeatureExtractor

    pre = FbankPreprocessing()
    hf = ASTFeatureExtractor()
    assert pre.sample_rate == hf.sampling_rate == 16000
    assert pre.num_mel_bins == hf.num_mel_bins == 128
    assert pre.max_length == hf.max_length == 1024
    assert pre.mean == hf.mean == AST_MEAN
    assert pre.std == hf.std == AST_STD
    assert pre.do_normalize is hf.do_normalize is True
    assert pre.frame_length == 400  # 25 ms
    assert pre.frame_shift == 160  # 10 ms
    assert pre.window_seconds == pytest.approx(10.24)
    assert pre.window_samples == 163840
    assert SHORT.window_seconds == pytest.approx(1.28)
    assert SHORT.window_samples == 20480


def test_json_round_trip_through_the_hf_extractor(tmp_path: Path) -> None:
    from transformers import ASTFeatureExtractor

    pre = FbankPreprocessing(
        sample_rate=8000, num_mel_bins=64, max_length=300, mean=-3.5, std=2.25, do_normalize=False
    )
    data = pre.to_json()
    assert data["sampling_rate"] == 8000
    assert data["feature_extractor_type"] == "ASTFeatureExtractor"
    assert FbankPreprocessing.from_json(json.loads(json.dumps(data))) == pre
    assert FbankPreprocessing.from_json({}) == FbankPreprocessing()

    path = pre.save(tmp_path)
    assert path == tmp_path / PROCESSOR_FILE
    hf = ASTFeatureExtractor.from_pretrained(tmp_path)
    assert (hf.sampling_rate, hf.num_mel_bins, hf.max_length) == (8000, 64, 300)
    assert (hf.mean, hf.std, hf.do_normalize) == (-3.5, 2.25, False)

    ast_extractor(SHORT).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / PROCESSOR_FILE).read_text(encoding="utf-8"))
    assert FbankPreprocessing.from_json(saved) == SHORT


def test_from_json_over_base_ignores_unknown_keys() -> None:
    pre = FbankPreprocessing.from_json(
        {"max_length": 512.0, "padding_value": 0.0, "sample_rate": 1}, SHORT
    )
    assert pre == FbankPreprocessing(max_length=512)


@pytest.mark.parametrize(
    "data",
    [
        {"max_length": "long"},
        {"max_length": 10.5},
        {"num_mel_bins": True},
        {"num_mel_bins": 3},
        {"sampling_rate": 0},
        {"mean": None},
        {"std": 0.0},
        {"do_normalize": "yes"},
    ],
    ids=[
        "max-length-text",
        "max-length-fraction",
        "mel-bins-bool",
        "mel-bins-too-few",
        "rate-zero",
        "mean-null",
        "std-zero",
        "normalize-text",
    ],
)
def test_from_json_rejects_bad_values(data: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(data)).replace("sampling_rate", "sample_rate")):
        FbankPreprocessing.from_json(data)


# -- features: equal to torchaudio and to the HF extractor ---------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_length", [64, 198, 256], ids=lambda n: f"max_length={n}")
def test_batched_equals_torchaudio_item_by_item(device: str, max_length: int) -> None:
    pre = FbankPreprocessing(max_length=max_length)
    wave = music_batch(3, 2.0)  # 198 frames: truncated, exact, padded
    expected = torchaudio_reference(wave, pre)
    module = KaldiFbank(pre).to(device)
    got = module(wave.to(device)).cpu()
    assert got.shape == (3, max_length, 128)
    assert got.dtype == torch.float32
    # on CPU the same float32 arithmetic in a different order; cuFFT rounds differently
    atol = 1e-5 if device == "cpu" else 1e-4
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)
    if max_length > 198:  # padded frames are zeros before normalisation
        padding = torch.full_like(got[:, 198:], -AST_MEAN / (2 * AST_STD))
        torch.testing.assert_close(got[:, 198:], padding)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_equals_one_by_one(device: str) -> None:
    module = KaldiFbank(SHORT).to(device)
    wave = music_batch(4, 1.5).to(device)
    together = module(wave)
    alone = torch.cat([module(item[None]) for item in wave])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    assert together.device.type == device


def test_equals_ast_feature_extractor() -> None:
    from transformers.utils import is_speech_available

    # With torchaudio installed, ASTFeatureExtractor computes through kaldi.fbank, as here. Its
    # numpy fallback (used without torchaudio) works in float64 with its own mel filters and
    # agrees with this path only to about 1e-4 after normalisation.
    assert is_speech_available()
    wave = music_batch(3, 1.0)
    for pre in (SHORT, FbankPreprocessing(max_length=50, mean=-2.0, std=3.0)):
        hf = ast_extractor(pre)(wave.numpy(), sampling_rate=RATE, return_tensors="pt")
        torch.testing.assert_close(KaldiFbank(pre)(wave), hf["input_values"], atol=1e-4, rtol=0)


def test_without_normalisation_gives_log_energies() -> None:
    pre = FbankPreprocessing(max_length=120, do_normalize=False)
    wave = music_batch(2, 1.0)
    got = KaldiFbank(pre)(wave)
    torch.testing.assert_close(got, torchaudio_reference(wave, pre), atol=1e-5, rtol=0)
    assert got[:, 98:].abs().max() == 0  # 98 frames of audio, then zero padding


def test_silence_is_floored_not_infinite() -> None:
    got = KaldiFbank(SHORT)(torch.zeros(1, SHORT.window_samples))
    assert torch.isfinite(got).all()
    eps = torch.finfo(torch.float32).eps
    expected = (np.log(eps) - AST_MEAN) / (2 * AST_STD)
    torch.testing.assert_close(got[0, 0], torch.full((128,), float(expected)))


def test_float64_input_and_framing() -> None:
    wave = music_batch(2, 1.0)
    module = KaldiFbank(SHORT)
    torch.testing.assert_close(module(wave.double()), module(wave))
    frames = frame_signal(wave, 400, 160)
    assert frames.shape == (2, 98, 400)
    torch.testing.assert_close(frames[1, 3], wave[1, 480:880])


def test_too_short_for_one_frame() -> None:
    with pytest.raises(ValueError, match="at least 400 samples"):
        KaldiFbank(SHORT)(torch.zeros(2, 399))


def test_make_features_picks_the_module() -> None:
    fbank = make_features(SHORT)
    assert isinstance(fbank, KaldiFbank)
    assert fbank.input_name == "input_values"
    image = make_features(AudioPreprocessing(image_size=(32, 32)))
    assert isinstance(image, LogMelImage)
    assert image.input_name == "pixel_values"


# -- AST checkpoints -----------------------------------------------------------------------------


def tiny_ast(labels: tuple[str, ...] = GENRES, max_length: int = MAX_LENGTH) -> torch.nn.Module:
    from transformers import ASTConfig, ASTForAudioClassification

    torch.manual_seed(0)
    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=16,
        frequency_stride=10,
        time_stride=10,
        max_length=max_length,
        num_mel_bins=128,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    return ASTForAudioClassification(config).eval()


@pytest.fixture(scope="module")
def ast_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny AST over 1.28 s windows with its HF feature extractor."""
    directory = tmp_path_factory.mktemp("tiny-ast")
    tiny_ast().save_pretrained(directory)  # type: ignore[operator]
    ast_extractor(SHORT).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def ast_model(ast_checkpoint: Path) -> LoadedModel:
    return load_model(str(ast_checkpoint))


def test_load_ast_checkpoint(ast_checkpoint: Path, ast_model: LoadedModel) -> None:
    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    assert ast_model.labels == GENRES
    assert ast_model.preprocessing == SHORT
    assert ast_model.preprocessing.sample_rate == RATE
    assert ast_model.source == str(ast_checkpoint)
    assert ast_model.trained is True
    assert isinstance(ast_model.classifier, GenreClassifier)
    assert isinstance(ast_model.classifier.features, KaldiFbank)
    assert type(ast_model.classifier.model) is ASTForAudioClassification
    assert not ast_model.classifier.training

    wave = music_batch(3, SHORT.window_seconds)
    extractor = ASTFeatureExtractor.from_pretrained(ast_checkpoint)
    model = ASTForAudioClassification.from_pretrained(ast_checkpoint).eval()
    with torch.inference_mode():
        inputs = extractor(wave.numpy(), sampling_rate=RATE, return_tensors="pt")
        expected = torch.softmax(model(**inputs).logits, dim=-1)
        probs = ast_model.classifier(wave)
    assert probs.shape == (3, len(GENRES))
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(3))
    torch.testing.assert_close(probs, expected, atol=1e-4, rtol=0)
    assert not torch.allclose(probs[0], probs[1], atol=1e-6)  # the items differ


def test_ast_without_processor_file_uses_config_shape(tmp_path: Path) -> None:
    tiny_ast(max_length=96).save_pretrained(tmp_path)  # type: ignore[operator]
    assert not (tmp_path / PROCESSOR_FILE).exists()
    loaded = load_model(str(tmp_path))
    assert loaded.preprocessing == FbankPreprocessing(max_length=96)
    probs = loaded.classifier(music_batch(2, loaded.preprocessing.window_seconds))
    assert probs.shape == (2, len(GENRES))


def test_save_checkpoint_with_fbank_preprocessing(tmp_path: Path) -> None:
    pre = FbankPreprocessing(max_length=MAX_LENGTH, mean=-5.0, std=3.0)
    directory = save_checkpoint(tiny_ast(), pre, tmp_path / "ckpt")
    assert (directory / PROCESSOR_FILE).is_file()
    assert load_model(str(directory)).preprocessing == pre


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"max_length": 1024}, "max_length 1024, the model config 128"),
        ({"num_mel_bins": 64}, "num_mel_bins 64, the model config 128"),
        ({"std": -1.0}, "std must be > 0"),
    ],
    ids=["max-length", "mel-bins", "std"],
)
def test_unusable_processor_raises_model_load_error(
    tmp_path: Path, content: dict[str, object], message: str
) -> None:
    tiny_ast().save_pretrained(tmp_path)  # type: ignore[operator]
    (tmp_path / PROCESSOR_FILE).write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(str(tmp_path))
    assert "unusable audio preprocessing" in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_audio_family_without_ast_features_is_refused(tmp_path: Path) -> None:
    from transformers import Wav2Vec2Config

    Wav2Vec2Config(num_labels=2).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="'wav2vec2' audio-classification") as info:
        load_model(str(tmp_path))
    assert "ASTFeatureExtractor" in str(info.value)


# -- end to end ----------------------------------------------------------------------------------


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(engine={"hop_s": 0.25})


def test_classify_audio_with_ast(config: Config, ast_model: LoadedModel) -> None:
    params = session_params(config, ast_model)
    assert params.model_rate == RATE
    assert params.window_samples == SHORT.window_samples == 20480
    assert params.hop_samples == 4000
    runner = InferenceRunner(ast_model, torch.device("cpu"), max_batch=4)
    audio = music(3.0, rate=RATE, channels=1, seed=5)[:, 0].copy()
    updates, probs, segments, padded = classify_audio(audio, runner, params)
    count = (audio.size - params.window_samples) // params.hop_samples + 1
    assert padded is False
    assert len(updates) == count == 7
    assert probs.shape == (count, len(GENRES))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    ends = [u["stream_time_s"] for u in updates]
    np.testing.assert_allclose(ends, [1.28 + 0.25 * k for k in range(count)], atol=1e-3)
    sliced = np.stack([audio[k * 4000 : k * 4000 + params.window_samples] for k in range(count)])
    np.testing.assert_allclose(probs, runner.run(sliced), atol=1e-5, rtol=0)
    assert {s.genre for s in segments} <= set(GENRES)


def test_classify_file_with_ast(tmp_path: Path, config: Config, ast_model: LoadedModel) -> None:
    path = encode_audio(tmp_path / "clip.wav", music(3.0, rate=44100, channels=2, seed=2), 44100)
    report = classify_file(str(path), config, model=ast_model)
    assert report.labels == GENRES
    assert report.duration_s == pytest.approx(3.0, abs=0.05)
    samples = round(report.duration_s * RATE)  # decoded at the model's 16 kHz
    assert len(report.windows) == (samples - 20480) // 4000 + 1
    assert report.window_probs.shape == (len(report.windows), len(GENRES))
    assert report.windows[0]["stream_time_s"] == pytest.approx(1.28, abs=1e-3)


@pytest.mark.parametrize(
    ("device", "half"),
    [
        pytest.param("cpu", False, id="cpu"),
        pytest.param("cuda", False, marks=cuda_param().marks, id="cuda"),
        pytest.param("cuda", True, marks=cuda_param().marks, id="cuda-half"),
    ],
)
def test_runner_on_device_matches_cpu(device: str, half: bool, ast_checkpoint: Path) -> None:
    windows = music_batch(3, SHORT.window_seconds).numpy()
    cpu = InferenceRunner(load_model(str(ast_checkpoint)), torch.device("cpu")).run(windows)
    runner = InferenceRunner(load_model(str(ast_checkpoint)), torch.device(device), half=half)
    got = runner.run(windows)
    assert got.shape == (3, len(GENRES))
    np.testing.assert_allclose(got, cpu, atol=2e-3 if half else 1e-4, rtol=0)
