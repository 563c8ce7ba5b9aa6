"""``genrecast doctor``: can this installation serve, and if not, what fixes it.

Each check returns a :class:`Check`: a status, what was found and, when the status is not ``ok``,
one line saying what to do. The statuses:

- ``ok``: works;
- ``warn``: works, with a caveat (an optional extra missing, versions that differ from the lock,
  the port taken by a genrecast server that is already running);
- ``fail``: something ``genrecast serve`` needs is broken; the command exits non-zero;
- ``skip``: nothing to check here (no lock beside an installed wheel).

:func:`run_checks` runs them in an order where later checks rely on earlier ones (the config
first, then torch and torchaudio before the model). A check that raises becomes a failed check
with the exception's text, so one broken part never hides the others.
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import re
import socket
import sqlite3
import sys
import tempfile
import time
import tomllib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

from stream_server import version
from stream_server.config import Config
from stream_server.errors import MissingExtraError
from stream_server.extras import EXTRAS

Status = Literal["ok", "warn", "fail", "skip"]

#: The project's lock, beside ``pyproject.toml`` in a source checkout.
LOCK_FILE: Final = Path(__file__).resolve().parents[2] / "uv.lock"

#: The reinstall that fixes a broken or drifted environment.
REINSTALL: Final = "reinstall from the lock: bash tools/install.sh"

#: The fix for an ``engine.device`` this machine does not have.
DEVICE_FIX: Final = 'set engine.device = "auto" (or "cpu") in config.toml, or pass --device cpu'

#: FFmpeg decoders the sources need, by what they decode; each entry lists acceptable names.
DECODERS: Final = {
    "mp3": ("mp3float", "mp3"),
    "aac": ("aac", "aac_fixed"),
    "opus": ("opus", "libopus"),
    "vorbis": ("vorbis", "libvorbis"),
    "flac": ("flac",),
}
#: FFmpeg demuxers for radio streams, playlists and uploads.
DEMUXERS: Final = ("mp3", "aac", "ogg", "flac", "wav", "hls")
#: FFmpeg network protocols: the server fetches HLS segments itself, but FFmpeg's HLS demuxer asks
#: for a segment only when its FFmpeg knows the URL's protocol.
PROTOCOLS: Final = ("http", "https")


@dataclass(frozen=True)
class Check:
    """One finding: ``name`` of the part, its ``status``, ``detail`` found, ``fix`` to apply."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a ``raise ... from ...`` chain (a loader's real reason)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _public(version: str) -> str:
    """``2.11.0+cu130`` -> ``2.11.0``: the release without the local build label."""
    return version.split("+", 1)[0]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- the checks ---------------------------------------------------------------------------------


def check_python() -> Check:
    release = ".".join(str(v) for v in sys.version_info[:3])
    where = Path(__file__).resolve().parents[2]
    return Check("python", "ok", f"{release} ({sys.executable}); genrecast {version()} at {where}")


def compare_with_lock(lock_text: str, installed: dict[str, str]) -> tuple[int, list[str]]:
    """Installed versions against a ``uv.lock``.

    Args:
        lock_text: the lock file's TOML.
        installed: installed distributions, normalised name -> version.
    Returns:
        How many locked packages are installed, and one ``"name X (locked Y)"`` per installed
        package whose release differs from every version the lock holds for it (a lock holds
        several for a package whose version depends on the platform or Python).
    """
    locked: dict[str, set[str]] = {}
    for package in tomllib.loads(lock_text).get("package", []):
        source = package.get("source", {})
        if "editable" in source or "virtual" in source:
            continue  # the project itself
        locked.setdefault(_normalise(package["name"]), set()).add(package["version"])
    drift = []
    present = 0
    for name, versions in sorted(locked.items()):
        have = installed.get(name)
        if have is None:
            continue
        present += 1
        if _public(have) not in versions:
            drift.append(f"{name} {have} (locked {', '.join(sorted(versions))})")
    return present, drift


