"""Speech or music: a small CNN that tells, window by window, whether a voice is talking.

The gate in front of the genre model (music / speech / silence) asks it for each window. It
looks only at 60-4000 Hz, where speech lives, so the bandwidth of a source (a 4 kHz phone line,
a 16 kHz broadcast, a full-band recording) cannot tell it the answer; each window's log-mel map
is normalised to zero mean and unit variance, so loudness cannot either.

Shapes: ``wave`` is ``(batch, samples)`` float32 at the caller's ``sample_rate`` Hz (any rate of
8 kHz or more; the detector resamples to :data:`RATE`); the log-mel map is
``(batch, 1, N_MELS, frames)`` with 10 ms frames; the output is ``(batch,)`` speech
probabilities in ``[0, 1]``.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any, Final

import torch
import torchaudio.functional as AF
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from stream_server.errors import ModelLoadError

#: The detector's own sample rate (Hz); input at other rates is resampled to it.
RATE: Final = 16000
N_FFT: Final = 512
HOP: Final = 160  # 10 ms
N_MELS: Final = 48
F_MIN_HZ: Final = 60.0
F_MAX_HZ: Final = 4000.0

WEIGHTS_FILE: Final = "model.safetensors"
CONFIG_FILE: Final = "config.json"

#: The speech detector genrecast ships (trained by ``genrecast train-speech``; see its card).
DEFAULT_SPEECH_DIR: Final = Path(__file__).resolve().parents[1] / "speech_model"


def log_mel(wave: Tensor, window: Tensor, fbanks: Tensor) -> Tensor:
    """``(batch, samples)`` at :data:`RATE` -> ``(batch, 1, N_MELS, frames)`` normalised log-mel.

    Power spectrogram (``N_FFT``, ``HOP``, centred), mel bands from ``fbanks``
    ``(N_FFT // 2 + 1, N_MELS)``, ``log(power + 1e-6)``, then each item shifted and scaled to zero
    mean and unit variance over its whole map.
    """
    spec = torch.stft(wave, N_FFT, HOP, window=window, center=True, return_complex=True)
    power = spec.real.square() + spec.imag.square()  # (batch, freqs, frames)
    mel = torch.log(torch.matmul(power.transpose(1, 2), fbanks).transpose(1, 2) + 1e-6)
    mean = mel.mean(dim=(1, 2), keepdim=True)
    std = mel.std(dim=(1, 2), keepdim=True).clamp_min(1e-3)
    return ((mel - mean) / std).unsqueeze(1)


class SpeechDetector(nn.Module):
    """``forward(wave)``: ``(batch, samples)`` at ``sample_rate`` Hz -> ``(batch,)`` P(speech).

    Four conv blocks (3x3, batch norm, ReLU, 2x2 max-pool) over the log-mel map, the mean and the
    maximum over time of the pooled features, and a linear layer. ``sample_rate`` is the rate
    the caller feeds (the genre model's).
    """

    window: Tensor
    fbanks: Tensor

    def __init__(self, sample_rate: int = RATE, width: int = 16) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.width = width
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        fb = AF.melscale_fbanks(N_FFT // 2 + 1, F_MIN_HZ, F_MAX_HZ, N_MELS, RATE)
        self.register_buffer("fbanks", fb, persistent=False)
        w = width
        layers: list[nn.Module] = []
        for i, o in ((1, w), (w, 2 * w), (2 * w, 4 * w), (4 * w, 4 * w)):
            layers += [
                nn.Conv2d(i, o, 3, padding=1, bias=False),
                nn.BatchNorm2d(o),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * 4 * w, 1))
        #: Run the convolutions in bfloat16 (autocast; the log-mel map stays float32).
        self.bf16_convs = False

    def features(self, wave: Tensor) -> Tensor:
        """The normalised log-mel map of ``wave`` (at ``self.sample_rate``)."""
        wave = wave.float()
        if self.sample_rate != RATE:
            wave = AF.resample(wave, self.sample_rate, RATE)
        return log_mel(wave, self.window, self.fbanks)

    def logits(self, maps: Tensor) -> Tensor:
        """``(batch, 1, N_MELS, frames)`` maps -> ``(batch,)`` logits.

        The maps go through the convolutions channels-last, which oneDNN runs about three
        times faster on a CPU than the default layout (same results).
        """
        maps = maps.contiguous(memory_format=torch.channels_last)
        x = self.body(maps).mean(dim=2)  # (batch, channels, frames)
        pooled = torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)
        out: Tensor = self.head(pooled).squeeze(1)
        return out

    def forward(self, wave: Tensor) -> Tensor:
        maps = self.features(wave)
        with torch.autocast(maps.device.type, dtype=torch.bfloat16, enabled=self.bf16_convs):
            logits = self.logits(maps)
        return torch.sigmoid(logits.float())

    def folded(self, *, bfloat16: bool = False) -> SpeechDetector:
        """An eval-mode copy for inference whose batch norms are folded into the convolutions
        before them (each layer one convolution instead of a convolution and a pass over its
        whole map: half the detector's time on a CPU; the same numbers to float32 rounding),
        its convolutions in bfloat16 if asked (logits within about 0.02 of float32's)."""
        out = copy.deepcopy(self).eval()
        out.bf16_convs = bfloat16
        layers = list(out.body)
        for i, (layer, after) in enumerate(itertools.pairwise(layers)):
            if isinstance(layer, nn.Conv2d) and isinstance(after, nn.BatchNorm2d):
                layers[i], layers[i + 1] = fuse_conv_bn_eval(layer, after), nn.Identity()
        out.body = nn.Sequential(*layers)
        return out


def for_inference(detector: nn.Module, *, bfloat16: bool = False) -> nn.Module:
    """``detector`` as the runner runs it: a :class:`SpeechDetector` folded
    (:meth:`SpeechDetector.folded`), any other module in eval mode."""
    if isinstance(detector, SpeechDetector):
        return detector.folded(bfloat16=bfloat16)
    return detector.eval()


def save_detector(model: SpeechDetector, directory: str | Path, about: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (width, ``about``) into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / WEIGHTS_FILE)
    config = {"width": model.width, "sample_rate": RATE, **about}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return out


def load_detector(
    directory: str | Path = DEFAULT_SPEECH_DIR, sample_rate: int = RATE
) -> SpeechDetector:
    """The detector saved in ``directory``, in eval mode, fed at ``sample_rate`` Hz.

    Raises:
        ModelLoadError: the directory, its files or its weights are missing or do not fit.
    """
    base = Path(directory).expanduser()
    try:
        config = json.loads((base / CONFIG_FILE).read_text(encoding="utf-8"))
        model = SpeechDetector(sample_rate, width=int(config["width"]))
        model.load_state_dict(load_file(base / WEIGHTS_FILE))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the speech detector from {base}: {exc}") from exc
    return model.eval()
