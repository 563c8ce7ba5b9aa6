"""Audio windows to AST model inputs: Kaldi-compatible log-mel filter banks, padded and normalised.

This is the Audio Spectrogram Transformer's feature recipe (what ``ASTFeatureExtractor`` computes
one clip at a time with ``torchaudio.compliance.kaldi.fbank``) written as batched functions on
tensors, so it runs on the model's device. :class:`KaldiFbank` only precomputes the analysis
window and the mel filter bank as buffers and calls the functions.

The recipe, per item: frames of 25 ms every 10 ms (only frames that fit entirely), each frame's
mean removed, pre-emphasis 0.97, a symmetric Hann window, zero-padded to the next power of two,
power spectrum, triangular mel filters on the Kaldi mel scale from 20 Hz to Nyquist, natural log
floored at float32 epsilon. The ``(frames, num_mel_bins)`` result is zero-padded or truncated to
``max_length`` frames and normalised as ``(fbank - mean) / (2 * std)``.

Shapes: ``wave`` is ``(batch, samples)`` float32 at ``sample_rate`` Hz; ``frames`` is
``(batch, num_frames, frame_length)`` samples; the features are ``(batch, max_length,
num_mel_bins)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torchaudio.compliance.kaldi as kaldi
from torch import Tensor, nn

#: The Hugging Face feature-extractor file beside a checkpoint; :class:`FbankPreprocessing`
#: reads and writes it in ``ASTFeatureExtractor``'s format.
PROCESSOR_FILE = "preprocessor_config.json"

#: AudioSet statistics of the log-mel filter banks, AST's normalisation defaults.
AST_MEAN = -4.2677393
AST_STD = 4.5689974

#: Kaldi framing: frame length and shift in milliseconds.
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
PREEMPHASIS = 0.97
#: Lowest mel filter edge in Hz (the highest is the Nyquist frequency).
LOW_FREQ_HZ = 20.0

_EPSILON = float(torch.finfo(torch.float32).eps)

#: ``preprocessor_config.json`` keys and the :class:`FbankPreprocessing` fields they set.
_PROCESSOR_KEYS = {
    "sampling_rate": "sample_rate",
    "num_mel_bins": "num_mel_bins",
    "max_length": "max_length",
    "mean": "mean",
    "std": "std",
    "do_normalize": "do_normalize",
}


@dataclass(frozen=True)
class FbankPreprocessing:
    """How a window of audio becomes an AST input.

    Defaults are AST's: 16000 Hz, 128 mel bins, 1024 frames of 10 ms (a window of
    ``window_seconds`` = 10.24 s), normalised with the AudioSet mean and std. A window of
    ``window_samples`` holds ``max_length - 2`` whole 25 ms frames; the last two are padding.
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    max_length: int = 1024
    mean: float = AST_MEAN
    std: float = AST_STD
    do_normalize: bool = True

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {self.sample_rate}")
        if self.num_mel_bins <= 3:
            raise ValueError(f"num_mel_bins must be > 3, got {self.num_mel_bins}")
        if self.max_length <= 0:
            raise ValueError(f"max_length must be > 0, got {self.max_length}")
        if self.do_normalize and self.std <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")

    @property
    def frame_length(self) -> int:
        """Samples in one analysis frame (25 ms)."""
        return int(self.sample_rate * FRAME_LENGTH_MS * 0.001)  # truncated, as in Kaldi

    @property
    def frame_shift(self) -> int:
        """Samples between the starts of consecutive frames (10 ms)."""
        return int(self.sample_rate * FRAME_SHIFT_MS * 0.001)

    @property
    def window_seconds(self) -> float:
        """Seconds of audio in one window: ``max_length`` frame shifts."""
        return self.max_length * FRAME_SHIFT_MS / 1000

    @property
    def window_samples(self) -> int:
        """Samples in one window at ``sample_rate``."""
        return round(self.window_seconds * self.sample_rate)

    def to_json(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` content ``ASTFeatureExtractor`` reads."""
        values = asdict(self)
        data: dict[str, Any] = {
            "feature_extractor_type": "ASTFeatureExtractor",
            "feature_size": 1,
            "padding_value": 0.0,
            "return_attention_mask": False,
        }
        data.update({key: values[name] for key, name in _PROCESSOR_KEYS.items()})
        return data

    @classmethod
    def from_json(
        cls, data: dict[str, Any], base: FbankPreprocessing | None = None
    ) -> FbankPreprocessing:
        """Values from ``preprocessor_config.json`` keys in ``data`` over ``base``.

        ``base`` defaults to the defaults; other keys are ignored.
        """
        values = asdict(base or cls())
        for key, name in _PROCESSOR_KEYS.items():
            if key in data:
                values[name] = data[key]
        for name in ("sample_rate", "num_mel_bins", "max_length"):
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            values[name] = int(value)
        for name in ("mean", "std"):
            if isinstance(values[name], bool) or not isinstance(values[name], int | float):
                raise ValueError(f"{name} must be a number, got {values[name]!r}")
            values[name] = float(values[name])
        if not isinstance(values["do_normalize"], bool):
            raise ValueError(f"do_normalize must be true or false, got {values['do_normalize']!r}")
        return cls(**values)

    def save(self, directory: str | Path) -> Path:
        """Write :data:`PROCESSOR_FILE` into ``directory``; returns its path."""
        path = Path(directory) / PROCESSOR_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path


def kaldi_mel_banks(num_mel_bins: int, fft_length: int, sample_rate: int) -> Tensor:
    """Kaldi's triangular mel filters from :data:`LOW_FREQ_HZ` to Nyquist.

    Returns ``(fft_length // 2 + 1, num_mel_bins)`` float32 weights over the rfft bins; the Nyquist
    bin gets weight 0, as in Kaldi.
    """
    banks, _ = kaldi.get_mel_banks(
        num_mel_bins, fft_length, float(sample_rate), LOW_FREQ_HZ, 0.0, 100.0, -500.0, 1.0
    )
    return nn.functional.pad(banks.float(), (0, 1)).T.contiguous()


def frame_signal(wave: Tensor, frame_length: int, frame_shift: int) -> Tensor:
    """Cut ``(batch, samples)`` into the frames that fit entirely.

    Returns ``(batch, 1 + (samples - frame_length) // frame_shift, frame_length)`` (a view).
    Raises ``ValueError`` when ``samples < frame_length``.
    """
    if wave.shape[-1] < frame_length:
        raise ValueError(
            f"need at least {frame_length} samples for one frame, got {wave.shape[-1]}"
        )
    return wave.unfold(-1, frame_length, frame_shift)


def log_mel_fbank(
    wave: Tensor, window: Tensor, mel_banks: Tensor, frame_shift: int, fft_length: int
) -> Tensor:
    """Kaldi log-mel filter bank energies.

    Args:
        wave: ``(batch, samples)`` float32, samples in [-1, 1].
        window: ``(frame_length,)`` analysis window; its length is the frame length in samples.
        mel_banks: ``(fft_length // 2 + 1, num_mel_bins)`` filters (see :func:`kaldi_mel_banks`).
        frame_shift: samples between frame starts.
        fft_length: FFT size in samples, at least the frame length.
    Returns:
        ``(batch, frames, num_mel_bins)`` natural-log mel energies, frames as in
        :func:`frame_signal`.
    """
    frames = frame_signal(wave, window.numel(), frame_shift)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat((frames[..., :1], frames[..., :-1]), dim=-1)
    frames = (frames - PREEMPHASIS * previous) * window
    spec = torch.fft.rfft(frames, n=fft_length)
    power = spec.real.square() + spec.imag.square()  # (batch, frames, fft_length // 2 + 1)
    return torch.matmul(power, mel_banks).clamp_min(_EPSILON).log()


def pad_or_truncate(fbank: Tensor, max_length: int) -> Tensor:
    """``(batch, frames, bins)`` to ``(batch, max_length, bins)``: zero frames appended or cut."""
    frames = fbank.shape[1]
    if frames >= max_length:
        return fbank[:, :max_length]
    return nn.functional.pad(fbank, (0, 0, 0, max_length - frames))


def normalize(fbank: Tensor, mean: float, std: float) -> Tensor:
    """AST normalisation ``(fbank - mean) / (2 * std)``, any shape."""
    return (fbank - mean) / (std * 2)


class KaldiFbank(nn.Module):
    """``(batch, samples)`` audio at ``pre.sample_rate`` Hz to ``(batch, max_length, mel_bins)``.

    Samples are float32 in [-1, 1]; a window needs at least one frame (25 ms) of samples.
    """

    #: The model's keyword argument for these features.
    input_name: ClassVar[str] = "input_values"

    window: Tensor
    mel_banks: Tensor

    def __init__(self, pre: FbankPreprocessing) -> None:
        super().__init__()
        self.pre = pre
        self.fft_length = 1 << (pre.frame_length - 1).bit_length()  # next power of two
        window = torch.hann_window(pre.frame_length, periodic=False)
        self.register_buffer("window", window, persistent=False)
        banks = kaldi_mel_banks(pre.num_mel_bins, self.fft_length, pre.sample_rate)
        self.register_buffer("mel_banks", banks, persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        wave = wave.to(self.window.dtype)
        fbank = log_mel_fbank(
            wave, self.window, self.mel_banks, self.pre.frame_shift, self.fft_length
        )
        fbank = pad_or_truncate(fbank, self.pre.max_length)
        if self.pre.do_normalize:
            fbank = normalize(fbank, self.pre.mean, self.pre.std)
        return fbank
