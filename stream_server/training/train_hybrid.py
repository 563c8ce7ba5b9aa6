"""Training the hybrid ViT: a small ViT over the tokens of the frozen, pretrained musicnn.

The front-end (:class:`~stream_server.inference.musicnn_tokens.MusicnnTokens`) is the module the
server runs; it never changes during training, so every training and validation window goes through
it once (:func:`~stream_server.training.hybrid_data.clip_tokens`, cached) and the epochs only train
the ViT:

1. Each clip's windows on a ``grid_seconds`` grid become raw tokens; with ``codec_prob`` /
   ``lowpass_prob`` above 0, training clips also through their lossy codec
   (:func:`~stream_server.training.dataset.codec_for`) and band-limited to one of ``lowpass_hz``.
2. The per-feature mean and spread of the clean training tokens become the standardisation the
   served front-end applies (saved in ``audio_preprocessing.json``).
3. With ``teacher="musicnn"``, the musicnn teacher (:mod:`stream_server.training.teacher`) scores
   every training window out of fold (:func:`~stream_server.training.teacher.out_of_fold_targets`):
   the loss is half the smoothed labels, half its soft targets. Any other teacher: the labels alone.
4. Each epoch draws windows (genres weighted ``count ** -balance`` per clip; the variants'
   shares as above), masks random runs of tokens (``time_masks`` of up to ``max_time_mask``),
   mixes pairs (mixup) and learns. Validation scores every window of the validation clips and
   every clip (the mean of its windows' probabilities).

Shapes: tokens ``(windows, features, tokens)``; the ViT input ``(batch, features, 1, tokens)``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from stream_server.errors import GenrecastError
from stream_server.inference.musicnn import load_musicnn
from stream_server.inference.musicnn_tokens import (
    MusicnnTokens,
    token_count,
    token_features,
)
from stream_server.inference.preprocessing import MusicnnPreprocessing
from stream_server.training import augment
from stream_server.training.dataset import (
    Clip,
    FloatArray,
    codec_for,
    genre_weights,
    load_audio,
    load_clip,
    window_starts,
)
from stream_server.training.hybrid_data import clip_tokens
from stream_server.training.optim import Phase, seed_for, smooth, soft_cross_entropy
from stream_server.training.recipes import Architecture, TrainOptions
from stream_server.training.teacher import (
    HeadOptions,
    clip_key,
    out_of_fold_targets,
    weights_digest,
)

log = logging.getLogger(__name__)

TokenArray = npt.NDArray[np.float32]


#: Seconds between the windows the teacher's heads learn from (its own grid).
TEACHER_GRID_S = 1.0


@dataclass
class TokenSet:
    """Raw tokens per clip (``(windows, features, tokens)`` each) and the clips' label indices."""

    tokens: list[TokenArray]
    labels: npt.NDArray[np.int64]


@dataclass
class Clips:
    """Decoded clips (``(samples,)`` at the front-end's rate), their cache keys and the starts
    (samples) of the windows their tokens were computed for."""

    clips: list[Clip]
    audio: list[FloatArray]
    keys: list[str]
    starts: list[list[int]]


def lowpass_for(path: str, choices: Sequence[float]) -> float:
    """The band limit (Hz) of a clip's low-passed variant: one of ``choices``, fixed by its path."""
    digest = hashlib.sha1(f"lowpass|{path}".encode()).digest()
    return choices[digest[0] % len(choices)]


def lowpass(audio: FloatArray, rate: int, hz: float) -> FloatArray:
    """``audio`` ``(samples,)`` with everything above ``hz`` removed (a brick-wall FFT filter)."""
    spectrum = np.fft.rfft(audio)
    spectrum[np.fft.rfftfreq(audio.size, 1.0 / rate) > hz] = 0
    out: FloatArray = np.fft.irfft(spectrum, n=audio.size).astype(np.float32)
    return out


def feature_stats(tokens: Sequence[TokenArray]) -> tuple[FloatArray, FloatArray]:
    """Per-feature mean and standard deviation ``(features,)`` over every window and token."""
    width = tokens[0].shape[1]
    total = np.zeros(width)
    square = np.zeros(width)
    count = 0
    for t in tokens:
        x = t.astype(np.float64)
        total += x.sum(axis=(0, 2))
        square += np.square(x).sum(axis=(0, 2))
        count += x.shape[0] * x.shape[2]
    mean = total / max(1, count)
    std = np.sqrt(np.maximum(square / max(1, count) - mean**2, 1e-12))
    return mean.astype(np.float32), std.astype(np.float32)


def standardise(x: TokenArray, mean: FloatArray, std: FloatArray) -> TokenArray:
    out: TokenArray = ((x - mean[:, None]) / np.maximum(std, 1e-6)[:, None]).astype(np.float32)
    return out


