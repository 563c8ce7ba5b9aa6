"""``genrecast soak`` through the real command: a server process of its own, every update
accounted for, RSS sampled, the server gone afterwards, and its bounds refused before anything
starts. Counts are asserted, never speed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stream_server.config import config_from_dict, load_config
from stream_server.tools.soak import (
    Histogram,
    SoakError,
    SoakOptions,
    auto_workers,
    config_toml,
    format_report,
)
from tests.helpers.cli import genrecast, write_config
from tests.helpers.constants import TIMEOUT_S

SOAK_TIMEOUT_S = 6 * TIMEOUT_S


def soak(tmp_path: Path, checkpoint: Path, *args: str) -> dict[str, Any]:
    """Run ``genrecast soak ARGS --json`` on ``checkpoint``; its report."""
    config = write_config(tmp_path / "config.toml", checkpoint)
    result = genrecast(
        "soak", "--config", str(config), "--model", str(checkpoint), "--json", *args,
        timeout=SOAK_TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture(scope="module")
def stream_report(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """3 streams and 4 subscribers for 10 s, each subscriber on one stream (the fourth on the
    first stream again)."""
    return soak(
        tmp_path_factory.mktemp("soak"),
        tiny_checkpoint,
        *("--streams", "3", "--subscribers", "4", "--minutes", str(10 / 60)),
    )


def test_every_update_reaches_every_subscriber(stream_report: dict[str, Any]) -> None:
    report = stream_report
    assert (report["streams"], report["subscribers"], report["follow"]) == (3, 4, "stream")
    windows, updates = report["windows"], report["updates"]
    assert windows["streams_started"] == windows["streams_ended"] == 3
    assert windows["computed"] >= 3
    assert updates["published"] == windows["computed"]
    # the fourth subscriber follows the first stream again: more expected than published
    assert updates["published"] < updates["expected"] < 2 * updates["published"]
    assert updates["delivered"] == updates["expected"]
    assert updates["lost"] == updates["extra"] == 0
    assert updates["subscribers_dropped"] == updates["subscribers_with_loss"] == 0
    assert updates["out_of_order"] == updates["resume_gaps"] == 0
    assert report["errors"] == {"count": 0, "first": []}
    assert report["ok"] is True


def test_latency_is_measured_for_every_delivery(stream_report: dict[str, Any]) -> None:
    latency = stream_report["latency_ms"]
    assert latency["updates"] == stream_report["updates"]["delivered"]
    assert 0 < latency["client_updates"] <= latency["updates"]
    assert 0 < latency["server_p50"] <= latency["server_p99"] <= latency["server_max"]
    assert 0 < latency["client_p50"] <= latency["client_p99"] <= latency["client_max"]


def test_rss_is_sampled_and_the_server_is_gone(stream_report: dict[str, Any]) -> None:
    rss, server = stream_report["rss"], stream_report["server"]
    assert rss["samples"] >= 3
    for key in ("idle_mb", "start_mb", "end_mb", "after_mb"):
        assert 0 < rss[key] <= rss["max_mb"], key
    assert rss["growth_mb_per_hour"] is not None
    assert server["stopped_cleanly"] is True
    assert server["workers"] == 1  # the config's server.workers
    assert server["log_errors"] == server["log_tracebacks"] == 0
    assert not Path(f"/proc/{server['pid']}").exists()
    assert stream_report["workers"] >= 1


def test_the_text_report_says_the_same(stream_report: dict[str, Any]) -> None:
    text = format_report(stream_report)
    updates = stream_report["updates"]
    assert f"{updates['delivered']} delivered, 0 lost" in text
    assert "3 streams, 4 subscribers (one stream each)" in text
    assert text.endswith("errors: none")


def test_subscribers_following_every_stream(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Every subscriber gets every stream's updates; the server-wide seq has no gap."""
    report = soak(
        tmp_path,
        tiny_checkpoint,
        *("--streams", "2", "--subscribers", "2", "--minutes", "0.1", "--follow", "all"),
    )
    updates = report["updates"]
    assert report["windows"]["streams_ended"] == 2
    assert updates["published"] >= 2
    assert updates["expected"] == updates["delivered"] == 2 * updates["published"]
    assert updates["lost"] == updates["seq_gaps"] == updates["out_of_order"] == 0
    assert report["ok"] is True


