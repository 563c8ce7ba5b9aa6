"""A genre teacher that has heard far more music: a pretrained musicnn, frozen, and a small
classifier trained on its embeddings of the genre dataset.

musicnn (:mod:`stream_server.inference.musicnn`) was trained to tag the Million Song Dataset; its
pooled mid-end features describe timbre and rhythm well beyond what a few hundred clips teach. Each
clip is embedded once, 3 s patch by patch (:data:`PATCH_HOP_S` apart, at 16 kHz), and the
embedding of a student window is the mean of the patches that lie inside it. A two-layer
classifier on those window embeddings is the teacher; its probabilities for every window of
the training clips become the student's distillation targets (:func:`window_targets`), computed
on the clean audio while the student sees it augmented, so the student learns to hear through
the augmentation.

Shapes: a clip's patch embeddings are ``(patches, PATCH_FEATURES)``; window embeddings
``(windows, FEATURES)``; probabilities ``(windows, labels)``. Times are seconds.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stream_server.inference.musicnn import (
    PATCH_SAMPLES,
    SAMPLE_RATE,
    TEACHERS_DIR,
    WEIGHTS_FILE,
    Musicnn,
)
from stream_server.training.dataset import FloatArray, cache_key, cached_array

log = logging.getLogger(__name__)

#: Seconds between the starts of consecutive 3 s patches.
PATCH_HOP_S: Final = 1.5
#: Seconds of one patch.
PATCH_S: Final = PATCH_SAMPLES / SAMPLE_RATE
#: Features stored per patch: musicnn's mid-end features, mean- and max-pooled over the patch
#: (753 each), and its 200-unit penultimate layer.
PATCH_FEATURES: Final = 753 + 753 + 200
#: The ones the teacher uses: the mean-pooled mid-end features (they told the genres of
#: held-out artists apart best; see the model card).
TEACHER_FEATURES: Final = slice(0, 753)
FEATURES: Final = 753


def patch_starts(samples: int, rate: int = SAMPLE_RATE) -> list[int]:
    """Start offsets (samples at ``rate``) of the patches of a clip of ``samples``."""
    patch = round(PATCH_S * rate)
    hop = round(PATCH_HOP_S * rate)
    if samples <= patch:
        return [0]
    return list(range(0, samples - patch + 1, hop))


def weights_digest(name: str = "msd") -> str:
    """SHA-1 of the shipped musicnn ``name`` weights (cached embeddings and tokens are theirs)."""
    return hashlib.sha1((TEACHERS_DIR / f"musicnn_{name}" / WEIGHTS_FILE).read_bytes()).hexdigest()


def clip_key(weights: str, path: Path, sample_rate: int = SAMPLE_RATE) -> str:
    """A clip's identity in the musicnn caches: the weights' digest and the clip file decoded at
    ``sample_rate`` (musicnn's 16 kHz unless a front-end is fed otherwise)."""
    return f"{weights}|{cache_key(path, sample_rate)}"


def grid_embeddings(
    emb: npt.NDArray[np.float32], samples: int, window_s: float, grid_s: float
) -> npt.NDArray[np.float32]:
    """:func:`window_embeddings` of the windows :func:`grid_starts` lays ``grid_s`` apart over a
    clip of ``samples`` (16 kHz)."""
    window = round(window_s * SAMPLE_RATE)
    grid = round(grid_s * SAMPLE_RATE)
    starts = [s / SAMPLE_RATE for s in grid_starts(samples, window, grid)]
    return window_embeddings(emb, starts, window_s)


def embed(net: Musicnn, audio: FloatArray, batch: int = 32) -> npt.NDArray[np.float32]:
    """``(patches, PATCH_FEATURES)`` embeddings of one clip (``(samples,)`` at 16 kHz)."""
    if audio.size < PATCH_SAMPLES:
        audio = np.pad(audio, (0, PATCH_SAMPLES - audio.size))
    starts = patch_starts(audio.size)
    patches = np.stack([audio[s : s + PATCH_SAMPLES] for s in starts])
    out = []
    with torch.inference_mode():
        for i in range(0, len(patches), batch):
            o = net(torch.from_numpy(patches[i : i + batch]))
            out.append(torch.cat([o.mean_pool, o.max_pool, o.penultimate], dim=1))
    return torch.cat(out).numpy().astype(np.float32)


def embed_cached(
    net: Musicnn, audio: FloatArray, key: str, cache_dir: Path | None
) -> npt.NDArray[np.float32]:
    """:func:`embed` through a ``.npy`` cache keyed by ``key`` (the clip's identity)."""
    digest = hashlib.sha1(f"musicnn|{PATCH_HOP_S}|{key}".encode()).hexdigest()
    path = cache_dir / f"emb-{digest}.npy" if cache_dir else None
    return cached_array(path, lambda: embed(net, audio))


def window_embeddings(
    emb: npt.NDArray[np.float32], starts_s: Sequence[float], window_s: float
) -> npt.NDArray[np.float32]:
    """``(windows, FEATURES)``: per window starting at ``starts_s``, the mean of the patches
    that lie inside it (the patch nearest its centre when none fits)."""
    patch_start = np.arange(emb.shape[0]) * PATCH_HOP_S
    out = np.empty((len(starts_s), emb.shape[1]), dtype=np.float32)
    for row, start in enumerate(starts_s):
        inside = (patch_start >= start - 1e-6) & (patch_start + PATCH_S <= start + window_s + 1e-6)
        if inside.any():
            out[row] = emb[inside].mean(axis=0)
        else:
            centre = start + window_s / 2 - PATCH_S / 2
            out[row] = emb[int(np.argmin(np.abs(patch_start - centre)))]
    return out


class TeacherHead(nn.Module):
    """``(batch, FEATURES)`` embeddings -> ``(batch, labels)`` logits.

    The embeddings are standardised with the training set's mean and std (buffers), then a
    dropout, a 256-unit hidden layer with GELU, dropout and the output layer.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, n_labels: int, hidden: int = 256, dropout: float = 0.3) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(FEATURES))
        self.register_buffer("std", torch.ones(FEATURES))
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(FEATURES, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_labels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net((x - self.mean) / self.std)
        return out


@dataclass(frozen=True)
class HeadOptions:
    """How the teacher head is trained: epochs over the windows, batch, rates, balance."""

    epochs: int = 80
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-2
    balance: float = 1.0
    label_smoothing: float = 0.1
    seed: int = 0


def train_head(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    n_labels: int,
    opts: HeadOptions,
) -> TeacherHead:
    """Fit a :class:`TeacherHead` to window embeddings ``x`` ``(n, FEATURES)``, labels ``y``.

    Windows are drawn with probability ``count(label) ** -balance`` (rare genres more often),
    with Gaussian feature noise of 0.1 standard deviations and label smoothing.
    """
    torch.manual_seed(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    head = TeacherHead(n_labels)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    head.mean.copy_(xt.mean(dim=0))
    head.std.copy_(xt.std(dim=0).clamp_min(1e-4))
    tally = torch.bincount(yt, minlength=n_labels).float().clamp_min(1)
    weights = tally[yt] ** -opts.balance
    optimizer = torch.optim.AdamW(head.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    steps = max(1, math.ceil(len(y) / opts.batch_size))
    total = opts.epochs * steps
    head.train()
    for step in range(total):
        for group in optimizer.param_groups:
            group["lr"] = opts.lr * 0.5 * (1 + math.cos(math.pi * step / total))
        idx = torch.multinomial(weights, opts.batch_size, replacement=True, generator=gen)
        batch = xt[idx] + 0.1 * head.std * torch.randn(len(idx), FEATURES, generator=gen)
        loss = F.cross_entropy(head(batch), yt[idx], label_smoothing=opts.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return head.eval()


def head_probabilities(
    head: TeacherHead, x: npt.NDArray[np.float32], temperature: float = 1.0
) -> npt.NDArray[np.float32]:
    """``(n, labels)`` probabilities of ``head`` for embeddings ``x``, at ``temperature``."""
    with torch.inference_mode():
        logits = head(torch.from_numpy(x)) / temperature
        return torch.softmax(logits, dim=-1).numpy().astype(np.float32)


def grid_starts(samples: int, window: int, grid: int) -> list[int]:
    """Window starts (samples) ``grid`` apart over a clip of ``samples``; ``[0]`` if it is
    shorter than one ``window`` (to be padded)."""
    if samples <= window:
        return [0]
    return list(range(0, samples - window + 1, grid))


@dataclass
class TeacherFit:
    """A fitted teacher and what it says.

    Attributes:
        head: the classifier on musicnn embeddings.
        targets: per training clip, ``(grid windows, labels)`` probabilities at the distillation
            temperature, for the windows of :func:`grid_starts`.
        val_window_accuracy, val_clip_accuracy: on the validation clips (a clip's call is the
            mean of its windows' probabilities).
    """

    head: TeacherHead
    targets: list[npt.NDArray[np.float32]]
    val_window_accuracy: float
    val_clip_accuracy: float


def fit_teacher(
    net: Musicnn,
    train_audio: Sequence[FloatArray],
    train_keys: Sequence[str],
    train_labels: Sequence[int],
    val_audio: Sequence[FloatArray],
    val_keys: Sequence[str],
    val_labels: Sequence[int],
    n_labels: int,
    *,
    window_s: float,
    grid_s: float,
    temperature: float,
    cache_dir: Path | None,
    opts: HeadOptions | None = None,
) -> TeacherFit:
    """Embed every clip (16 kHz audio; ``*_keys`` name them in the cache), train the head on
    the training windows, score the validation clips, and compute the distillation targets."""

    def windows(audio: Sequence[FloatArray], keys: Sequence[str]) -> list[npt.NDArray[np.float32]]:
        return [
            grid_embeddings(
                embed_cached(net, clip, key, cache_dir)[:, TEACHER_FEATURES],
                clip.size,
                window_s,
                grid_s,
            )
            for clip, key in zip(audio, keys, strict=True)
        ]

    train_x = windows(train_audio, train_keys)
    x = np.concatenate(train_x)
    y = np.concatenate(
        [np.full(len(w), label) for w, label in zip(train_x, train_labels, strict=True)]
    )
    head = train_head(x, y.astype(np.int64), n_labels, opts or HeadOptions())
    val_x = windows(val_audio, val_keys)
    correct_windows, correct_clips, n_windows = 0, 0, 0
    for w, label in zip(val_x, val_labels, strict=True):
        probs = head_probabilities(head, w)
        correct_windows += int((probs.argmax(axis=1) == label).sum())
        correct_clips += int(probs.mean(axis=0).argmax() == label)
        n_windows += len(w)
    return TeacherFit(
        head=head,
        targets=[head_probabilities(head, w, temperature) for w in train_x],
        val_window_accuracy=correct_windows / max(1, n_windows),
        val_clip_accuracy=correct_clips / max(1, len(val_x)),
    )


def out_of_fold_targets(
    net: Musicnn,
    audio: Sequence[FloatArray],
    keys: Sequence[str],
    labels: Sequence[int],
    starts: Sequence[Sequence[int]],
    n_labels: int,
    *,
    window_s: float,
    grid_s: float,
    temperature: float,
    cache_dir: Path | None,
    folds: int = 5,
    opts: HeadOptions | None = None,
) -> list[npt.NDArray[np.float32]]:
    """Distillation targets that the teacher did not learn from: the clips are dealt into
    ``folds`` folds (seeded by ``opts.seed``), and each fold's windows are scored by a head
    trained on the other folds' windows (on the ``grid_s`` grid).

    Returns per clip ``(len(starts[i]), labels)`` probabilities at ``temperature`` for the
    windows starting at ``starts[i]`` (samples at 16 kHz).
    """
    opts = opts or HeadOptions()
    embs = [
        embed_cached(net, clip, key, cache_dir)[:, TEACHER_FEATURES]
        for clip, key in zip(audio, keys, strict=True)
    ]
    grid_x = [
        grid_embeddings(e, a.size, window_s, grid_s) for e, a in zip(embs, audio, strict=True)
    ]
    fold_of = np.random.default_rng(opts.seed).permutation(len(audio)) % max(2, folds)
    out: list[npt.NDArray[np.float32]] = [np.empty((0, n_labels), np.float32)] * len(audio)
    for fold in range(max(2, folds)):
        fit_on = [i for i in range(len(audio)) if fold_of[i] != fold]
        x = np.concatenate([grid_x[i] for i in fit_on])
        y = np.concatenate([np.full(len(grid_x[i]), labels[i]) for i in fit_on]).astype(np.int64)
        head = train_head(x, y, n_labels, opts)
        for i in np.flatnonzero(fold_of == fold).tolist():
            at = [s / SAMPLE_RATE for s in starts[i]]
            out[i] = head_probabilities(head, window_embeddings(embs[i], at, window_s), temperature)
    return out
