"""Tune the smoothing defaults on validation mixes: ``python -m
stream_server.tools.tune_smoothing``.

Re-run it whenever the genre model changes (one command; the model runs once, every setting
after that is replayed from its scores)::

    python -m stream_server.tools.tune_smoothing --data ../shared/datasets/genres --mixes 40

It builds ``--mixes`` mixes from the **validation** side of the model's ``split.json`` only
(nothing it tunes on was seen in training; see :mod:`stream_server.training.mix_eval`), then

1. grid-searches the live path's ``[smoothing]`` -- ``time_constant_s``, ``switch_margin``,
   ``min_dwell_s`` and ``stale_margin`` (``backdate_max_s`` as configured) -- running every mix
   and every single-genre clip through a live session for each setting;
2. grid-searches ``[offline] switch_cost`` for the offline decoding;
3. prints the best settings with their figures, the runners-up, and the ``config.toml`` lines to
   paste.

Settings are ranked by their **cost per hour of audio**, in seconds:
``wrong seconds in the stored timeline + wrong seconds as shown live + FALSE_CHANGE_COST_S x false
changes``, so a change shown late costs the seconds it was late, and a false change (on a
single-genre clip) costs as much as :data:`FALSE_CHANGE_COST_S` wrong seconds. The offline path has
no live label: its cost counts the stored timeline twice.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

#: A false change costs as much as this many seconds shown wrong.
FALSE_CHANGE_COST_S = 10.0

#: The grid of the live path's ``[smoothing]`` (240 settings). No smoothing at all (a time
#: constant of 0, no margin) was tried on the shipped model and flickers dozens of times an hour
#: more; the stale-genre rule stays on (the current genre must never lag a clear leader).
TIME_CONSTANTS_S = (1.0, 2.0, 3.0, 4.0, 6.0)
SWITCH_MARGINS = (0.05, 0.1, 0.2, 0.3)
MIN_DWELLS_S = (1.0, 2.0, 3.0, 4.0)
STALE_MARGINS = (0.3, 0.4, 0.5)
#: The grid of ``[offline] switch_cost`` (nats).
SWITCH_COSTS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)

#: A smaller grid (``--quick``), for a look.
QUICK: dict[str, Sequence[float]] = {
    "time_constants": (2.0, 4.0),
    "switch_margins": (0.1, 0.2),
    "min_dwells": (1.0, 3.0),
    "stale_margins": (0.3, 0.5),
    "switch_costs": (2.0, 6.0, 12.0),
}


def live_cost(stored_right: float, shown_right: float, false_per_hour: float) -> float:
    """Cost per hour of audio, in seconds, of a live setting (see the module docstring)."""
    return (
        (1.0 - stored_right) * 3600.0
        + (1.0 - shown_right) * 3600.0
        + FALSE_CHANGE_COST_S * false_per_hour
    )


def offline_cost(right: float, false_per_hour: float) -> float:
    """Cost per hour of audio, in seconds, of an offline setting."""
    return 2.0 * (1.0 - right) * 3600.0 + FALSE_CHANGE_COST_S * false_per_hour


@dataclass(frozen=True)
class Trial:
    """One setting and its figures."""

    settings: dict[str, float]
    cost: float
    figures: dict[str, Any]


def _grid(args: argparse.Namespace) -> dict[str, Sequence[float]]:
    if args.quick:
        return QUICK
    return {
        "time_constants": TIME_CONSTANTS_S,
        "switch_margins": SWITCH_MARGINS,
        "min_dwells": MIN_DWELLS_S,
        "stale_margins": STALE_MARGINS,
        "switch_costs": SWITCH_COSTS,
    }


def tune(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare the mixes once, then search both grids; returns the results as JSON-ready data."""
    from stream_server.core.decoding import OfflineParams
    from stream_server.core.smoothing import SmoothingParams
    from stream_server.errors import GenrecastError
    from stream_server.inference.device import pick_device
    from stream_server.inference.facts import session_params
    from stream_server.inference.loading import load_configured_model
    from stream_server.inference.runner import InferenceRunner
    from stream_server.tools.cli import load_config_of
    from stream_server.training.dataset import SPLIT_FILE, load_split
    from stream_server.training.mix_eval import MixOptions, figures, prepare

    config = load_config_of(args)
    model = load_configured_model(config)
    split = Path(model.source).expanduser() / SPLIT_FILE
    if not split.is_file():
        raise GenrecastError(f"tuning needs {SPLIT_FILE} beside the model; {split} does not exist")
    clips = load_split(split, "val")
    base = session_params(config, model)
    runner = InferenceRunner(
        model,
        pick_device(config.engine.device),
        half=config.engine.half_precision,
        max_batch=config.engine.max_batch,
        level_samples=base.hop_samples,
    )
    options = MixOptions(mixes=args.mixes, seed=args.mix_seed)
    progress = not args.json
    prepared = prepare(
        model, args.data, clips, config, runner, options, cache_dir=args.cache, progress=progress
    )
    grid = _grid(args)
    settings = list(
        itertools.product(
            grid["time_constants"],
            grid["switch_margins"],
            grid["min_dwells"],
            grid["stale_margins"],
        )
    )
    live: list[Trial] = []
    for n, (tau, margin, dwell, stale) in enumerate(settings):
        params = replace(base, smoothing=SmoothingParams(tau, margin, dwell, stale))
        fig = figures(prepared, params, offline=False).live
        live.append(
            Trial(
                {
                    "time_constant_s": tau,
                    "switch_margin": margin,
                    "min_dwell_s": dwell,
                    "stale_margin": stale,
                },
                live_cost(fig.seconds_right, fig.shown_right or 0.0, fig.false_per_hour),
                fig.to_json(),
            )
        )
        if progress:
            sys.stderr.write(f"\rlive settings: {n + 1}/{len(settings)}")
            sys.stderr.flush()
    if progress:
        sys.stderr.write("\n")
    live.sort(key=lambda t: t.cost)
    best = live[0].settings
    best_params = replace(
        base,
        smoothing=SmoothingParams(
            best["time_constant_s"],
            best["switch_margin"],
            best["min_dwell_s"],
            best["stale_margin"],
        ),
    )
    offline: list[Trial] = []
    for cost in grid["switch_costs"]:
        params = replace(best_params, offline=OfflineParams("viterbi", cost))
        fig = figures(prepared, params).offline
        offline.append(
            Trial(
                {"switch_cost": cost},
                offline_cost(fig.seconds_right, fig.false_per_hour),
                fig.to_json(),
            )
        )
    offline.sort(key=lambda t: t.cost)
    return {
        "model": model.source,
        "mixes": args.mixes,
        "mix_seed": args.mix_seed,
        "clips": len(prepared.clips),
        "windows_computed": prepared.windows_computed,
        "false_change_cost_s": FALSE_CHANGE_COST_S,
        "backdate_max_s": base.backdate_max_s,
        "live": [t.__dict__ for t in live],
        "offline": [t.__dict__ for t in offline],
    }


