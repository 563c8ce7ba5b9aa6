"""Genre datasets on disk: a folder per genre, split by artist, decoded once and cached.

A dataset root holds one sub-folder per genre; the folder name is the label and every audio file
inside (any format FFmpeg decodes) is one clip. Splits keep each artist group on one side
(:mod:`stream_server.training.provenance`; by file where the dataset names no sources), stratified
by genre and source and seeded, so windows of one clip, or clips of one artist, never land on both
sides. Clips are decoded with PyAV to mono
float32 at the model's sample rate and cached as ``.npy`` files keyed by the file's content (its
SHA-1) and the rate, so a second run starts in seconds, also after the set is copied or touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from stream_server.errors import DatasetError, DecodeError
from stream_server.media.decode import codec_round_trip, decode_mono
from stream_server.training.provenance import Provenance, provenance_of

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

#: File name endings taken as audio clips.
AUDIO_SUFFIXES = frozenset(
    {".opus", ".ogg", ".oga", ".wav", ".flac", ".mp3", ".m4a", ".aac", ".au", ".aif", ".aiff"}
)

#: File written beside a trained model listing the files of each split (paths relative to the
#: dataset root).
SPLIT_FILE = "split.json"


@dataclass(frozen=True)
class Clip:
    """One labelled audio file. ``path`` is relative to the dataset root."""

    path: str
    label: str


def scan(root: str | Path, genres: Sequence[str] | None = None, min_clips: int = 1) -> list[Clip]:
    """The clips under ``root``: every audio file in each genre folder, sorted by path.

    Args:
        genres: keep only these folders (each must exist and hold clips); default all folders.
        min_clips: with ``genres`` unset, skip folders with fewer clips than this.
    Raises:
        DatasetError: ``root`` missing, a requested genre missing or empty, or no clips at all.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetError(f"dataset directory {str(root)!r} does not exist")
    folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    by_label = {
        p.name: sorted(
            f.relative_to(base).as_posix()
            for f in p.rglob("*")
            if f.is_file()
            and f.suffix.lower() in AUDIO_SUFFIXES
            and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
        for p in folders
    }
    if genres is not None:
        missing = [g for g in genres if not by_label.get(g)]
        if missing:
            raise DatasetError(f"no clips for genre(s) {', '.join(missing)} under {base}")
        chosen = list(dict.fromkeys(genres))
    else:
        chosen = [g for g, files in by_label.items() if files and len(files) >= min_clips]
    clips = [Clip(path, label) for label in chosen for path in by_label[label]]
    if not clips:
        least = f" with at least {min_clips} clips" if min_clips > 1 else ""
        raise DatasetError(f"no genre folders{least} found under {base}")
    return sorted(clips, key=lambda c: c.path)


def labels_of(clips: Iterable[Clip]) -> tuple[str, ...]:
    """The sorted distinct labels of ``clips``."""
    return tuple(sorted({c.label for c in clips}))


def stratified_split(
    clips: Sequence[Clip],
    val_fraction: float,
    seed: int,
    provenance: Sequence[Provenance] | None = None,
) -> tuple[list[Clip], list[Clip]]:
    """Split by group, stratified by genre and source.

    Within each (genre, source) stratum, whole groups (clips of one artist, see
    :mod:`stream_server.training.provenance`) go to validation in a seeded random order, each one
    that brings the stratum's validation count closer to ``round(clips * val_fraction)``; a group
    seen in an earlier stratum keeps its side. Every genre with at least two groups then has at
    least one validation group and keeps at least one training group. Without ``provenance``
    every clip is its own group and the split is by file. The result depends only on the
    clips, their provenance and ``seed``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    prov = (
        list(provenance) if provenance is not None else provenance_of((c.path for c in clips), {})
    )
    if len(prov) != len(clips):
        raise ValueError("one provenance per clip")
    group_of = {c.path: p.group for c, p in zip(clips, prov, strict=True)}
    rng = random.Random(seed)
    in_val: dict[str, bool] = {}
    for label, source in sorted({(c.label, p.source) for c, p in zip(clips, prov, strict=True)}):
        members = [
            c.path
            for c, p in zip(clips, prov, strict=True)
            if (c.label, p.source) == (label, source)
        ]
        size = Counter(group_of[path] for path in members)
        groups = sorted(size)
        rng.shuffle(groups)
        target = round(len(members) * val_fraction)
        taken = sum(n for g, n in size.items() if in_val.get(g))
        for group in groups:
            if group in in_val:
                continue
            closer = abs(taken + size[group] - target) < abs(taken - target)
            in_val[group] = closer and len(groups) > 1
            taken += size[group] if in_val[group] else 0
    for label in labels_of(clips):
        groups = sorted({group_of[c.path] for c in clips if c.label == label})
        if len(groups) < 2:
            continue
        sides = {in_val[g] for g in groups}
        if sides == {False}:
            in_val[min(groups, key=lambda g: (_group_size(clips, group_of, g), g))] = True
        elif sides == {True}:
            in_val[min(groups, key=lambda g: (_group_size(clips, group_of, g), g))] = False
    train = [c for c in clips if not in_val[group_of[c.path]]]
    val = [c for c in clips if in_val[group_of[c.path]]]
    return sorted(train, key=lambda c: c.path), sorted(val, key=lambda c: c.path)


def _group_size(clips: Sequence[Clip], group_of: dict[str, str], group: str) -> int:
    return sum(1 for c in clips if group_of[c.path] == group)


def counts(clips: Iterable[Clip]) -> dict[str, int]:
    """Clips per label, in label order."""
    tally = Counter(c.label for c in clips)
    return {label: tally[label] for label in sorted(tally)}


def genre_weights(clips: Sequence[Clip], balance: float) -> npt.NDArray[np.float64]:
    """Sampling probability per clip: ``count(genre) ** -balance``, normalised.

    ``balance`` 0 samples clips uniformly (genres as often as they have clips); 1 samples every
    genre equally often.
    """
    tally = counts(clips)
    w = np.array([tally[c.label] ** -balance for c in clips], dtype=np.float64)
    out: npt.NDArray[np.float64] = w / w.sum()
    return out


def save_split(directory: str | Path, train: Sequence[Clip], val: Sequence[Clip]) -> Path:
    """Write :data:`SPLIT_FILE` into ``directory``."""
    path = Path(directory) / SPLIT_FILE
    data = {
        "train": [[c.path, c.label] for c in train],
        "val": [[c.path, c.label] for c in val],
    }
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def load_split(path: str | Path, part: str) -> list[Clip]:
    """The clips of ``part`` (``"train"`` or ``"val"``) from a split file."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        rows = data[part]
        if not all(
            isinstance(row, list) and len(row) == 2 and all(isinstance(v, str) for v in row)
            for row in rows
        ):
            raise ValueError("every row must be a [path, label] pair of strings")
        return [Clip(p, label) for p, label in rows]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"cannot read split {part!r} from {file}: {exc}") from None


