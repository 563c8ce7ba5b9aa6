"""Tests for stream_server.training.mix_eval and ``genrecast evaluate --mixes``: mixes of real audio
files
through the live and offline paths, with the model run once per window."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from stream_server.config import Config
from stream_server.core.smoothing import SmoothingParams
from stream_server.core.windows import WindowJob, WindowScores
from stream_server.inference.classify import classify_audio
from stream_server.inference.facts import session_params
from stream_server.inference.loading import with_speech_detector
from stream_server.inference.model import LoadedModel
from stream_server.inference.runner import InferenceRunner
from stream_server.inference.speech import CONFIG_FILE as SPEECH_CONFIG
from stream_server.inference.speech import DEFAULT_SPEECH_DIR
from stream_server.training.dataset import load_audio, scan
from stream_server.training.mix_eval import (
    MixOptions,
    Prepared,
    figures,
    format_figures,
    live_run,
    offline_run,
    perfect,
    prepare,
    quiet_clips,
)
from stream_server.training.mixes import mix_window, window_ends, window_source
from tests.helpers.audio import encode_audio, music
from tests.helpers.cli import genrecast
from tests.helpers.speech import ToneSpeech, marker, write_speech_set

RATE = 22050
OPTIONS = MixOptions(mixes=3, seed=5, parts=4, min_s=3.0, max_s=5.0)


class CountingRunner(InferenceRunner):
    """Counts the windows it scores."""

    windows = 0

    def score(self, windows: np.ndarray, jobs: Sequence[WindowJob] | None = None) -> WindowScores:
        self.windows += len(windows)
        return super().score(windows, jobs)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three genres of the tiny model, two 6-8 s clips each, and one genre it does not know."""
    root = tmp_path_factory.mktemp("mix-data")
    for g, genre in enumerate(("blues", "jazz", "rock", "polka")):
        for k in range(2):
            audio = music(6.0 + k + g * 0.5, rate=RATE, channels=1, seed=10 * g + k)
            (root / genre).mkdir(exist_ok=True)
            encode_audio(root / genre / f"{genre}{k}.wav", audio * (0.5 + 0.2 * g), RATE)
    return root


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(engine={"hop_s": 0.5})


@pytest.fixture
def prepared(
    tiny_model: LoadedModel, data_root: Path, config: Config
) -> tuple[Prepared, CountingRunner]:
    params = session_params(config, tiny_model)
    runner = CountingRunner(
        tiny_model, torch.device("cpu"), max_batch=8, level_samples=params.hop_samples
    )
    return prepare(tiny_model, data_root, scan(data_root), config, runner, OPTIONS), runner


def test_the_model_runs_once_per_window_and_mix_windows_are_the_mixes_own(
    prepared: tuple[Prepared, CountingRunner],
    tiny_model: LoadedModel,
    config: Config,
    data_root: Path,
) -> None:
    prep, runner = prepared
    params = session_params(config, tiny_model)
    window, hop = params.window_samples, params.hop_samples
    assert {c.label for c in prep.clips} == {"blues", "jazz", "rock"}  # polka is not a label
    clip_windows = sum(len(window_ends(n, window, hop)) for n in prep.lengths)
    assert [len(s) for s in prep.clip_scores] == [
        len(window_ends(n, window, hop)) for n in prep.lengths
    ]
    assert prep.windows_computed == runner.windows
    straddling = runner.windows - clip_windows
    assert 0 < straddling < sum(len(s) for s in prep.mix_scores)  # most windows were reused
    # every mix window's scores are those of the mix's own audio, scored directly
    _, audio = load_audio(data_root, prep.clips, params.model_rate)
    fresh = InferenceRunner(tiny_model, torch.device("cpu"), level_samples=hop)
    for mix, scores in zip(prep.mixes, prep.mix_scores, strict=True):
        ends = window_ends(mix.length, window, hop)
        assert len(scores) == len(ends)
        direct = fresh.score(np.stack([mix_window(mix, audio, e, window) for e in ends]))
        np.testing.assert_allclose(scores.probs, direct.probs, atol=1e-5)
        np.testing.assert_allclose(scores.level_dbfs, direct.level_dbfs, atol=1e-3)


