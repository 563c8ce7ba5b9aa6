"""How a window of audio becomes a log-mel image: the settings alone, without torch.

:class:`AudioPreprocessing` is saved beside a checkpoint as ``audio_preprocessing.json``; the
feature code that applies it lives in :mod:`stream_server.inference.features`. Training recipes and
the command-line parser read it without loading torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

#: File beside a checkpoint that records how its audio was turned into images.
PREPROCESSING_FILE = "audio_preprocessing.json"


@dataclass(frozen=True)
class AudioPreprocessing:
    """How a window of audio becomes a model input.

    Defaults follow the mel-spectrogram ViT recipe: 22050 Hz, ``n_fft`` 2048, hop 512 samples,
    128 mel bands up to 8000 Hz, power in dB against the window's maximum with an 80 dB floor,
    resized to a 224x224 three-channel image normalised with mean 0.5 / std 0.5.
    """

    sample_rate: int = 22050
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float = 8000.0
    top_db: float = 80.0
    window_seconds: float = 10.0
    image_size: tuple[int, int] = (224, 224)
    num_channels: int = 3
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)

    @property
    def window_samples(self) -> int:
        """Samples in one window at ``sample_rate``."""
        return round(self.window_seconds * self.sample_rate)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_size"] = list(self.image_size)
        data["image_mean"] = list(self.image_mean)
        data["image_std"] = list(self.image_std)
        return data

    @classmethod
    def from_json(
        cls, data: dict[str, Any], base: AudioPreprocessing | None = None
    ) -> AudioPreprocessing:
        """Values from ``data`` over ``base`` (default: the defaults); unknown keys ignored."""
        values = asdict(base or cls())
        names = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key in names:
                values[key] = value
        size = values["image_size"]
        values["image_size"] = (
            (int(size), int(size)) if isinstance(size, int | float) else tuple(int(s) for s in size)
        )
        for key in ("image_mean", "image_std"):
            val = values[key]
            values[key] = tuple(float(v) for v in (val if isinstance(val, list | tuple) else [val]))
        return cls(**values)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PREPROCESSING_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path


#: ``kind`` value in ``audio_preprocessing.json`` for :class:`MusicnnPreprocessing`.
MUSICNN_KIND = "musicnn-tokens"
#: Features per frame from musicnn's front- and mid-end; a token holds their mean (and maximum).
FRAME_FEATURES = 753
TOKEN_FEATURES = 2 * FRAME_FEATURES
#: Features per token for each ``pooling``.
POOLINGS = {"mean": FRAME_FEATURES, "mean+max": TOKEN_FEATURES}
#: How a hybrid's frames see their neighbours: each window on its own, or the whole stream.
CONTEXTS = ("window", "stream")


@dataclass(frozen=True)
class MusicnnPreprocessing:
    """How a window of audio becomes the tokens of a pretrained musicnn front-end (a hybrid ViT).

    The window (``window_seconds`` at ``sample_rate`` Hz) goes through musicnn's log-mel and its
    frozen front- and mid-end (``weights``: a folder under ``stream_server/teachers``), which give
    753 features per 16 ms frame. Consecutive runs of ``token_frames`` frames are pooled into one
    token (``pooling`` ``"mean"``: 753 features; ``"mean+max"``: 1506, the means first),
    standardised with ``feature_mean`` and ``feature_std`` (one value per feature, from the
    training windows; empty: left as they are).

    ``context`` ``"window"``: each window's frames are computed from the window alone (zeros past
    its ends); ``"stream"``: from the whole stream, each frame once, the tokens on the stream's
    own grid, a window the newest complete tokens (:mod:`stream_server.inference.musicnn_stream`;
    16 kHz only).
    Saved as ``audio_preprocessing.json`` with ``"kind": "musicnn-tokens"``.
    """

    sample_rate: int = 16000
    window_seconds: float = 5.0
    weights: str = "musicnn_msd"
    token_frames: int = 16
    pooling: str = "mean+max"
    feature_mean: tuple[float, ...] = ()
    feature_std: tuple[float, ...] = ()
    context: str = "window"

    @property
    def window_samples(self) -> int:
        """Samples in one window at ``sample_rate``."""
        return round(self.window_seconds * self.sample_rate)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["feature_mean"] = list(self.feature_mean)
        data["feature_std"] = list(self.feature_std)
        return {"kind": MUSICNN_KIND, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MusicnnPreprocessing:
        """Values from ``data`` over the defaults; unknown keys (``kind``) ignored."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for key in ("feature_mean", "feature_std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PREPROCESSING_FILE
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        return path
