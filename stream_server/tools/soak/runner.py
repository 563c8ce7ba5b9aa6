"""The soak process: starts the server and the workers, samples the server, adds up."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import resource
import tempfile
import time
import tomllib
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from pathlib import Path
from typing import Any, TextIO

import httpx

from stream_server.config import Config, config_from_dict, load_config
from stream_server.errors import SoakError
from stream_server.serve.auth import TOKEN_ENV
from stream_server.tools.server_process import (
    ServerLog,
    cpu_seconds,
    rss_mb,
    start_serve,
    stop_serve,
    wait_port,
)
from stream_server.tools.soak.figures import (
    RssSample,
    SoakResult,
    WorkerResult,
    WorkerSpec,
)
from stream_server.tools.soak.options import (
    END_GRACE_S,
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    WORKER_START_S,
    SoakOptions,
    auto_workers,
)
from stream_server.tools.soak.worker import (
    worker_main,
)


def soak_config(config: Config, options: SoakOptions, database: Path) -> Config:
    """``config`` as the soak's server runs it: on ``options.host``, a free port, room for every
    stream from one address, warnings and errors only in its log, ``database`` for storage."""
    server = dataclasses.replace(
        config.server,
        host=options.host,
        port=0,
        log_level="warning",
        insecure=False,
        max_streams=max(config.server.max_streams, options.streams),
        max_streams_per_client=max(config.server.max_streams_per_client, options.streams),
    )
    storage = dataclasses.replace(config.storage, database=str(database))
    return config.replace(server=server, storage=storage)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # inf and nan are TOML too
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")  # pragma: no cover -- Config holds no other type


def config_toml(config: Config) -> str:
    """``config`` as TOML that :func:`~stream_server.config.load_config` reads back equal."""
    lines: list[str] = []
    for table, values in dataclasses.asdict(config).items():
        lines.append(f"[{table}]")
        nested = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if k not in nested]
        for key, sub in nested.items():
            lines.append(f"[{table}.{key}]")
            lines += [f"{_toml_value(k)} = {_toml_value(v)}" for k, v in sub.items()]
    text = "\n".join(lines) + "\n"
    if config_from_dict(tomllib.loads(text)) != config:  # pragma: no cover -- a bug here
        raise SoakError("the soak's config does not read back as written")
    return text


def _raise_file_limit(needed: int) -> None:
    """Raise this process's soft limit on open files to ``needed`` (the server and the workers
    inherit it); :class:`SoakError` when the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SoakError(
                f"the soak needs {needed} open files but the limit is {hard} (ulimit -Hn): "
                "fewer streams and subscribers, or a higher limit"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class _ServerProcess:
    """``genrecast serve --config PATH`` as a child process, with its log read by a thread
    (:class:`~stream_server.tools.server_process.ServerLog`)."""

    def __init__(self, config_path: Path, env: dict[str, str]) -> None:
        self.proc = start_serve(config_path, env)
        self.log = ServerLog(self.proc, "soak-server-log")

    def wait_ready(self, timeout_s: float) -> int:
        """The port once the server says it is ready; :class:`SoakError` if it exits or takes
        longer than ``timeout_s``."""
        port = wait_port(self.proc, self.log, timeout_s)
        if isinstance(port, str):
            raise SoakError(f"the server {port}")
        return port

    def stop(self) -> int | None:
        """SIGINT, then SIGKILL after :data:`STOP_TIMEOUT_S`; the exit status (``None``: it had
        to be killed)."""
        return stop_serve(self.proc, self.log, STOP_TIMEOUT_S)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _read_ready(host: str, port: int) -> dict[str, Any]:
    url = f"http://{_url_host(host)}:{port}/ready"
    try:
        answer: dict[str, Any] = httpx.get(url, trust_env=False, timeout=10.0).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise SoakError(f"the server's /ready did not answer: {exc}") from None
    if not answer.get("ready"):
        raise SoakError(f"the server is not ready: {answer.get('error')}")
    return answer


def schedule(duration_s: float, buffer_s: float, window_s: float) -> tuple[float, float]:
    """``(ramp_s, warmup_s)`` of a soak of ``duration_s`` seconds: the streams start spread over
    the first tenth (at most 10 s); the warm-up lasts until every stream's ring buffer
    (``buffer_s`` of audio) is full and its first window done, and at least 60 s, but at most
    half the soak."""
    ramp_s = min(10.0, duration_s / 10.0)
    return ramp_s, min(duration_s / 2.0, max(60.0, ramp_s + buffer_s + window_s))


def _plan(
    options: SoakOptions, workers: int, url: str, token: str | None, ramp_s: float
) -> list[WorkerSpec]:
    """Each worker's streams and subscribers: stream slot ``i`` on worker ``i mod workers``, a
    subscriber on the worker of the stream it follows (round robin when it follows all)."""
    duration_s = options.minutes * 60.0
    specs = [
        WorkerSpec(
            w, url, token, options.streams, options.subscribers, duration_s, ramp_s, options.churn_s
        )
        for w in range(workers)
    ]
    for slot in range(options.streams):
        specs[slot % workers].slots.append(slot)
    for j in range(options.subscribers):
        if options.follow == "all":
            specs[j % workers].subscribers.append((j, None))
        else:
            slot = j % options.streams
            specs[slot % workers].subscribers.append((j, slot))
    return specs


def run_soak(options: SoakOptions, *, log: TextIO | None = None) -> SoakResult:
    """Run a soak (see the module docstring) and return what it measured. ``log``: a text
    stream for progress lines (``None``: none).

    Raises:
        SoakError: the options are out of bounds, or the server or the workers did not start.
        ConfigError: the config is invalid.
    """
    options.check()
    config = load_config(options.config).overridden(
        model=options.model, device=options.device, workers=options.server_workers
    )
    _raise_file_limit(options.streams + options.subscribers + 512)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if options.token is not None:
        env[TOKEN_ENV] = options.token
    token = options.token

    def say(text: str) -> None:
        if log is not None:
            print(f"soak: {text}", file=log, flush=True)

    with tempfile.TemporaryDirectory(prefix="genrecast-soak-") as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(config_toml(soak_config(config, options, Path(tmp) / "soak.db")), "utf-8")
        server = _ServerProcess(path, env)
        server_exit: int | None = None
        try:
            port = server.wait_ready(READY_TIMEOUT_S)
            ready = _read_ready(options.host, port)
            hop_s, window_s = float(ready["hop_s"]), float(ready["window_s"])
            workers = options.workers or auto_workers(
                options.streams, options.subscribers, options.follow, hop_s
            )
            url = f"ws://{_url_host(options.host)}:{port}"
            say(
                f"server pid {server.proc.pid} ready on port {port} ({ready['model']} on "
                f"{ready['device']}); {workers} client process(es)"
            )
            ramp_s, warmup_s = schedule(options.minutes * 60.0, config.engine.buffer_s, window_s)
            specs = _plan(options, workers, url, token, ramp_s)
            result = _drive(options, server, specs, warmup_s, say)
            result.model, result.device = str(ready["model"]), str(ready["device"])
            result.window_s, result.hop_s = window_s, hop_s
            result.server_workers = config.server.workers
        finally:
            server_exit = server.stop()
        result.server_exit = server_exit
        server_log = server.log
        result.log_warnings, result.log_errors = server_log.warnings, server_log.errors
        result.log_tracebacks = server_log.tracebacks
        result.log_error_lines = server_log.error_lines
        return result


def _drive(
    options: SoakOptions,
    server: _ServerProcess,
    specs: list[WorkerSpec],
    warmup_s: float,
    say: Callable[[str], None],
) -> SoakResult:
    """Start the workers, sample the server while they run, collect what they saw."""
    pid = server.proc.pid
    duration_s = options.minutes * 60.0
    every_s = min(5.0, max(0.5, duration_s / 60.0))
    context = multiprocessing.get_context("spawn")
    procs: list[multiprocessing.process.BaseProcess] = []
    conns: list[Connection] = []
    errors: list[str] = []
    results: dict[int, WorkerResult] = {}
    rss: list[RssSample] = []
    try:
        for spec in specs:
            ours, theirs = context.Pipe()
            proc = context.Process(target=worker_main, args=(theirs,), daemon=True)
            proc.start()
            theirs.close()
            ours.send(spec)
            procs.append(proc)
            conns.append(ours)
        deadline = time.monotonic() + WORKER_START_S
        for conn in conns:
            answer: object = f"it did not start within {WORKER_START_S:g} s"
            with contextlib.suppress(EOFError, OSError):
                if conn.poll(max(0.0, deadline - time.monotonic())):
                    answer = conn.recv()
            if answer != "ready":
                raise SoakError(f"a client process failed: {answer}")
        idle = rss_mb(pid)
        start_wall = time.time() + 0.5
        for conn in conns:
            conn.send(start_wall)
        cpu0 = cpu_seconds(pid) or 0.0
        say(
            f"running {options.streams} streams and {options.subscribers} subscribers "
            f"for {duration_s:g} s"
        )
        hard_end = time.monotonic() + 0.5 + duration_s + 2 * END_GRACE_S + 60.0
        next_sample = time.monotonic() + 0.5
        next_say = time.monotonic() + 0.5 + max(60.0, duration_s / 10.0)
        pending = {conn: i for i, conn in enumerate(conns)}
        cpu1 = cpu0
        while pending and time.monotonic() < hard_end:
            now = time.monotonic()
            if now >= next_sample:
                value = rss_mb(pid)
                if value is not None:
                    rss.append(RssSample(time.time() - start_wall, value))
                    cpu1 = cpu_seconds(pid) or cpu1
                next_sample += every_s
            if now >= next_say and rss:
                say(f"{rss[-1].t_s:.0f} s: server RSS {rss[-1].rss_mb:.1f} MiB")
                next_say += max(60.0, duration_s / 10.0)
            ready_conns = wait_connections(list(pending), timeout=max(0.0, next_sample - now))
            for ready in ready_conns:
                assert isinstance(ready, Connection)
                index = pending.pop(ready)
                try:
                    answer = ready.recv()
                except (EOFError, OSError):
                    answer = f"client process {index} died (exit status {procs[index].exitcode})"
                if isinstance(answer, WorkerResult):
                    results[index] = answer
                else:
                    errors.append(str(answer))
        if pending:
            errors.append(f"{len(pending)} client process(es) did not finish in time")
        end_wall = time.time()
        cpu_end = cpu_seconds(pid)
        final = rss_mb(pid)
        if final is not None:
            rss.append(RssSample(end_wall - start_wall, final))
        if server.proc.poll() is not None:
            errors.append(f"the server exited during the soak (status {server.proc.returncode})")
    finally:
        for worker in procs:
            worker.join(5.0)
            if worker.is_alive():
                worker.terminate()
                worker.join()
        for conn in conns:
            conn.close()
    return SoakResult(
        options=options,
        workers=len(specs),
        server_pid=pid,
        server_exit=None,
        model="",
        device="",
        window_s=0.0,
        hop_s=0.0,
        duration_s=end_wall - start_wall,
        warmup_s=warmup_s,
        idle_rss_mb=idle,
        rss=rss,
        server_cpu_s=(cpu_end if cpu_end is not None else cpu1) - cpu0,
        worker_results=[results[i] for i in sorted(results)],
        log_warnings=0,
        log_errors=0,
        log_tracebacks=0,
        log_error_lines=[],
        errors=errors,
    )
