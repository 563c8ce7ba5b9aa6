"""The ``genrecast`` commands as a user runs them: separate processes on a real loopback port."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stream_server.core.summary import summarize
from stream_server.core.timeline import segments_from_json
from tests.helpers.audio import clips, encode_audio, music
from tests.helpers.cli import (
    GENRECAST,
    free_port,
    genrecast,
    start_server,
    stop_server,
    write_config,
)
from tests.helpers.constants import LABELS, TIMEOUT_S


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
            r"stream (\w+) ended: 6\.0 s of audio sent, (\d+) windows \(0 skipped\)",
            pushed.stdout,
        )
        assert match, pushed.stdout
        stream_id, computed = match.group(1), int(match.group(2))
        assert computed == 9  # (6 s - 2 s window) / 0.5 s hop + 1
        out, err = watcher.communicate(timeout=TIMEOUT_S)
        assert watcher.returncode == 0, err
        lines = [line for line in out.splitlines() if stream_id in line]
        update_lines = [line for line in lines if " t=" in line and "  change: " not in line]
        update_lines = [line for line in update_lines if "  ended: " not in line]
        assert len(update_lines) == computed
        seqs = [int(re.match(r"\[\s*(\d+)\]", line).group(1)) for line in lines]  # type: ignore[union-attr]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert "started: 'cli test' (ws)" in lines[0]
        assert "ended: stopped by client; 9 windows (0 skipped)" in lines[-1]
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
        "summary",
    }  # fmt: skip
    assert report["sha256"] == hashlib.sha256(wav.read_bytes()).hexdigest()
    assert report["processing_ms"] > 0 and report["cached"] is False
    assert set(report["probabilities"]) == {"blues", "classical", "jazz", "rock"}
    assert sum(report["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert report["genre"] == max(report["probabilities"], key=report["probabilities"].get)
    assert len(report["windows"]) == 7  # (5 s - 2 s) / 0.5 s + 1
    assert report["duration_s"] == pytest.approx(5.0, abs=0.01)

    # the summary is the timeline's, by the one definition of core/summary.py
    assert report["summary"] == summarize(segments_from_json(report["segments"])).to_dict()
    assert report["summary"]["windows"] == len(report["windows"])

    text = genrecast("classify", str(wav), "--config", str(cli_config))
    assert text.returncode == 0, text.stderr
    assert "top genres:" in text.stdout and report["genre"] in text.stdout
    assert "timeline:" in text.stdout
    # the two answers, each labelled, before the details
    whole = f"whole file (mean of 7 windows): {report['genre']} "
    assert text.stdout.splitlines()[2].startswith(whole), text.stdout
    timeline = f"timeline (smoothed): {report['summary']['genre']} "
    assert text.stdout.splitlines()[3].startswith(timeline), text.stdout


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
    assert unreachable.stderr == (
        f"genrecast: cannot reach the server at http://127.0.0.1:{port}: connection refused\n"
    )
    realtime = genrecast("push", str(wav), "--server", f"http://127.0.0.1:{port}", "--realtime")
    assert realtime.returncode == 2
    assert realtime.stderr == unreachable.stderr  # the WebSocket's error, in the same words


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
        assert re.search(r"[1-9]\d* windows \(0 skipped\)", pushed.stdout), pushed.stdout
    finally:
        stop_server(proc)

    for command, extra in (("dashboard", "dashboard"), ("evaluate --data x", "train")):
        refused = genrecast(*command.split(), without=lean)
        assert refused.returncode == 2
        assert f"needs the {extra!r} extra" in refused.stderr
        assert f"--extra {extra}" in refused.stderr and "Traceback" not in refused.stderr


# -- what push, watch and serve say --------------------------------------------------------------


def test_push_of_a_real_clip_ends_with_what_the_server_heard(server: str) -> None:
    (clip,) = clips("rock", 1)
    pushed = genrecast("push", str(clip), "--server", server)
    assert pushed.returncode == 0, pushed.stderr
    # stderr is a pipe here, not a terminal: no progress line redrawn with \r
    assert "\r" not in pushed.stderr and "sent" not in pushed.stderr, pushed.stderr
    lines = pushed.stdout.splitlines()
    started = re.fullmatch(
        r"stream (\w+) started; watch it with: genrecast watch --stream \1", lines[0]
    )
    assert started, pushed.stdout
    ended = re.fullmatch(
        r"stream (\w+) ended: (\d+\.\d) s of audio sent, (\d+) windows \((\d+) skipped\)", lines[1]
    )
    assert ended, pushed.stdout
    stream_id, windows = ended.group(1), int(ended.group(3))
    assert stream_id == started.group(1)
    assert float(ended.group(2)) == pytest.approx(30.0, abs=0.1) and windows > 50

    # the summary is the one of the stored timeline, as every other client reads it
    timeline = httpx.get(f"{server}/streams/{stream_id}/timeline", timeout=TIMEOUT_S).json()
    summary = summarize(segments_from_json(timeline["segments"]))
    assert summary.genre in LABELS and summary.windows == windows
    main = re.fullmatch(r"main genre: (\w+) (\d+) %(?: \((.*)\))?", lines[2])
    assert main, pushed.stdout
    assert main.group(1) == summary.genre
    assert int(main.group(2)) == round(100 * summary.genres[0].share)
    others = [part.rsplit(" ", 2)[0] for part in (main.group(3) or "").split(", ") if part]
    assert others == [g.genre for g in summary.genres[1:]]
    passages = lines[3].split(" · ")
    assert len(passages) == min(len(summary.passages), 12) + (len(summary.passages) > 12)
    for text, passage in zip(passages, summary.passages, strict=False):
        assert text == f"{passage.start_s:.1f}-{passage.end_s:.1f} s {passage.genre}"
    assert len(lines) == 4


def test_push_of_a_url_the_server_may_not_pull_says_why(server: str) -> None:
    start = time.monotonic()
    refused = genrecast("push", "http://127.0.0.1:1/none", "--server", server)
    elapsed = time.monotonic() - start
    assert refused.returncode == 1, refused.stderr
    assert refused.stdout == ""  # no stream was made
    assert refused.stderr.startswith(
        "genrecast: the server refused to pull 'http://127.0.0.1:1/none'"
    )
    assert "source not allowed" in refused.stderr
    assert "allow_private_addresses" in refused.stderr  # a loopback address: the hint
    assert elapsed < 10.0  # the bound; it is refused at once


def test_push_of_a_url_that_fails_waits_for_the_servers_reason(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    config = write_config(
        tmp_path / "config.toml",
        tiny_checkpoint,
        extra="[sources]\nallow_private_addresses = true\n",
    )
    proc, url = start_server(config)
    try:
        start = time.monotonic()
        failed = genrecast("push", "http://127.0.0.1:1/none", "--server", url)
        elapsed = time.monotonic() - start
        assert failed.returncode == 1, failed.stderr
        stream_id = failed.stdout.strip()  # the id comes first, for scripts
        assert re.fullmatch(r"\w+", stream_id), failed.stdout
        said = failed.stderr.splitlines()
        assert said[0] == "waiting for http://127.0.0.1:1/none to go live (at most 30 s) …"
        assert said[-1].startswith("genrecast: the server could not pull http://127.0.0.1:1/none: ")
        assert "connection refused" in said[-1], failed.stderr
        assert "Errno" not in failed.stderr and "Traceback" not in failed.stderr
        assert elapsed < 10.0  # the bound

        # watch shows the failure's reason where the stream ends
        watched = genrecast(
            "watch", "--server", url, "--stream", stream_id, "--since", "0", "--until-end"
        )
        assert watched.returncode == 0, watched.stderr
        last = watched.stdout.splitlines()[-1]
        assert stream_id in last and "ended: " in last and "connection refused" in last

        # --detach: the id, a hint, and back at once
        detached = genrecast("push", "http://127.0.0.1:1/none", "--server", url, "--detach")
        assert detached.returncode == 0, detached.stderr
        assert re.fullmatch(r"\w+\n", detached.stdout)
        assert "watch it with: genrecast watch --stream" in detached.stderr
    finally:
        stop_server(proc)


def test_watch_says_what_it_watches_before_any_message(server: str, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "some.wav", 3.0)
    assert genrecast("push", str(wav), "--server", server, "--quiet").returncode == 0
    watched = subprocess.run(
        [*GENRECAST, "watch", "--server", server, "--since", "0", "--count", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in the order written
        text=True,
        timeout=3 * TIMEOUT_S,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    assert watched.returncode == 0, watched.stdout
    lines = watched.stdout.splitlines()
    assert lines[0] == (
        f"genrecast watch: every stream on {server}, replaying every message after seq 0"
    )
    assert lines[1].split() == [
        "seq", "time", "stream", "stream", "time", "genre", "/", "event", "confidence",
        "latency", "top", "genres", "of", "the", "window",
    ]  # fmt: skip
    assert lines[2] == f"waiting for updates from {server} …"
    assert re.match(r"\[\s*1\]  \d\d:\d\d:\d\d  \w+ +started: 'some.wav' \(ws\)", lines[3])
    assert "change: start -> " in watched.stdout  # a first genre, not "None -> rock"

    as_json = genrecast("watch", "--server", server, "--since", "0", "--count", "1", "--json")
    assert as_json.returncode == 0, as_json.stderr
    for line in as_json.stdout.splitlines():  # stdout is JSON alone; the banner goes to stderr
        json.loads(line)
    assert as_json.stderr.startswith("genrecast watch: every stream on ")


def test_watch_gives_up_on_a_server_that_never_answers() -> None:
    port = free_port()  # nothing listens there
    start = time.monotonic()
    watched = genrecast("watch", "--server", f"http://127.0.0.1:{port}")
    elapsed = time.monotonic() - start
    assert watched.returncode == 2
    assert watched.stdout.startswith(f"genrecast watch: every stream on http://127.0.0.1:{port}")
    assert watched.stderr.splitlines()[-1] == (
        f"genrecast: no genrecast server answers at http://127.0.0.1:{port} (connection refused); "
        "is it running? start one with `genrecast serve`"
    )
    assert "Errno" not in watched.stderr and "Traceback" not in watched.stderr
    assert 9.0 <= elapsed <= 10.0 + TIMEOUT_S  # about --wait's 10 s of attempts


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_busy_port_says_so_before_the_model_loads(tmp_path: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # the model genrecast ships: seconds to load, so a quick answer did not wait for it
        config = write_config(tmp_path / "config.toml", "", port=port, database=tmp_path / "db")
        start = time.monotonic()
        served = genrecast("serve", "--config", str(config), "--workers", workers)
        elapsed = time.monotonic() - start
    assert served.returncode == 2, served.stderr
    assert served.stderr == (
        f"genrecast: port {port} on 127.0.0.1 is already in use (another genrecast serve?); "
        "choose another with --port\n"
    )
    assert elapsed < 3.0 * TIMEOUT_S / 20  # the bound: the model takes longer to load
