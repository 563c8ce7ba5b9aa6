"""The bench process: starts the server and the load processes, samples the server, adds up."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TextIO

from stream_server.config import Config
from stream_server.errors import ClientError, GenrecastError
from stream_server.tools.bench.audio import ClipSet, plan_streams, prepare_clips
from stream_server.tools.bench.figures import BenchReport, RunFigures, Throughput, summarise
from stream_server.tools.bench.options import (
    END_GRACE_S,
    FRAME_S,
    HOLD_READ_S,
    SAMPLE_EVERY_S,
    START_DELAY_S,
    WORKER_START_S,
    BenchOptions,
    default_audio_dir,
)
from stream_server.tools.bench.search import find_max
from stream_server.tools.bench.server import BenchServer, running_server
from stream_server.tools.bench.worker import (
    PusherResult,
    PusherSpec,
    SubscriberResult,
    SubscriberSpec,
    WorkerFailure,
    pusher_main,
    subscriber_main,
)
from stream_server.tools.server_process import cpu_seconds, rss_mb

Say = Callable[[str], None]

#: Seconds the subscriber gets after the pushers are done to see the last ``stream.ended``.
SUBSCRIBER_GRACE_S = 5.0


@dataclass
class _Child:
    process: BaseProcess
    conn: Connection


class _Children:
    """Load processes started with ``spawn``; all stopped when the block ends."""

    def __init__(self) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.children: list[_Child] = []

    def start(self, target: Callable[[Connection], None], spec: object) -> _Child:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=target, args=(theirs,), daemon=True)
        process.start()
        theirs.close()
        ours.send(spec)
        child = _Child(process, ours)
        self.children.append(child)
        return child

    def stop(self) -> None:
        for child in self.children:
            child.process.join(5.0)
            if child.process.is_alive():
                child.process.terminate()
                child.process.join()
            child.conn.close()


@contextlib.contextmanager
def _children() -> Iterator[_Children]:
    children = _Children()
    try:
        yield children
    finally:
        children.stop()


def _failed(answer: object, what: str) -> GenrecastError:
    """The error for a load process's unexpected ``answer``: a :class:`ClientError` where the
    server refused it (a missing token reads as the clients say it)."""
    if isinstance(answer, WorkerFailure):
        if answer.client_error:
            return ClientError(answer.message)
        return GenrecastError(f"{what} failed: {answer.message}")
    return GenrecastError(f"{what} failed: {answer}")


def _receive(child: _Child, timeout_s: float) -> object:
    """The next object from ``child`` within ``timeout_s`` seconds, else a text saying why not."""
    with contextlib.suppress(EOFError, OSError):
        if child.conn.poll(max(0.0, timeout_s)):
            return child.conn.recv()
        return f"no answer within {timeout_s:g} s"
    return f"it died (exit status {child.process.exitcode})"


def _wait_ready(children: list[_Child], what: str) -> None:
    deadline = time.monotonic() + WORKER_START_S
    for child in children:
        answer = _receive(child, deadline - time.monotonic())
        if answer != "ready":
            raise _failed(answer, what)


@dataclass
class _Samples:
    """The server's RSS in MiB as sampled: the last and the largest."""

    last: float | None = None
    peak: float | None = None

    def take(self, pid: int) -> None:
        value = rss_mb(pid)
        if value is not None:
            self.last = value
            self.peak = value if self.peak is None else max(self.peak, value)


def _collect(
    pushers: list[_Child], pid: int, deadline: float, rss: _Samples
) -> tuple[list[PusherResult], list[str]]:
    """The pushers' results, sampling the server's RSS while waiting (until ``deadline``,
    ``time.monotonic()`` seconds)."""
    pending = {child.conn: child for child in pushers}
    results: list[PusherResult] = []
    errors: list[str] = []
    while pending and time.monotonic() < deadline:
        rss.take(pid)
        for ready in wait_connections(list(pending), timeout=SAMPLE_EVERY_S):
            assert isinstance(ready, Connection)
            answer = _receive(pending.pop(ready), 0.0)
            if isinstance(answer, PusherResult):
                results.append(answer)
            elif isinstance(answer, WorkerFailure) and answer.client_error:
                raise ClientError(answer.message)
            else:
                errors.append(str(_failed(answer, "a pusher")))
    if pending:
        errors.append(f"{len(pending)} pusher process(es) did not finish in time")
    return results, errors


