"""``genrecast evaluate --mixes N``: how well timelines follow the music, on mixes of clips.

Mixes are built from the given clips (normally the validation side of the model's
``split.json``) by :func:`stream_server.training.mixes.build_mixes`: consecutive parts of different
genres, each a random 10-40 s stretch of a clip. Both paths a user sees are measured:

* **live** -- each mix goes window by window through a
  :class:`~stream_server.core.session.StreamSession`, exactly as a live stream does in the server
  (gate, smoothing, hysteresis, dating back). Figures: the share of seconds right in the *stored*
  timeline and as *shown* live at that second, the median and 90th percentile delay of the live
  label after each true change, the changes never shown, and the false changes per hour on
  single-genre clips (every clip alone);
* **offline** -- the same windows decoded as ``genrecast classify`` decodes a file
  (``[offline] decoding``, :mod:`stream_server.core.decoding`): seconds right, changes missed, false
  changes per hour.

With a speech set (``genrecast evaluate --speech DIR``) the validation speakers' speech clips and
three synthetic quiet clips (digital silence, white noise at -75 dBFS, a 50 Hz hum at -70 dBFS
over noise) join the clips as the labels ``speech`` and ``silence``: they appear in the mixes
like a genre (a talk break, a gap) and are measured alone like any clip. Then every path also
reports what each kind of second was labelled (:attr:`PathFigures.kinds`: music, speech or
silence against the genre, ``speech``, ``silence`` or nothing).

**The ceiling of the settings:** :func:`perfect` replaces every window's genre probabilities by
what a perfect model would give -- each genre's share of the window's music samples -- and keeps
the gate's inputs as computed, so the same figures show what the smoothing, the hysteresis and
the window length cost on their own (a change cannot show before the new genre fills enough of a
window).

The model runs once per window that exists: every clip's windows on its own hop grid are scored
once in batches (:func:`prepare`), a mix window inside one part reuses its clip's scores, and only
the windows that straddle two parts are computed again (batched across all mixes). A model that
keeps state per stream (a hybrid with stream context) sees each clip and each mix as a stream
instead, as the server would. So
:func:`figures` can be run again for other settings without the model
(:mod:`stream_server.tools.tune_smoothing`).
"""

from __future__ import annotations

import bisect
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from stream_server.config import Config
from stream_server.core.gate import KIND_NAMES
from stream_server.core.session import SessionParams, StreamSession
from stream_server.core.timeline import Segment
from stream_server.core.windows import WindowJob, WindowScores
from stream_server.errors import DatasetError
from stream_server.inference.classify import decode_whole
from stream_server.inference.facts import session_params
from stream_server.inference.model import LoadedModel
from stream_server.inference.runner import InferenceRunner
from stream_server.inference.speech import CONFIG_FILE as SPEECH_CONFIG_FILE
from stream_server.inference.speech import DEFAULT_SPEECH_DIR
from stream_server.messages import SILENCE, SPEECH
from stream_server.training.dataset import Clip, FloatArray, load_audio
from stream_server.training.mixes import (
    Mix,
    MixPart,
    build_mixes,
    change_delays,
    changes_missed,
    label_at,
    label_changes,
    mix_window,
    percentile,
    seconds_right,
    window_ends,
    window_source,
)

__all__ = [
    "MixFigures",
    "MixOptions",
    "PathFigures",
    "Prepared",
    "figures",
    "format_figures",
    "live_run",
    "offline_run",
    "perfect",
    "prepare",
    "quiet_clips",
    "speech_clips",
]


def kind_of(label: str | None) -> str:
    """The gate's kind of a timeline label (one of :data:`~stream_server.core.gate.KIND_NAMES`:
    ``"speech"``, ``"silence"``, ``"music"`` for any genre), or ``"none"`` (no label)."""
    if label is None:
        return "none"
    return label if label in (SPEECH, SILENCE) else "music"


