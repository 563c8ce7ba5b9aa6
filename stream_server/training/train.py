"""Training genre models on a folder-per-genre dataset.

The model is a Hugging Face image classifier (ViT; DeiT with a distillation token; LeViT, a ViT
with a convolutional stem and a distillation head) over the log-mel images that
:class:`~stream_server.inference.features.LogMelImage` makes: the very module the server runs, so
training and serving see the same features. The result is saved with ``save_pretrained``
plus ``audio_preprocessing.json`` and loads through
:func:`~stream_server.inference.model.load_model` like any other checkpoint.

One run:

1. Scan the dataset and split it by artist group, stratified by genre and source
   (:mod:`stream_server.training.provenance`; ``split.json`` in the output).
2. Decode every clip once, at the model's rate, and once more through a lossy codec (cached).
3. With distillation (DeiT, LeViT), the teacher comes first: by default a classifier on the
   pretrained musicnn's embeddings (:mod:`stream_server.training.teacher`), whose probabilities for
   every window of the clean training audio become soft targets; or a small CNN trained on the
   same stream of windows (``teacher="cnn"``), whose hard decisions become targets.
4. Each epoch draws windows at random starts on a ``grid_seconds`` grid, genres weighted by
   ``count ** -balance`` per clip; some come through the codec, and all are band-limited,
   tilted, reverberated and noised at random (sources differ in exactly these ways), then
   turned into images, masked (SpecAugment) and mixed (mixup, targets alike).
5. The student learns the labels through its class head and the teacher through its
   distillation head. After each epoch the validation clips are scored window by window and
   clip by clip (the mean of the window probabilities); the state is saved so ``--resume``
   continues the run.

Units: window lengths and hops in seconds at the edges, samples inside; images are
``(batch, channels, n_mels, frames)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stream_server.errors import DatasetError, GenrecastError
from stream_server.inference.features import LogMelImage, Preprocessing
from stream_server.inference.model import save_checkpoint
from stream_server.inference.preprocessing import AudioPreprocessing
from stream_server.training import augment
from stream_server.training.dataset import (
    Clip,
    FloatArray,
    codec_for,
    counts,
    genre_weights,
    labels_of,
    load_audio,
    load_clip,
    save_split,
    scan,
    stratified_split,
    windows_of,
)
from stream_server.training.optim import Phase, seed_for, smooth, soft_cross_entropy
from stream_server.training.provenance import provenance_of, read_provenance
from stream_server.training.recipes import ARCHITECTURES, Architecture, TrainOptions
from stream_server.training.teacher import (
    HeadOptions,
    TeacherFit,
    clip_key,
    fit_teacher,
    grid_starts,
    weights_digest,
)

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
REPORT_FILE = "training.json"
TEACHER_FILE = "teacher.pt"


@dataclass
class EpochStats:
    """One epoch of one phase: mean training loss and validation figures."""

    phase: str
    epoch: int
    loss: float
    train_accuracy: float
    val_window_accuracy: float
    val_clip_accuracy: float
    seconds: float


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    out: Path
    labels: tuple[str, ...]
    history: list[EpochStats] = field(default_factory=list)
    teacher_val_clip_accuracy: float | None = None


class ConvTeacher(nn.Module):
    """A small CNN over the same log-mel images, used as the distillation teacher.

    ``(batch, channels, height, width)`` images in, ``(batch, labels)`` logits out: a strided
    5x5 stem, three conv-BN-ReLU-maxpool blocks, then mean+max pooling over the map.
    """

    def __init__(self, channels: int, n_labels: int, width: int = 24) -> None:
        super().__init__()
        w = width

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(i, o, 3, padding=1, bias=False),
                nn.BatchNorm2d(o),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 5, stride=2, padding=2, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            block(w, 2 * w),
            block(2 * w, 4 * w),
            block(4 * w, 8 * w),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(16 * w, n_labels))

    def forward(self, images: Tensor) -> Tensor:
        x = self.body(images)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        out: Tensor = self.head(pooled)
        return out


def build_model(arch: Architecture, labels: Sequence[str], seed: int = 0) -> nn.Module:
    """A randomly initialised Hugging Face classifier for ``arch`` over ``labels``."""
    from transformers import (
        DeiTConfig,
        DeiTForImageClassificationWithTeacher,
        ViTConfig,
        ViTForImageClassification,
    )

    torch.manual_seed(seed)
    names = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    if arch.family == "levit":
        from transformers import LevitConfig, LevitForImageClassificationWithTeacher

        height, width = arch.image_size
        if height != width or not arch.stages:
            raise GenrecastError("a levit recipe needs a square image and its stages")
        widths, depths, heads = (list(x) for x in zip(*arch.stages, strict=True))
        config = LevitConfig(
            image_size=height,
            num_channels=arch.channels,
            patch_size=arch.patch,
            hidden_sizes=widths,
            depths=depths,
            num_attention_heads=heads,
            key_dim=[16] * len(widths),
            **names,
        )
        levit: nn.Module = LevitForImageClassificationWithTeacher(config)
        return levit
    common: dict[str, Any] = {
        "image_size": list(arch.image_size),
        # a hybrid's tokens are its patches: 1x1 over the front-end's feature map
        "patch_size": 1 if arch.family == "hybrid" else arch.patch,
        "num_channels": arch.channels,
        "hidden_size": arch.hidden_size,
        "num_hidden_layers": arch.layers,
        "num_attention_heads": arch.heads,
        "intermediate_size": 4 * arch.hidden_size,
        "hidden_dropout_prob": arch.dropout,
        **names,
    }
    model: nn.Module
    if arch.family == "deit":
        model = DeiTForImageClassificationWithTeacher(DeiTConfig(**common))
    else:
        model = ViTForImageClassification(ViTConfig(**common))
    return model


def draw_grid_windows(
    audio: Sequence[FloatArray],
    variants: Sequence[FloatArray] | None,
    weights: npt.NDArray[np.float64],
    n: int,
    window: int,
    grid: int,
    variant_prob: float,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], FloatArray]:
    """``n`` windows at random grid starts (:func:`~stream_server.training.teacher.grid_starts`).

    Returns clip indices ``(n,)``, grid positions ``(n,)`` and the audio ``(n, window)`` (short
    clips padded); with ``variants`` (each clip through a codec, same length) a ``variant_prob``
    share of the windows comes from the variant instead.
    """
    idx = rng.choice(len(audio), size=n, p=weights)
    pos = np.zeros(n, dtype=np.int64)
    out = np.zeros((n, window), dtype=np.float32)
    use_variant = rng.random(n) < variant_prob
    for row, i in enumerate(idx):
        clip = variants[i] if variants is not None and use_variant[row] else audio[i]
        starts = grid_starts(clip.size, window, grid)
        pos[row] = int(rng.integers(0, len(starts)))
        piece = clip[starts[pos[row]] : starts[pos[row]] + window]
        out[row, : piece.size] = piece
    return idx.astype(np.int64), pos, out


def training_images(
    features: LogMelImage,
    waves: Tensor,
    gen: torch.Generator | None = None,
    opts: TrainOptions | None = None,
) -> Tensor:
    """Images for ``(batch, samples)`` windows, augmented when ``gen`` and ``opts`` are given.

    Without augmentation this is exactly ``features(waves)``: what the server computes.
    """
    if gen is None or opts is None:
        plain: Tensor = features(waves)
        return plain
    waves = augment.colour(
        waves,
        gen,
        features.pre.sample_rate,
        lowpass_prob=opts.lowpass_prob,
        lowpass_hz=opts.lowpass_hz,
        tilt_prob=opts.tilt_prob,
        tilt_db_per_octave=opts.tilt_db_per_octave,
        reverb_prob=opts.reverb_prob,
        reverb_rt60_s=opts.reverb_rt60_s,
    )
    waves = augment.add_noise(waves, gen, prob=opts.noise_prob, snr_db=opts.noise_snr_db)
    images: Tensor = features(waves)
    return augment.spec_mask(
        images,
        gen,
        freq_masks=opts.freq_masks,
        max_freq=opts.max_freq_mask,
        time_masks=opts.time_masks,
        max_time=opts.max_time_mask,
    )


@dataclass
class _Val:
    images: Tensor  # (windows, C, H, W)
    window_labels: Tensor  # (windows,)
    clip_of: Tensor  # (windows,) clip index
    clip_labels: Tensor  # (clips,)


def _val_set(
    features: LogMelImage,
    audio: Sequence[FloatArray],
    labels: Sequence[int],
    window: int,
    hop: int,
) -> _Val:
    images, wl, clip_of = [], [], []
    with torch.inference_mode():
        for i, (clip, label) in enumerate(zip(audio, labels, strict=True)):
            wins = torch.from_numpy(windows_of(clip, window, hop))
            images.append(features(wins))
            wl += [label] * wins.shape[0]
            clip_of += [i] * wins.shape[0]
    return _Val(
        torch.cat(images),
        torch.tensor(wl),
        torch.tensor(clip_of),
        torch.tensor(list(labels)),
    )


def _logits(model: nn.Module, images: Tensor) -> Tensor:
    out: Tensor = (
        model(images) if isinstance(model, ConvTeacher) else model(pixel_values=images).logits
    )
    return out


def validate(
    model: nn.Module, val: _Val, device: torch.device, batch: int = 64
) -> tuple[float, float]:
    """``(window accuracy, clip accuracy)``; a clip's call is the argmax of its mean probability."""
    if val.images.shape[0] == 0:
        return float("nan"), float("nan")
    model.eval()
    probs = []
    with torch.inference_mode():
        for i in range(0, val.images.shape[0], batch):
            x = val.images[i : i + batch].to(device)
            probs.append(torch.softmax(_logits(model, x).float(), dim=-1).cpu())
    p = torch.cat(probs)
    window_acc = float((p.argmax(1) == val.window_labels).float().mean())
    n_clips = val.clip_labels.numel()
    sums = torch.zeros(n_clips, p.shape[1]).index_add_(0, val.clip_of, p)
    clip_acc = float((sums.argmax(1) == val.clip_labels).float().mean())
    return window_acc, clip_acc


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="win", disable=not enabled, leave=False)