def installed_distributions() -> dict[str, str]:
    """Normalised name -> version of every distribution this interpreter sees."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(_normalise(name), dist.version)
    return found


def check_lock(lock_file: Path = LOCK_FILE) -> Check:
    if not lock_file.is_file():
        return Check("lock", "skip", f"no {lock_file.name} beside this installation")
    present, drift = compare_with_lock(
        lock_file.read_text(encoding="utf-8"), installed_distributions()
    )
    if drift:
        shown = "; ".join(drift[:4]) + (f"; and {len(drift) - 4} more" if len(drift) > 4 else "")
        return Check("lock", "warn", f"{len(drift)} installed packages differ: {shown}", REINSTALL)
    return Check("lock", "ok", f"the {present} installed packages match {lock_file}")


def check_torch() -> Check:
    import torch

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    return Check("torch", "ok", f"{torch.__version__} ({build})")


def check_torchaudio() -> Check:
    """torchaudio imports, matches torch's release, and computes the features the models use."""
    import torch

    try:
        import torchaudio
    except Exception as exc:  # a binary that does not load raises OSError or ImportError
        return Check(
            "torchaudio",
            "fail",
            f"does not load with torch {torch.__version__}: {_first_line(_root_cause(exc))}",
            f"torchaudio must be the release built for this torch; {REINSTALL}",
        )
    from stream_server.inference.fbank import FbankPreprocessing, KaldiFbank
    from stream_server.inference.features import LogMelImage
    from stream_server.inference.preprocessing import AudioPreprocessing

    with torch.inference_mode():
        image = LogMelImage(AudioPreprocessing(window_seconds=1.0))(torch.zeros(1, 22050))
        fbank = KaldiFbank(FbankPreprocessing(max_length=100))(torch.zeros(1, 16000))
    if not (torch.isfinite(image).all() and torch.isfinite(fbank).all()):
        return Check("torchaudio", "fail", "computes non-finite features", REINSTALL)
    detail = f"{torchaudio.__version__}: log-mel images and filter banks computed"
    if _public(torchaudio.__version__) != _public(torch.__version__):
        return Check(
            "torchaudio",
            "warn",
            f"{detail}, but it is released for another torch than {torch.__version__}",
            REINSTALL,
        )
    return Check("torchaudio", "ok", detail)


def check_cuda(config: Config) -> Check:
    import torch

    from stream_server.errors import ConfigError
    from stream_server.inference.device import pick_device

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    try:
        device = pick_device(config.engine.device)
    except ConfigError as exc:
        return Check("cuda", "fail", str(exc), DEVICE_FIX)
    if available:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return Check(
            "cuda",
            "ok",
            f"{', '.join(names)} (CUDA {torch.version.cuda}); the model runs on {device}",
        )
    reason = f" ({str(caught[0].message).strip().splitlines()[0]})" if caught else ""
    if Path("/dev/nvidia0").exists():
        return Check(
            "cuda",
            "warn",
            f"an NVIDIA device is present but torch cannot use it{reason}; the CPU is used",
            "check the NVIDIA driver (nvidia-smi) against this torch's CUDA "
            f"{torch.version.cuda or '(none: a CPU build)'}",
        )
    return Check(
        "cuda",
        "ok",
        f"no CUDA device; the model runs on the CPU{reason}, {_cpu_arithmetic(config)}",
    )


def _cpu_arithmetic(config: Config) -> str:
    """What the model computes in on this CPU (see ``InferenceRunner.bfloat16``)."""
    from stream_server.inference.banded import amx_available

    if not config.engine.half_precision:
        return "in float32 (engine.half_precision is off)"
    if amx_available():
        return "its widest convolutions in bfloat16 on the AMX tiles"
    return "in float32 (no AMX tiles for bfloat16)"


def check_pyav() -> Check:
    import av

    ffmpeg = getattr(av, "ffmpeg_version_info", "unknown")
    return Check("pyav", "ok", f"{av.__version__} with FFmpeg {ffmpeg}")


def _has_protocol(name: str) -> bool:
    """Whether FFmpeg speaks ``name``: opening a refused loopback port tells it apart."""
    import av

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused at once
        port = closed.getsockname()[1]
        try:
            av.open(f"{name}://127.0.0.1:{port}/", timeout=2.0).close()
        except av.error.ProtocolNotFoundError:
            return False
        except Exception:
            return True
    return True


def check_codecs() -> Check:
    import av

    missing = []
    for what, names in DECODERS.items():
        if not any(_has_decoder(n) for n in names):
            missing.append(f"{what} decoder")
    for name in DEMUXERS:
        try:
            if not av.ContainerFormat(name).is_input:
                missing.append(f"{name} demuxer")
        except ValueError:
            missing.append(f"{name} demuxer")
    missing += [f"{p} protocol" for p in PROTOCOLS if not _has_protocol(p)]
    found = (
        f"decoders {', '.join(DECODERS)}; demuxers {', '.join(DEMUXERS)}; "
        f"protocols {', '.join(PROTOCOLS)}"
    )
    if missing:
        return Check(
            "codecs",
            "fail",
            f"FFmpeg lacks: {', '.join(missing)}",
            f"use the PyAV wheel from the lock, whose FFmpeg has them all; {REINSTALL}",
        )
    return Check("codecs", "ok", found)