def quiet_clips(rate: int, seconds: float = 40.0, seed: int = 0) -> list[tuple[str, FloatArray]]:
    """Three ``silence`` clips of ``seconds`` at ``rate`` Hz: digital silence, white noise at
    -75 dBFS RMS, and a 50 Hz hum at -70 dBFS over white noise at -85 dBFS."""
    n = int(seconds * rate)
    rng = np.random.default_rng(seed)

    def noise(dbfs: float) -> FloatArray:
        out: FloatArray = (rng.standard_normal(n) * 10 ** (dbfs / 20)).astype(np.float32)
        return out

    t = np.arange(n) / rate
    hum = (np.sqrt(2) * 10 ** (-70 / 20) * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
    return [
        ("silence/digital", np.zeros(n, dtype=np.float32)),
        ("silence/noise-75dBFS", noise(-75.0)),
        ("silence/hum-70dBFS", hum + noise(-85.0)),
    ]


def speech_clips(
    root: str | Path,
    rate: int,
    cache_dir: str | None = None,
    detector_dir: str | Path = DEFAULT_SPEECH_DIR,
) -> list[tuple[str, FloatArray]]:
    """The speech clips on the validation side of the speech set at ``root``, decoded at
    ``rate`` Hz, named ``speech/<path>``.

    The validation side is the detector's in ``detector_dir``: the files its ``config.json``
    lists, or the speaker split its options name
    (:func:`stream_server.training.train_speech.validation_clips`), so none of its training speakers
    is measured.

    Raises:
        DatasetError: the set has no manifest or no validation speech that decodes.
    """
    from stream_server.training.train_speech import validation_clips

    about: dict[str, Any] = {}
    path = Path(detector_dir).expanduser() / SPEECH_CONFIG_FILE
    if path.is_file():
        about = json.loads(path.read_text(encoding="utf-8"))
    val = validation_clips(root, about)
    speech = [c for c in val if c.label == SPEECH]
    if not speech:
        raise DatasetError(f"{root} has no validation speech clips")
    kept, audio = load_audio(root, speech, rate, cache_dir)
    return [(f"{SPEECH}/{c.path}", a) for c, a in zip(kept, audio, strict=True)]


@dataclass(frozen=True)
class MixOptions:
    """How the mixes are built: ``mixes`` of ``parts`` parts, each ``min_s``-``max_s`` seconds,
    drawn with ``seed``."""

    mixes: int = 20
    seed: int = 0
    parts: int = 6
    min_s: float = 10.0
    max_s: float = 40.0


@dataclass
class Prepared:
    """What the model computed for the clips and the mixes, ready for any labelling settings.

    ``clip_scores[c]`` holds clip ``c``'s windows on its own hop grid, ``mix_scores[m]`` mix
    ``m``'s windows in the order a live session computes them; probabilities are the model's
    (``(n, model labels)``). ``truth`` is each clip's display label.
    """

    clips: list[Clip]
    truth: list[str]
    lengths: list[int]
    clip_scores: list[WindowScores]
    mixes: list[Mix]
    mix_scores: list[WindowScores]
    options: MixOptions
    windows_computed: int = 0
    seconds: float = 0.0


@dataclass
class LiveRun:
    """One stream through a session: every update's ``(time_s, label)`` and the stored
    timeline."""

    shown: list[tuple[float, str]]
    segments: list[Segment]


def live_run(params: SessionParams, scores: WindowScores) -> LiveRun:
    """Feed ``scores`` (one row per window, in the session's order) through a
    :class:`~stream_server.core.session.StreamSession`, as the server does with engine results."""
    session = StreamSession(
        "evaluate", params, sample_rate=params.model_rate, channels=1, fmt="f32le"
    )
    empty = np.zeros(0, dtype=np.float32)
    shown: list[tuple[float, str]] = []
    for k in range(len(scores)):
        end = params.window_samples + k * params.hop_samples
        scored = session.on_scores(
            WindowJob("evaluate", empty, end, 0.0),
            scores.probs[k],
            0.0,
            level_dbfs=float(scores.level_dbfs[k]),
            speech_prob=float(scores.speech[k]),
        )
        shown.append((end / params.model_rate, scored.update["genre"]))
    return LiveRun(shown, session.segments())


def offline_run(params: SessionParams, scores: WindowScores) -> list[Segment]:
    """The timeline ``genrecast classify`` gives for these windows (``[offline] decoding``)."""
    if params.offline.decoding == "live":
        return live_run(params, scores).segments
    if len(scores) == 0:
        return []
    probs = np.stack([params.display_probs(p) for p in scores.probs])
    ends = params.window_samples + np.arange(len(scores)) * params.hop_samples
    times = ends / params.model_rate
    return decode_whole(params, probs, times, scores.level_dbfs, scores.speech).segments


def _progress(text: str, enabled: bool) -> None:
    if enabled:
        sys.stderr.write(f"\r{text}")
        sys.stderr.flush()


def prepare(
    model: LoadedModel,
    root: str | Path,
    clips: Sequence[Clip],
    config: Config,
    runner: InferenceRunner,
    options: MixOptions,
    *,
    others: Sequence[tuple[str, FloatArray]] = (),
    cache_dir: str | None = None,
    progress: bool = False,
) -> Prepared:
    """Decode ``clips``, score each clip's windows once, build the mixes and score the windows
    that straddle two parts (see the module docstring).

    ``others`` are more clips as ``(name, audio at the model's rate)``, e.g. ``speech`` and
    ``silence`` (:func:`speech_clips`, :func:`quiet_clips`); the first part of the name
    (``speech/...``) is the label, and their truth."""
    started = time.perf_counter()
    params = session_params(config, model)
    known = set(model.labels)
    usable = [c for c in clips if c.label in known]
    if not usable:
        raise DatasetError(
            f"none of the clips' genres are the model's labels ({', '.join(model.labels)})"
        )
    kept, audio = load_audio(root, usable, params.model_rate, cache_dir)
    truth = [config.model.labels.get(c.label, c.label) for c in kept]
    for name, wave in others:
        label = name.split("/", 1)[0]
        kept.append(Clip(name, label))
        truth.append(label)
        audio.append(wave)
    window, hop = params.window_samples, params.hop_samples
    computed = 0
    # Every clip is scored as a stream of its own (a model that keeps state per stream needs it;
    # for the others it is the clip's windows, batched across clips).
    streams = runner.table is not None
    _progress(f"scoring {len(audio)} clips", progress)
    clip_ends = [window_ends(wave.size, window, hop) for wave in audio]
    clip_scores = runner.score_streams(audio, clip_ends, window)
    computed = sum(len(e) for e in clip_ends)
    _progress("\n", progress)
    lengths = [a.size for a in audio]
    mixes = build_mixes(
        list(zip(truth, lengths, strict=True)),
        options.mixes,
        seed=options.seed,
        rate=params.model_rate,
        hop=hop,
        parts=options.parts,
        min_s=options.min_s,
        max_s=options.max_s,
    )
    if streams:
        _progress(f"scoring {len(mixes)} mixes as streams", progress)
        mix_ends = [window_ends(mix.length, window, hop) for mix in mixes]
        renders = [mix_window(mix, audio, mix.length, mix.length) for mix in mixes]
        mix_scores = runner.score_streams(renders, mix_ends, window)
        computed += sum(len(e) for e in mix_ends)
        _progress("\n", progress)
    else:
        mix_scores, straddled = _reuse_clip_scores(
            mixes, audio, clip_scores, runner, params, progress
        )
        computed += straddled
    return Prepared(
        clips=kept,
        truth=truth,
        lengths=lengths,
        clip_scores=clip_scores,
        mixes=mixes,
        mix_scores=mix_scores,
        options=options,
        windows_computed=computed,
        seconds=time.perf_counter() - started,
    )


def _reuse_clip_scores(
    mixes: Sequence[Mix],
    audio: Sequence[FloatArray],
    clip_scores: Sequence[WindowScores],
    runner: InferenceRunner,
    params: SessionParams,
    progress: bool,
) -> tuple[list[WindowScores], int]:
    """Each mix's window scores: a window inside one part reuses its clip's row, the windows
    that straddle two parts are computed (batched across all mixes). Returns the scores and how
    many windows were computed."""
    window, hop = params.window_samples, params.hop_samples
    labels = len(runner.labels)
    sources: list[list[tuple[int, int] | int]] = []
    straddling: list[np.ndarray] = []
    for mix in mixes:
        rows: list[tuple[int, int] | int] = []
        for end in window_ends(mix.length, window, hop):
            source = window_source(mix, end, window, hop)
            if source is None:
                rows.append(len(straddling))
                straddling.append(mix_window(mix, audio, end, window))
            else:
                part, k = source
                rows.append((mix.parts[part].clip, k))
        sources.append(rows)
    extra = WindowScores.empty(labels)
    if straddling:
        _progress(f"scoring {len(straddling)} windows across parts", progress)
        extra = runner.score(np.stack(straddling))
        _progress("\n", progress)
    mix_scores = []
    for rows in sources:
        picked = [
            clip_scores[r[0]][r[1] : r[1] + 1] if isinstance(r, tuple) else extra[r : r + 1]
            for r in rows
        ]
        mix_scores.append(WindowScores.concat(picked) if picked else WindowScores.empty(labels))
    return mix_scores, len(straddling)


def _perfect_rows(
    shares: Sequence[tuple[str, int]], params: SessionParams, scores: WindowScores, row: int
) -> np.ndarray:
    """A perfect model's ``(model labels,)`` probabilities for a window made of ``shares``
    (``(display label, samples)``): each genre's share of the window's music samples; a window
    without music keeps the computed row ``row`` of ``scores``."""
    width = scores.probs.shape[1]
    out = np.zeros(width, dtype=np.float64)
    for label, samples in shares:
        if label not in params.labels:  # speech or silence: no genre evidence
            continue
        shown = params.labels.index(label)
        index = params.label_map.index(shown) if params.label_map else shown
        out[index] += samples
    if out.sum() == 0:
        kept: np.ndarray = scores.probs[row]
        return kept
    shares_out: np.ndarray = (out / out.sum()).astype(np.float32)
    return shares_out


def perfect(prepared: Prepared, params: SessionParams) -> Prepared:
    """``prepared`` with every window's genre probabilities replaced by a perfect model's (see
    the module docstring); levels and speech probabilities stay as computed."""

    def swap(scores: WindowScores, rows: list[np.ndarray]) -> WindowScores:
        if not rows:
            return scores
        return WindowScores(np.stack(rows), scores.level_dbfs, scores.speech)

    window, hop = params.window_samples, params.hop_samples
    clip_scores = [
        swap(
            scores,
            [_perfect_rows([(label, window)], params, scores, k) for k in range(len(scores))],
        )
        for label, scores in zip(prepared.truth, prepared.clip_scores, strict=True)
    ]
    mix_scores = []
    for mix, scores in zip(prepared.mixes, prepared.mix_scores, strict=True):
        rows = []
        for k, end in enumerate(window_ends(mix.length, window, hop)):
            start = end - window
            shares = [
                (part.label, min(end, at + part.length) - max(start, at))
                for part, at in zip(mix.parts, mix.starts, strict=True)
                if min(end, at + part.length) > max(start, at)
            ]
            rows.append(_perfect_rows(shares, params, scores, k))
        mix_scores.append(swap(scores, rows))
    return replace(prepared, clip_scores=clip_scores, mix_scores=mix_scores)


@dataclass
class PathFigures:
    """How one path's timelines follow the music.

    ``seconds_right`` is the share of mix seconds the stored timeline labels right
    (``shown_right``: as the live label showed them at that second; live path only).
    ``delays_s`` are the live delays of the changes shown (live path only); ``missed`` the
    changes never shown (live) or never in the timeline (offline). ``false_changes`` counts
    label changes on the single-genre clips, ``single_hours`` their hours of audio.
    ``kinds[truth][labelled]`` counts the seconds of the single clips whose truth is the kind
    ``truth`` (:data:`~stream_server.core.gate.KIND_NAMES`) that the timeline labels as kind
    ``labelled`` (:func:`kind_of`).
    """

    seconds_right: float
    seconds: int
    changes: int
    missed: int
    false_changes: int
    single_hours: float
    clip_seconds_right: float
    shown_right: float | None = None
    delays_s: list[float] = field(default_factory=list)
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)

    def kind_share(self, truth: str, labelled: str) -> float | None:
        """Share of ``truth`` seconds labelled ``labelled`` (``None``: no such seconds)."""
        row = self.kinds.get(truth, {})
        total = sum(row.values())
        return row.get(labelled, 0) / total if total else None

    @property
    def false_per_hour(self) -> float:
        return self.false_changes / self.single_hours if self.single_hours else 0.0

    @property
    def median_delay_s(self) -> float | None:
        return percentile(self.delays_s, 50)

    @property
    def p90_delay_s(self) -> float | None:
        return percentile(self.delays_s, 90)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seconds_right": round(self.seconds_right, 4),
            "seconds": self.seconds,
            "changes": self.changes,
            "changes_missed": self.missed,
            "false_changes": self.false_changes,
            "false_changes_per_hour": round(self.false_per_hour, 2),
            "single_clip_hours": round(self.single_hours, 3),
            "single_clip_seconds_right": round(self.clip_seconds_right, 4),
        }
        if set(self.kinds) - {"music"}:
            out["kinds"] = {
                truth: {
                    "seconds": sum(row.values()),
                    **{k: round(v / max(sum(row.values()), 1), 4) for k, v in sorted(row.items())},
                }
                for truth, row in self.kinds.items()
            }
        if self.shown_right is not None:
            median, p90 = self.median_delay_s, self.p90_delay_s
            out["shown_right"] = round(self.shown_right, 4)
            out["change_delay_s"] = {
                "median": None if median is None else round(median, 2),
                "p90": None if p90 is None else round(p90, 2),
                "shown": len(self.delays_s),
            }
        return out