def test_streams_that_come_and_go_lose_no_update(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """With churn each slot ends its stream and opens a new one again and again; each
    subscriber follows its slot's streams in turn and still gets every update of each."""
    report = soak(
        tmp_path,
        tiny_checkpoint,
        *("--streams", "2", "--subscribers", "3", "--minutes", "0.5", "--churn", "6"),
    )
    windows, updates = report["windows"], report["updates"]
    assert report["churn_s"] == 6.0
    # 30 s of 3 to 8.4 s streams per slot: at least four streams each
    assert windows["streams_started"] == windows["streams_ended"] >= 8
    assert updates["published"] == windows["computed"] >= windows["streams_started"]
    assert updates["published"] < updates["expected"] == updates["delivered"]
    assert updates["lost"] == updates["extra"] == updates["out_of_order"] == 0
    assert report["ok"] is True, report["errors"]
    assert "each slot a new stream every ~6 s" in format_report(report)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--host", "0.0.0.0"), "loopback only"),
        (("--host", "192.0.2.1"), "loopback only"),
        (("--streams", "2001"), "--streams must be 1 to 2000"),
        (("--streams", "0"), "--streams must be 1 to 2000"),
        (("--subscribers", "2001"), "--subscribers must be 0 to 2000"),
        (("--minutes", "61"), "at most 60"),
        (("--minutes", "0"), "more than 0"),
        (("--churn", "1"), "--churn must be 0 (off) or 5 s"),
        (("--minutes", "0.1", "--churn", "7"), "to the soak's length"),
    ],
)
def test_out_of_bounds_is_refused_before_anything_starts(
    args: tuple[str, ...], says: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.toml", "untrained")
    result = genrecast("soak", "--config", str(config), *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr
    assert "ready on" not in result.stdout + result.stderr


def test_options_bounds_in_process() -> None:
    SoakOptions(streams=2000, subscribers=2000, minutes=60, host="::1").check()
    SoakOptions(host="localhost").check()
    with pytest.raises(SoakError, match="loopback"):
        SoakOptions(host="example.com").check()


def test_config_reads_back_as_written(tmp_path: Path) -> None:
    """The soak's temporary config keeps every setting: lists, tables, odd strings."""
    config = config_from_dict(
        {
            "model": {"path": "some/dir", "labels": {"hiphop": 'hip "hop"', "é": "ü"}},
            "auth": {"hosts": ["a.example", "b.example"], "origins": []},
            "server": {"max_streams": 7},
            "engine": {"hop_s": 0.25, "max_wait_ms": 1e-3},
        }
    )
    path = tmp_path / "config.toml"
    path.write_text(config_toml(config), encoding="utf-8")
    assert load_config(path) == config


def test_histogram_percentiles() -> None:
    hist = Histogram()
    assert hist.percentile(50) is None
    for value in range(1, 101):
        hist.add(float(value))
    other = Histogram()
    other.add(1000.0)
    hist.merge(other)
    assert hist.count == 101
    assert hist.max_ms == 1000.0
    p50, p99 = hist.percentile(50), hist.percentile(99)
    assert p50 is not None and p99 is not None
    assert p50 == pytest.approx(51, rel=0.02)
    assert p99 == pytest.approx(100, rel=0.02)
    assert hist.percentile(100) == pytest.approx(1000.0, rel=0.02)


def test_auto_workers_grow_with_the_load() -> None:
    one = auto_workers(10, 10, "stream", 1.0)
    assert one == 1
    many = auto_workers(200, 200, "all", 1.0)
    assert many >= one
    assert auto_workers(2000, 2000, "all", 0.5) <= 32