def _has_decoder(name: str) -> bool:
    import av

    try:
        av.Codec(name, "r")
    except Exception:
        return False
    return True


def check_model(config: Config) -> Check:
    """The configured model loads and scores one window of silence on the configured device."""
    import torch

    from stream_server.errors import GenrecastError
    from stream_server.inference.device import pick_device
    from stream_server.inference.loading import load_configured_model

    fix = (
        "set [model] path (or [gate] speech_model) in config.toml to a checkpoint directory, "
        'or "" for the shipped one'
    )
    start = time.perf_counter()
    try:
        model = load_configured_model(config)
    except GenrecastError as exc:
        return Check("model", "fail", str(exc), fix)
    loaded_s = time.perf_counter() - start
    try:
        device = pick_device(config.engine.device)
    except GenrecastError as exc:
        return Check("model", "fail", f"not run: {exc}", DEVICE_FIX)
    classifier = model.classifier.to(device)
    window = torch.zeros(1, model.preprocessing.window_samples, device=device)
    start = time.perf_counter()
    with torch.inference_mode():
        probs = classifier(window)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    run_ms = (time.perf_counter() - start) * 1000
    if tuple(probs.shape) != (1, len(model.labels)) or not torch.isfinite(probs).all():
        return Check(
            "model", "fail", f"{model.source} answers {tuple(probs.shape)} for one window", fix
        )
    kind = type(model.classifier.model).__name__
    detail = (
        f"{model.source} ({kind}, {len(model.labels)} labels"
        f"{', speech detector' if model.speech_detector is not None else ''}): "
        f"loaded in {loaded_s:.1f} s, "
        f"one window in {run_ms:.0f} ms on {device}"
    )
    if not model.trained:
        return Check("model", "warn", f"{detail}; UNTRAINED: its genres mean nothing", fix)
    return Check("model", "ok", detail)


def _running_genrecast(host: str, port: int) -> bool:
    """Whether a genrecast server answers ``GET /ready`` at ``host:port``."""
    import httpx

    netloc = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        netloc = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    try:
        body = httpx.get(f"http://{netloc}:{port}/ready", timeout=2.0, trust_env=False).json()
    except Exception:
        return False
    return isinstance(body, dict) and "ready" in body


def check_port(config: Config) -> Check:
    from stream_server.serve.listen import bind

    host, port = config.server.host, config.server.port
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if port == 0:
        return Check("port", "ok", f"port 0: serve picks a free port on {host}")
    try:
        bind(host, port).close()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            if _running_genrecast(host, port):
                return Check(
                    "port",
                    "warn",
                    f"{where} is taken by a genrecast server that is running now",
                    "that server is up; a second one needs another port: --port N",
                )
            return Check(
                "port",
                "fail",
                f"{where} is in use by another program",
                "stop that program, or serve on another port: --port N (or server.port)",
            )
        if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
            return Check(
                "port",
                "fail",
                f"{host} is not an address of this machine ({exc.strerror})",
                'set server.host to "127.0.0.1", or to an address of this machine',
            )
        if exc.errno == errno.EACCES:
            return Check(
                "port",
                "fail",
                f"{where}: no permission to listen ({exc.strerror})",
                "use a port of 1024 or above: --port N (or server.port)",
            )
        return Check("port", "fail", f"{where}: {exc}", "pick another server.host or server.port")
    return Check("port", "ok", f"{where} is free")


def check_database(config: Config) -> Check:
    from stream_server.serve.store import SCHEMA_VERSION

    spec = config.storage.database
    if spec == ":memory:":
        return Check("database", "ok", "in memory: timelines do not outlive the server")
    path = Path(spec).absolute()  # as serve opens it: relative to the working directory
    fix = "point storage.database in config.toml at a writable file"
    if path.exists():
        return _check_existing_database(path, SCHEMA_VERSION, fix)
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return Check(
            "database", "fail", f"{path} cannot be created: {parent} is not a directory", fix
        )
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        return Check(
            "database", "fail", f"{path} cannot be created: {parent} is not writable ({exc})", fix
        )
    return Check("database", "ok", f"{path} does not exist yet; serve will create it")


