"""Radio stations on loopback for pull tests: MP3 clips made by the ffmpeg command, and plain
HTTP servers that send them for ever at real time."""

from __future__ import annotations

import contextlib
import shutil
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import pytest

from tests.helpers.audio import music_source
from tests.helpers.constants import TIMEOUT_S

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
MP3_BYTES_PER_S = 16_000  # 128 kbit/s


def need(binary: str) -> None:
    if not Path(binary).is_file():
        pytest.skip(f"{binary} is not installed")


def mp3_file(tmp_path: Path, seconds: float) -> Path:
    need(FFMPEG)
    out = tmp_path / f"clip{seconds:g}.mp3"
    subprocess.run(
        [
            *(FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"),
            *("-i", str(music_source(tmp_path)), "-t", str(seconds), "-ac", "2"),
            *("-c:a", "libmp3lame", "-b:a", "128k", "-write_xing", "0", "-id3v2_version", "0"),
            str(out),
        ],
        check=True,
        timeout=TIMEOUT_S,
    )
    return out


class LoopbackServer:
    """A ``socketserver`` server on a free loopback port, served by a background thread while
    the ``with`` block runs; ``stop`` is set on exit so endless handlers return."""

    def __init__(self, server: socketserver.TCPServer, path: str) -> None:
        self.stop = threading.Event()
        self.server = server
        self.server.daemon_threads = True  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def send_paced_mp3(write: Callable[[bytes], object], mp3: bytes, stop: threading.Event) -> None:
    """Write ``mp3`` in a loop at real time (half a second ahead) until ``stop`` is set."""
    t0, sent, step = time.monotonic(), 0, 4000
    with contextlib.suppress(OSError):
        while not stop.is_set():
            pos = sent % len(mp3)
            chunk = (mp3 + mp3)[pos : pos + step]
            write(chunk)
            sent += len(chunk)
            ahead = sent / MP3_BYTES_PER_S - (time.monotonic() - t0)
            stop.wait(max(0.0, ahead - 0.5))


class EndlessMp3(LoopbackServer):
    """A plain HTTP server (``http.server``) sending an MP3 for ever at real time."""

    def __init__(self, mp3: bytes) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "audio/mpeg")
                self.end_headers()
                send_paced_mp3(self.wfile.write, mp3, owner.stop)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), Handler), "/endless.mp3")