@dataclass
class _TrainData:
    """The training side: clips' audio, their codec variants, labels, sampling weights, and
    the teacher's distillation targets per clip and grid window (musicnn teacher only)."""

    audio: list[FloatArray]
    variants: list[FloatArray] | None
    labels: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float64]
    targets: list[npt.NDArray[np.float32]] | None = None


def _run_epoch(
    phase: Phase,
    opts: TrainOptions,
    features: LogMelImage,
    data: _TrainData,
    n_labels: int,
    device: torch.device,
    cnn_teacher: nn.Module | None,
) -> tuple[float, float]:
    """Train ``phase.model`` for one epoch; returns (mean loss, training accuracy).

    A student with a distillation head learns the labels through its class head and the
    teacher through its distillation head: the musicnn teacher's soft targets for the same
    (clean) window, or the CNN teacher's hard decision on the augmented one.
    """
    seed = seed_for(opts.seed, phase.name, phase.epoch)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    window = features.pre.window_samples
    grid = max(1, round(opts.grid_seconds * features.pre.sample_rate))
    n = phase.steps_per_epoch * opts.batch_size
    idx, pos, waves = draw_grid_windows(
        data.audio, data.variants, data.weights, n, window, grid, opts.codec_prob, rng
    )
    model = phase.model
    model.train()
    if cnn_teacher is not None:
        cnn_teacher.eval()
    losses: list[float] = []
    correct = 0
    bar = _progress_bar(n, f"{phase.name} {phase.epoch + 1}/{phase.epochs}", opts.progress)
    try:
        for step in range(phase.steps_per_epoch):
            phase.step_lr(phase.epoch * phase.steps_per_epoch + step)
            sl = slice(step * opts.batch_size, (step + 1) * opts.batch_size)
            wave = torch.from_numpy(waves[sl])
            target_idx = torch.from_numpy(data.labels[idx[sl]])
            with torch.no_grad():
                images = training_images(features, wave.to(device), gen, opts)
            targets = F.one_hot(target_idx, n_labels).float().to(device)
            taught = None
            if data.targets is not None:
                taught = torch.from_numpy(
                    np.stack([data.targets[c][p] for c, p in zip(idx[sl], pos[sl], strict=True)])
                ).to(device)
                both = torch.cat([targets, taught], dim=1)
                images, both = augment.mixup(
                    images, both, gen, alpha=opts.mixup_alpha, prob=opts.mixup_prob
                )
                targets, taught = both[:, :n_labels], both[:, n_labels:]
            else:
                images, targets = augment.mixup(
                    images, targets, gen, alpha=opts.mixup_alpha, prob=opts.mixup_prob
                )
            loss, logits = _loss(model, images, targets, taught, cnn_teacher, opts)
            phase.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            phase.optimizer.step()
            losses.append(float(loss.detach()))
            correct += int((logits.argmax(-1).cpu() == target_idx).sum())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            bar.update(wave.shape[0])
    finally:
        bar.close()
    return float(np.mean(losses)), correct / n