def mask_tokens(x: Tensor, gen: torch.Generator, masks: int, max_run: int) -> Tensor:
    """``(batch, features, tokens)`` with ``masks`` random runs of up to ``max_run`` tokens zeroed
    per item (the standardised mean: "nothing heard here")."""
    if masks <= 0 or max_run <= 0:
        return x
    batch, _, tokens = x.shape
    keep = torch.ones(batch, tokens)
    for _ in range(masks):
        runs = torch.randint(0, max_run + 1, (batch,), generator=gen)
        starts = torch.randint(0, tokens, (batch,), generator=gen)
        pos = torch.arange(tokens)[None, :]
        keep *= ~((pos >= starts[:, None]) & (pos < (starts + runs)[:, None]))
    return x * keep[:, None, :].to(x.device)


def token_sets(
    opts: TrainOptions,
    features: MusicnnTokens,
    clips: Sequence[Clip],
    index: dict[str, int],
    variants: bool,
) -> tuple[Clips, TokenSet, list[TokenSet]]:
    """Clean tokens of ``clips`` and, with ``variants``, of their codec and low-passed copies."""
    rate = features.pre.sample_rate
    root = Path(opts.data).expanduser()
    cache = Path(opts.cache_dir).expanduser() if opts.cache_dir else None
    tcache = cache.parent / "tokens" if cache else None
    kept, audio = load_audio(root, clips, rate, cache)
    digest = weights_digest()
    keys = [clip_key(digest, root / c.path, rate) for c in kept]
    labels = np.array([index[c.label] for c in kept], dtype=np.int64)
    window = features.pre.window_samples
    hop = max(1, round(opts.grid_seconds * rate))
    starts = [window_starts(max(a.size, window), window, hop) for a in audio]

    def tokens_of(wave: FloatArray, key: str, variant: str) -> TokenArray:
        tokens = clip_tokens(features, wave, key, tcache, hop_s=opts.grid_seconds, variant=variant)
        return np.ascontiguousarray(tokens[:, : features.features])

    clean = TokenSet([tokens_of(a, k, "clean") for a, k in zip(audio, keys, strict=True)], labels)
    extra: list[TokenSet] = []
    if variants and opts.codec_prob > 0:
        log.info("codec variants of %d clips (cached after the first run)", len(kept))
        codec = []
        for c, k in zip(kept, keys, strict=True):
            name, rate_bps = codec_for(c.path)
            wave = load_clip(root / c.path, rate, cache, (name, rate_bps))
            codec.append(tokens_of(wave, k, f"{name}@{rate_bps}"))
        extra.append(TokenSet(codec, labels))
    if variants and opts.lowpass_prob > 0 and opts.lowpass_hz:
        log.info("band-limited variants of %d clips (cached after the first run)", len(kept))
        low = []
        for c, a, k in zip(kept, audio, keys, strict=True):
            hz = lowpass_for(c.path, opts.lowpass_hz)
            low.append(tokens_of(lowpass(a, rate, hz), k, f"lowpass@{hz:g}"))
        extra.append(TokenSet(low, labels))
    return Clips(kept, audio, keys, starts), clean, extra


def draw(
    clean: TokenSet,
    extra: Sequence[TokenSet],
    shares: Sequence[float],
    weights: npt.NDArray[np.float64],
    n: int,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], TokenArray]:
    """``n`` random windows: clip indices ``(n,)``, window indices ``(n,)`` and raw tokens
    ``(n, features, tokens)``; a ``shares[i]`` part of them from ``extra[i]``."""
    idx = rng.choice(len(clean.tokens), size=n, p=weights)
    pos = np.zeros(n, dtype=np.int64)
    pick = rng.random(n)
    bounds = np.cumsum(shares)
    first = clean.tokens[0]
    out = np.empty((n, *first.shape[1:]), dtype=np.float32)
    for row, i in enumerate(idx):
        source = clean
        for j, bound in enumerate(bounds):
            if pick[row] < bound:
                source = extra[j]
                break
        tokens = source.tokens[i]
        pos[row] = int(rng.integers(0, len(tokens)))
        out[row] = tokens[pos[row]]
    return idx.astype(np.int64), pos, out


def validate_tokens(
    model: torch.nn.Module, val: TokenSet, mean: FloatArray, std: FloatArray, device: torch.device
) -> tuple[float, float]:
    """``(window accuracy, clip accuracy)``; a clip's call is the argmax of its mean probability."""
    model.eval()
    right = total = clips_right = 0
    with torch.inference_mode():
        for tokens, label in zip(val.tokens, val.labels, strict=True):
            x = torch.from_numpy(standardise(tokens, mean, std)).unsqueeze(2).to(device)
            p = torch.softmax(model(pixel_values=x).logits.float(), dim=-1).cpu().numpy()
            right += int((p.argmax(1) == label).sum())
            total += len(p)
            clips_right += int(p.mean(0).argmax() == label)
    return right / max(1, total), clips_right / max(1, len(val.tokens))


