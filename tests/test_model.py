"""Tests for stream_server.inference.model: checkpoints on disk, preprocessing fallbacks, load
errors."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stream_server.errors import ModelLoadError
from stream_server.inference.features import LogMelImage
from stream_server.inference.model import (
    DEFAULT_GENRES,
    UNTRAINED,
    GenreClassifier,
    LoadedModel,
    _preprocessing_for,
    load_model,
    resolve_model,
    save_checkpoint,
    tiny_vit,
    untrained_model,
)
from stream_server.inference.preprocessing import PREPROCESSING_FILE, AudioPreprocessing
from tests.helpers.audio import music
from tests.helpers.constants import LABELS

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def windows(pre: AudioPreprocessing, batch: int = 3) -> torch.Tensor:
    items = [
        music(pre.window_seconds, rate=pre.sample_rate, channels=1, seed=s)[:, 0]
        for s in range(batch)
    ]
    return torch.from_numpy(np.stack(items))


def save_bare(model: torch.nn.Module, directory: Path) -> Path:
    """``save_pretrained`` only: no audio_preprocessing.json beside the weights."""
    model.save_pretrained(directory)  # type: ignore[operator]
    assert not (directory / PREPROCESSING_FILE).exists()
    return directory


def vit(image_size: int | list[int], num_channels: int = 3, labels: tuple[str, ...] = LABELS):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=image_size,
        patch_size=16,
        num_channels=num_channels,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    return ViTForImageClassification(config).eval()


# -- round trip ----------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    labels = ("rock", "ambient", "blues", "zydeco", "jazz")  # not sorted: order must be kept
    pre = AudioPreprocessing(image_size=(64, 96), window_seconds=2.0, top_db=70.0)
    model, pre = tiny_vit(labels, pre, seed=3)
    directory = save_checkpoint(model, pre, tmp_path / "ckpt")
    assert directory == tmp_path / "ckpt"
    assert (directory / "config.json").is_file()
    assert (directory / PREPROCESSING_FILE).is_file()

    loaded = load_model(str(directory))
    assert isinstance(loaded, LoadedModel)
    assert loaded.labels == labels
    assert loaded.preprocessing == pre
    assert loaded.source == str(directory)
    assert loaded.trained is True
    assert isinstance(loaded.classifier, GenreClassifier)
    assert not loaded.classifier.training

    wave = windows(pre)
    features = LogMelImage(pre)
    with torch.inference_mode():
        images = features(wave)
        expected_logits = model(pixel_values=images).logits
        got_logits = loaded.classifier.model(pixel_values=loaded.classifier.features(wave)).logits
        probs = loaded.classifier(wave)
        in_memory = GenreClassifier(features, model).eval()(wave)
    torch.testing.assert_close(got_logits, expected_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(probs, torch.softmax(expected_logits, dim=-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(probs, in_memory, atol=1e-6, rtol=0)
    assert probs.shape == (3, len(labels))
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(3))


def test_preprocessing_file_wins_over_config(tmp_path: Path) -> None:
    model, pre = tiny_vit(LABELS, AudioPreprocessing(image_size=(64, 64)))
    directory = save_checkpoint(model, pre, tmp_path)
    custom = {"window_seconds": 3.0, "n_mels": 96, "image_mean": [0.1] * 3, "unknown": True}
    (directory / PREPROCESSING_FILE).write_text(json.dumps(custom), encoding="utf-8")
    (directory / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}), encoding="utf-8"
    )
    loaded = load_model(str(directory))
    assert loaded.preprocessing.window_seconds == 3.0
    assert loaded.preprocessing.n_mels == 96
    assert loaded.preprocessing.image_mean == (0.1, 0.1, 0.1)
    assert loaded.preprocessing.image_std == tuple(IMAGENET_STD)  # from the processor file
    assert loaded.preprocessing.image_size == (64, 64)  # from the model config


# -- fallbacks without audio_preprocessing.json --------------------------------------------------


@pytest.mark.parametrize("image_size", [96, [96, 96]], ids=["int", "list"])
def test_missing_preprocessing_uses_defaults_and_config_size(
    tmp_path: Path, image_size: int | list[int]
) -> None:
    loaded = load_model(str(save_bare(vit(image_size), tmp_path)))
    expected = AudioPreprocessing(image_size=(96, 96))
    assert loaded.preprocessing == expected
    assert loaded.preprocessing.window_seconds == 10.0
    assert loaded.preprocessing.sample_rate == 22050
    probs = loaded.classifier(windows(loaded.preprocessing, batch=1))
    assert probs.shape == (1, len(LABELS))


def test_missing_preprocessing_reads_processor_stats(tmp_path: Path) -> None:
    directory = save_bare(vit(96), tmp_path)
    processor = {
        "image_processor_type": "ViTImageProcessor",
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "size": {"height": 224, "width": 224},
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    loaded = load_model(str(directory))
    pre = loaded.preprocessing
    assert pre.image_mean == tuple(IMAGENET_MEAN)
    assert pre.image_std == tuple(IMAGENET_STD)
    assert pre.image_size == (96, 96)
    torch.testing.assert_close(loaded.classifier.features.mean, torch.tensor(IMAGENET_MEAN))
    torch.testing.assert_close(loaded.classifier.features.std, torch.tensor(IMAGENET_STD))


def test_processor_without_stats_keeps_defaults(tmp_path: Path) -> None:
    directory = save_bare(vit(64), tmp_path)
    (directory / "preprocessor_config.json").write_text(
        json.dumps({"do_resize": True}), encoding="utf-8"
    )
    assert load_model(str(directory)).preprocessing == AudioPreprocessing(image_size=(64, 64))


def test_single_channel_model(tmp_path: Path) -> None:
    loaded = load_model(str(save_bare(vit(64, num_channels=1), tmp_path)))
    pre = loaded.preprocessing
    assert pre.num_channels == 1
    assert pre.image_mean == (0.5,)
    assert pre.image_std == (0.5,)
    assert loaded.classifier(windows(pre, batch=2)).shape == (2, len(LABELS))


@pytest.mark.parametrize(
    ("text", "message"),
    [("{not json", "cannot read"), ("[1, 2]", "must hold a JSON object")],
    ids=["invalid", "not-an-object"],
)
def test_bad_json_beside_weights(tmp_path: Path, text: str, message: str) -> None:
    model, pre = tiny_vit(LABELS, AudioPreprocessing(image_size=(64, 64)))
    directory = save_checkpoint(model, pre, tmp_path)
    (directory / PREPROCESSING_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(str(directory))
    assert PREPROCESSING_FILE in str(info.value)


@pytest.mark.parametrize(
    ("num_channels", "filename", "content"),
    [
        (1, "preprocessor_config.json", {"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}),
        (3, PREPROCESSING_FILE, {"image_size": "big"}),
    ],
    ids=["stats-for-3-channels-on-1-channel-model", "bad-image-size"],
)
def test_unusable_preprocessing_raises_model_load_error(
    tmp_path: Path, num_channels: int, filename: str, content: dict[str, object]
) -> None:
    directory = save_bare(vit(32, num_channels=num_channels), tmp_path)
    (directory / filename).write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(ModelLoadError) as info:
        load_model(str(directory))
    assert str(directory) in str(info.value)


def test_preprocessing_for_hub_checkpoint_uses_config_only() -> None:
    from transformers import ViTConfig

    pre = _preprocessing_for(ViTConfig(image_size=48, num_channels=1), None)
    assert pre == AudioPreprocessing(
        image_size=(48, 48), num_channels=1, image_mean=(0.5,), image_std=(0.5,)
    )


# -- other families ------------------------------------------------------------------------------


def test_non_vit_family_goes_through_auto(tmp_path: Path) -> None:
    from transformers import DeiTConfig, DeiTForImageClassification

    labels = ("polka", "techno", "fado")
    torch.manual_seed(0)
    config = DeiTConfig(
        image_size=64,
        patch_size=16,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = DeiTForImageClassification(config).eval()
    directory = save_bare(model, tmp_path)
    loaded = load_model(str(directory))
    assert type(loaded.classifier.model) is DeiTForImageClassification
    assert loaded.labels == labels
    assert loaded.preprocessing.image_size == (64, 64)
    wave = windows(loaded.preprocessing, batch=2)
    with torch.inference_mode():
        expected = torch.softmax(
            model(pixel_values=LogMelImage(loaded.preprocessing)(wave)).logits, -1
        )
        probs = loaded.classifier(wave)
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)


def test_family_without_image_size_uses_default_size(tmp_path: Path) -> None:
    from transformers import ResNetConfig, ResNetForImageClassification

    labels = ("dub", "grime")
    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        num_labels=2,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    assert getattr(config, "image_size", None) is None
    directory = save_bare(ResNetForImageClassification(config).eval(), tmp_path)
    loaded = load_model(str(directory))
    assert type(loaded.classifier.model) is ResNetForImageClassification
    assert loaded.labels == labels
    assert loaded.preprocessing == AudioPreprocessing()
    probs = loaded.classifier(windows(loaded.preprocessing, batch=1))
    assert probs.shape == (1, 2)


def test_default_labels_taken_verbatim(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=32,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    directory = save_bare(ViTForImageClassification(config), tmp_path)
    assert load_model(str(directory)).labels == ("LABEL_0", "LABEL_1", "LABEL_2")


# -- errors --------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and an empty hub cache for the duration of a test."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


@pytest.mark.usefixtures("offline")
def test_missing_directory(tmp_path: Path) -> None:
    spec = str(tmp_path / "no-such-checkpoint")
    with pytest.raises(ModelLoadError) as info:
        load_model(spec)
    assert repr(spec) in str(info.value)


def test_directory_without_weights(tmp_path: Path) -> None:
    directory = save_bare(vit(32), tmp_path)
    for weights in directory.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelLoadError, match="directory") as info:
        load_model(str(directory))
    assert str(directory) in str(info.value)


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="directory") as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(info.value)


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("spec", ["genrecast-tests/definitely-not-a-model", "not-a-model"])
def test_unknown_hub_id_offline(spec: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model(spec)
    message = str(info.value)
    assert repr(spec) in message
    assert "hub id" in message
    assert time.perf_counter() - start < 5.0  # offline: no network retries


# -- untrained fallback --------------------------------------------------------------------------


def test_untrained_model() -> None:
    loaded = untrained_model()
    assert loaded.trained is False
    assert loaded.labels == DEFAULT_GENRES
    assert len(DEFAULT_GENRES) == 10
    assert loaded.source == "untrained"
    assert loaded.classifier.model.config.num_labels == 10
    pre = loaded.preprocessing
    probs = loaded.classifier(windows(pre, batch=1))
    assert probs.shape == (1, 10)
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(1))
    # seeded: two fallbacks give the same outputs
    torch.testing.assert_close(untrained_model().classifier(windows(pre, batch=1)), probs)


def test_resolve_model_untrained_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stream_server.inference.model"):
        loaded = resolve_model(UNTRAINED)
    assert loaded.trained is False
    assert loaded.labels == DEFAULT_GENRES
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "UNTRAINED" in warnings[0].getMessage()
    assert warnings[0].name == "stream_server.inference.model"


def test_resolve_model_with_spec(tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stream_server.inference.model"):
        loaded = resolve_model(str(tiny_checkpoint))
    assert loaded.trained is True
    assert loaded.labels == LABELS
    assert loaded.preprocessing.window_seconds == 2.0
    assert not [r for r in caplog.records if r.name == "stream_server.inference.model"]


def test_home_relative_directory_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, pre = tiny_vit(LABELS, AudioPreprocessing(image_size=(64, 64)))
    save_checkpoint(model, pre, tmp_path / "ckpt")
    monkeypatch.setenv("HOME", str(tmp_path))
    loaded = load_model("~/ckpt")
    assert loaded.labels == LABELS
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("~/missing")
