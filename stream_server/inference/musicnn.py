"""musicnn in PyTorch: pretrained music-tagging CNNs, frozen teachers and feature extractors.

musicnn (Pons & Serra, "musicnn: pre-trained convolutional neural networks for music audio
tagging", ISMIR 2019 late-breaking demo) is a musically motivated CNN trained on far more music
than genrecast's own data: ``msd`` on the Million Song Dataset (50 Last.fm tags) and ``mtt`` on
MagnaTagATune (50 tags). This module re-implements its architecture and its input features in
torch; the weights in ``teachers/musicnn_{msd,mtt}/`` are the published checkpoints converted by
``tools/convert_musicnn.py``. musicnn is by Jordi Pons and Xavier Serra (code by Jordi Pons),
Music Technology Group, Universitat Pompeu Fabra, under the ISC licence; each weights folder
carries that licence in ``LICENSE``.

Input features (:class:`MusicnnFeatures`), as musicnn's extractor computes them with librosa:

- mono float32 audio at 16 kHz (:data:`SAMPLE_RATE`);
- STFT with a 512-point periodic Hann window, hop 256 samples (16 ms), centred with reflect
  padding (``samples // 256 + 1`` frames), power spectrogram;
- 96 mel bands from 0 Hz to 8 kHz, Slaney mel scale and Slaney (area) normalisation;
- the mel power rounded to float16, then ``log10(10000 * power + 1)``.

The network (:class:`MusicnnNet`) takes patches of :data:`PATCH_FRAMES` = 187 frames (3 s):

- front-end: batch norm of the input, then five convolutions on the ``(time, mel)`` map, each with
  ReLU, batch norm and a max over the whole frequency axis: two *timbral* filters spanning 7
  frames x 38 and 7 x 67 mel bands (204 maps each) and three *temporal* filters spanning 128, 64
  and 32 frames x 1 band (51 maps each): 561 features per frame;
- mid-end: three 1-D convolutions over time (7 frames, 64 maps, ReLU, batch norm), the second
  and third with residual connections; the front-end output and the three mid-end outputs are
  concatenated: 753 features per frame;
- back-end: max and mean over time (753 each), batch norm, a 200-unit dense layer with ReLU and
  batch norm (the *penultimate* embedding), a 50-unit dense layer and a sigmoid.

:class:`Musicnn` runs both on ``(batch, samples)`` audio, cuts it into consecutive
non-overlapping 187-frame patches as musicnn's extractor does, and averages over the patches.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Final, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from stream_server.errors import ModelLoadError
from stream_server.inference.banded import BandedMax

__all__ = [
    "HOP_LENGTH",
    "MIN_SAMPLES",
    "MSD_TAGS",
    "MTT_TAGS",
    "N_FFT",
    "N_MELS",
    "PATCH_FRAMES",
    "PATCH_SAMPLES",
    "SAMPLE_RATE",
    "TEACHERS_DIR",
    "FrontendBlock",
    "MidendBlock",
    "Musicnn",
    "MusicnnFeatures",
    "MusicnnNet",
    "MusicnnOutput",
    "PatchOutput",
    "cut_patches",
    "load_musicnn",
    "log_mel",
    "slaney_mel_filters",
    "use_banded",
]

#: Sample rate of the input audio (Hz).
SAMPLE_RATE: Final = 16000
#: STFT size and hop (samples): 32 ms windows every 16 ms.
N_FFT: Final = 512
HOP_LENGTH: Final = 256
N_MELS: Final = 96
#: Frames in one network input patch (3 s: ``librosa.time_to_frames(3) + 1``).
PATCH_FRAMES: Final = 187
#: The fewest samples that give one patch: ``(PATCH_FRAMES - 1) * HOP_LENGTH`` (2.976 s).
MIN_SAMPLES: Final = (PATCH_FRAMES - 1) * HOP_LENGTH
#: Samples in a 3 s patch as musicnn reads it (one patch; 48000 samples give 188 frames).
PATCH_SAMPLES: Final = 3 * SAMPLE_RATE
#: The log compression: ``log10(LOG_SCALE * mel_power + 1)``.
LOG_SCALE: Final = 10000.0
#: Batch-norm epsilon of the TensorFlow 1 layers musicnn was trained with.
BN_EPS: Final = 1e-3

#: Front-end filters: (frames, mel bands, maps) of the timbral then the temporal convolutions.
FRONTEND_FILTERS: Final = ((7, 38, 204), (7, 67, 204), (128, 1, 51), (64, 1, 51), (32, 1, 51))
MIDEND_KERNEL: Final = 7

#: The weights folders beside this module, by :func:`load_musicnn` name.
TEACHERS_DIR: Final = Path(__file__).resolve().parents[1] / "teachers"
WEIGHTS_FILE: Final = "model.safetensors"
CONFIG_FILE: Final = "config.json"

#: The 50 Million Song Dataset (Last.fm) tags of the ``msd`` model, in output order.
MSD_TAGS: Final = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists",
    "classic rock", "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill",
    "instrumental", "punk", "oldies", "blues", "hard rock", "ambient", "acoustic", "experimental",
    "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country", "easy listening", "sexy",
    "catchy", "funk", "electro", "heavy metal", "Progressive rock", "60s", "rnb", "indie pop",
    "sad", "House", "happy",
)  # fmt: skip

#: The 50 MagnaTagATune tags of the ``mtt`` model, in output order.
MTT_TAGS: Final = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
    "weird", "country", "metal", "female voice", "choral",
)  # fmt: skip

_TAGS: Final = {"msd": MSD_TAGS, "mtt": MTT_TAGS}
_FLOAT16_MAX: Final = 65504.0
#: Slaney mel scale: 3 mels per 200 Hz up to 1 kHz (15 mels), then 27 mels per factor 6.4.
_MEL_LINEAR_HZ: Final = 200.0 / 3.0
_MEL_BREAK_HZ: Final = 1000.0
_MEL_BREAK: Final = 15.0
_MEL_LOG_STEP: Final = math.log(6.4) / 27.0


# --- features --------------------------------------------------------------------------------


def _hz_to_mel(hz: Tensor) -> Tensor:
    """Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    linear = hz / _MEL_LINEAR_HZ
    log = _MEL_BREAK + torch.log(hz.clamp_min(1e-10) / _MEL_BREAK_HZ) / _MEL_LOG_STEP
    return torch.where(hz >= _MEL_BREAK_HZ, log, linear)


