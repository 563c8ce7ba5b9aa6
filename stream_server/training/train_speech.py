"""Training and measuring the speech detector (:mod:`stream_server.inference.speech`).

Data: a speech set (a root with ``speech/`` and ``music/`` folders and a ``MANIFEST.tsv`` naming
each clip's speaker or artist), split by speaker / artist group
(:func:`stream_server.training.dataset.stratified_split`), and the genre dataset, whose music
(vocals included) is the hard negative, taken with the genre model's own split (its ``split.json``),
so neither model is ever measured on a clip the other was trained on.

Each training batch is half speech, half music, 5 s windows at 16 kHz. Speech windows get a
music bed 8-20 dB below the voice a third of the time (a presenter over a jingle is speech);
both classes are band-limited, tilted, reverberated and noised alike
(:func:`stream_server.training.augment.colour`, :func:`stream_server.training.augment.add_noise`),
so neither bandwidth nor room nor noise tells them apart.

Measured on the validation side, window by window (5 s windows, 1 s apart, as the server
judges them): the share of speech windows called speech, the share of music windows called
speech (per genre too), and the speech-over-music examples.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stream_server.errors import DatasetError
from stream_server.inference.model import DEFAULT_MODEL_DIR
from stream_server.inference.speech import RATE, SpeechDetector, save_detector
from stream_server.training import augment
from stream_server.training.dataset import (
    SPLIT_FILE,
    Clip,
    FloatArray,
    load_audio,
    load_split,
    stratified_split,
    windows_of,
)
from stream_server.training.provenance import MANIFEST_FILE, Provenance, read_tsv

log = logging.getLogger(__name__)

WINDOW_S = 5.0
HOP_S = 1.0


@dataclass(frozen=True)
class SpeechTrainOptions:
    """Everything that decides a speech-detector training run (saved in its ``config.json``)."""

    speech: str
    music: str
    out: str
    genre_split: str = str(DEFAULT_MODEL_DIR / SPLIT_FILE)
    val_fraction: float = 0.25
    seed: int = 0
    epochs: int = 12
    steps_per_epoch: int = 60
    batch_size: int = 32
    lr: float = 2e-3
    threshold: float = 0.8
    cache_dir: str = "~/.cache/genrecast/audio"


@dataclass
class SpeechReport:
    """Validation figures: shares of windows called speech, by what they really are."""

    speech_called_speech: float
    music_called_speech: float
    genre_music_called_speech: float
    by_genre: dict[str, float] = field(default_factory=dict)
    over_music_called_speech: list[float] = field(default_factory=list)
    windows: dict[str, int] = field(default_factory=dict)
    threshold: float = 0.5
    history: list[dict[str, float]] = field(default_factory=list)


def speech_split(
    root: str | Path, val_fraction: float = 0.25, seed: int = 0
) -> tuple[list[Clip], list[Clip]]:
    """``(train, val)`` clips of the speech set at ``root`` (labels ``speech``/``music``), split
    by speaker / artist group. The defaults are the shipped detector's split.

    Raises:
        DatasetError: the set has no manifest.
    """
    clips, prov = _speech_set(Path(root).expanduser())
    return stratified_split(clips, val_fraction, seed, prov)


def _speech_set(root: Path) -> tuple[list[Clip], list[Provenance]]:
    """The speech set's clips (labels ``speech``/``music``) and their speaker/artist groups."""
    manifest = root / MANIFEST_FILE
    if not manifest.is_file():
        raise DatasetError(f"{manifest} is missing: the speech set needs its manifest")
    rows = read_tsv(manifest)
    clips, prov = [], []
    for row in rows:
        if row["label"] not in ("speech", "music"):
            continue
        clips.append(Clip(row["file"], row["label"]))
        who = speaker_group(row.get("speaker_or_artist") or row["file"])
        prov.append(Provenance(row["source_repo"], f"{row['label']}:{who}"))
    return clips, prov


_NUMBERED_GTZAN = re.compile(r'^(GTZAN music_speech ")(.*?)\d*(")$')


def speaker_group(who: str) -> str:
    """The group of a speech-set clip from its manifest's ``speaker_or_artist``.

    Clips in one group stay on one side of the split. GTZAN's music/speech files name no
    speaker, only a stem, and numbered stems are parts of one programme: ``"news1"`` and
    ``"news2"`` are one group. Every speaker of one diarisation recording
    (``"diarizationExample.segments speakerA"``) is one group: they talk in the same room.
    Anything else is its own group.
    """
    numbered = _NUMBERED_GTZAN.match(who)
    if numbered:
        return "".join(numbered.groups())
    if ".segments " in who:
        return who.split(" ", 1)[0]
    return who