@dataclass
class MixFigures:
    """The live and offline figures for one setting."""

    live: PathFigures
    offline: PathFigures
    decoding: str
    mixes: int
    options: MixOptions
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        o = self.options
        return {
            "mixes": self.mixes,
            "seed": o.seed,
            "parts_per_mix": o.parts,
            "part_s": [o.min_s, o.max_s],
            "settings": self.settings,
            "live": self.live.to_json(),
            "offline": {"decoding": self.decoding, **self.offline.to_json()},
        }


def _shown_right(shown: Sequence[tuple[float, str]], mix: Mix) -> tuple[int, int]:
    """Seconds whose midpoint the live label (the latest update's) had right."""
    total = int(mix.duration_s + 1e-9)
    times = [t for t, _ in shown]
    right = 0
    for k in range(total):
        i = bisect.bisect_right(times, k + 0.5) - 1
        right += i >= 0 and shown[i][1] == mix.truth_at(k + 0.5)
    return right, total


def _settings(params: SessionParams) -> dict[str, Any]:
    sm, gate, off = params.smoothing, params.gate, params.offline
    return {
        "smoothing": {
            "time_constant_s": sm.time_constant_s,
            "switch_margin": sm.switch_margin,
            "min_dwell_s": sm.min_dwell_s,
            "stale_margin": sm.stale_margin,
            "backdate_max_s": params.backdate_max_s,
        },
        "gate": {
            "enabled": gate.enabled,
            "silence_dbfs": gate.silence_dbfs,
            "speech_threshold": gate.speech_threshold,
            "min_run_s": gate.min_run_s,
        },
        "offline": {"decoding": off.decoding, "switch_cost": off.switch_cost},
        "hop_s": params.hop_s,
        "window_s": params.window_s,
    }