def _loss(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    taught: Tensor | None,
    cnn_teacher: nn.Module | None,
    opts: TrainOptions,
) -> tuple[Tensor, Tensor]:
    """The training loss and the logits it scored (see :func:`_run_epoch`)."""
    if isinstance(model, ConvTeacher):
        logits = model(images)
        return soft_cross_entropy(logits, targets), logits
    out = model(pixel_values=images)
    smoothed = smooth(targets, opts.label_smoothing)
    distill = getattr(out, "distillation_logits", None)
    if distill is None:  # a plain ViT: the teacher's targets blend into its one head
        loss = soft_cross_entropy(out.logits, smoothed)
        if taught is not None:
            loss = 0.5 * loss + 0.5 * soft_cross_entropy(out.logits, taught)
        return loss, out.logits
    if taught is not None:
        teacher_loss = soft_cross_entropy(distill, taught)
    elif cnn_teacher is not None:
        with torch.no_grad():
            hard = _logits(cnn_teacher, images).argmax(dim=-1)
        teacher_loss = F.cross_entropy(distill.float(), hard)
    else:
        teacher_loss = soft_cross_entropy(distill, smoothed)
    return 0.5 * soft_cross_entropy(out.cls_logits, smoothed) + 0.5 * teacher_loss, out.logits


