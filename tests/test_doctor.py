"""``genrecast doctor``: every check passes on a working installation, and each broken part is
named with its fix: a port held by another program, a torchaudio that does not load with torch,
a missing model, an unwritable database, a bad config key, packages that drifted from the lock.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from stream_server.config import Config, ModelConfig, ServerConfig, StorageConfig
from stream_server.inference.banded import amx_available
from stream_server.serve.store import TimelineStore
from stream_server.tools.doctor import (
    LOCK_FILE,
    Check,
    check_database,
    check_model,
    check_port,
    compare_with_lock,
)
from tests.helpers.cli import free_port, genrecast, start_server, stop_server, write_config

NEEDED = ("python", "config", "lock", "torch", "torchaudio", "pyav", "codecs", "cuda", "model")
NEEDED += ("port", "database")
EXTRAS = ("extra webrtc", "extra dashboard", "extra train", "extra cluster")


def doctor_json(*args: str, **kwargs: Any) -> tuple[int, dict[str, dict[str, str]]]:
    result = genrecast("doctor", *args, "--json", **kwargs)
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    checks = {check["name"]: check for check in report["checks"]}
    assert report["ok"] == (result.returncode == 0)
    return result.returncode, checks


@pytest.fixture
def config(tmp_path: Path, tiny_checkpoint: Path) -> Path:
    return write_config(
        tmp_path / "config.toml", tiny_checkpoint, port=free_port(), database=tmp_path / "t.db"
    )


def test_every_check_passes_on_a_working_installation(config: Path) -> None:
    code, checks = doctor_json("--config", str(config))
    assert code == 0
    assert [name for name in checks] == [*NEEDED[:6], "codecs", "cuda", *NEEDED[8:], *EXTRAS]
    for name in (*NEEDED, *EXTRAS):
        assert checks[name]["status"] == "ok", checks[name]
    assert "log-mel images and filter banks computed" in checks["torchaudio"]["detail"]
    assert "mp3, aac, opus, vorbis, flac" in checks["codecs"]["detail"]
    assert "hls" in checks["codecs"]["detail"] and "https" in checks["codecs"]["detail"]
    assert "one window in" in checks["model"]["detail"]
    assert "does not exist yet" in checks["database"]["detail"]
    assert not (config.parent / "t.db").exists()  # the check created nothing

    text = genrecast("doctor", "--config", str(config))
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert all(line.startswith("OK ") for line in lines[:-1]), text.stdout
    assert lines[-1] == "ready to serve"


def test_a_port_another_program_holds_fails_with_a_fix(config: Path, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, checks = doctor_json("--config", str(config), "--port", str(port))
    assert code == 1
    assert checks["port"]["status"] == "fail"
    assert checks["port"]["detail"] == f"127.0.0.1:{port} is in use by another program"
    assert "--port N" in checks["port"]["fix"]
    assert checks["model"]["status"] == "ok"  # the other checks still ran


def test_a_port_taken_by_a_running_genrecast_is_only_a_warning(config: Path) -> None:
    proc, url = start_server(config)
    try:
        code, checks = doctor_json("--config", str(config))
    finally:
        stop_server(proc)
    assert code == 0
    assert checks["port"]["status"] == "warn"
    assert "genrecast server that is running now" in checks["port"]["detail"]
    assert url.endswith(checks["port"]["detail"].split()[0])


def test_a_torchaudio_that_does_not_load_with_torch_is_named(config: Path, tmp_path: Path) -> None:
    # What torchaudio 2.11.1 does beside torch 2.11.0: its library fails to load on import.
    fake = tmp_path / "site" / "torchaudio"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "lib = '/venv/lib/python3.11/site-packages/torchaudio/lib/libtorchaudio.so'\n"
        "raise OSError(f'Could not load this library: {lib}') from OSError(\n"
        "    f'{lib}: undefined symbol: torch_exception_get_what_without_backtrace')\n",
        encoding="utf-8",
    )
    code, checks = doctor_json("--config", str(config), env={"PYTHONPATH": str(fake.parent)})
    assert code == 1
    audio = checks["torchaudio"]
    assert audio["status"] == "fail"
    assert audio["detail"].startswith(f"does not load with torch {torch.__version__}: OSError")
    assert audio["detail"].endswith("undefined symbol: torch_exception_get_what_without_backtrace")
    assert "bash tools/install.sh" in audio["fix"]
    assert checks["model"]["status"] == "fail"
    assert checks["torch"]["status"] == checks["port"]["status"] == "ok"

    text = genrecast("doctor", "--config", str(config), env={"PYTHONPATH": str(fake.parent)})
    assert text.returncode == 1
    assert text.stdout.splitlines()[-1] == "2 needed part(s) broken: torchaudio, model"


def test_a_bad_config_key_fails_and_the_rest_still_runs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[engine]\nmax_batch = 0\n", encoding="utf-8")
    code, checks = doctor_json("--config", str(bad))
    assert code == 1
    assert checks["config"]["status"] == "fail"
    assert "engine.max_batch" in checks["config"]["detail"]
    assert checks["torchaudio"]["status"] == "ok"
    for name in ("cuda", "model", "port", "database"):  # nothing to check them against
        assert checks[name] == {**checks[name], "status": "skip"}


def test_asking_for_cuda_is_checked_against_the_machine(config: Path) -> None:
    code, checks = doctor_json("--config", str(config), "--device", "cuda")
    if torch.cuda.is_available():
        assert code == 0
        assert checks["cuda"]["status"] == "ok"
        assert torch.cuda.get_device_name(0) in checks["cuda"]["detail"]
        assert checks["model"]["detail"].endswith("on cuda")
    else:
        assert code == 1
        assert checks["cuda"]["status"] == "fail"
        assert "no CUDA device is available" in checks["cuda"]["detail"]
        assert "--device cpu" in checks["cuda"]["fix"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU line is for machines without CUDA")
def test_on_a_cpu_it_says_what_the_model_computes_in(config: Path, tmp_path: Path) -> None:
    _, checks = doctor_json("--config", str(config))
    want = "bfloat16 on the AMX tiles" if amx_available() else "no AMX tiles"
    assert checks["cuda"]["status"] == "ok" and want in checks["cuda"]["detail"]
    off = tmp_path / "off.toml"
    text = config.read_text(encoding="utf-8")
    off.write_text(text.replace("[engine]\n", "[engine]\nhalf_precision = false\n"), "utf-8")
    _, checks = doctor_json("--config", str(off))
    assert checks["cuda"]["detail"].endswith("in float32 (engine.half_precision is off)")


def test_missing_extras_are_warnings_with_the_install_command(config: Path) -> None:
    hidden = "aiortc,streamlit,matplotlib,nats"
    code, checks = doctor_json("--config", str(config), without=hidden)
    assert code == 0
    for name in ("webrtc", "dashboard", "train", "cluster"):
        check = checks[f"extra {name}"]
        assert check["status"] == "warn"
        assert check["detail"].startswith("not installed")
        assert f"--extra {name}" in check["fix"]


def _config(tmp_path: Path, **tables: Any) -> Config:
    return Config(
        server=tables.get("server", ServerConfig(port=0)),
        model=tables.get("model", ModelConfig(path="untrained")),
        storage=tables.get("storage", StorageConfig(database=str(tmp_path / "db.sqlite"))),
    )


def test_database_checks(tmp_path: Path) -> None:
    def check(database: Path | str) -> Check:
        return check_database(_config(tmp_path, storage=StorageConfig(database=str(database))))

    stored = tmp_path / "stored.db"
    with TimelineStore(stored):
        pass
    assert check(stored) == Check("database", "ok", f"{stored} is writable (0 streams stored)")

    assert check(":memory:").status == "ok"
    assert check(tmp_path / "new" / "deeper" / "x.db").detail.endswith("serve will create it")
    assert not (tmp_path / "new").exists()

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")
    under_a_file = check(blocker / "x.db")
    assert under_a_file.status == "fail"
    assert (
        under_a_file.detail == f"{blocker / 'x.db'} cannot be created: {blocker} is not a directory"
    )
    assert "storage.database" in under_a_file.fix

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    not_sqlite = check(garbage)
    assert not_sqlite.status == "fail" and "not a writable SQLite database" in not_sqlite.detail

    assert check(tmp_path).status == "fail"  # a directory where the file should be


def test_model_and_port_checks(tmp_path: Path, tiny_checkpoint: Path) -> None:
    ok = check_model(_config(tmp_path, model=ModelConfig(path=str(tiny_checkpoint))))
    assert ok.status == "ok" and str(tiny_checkpoint) in ok.detail
    untrained = check_model(_config(tmp_path))
    assert untrained.status == "warn" and "UNTRAINED" in untrained.detail
    missing = check_model(_config(tmp_path, model=ModelConfig(path=str(tmp_path / "nowhere"))))
    assert missing.status == "fail" and "nowhere" in missing.detail
    assert "[model] path" in missing.fix

    assert check_port(_config(tmp_path)).detail.startswith("port 0")
    port = free_port()
    assert check_port(_config(tmp_path, server=ServerConfig(port=port))).status == "ok"
    foreign = check_port(_config(tmp_path, server=ServerConfig(host="192.0.2.1", port=port)))
    assert foreign.status == "fail" and "not an address of this machine" in foreign.detail
    assert "server.host" in foreign.fix


def test_drift_from_the_lock_is_listed() -> None:
    lock = LOCK_FILE.read_text(encoding="utf-8")
    installed = {
        "torch": "2.11.0+cu130",  # a local build label is the same release
        "torchaudio": "2.11.1",  # the release that broke fresh installs
        "av": "19.0.2",  # one of the versions the lock holds (by Python version)
        "not-in-the-lock": "1.0",
    }
    present, drift = compare_with_lock(lock, installed)
    assert present == 3
    assert drift == ["torchaudio 2.11.1 (locked 2.11.0)"]
    assert compare_with_lock(lock, {"torchaudio": "2.11.0"}) == (1, [])