def _count_kinds(
    counts: dict[str, dict[str, int]], truth: str, segments: Sequence[Segment], clip: Mix
) -> None:
    """Add each whole second of ``clip`` to ``counts[truth][kind of its label]``."""
    seen: dict[str, int] = {}
    for k in range(int(clip.duration_s + 1e-9)):
        kind = kind_of(label_at(segments, k + 0.5))
        seen[kind] = seen.get(kind, 0) + 1
    _add_kinds(counts, truth, seen)


def _add_kinds(counts: dict[str, dict[str, int]], truth: str, seen: dict[str, int]) -> None:
    row = counts.setdefault(truth, {})
    for kind, n in seen.items():
        row[kind] = row.get(kind, 0) + n


def figures(prepared: Prepared, params: SessionParams, *, offline: bool = True) -> MixFigures:
    """Run every mix and every clip through the live (and offline) path under ``params``."""
    live_right = live_total = shown_right = 0
    off_right = 0
    changes = live_missed = off_missed = 0
    delays: list[float] = []
    for mix, scores in zip(prepared.mixes, prepared.mix_scores, strict=True):
        run = live_run(params, scores)
        r, total = seconds_right(run.segments, mix)
        live_right += r
        live_total += total
        shown_right += _shown_right(run.shown, mix)[0]
        found = change_delays(run.shown, mix)
        changes += len(found)
        live_missed += sum(d is None for d in found)
        delays += [d for d in found if d is not None]
        if offline:
            segments = offline_run(params, scores)
            off_right += seconds_right(segments, mix)[0]
            off_missed += changes_missed(segments, mix)
    live_false = off_false = 0
    clip_right = off_clip_right = clip_total = 0
    samples = 0
    live_kinds: dict[str, dict[str, int]] = {}
    off_kinds: dict[str, dict[str, int]] = {}
    for label, length, scores in zip(
        prepared.truth, prepared.lengths, prepared.clip_scores, strict=True
    ):
        if len(scores) == 0:  # shorter than a window: a stream this short is never labelled
            unlabelled = {"none": int(length / params.model_rate + 1e-9)}
            _add_kinds(live_kinds, kind_of(label), unlabelled)
            if offline:
                _add_kinds(off_kinds, kind_of(label), unlabelled)
            continue
        run = live_run(params, scores)
        live_false += label_changes([lab for _, lab in run.shown])
        single = Mix((MixPart(0, label, 0, length),), params.model_rate)
        clip_right += seconds_right(run.segments, single)[0]
        clip_total += int(single.duration_s + 1e-9)
        samples += length
        _count_kinds(live_kinds, kind_of(label), run.segments, single)
        if offline:
            segments = offline_run(params, scores)
            off_false += label_changes([s.genre for s in segments])
            off_clip_right += seconds_right(segments, single)[0]
            _count_kinds(off_kinds, kind_of(label), segments, single)
    hours = samples / params.model_rate / 3600.0
    live = PathFigures(
        seconds_right=live_right / max(live_total, 1),
        seconds=live_total,
        changes=changes,
        missed=live_missed,
        false_changes=live_false,
        single_hours=hours,
        clip_seconds_right=clip_right / max(clip_total, 1),
        shown_right=shown_right / max(live_total, 1),
        delays_s=delays,
        kinds=live_kinds,
    )
    off = PathFigures(
        seconds_right=off_right / max(live_total, 1),
        seconds=live_total,
        changes=changes,
        missed=off_missed,
        false_changes=off_false,
        single_hours=hours,
        clip_seconds_right=off_clip_right / max(clip_total, 1),
        kinds=off_kinds,
    )
    return MixFigures(
        live, off, params.offline.decoding, len(prepared.mixes), prepared.options, _settings(params)
    )