def _mel_to_hz(mel: Tensor) -> Tensor:
    """Inverse of :func:`_hz_to_mel`."""
    linear = mel * _MEL_LINEAR_HZ
    log = _MEL_BREAK_HZ * torch.exp(_MEL_LOG_STEP * (mel - _MEL_BREAK))
    return torch.where(mel >= _MEL_BREAK, log, linear)


def slaney_mel_filters(
    sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS
) -> Tensor:
    """librosa's default mel filter bank (``librosa.filters.mel``: Slaney scale and norm).

    Triangles between ``n_mels + 2`` points equally spaced on the Slaney mel scale from 0 Hz to
    ``sample_rate / 2``, each scaled by ``2 / (upper edge - lower edge)`` in Hz (equal area).
    Computed in float64 and rounded to float32 as librosa does. Returns ``(n_fft // 2 + 1,
    n_mels)`` float32 weights over the rfft bins.
    """
    f64 = torch.float64
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=f64)
    top = _hz_to_mel(torch.tensor([sample_rate / 2], dtype=f64))[0]
    edges = _mel_to_hz(torch.linspace(0.0, float(top), n_mels + 2, dtype=f64))
    widths = edges.diff()
    ramps = edges[:, None] - freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = torch.minimum(lower, upper).clamp_min(0.0).float()
    norm = 2.0 / (edges[2:] - edges[:-2])
    return (weights.double() * norm[:, None]).float().T.contiguous()