def _subscriber_result(child: _Child, all_ended: bool) -> SubscriberResult | str:
    """The subscriber's result: it stops by itself once every stream ended, else when told."""
    answer = _receive(child, SUBSCRIBER_GRACE_S if all_ended else 0.0)
    if isinstance(answer, str):
        with contextlib.suppress(OSError):
            child.conn.send("stop")
        answer = _receive(child, END_GRACE_S)
    if isinstance(answer, SubscriberResult):
        return answer
    if isinstance(answer, WorkerFailure) and answer.client_error:
        raise ClientError(answer.message)
    return str(_failed(answer, "the subscriber"))


def run_load(
    server: BenchServer, clips: ClipSet, options: BenchOptions, streams: int, name: str
) -> RunFigures:
    """One run: ``streams`` streams named ``name`` plus their index, as ``options`` says, from
    a subscriber and :meth:`BenchOptions.pushers` pusher processes; their figures."""
    geometry = server.geometry
    frame = max(1, round(FRAME_S * geometry.sample_rate))
    total = round(options.seconds * geometry.sample_rate)
    lengths = [stop - begin for begin, stop in clips.bounds]
    plans = plan_streams(
        streams, lengths, geometry.hop_s / options.speed, same_instant=options.same_instant
    )
    count = options.pushers(streams)
    specs = [
        PusherSpec(server.ws_url, server.token, name, clips, frame, total, options.speed, part)
        for part in (tuple(plans[i::count]) for i in range(count))
    ]
    rss = _Samples()
    with _children() as children:
        subscriber = children.start(
            subscriber_main, SubscriberSpec(server.ws_url, server.token, name, streams)
        )
        _wait_ready([subscriber], "the subscriber")
        pushers = [children.start(pusher_main, spec) for spec in specs]
        _wait_ready(pushers, "a pusher")
        before_mb = rss_mb(server.pid)
        cpu0 = cpu_seconds(server.pid) or 0.0
        start = time.monotonic() + START_DELAY_S
        run_s = options.seconds / options.speed + geometry.hop_s
        hold_until = start + run_s + options.hold_s if options.hold_s else None
        for child in pushers:
            child.conn.send((start, hold_until))
        idle_mb = None
        if hold_until is not None:  # every stream open and silent: read the RSS at the end
            while time.monotonic() < hold_until - HOLD_READ_S:
                rss.take(server.pid)
                time.sleep(
                    min(SAMPLE_EVERY_S, max(0.0, hold_until - HOLD_READ_S - time.monotonic()))
                )
            idle_mb = rss_mb(server.pid)
        deadline = start + run_s + options.hold_s + 2 * END_GRACE_S
        results, errors = _collect(pushers, server.pid, deadline, rss)
        end = time.monotonic()
        logs = [log for result in results for log in result.logs]
        sub = _subscriber_result(subscriber, all(log.ended for log in logs))
        cpu1 = cpu_seconds(server.pid)
        rss.take(server.pid)
    if isinstance(sub, str):
        errors.append(sub)
        sub = SubscriberResult({})
    elif sub.error:
        errors.append(sub.error)
    if not server.alive():
        errors.append(f"the server exited during the run (status {server.proc.returncode})")
    return summarise(
        logs,
        sub.updates,
        geometry,
        streams=streams,
        seconds=options.seconds,
        speed=options.speed,
        start=start,
        end=end,
        server_cpu_s=(cpu1 if cpu1 is not None else cpu0) - cpu0,
        server_rss_mb=rss.last,
        server_rss_peak_mb=rss.peak,
        server_rss_before_mb=before_mb,
        idle_rss_mb=idle_mb,
        hold_s=options.hold_s,
        client_cpu_s=sum(r.cpu_s for r in results) + sub.cpu_s,
        errors=errors,
    )


def _measure_offline(
    config: Config, clips: ClipSet, options: BenchOptions, say: Say
) -> tuple[Throughput, Throughput | None]:
    """The offline runner's throughput and (with ``compare_seed``) the naive pipeline's, on
    windows of the bench's clips; the model is loaded here, in the bench's process."""
    from stream_server.inference.facts import window_seconds
    from stream_server.inference.loading import load_configured_model
    from stream_server.tools.bench.offline import sample_windows, time_offline, time_seed

    model = load_configured_model(config)
    window = round(window_seconds(config, model) * model.preprocessing.sample_rate)
    pcm = clips.load()
    windows = sample_windows(pcm, window, 2 * config.engine.max_batch)
    seed = None
    if options.compare_seed:  # first: the runner moves and may halve the model in place
        seed = time_seed(model, config, windows, options.seed_s)
        say(f"naive pipeline: {seed.per_s:.2f} windows/s ({seed.windows} windows)")
    offline = time_offline(model, config, pcm, options.offline_s)
    say(f"offline runner: {offline.per_s:.1f} windows/s ({offline.windows} windows)")
    return offline, seed