def hybrid_preprocessing(arch: Architecture) -> MusicnnPreprocessing:
    """The front-end settings of a hybrid recipe; its image must be exactly the token grid."""
    pre = arch.preprocessing()
    if not isinstance(pre, MusicnnPreprocessing):
        raise GenrecastError(f"{arch.family!r} is not a hybrid recipe")
    channels = token_features(pre)
    if (1, token_count(pre)) != tuple(arch.image_size) or arch.channels != channels:
        raise GenrecastError(
            f"a hybrid recipe needs image_size (1, {token_count(pre)}) and "
            f"{channels} channels ({pre.pooling} tokens of {arch.window_seconds} s windows)"
        )
    return pre


Record = Callable[[int, float, float, float, float, float], None]


def fit(
    opts: TrainOptions,
    arch: Architecture,
    model: torch.nn.Module,
    clips: tuple[Sequence[Clip], Sequence[Clip]],
    index: dict[str, int],
    device: torch.device,
    record: Record,
) -> MusicnnPreprocessing:
    """Train ``model`` (a ViT over ``arch``'s token image) in place; see the module docstring.

    Returns the preprocessing to save with it (its standardisation filled in).
    ``record(epoch, loss, train_acc, val_window_acc, val_clip_acc, s)`` is called after every
    epoch.
    """
    pre = hybrid_preprocessing(arch)
    features = MusicnnTokens(pre)
    log.info("musicnn front-end: tokens of every window (cached after the first run)")
    decoded, train, extra = token_sets(opts, features, clips[0], index, variants=True)
    _, val, _ = token_sets(opts, features, clips[1], index, variants=False)
    targets = None
    if opts.teacher == "musicnn" and pre.context == "stream":
        raise GenrecastError("the musicnn teacher scores windows on their own: use --teacher none")
    if opts.teacher == "musicnn":
        log.info("musicnn teacher: out-of-fold targets for %d clips", len(decoded.clips))
        cache = Path(opts.cache_dir).expanduser() if opts.cache_dir else None
        targets = out_of_fold_targets(
            load_musicnn("msd"),
            decoded.audio,
            decoded.keys,
            [int(v) for v in train.labels],
            decoded.starts,
            len(index),
            window_s=arch.window_seconds,
            grid_s=TEACHER_GRID_S,
            temperature=opts.teacher_temperature,
            cache_dir=cache,
            opts=HeadOptions(seed=opts.seed),
        )
    mean, std = feature_stats(train.tokens)
    pre = replace(pre, feature_mean=tuple(map(float, mean)), feature_std=tuple(map(float, std)))
    shares = [opts.codec_prob] if opts.codec_prob > 0 else []
    if opts.lowpass_prob > 0 and opts.lowpass_hz:
        shares.append(opts.lowpass_prob)
    weights = genre_weights(decoded.clips, opts.balance)
    steps = max(1, math.ceil(len(decoded.clips) * opts.windows_per_clip / opts.batch_size))
    phase = Phase(
        "student", model, opts.epochs, opts.lr, opts.weight_decay, steps, opts.warmup_epochs
    )
    model.to(device)
    n_labels = len(index)
    while phase.epoch < phase.epochs:
        t0 = time.perf_counter()
        seed = seed_for(opts.seed, phase.name, phase.epoch)
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        n = phase.steps_per_epoch * opts.batch_size
        idx, pos, raw = draw(train, extra, shares, weights, n, rng)
        labels = train.labels[idx]
        x_all = standardise(raw, mean, std)
        model.train()
        losses: list[float] = []
        correct = 0
        for step in range(phase.steps_per_epoch):
            phase.step_lr(phase.epoch * phase.steps_per_epoch + step)
            sl = slice(step * opts.batch_size, (step + 1) * opts.batch_size)
            x = mask_tokens(torch.from_numpy(x_all[sl]), gen, opts.time_masks, opts.max_time_mask)
            target_idx = torch.from_numpy(labels[sl])
            both = torch.nn.functional.one_hot(target_idx, n_labels).float()
            if targets is not None:
                taught = np.stack([targets[c][p] for c, p in zip(idx[sl], pos[sl], strict=True)])
                both = torch.cat([both, torch.from_numpy(taught)], dim=1)
            x, both = augment.mixup(x, both, gen, alpha=opts.mixup_alpha, prob=opts.mixup_prob)
            both = both.to(device)
            logits = model(pixel_values=x.unsqueeze(2).to(device)).logits
            loss = soft_cross_entropy(logits, smooth(both[:, :n_labels], opts.label_smoothing))
            if targets is not None:  # the teacher's view blends into the one head
                loss = 0.5 * loss + 0.5 * soft_cross_entropy(logits, both[:, n_labels:])
            phase.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            phase.optimizer.step()
            losses.append(float(loss.detach()))
            correct += int((logits.argmax(-1).cpu() == target_idx).sum())
        phase.epoch += 1
        wa, ca = validate_tokens(model, val, mean, std, device)
        record(phase.epoch, float(np.mean(losses)), correct / n, wa, ca, time.perf_counter() - t0)
    model.eval()
    return pre
