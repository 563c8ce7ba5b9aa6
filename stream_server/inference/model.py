"""Loading genre models: Hugging Face image-classification checkpoints over log-mel images, and
audio-classification checkpoints over Kaldi filter banks (Audio Spectrogram Transformer).

A checkpoint is a directory (or hub id) that ``from_pretrained`` reads: ``config.json`` with
``id2label`` and the weights. The config's ``model_type`` picks the family:

- Image classification: ``ViTForImageClassification`` is loaded as itself; any other
  image-classification family goes through ``AutoModelForImageClassification``. Beside the
  weights, ``audio_preprocessing.json`` (see :mod:`stream_server.inference.features`) says how audio
  becomes images; without it the ViT recipe's defaults apply, with the image size, channels and
  normalisation taken from the checkpoint's own config / ``preprocessor_config.json`` when present.
- Hybrid ViT: an image-classification checkpoint whose ``audio_preprocessing.json`` has
  ``"kind": "musicnn-tokens"`` takes the tokens of the frozen, pretrained musicnn front-end
  (:mod:`stream_server.inference.musicnn_tokens`, the weights folder the file names) as a
  ``(batch, features, 1, tokens)`` image of 1x1 patches. The shipped default is one.
- Audio classification over AST filter banks: ``audio-spectrogram-transformer`` is loaded with
  ``ASTForAudioClassification``; another audio-classification family is accepted only when its
  ``preprocessor_config.json`` names ``ASTFeatureExtractor``, and goes through
  ``AutoModelForAudioClassification``. The filter-bank settings (see
  :mod:`stream_server.inference.fbank`) come from ``preprocessor_config.json``, else AST's defaults;
  an AST's ``max_length`` and ``num_mel_bins`` must agree with its config.

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
from stream_server.inference.fbank import PROCESSOR_FILE, FbankPreprocessing
from stream_server.inference.features import Features, LogMelImage, Preprocessing, make_features
from stream_server.inference.preprocessing import (
    MUSICNN_KIND,
    PREPROCESSING_FILE,
    AudioPreprocessing,
    MusicnnPreprocessing,
)

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
    ``(batch, len(labels))`` float32 probabilities (softmax over the model's logits). The
    features go to the model as its ``features.input_name`` keyword argument.
    """

    def __init__(self, features: Features, model: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.model = model

    def forward(self, wave: Tensor) -> Tensor:
        return self.from_features(self.features(wave))

    def from_features(self, inputs: Tensor) -> Tensor:
        """The model alone: what ``features`` computed -> ``(batch, len(labels))``
        probabilities (the features cast to the model's precision)."""
        inputs = inputs.to(next(self.model.parameters()).dtype)
        logits = self.model(**{self.features.input_name: inputs}).logits
        return torch.softmax(logits.float(), dim=-1)


@dataclass(frozen=True)
class LoadedModel:
    """A classifier ready to run, with what the server needs to know about it.

    ``speech_detector``, when set, is run beside the classifier on every batch: ``forward(wave)``
    takes the same ``(batch, samples)`` windows and returns ``(batch,)`` speech probabilities
    (see :mod:`stream_server.core.gate`). ``None``: no window is judged speech.
    """

    classifier: GenreClassifier
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    source: str
    trained: bool = True
    speech_detector: nn.Module | None = None


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


def _preprocessing_for(
    model_config: Any, directory: Path | None
) -> AudioPreprocessing | MusicnnPreprocessing:
    """Audio preprocessing for a checkpoint: its JSON file, else defaults fitted to its config.

    A file of kind ``musicnn-tokens`` makes a hybrid ViT: the checkpoint's input is the frozen
    musicnn front-end's tokens (:mod:`stream_server.inference.musicnn_tokens`).
    """
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
        processor = _read_json(directory / PROCESSOR_FILE)
        if processor:
            stats: dict[str, Any] = {
                k: processor[k] for k in ("image_mean", "image_std") if k in processor
            }
            if stats:
                base = AudioPreprocessing.from_json(stats, base)
        own = _read_json(directory / PREPROCESSING_FILE)
        if own and own.get("kind") == MUSICNN_KIND:
            return MusicnnPreprocessing.from_json(own)
        if own:
            return AudioPreprocessing.from_json(own, base)
    return base


#: The ``model_type`` of Audio Spectrogram Transformer checkpoints.
AST_MODEL_TYPE = "audio-spectrogram-transformer"


def _fbank_preprocessing_for(model_config: Any, directory: Path | None) -> FbankPreprocessing:
    """Filter-bank preprocessing for an audio checkpoint.

    ``preprocessor_config.json`` over AST's defaults; for an AST, the defaults take ``max_length``
    and ``num_mel_bins`` from its config, and the file must agree with them (the model's patch
    grid is built for exactly that many frames and bins). Raises ``ValueError`` otherwise.
    """
    is_ast = model_config.model_type == AST_MODEL_TYPE
    shape = {
        name: int(getattr(model_config, name))
        for name in ("max_length", "num_mel_bins")
        if is_ast and getattr(model_config, name, None) is not None
    }
    pre = FbankPreprocessing.from_json(shape)
    processor = _read_json(directory / PROCESSOR_FILE) if directory is not None else None
    if processor:
        pre = FbankPreprocessing.from_json(processor, pre)
    for name, expected in shape.items():
        got = getattr(pre, name)
        if got != expected:
            raise ValueError(f"{PROCESSOR_FILE} has {name} {got}, the model config {expected}")
    return pre


def _audio_family(model_type: str) -> bool:
    """Whether ``model_type`` is an audio-classification family rather than an image one."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    )

    return (
        model_type in MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES
        and model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    )


def _takes_fbank(model_type: str, directory: Path | None) -> bool:
    """Whether an audio checkpoint takes AST filter banks: an AST, or its processor says so."""
    if model_type == AST_MODEL_TYPE:
        return True
    processor = _read_json(directory / PROCESSOR_FILE) if directory is not None else None
    return (
        processor is not None and processor.get("feature_extractor_type") == "ASTFeatureExtractor"
    )


def load_model(spec: str) -> LoadedModel:
    """Load a checkpoint directory or hub id through ``from_pretrained``.

    Raises :class:`ModelLoadError` with the reason when it cannot be found or loaded, or when it
    is an audio-classification model whose inputs are not AST filter banks.
    """
    from transformers import (
        ASTForAudioClassification,
        AutoConfig,
        AutoModelForAudioClassification,
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
    where = "directory" if directory else "checkpoint (directory or hub id)"
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model {where} {spec!r}: {exc}") from None
    model_type = str(config.model_type)
    audio = _audio_family(model_type)
    if audio and not _takes_fbank(model_type, directory):
        raise ModelLoadError(
            f"model {spec!r} is a {model_type!r} audio-classification model; only those that "
            f"take AST filter banks ({AST_MODEL_TYPE!r}, or {PROCESSOR_FILE} naming "
            "ASTFeatureExtractor) are supported"
        )
    try:
        if model_type == "vit":
            model = ViTForImageClassification.from_pretrained(source)
        elif model_type == AST_MODEL_TYPE:
            model = ASTForAudioClassification.from_pretrained(source)
        elif audio:
            model = AutoModelForAudioClassification.from_pretrained(source)
        else:
            model = AutoModelForImageClassification.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model {where} {spec!r}: {exc}") from None
    id2label = getattr(config, "id2label", None) or {}
    labels = tuple(str(id2label[i]) for i in sorted(id2label, key=int))
    if not labels:
        raise ModelLoadError(f"model {spec!r} has no id2label in its config")
    try:
        pre: Preprocessing = (
            _fbank_preprocessing_for(config, directory)
            if audio
            else _preprocessing_for(config, directory)
        )
        features = make_features(pre)
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


def save_checkpoint(model: nn.Module, pre: Preprocessing, directory: str | Path) -> Path:
    """``save_pretrained`` plus the preprocessing file (``pre.save``); returns the directory."""
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


#: The model genrecast ships: trained by ``genrecast train`` on the ten benchmark genres (see the
#: model card ``README.md`` in this directory).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "default_model"

#: ``[model] path`` value that selects the untrained placeholder (plumbing tests and benchmarks).
UNTRAINED = "untrained"


def resolve_model(spec: str) -> LoadedModel:
    """The configured model.

    ``spec`` is a checkpoint directory or hub id; empty means the shipped default model
    (:data:`DEFAULT_MODEL_DIR`) and ``"untrained"`` the random placeholder, which logs a warning.
    """
    if spec == UNTRAINED or (not spec and not DEFAULT_MODEL_DIR.is_dir()):
        log.warning(
            "using an UNTRAINED model ([model] path = %r): its genre outputs are meaningless",
            spec,
        )
        return untrained_model()
    return load_model(spec or str(DEFAULT_MODEL_DIR))