def log_mel(wave: Tensor, window: Tensor, fbanks: Tensor, *, center: bool = True) -> Tensor:
    """musicnn's input: float16-rounded mel power, ``log10(10000 * power + 1)``.

    Args:
        wave: ``(batch, samples)`` float32 mono audio at :data:`SAMPLE_RATE` Hz, in [-1, 1].
        window: ``(N_FFT,)`` float64 periodic Hann window.
        fbanks: ``(N_FFT // 2 + 1, N_MELS)`` float32 filters (:func:`slaney_mel_filters`).
        center: ``True`` (musicnn's extractor): frame ``j`` is centred on sample ``256 j``,
            reflect padding at both ends; ``False``: frame ``j`` covers samples ``[256 j,
            256 j + 512)``, no padding (a stream's frames, whatever its chunks).
    Returns:
        ``(batch, frames, N_MELS)`` float32, ``frames = samples // HOP_LENGTH + 1`` centred,
        ``(samples - N_FFT) // HOP_LENGTH + 1`` not; values from 0 to about 7 for full-scale
        audio.

    The windowed FFT runs in float64 and is rounded to complex64, the power and the mel sums in
    float32, as in librosa, so the float16 rounding falls as in musicnn's extractor.
    """
    spec = torch.stft(
        wave.double(),
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        window=window.double(),
        center=center,
        pad_mode="reflect",
        return_complex=True,
    ).to(torch.complex64)
    power = spec.abs().square()  # (batch, freqs, frames)
    mel = torch.matmul(power.transpose(1, 2), fbanks.float())  # (batch, frames, mels)
    mel = mel.clamp(0.0, _FLOAT16_MAX).half().float()
    return torch.log10(LOG_SCALE * mel + 1.0)


def cut_patches(features: Tensor, patch_frames: int = PATCH_FRAMES) -> Tensor:
    """Consecutive non-overlapping patches, as musicnn's extractor cuts them.

    ``(batch, frames, mels)`` -> ``(batch, patches, patch_frames, mels)`` with ``patches =
    (frames - patch_frames) // patch_frames + 1``; trailing frames that do not fill a patch are
    dropped. Raises ``ValueError`` when ``frames < patch_frames``.
    """
    frames = features.shape[1]
    if frames < patch_frames:
        raise ValueError(f"need at least {patch_frames} frames for one patch, got {frames}")
    return features.unfold(1, patch_frames, patch_frames).transpose(2, 3)