def validation_clips(root: str | Path, about: Mapping[str, Any]) -> list[Clip]:
    """The validation side of the speech set at ``root`` for a detector whose ``config.json``
    is ``about``: the ``validation_files`` it saved, or else the split its ``options`` name
    (``val_fraction``, ``seed``; the defaults where it names none).

    Raises:
        DatasetError: the set has no manifest.
    """
    saved = about.get("validation_files")
    if isinstance(saved, list):
        names = set(saved)
        clips, _ = _speech_set(Path(root).expanduser())
        return [c for c in clips if c.path in names]
    options = about.get("options", {})
    defaults = SpeechTrainOptions(speech="", music="", out="")
    return speech_split(
        root,
        float(options.get("val_fraction", defaults.val_fraction)),
        int(options.get("seed", defaults.seed)),
    )[1]


def _load(root: Path, clips: Sequence[Clip], cache: str) -> tuple[list[Clip], list[FloatArray]]:
    return load_audio(root, clips, RATE, cache, min_samples=int(RATE * 1.0))


def _draw(audio: Sequence[FloatArray], n: int, window: int, rng: np.random.Generator) -> FloatArray:
    out = np.zeros((n, window), dtype=np.float32)
    for row, i in enumerate(rng.integers(0, len(audio), size=n)):
        clip = audio[i]
        if clip.size <= window:
            out[row, : clip.size] = clip
        else:
            start = int(rng.integers(0, clip.size - window + 1))
            out[row] = clip[start : start + window]
    return out


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.square().mean(dim=1, keepdim=True).sqrt().clamp_min(1e-6)