def format_figures(fig: MixFigures) -> str:
    """A human-readable summary of :class:`MixFigures`."""
    live, off, o = fig.live, fig.offline, fig.options

    def delay(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} s"

    lines = [
        f"mixes: {fig.mixes} of {o.parts} parts ({o.min_s:g}-{o.max_s:g} s each, seed {o.seed}): "
        f"{live.seconds} s, {live.changes} changes; every clip alone: "
        f"{live.single_hours * 60:.1f} min",
        "live (a stream through the server's session, causal):",
        f"  seconds right, stored timeline: {live.seconds_right:.1%}   "
        f"(as shown live: {live.shown_right or 0.0:.1%})",
        f"  change shown after: median {delay(live.median_delay_s)}, "
        f"p90 {delay(live.p90_delay_s)}; never shown: {live.missed} of {live.changes}",
        f"  false changes, every clip alone: {live.false_per_hour:.1f} per hour "
        f"({live.false_changes}); seconds right there: {live.clip_seconds_right:.1%}",
        f"offline (genrecast classify; decoding: {fig.decoding}):",
        f"  seconds right: {off.seconds_right:.1%}; changes missed: {off.missed} of {off.changes}",
        f"  false changes, every clip alone: {off.false_per_hour:.1f} per hour "
        f"({off.false_changes}); seconds right there: {off.clip_seconds_right:.1%}",
    ]
    if set(live.kinds) - {"music"}:
        columns = KIND_NAMES + (
            ("none",) if any(r.get("none") for r in live.kinds.values()) else ()
        )
        lines.append("every clip alone (talk and quiet clips too), seconds labelled "
                     "(live stored / offline):")  # fmt: skip
        lines.append("  " + " " * 8 + "".join(f"{k:>18}" for k in columns))
        for truth in KIND_NAMES:
            if truth not in live.kinds:
                continue
            cells = []
            for k in columns:
                a, b = live.kind_share(truth, k), off.kind_share(truth, k)
                cells.append(f"{a or 0.0:8.1%} / {b or 0.0:6.1%}")
            seconds = sum(live.kinds[truth].values())
            lines.append(f"  {truth:<8}" + "".join(f"{c:>18}" for c in cells) + f"  ({seconds} s)")
    return "\n".join(lines)