def test_the_live_path_is_the_stream_path_and_the_offline_path_is_classify(
    prepared: tuple[Prepared, CountingRunner],
    tiny_model: LoadedModel,
    config: Config,
    data_root: Path,
) -> None:
    """A mix replayed from its scores gives what classify gives for the mix's audio."""
    prep, _ = prepared
    _, audio = load_audio(data_root, prep.clips, RATE)
    runner = InferenceRunner(tiny_model, torch.device("cpu"), level_samples=RATE // 2)
    mix, scores = prep.mixes[0], prep.mix_scores[0]
    wave = np.concatenate(
        [audio[p.clip][p.clip_start : p.clip_start + p.length] for p in mix.parts]
    )
    for decoding in ("live", "viterbi"):
        base = session_params(config, tiny_model)
        params = dataclasses.replace(
            base, offline=dataclasses.replace(base.offline, decoding=decoding)
        )
        updates, _, segments, _ = classify_audio(wave, runner, params)
        replayed = offline_run(params, scores)
        assert [(s.genre, s.updates) for s in replayed] == [(s.genre, s.updates) for s in segments]
        np.testing.assert_allclose(
            [s.start_s for s in replayed], [s.start_s for s in segments], atol=1e-6
        )
        if decoding == "live":
            run = live_run(params, scores)
            assert [label for _, label in run.shown] == [u["genre"] for u in updates]


def test_figures_and_their_report(
    prepared: tuple[Prepared, CountingRunner], tiny_model: LoadedModel, config: Config
) -> None:
    prep, _ = prepared
    fig = figures(prep, session_params(config, tiny_model))
    live, off = fig.live, fig.offline
    assert live.changes == off.changes == OPTIONS.mixes * (OPTIONS.parts - 1)
    assert live.seconds == sum(int(m.duration_s) for m in prep.mixes)
    assert 0.0 <= live.seconds_right <= 1.0 and 0.0 <= off.seconds_right <= 1.0
    assert live.missed + len(live.delays_s) == live.changes
    assert all(d >= 0 for d in live.delays_s)
    assert live.single_hours == pytest.approx(sum(prep.lengths) / RATE / 3600)
    data = fig.to_json()
    assert data["mixes"] == 3 and data["seed"] == 5 and data["part_s"] == [3.0, 5.0]
    assert set(data["live"]) >= {
        "seconds_right",
        "shown_right",
        "change_delay_s",
        "changes_missed",
        "false_changes_per_hour",
    }
    assert data["offline"]["decoding"] == "viterbi"
    assert data["settings"]["smoothing"]["time_constant_s"] == config.smoothing.time_constant_s
    json.dumps(data)
    text = format_figures(fig)
    assert "seconds right, stored timeline" in text
    assert "decoding: viterbi" in text


def test_perfect_windows_show_what_the_settings_cost_alone(
    prepared: tuple[Prepared, CountingRunner], tiny_model: LoadedModel, config: Config
) -> None:
    """A perfect model's probabilities are each genre's share of the window; through the same
    paths they give no false change, and with a responsive setting every change is shown,
    later than the change by at least the part of a window the old genre still fills."""
    prep, _ = prepared
    base = session_params(config, tiny_model)
    params = dataclasses.replace(base, smoothing=SmoothingParams(0.0, 0.0, 0.0, 1.0))
    ideal = perfect(prep, params)
    window, hop = params.window_samples, params.hop_samples
    for scores, label in zip(ideal.clip_scores, ideal.truth, strict=True):
        assert np.all(scores.probs[:, tiny_model.labels.index(label)] == 1.0)
    for mix, scores, real in zip(ideal.mixes, ideal.mix_scores, prep.mix_scores, strict=True):
        np.testing.assert_allclose(scores.probs.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_array_equal(scores.level_dbfs, real.level_dbfs)  # the gate's inputs
        for k, end in enumerate(window_ends(mix.length, window, hop)):
            source = window_source(mix, end, window, hop)
            if source is None:  # straddling: both genres in proportion
                assert np.count_nonzero(scores.probs[k]) == 2
            else:
                assert scores.probs[k, tiny_model.labels.index(mix.parts[source[0]].label)] == 1
    fig = figures(ideal, params)
    assert fig.live.false_changes == fig.offline.false_changes == 0
    assert fig.live.clip_seconds_right == 1.0
    assert fig.live.missed == 0 and len(fig.live.delays_s) == fig.live.changes
    # the new genre leads once it fills more than half the window: never sooner
    assert min(fig.live.delays_s) >= params.window_s / 2 - params.hop_s
    assert fig.live.seconds_right >= figures(prep, params).live.seconds_right


def test_quiet_clips_are_below_the_silence_level_the_gate_uses() -> None:
    clips = quiet_clips(RATE, seconds=2.0)
    assert [name for name, _ in clips] == [
        "silence/digital",
        "silence/noise-75dBFS",
        "silence/hum-70dBFS",
    ]
    levels = [10 * np.log10(np.mean(a.astype(np.float64) ** 2) + 1e-30) for _, a in clips]
    assert levels[0] < -200
    assert levels[1] == pytest.approx(-75.0, abs=0.3)
    assert levels[2] == pytest.approx(-70.0, abs=0.3)
    assert all(a.shape == (2 * RATE,) and a.dtype == np.float32 for _, a in clips)


def test_speech_and_silence_join_the_mixes_and_every_kind_is_counted(
    tiny_model: LoadedModel, data_root: Path, make_config: Callable[..., Config]
) -> None:
    """Talk (the stand-in detector's marker tone) and silence are parts of the mixes like a
    genre, and each kind of second of the clips alone is counted by what it was labelled."""
    config = make_config(engine={"hop_s": 0.5}, gate={"min_run_s": 0.5})
    model = with_speech_detector(tiny_model, ToneSpeech(RATE))
    params = session_params(config, model)
    runner = InferenceRunner(model, torch.device("cpu"), level_samples=params.hop_samples)
    talk = [(f"speech/talk{k}", marker(7.0, RATE, channels=1)[:, 0]) for k in range(2)]
    short = ("speech/short", marker(1.5, RATE, channels=1)[:, 0])  # under one 2 s window
    others = [*talk, short, *quiet_clips(RATE, seconds=7.0)]
    options = MixOptions(mixes=6, seed=3, parts=4, min_s=3.0, max_s=5.0)
    prep = prepare(model, data_root, scan(data_root), config, runner, options, others=others)
    assert prep.truth[-6:] == ["speech", "speech", "speech", "silence", "silence", "silence"]
    in_mixes = {p.label for m in prep.mixes for p in m.parts}
    assert {"speech", "silence"} <= in_mixes
    fig = figures(prep, params)
    for path in (fig.live, fig.offline):
        assert set(path.kinds) == {"music", "speech", "silence"}
        # every whole second of every clip alone is counted once
        assert sum(sum(row.values()) for row in path.kinds.values()) == sum(
            int(n / RATE + 1e-9) for n in prep.lengths
        )
        assert sum(path.kinds["silence"].values()) == 3 * 7
        assert path.kind_share("silence", "silence") == 1.0
        assert path.kinds["speech"]["none"] == 1  # the short clip is never labelled
        assert (path.kind_share("speech", "speech") or 0.0) >= 0.65
        assert path.kind_share("music", "speech") == 0.0
        assert path.kind_share("music", "silence") == 0.0
    data = fig.to_json()
    assert data["live"]["kinds"]["silence"] == {"seconds": 21, "silence": 1.0}
    assert data["offline"]["kinds"]["speech"]["seconds"] == 15
    text = format_figures(fig)
    assert "every clip alone (talk and quiet clips too), seconds labelled" in text
    assert text.splitlines()[-4].split() == ["music", "speech", "silence", "none"]
    assert "silence" in text.splitlines()[-1]
    # without talk and silence, no kinds are reported
    plain = figures(prepare(model, data_root, scan(data_root), config, runner, options), params)
    assert "kinds" not in plain.to_json()["live"]


def test_evaluate_mixes_on_the_command_line(
    data_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    done = genrecast(
        "evaluate",
        "--data",
        str(data_root),
        "--model",
        str(tiny_checkpoint),
        "--device",
        "cpu",
        "--hop",
        "1.0",
        "--mixes",
        "2",
        "--mix-seed",
        "1",
        "--mix-parts",
        "3",
        "--mix-min-s",
        "3",
        "--mix-max-s",
        "4",
        "--json",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["clip_accuracy"] >= 0  # the clip figures are still there
    assert data["mixes"]["mixes"] == 2 and data["mixes"]["parts_per_mix"] == 3
    assert data["mixes"]["live"]["changes"] == 4
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["mixes"] == data["mixes"]
    text = genrecast(
        "evaluate", "--data", str(data_root), "--model", str(tiny_checkpoint), "--device", "cpu",
        "--mixes", "1", "--mix-min-s", "3", "--mix-max-s", "4",
    )  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert "live (a stream through the server's session, causal):" in text.stdout
    assert "the same with perfect genre probabilities" in text.stdout
    assert data["mixes"]["perfect_windows"]["live"]["false_changes"] == 0
    assert "offline (genrecast classify; decoding: viterbi):" in text.stdout


def test_evaluate_mixes_with_a_speech_set(
    data_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """``--speech DIR``: the set's validation speakers (split by speaker) and the quiet clips
    join the mixes; the shipped speech detector judges them."""
    speech = write_speech_set(
        tmp_path / "speech",
        [marker(4.0, RATE, 1)] * 4,
        [music(4.0, RATE, 1, seed=k) for k in range(4)],
        RATE,
    )
    # the shipped detector, split by its options (its own validation files are not in this set)
    detector = tmp_path / "detector"
    shutil.copytree(DEFAULT_SPEECH_DIR, detector)
    about = json.loads((detector / SPEECH_CONFIG).read_text())
    del about["validation_files"]
    (detector / SPEECH_CONFIG).write_text(json.dumps(about))
    config = tmp_path / "config.toml"
    config.write_text(f"[gate]\nspeech_model = {json.dumps(str(detector))}\n")
    base = ["evaluate", "--data", str(data_root), "--model", str(tiny_checkpoint)]
    done = genrecast(
        *base, "--config", str(config), "--device", "cpu", "--mixes", "2",
        "--mix-min-s", "3", "--mix-max-s", "4", "--speech", str(speech), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    kinds = json.loads(done.stdout)["mixes"]["live"]["kinds"]
    assert kinds["silence"]["seconds"] == 3 * 40
    assert kinds["silence"]["silence"] == 1.0
    assert 4 <= kinds["speech"]["seconds"] <= 8  # one or two of the four speakers held out
    refused = genrecast(*base, "--speech", str(speech))
    assert refused.returncode == 2
    assert "--speech measures timelines: it needs --mixes N" in refused.stderr


def test_tune_smoothing_on_validation_mixes(
    data_root: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream_server.tools import tune_smoothing
    from stream_server.training.dataset import SPLIT_FILE, save_split

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model_dir)
    clips = scan(data_root)
    save_split(model_dir, [], clips)  # every clip on the validation side
    args = ["--data", str(data_root), "--model", str(model_dir), "--device", "cpu"]
    assert tune_smoothing.main([*args, "--mixes", "2", "--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    quick = tune_smoothing.QUICK
    grid = 1
    for key in ("time_constants", "switch_margins", "min_dwells", "stale_margins"):
        grid *= len(quick[key])
    assert len(result["live"]) == grid
    assert len(result["offline"]) == len(quick["switch_costs"])
    costs = [t["cost"] for t in result["live"]]
    assert costs == sorted(costs)
    best = result["live"][0]
    f = best["figures"]
    assert best["cost"] == pytest.approx(
        tune_smoothing.live_cost(f["seconds_right"], f["shown_right"], f["false_changes_per_hour"]),
        abs=1.0,
    )
    assert tune_smoothing.main([*args, "--mixes", "1", "--quick"]) == 0
    text = capsys.readouterr().out
    assert "[smoothing]" in text and "switch_cost = " in text
    (model_dir / SPLIT_FILE).unlink()
    assert tune_smoothing.main([*args, "--mixes", "1", "--quick"]) == 2
    assert "split.json" in capsys.readouterr().err


def test_tuning_costs() -> None:
    from stream_server.tools.tune_smoothing import FALSE_CHANGE_COST_S, live_cost, offline_cost

    assert live_cost(1.0, 1.0, 0.0) == 0.0
    assert live_cost(0.9, 0.8, 2.0) == pytest.approx(360 + 720 + 2 * FALSE_CHANGE_COST_S)
    assert offline_cost(0.9, 1.0) == pytest.approx(720 + FALSE_CHANGE_COST_S)
