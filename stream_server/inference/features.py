"""Audio windows to model input images: log-mel spectrogram, dB against the window maximum, resize.

The math is plain functions on tensors; :class:`LogMelImage` only precomputes the STFT window and
mel filter bank as buffers and calls them, so it moves to the model's device with ``.to()``. The
same module serves live inference, offline classification and training, so the features a model
was trained on are the features it is served.

Shapes: ``wave`` is ``(batch, samples)`` float32 at ``sample_rate`` Hz; ``mel`` is
``(batch, n_mels, frames)``; the image is ``(batch, channels, height, width)``.

Audio-spectrogram checkpoints take Kaldi filter banks instead
(:mod:`stream_server.inference.fbank`): :data:`Preprocessing` is either description and
:func:`make_features` builds the matching module. Both modules name the model keyword argument their
output goes to in ``input_name``.
"""

from __future__ import annotations

from typing import ClassVar, TypeAlias

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn

from stream_server.inference.fbank import FbankPreprocessing, KaldiFbank
from stream_server.inference.musicnn_tokens import MusicnnTokens
from stream_server.inference.preprocessing import AudioPreprocessing, MusicnnPreprocessing


def mel_power(wave: Tensor, window: Tensor, fbanks: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """Mel power spectrogram.

    Args:
        wave: ``(batch, samples)`` float32.
        window: ``(n_fft,)`` analysis window.
        fbanks: ``(n_fft // 2 + 1, n_mels)`` mel filter bank.
    Returns:
        ``(batch, n_mels, frames)`` power, ``frames = samples // hop_length + 1`` (centred STFT,
        reflect padding).
    """
    spec = torch.stft(
        wave,
        n_fft=n_fft,
        hop_length=hop_length,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    power = spec.real.square() + spec.imag.square()  # (batch, freqs, frames)
    return torch.matmul(power.transpose(1, 2), fbanks).transpose(1, 2)


def power_to_db_ref_max(power: Tensor, top_db: float, amin: float = 1e-10) -> Tensor:
    """Power to dB against each item's own maximum, floored at ``-top_db``.

    ``(batch, ...)`` in, same shape out, values in ``[-top_db, 0]``.
    """
    db = 10.0 * torch.log10(power.clamp_min(amin))
    ref = db.flatten(1).amax(dim=1).view(-1, *([1] * (db.dim() - 1)))
    return (db - ref).clamp_min(-top_db)


def db_to_image(
    db: Tensor, top_db: float, size: tuple[int, int], mean: Tensor, std: Tensor
) -> Tensor:
    """``(batch, n_mels, frames)`` dB in ``[-top_db, 0]`` to a normalised image.

    The dB map is scaled to ``[0, 1]``, flipped so low frequencies sit at the bottom row, resized
    bilinearly to ``size`` (height, width), repeated over ``mean.numel()`` channels and normalised
    per channel. Returns ``(batch, channels, height, width)``.
    """
    unit = (db + top_db) / top_db
    img = unit.flip(1).unsqueeze(1)  # (batch, 1, n_mels, frames)
    if tuple(img.shape[-2:]) != tuple(size):
        img = F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=True)
    img = img.expand(-1, mean.numel(), -1, -1)
    return (img - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


class LogMelImage(nn.Module):
    """``(batch, samples)`` audio to ``(batch, channels, height, width)`` model images."""

    #: The model's keyword argument for these features.
    input_name: ClassVar[str] = "pixel_values"

    window: Tensor
    fbanks: Tensor
    mean: Tensor
    std: Tensor

    def __init__(self, pre: AudioPreprocessing) -> None:
        super().__init__()
        self.pre = pre
        self.register_buffer("window", torch.hann_window(pre.n_fft), persistent=False)
        fb = AF.melscale_fbanks(
            n_freqs=pre.n_fft // 2 + 1,
            f_min=pre.f_min,
            f_max=pre.f_max,
            n_mels=pre.n_mels,
            sample_rate=pre.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        self.register_buffer("fbanks", fb, persistent=False)
        if len(pre.image_mean) != pre.num_channels or len(pre.image_std) != pre.num_channels:
            raise ValueError("image_mean and image_std need one value per channel")
        self.register_buffer("mean", torch.tensor(pre.image_mean), persistent=False)
        self.register_buffer("std", torch.tensor(pre.image_std), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        wave = wave.to(self.window.dtype)
        power = mel_power(wave, self.window, self.fbanks, self.pre.n_fft, self.pre.hop_length)
        db = power_to_db_ref_max(power, self.pre.top_db)
        return db_to_image(db, self.pre.top_db, self.pre.image_size, self.mean, self.std)


#: How a checkpoint's audio becomes its input: log-mel images, Kaldi filter banks, or the tokens
#: of the frozen musicnn front-end (a hybrid ViT). All have ``sample_rate`` (Hz),
#: ``window_seconds`` and ``window_samples``.
Preprocessing: TypeAlias = AudioPreprocessing | FbankPreprocessing | MusicnnPreprocessing

#: A features module: ``(batch, samples)`` audio in, the model's input out.
Features: TypeAlias = LogMelImage | KaldiFbank | MusicnnTokens


def make_features(pre: Preprocessing) -> Features:
    """The features module that ``pre`` describes."""
    if isinstance(pre, FbankPreprocessing):
        return KaldiFbank(pre)
    if isinstance(pre, MusicnnPreprocessing):
        return MusicnnTokens(pre)
    return LogMelImage(pre)