#: A lossy codec and its bit rate (bit/s), e.g. ``("mp3", 32000)``.
Codec = tuple[str, int]

#: The codec round trips training draws from: each clip gets one, picked by its path.
TRAINING_CODECS: tuple[Codec, ...] = (("mp3", 32000), ("aac", 32000), ("mp3", 64000))


def codec_for(path: str) -> Codec:
    """The clip's codec from :data:`TRAINING_CODECS`: fixed by its path, spread evenly."""
    digest = hashlib.sha1(path.encode()).digest()
    return TRAINING_CODECS[digest[0] % len(TRAINING_CODECS)]


def cache_key(path: Path, sample_rate: int, codec: Codec | None = None) -> str:
    """The cache name of ``path`` decoded at ``sample_rate`` Hz (through ``codec``, if given):
    a SHA-1 over the file's bytes and the settings, so the same audio anywhere, copied or
    touched, finds its cache, and changed audio never does.

    Raises:
        DecodeError: the file cannot be read (as decoding it would: the clip is skipped).
    """
    try:
        with path.open("rb") as f:
            content = hashlib.file_digest(f, "sha1").hexdigest()
    except OSError as exc:
        raise DecodeError(f"cannot open audio source {str(path)!r}: {exc}") from exc
    ident = f"{content}|{sample_rate}"
    if codec is not None:
        ident += f"|{codec[0]}@{codec[1]}"
    return hashlib.sha1(ident.encode()).hexdigest()


