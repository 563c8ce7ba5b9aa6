"""Benchmark of ``POST /classify``: the first upload of a file against the cached repeats.

Usage::

    python -m stream_server.tools.bench_upload FILE [--repeat N] [--model M] [--device D] [--config
    F]
                                              [--token T]

Starts an in-process server on a free loopback port, uploads FILE ``1 + N`` times with a real HTTP
client (a new connection each time, as the command line does) and prints one JSON object: per
upload the client's wall time and the server's ``processing_ms`` (milliseconds), whether it was
cached, and the speed-up of the median cached upload over the first. When the config or the
environment sets tokens, the uploads send ``--token`` (default: ``$GENRECAST_TOKEN``), which needs
the ``ingest`` scope.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from stream_server.config import load_config
from stream_server.serve.auth import INGEST
from stream_server.serve.server import running_server
from stream_server.tools.client import auth_headers, refusal


async def bench(
    path: Path,
    config_path: Path | None,
    model: str | None,
    device: str | None,
    repeat: int,
    token: str | None = None,
) -> dict[str, Any]:
    """Upload ``path`` ``1 + repeat`` times to a fresh in-process server; the timings.
    ``token``: sent with each upload (``None``: ``$GENRECAST_TOKEN``, if set)."""
    with tempfile.TemporaryDirectory(prefix="genrecast-bench-") as tmp:
        database = Path(tmp) / "bench.db"
        return await _bench(path, config_path, model, device, repeat, database, token)


async def _bench(
    path: Path,
    config_path: Path | None,
    model: str | None,
    device: str | None,
    repeat: int,
    database: Path,
    token: str | None,
) -> dict[str, Any]:
    config = load_config(config_path)
    config = config.replace(
        server=dataclasses.replace(config.server, port=0, log_level="warning"),
        model=dataclasses.replace(config.model, path=model if model is not None else ""),
        engine=dataclasses.replace(config.engine, device=device or config.engine.device),
        storage=dataclasses.replace(config.storage, database=str(database)),
    )
    data = await asyncio.to_thread(path.read_bytes)
    headers = auth_headers(token)
    runs: list[dict[str, Any]] = []
    async with (
        running_server(config) as server,
        httpx.AsyncClient(base_url=server.http_url, timeout=600.0, trust_env=False) as http,
    ):
        await _check_token(http, headers)
        for _ in range(1 + repeat):
            start = time.perf_counter()
            response = await http.post(
                "/classify",
                files={"file": (path.name, data, "application/octet-stream")},
                # a connection per upload, as the CLI makes
                headers={"Connection": "close", **headers},
            )
            wall_ms = (time.perf_counter() - start) * 1000.0
            body = response.json()
            if response.status_code != 200:
                reason = refusal(response.status_code, body, INGEST, bool(headers)) or body
                raise SystemExit(f"upload failed ({response.status_code}): {reason}")
            runs.append(
                {
                    "wall_ms": round(wall_ms, 2),
                    "processing_ms": body["processing_ms"],
                    "cached": body["cached"],
                }
            )
    first, cached = runs[0], runs[1:]
    out: dict[str, Any] = {
        "file": str(path),
        "bytes": len(data),
        "duration_s": body["duration_s"],
        "windows": len(body["windows"]),
        "model": body["model"],
        "device": body["device"],
        "first": first,
        "cached": cached,
    }
    if cached:
        median_wall = statistics.median(r["wall_ms"] for r in cached)
        median_server = statistics.median(r["processing_ms"] for r in cached)
        out["median_cached_wall_ms"] = round(median_wall, 2)
        out["median_cached_processing_ms"] = round(median_server, 3)
        out["speedup_wall"] = round(first["wall_ms"] / median_wall, 1)
    return out


async def _check_token(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """Stop before anything is timed when the server wants a token with the ``ingest`` scope
    and ``headers`` carry none: refused mid-body, an upload that closes its connection ends in
    a reset rather than the server's answer. ``POST /auth/ticket`` names a token's scopes
    (404: the server has no tokens)."""
    reply = await http.post("/auth/ticket", headers=headers)
    if reply.status_code == 404:
        return
    reason = refusal(reply.status_code, reply.content, INGEST, bool(headers))
    if reason is None and INGEST not in reply.json().get("scopes", []):
        reason = refusal(403, {"code": "forbidden"}, INGEST, True)
    if reason is not None:
        raise SystemExit(f"upload refused: {reason}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_server.tools.bench_upload")
    parser.add_argument("file", type=Path, help="audio file to upload")
    parser.add_argument("--repeat", type=int, default=5, help="cached uploads after the first")
    parser.add_argument("--config", type=Path, help="config.toml (default: the project's)")
    parser.add_argument("--model", help="checkpoint directory or hub id (default: built-in)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--token", help="token sent with each upload (default: $GENRECAST_TOKEN, if set)"
    )
    args = parser.parse_args(argv)
    result = asyncio.run(
        bench(args.file, args.config, args.model, args.device, args.repeat, args.token)
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
