"""Loading genre models: Hugging Face image-classification checkpoints over log-mel images.

A checkpoint is a directory (or hub id) that ``from_pretrained`` reads: ``config.json`` with
``id2label`` and the weights. ``ViTForImageClassification`` is loaded as itself; any other
image-classification family goes through ``AutoModelForImageClassification``. Beside the weights,
``audio_preprocessing.json`` (see :mod:`stream_server.features`) says how audio becomes images;
without it the ViT recipe's defaults apply, with the image size, channels and normalisation taken
from the checkpoint's own config / ``preprocessor_config.json`` when present.

:class:`GenreClassifier` is the whole path from ``(batch, samples)`` audio to ``(batch, labels)``
probabilities, so live serving, offline classification and evaluation share one code path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stream_server.errors import ModelLoadError
from stream_server.features import PREPROCESSING_FILE, AudioPreprocessing, LogMelImage

log = logging.getLogger(__name__)

#: The genres of the ten-class benchmark, used for the untrained fallback model.
DEFAULT_GENRES = (
    "blues",
    "classical",
    "country",
    "disco",
    "hiphop",
    "jazz",
    "metal",
    "pop",
    "reggae",
    "rock",
)


class GenreClassifier(nn.Module):
    """Audio windows in, genre probabilities out.

    ``forward(wave)``: ``(batch, samples)`` float32 at ``pre.sample_rate`` Hz ->
    ``(batch, len(labels))`` float32 probabilities (softmax over the model's logits).
    """

    def __init__(self, features: LogMelImage, model: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.model = model

    def forward(self, wave: Tensor) -> Tensor:
        images = self.features(wave)
        images = images.to(next(self.model.parameters()).dtype)
        logits = self.model(pixel_values=images).logits
        return torch.softmax(logits.float(), dim=-1)


@dataclass(frozen=True)
class LoadedModel:
    """A classifier ready to run, with what the server needs to know about it."""

    classifier: GenreClassifier
    labels: tuple[str, ...]
    preprocessing: AudioPreprocessing
    source: str
    trained: bool = True


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return data


def _preprocessing_for(model_config: Any, directory: Path | None) -> AudioPreprocessing:
    """Audio preprocessing for a checkpoint: its JSON file, else defaults fitted to its config."""
    base = AudioPreprocessing()
    size = getattr(model_config, "image_size", None)
    if size is not None:
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        base = replace(base, image_size=hw)
    channels = int(getattr(model_config, "num_channels", base.num_channels))
    if channels != base.num_channels:
        base = replace(
            base,
            num_channels=channels,
            image_mean=(0.5,) * channels,
            image_std=(0.5,) * channels,
        )
    if directory is not None:
        processor = _read_json(directory / "preprocessor_config.json")
        if processor:
            stats: dict[str, Any] = {
                k: processor[k] for k in ("image_mean", "image_std") if k in processor
            }
            if stats:
                base = AudioPreprocessing.from_json(stats, base)
        own = _read_json(directory / PREPROCESSING_FILE)
        if own:
            return AudioPreprocessing.from_json(own, base)
    return base


def load_model(spec: str) -> LoadedModel:
    """Load a checkpoint directory or hub id through ``from_pretrained``.

    Raises :class:`ModelLoadError` with the reason when it cannot be found or loaded.
    """
    from transformers import (
        AutoConfig,
        AutoModelForImageClassification,
        ViTForImageClassification,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    local = Path(spec).expanduser()
    directory = local if local.is_dir() else None
    if directory is None and spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"model directory {spec!r} does not exist")
    source = str(directory) if directory else spec
    try:
        config = AutoConfig.from_pretrained(source)
        if config.model_type == "vit":
            model = ViTForImageClassification.from_pretrained(source)
        else:
            model = AutoModelForImageClassification.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        where = "directory" if directory else "checkpoint (directory or hub id)"
        raise ModelLoadError(f"cannot load model {where} {spec!r}: {exc}") from None
    id2label = getattr(config, "id2label", None) or {}
    labels = tuple(str(id2label[i]) for i in sorted(id2label, key=int))
    if not labels:
        raise ModelLoadError(f"model {spec!r} has no id2label in its config")
    try:
        pre = _preprocessing_for(config, directory)
        features = LogMelImage(pre)
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"unusable audio preprocessing for model {spec!r}: {exc}") from None
    model.eval()
    classifier = GenreClassifier(features, model).eval()
    return LoadedModel(classifier, labels, pre, source=spec)


def tiny_vit(
    labels: tuple[str, ...] = DEFAULT_GENRES,
    pre: AudioPreprocessing | None = None,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    layers: int = 2,
    patch: int = 16,
) -> tuple[nn.Module, AudioPreprocessing]:
    """A small randomly initialised ViT classifier and the preprocessing it expects.

    Used for the untrained fallback and for test checkpoints; ``save_pretrained`` it and load it
    back with :func:`load_model` like any other checkpoint.
    """
    from transformers import ViTConfig, ViTForImageClassification

    pre = pre or AudioPreprocessing(image_size=(128, 128))
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=list(pre.image_size),
        patch_size=patch,
        num_channels=pre.num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    return ViTForImageClassification(config).eval(), pre


def save_checkpoint(model: nn.Module, pre: AudioPreprocessing, directory: str | Path) -> Path:
    """``save_pretrained`` plus the audio preprocessing file; returns the directory."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)  # type: ignore[operator]
    pre.save(directory)
    return directory


def untrained_model() -> LoadedModel:
    """A randomly initialised model over the ten benchmark genres: its genres mean nothing."""
    model, pre = tiny_vit()
    classifier = GenreClassifier(LogMelImage(pre), model).eval()
    return LoadedModel(classifier, DEFAULT_GENRES, pre, source="untrained", trained=False)


def resolve_model(spec: str) -> LoadedModel:
    """The configured model: ``spec`` if given, else the untrained fallback (with a warning)."""
    if spec:
        return load_model(spec)
    log.warning(
        "no model configured ([model] path in config.toml): using an UNTRAINED model; "
        "its genre outputs are meaningless"
    )
    return untrained_model()
