"""``genrecast bench``: the latency join, the figures and the ``--find-max`` search as pure
functions on hand-made records, the command line's options, and one short run against a server
process of its own (counts and consistency asserted, never speed)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream_server.config import config_from_dict
from stream_server.errors import GenrecastError
from stream_server.inference.banded import amx_available
from stream_server.tools import cli
from stream_server.tools.bench import (
    BenchOptions,
    Geometry,
    StreamLog,
    UpdateLog,
    find_max,
    format_report,
    join_latencies_ms,
    options_from_args,
    run_bench,
    summarise,
    window_end_samples,
)
from stream_server.tools.bench.audio import looped, plan_streams, synthetic_music, to_pcm
from stream_server.tools.bench.options import FIND_MAX_SECONDS, RUN_SECONDS, default_procs

# -- the latency join -------------------------------------------------------------------------


def test_window_end_samples_undo_the_rounding_of_stream_time() -> None:
    """``stream_time_s`` is rounded to the millisecond; the end sample is exact: the nearest
    ``window + j * hop``."""
    geometry = Geometry.of(22050, window_s=1.0, hop_s=0.5)
    assert (geometry.window_samples, geometry.hop_samples) == (22050, 11025)
    # 1.0 s, 1.5 s, 2.0 s, and 7 windows later than the first: 4.5 s
    times = [1.0, 1.5, 2.0, 4.5]
    assert window_end_samples(times, geometry).tolist() == [22050, 33075, 44100, 99225]
    # a rate whose hop is not a whole number of milliseconds: 16000 Hz, hop 0.3333 s (5333)
    odd = Geometry(16000, window_samples=80000, hop_samples=5333)
    ends = 80000 + np.arange(50) * 5333
    rounded = np.round(ends / 16000, 3)
    assert not np.array_equal(np.rint(rounded * 16000), ends)  # the naive product is off
    assert window_end_samples(rounded, odd).tolist() == ends.tolist()


def test_an_update_is_timed_from_the_send_of_its_windows_last_sample() -> None:
    """Frames of 100 samples sent 0.1 s apart from t = 10 s: a window ending at sample S was
    completed by the first frame whose cumulative count reaches S."""
    sent_samples = np.array([100, 200, 300, 400, 450], dtype=np.int64)  # the last frame is short
    sent_times = np.array([10.0, 10.1, 10.2, 10.3, 10.4])
    ends = np.array([200, 201, 299, 450, 1, 451], dtype=np.int64)
    received = np.array([10.15, 10.26, 10.23, 10.5, 10.002, 11.0])
    latencies = join_latencies_ms(sent_samples, sent_times, ends, received)
    expected = [
        (10.15 - 10.1) * 1000,  # sample 200 is the last of frame 1
        (10.26 - 10.2) * 1000,  # sample 201 is the first of frame 2
        (10.23 - 10.2) * 1000,  # sample 299: frame 2 too
        (10.5 - 10.4) * 1000,  # the short last frame holds sample 450
        (10.002 - 10.0) * 1000,  # sample 1: the first frame
    ]
    np.testing.assert_allclose(latencies[:5], expected)
    assert math.isnan(latencies[5])  # sample 451 was never sent: not joined


def _log(index: int, stream_id: str, computed: int, skipped: int, ended_at: float) -> StreamLog:
    """A stream of 4 frames of 11025 samples (0.5 s at 22050 Hz) sent from t = 100 s."""
    return StreamLog(
        index,
        stream_id,
        sent_samples=np.arange(1, 5, dtype=np.int64) * 11025,
        sent_times=np.array([100.0, 100.5, 101.0, 101.5]),
        ended=True,
        windows_computed=computed,
        windows_skipped=skipped,
        ended_at=ended_at,
        max_lag_s=0.002 * (index + 1),
    )


def test_the_figures_of_a_run_join_each_stream_with_its_own_updates() -> None:
    geometry = Geometry.of(22050, window_s=1.0, hop_s=0.5)
    logs = [_log(0, "a", 3, 0, 102.0), _log(1, "b", 2, 1, 102.5)]
    updates = {
        # windows end at 1.0, 1.5 and 2.0 s: frames 1, 2 and 3, sent at 100.5, 101.0, 101.5
        "a": UpdateLog(np.array([1.0, 1.5, 2.0]), np.array([100.52, 101.03, 101.54]), np.ones(3)),
        "b": UpdateLog(np.array([1.0, 2.0]), np.array([100.6, 101.6]), np.full(2, 3.0)),
        "other": UpdateLog(np.array([1.0]), np.array([200.0]), np.ones(1)),
    }
    run = summarise(
        logs, updates, geometry,
        streams=2, seconds=2.0, speed=1.0, start=100.0, end=103.0, server_cpu_s=1.5,
        server_rss_mb=500.0, server_rss_peak_mb=510.0, client_cpu_s=0.1, errors=[],
    )  # fmt: skip
    np.testing.assert_allclose(run.latencies_ms, [20.0, 30.0, 40.0, 100.0, 100.0])
    assert (run.windows_computed, run.skipped, run.streams_ended) == (5, 1, 2)
    assert run.wall_s == pytest.approx(2.5)  # to the last stream.ended
    assert run.e2e_windows_per_s == pytest.approx(2.0)
    assert run.offered_windows_per_s == pytest.approx(4.0)  # 2 streams, one window per 0.5 s
    assert run.max_send_lag_ms == pytest.approx(4.0)
    figures = run.to_json(offline_windows_per_s=8.0)
    assert figures["e2e_fraction_of_offline"] == pytest.approx(0.25)
    assert figures["latency_ms_p50"] == pytest.approx(40.0)
    assert figures["latency_updates"] == 5
    assert figures["latency_unjoined"] == 1  # the stream no pusher sent
    assert not run.passes(max_p99_ms=250.0)  # a window was skipped
    logs[1].windows_skipped = 0
    clean = summarise(
        logs, updates, geometry,
        streams=2, seconds=2.0, speed=1.0, start=100.0, end=103.0, server_cpu_s=1.5,
        server_rss_mb=500.0, server_rss_peak_mb=510.0, client_cpu_s=0.1, errors=[],
    )  # fmt: skip
    assert clean.passes(max_p99_ms=250.0)
    assert not clean.passes(max_p99_ms=99.0)  # p99 is 100 ms


def test_a_stream_that_failed_is_an_error_and_fails_the_probe() -> None:
    """Stream 1 broke off; stream 2's pusher sent nothing back at all."""
    geometry = Geometry.of(22050, window_s=1.0, hop_s=0.5)
    broken = StreamLog(1, error="ConnectionClosedError: no close frame")
    run = summarise(
        [_log(0, "a", 3, 0, 102.0), broken], {}, geometry,
        streams=3, seconds=2.0, speed=1.0, start=100.0, end=103.0, server_cpu_s=1.0,
        server_rss_mb=None, server_rss_peak_mb=None, client_cpu_s=0.0, errors=[],
    )  # fmt: skip
    assert run.errors == ["stream 1: ConnectionClosedError: no close frame"]
    assert (run.streams, run.streams_ended) == (3, 1)
    assert run.to_json(None)["latency_ms_p99"] is None  # no update: no latency, not a zero
    assert not run.passes(max_p99_ms=1e9)


