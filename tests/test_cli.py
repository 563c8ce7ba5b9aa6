"""The ``genrecast`` commands as a user runs them: separate processes on a real loopback port."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TIMEOUT_S, encode_audio, music

GENRECAST = [sys.executable, "-m", "stream_server.cli"]


def write_wav(path: Path, seconds: float) -> Path:
    return encode_audio(path, music(seconds, 44100, channels=2), 44100)


@pytest.fixture
def cli_config(tmp_path: Path, tiny_checkpoint: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[server]
port = 0
log_level = "warning"

[model]
path = "{tiny_checkpoint}"

[engine]
device = "cpu"
hop_s = 0.5

[storage]
database = "{tmp_path / "cli.db"}"
""",
        encoding="utf-8",
    )
    return path


def start_server(config: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*GENRECAST, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # blocks until the server says it is ready
        match = re.search(r"ready on (http://\S+)", line)
        if match:
            return proc, match.group(1)
    raise AssertionError(f"server exited with {proc.wait()} before it was ready")


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def server(cli_config: Path) -> Iterator[str]:
    proc, url = start_server(cli_config)
    try:
        yield url
    finally:
        stop_server(proc)


def genrecast(*args: str, timeout: float = 3 * TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*GENRECAST, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def test_serve_push_watch_and_timeline_across_restart(cli_config: Path, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "some.wav", 6.0)
    proc, url = start_server(cli_config)
    try:
        # --since 0 replays from the first message, so it cannot miss the start of the push.
        watcher = subprocess.Popen(
            [*GENRECAST, "watch", "--server", url, "--since", "0", "--until-end"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        pushed = genrecast("push", str(wav), "--server", url, "--fast", "--name", "cli test")
        assert pushed.returncode == 0, pushed.stderr
        match = re.search(
            r"stream (\w+) ended: 6\.0 s of audio sent, (\d+) windows computed, 0 skipped",
            pushed.stdout,
        )
        assert match, pushed.stdout
        stream_id, computed = match.group(1), int(match.group(2))
        assert computed == 9  # (6 s - 2 s window) / 0.5 s hop + 1
        out, err = watcher.communicate(timeout=TIMEOUT_S)
        assert watcher.returncode == 0, err
        lines = [line for line in out.splitlines() if stream_id in line]
        update_lines = [line for line in lines if " t=" in line and "genre change" not in line]
        assert len(update_lines) == computed
        seqs = [int(re.match(r"\[\s*(\d+)\]", line).group(1)) for line in lines]  # type: ignore[union-attr]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert lines[-1].endswith("stream.ended")
        timeline = httpx.get(f"{url}/streams/{stream_id}/timeline", timeout=TIMEOUT_S).json()
        assert timeline["segments"]
    finally:
        stop_server(proc)

    proc, url = start_server(cli_config)  # same database: the timeline survives
    try:
        again = httpx.get(f"{url}/streams/{stream_id}/timeline", timeout=TIMEOUT_S).json()
        assert again == timeline
    finally:
        stop_server(proc)


def test_classify_prints_genres_and_timeline(cli_config: Path, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "clip.wav", 5.0)
    result = genrecast("classify", str(wav), "--config", str(cli_config), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["probabilities"]) == {"blues", "classical", "jazz", "rock"}
    assert sum(report["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert report["genre"] == max(report["probabilities"], key=report["probabilities"].get)
    assert len(report["windows"]) == 7  # (5 s - 2 s) / 0.5 s + 1
    assert report["duration_s"] == pytest.approx(5.0, abs=0.01)

    text = genrecast("classify", str(wav), "--config", str(cli_config))
    assert text.returncode == 0, text.stderr
    assert "top genres:" in text.stdout and report["genre"] in text.stdout
    assert "timeline:" in text.stdout


def test_errors_are_reported_without_tracebacks(cli_config: Path, tmp_path: Path) -> None:
    missing = genrecast("classify", str(tmp_path / "nope.wav"), "--config", str(cli_config))
    assert missing.returncode == 2
    assert "nope.wav" in missing.stderr and "Traceback" not in missing.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text("[engine]\nmax_batch = 0\n", encoding="utf-8")
    config_error = genrecast("serve", "--config", str(bad))
    assert config_error.returncode == 2
    assert "engine.max_batch" in config_error.stderr and "Traceback" not in config_error.stderr

    # Nothing listens on a port we just bound and closed.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    wav = write_wav(tmp_path / "x.wav", 1.0)
    unreachable = genrecast("push", str(wav), "--server", f"http://127.0.0.1:{port}", "--quiet")
    assert unreachable.returncode == 2
    assert "cannot reach the server" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