def _check_existing_database(path: Path, schema_version: int, fix: str) -> Check:
    if not path.is_file():
        return Check("database", "fail", f"{path} is not a file", fix)
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=2.0)
    except sqlite3.Error as exc:
        return Check("database", "fail", f"{path} does not open for writing: {exc}", fix)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        conn.execute("BEGIN IMMEDIATE")  # takes the write lock: proves the file is writable
        conn.execute("ROLLBACK")
        streams = 0
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'streams'").fetchone():
            (streams,) = conn.execute("SELECT COUNT(*) FROM streams").fetchone()
    except sqlite3.Error as exc:
        return Check("database", "fail", f"{path} is not a writable SQLite database: {exc}", fix)
    finally:
        conn.close()
    if version > schema_version:
        return Check(
            "database",
            "fail",
            f"{path} has schema version {version}, newer than this genrecast's {schema_version}",
            "upgrade genrecast, or point storage.database at another file",
        )
    return Check("database", "ok", f"{path} is writable ({streams} streams stored)")


def check_extra(name: str) -> Check:
    extra = EXTRAS[name]
    version = extra.version()
    if version is None or not extra.installed():
        return Check(
            f"extra {name}", "warn", f"not installed: {extra.enables} is off", extra.install_hint
        )
    if name == "webrtc":  # the server imports it at start-up: it must load
        try:
            import aiortc  # noqa: F401
        except Exception as exc:
            return Check(
                f"extra {name}",
                "fail",
                f"{extra.distribution} {version} does not load: {_first_line(exc)}",
                REINSTALL,
            )
    if name == "cluster":  # the client alone is not enough: the servers are a binary
        from stream_server.cluster.nats_server import find_nats_server

        try:
            binary = find_nats_server()
        except MissingExtraError:
            detail = (
                f"{extra.distribution} {version}, but no nats-server binary: {extra.enables} is off"
            )
            return Check(f"extra {name}", "warn", detail, extra.install_hint)
        detail = f"{extra.distribution} {version}, {binary}: {extra.enables}"
        return Check(f"extra {name}", "ok", detail)
    return Check(f"extra {name}", "ok", f"{extra.distribution} {version}: {extra.enables}")


# --- running them -------------------------------------------------------------------------------


def _run(name: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except Exception as exc:
        return Check(name, "fail", _first_line(exc), REINSTALL)


def run_checks(config: Config | None, source: str) -> Iterator[Check]:
    """Every check, in order.

    ``source`` says where the config came from; ``config`` is ``None`` when it did not load, and
    ``source`` is then the error.
    """
    yield _run("python", check_python)
    if config is None:
        yield Check("config", "fail", source, "correct the key it names")
    else:
        yield Check("config", "ok", source)
    yield _run("lock", check_lock)
    torch = _run("torch", check_torch)
    yield torch
    audio = _run("torchaudio", check_torchaudio) if torch.status == "ok" else None
    if audio is not None:
        yield audio
    yield _run("pyav", check_pyav)
    yield _run("codecs", check_codecs)
    if config is None:
        for name in ("cuda", "model", "port", "database"):
            yield Check(name, "skip", "not checked: the config did not load")
    else:
        if torch.status == "ok":
            yield _run("cuda", lambda: check_cuda(config))
        if audio is not None and audio.status != "fail":
            yield _run("model", lambda: check_model(config))
        else:
            yield Check("model", "fail", "not loaded: torch or torchaudio does not load", REINSTALL)
        yield _run("port", lambda: check_port(config))
        yield _run("database", lambda: check_database(config))
    for name in EXTRAS:
        yield _run(f"extra {name}", lambda name=name: check_extra(name))  # type: ignore[misc]


def format_check(check: Check) -> str:
    line = f"{check.status.upper():<5} {check.name:<16} {check.detail}"
    return f"{line}\n{'':22}fix: {check.fix}" if check.fix else line


def summary(checks: list[Check]) -> str:
    failed = [c.name for c in checks if c.status == "fail"]
    warned = [c.name for c in checks if c.status == "warn"]
    if failed:
        return f"{len(failed)} needed part(s) broken: {', '.join(failed)}"
    tail = f" ({len(warned)} warning(s): {', '.join(warned)})" if warned else ""
    return f"ready to serve{tail}"


def to_json(checks: list[Check]) -> dict[str, Any]:
    return {
        "ok": not any(c.status == "fail" for c in checks),
        "checks": [asdict(c) for c in checks],
    }


def doctor(config: Config | None, source: str, *, as_json: bool = False) -> int:
    """Print each check as it finishes (or one JSON object); 1 if a needed part is broken."""
    checks: list[Check] = []
    with warnings.catch_warnings():  # library warnings would mix into the report
        warnings.simplefilter("ignore")
        for check in run_checks(config, source):
            checks.append(check)
            if not as_json:
                print(format_check(check), flush=True)
    if as_json:
        print(json.dumps(to_json(checks), indent=2))
    else:
        print(summary(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0