def _save_state(out: Path, payload: dict[str, Any]) -> None:
    tmp = out / (STATE_FILE + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(out / STATE_FILE)


def _report(
    out: Path,
    opts: TrainOptions,
    arch: Architecture,
    result: TrainResult,
    extra: dict[str, Any],
) -> None:
    data = {
        "options": asdict(opts),
        "architecture": asdict(arch),
        "labels": list(result.labels),
        "history": [asdict(h) for h in result.history],
        "teacher_val_clip_accuracy": result.teacher_val_clip_accuracy,
        **extra,
    }
    (out / REPORT_FILE).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def train(
    opts: TrainOptions,
    arch: Architecture | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Run a training as described in the module docstring; returns where the model went.

    ``arch`` overrides ``opts.arch`` (tests use tiny recipes). Raises :class:`DatasetError` for
    an unusable dataset and :class:`GenrecastError` for bad options.
    """
    if arch is None:
        if opts.arch not in ARCHITECTURES:
            names = ", ".join(ARCHITECTURES)
            raise GenrecastError(f"unknown architecture {opts.arch!r} (choose from {names})")
        arch = ARCHITECTURES[opts.arch]
    if opts.epochs < 1 or opts.batch_size < 1 or opts.windows_per_clip < 1:
        raise GenrecastError("epochs, batch size and windows per clip must be at least 1")
    allowed = {"vit": ("musicnn", "cnn", "none"), "hybrid": ("musicnn", "none")}.get(
        arch.family, ("musicnn", "cnn")
    )
    if opts.teacher not in allowed:
        raise GenrecastError(
            f"teacher {opts.teacher!r} does not teach a {arch.family} recipe: "
            f"choose {' or '.join(allowed)}"
        )
    if arch.family == "hybrid" and opts.resume:
        raise GenrecastError(
            "--resume continues log-mel recipes; a hybrid keeps no state (it trains in "
            "minutes once its tokens are cached): run it again without --resume"
        )
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenrecastError("--device cuda asked for, but no CUDA device is available")
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    out = Path(opts.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    clips = scan(opts.data, opts.genres, opts.min_clips)
    labels = labels_of(clips)
    if len(labels) < 2:
        raise DatasetError(f"need at least two genres to train, found {list(labels)}")
    provenance = provenance_of((c.path for c in clips), read_provenance(opts.data))
    train_clips, val_clips = stratified_split(clips, opts.val_fraction, opts.seed, provenance)
    save_split(out, train_clips, val_clips)
    if arch.family == "hybrid":
        return _train_hybrid(opts, arch, (train_clips, val_clips), labels, device, on_epoch)
    pre = arch.preprocessing()
    if not isinstance(pre, AudioPreprocessing):
        raise GenrecastError(f"{opts.arch!r} does not take log-mel images")
    log.info(
        "%d genres, %d training and %d validation clips; decoding at %d Hz",
        len(labels), len(train_clips), len(val_clips), pre.sample_rate,
    )  # fmt: skip
    train_clips, train_audio = load_audio(opts.data, train_clips, pre.sample_rate, opts.cache_dir)
    val_clips, val_audio = load_audio(opts.data, val_clips, pre.sample_rate, opts.cache_dir)
    index = {label: i for i, label in enumerate(labels)}
    data = _TrainData(
        audio=train_audio,
        variants=_codec_variants(opts, train_clips, pre.sample_rate),
        labels=np.array([index[c.label] for c in train_clips], dtype=np.int64),
        weights=genre_weights(train_clips, opts.balance),
    )
    features = LogMelImage(pre).to(device)
    hop = max(1, round(opts.val_hop_seconds * pre.sample_rate))
    val = _val_set(
        features, val_audio, [index[c.label] for c in val_clips], pre.window_samples, hop
    )
    steps = max(1, math.ceil(len(train_clips) * opts.windows_per_clip / opts.batch_size))

    result = TrainResult(out, labels)
    state: dict[str, Any] = {}
    if opts.resume and (out / STATE_FILE).is_file():
        state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=False)
        if tuple(state.get("labels", ())) != labels:
            raise GenrecastError(f"{out / STATE_FILE} was saved for other genres; drop --resume")
        result.history = [EpochStats(**h) for h in state.get("history", [])]
        result.teacher_val_clip_accuracy = state.get("teacher_val_clip_accuracy")
        log.info("resuming from %s", out / STATE_FILE)

    def record(phase: Phase, loss: float, acc: float, t0: float) -> EpochStats:
        wa, ca = validate(phase.model, val, device)
        stats = EpochStats(phase.name, phase.epoch, loss, acc, wa, ca, time.perf_counter() - t0)
        result.history.append(stats)
        log.info(
            "%s epoch %d/%d: loss %.3f, train acc %.3f, val window acc %.3f, val clip acc %.3f",
            phase.name, phase.epoch, phase.epochs, loss, acc, wa, ca,
        )  # fmt: skip
        if on_epoch is not None:
            on_epoch(stats)
        return stats

    teacher: nn.Module | None = None
    if arch.distill and opts.teacher == "musicnn":
        fit = _musicnn_teacher(opts, arch, train_clips, val_clips, index)
        grid = max(1, round(opts.grid_seconds * pre.sample_rate))
        for clip, audio, targets in zip(train_clips, data.audio, fit.targets, strict=True):
            if len(targets) != len(grid_starts(audio.size, pre.window_samples, grid)):
                raise GenrecastError(f"the teacher scored another number of windows of {clip.path}")
        data.targets = fit.targets
        result.teacher_val_clip_accuracy = fit.val_clip_accuracy
        log.info(
            "musicnn teacher: val window acc %.3f, val clip acc %.3f",
            fit.val_window_accuracy, fit.val_clip_accuracy,
        )  # fmt: skip
    elif arch.distill:
        torch.manual_seed(opts.seed)
        t_model = ConvTeacher(arch.channels, len(labels)).to(device)
        if state.get("teacher_done") and (out / TEACHER_FILE).is_file():
            t_model.load_state_dict(torch.load(out / TEACHER_FILE, map_location=device))
        else:
            tphase = Phase(
                "teacher", t_model, opts.teacher_epochs, opts.teacher_lr, 1e-4, steps,
                opts.warmup_epochs,
            )  # fmt: skip
            if "teacher" in state:
                tphase.load(state["teacher"])
            while tphase.epoch < tphase.epochs:
                t0 = time.perf_counter()
                loss, acc = _run_epoch(tphase, opts, features, data, len(labels), device, None)
                tphase.epoch += 1
                stats = record(tphase, loss, acc, t0)
                result.teacher_val_clip_accuracy = stats.val_clip_accuracy
                _save_state(out, {**_common_state(labels, result), "teacher": tphase.state()})
            torch.save(t_model.state_dict(), out / TEACHER_FILE)
        teacher = t_model.eval()

    model = build_model(arch, labels, opts.seed).to(device)
    phase = Phase(
        "student", model, opts.epochs, opts.lr, opts.weight_decay, steps, opts.warmup_epochs
    )
    if "student" in state:
        phase.load(state["student"])
    while phase.epoch < phase.epochs:
        t0 = time.perf_counter()
        loss, acc = _run_epoch(phase, opts, features, data, len(labels), device, teacher)
        phase.epoch += 1
        record(phase, loss, acc, t0)
        _save_state(
            out, {**_common_state(labels, result), "teacher_done": True, "student": phase.state()}
        )

    model.eval()
    _save(model, pre, opts, arch, result, (train_clips, val_clips), started)
    return result


def _save(
    model: nn.Module,
    pre: Preprocessing,
    opts: TrainOptions,
    arch: Architecture,
    result: TrainResult,
    clips: tuple[Sequence[Clip], Sequence[Clip]],
    started: float,
    **extra: Any,
) -> None:
    """The checkpoint and ``training.json`` (options, recipe, history, split sizes, time)."""
    save_checkpoint(model.cpu(), pre, result.out)
    _report(
        result.out,
        opts,
        arch,
        result,
        {
            "train_clips": counts(clips[0]),
            "val_clips": counts(clips[1]),
            "split": "artist groups, stratified by genre and source (provenance.py)",
            "seconds": round(time.perf_counter() - started, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
            **extra,
            "torch": torch.__version__,
        },
    )


def _train_hybrid(
    opts: TrainOptions,
    arch: Architecture,
    clips: tuple[list[Clip], list[Clip]],
    labels: tuple[str, ...],
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None,
) -> TrainResult:
    """A hybrid recipe (:mod:`stream_server.training.train_hybrid`): the ViT over frozen musicnn
    tokens."""
    from stream_server.training import train_hybrid

    started = time.perf_counter()
    out = Path(opts.out).expanduser()
    result = TrainResult(out, labels)
    index = {label: i for i, label in enumerate(labels)}
    model = build_model(arch, labels, opts.seed)

    def record(epoch: int, loss: float, acc: float, wa: float, ca: float, s: float) -> None:
        stats = EpochStats("student", epoch, loss, acc, wa, ca, s)
        result.history.append(stats)
        log.info(
            "epoch %d/%d: loss %.3f, train acc %.3f, val window acc %.3f, val clip acc %.3f",
            epoch, opts.epochs, loss, acc, wa, ca,
        )  # fmt: skip
        if on_epoch is not None:
            on_epoch(stats)

    pre = train_hybrid.fit(opts, arch, model, clips, index, device, record)
    _save(
        model, pre, opts, arch, result, clips, started,
        frozen_front_end=f"{pre.weights} (stream_server/teachers)",
    )  # fmt: skip
    return result


def _codec_variants(
    opts: TrainOptions, clips: Sequence[Clip], sample_rate: int
) -> list[FloatArray] | None:
    """Each training clip through its codec (:func:`~stream_server.training.dataset.codec_for`),
    cached;
    ``None`` when ``codec_prob`` is 0."""
    if opts.codec_prob <= 0:
        return None
    root = Path(opts.data).expanduser()
    cache = Path(opts.cache_dir).expanduser() if opts.cache_dir else None
    log.info("codec variants of %d clips (cached after the first run)", len(clips))
    return [load_clip(root / c.path, sample_rate, cache, codec_for(c.path)) for c in clips]


def _musicnn_teacher(
    opts: TrainOptions,
    arch: Architecture,
    train_clips: Sequence[Clip],
    val_clips: Sequence[Clip],
    index: dict[str, int],
) -> TeacherFit:
    """The musicnn teacher (:mod:`stream_server.training.teacher`) fitted on the training clips."""
    from stream_server.inference.musicnn import SAMPLE_RATE, load_musicnn

    weights = weights_digest()  # the cached embeddings belong to these weights

    root = Path(opts.data).expanduser()
    cache = Path(opts.cache_dir).expanduser() if opts.cache_dir else None
    log.info(
        "musicnn teacher: embedding %d clips (cached after the first run)",
        len(train_clips) + len(val_clips),
    )
    kept, train_audio = load_audio(root, train_clips, SAMPLE_RATE, cache)
    if kept != list(train_clips):  # the targets go to the clips by position
        raise GenrecastError("a training clip that decoded at the model's rate failed at 16 kHz")
    train_clips = kept
    val_clips, val_audio = load_audio(root, val_clips, SAMPLE_RATE, cache)
    return fit_teacher(
        load_musicnn("msd"),
        train_audio,
        [clip_key(weights, root / c.path) for c in train_clips],
        [index[c.label] for c in train_clips],
        val_audio,
        [clip_key(weights, root / c.path) for c in val_clips],
        [index[c.label] for c in val_clips],
        len(index),
        window_s=arch.window_seconds,
        grid_s=opts.grid_seconds,
        temperature=opts.teacher_temperature,
        cache_dir=cache,
        opts=HeadOptions(seed=opts.seed),
    )


def _common_state(labels: tuple[str, ...], result: TrainResult) -> dict[str, Any]:
    return {
        "labels": list(labels),
        "history": [asdict(h) for h in result.history],
        "teacher_val_clip_accuracy": result.teacher_val_clip_accuracy,
    }


def main_log_setup() -> None:
    """Log training progress lines to stderr."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
