"""``genrecast serve`` as a child process of a measuring tool (the bench, the soak): starting and
stopping it, reading its log, and what ``/proc`` says about it (Linux)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import ClassVar

__all__ = [
    "ServerLog",
    "cpu_seconds",
    "rss_mb",
    "start_serve",
    "stop_serve",
    "tree",
    "wait_port",
]


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name; ``None`` if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (``serve --workers N``: the engine process
    and its ingest workers), ``pid`` first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))  # field 4: the parent
    found, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of process ``pid`` and its descendants (``/proc/PID/stat``);
    ``None`` if ``pid`` is gone."""
    total = None
    for member in tree(pid):
        fields = _stat(member)
        if fields is not None:  # utime and stime: fields 14 and 15 of the line
            total = (total or 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        elif member == pid:
            return None
    return total


def _own_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` and its descendants in MiB (``VmRSS`` summed; pages
    they share are counted in each); ``None`` once ``pid`` is gone."""
    own = _own_rss_mb(pid)
    if own is None:
        return None
    return own + sum(_own_rss_mb(child) or 0.0 for child in tree(pid)[1:])


def start_serve(config_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``genrecast serve --config PATH`` with its output (stdout and stderr) on a pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "stream_server.tools.cli", "serve", "--config", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env={**os.environ, "PYTHONUNBUFFERED": "1"} if env is None else env,
    )


class ServerLog:
    """A server's output, read by a thread: the port once it says it is ready, its last
    lines, and after that its ``WARNING`` lines counted, its ``ERROR``/``CRITICAL`` lines and
    tracebacks counted, and the first :attr:`KEPT` error lines kept (a traceback's: its last
    line)."""

    KEPT: ClassVar[int] = 10
    READY: ClassVar[re.Pattern[str]] = re.compile(r"ready on http://\S+:(\d+)")
    LEVEL: ClassVar[re.Pattern[str]] = re.compile(r"^(WARNING|ERROR|CRITICAL)\b")

    def __init__(self, proc: subprocess.Popen[str], name: str = "server-log") -> None:
        self.proc = proc
        self.port: int | None = None
        self.ready = threading.Event()
        self.tail: deque[str] = deque(maxlen=20)
        self.warnings = self.errors = self.tracebacks = 0
        self.error_lines: list[str] = []
        self.thread = threading.Thread(target=self._read, name=name, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        in_traceback = False
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            self.tail.append(line)
            if self.port is None:
                match = self.READY.search(line)
                if match:
                    self.port = int(match.group(1))
                    self.ready.set()
                continue
            level = self.LEVEL.match(line)
            if in_traceback and not line.startswith(" "):
                in_traceback = False
                self._keep(line)
            elif level and level.group(1) == "WARNING":
                self.warnings += 1
            elif level:
                self.errors += 1
                self._keep(line)
            if line.startswith("Traceback"):
                self.tracebacks += 1
                in_traceback = True
        self.ready.set()  # it exited: nobody waits any more

    def _keep(self, line: str) -> None:
        if len(self.error_lines) < self.KEPT:
            self.error_lines.append(line)


def wait_port(proc: subprocess.Popen[str], log: ServerLog, timeout_s: float) -> int | str:
    """The port once the server's log says it is ready, else why not (it exited, or it was not
    ready within ``timeout_s`` seconds) with the log's last lines: the caller raises its own
    error with that text."""
    ended = log.ready.wait(timeout_s)  # set without a port: its output ended
    if log.port is not None:
        return log.port
    status = proc.poll()
    if status is None and ended:  # it closed its output: it is exiting
        with contextlib.suppress(subprocess.TimeoutExpired):
            status = proc.wait(5.0)
    why = f"exited with status {status}" if status is not None else "was not ready"
    tail = "\n".join(log.tail)
    return f"{why} after {timeout_s:g} s at most:\n{tail}"


def stop_serve(proc: subprocess.Popen[str], log: ServerLog, timeout_s: float) -> int | None:
    """SIGINT, then SIGKILL after ``timeout_s``; the exit status (``None``: it had to be
    killed). The log thread is joined and the pipe closed."""
    status = proc.poll()
    if status is None:
        proc.send_signal(signal.SIGINT)
        try:
            status = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = None
    log.thread.join(5.0)
    if proc.stdout is not None:
        proc.stdout.close()
    return status