def _batch(
    speech: Sequence[FloatArray],
    music: Sequence[FloatArray],
    n: int,
    rng: np.random.Generator,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` augmented windows ``(n, samples)`` at :data:`RATE`, half speech; labels ``(n,)``."""
    window = int(WINDOW_S * RATE)
    half = n // 2
    voice = torch.from_numpy(_draw(speech, half, window, rng))
    bed = torch.from_numpy(_draw(music, half, window, rng))
    over = (torch.rand(half, 1, generator=gen) < 1 / 3).float()
    below_db = 8 + 12 * torch.rand(half, 1, generator=gen)
    bed = bed / _rms(bed) * _rms(voice) * torch.pow(10.0, -below_db / 20) * over
    waves = torch.cat([voice + bed, torch.from_numpy(_draw(music, n - half, window, rng))])
    labels = torch.cat([torch.ones(half), torch.zeros(n - half)])
    waves = augment.colour(
        waves,
        gen,
        RATE,
        lowpass_prob=0.4,
        lowpass_hz=(3000.0, 3400.0, 4000.0, 5500.0),
        tilt_prob=0.5,
        tilt_db_per_octave=4.0,
        reverb_prob=0.3,
        reverb_rt60_s=(0.2, 0.8),
    )
    waves = augment.add_noise(waves, gen, prob=0.5, snr_db=(5.0, 40.0))
    gain_db = -30 * torch.rand(n, 1, generator=gen)
    return waves * torch.pow(10.0, gain_db / 20), labels


def speech_probabilities(
    model: SpeechDetector, clips: Sequence[FloatArray], batch: int = 64
) -> list[np.ndarray]:
    """Per clip, P(speech) of each 5 s window 1 s apart (as the server judges a stream)."""
    out = []
    model.eval()
    with torch.inference_mode():
        for audio in clips:
            wins = torch.from_numpy(windows_of(audio, int(WINDOW_S * RATE), int(HOP_S * RATE)))
            probs = [model(wins[i : i + batch]) for i in range(0, wins.shape[0], batch)]
            out.append(torch.cat(probs).numpy())
    return out


def _share(probs: Sequence[np.ndarray], threshold: float) -> float:
    values = np.concatenate(list(probs)) if probs else np.zeros(0)
    return float((values >= threshold).mean()) if values.size else float("nan")


def train_speech(opts: SpeechTrainOptions) -> SpeechReport:
    """Train, measure on the validation side and save to ``opts.out``; returns the figures."""
    started = time.perf_counter()
    torch.manual_seed(opts.seed)
    speech_root = Path(opts.speech).expanduser()
    music_root = Path(opts.music).expanduser()
    tr, va = speech_split(speech_root, opts.val_fraction, opts.seed)
    g_tr = load_split(opts.genre_split, "train")
    g_va = load_split(opts.genre_split, "val")

    def side(part: Sequence[Clip], label: str) -> list[FloatArray]:
        return _load(speech_root, [c for c in part if c.label == label], opts.cache_dir)[1]

    speech_tr, music_tr = side(tr, "speech"), side(tr, "music")
    genre_tr = _load(music_root, g_tr, opts.cache_dir)[1]
    log.info(
        "speech detector: %d speech, %d + %d music clips for training",
        len(speech_tr), len(music_tr), len(genre_tr),
    )  # fmt: skip
    music_pool = music_tr + genre_tr

    model = SpeechDetector(RATE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=1e-3)
    total = opts.epochs * opts.steps_per_epoch
    rng = np.random.default_rng(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    speech_va = side(va, "speech")
    history = []
    for epoch in range(opts.epochs):
        model.train()
        losses = []
        for step in range(opts.steps_per_epoch):
            k = epoch * opts.steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = opts.lr * 0.5 * (1 + math.cos(math.pi * k / total))
            waves, labels = _batch(speech_tr, music_pool, opts.batch_size, rng, gen)
            with torch.no_grad():
                maps = model.features(waves)
            loss = F.binary_cross_entropy_with_logits(model.logits(maps), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            losses.append(float(loss.detach()))
        recall = _share(speech_probabilities(model, speech_va), opts.threshold)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_speech": recall})
        log.info("epoch %d: loss %.4f, val speech recall %.3f", epoch + 1, np.mean(losses), recall)

    report = measure(model, speech_root, va, music_root, g_va, opts)
    report.history = history
    about = {
        "options": asdict(opts),
        "validation": asdict(report),
        "seconds": round(time.perf_counter() - started, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "validation_files": sorted(c.path for c in va),
    }
    save_detector(model, opts.out, about)
    return report


def measure(
    model: SpeechDetector,
    speech_root: Path,
    val: Sequence[Clip],
    music_root: Path,
    genre_val: Sequence[Clip],
    opts: SpeechTrainOptions,
) -> SpeechReport:
    """The validation figures of ``model`` (see :class:`SpeechReport`)."""
    t = opts.threshold
    speech = speech_probabilities(
        model, _load(speech_root, [c for c in val if c.label == "speech"], opts.cache_dir)[1]
    )
    music = speech_probabilities(
        model, _load(speech_root, [c for c in val if c.label == "music"], opts.cache_dir)[1]
    )
    kept, genre_audio = _load(music_root, genre_val, opts.cache_dir)
    genre = speech_probabilities(model, genre_audio)
    by_genre: dict[str, list[np.ndarray]] = {}
    for clip, probs in zip(kept, genre, strict=True):
        by_genre.setdefault(clip.label, []).append(probs)
    over_dir = speech_root / "speech_over_music"
    over_clips = sorted(over_dir.glob("*")) if over_dir.is_dir() else []
    over = (
        speech_probabilities(
            model,
            _load(
                speech_root,
                [Clip(str(p.relative_to(speech_root)), "over") for p in over_clips],
                opts.cache_dir,
            )[1],
        )
        if over_clips
        else []
    )
    return SpeechReport(
        speech_called_speech=_share(speech, t),
        music_called_speech=_share(music, t),
        genre_music_called_speech=_share(genre, t),
        by_genre={g: _share(p, t) for g, p in sorted(by_genre.items())},
        over_music_called_speech=[_share([p], t) for p in over],
        windows={
            "speech": int(sum(p.size for p in speech)),
            "music": int(sum(p.size for p in music)),
            "genre_music": int(sum(p.size for p in genre)),
        },
        threshold=t,
    )


def format_speech_report(report: SpeechReport) -> str:
    lines = [
        f"speech windows called speech:           {report.speech_called_speech:.3f} "
        f"({report.windows.get('speech', 0)} windows)",
        f"music windows called speech:            {report.music_called_speech:.3f} "
        f"({report.windows.get('music', 0)} windows, speech set)",
        f"genre-set music windows called speech:  {report.genre_music_called_speech:.3f} "
        f"({report.windows.get('genre_music', 0)} windows)",
    ]
    lines += [f"  {g:<10} {share:.3f}" for g, share in report.by_genre.items()]
    if report.over_music_called_speech:
        shares = ", ".join(f"{s:.2f}" for s in report.over_music_called_speech)
        lines.append(f"speech-over-music examples, share called speech: {shares}")
    return "\n".join(lines)
