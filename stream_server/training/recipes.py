"""Training recipes and options: what ``genrecast train`` can build, as plain data.

An :class:`Architecture` names a transformer size, its input image and window length;
:data:`ARCHITECTURES` holds the recipes by name and :class:`TrainOptions` everything else that
decides a run. Nothing here loads torch, so the command-line parser can offer the recipes and
their defaults at once; :mod:`stream_server.training.train` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from stream_server.inference.preprocessing import (
    FRAME_FEATURES,
    AudioPreprocessing,
    MusicnnPreprocessing,
)


@dataclass(frozen=True)
class Architecture:
    """A model recipe: transformer size, input image and window length.

    ``image_size`` is (height, width) = (mel bands, time columns); with ``height == n_mels`` the
    frequency axis is not resampled. ``family`` ``"deit"`` adds a distillation token (taught by
    :attr:`TrainOptions.teacher`); ``"vit"`` is a plain ViT. ``"levit"`` is LeViT: a
    convolutional stem (four stride-2 3x3 convolutions, so 16x16 pixels per token) and attention
    stages that shrink the token grid, with a distillation head; it needs a square image, and
    ``stages`` gives each stage's (width, depth, heads),
    ``hidden_size``/``layers``/``heads`` then summarise them. ``"hybrid"`` is a ViT over the
    tokens of the frozen, pretrained musicnn front-end
    (:mod:`stream_server.inference.musicnn_tokens`): ``patch`` is the musicnn frames pooled per
    token, ``image_size`` ``(1, tokens)`` and ``channels`` the features of a token (753: their
    means; 1506: means and maxima); each 1x1 patch is one token; ``context`` is where its
    frames take their neighbours from
    (:class:`~stream_server.inference.preprocessing.MusicnnPreprocessing`).
    """

    family: Literal["vit", "deit", "levit", "hybrid"]
    hidden_size: int
    layers: int
    heads: int
    patch: int
    image_size: tuple[int, int]
    channels: int
    window_seconds: float
    dropout: float = 0.1
    about: str = ""
    stages: tuple[tuple[int, int, int], ...] = ()
    context: str = "window"

    @property
    def distill(self) -> bool:
        return self.family in ("deit", "levit")

    def preprocessing(self) -> AudioPreprocessing | MusicnnPreprocessing:
        """The audio preprocessing this recipe trains on (a hybrid's without its standardisation,
        which training measures)."""
        if self.family == "hybrid":
            pooling = "mean" if self.channels == FRAME_FEATURES else "mean+max"
            return MusicnnPreprocessing(
                window_seconds=self.window_seconds,
                token_frames=self.patch,
                pooling=pooling,
                context=self.context,
            )
        return AudioPreprocessing(
            window_seconds=self.window_seconds,
            image_size=self.image_size,
            num_channels=self.channels,
            image_mean=(0.5,) * self.channels,
            image_std=(0.5,) * self.channels,
        )


ARCHITECTURES: dict[str, Architecture] = {
    "musicnn-vit": Architecture(
        "hybrid", 192, 4, 3, 16, (1, 19), FRAME_FEATURES, 5.0,
        about="hybrid ViT: 4 blocks, 192 wide, over 19 tokens of 0.26 s (the mean of 16 frames of "
        "the frozen musicnn front-end, pretrained on the Million Song Dataset, each frame "
        "computed once per stream) of a 5 s window (the default)",
        context="stream",
    ),
    "deit-tiny": Architecture(
        "deit", 192, 6, 3, 16, (128, 224), 1, 5.0,
        about="DeiT-Ti width, 6 blocks, 16x16 patches over a 5 s mel image at its own aspect, "
        "distilled from a teacher",
    ),
    "levit-small": Architecture(
        "levit", 256, 9, 8, 16, (128, 128), 1, 5.0,
        stages=((128, 2, 4), (192, 3, 6), (256, 4, 8)),
        about="LeViT (conv stem, 3 attention stages 128/192/256 wide) on a 5 s mel image "
        "squeezed to 128x128, distilled from a teacher (the fast one on CPU)",
    ),
    "vit-tiny": Architecture(
        "vit", 192, 6, 3, 16, (128, 224), 1, 5.0,
        about="the same ViT without distillation",
    ),
    "vit-tiny-square": Architecture(
        "vit", 192, 6, 3, 16, (224, 224), 1, 5.0,
        about="the same ViT on the mel image resized to 224x224",
    ),
    "vit-b16": Architecture(
        "vit", 768, 12, 12, 16, (224, 224), 3, 10.0,
        about="ViT-B/16 on 10 s mel images resized to 224x224x3 (needs a GPU)",
    ),
    "deit-b16": Architecture(
        "deit", 768, 12, 12, 16, (224, 224), 3, 10.0,
        about="DeiT-B/16 with distillation token, 10 s windows (needs a GPU)",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class TrainOptions:
    """Everything that decides a training run (saved in ``training.json``)."""

    data: str
    out: str
    arch: str = "musicnn-vit"
    genres: tuple[str, ...] | None = None
    min_clips: int = 10
    val_fraction: float = 0.2
    seed: int = 0
    epochs: int = 100
    teacher_epochs: int = 30
    batch_size: int = 32
    windows_per_clip: int = 4
    lr: float = 5e-4
    teacher_lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    balance: float = 0.5
    noise_prob: float = 0.5
    noise_snr_db: tuple[float, float] = (10.0, 40.0)
    freq_masks: int = 2
    max_freq_mask: int = 16
    time_masks: int = 2
    max_time_mask: int = 24
    mixup_alpha: float = 0.4
    mixup_prob: float = 0.5
    val_hop_seconds: float = 2.5
    #: The distillation teacher: ``"musicnn"`` (a classifier on the pretrained musicnn's
    #: embeddings; a hybrid's is trained out of fold), ``"cnn"`` (a small CNN trained here first;
    #: ``deit``/``levit`` only) or ``"none"`` (``vit`` and hybrid recipes: the labels alone).
    teacher: str = "musicnn"
    teacher_temperature: float = 2.0
    #: Seconds between the starts of the windows training draws (the teacher scores each).
    grid_seconds: float = 1.0
    #: Shares of training windows taken through a lossy codec, low-passed, tilted, reverberated.
    codec_prob: float = 0.3
    lowpass_prob: float = 0.25
    lowpass_hz: tuple[float, ...] = (4000.0, 5500.0, 8000.0)
    tilt_prob: float = 0.5
    tilt_db_per_octave: float = 3.0
    reverb_prob: float = 0.2
    reverb_rt60_s: tuple[float, float] = (0.2, 1.0)
    device: str = "cpu"
    cache_dir: str = "~/.cache/genrecast/audio"
    resume: bool = False
    progress: bool = True


def with_overrides(opts: TrainOptions, **values: Any) -> TrainOptions:
    """``opts`` with the non-``None`` ``values`` replaced."""
    return replace(opts, **{k: v for k, v in values.items() if v is not None})