def format_results(result: dict[str, Any], top: int = 8) -> str:
    """The best settings, the runners-up and the config lines."""
    live, offline = result["live"], result["offline"]
    best, off = live[0], offline[0]

    def row(t: dict[str, Any]) -> str:
        s, f = t["settings"], t["figures"]
        delay = f["change_delay_s"]
        return (
            f"  tau {s['time_constant_s']:>4g}  margin {s['switch_margin']:>4g}  "
            f"dwell {s['min_dwell_s']:>3g}  stale {s['stale_margin']:>4g}  | "
            f"cost {t['cost']:6.0f}  stored {f['seconds_right']:.1%}  shown {f['shown_right']:.1%}"
            f"  delay {delay['median']} / p90 {delay['p90']} s  missed {f['changes_missed']}"
            f"  false/h {f['false_changes_per_hour']}"
        )

    s = best["settings"]
    lines = [
        f"model {result['model']}: {result['mixes']} validation mixes (seed {result['mix_seed']}), "
        f"{result['clips']} clips; {result['windows_computed']} windows computed once",
        f"cost per hour = wrong stored s + wrong shown s + {result['false_change_cost_s']:g} x "
        "false changes",
        "",
        "live, best first:",
        *[row(t) for t in live[:top]],
        "",
        "offline (viterbi), best first:",
        *[
            f"  switch cost {t['settings']['switch_cost']:>4g}  | cost {t['cost']:6.0f}  "
            f"right {t['figures']['seconds_right']:.1%}  missed {t['figures']['changes_missed']}"
            f"  false/h {t['figures']['false_changes_per_hour']}"
            for t in offline[:top]
        ],
        "",
        "config.toml:",
        "[smoothing]",
        f"time_constant_s = {s['time_constant_s']:g}",
        f"switch_margin = {s['switch_margin']:g}",
        f"min_dwell_s = {s['min_dwell_s']:g}",
        f"stale_margin = {s['stale_margin']:g}",
        "[offline]",
        f"switch_cost = {off['settings']['switch_cost']:g}",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stream_server.tools.tune_smoothing",
        description="Grid-search the smoothing defaults on validation mixes.",
    )
    parser.add_argument("--data", required=True, help="dataset root: one folder of clips per genre")
    parser.add_argument("--model", help="checkpoint directory (default: config model.path)")
    parser.add_argument("--config", type=Path, help="config.toml (default: the project's)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (config: engine.device)")
    parser.add_argument("--mixes", type=int, default=40, help="validation mixes (default 40)")
    parser.add_argument("--mix-seed", type=int, default=0, help="seed of the mixes (default 0)")
    parser.add_argument("--cache", help="decoded-audio cache directory (default: none)")
    parser.add_argument("--quick", action="store_true", help="a much smaller grid")
    parser.add_argument("--top", type=int, default=8, help="settings listed (default 8)")
    parser.add_argument("--json", action="store_true", help="print every trial as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from stream_server.errors import GenrecastError

    args = build_parser().parse_args(argv)
    try:
        result = tune(args)
    except GenrecastError as exc:
        print(f"tune_smoothing: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1) if args.json else format_results(result, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
