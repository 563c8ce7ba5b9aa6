"""The ``genrecast`` commands as a user runs them: separate processes on a real loopback port."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.audio import encode_audio, music
from tests.helpers.cli import (
    GENRECAST,
    free_port,
    genrecast,
    start_server,
    stop_server,
    write_config,
)
from tests.helpers.constants import TIMEOUT_S


def write_wav(path: Path, seconds: float) -> Path:
    return encode_audio(path, music(seconds, 44100, channels=2), 44100)


@pytest.fixture
def cli_config(tmp_path: Path, tiny_checkpoint: Path) -> Path:
    return write_config(tmp_path / "config.toml", tiny_checkpoint, database=tmp_path / "cli.db")


@pytest.fixture
def server(cli_config: Path) -> Iterator[str]:
    proc, url = start_server(cli_config)
    try:
        yield url
    finally:
        stop_server(proc)


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
    # the shape of the server's POST /classify answer (see tests/test_upload.py)
    assert set(report) == {
        "source", "sha256", "model", "device", "duration_s", "processing_ms", "cached",
        "genre", "confidence", "probabilities", "padded", "decoding", "windows", "segments",
    }  # fmt: skip
    assert report["sha256"] == hashlib.sha256(wav.read_bytes()).hexdigest()
    assert report["processing_ms"] > 0 and report["cached"] is False
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

    port = free_port()  # nothing listens there
    wav = write_wav(tmp_path / "x.wav", 1.0)
    unreachable = genrecast("push", str(wav), "--server", f"http://127.0.0.1:{port}", "--quiet")
    assert unreachable.returncode == 2
    assert "cannot reach the server" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_the_parser_builds_without_torch_or_any_server_library() -> None:
    heavy = ["torch", "torchaudio", "transformers", "av", "aiortc", "streamlit", "numpy"]
    heavy += ["starlette", "uvicorn", "websockets", "httpx", "matplotlib", "asyncio"]
    probe = (
        "import sys\n"
        "from stream_server.tools.cli import build_parser\n"
        "parser = build_parser()\n"
        "assert parser.parse_args(['doctor', '--json']).json\n"
        f"print(','.join(sorted(set({heavy!r}) & set(sys.modules))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""  # none of them was imported

    helped = genrecast("--help")
    assert helped.returncode == 0, helped.stderr
    for command in ("serve", "push", "watch", "classify", "train", "evaluate", "doctor"):
        assert command in helped.stdout
    train_help = genrecast("train", "--help")
    assert "levit-small" in train_help.stdout and "default 100" in train_help.stdout


def test_version_is_the_installed_package_version() -> None:
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    expected = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    result = genrecast("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"genrecast {expected}"


def test_a_lean_install_serves_and_names_the_missing_extras(
    cli_config: Path, tmp_path: Path
) -> None:
    lean = "aiortc,streamlit,matplotlib"
    proc, url = start_server(cli_config, without=lean)
    try:
        assert httpx.get(f"{url}/ready", timeout=TIMEOUT_S).status_code == 200
        offer = httpx.post(f"{url}/webrtc/offer", json={"sdp": "v=0", "type": "offer"})
        assert offer.status_code == 501
        assert "'webrtc' extra" in offer.json()["error"]
        assert "--extra webrtc" in offer.json()["error"]
        assert httpx.get(f"{url}/mic", timeout=TIMEOUT_S).status_code == 200  # shows the error
        wav = write_wav(tmp_path / "lean.wav", 3.0)
        pushed = genrecast("push", str(wav), "--server", url, "--quiet", without=lean)
        assert pushed.returncode == 0, pushed.stderr
        assert re.search(r"[1-9]\d* windows computed", pushed.stdout), pushed.stdout
    finally:
        stop_server(proc)

    for command, extra in (("dashboard", "dashboard"), ("evaluate --data x", "train")):
        refused = genrecast(*command.split(), without=lean)
        assert refused.returncode == 2
        assert f"needs the {extra!r} extra" in refused.stderr
        assert f"--extra {extra}" in refused.stderr and "Traceback" not in refused.stderr