class MusicnnFeatures(nn.Module):
    """``forward(wave)``: ``(batch, samples)`` at 16 kHz -> ``(batch, frames, 96)`` log-mel.

    See :func:`log_mel`. The window and the filter bank are non-persistent buffers, so the module
    moves with ``.to()`` and adds nothing to a state dict.
    """

    window: Tensor
    fbanks: Tensor

    def __init__(self) -> None:
        super().__init__()
        window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("fbanks", slaney_mel_filters(), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        return log_mel(wave, self.window, self.fbanks)


# --- network ---------------------------------------------------------------------------------


class PatchOutput(NamedTuple):
    """What :class:`MusicnnNet` computes for each of ``n`` patches.

    Attributes:
        logits: ``(n, 50)`` tag logits (sigmoid gives the tag probabilities).
        penultimate: ``(n, 200)`` the back-end's dense layer after ReLU and batch norm.
        mean_pool: ``(n, 753)`` mid-end features (front-end and the three mid-end layers)
            averaged over time.
        max_pool: ``(n, 753)`` the same features, maximum over time.
    """

    logits: Tensor
    penultimate: Tensor
    mean_pool: Tensor
    max_pool: Tensor


class FrontendBlock(nn.Module):
    """One front-end filter: conv over ``(time, mel)``, ReLU, batch norm, max over frequency.

    ``(n, 1, frames, mels)`` -> ``(n, maps, frames)``. Time is padded as TensorFlow's ``"same"``
    (the extra frame of an even kernel at the end); frequency is not padded.

    In eval mode batch norm is a fixed affine map per filter, and it and ReLU are monotone, so
    the maximum over frequency is taken first (of the conv output where the map's scale is
    positive, its minimum where it is negative): the same values without normalising the
    whole ``(n, maps, frames, bands)`` map.

    :attr:`banded` (set by :func:`use_banded`) computes that maximum as bfloat16 matrix products
    instead (:mod:`~stream_server.inference.banded`), on a CPU, in eval mode.
    """

    def __init__(self, frames: int, bands: int, maps: int) -> None:
        super().__init__()
        self.pad = ((frames - 1) // 2, frames - 1 - (frames - 1) // 2)
        self.conv = nn.Conv2d(1, maps, (frames, bands))
        self.norm = nn.BatchNorm2d(maps, eps=BN_EPS)
        #: The sign-adjusted kernel as a banded bfloat16 product, or ``None``: a float32
        #: convolution. Built from the weights when set; set it again after loading others.
        self.banded: BandedMax | None = None

    def signs(self) -> Tensor:
        """``(maps,)`` +1 where the batch norm's scale is positive (or zero), -1 where negative."""
        assert self.norm.running_var is not None
        scale = self.norm.weight * torch.rsqrt(self.norm.running_var + self.norm.eps)
        return torch.where(scale >= 0, 1.0, -1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.valid(F.pad(x, (0, 0, *self.pad)))

    def valid(self, x: Tensor) -> Tensor:
        """Without padding: ``(n, 1, frames, mels)`` -> ``(n, maps, frames - kernel + 1)``,
        output ``m`` seeing input frames ``m .. m + kernel - 1``."""
        if self.training or self.norm.running_var is None:
            maps: Tensor = self.norm(F.relu(self.conv(x)))  # (n, maps, frames, bands')
            return maps.amax(dim=3)
        # The map's minimum where its scale is negative is minus the maximum of the map computed
        # with negated weights (exactly: negation commutes with IEEE rounding): one reduction.
        sign = self.signs()
        bias = None if self.conv.bias is None else self.conv.bias * sign
        if self.banded is not None:  # the bias is the same at every position: added after
            top = self.banded(x)
            extreme = (top if bias is None else top + bias[:, None]) * sign[:, None]
        else:
            z = F.conv2d(x, self.conv.weight * sign[:, None, None, None], bias)
            extreme = z.amax(dim=3) * sign[:, None]
        return F.batch_norm(
            F.relu(extreme),
            self.norm.running_mean,
            self.norm.running_var,
            self.norm.weight,
            self.norm.bias,
            training=False,
            eps=self.norm.eps,
        )


def use_banded(module: nn.Module, on: bool) -> int:
    """Compute ``module``'s timbral filters (front-end blocks wider than one mel band) as banded
    bfloat16 products (``on``) or as float32 convolutions; returns how many blocks it set.

    For a CPU with AMX tiles (:func:`~stream_server.inference.banded.amx_available`), in eval
    mode: the products are built from the blocks' weights as they are now.
    """
    blocks = [
        block
        for block in module.modules()
        if isinstance(block, FrontendBlock) and block.conv.kernel_size[1] > 1
    ]
    for block in blocks:
        signed = block.conv.weight.detach() * block.signs().detach()[:, None, None, None]
        block.banded = BandedMax(signed, N_MELS) if on else None
    return len(blocks)


class MidendBlock(nn.Module):
    """A mid-end layer: 1-D conv over time ("same", 7 frames), ReLU, batch norm.

    ``(n, channels, frames)`` -> ``(n, maps, frames)``.
    """

    def __init__(self, channels: int, maps: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, maps, MIDEND_KERNEL, padding=MIDEND_KERNEL // 2)
        self.norm = nn.BatchNorm1d(maps, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        maps: Tensor = self.norm(F.relu(self.conv(x)))
        return maps

    def valid(self, x: Tensor) -> Tensor:
        """Without padding: ``(n, channels, frames)`` -> ``(n, maps, frames - 6)``."""
        z = F.conv1d(x, self.conv.weight, self.conv.bias)
        maps: Tensor = self.norm(F.relu(z))
        return maps


class MusicnnNet(nn.Module):
    """musicnn's network: ``forward(patches)`` with ``(n, frames, 96)`` log-mel -> PatchOutput.

    ``frames`` is :data:`PATCH_FRAMES` (187, 3 s) as trained; the layers accept any length, the
    back-end pooling over time makes the outputs length-independent in shape.
    """

    def __init__(self, num_tags: int = 50, midend_maps: int = 64, dense_units: int = 200) -> None:
        super().__init__()
        self.input_norm = nn.BatchNorm2d(1, eps=BN_EPS)
        self.frontend = nn.ModuleList(FrontendBlock(*spec) for spec in FRONTEND_FILTERS)
        frontend_maps = sum(maps for _, _, maps in FRONTEND_FILTERS)
        self.midend = nn.ModuleList(
            [
                MidendBlock(frontend_maps, midend_maps),
                MidendBlock(midend_maps, midend_maps),
                MidendBlock(midend_maps, midend_maps),
            ]
        )
        self.features = frontend_maps + 3 * midend_maps
        self.pool_norm = nn.BatchNorm1d(2 * self.features, eps=BN_EPS)
        self.dense = nn.Linear(2 * self.features, dense_units)
        self.dense_norm = nn.BatchNorm1d(dense_units, eps=BN_EPS)
        self.classifier = nn.Linear(dense_units, num_tags)

    def frontend_features(self, patches: Tensor) -> Tensor:
        """``(n, frames, mels)`` -> ``(n, 561, frames)``: timbral then temporal maps."""
        x = self.input_norm(patches.unsqueeze(1))
        return torch.cat([block(x) for block in self.frontend], dim=1)

    def midend_features(self, frontend: Tensor) -> Tensor:
        """``(n, 561, frames)`` -> ``(n, 753, frames)``: front-end and the three mid-end layers."""
        first, second, third = self.midend
        x1 = first(frontend)
        x2 = second(x1) + x1
        x3 = third(x2) + x2
        return torch.cat([frontend, x1, x2, x3], dim=1)

    def forward(self, patches: Tensor) -> PatchOutput:
        features = self.midend_features(self.frontend_features(patches))
        max_pool = features.amax(dim=2)
        mean_pool = features.mean(dim=2)
        # musicnn flattens (features, [max, mean]): the two poolings interleave.
        pooled = self.pool_norm(torch.stack([max_pool, mean_pool], dim=2).flatten(1))
        penultimate = self.dense_norm(F.relu(self.dense(pooled)))
        return PatchOutput(self.classifier(penultimate), penultimate, mean_pool, max_pool)


# --- audio to tags ---------------------------------------------------------------------------


class MusicnnOutput(NamedTuple):
    """What :class:`Musicnn` computes for a batch of ``b`` clips cut into ``p`` patches.

    Attributes:
        tags: ``(b, 50)`` tag probabilities in [0, 1], the mean over the patches.
        taggram: ``(b, p, 50)`` each patch's tag probabilities (musicnn's taggram).
        penultimate: ``(b, 200)`` the back-end's 200-unit dense layer (after ReLU and batch
            norm), the mean over the patches.
        mean_pool: ``(b, 753)`` mid-end features averaged over time, the mean over the patches.
        max_pool: ``(b, 753)`` mid-end features, maximum over time, the mean over the patches.
    """

    tags: Tensor
    taggram: Tensor
    penultimate: Tensor
    mean_pool: Tensor
    max_pool: Tensor


class Musicnn(nn.Module):
    """``forward(wave)``: ``(batch, samples)`` float32 16 kHz audio -> :class:`MusicnnOutput`.

    The audio is turned into log-mel frames (:class:`MusicnnFeatures`, 16 ms hop), cut into
    consecutive 187-frame (3 s) patches (:func:`cut_patches`; frames left over at the end are
    dropped) and each patch goes through :class:`MusicnnNet`. One patch needs at least
    :data:`MIN_SAMPLES` (47616) samples; 3 s (48000) gives exactly one, 12 s gives four. All items
    of a batch have the same length, hence the same number of patches.
    """

    def __init__(self, tags: tuple[str, ...] = MSD_TAGS) -> None:
        super().__init__()
        self.tags = tags
        self.features = MusicnnFeatures()
        self.net = MusicnnNet(num_tags=len(tags))

    def patches(self, wave: Tensor) -> Tensor:
        """``(batch, samples)`` -> ``(batch, patches, 187, 96)`` log-mel patches."""
        if wave.dim() != 2:
            raise ValueError(f"expected (batch, samples) audio, got shape {tuple(wave.shape)}")
        if wave.shape[1] < MIN_SAMPLES:
            raise ValueError(f"need at least {MIN_SAMPLES} samples, got {wave.shape[1]}")
        return cut_patches(self.features(wave))

    def forward(self, wave: Tensor) -> MusicnnOutput:
        patches = self.patches(wave)
        batch, count = patches.shape[:2]
        out: PatchOutput = self.net(patches.flatten(0, 1))

        def per_clip(x: Tensor) -> Tensor:
            return x.view(batch, count, -1)

        taggram = per_clip(torch.sigmoid(out.logits))
        return MusicnnOutput(
            tags=taggram.mean(dim=1),
            taggram=taggram,
            penultimate=per_clip(out.penultimate).mean(dim=1),
            mean_pool=per_clip(out.mean_pool).mean(dim=1),
            max_pool=per_clip(out.max_pool).mean(dim=1),
        )


# --- loading ---------------------------------------------------------------------------------


def _check_config(config: dict[str, Any]) -> tuple[str, ...]:
    """The tags of ``config.json``, after checking its signal settings are this module's.

    A config naming one of musicnn's models (``"name": "msd"`` or ``"mtt"``) must list its tags.
    """
    expected = {
        "sample_rate": SAMPLE_RATE,
        "n_fft": N_FFT,
        "hop_length": HOP_LENGTH,
        "n_mels": N_MELS,
        "patch_frames": PATCH_FRAMES,
    }
    for key, value in expected.items():
        if config.get(key) != value:
            raise ValueError(f"{key} is {config.get(key)!r}, this module computes {value}")
    tags = tuple(str(tag) for tag in config["tags"])
    name = config.get("name")
    if name in _TAGS and tags != _TAGS[name]:
        raise ValueError(f"the tags differ from musicnn's {name} tags")
    return tags


def _load_weights(model: Musicnn, path: Path) -> None:
    """Load ``model.safetensors`` into ``model.net``; every parameter and statistic must be there.

    Only the batch norms' ``num_batches_tracked`` counters (unused in eval mode) may be absent.
    """
    missing, unexpected = model.net.load_state_dict(load_file(path), strict=False)
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"weights do not fit: missing {missing}, unexpected {unexpected}")


def load_musicnn(
    name: str = "msd", *, directory: str | Path | None = None, device: str | torch.device = "cpu"
) -> Musicnn:
    """A pretrained musicnn, in eval mode, its parameters frozen (``requires_grad`` False).

    Args:
        name: ``"msd"`` (Million Song Dataset tags) or ``"mtt"`` (MagnaTagATune tags); the
            weights folder is ``teachers/musicnn_{name}`` beside this module.
        directory: another folder with ``model.safetensors`` and ``config.json`` (overrides
            ``name``'s folder).
        device: where the module goes.

    Raises:
        ModelLoadError: the folder, its files or its weights are missing or do not fit.

    The module stays frozen in eval mode only if kept so: batch norm would update its running
    statistics under ``.train()``, so keep a teacher out of a student's ``.train()`` calls.
    """
    if directory is None and name not in _TAGS:
        raise ModelLoadError(f"no musicnn model {name!r}: choose one of {sorted(_TAGS)}")
    base = (
        Path(directory).expanduser() if directory is not None else TEACHERS_DIR / f"musicnn_{name}"
    )
    try:
        config = json.loads((base / CONFIG_FILE).read_text(encoding="utf-8"))
        model = Musicnn(_check_config(config))
        _load_weights(model, base / WEIGHTS_FILE)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load musicnn {name!r} from {base}: {exc}") from exc
    model.requires_grad_(False)
    return model.to(device).eval()
