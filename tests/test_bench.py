"""``genrecast bench`` runs a real server and accounts for every window (no figures asserted)."""

from __future__ import annotations

import math
from collections.abc import Callable

from stream_server.config import Config
from stream_server.tools.bench import run_bench


def test_bench_accounts_for_every_window(make_config: Callable[..., Config]) -> None:
    """More streams than the server's limit: the bench lifts the limit; every due window is
    either computed or counted as skipped, and every update's latency is measured."""
    window_s, hop_s, seconds, streams = 1.0, 1.0, 4.0, 3
    config = make_config(
        server={"max_streams": 2},
        model={"path": "untrained"},
        engine={"hop_s": hop_s, "window_s": window_s},
    )
    result = run_bench(config, streams=streams, seconds=seconds, speed=4.0)
    figures = result.to_json()
    due = streams * (math.floor((seconds - window_s) / hop_s) + 1)
    assert figures["streams"] == streams
    assert figures["windows_computed"] + figures["windows_skipped"] == due, figures
    assert figures["windows_computed"] >= streams
    assert len(result.latencies_ms) >= figures["windows_computed"] - streams
    assert figures["latency_ms_p99"] >= figures["latency_ms_p50"] > 0
    assert figures["model"] == "untrained"