# -- the --find-max search ---------------------------------------------------------------------


@pytest.mark.parametrize("answer", [0, 1, 2, 7, 8, 9, 63, 100, 1000])
@pytest.mark.parametrize("start", [1, 8, 50])
def test_find_max_returns_the_largest_count_that_passes(answer: int, start: int) -> None:
    limit = 1000
    search = find_max(lambda n: n <= answer, start=start, limit=limit)
    assert search.best == answer
    tried = [n for n, _ in search.probes]
    assert all(1 <= n <= limit for n in tried)
    assert len(set(tried)) == len(tried)  # no count probed twice
    assert len(tried) <= 2 * math.ceil(math.log2(limit)) + 2
    assert all(ok == (n <= answer) for n, ok in search.probes)


def test_find_max_doubles_then_bisects() -> None:
    search = find_max(lambda n: n <= 37, start=8, limit=1024)
    assert [n for n, _ in search.probes] == [8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert find_max(lambda n: True, start=8, limit=20).probes == [(8, True), (16, True), (20, True)]


# -- audio and stream plans --------------------------------------------------------------------


def test_synthetic_music_is_vectorised_audible_audio() -> None:
    music = synthetic_music(3.0, 16000, seed=0)
    assert music.shape == (48000,) and music.dtype == np.float32
    assert np.abs(music).max() <= 1.0
    assert 0.01 < float(np.sqrt(np.mean(music**2))) < 0.5
    assert not np.array_equal(music, synthetic_music(3.0, 16000, seed=1))
    pcm = to_pcm(music)
    assert pcm.dtype == np.int16 and int(np.abs(pcm).max()) > 300


def test_streams_start_at_random_phases_within_a_hop_unless_same_instant() -> None:
    plans = plan_streams(50, [1000, 2000, 3000], 0.5)
    assert [p.clip for p in plans[:4]] == [0, 1, 2, 0]
    phases = np.array([p.phase_s for p in plans])
    assert ((phases >= 0) & (phases < 0.5)).all() and phases.std() > 0.1
    assert all(0 <= p.offset < [1000, 2000, 3000][p.clip] for p in plans)
    assert len({(p.clip, p.offset) for p in plans}) == 50  # no two streams play the same audio
    assert {p.phase_s for p in plan_streams(5, [1000], 0.5, same_instant=True)} == {0.0}


def test_a_looped_clip_wraps_around() -> None:
    clip = np.arange(10, dtype=np.int16)
    assert looped(clip, 3, 4).tolist() == [3, 4, 5, 6]
    assert looped(clip, 8, 5).tolist() == [8, 9, 0, 1, 2]
    assert looped(clip, 23, 2).tolist() == [3, 4]


# -- the command line --------------------------------------------------------------------------


def test_the_command_line_takes_the_bench_options(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(
        [
            "bench", "--streams", "12", "--seconds", "9", "--speed", "2.5", "--procs", "3",
            "--audio", str(tmp_path), "--clips", "4", "--same-instant", "--compare-seed",
            "--find-max", "--max-p99-ms", "120", "--find-max-limit", "64", "--json",
            "--token", "secret",
        ]
    )  # fmt: skip
    assert args.func is cli.cmd_bench and args.json
    options = options_from_args(args)
    assert options == BenchOptions(
        streams=12, seconds=9.0, speed=2.5, procs=3, audio=tmp_path, clips=4, synthetic=False,
        same_instant=True, token="secret", compare_seed=True, find_max=True, max_p99_ms=120.0,
        find_max_limit=64,
    )  # fmt: skip
    options.check()
    assert options.pushers(12) == 3 and options.pushers(2) == 2


def test_the_bench_defaults() -> None:
    plain = options_from_args(cli.build_parser().parse_args(["bench"]))
    assert (plain.streams, plain.seconds, plain.speed, plain.procs) == (8, RUN_SECONDS, 1.0, 0)
    assert not (plain.same_instant or plain.compare_seed or plain.find_max or plain.synthetic)
    assert plain.max_p99_ms == 250.0
    assert plain.pushers(100) == default_procs() == min(4, os.cpu_count() or 1)
    searching = options_from_args(cli.build_parser().parse_args(["bench", "--find-max"]))
    assert searching.seconds == FIND_MAX_SECONDS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--streams", "0"], "--streams must be 1 to"),
        (["--speed", "0"], "--speed must be more than 0"),
        (["--seconds", "-1"], "--seconds must be more than 0"),
        (["--procs", "-1"], "--procs must be 0 to"),
        (["--audio", "/nonexistent/genres"], "is not a directory"),
    ],
)
def test_options_out_of_bounds_are_refused_before_anything_starts(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["bench", *args]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(GenrecastError, match=message):
        options_from_args(cli.build_parser().parse_args(["bench", *args])).check()


# -- one short run against a server process ---------------------------------------------------


@pytest.fixture(scope="module")
def report(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """3 streams of 3 s of audio (1 s windows every 0.5 s) at 4x real time, from 2 pushers,
    the naive pipeline timed too; the offline timings kept short."""
    folder = tmp_path_factory.mktemp("bench")
    config = config_from_dict(
        {
            "server": {"max_streams": 2, "log_level": "warning"},
            "model": {"path": str(tiny_checkpoint)},
            "engine": {"device": "cpu", "window_s": 1.0, "hop_s": 0.5, "max_wait_ms": 5.0},
            "gate": {"enabled": False},
            "storage": {"database": str(folder / "unused.db")},
        }
    )
    options = BenchOptions(
        streams=3, seconds=3.0, speed=4.0, procs=2, clips=2, compare_seed=True,
        offline_s=0.2, seed_s=0.2,
    )  # fmt: skip
    return run_bench(config, options).to_json()


def test_the_run_accounts_for_every_window(report: dict[str, Any]) -> None:
    """More streams than the config's limit: the bench lifts it. Every due window (5 per stream:
    1 s windows every 0.5 s in 3 s) is computed or counted as skipped, and each update is
    joined with the frame that completed its window."""
    assert (report["streams"], report["streams_ended"], report["procs"]) == (3, 3, 2)
    assert report["windows_computed"] + report["skipped"] == 3 * 5
    assert report["windows_computed"] > 0
    assert report["latency_updates"] == report["windows_computed"]
    assert report["latency_unjoined"] == 0
    assert report["errors"] == [] and report["server_log_errors"] == []
    assert (report["seconds"], report["speed"], report["hop_s"], report["window_s"]) == (
        3.0, 4.0, 0.5, 1.0,
    )  # fmt: skip
    assert report["offered_windows_per_s"] == pytest.approx(3 * 4.0 / 0.5)


def test_the_latencies_are_measured_across_processes(report: dict[str, Any]) -> None:
    """From the last sample sent to the update received: positive, finite, ordered, and never
    less than the server's own part of it (arrival of that sample to the update sent)."""
    p50, p99, top = report["latency_ms_p50"], report["latency_ms_p99"], report["latency_ms_max"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in (p50, p99, top))
    assert 0 < p50 <= p99 <= top < 30_000
    assert 0 < report["server_latency_ms_p50"] <= report["server_latency_ms_p99"]
    assert p50 >= report["server_latency_ms_p50"] - 1.0
    assert p99 >= report["server_latency_ms_p99"] - 1.0


def test_the_server_ran_in_a_process_of_its_own(
    report: dict[str, Any], tiny_checkpoint: Path
) -> None:
    assert report["bench_pid"] == os.getpid()
    assert report["server_pid"] != os.getpid()
    assert not Path(f"/proc/{report['server_pid']}").exists()  # stopped at the end
    assert report["server_cpu_s"] > 0
    assert 0 < report["server_rss_mb"] <= report["server_rss_peak_mb"]
    assert (report["model"], report["device"]) == (str(tiny_checkpoint), "cpu")
    assert report["precision"] == ("bfloat16" if amx_available() else "float32")
    assert report["max_batch"] == 32


def test_throughputs_and_fractions_are_sane(report: dict[str, Any]) -> None:
    assert report["offline_windows_per_s"] > 0 and report["offline_windows"] >= 2 * 32
    assert report["seed_windows_per_s"] > 0 and report["seed_windows"] >= 3
    assert report["e2e_windows_per_s"] > 0
    fraction = report["e2e_fraction_of_offline"]
    assert fraction == pytest.approx(  # both rounded in the report
        report["e2e_windows_per_s"] / report["offline_windows_per_s"], rel=0.01, abs=1e-3
    )
    assert fraction > 0
    assert report["wall_s"] >= 3.0 / 4.0  # the audio took at least its own time to send
    text = format_report(report)
    assert f"{report['windows_computed']} windows computed" in text
    assert f"p99 {report['latency_ms_p99']} ms" in text


def test_a_hold_reads_the_idle_servers_rss_with_every_stream_open(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """With ``--hold`` the streams stay open and silent after their audio; the server's RSS is
    read then, and the hold does not count as time the server worked."""
    config = config_from_dict(
        {
            "server": {"log_level": "warning"},
            "model": {"path": str(tiny_checkpoint)},
            "engine": {"device": "cpu", "window_s": 1.0, "hop_s": 0.5, "max_wait_ms": 5.0},
            "gate": {"enabled": False},
            "storage": {"database": str(tmp_path / "unused.db")},
        }
    )
    options = BenchOptions(
        streams=2, seconds=2.0, speed=4.0, procs=1, clips=1, offline_s=0.0, hold_s=4.0
    )
    report = run_bench(config, options).to_json()
    assert report["errors"] == [] and report["streams_ended"] == 2
    assert report["windows_computed"] + report["skipped"] == 2 * 3
    before, idle = report["server_rss_before_mb"], report["idle_rss_mb"]
    assert before > 0 and 0 < idle <= report["server_rss_peak_mb"]
    rounding = 0.05 * 2 * 100 / 2  # both figures are rounded to 0.1 MiB
    assert report["idle_rss_mb_per_100_streams"] == pytest.approx(
        (idle - before) * 100 / 2, abs=rounding + 0.1
    )
    assert report["wall_s"] < options.hold_s  # 0.5 s of audio at 4x, then the hold
    assert "MiB per 100 streams" in format_report(report)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"hold_s": -1.0}, "--hold must be 0 to"), ({"hold_s": 5.0, "find_max": True}, "--find-max")],
)
def test_a_hold_out_of_bounds_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(GenrecastError, match=message):
        BenchOptions(**changes).check()