def _sayer(log: TextIO | None) -> Say:
    def say(text: str) -> None:
        if log is not None:
            print(f"bench: {text}", file=log, flush=True)

    return say


def run_bench(
    config: Config,
    options: BenchOptions | None = None,
    /,
    *,
    streams: int | None = None,
    seconds: float | None = None,
    speed: float | None = None,
    token: str | None = None,
    log: TextIO | None = None,
) -> BenchReport:
    """Run the bench (see the package docstring) on ``config`` and return what it measured.
    ``streams``, ``seconds``, ``speed`` and ``token`` replace those of ``options`` when given;
    ``log``: a text stream for progress lines (``None``: none).

    Raises:
        GenrecastError: the options are out of bounds, or the server or a load process did not
            start.
        ClientError: the server refused the bench's token (or wants one).
    """
    changes: dict[str, Any] = {"streams": streams, "seconds": seconds, "speed": speed}
    changes = {k: v for k, v in changes.items() if v is not None}
    if token is not None:
        changes["token"] = token
    options = dataclasses.replace(options or BenchOptions(), **changes)
    options.check()
    say = _sayer(log)
    capacity = options.find_max_limit if options.find_max else options.streams
    with tempfile.TemporaryDirectory(prefix="genrecast-bench-") as tmp:
        folder = Path(tmp)
        with running_server(config, capacity, folder, options.token) as server:
            report = _measure(config, server, folder, options, say)
        report.log_warnings, report.log_errors = server.log.warnings, server.log.error_lines
    return report


def _measure(
    config: Config, server: BenchServer, folder: Path, options: BenchOptions, say: Say
) -> BenchReport:
    """Everything the bench measures once its server is up."""
    ready, geometry = server.ready, server.geometry
    say(f"server pid {server.pid} on port {server.port}: {ready['model']} on {ready['device']}")
    if round(options.seconds * geometry.sample_rate) < geometry.window_samples:
        raise GenrecastError(
            f"--seconds {options.seconds:g} is shorter than a window ({ready['window_s']:g} s): "
            "no window would be computed"
        )
    audio_dir = None if options.synthetic else options.audio or default_audio_dir()
    clips = prepare_clips(
        audio_dir, options.clips, geometry.sample_rate, geometry.hop_samples, folder / "audio.npy"
    )
    say(f"audio: {clips.source}")
    offline, seed = _measure_offline(config, clips, options, say)
    report = BenchReport(
        model=str(ready["model"]),
        device=str(ready["device"]),
        precision=str(ready["precision"]),
        sample_rate=geometry.sample_rate,
        window_s=float(ready["window_s"]),
        hop_s=float(ready["hop_s"]),
        max_batch=config.engine.max_batch,
        audio=clips.source,
        procs=options.pushers(options.streams),
        server_workers=config.server.workers,
        same_instant=options.same_instant,
        server_pid=server.pid,
        bench_pid=os.getpid(),
        offline=offline,
        seed=seed,
    )
    if options.find_max:
        _search(server, clips, options, report, say)
    else:
        say(f"{options.streams} streams x {options.seconds:g} s of audio at {options.speed:g}x")
        report.run = run_load(server, clips, options, options.streams, "bench-")
    return report


def _search(
    server: BenchServer, clips: ClipSet, options: BenchOptions, report: BenchReport, say: Say
) -> None:
    """``--find-max``: probes of ``options.seconds`` each; the probes and the answer go into
    ``report``."""

    def passes(streams: int) -> bool:
        run = run_load(server, clips, options, streams, f"bench-{len(report.probes)}-")
        report.probes.append(run)
        ok = run.passes(options.max_p99_ms)
        p99 = run.p99_ms()
        say(
            f"probe {streams} streams: p99 "
            f"{'-' if p99 is None else f'{p99:.1f}'} ms, {run.skipped} skipped, "
            f"{len(run.errors)} errors: {'ok' if ok else 'too many'}"
        )
        return ok

    report.max_p99_ms = options.max_p99_ms
    search = find_max(passes, start=options.streams, limit=options.find_max_limit)
    report.max_streams = search.best
    say(
        f"most real-time streams with p99 <= {options.max_p99_ms:g} ms and none skipped: "
        f"{search.best}"
    )