def load_clip(
    path: Path, sample_rate: int, cache_dir: Path | None, codec: Codec | None = None
) -> FloatArray:
    """Decode one clip to ``(samples,)`` float32 mono at ``sample_rate`` Hz, through the cache.

    With ``codec``, the clip as that codec delivers it (:func:`codec_round_trip`), same length.
    """
    cached = cache_dir / f"{cache_key(path, sample_rate, codec)}.npy" if cache_dir else None

    def compute() -> FloatArray:
        if codec is None:
            return decode_mono(str(path), sample_rate)
        return codec_round_trip(load_clip(path, sample_rate, cache_dir), sample_rate, *codec)

    return cached_array(cached, compute)


def cached_array(path: Path | None, compute: Callable[[], FloatArray]) -> FloatArray:
    """The float32 array cached at ``path`` (a ``.npy`` file), or ``compute()`` saved there.

    An unreadable cache file is logged and computed again; the new file is written whole or not
    at all (a temporary file renamed into place). ``path=None``: no cache, just ``compute()``.
    """
    if path is not None and path.is_file():
        try:
            loaded: FloatArray = np.load(path).astype(np.float32, copy=False)
            return loaded
        except (OSError, ValueError):
            log.warning("ignoring unreadable cache file %s", path)
    array = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, array)
        tmp.replace(path)
    return array


def load_audio(
    root: str | Path,
    clips: Sequence[Clip],
    sample_rate: int,
    cache_dir: str | Path | None = None,
    *,
    min_samples: int = 1,
) -> tuple[list[Clip], list[FloatArray]]:
    """Decode ``clips``; returns the clips that decoded to at least ``min_samples`` and their audio.

    A clip that fails to decode or is too short is logged and left out rather than ending the run.
    """
    base = Path(root).expanduser()
    cache = Path(cache_dir).expanduser() if cache_dir else None
    kept: list[Clip] = []
    audio: list[FloatArray] = []
    for clip in clips:
        try:
            wave = load_clip(base / clip.path, sample_rate, cache)
        except DecodeError as exc:
            log.warning("skipping %s: %s", clip.path, exc)
            continue
        if wave.size < min_samples:
            log.warning(
                "skipping %s: %.1f s is shorter than needed", clip.path, wave.size / sample_rate
            )
            continue
        kept.append(clip)
        audio.append(wave)
    if not kept:
        raise DatasetError(f"none of the {len(clips)} clips under {base} could be used")
    return kept, audio


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Start offsets (samples) of the windows covering a clip of ``n_samples``.

    Windows are ``window`` samples long, ``hop`` apart, the last one flush with the clip's end so
    no audio is left out; a clip shorter than one window gives the single start 0 (to be padded).
    """
    if window <= 0 or hop <= 0:
        raise ValueError("window and hop must be positive")
    if n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] != n_samples - window:
        starts.append(n_samples - window)
    return starts


def windows_of(audio: FloatArray, window: int, hop: int) -> FloatArray:
    """``(windows, window)`` float32: the windows of :func:`window_starts`, zero-padded if short."""
    if audio.size < window:
        audio = np.pad(audio, (0, window - audio.size))
    return np.stack([audio[s : s + window] for s in window_starts(audio.size, window, hop)])
