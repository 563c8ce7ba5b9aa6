"""The ``genrecast`` command line: serve, push, watch, classify."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from stream_server import version
from stream_server.config import Config, load_config
from stream_server.errors import AccessRefused, GenrecastError
from stream_server.extras import require as require_extra
from stream_server.serve.auth import TOKEN_ENV
from stream_server.training.recipes import ARCHITECTURES, TrainOptions, with_overrides

if TYPE_CHECKING:
    from stream_server.inference.model import LoadedModel

DEFAULT_SERVER = "http://127.0.0.1:8000"
TOKEN_HELP = (
    f"bearer token for a server that requires one (default: ${TOKEN_ENV}; the variable keeps it "
    "out of the process list)"
)


def load_config_of(args: argparse.Namespace) -> Config:
    """The config of ``args.config`` with the command's ``--host``/``--port``/``--model``/
    ``--device`` applied (those the command has)."""
    return load_config(args.config).overridden(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        model=getattr(args, "model", None),
        device=getattr(args, "device", None),
        insecure=getattr(args, "insecure", None) or None,
        workers=getattr(args, "server_workers", None),
        cluster=getattr(args, "cluster", None),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from stream_server.serve.listen import listen_on
    from stream_server.serve.server import checked_tokens

    config = load_config_of(args)
    logging.basicConfig(level=config.server.log_level.upper(), format="%(levelname)s %(message)s")
    checked_tokens(config)  # refuse an unguarded non-loopback address before anything loads
    host, port = config.server.host, config.server.port
    # The port first: a busy one is said at once, not after the model's load; the server (one
    # process, or the ingest workers of --workers N) then serves on the socket bound here.
    sock = listen_on(host, port)
    try:
        model = _load_for_serving(config)
        if config.server.workers > 1:
            from stream_server.serve.workers import serve_workers

            serve_workers(config, model, sock)
        else:
            from stream_server.serve.server import serve

            serve(config, model=model, sock=sock)
    finally:
        sock.close()  # closed already by the server or above: a no-op then
    return 0


def _load_for_serving(config: Config) -> LoadedModel:
    """The configured model, once the cluster's password (if any) is known to be there."""
    from stream_server.inference.heap import cap_kernel_cache
    from stream_server.inference.loading import load_configured_model

    cap_kernel_cache(config.engine.kernel_cache)  # before the model's first kernel
    if config.cluster.urls:
        from stream_server.extras import require

        require("cluster")
        from stream_server.cluster.inference_worker import nats_password

        nats_password(config)  # a missing password says so before the model loads
    return load_configured_model(config)  # fail fast on a bad checkpoint, before serving


def cmd_worker(args: argparse.Namespace) -> int:
    from stream_server.extras import require

    require("cluster")
    from stream_server.cluster.inference_worker import nats_password, run_inference_worker
    from stream_server.inference.heap import cap_kernel_cache

    config = load_config_of(args)
    logging.basicConfig(level=config.server.log_level.upper(), format="%(levelname)s %(message)s")
    nats_password(config)  # a missing password says so before the model loads
    cap_kernel_cache(config.engine.kernel_cache)
    run_inference_worker(config)
    return 0


def cmd_cluster_up(args: argparse.Namespace) -> int:
    require_extra("cluster")
    from stream_server.tools.local_cluster import cluster_up, default_dir

    folder = args.dir or default_dir()
    print(f"starting {args.nats} NATS servers, {args.workers} workers, {args.nodes} nodes ...")
    cluster = cluster_up(
        folder,
        nats=args.nats,
        nodes=args.nodes,
        workers=args.workers,
        config=args.config,
        port=args.port,
    )
    print(cluster.describe())
    return 0


def cmd_cluster_down(args: argparse.Namespace) -> int:
    from stream_server.tools.local_cluster import cluster_down, default_dir

    folder = args.dir or default_dir()
    cluster = cluster_down(folder)
    if cluster is None:
        print(f"genrecast: no cluster is up in {folder}", file=sys.stderr)
        return 1
    print(f"stopped {len(cluster.processes)} processes; stores and logs stay in {folder}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    import asyncio

    from stream_server.tools.client import wants_pull

    if args.pull or wants_pull(args.source):
        # A local path goes as an absolute path: the server reads it from its own file system.
        source = args.source if "://" in args.source else str(Path(args.source).resolve())
        return asyncio.run(_push_pull(args, source))
    return asyncio.run(_push_file(args))


async def _push_file(args: argparse.Namespace) -> int:
    """``push FILE``: stream it as PCM, then say what the server heard (the stream's summary)."""
    from stream_server.core.summary import summarize
    from stream_server.tools.client import (
        fetch_timeline,
        format_ended,
        print_progress,
        push,
    )

    def started(stream_id: str) -> None:
        print(
            f"stream {stream_id} started; watch it with: genrecast watch --stream {stream_id}",
            flush=True,
        )

    # Progress redraws one line with \r: on a terminal only, never into a log file or a pipe.
    drawing = not args.quiet and sys.stderr.isatty()
    result = await push(
        args.source,
        server=args.server,
        name=args.name or "",
        pace="realtime" if args.realtime else "flood" if args.flood else "fast",
        on_started=started,
        progress=print_progress() if drawing else None,
        token=args.token,
    )
    if drawing:
        sys.stderr.write("\n")
    summary = None
    try:  # the stored timeline: what the server heard, as every other client sees it
        summary = summarize(await fetch_timeline(args.server, result.stream_id, token=args.token))
    except GenrecastError as exc:
        print(f"genrecast: no summary of the stream: {exc}", file=sys.stderr)
    print("\n".join(format_ended(result.stream_id, result.seconds_sent, result.ended, summary)))
    return 0


async def _push_pull(args: argparse.Namespace, source: str) -> int:
    """``push URL`` (or ``--pull PATH``): the server pulls ``source``; wait until it is live or
    fails."""
    from stream_server.errors import PullFailed
    from stream_server.tools.client import (
        http_base,
        pull,
        resolve_token,
        stop_stream,
        wait_live,
    )

    try:
        stream = await pull(source, server=args.server, name=args.name or "", token=args.token)
    except PullFailed as exc:
        print(f"genrecast: {exc}", file=sys.stderr)
        return 1
    stream_id = stream["stream_id"]
    print(stream_id, flush=True)  # stdout carries the id alone, for scripts
    bearer = f'-H "Authorization: Bearer ${TOKEN_ENV}" ' if resolve_token(args.token) else ""
    stop = f"curl -X DELETE {bearer}{http_base(args.server)}/streams/{stream_id}"
    hints = f"watch it with: genrecast watch --stream {stream_id}; stop it with: {stop}"

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    if args.detach:
        say(f"the server is pulling {stream['source']} as stream {stream_id}; {hints}")
        return 0
    say(f"waiting for {stream['source']} to go live (at most {args.wait:g} s) …")

    def retrying(state: str, reason: str) -> None:
        if state == "reconnecting":
            say(f"the server is trying again{f': {reason}' if reason else ''} …")

    try:
        outcome = await wait_live(
            args.server, stream_id, token=args.token, wait_s=args.wait, on_state=retrying
        )
    except AccessRefused as exc:
        raise AccessRefused(
            exc.status,
            f"{exc}, which waiting for the stream to go live needs (GET /streams); the server "
            "is pulling it: pass --detach, or use a token with the 'read' scope",
        ) from None
    if outcome.live:
        if outcome.state == "live":
            say(f"stream {stream_id} is live: the server is pulling {stream['source']}; {hints}")
        else:
            say(f"stream {stream_id} played to its end: {outcome.reason or outcome.state}")
        return 0
    why = outcome.reason or "the server gave no reason"
    if outcome.state in ("failed", "ended", "lost"):
        print(f"genrecast: the server could not pull {stream['source']}: {why}", file=sys.stderr)
        return 1
    stopped = await stop_stream(args.server, stream_id, token=args.token)
    state = outcome.state or "not listed"
    print(
        f"genrecast: {stream['source']} was not live after {args.wait:g} s (state {state}: "
        f"{why}); {'stopped it' if stopped else 'it may still be pulled'}; wait longer with "
        "--wait S, or leave it to the server with --detach",
        file=sys.stderr,
    )
    return 1


def cmd_watch(args: argparse.Namespace) -> int:
    import asyncio

    from stream_server.tools.client import watch

    asyncio.run(
        watch(
            server=args.server,
            stream_id=args.stream,
            since=args.since,
            as_json=args.json,
            count=args.count,
            until_end=args.until_end,
            token=args.token,
            connect_s=args.wait,
        )
    )
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from stream_server.serve.upload import with_summary
    from stream_server.tools.client import format_classify

    if args.server:
        from stream_server.tools.client import classify_remote

        # an older server's answer has no summary: the same one is worked out here
        result = with_summary(classify_remote(args.file, server=args.server, token=args.token))
    else:
        from stream_server.inference.classify import classify_file, file_sha256

        report = classify_file(args.file, load_config_of(args), progress=not args.json)
        result = with_summary(report.to_result(sha256=file_sha256(args.file)))
    # one shape either way: the POST /classify answer (stream_server.serve.upload.ClassifyAnswer)
    print(json.dumps(result, indent=2) if args.json else format_classify(result))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from stream_server.tools.bench import format_report, options_from_args, run_bench

    options = options_from_args(args)
    options.check()  # before anything starts
    report = run_bench(load_config_of(args), options, log=sys.stderr).to_json()
    if not args.json:
        print(format_report(report), file=sys.stderr)
    # stdout carries the figures as JSON either way (scripts read it); --json keeps it on one line
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    from stream_server.tools.soak import SoakOptions, format_report, run_soak

    options = SoakOptions(
        streams=args.streams,
        subscribers=args.subscribers,
        minutes=args.minutes,
        config=args.config,
        model=args.model,
        device=args.device,
        token=args.token,
        host=args.host,
        follow=args.follow,
        workers=args.workers,
        churn_s=args.churn,
        server_workers=args.server_workers,
    )
    options.check()  # before anything starts
    report = run_soak(options, log=sys.stderr).to_json()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["ok"] else 1


def _genres(args: argparse.Namespace) -> tuple[str, ...] | None:
    """``--genres a,b`` as a tuple; ``None`` when not given."""
    return tuple(g for g in args.genres.split(",") if g) if args.genres else None


def cmd_train(args: argparse.Namespace) -> int:
    require_extra("train")
    from stream_server.training.train import main_log_setup, train

    main_log_setup()
    opts = with_overrides(
        TrainOptions(data=args.data, out=args.out),
        arch=args.arch,
        genres=_genres(args),
        min_clips=args.min_clips,
        epochs=args.epochs,
        teacher_epochs=args.teacher_epochs,
        teacher=args.teacher,
        batch_size=args.batch_size,
        windows_per_clip=args.windows_per_clip,
        grid_seconds=args.grid_seconds,
        balance=args.balance,
        codec_prob=args.codec_prob,
        lowpass_prob=args.lowpass_prob,
        lr=args.lr,
        seed=args.seed,
        val_fraction=args.val_fraction,
        device=args.device,
        cache_dir=args.cache,
        resume=args.resume or None,
        progress=False if args.quiet else None,
    )
    result = train(opts)
    last = result.history[-1]
    print(
        f"model saved to {result.out} ({len(result.labels)} genres): "
        f"validation clip accuracy {last.val_clip_accuracy:.3f}, "
        f"window accuracy {last.val_window_accuracy:.3f}"
    )
    return 0


def cmd_train_speech(args: argparse.Namespace) -> int:
    from stream_server.training.train import main_log_setup
    from stream_server.training.train_speech import (
        SpeechTrainOptions,
        format_speech_report,
        train_speech,
    )

    main_log_setup()
    defaults = SpeechTrainOptions(speech="", music="", out="")
    opts = dataclasses.replace(
        defaults,
        speech=args.speech,
        music=args.music,
        out=args.out,
        genre_split=args.genre_split or defaults.genre_split,
        epochs=args.epochs or defaults.epochs,
        seed=defaults.seed if args.seed is None else args.seed,
    )
    report = train_speech(opts)
    print(format_speech_report(report))
    print(f"speech detector saved to {opts.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    require_extra("train")
    from stream_server.inference.device import pick_device
    from stream_server.inference.loading import load_configured_model, speech_model_dir
    from stream_server.inference.speech import DEFAULT_SPEECH_DIR
    from stream_server.training.dataset import SPLIT_FILE, load_split, scan
    from stream_server.training.evaluate import evaluate, format_report, save_report

    if args.speech and not args.mixes:
        raise GenrecastError("--speech measures timelines: it needs --mixes N")
    config = load_config_of(args)
    model = load_configured_model(config)
    if args.split == "all":
        clips = scan(args.data, _genres(args))
    else:
        split = Path(model.source).expanduser() / SPLIT_FILE
        if not split.is_file():
            raise GenrecastError(
                f"--split {args.split} needs {SPLIT_FILE} beside the model; {split} does not exist"
            )
        clips = load_split(split, args.split)
    device = str(pick_device(config.engine.device))
    report = evaluate(
        model,
        args.data,
        clips,
        device=device,
        half=config.engine.half_precision,
        hop_seconds=args.hop,
        cache_dir=args.cache,
        progress=not args.json,
    )
    extra = {}
    mix_text = ""
    if args.mixes:
        from stream_server.inference.facts import session_params
        from stream_server.inference.runner import InferenceRunner
        from stream_server.training.mix_eval import (
            MixOptions,
            figures,
            format_figures,
            perfect,
            prepare,
            quiet_clips,
            speech_clips,
        )

        options = MixOptions(
            mixes=args.mixes,
            seed=args.mix_seed,
            parts=args.mix_parts,
            min_s=args.mix_min_s,
            max_s=args.mix_max_s,
        )
        runner = InferenceRunner(
            model,
            pick_device(config.engine.device),
            half=config.engine.half_precision,
            max_batch=config.engine.max_batch,
            level_samples=session_params(config, model).hop_samples,
        )
        rate = model.preprocessing.sample_rate
        others = []
        if args.speech:
            if model.speech_detector is None:
                print(
                    'warning: no speech detector ([gate] is off or speech_model is "none"): '
                    "no second will be labelled speech",
                    file=sys.stderr,
                )
            detector_dir = speech_model_dir(config) or DEFAULT_SPEECH_DIR
            others = speech_clips(args.speech, rate, args.cache, detector_dir) + quiet_clips(rate)
        prepared = prepare(
            model, args.data, clips, config, runner, options, others=others,
            cache_dir=args.cache, progress=not args.json,
        )  # fmt: skip
        params = session_params(config, model)
        mixed = figures(prepared, params)
        ceiling = figures(perfect(prepared, params), params)
        extra["mixes"] = {**mixed.to_json(), "perfect_windows": ceiling.to_json()}
        mix_text = (
            format_figures(mixed)
            + "\n\nthe same with perfect genre probabilities (each genre's share of the window): "
            "what the settings and the window length cost alone\n" + format_figures(ceiling)
        )
    if args.out:
        save_report(report, args.out, extra)
    if args.json:
        print(json.dumps({**report.to_json(), **extra}, indent=2))
    else:
        print(format_report(report))
        if mix_text:
            print("\n" + mix_text)
        if args.out:
            out = Path(args.out)
            print(f"\nwrote {out / 'evaluation.json'} and {out / 'confusion.png'}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import os

    require_extra("dashboard")
    app = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
    command = [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", args.host,
        "--server.port", str(args.port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--", "--server", args.server,
    ]  # fmt: skip
    env = dict(os.environ)
    if args.token is not None:  # through the environment: never on a command line
        env[TOKEN_ENV] = args.token
    os.execve(sys.executable, command, env)  # Streamlit takes over this process (and its signals)


def cmd_doctor(args: argparse.Namespace) -> int:
    from stream_server.config import PROJECT_CONFIG
    from stream_server.errors import ConfigError
    from stream_server.tools.doctor import doctor

    try:
        config = load_config_of(args)
    except ConfigError as exc:
        return doctor(None, str(exc), as_json=args.json)
    path = args.config or (PROJECT_CONFIG if PROJECT_CONFIG.is_file() else None)
    return doctor(config, f"{path}" if path else "no config.toml: the defaults", as_json=args.json)


def _client_args(
    parser: argparse.ArgumentParser,
    *,
    server_help: str = f"server URL (default {DEFAULT_SERVER})",
    server_default: str | None = DEFAULT_SERVER,
    token_help: str = TOKEN_HELP,
) -> None:
    """``--server`` and ``--token``: how a client command reaches a server."""
    parser.add_argument("--server", default=server_default, help=server_help)
    parser.add_argument("--token", help=token_help)


class _Version(argparse.Action):
    """``--version``: looks the version up only when asked (the lookup reads package metadata)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(f"genrecast {version()}")
        parser.exit()


def _server_workers_arg(p: argparse.ArgumentParser) -> None:
    """``--server-workers`` of the commands that start a server to measure it."""
    p.add_argument(
        "--server-workers",
        dest="server_workers",
        type=int,
        metavar="N",
        help="the server's ingest processes, as serve --workers (config: server.workers); its "
        "CPU and memory figures then add up all its processes",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line. Builds without importing torch, PyAV or any server library."""
    parser = argparse.ArgumentParser(prog="genrecast", description="Real-time music-genre monitor.")
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the server")
    p.add_argument("--config", type=Path, help="config.toml (default: the project's)")
    p.add_argument("--host", help="listen address (config: server.host)")
    p.add_argument("--port", type=int, help="listen port, 0 for any free one (config: server.port)")
    p.add_argument("--model", help="checkpoint directory or hub id (config: model.path)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (config: engine.device)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="listen on a non-loopback --host although no token is set (GENRECAST_TOKEN or "
        "[auth]): anyone who reaches the port may then use every stream (config: server.insecure)",
    )
    p.add_argument(
        "--workers",
        dest="server_workers",
        type=int,
        help="ingest processes, 1..64 (config: server.workers, default 1: one process does "
        "everything). With N > 1, N processes accept connections, decode and window their "
        "streams, and this one runs the model for all of them",
    )
    p.add_argument(
        "--cluster",
        metavar="URLS",
        help="run as a node of a cluster: the model runs on the inference workers (genrecast "
        "worker) reached through these NATS servers, comma-separated nats://host:port "
        "(config: cluster.urls)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "worker", help="an inference worker of a cluster: scores the nodes' windows (NATS)"
    )
    p.add_argument("--config", type=Path, help="config.toml (default: the project's)")
    p.add_argument(
        "--cluster",
        metavar="URLS",
        help="the NATS servers, comma-separated nats://host:port (config: cluster.urls)",
    )
    p.add_argument("--model", help="checkpoint directory or hub id (config: model.path)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (config: engine.device)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("cluster", help="a whole cluster on this machine's loopback, for trying it")
    actions = p.add_subparsers(dest="action", required=True)
    dir_help = "its folder: stores, logs, the list of processes (default: $XDG_STATE_HOME or "
    dir_help += "~/.local/state, then genrecast/cluster)"
    q = actions.add_parser(
        "up", help="start NATS servers, inference workers and API nodes, each in the background"
    )
    q.add_argument("--nats", type=int, default=3, help="NATS servers, joined (default 3)")
    q.add_argument("--nodes", type=int, default=2, help="API nodes: genrecast serve (default 2)")
    q.add_argument("--workers", type=int, default=2, help="inference workers (default 2)")
    q.add_argument(
        "--port",
        type=int,
        default=8000,
        help="first node's port, the next ones after it; 0: free ports (default 8000)",
    )
    q.add_argument("--config", type=Path, help="config.toml for the nodes and workers")
    q.add_argument("--dir", type=Path, help=dir_help)
    q.set_defaults(func=cmd_cluster_up)
    q = actions.add_parser("down", help="stop the cluster `cluster up` started")
    q.add_argument("--dir", type=Path, help=dir_help)
    q.set_defaults(func=cmd_cluster_down)

    p = sub.add_parser(
        "push",
        help="stream an audio file to a server as PCM, or have the server pull an http(s) URL",
        description="Stream an audio file to a server as PCM and print what the server heard: "
        "its main genre, the others' shares and the genres it went through with their times "
        "(from the stream's stored timeline, GET /streams/ID/timeline). An http(s) URL is "
        "pulled by the server itself (POST /streams): push prints the stream id, waits until "
        "the stream is live (or fails) and returns, leaving the server pulling it.",
        epilog="exit status: 0 done (a pulled stream is live); 1 the server refused or could not "
        "pull the source (its reason on stderr); 2 the server cannot be reached, wants a token, "
        "or the file cannot be read. A progress line is drawn on stderr only when it is a "
        "terminal.",
    )
    p.add_argument(
        "source",
        help="anything PyAV can read: a file path or URL; http(s) URLs are pulled by the server",
    )
    _client_args(p)
    p.add_argument("--name", help="stream name (default: the file name)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", help="send at the audio's own pace")
    pace.add_argument(
        "--fast",
        action="store_true",
        help="send as fast as the server computes windows, skipping none (default)",
    )
    pace.add_argument(
        "--flood",
        action="store_true",
        help="send as fast as the connection allows; the server skips windows it cannot keep up",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output, no hints")
    p.add_argument(
        "--pull",
        action="store_true",
        help="have the server read SOURCE itself (an http(s) URL, or a file in the server's "
        "media folder, [sources] media_dir), as for a URL",
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="with a pulled source: print the stream id and return at once, without waiting "
        "for it to go live (a later failure shows in GET /streams and genrecast watch)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="S",
        help="with a pulled source: seconds to wait for it to go live; a source not live by "
        "then is stopped and push exits 1 (default 30; a source the server gives up on ends "
        "the wait at once)",
    )
    p.set_defaults(func=cmd_push)

    p = sub.add_parser(
        "watch",
        help="print live updates",
        description="Print the server's messages as they come, one line each under labelled "
        "columns (--json: one JSON object a line). Says at once which server and streams it "
        "watches; a server that never answers is given up after --wait seconds, a connection "
        "that drops later is resumed where it stopped.",
        epilog="exit status: 0 done (--count or --until-end reached); 2 no server answered "
        "within --wait, or it refused the subscription; 130 interrupted (Ctrl-C).",
    )
    _client_args(p)
    p.add_argument("--stream", help="only this stream id")
    p.add_argument("--since", type=int, help="replay messages after this seq")
    p.add_argument("--json", action="store_true", help="print raw JSON messages")
    p.add_argument("--count", type=int, help="exit after this many genre.update messages")
    p.add_argument("--until-end", action="store_true", help="exit when the stream ends")
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to keep trying a server that does not answer at first, then give up "
        "(default 10; once connected, a lost connection is retried for ever)",
    )
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser(
        "classify",
        help="classify an audio file, offline or on a server",
        description="Classify a whole file through the live windows and smoothing. Two "
        "answers, each labelled: 'whole file', the mean of the windows' probabilities (the "
        "answer's genre, what genrecast evaluate scores), and 'timeline', the smoothed genre "
        "from window to window with each genre's share (the answer's summary). They may "
        "differ: a genre that is second in many windows can lead the mean while the timeline "
        "never shows it.",
    )
    p.add_argument("file", help="audio file (anything PyAV can read)")
    _client_args(
        p,
        server_help="upload the file to this server's POST /classify instead of loading a model "
        "here",
        server_default=None,
        token_help=f"with --server: {TOKEN_HELP}",
    )
    p.add_argument("--config", type=Path, help="config.toml (default: the project's)")
    p.add_argument("--model", help="checkpoint directory or hub id (config: model.path)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (config: engine.device)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser(
        "bench",
        help="measure a server process under concurrent live streams from other processes: "
        "windows/s against the model alone, latency from last sample sent to update received",
    )
    p.add_argument("--config", type=Path, help="config.toml (default: the project's)")
    p.add_argument("--model", help="checkpoint directory or hub id (config: model.path)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (config: engine.device)")
    p.add_argument("--streams", type=int, default=8, help="concurrent streams (default 8)")
    p.add_argument(
        "--seconds",
        type=float,
        help="audio per stream, seconds (default 30; 20 per probe with --find-max)",
    )
    p.add_argument(
        "--speed", type=float, default=1.0, help="send at this multiple of real time (default 1)"
    )
    p.add_argument(
        "--procs",
        type=int,
        default=0,
        help="pusher processes (default 0: min(4, CPUs), at most one per stream)",
    )
    p.add_argument(
        "--audio",
        type=Path,
        help="folder of genre folders of audio clips to play (default: ../shared/datasets/genres "
        "beside the repository where it exists, else synthetic music)",
    )
    p.add_argument("--clips", type=int, default=8, help="clips decoded from --audio (default 8)")
    p.add_argument("--synthetic", action="store_true", help="synthetic music, even with --audio")
    p.add_argument(
        "--same-instant",
        action="store_true",
        help="start every stream at once (default: at random phases within a hop)",
    )
    p.add_argument(
        "--compare-seed",
        action="store_true",
        help="also time the naive pipeline: one window per call, float32, features from scratch",
    )
    p.add_argument(
        "--find-max",
        action="store_true",
        help="search the most real-time streams with p99 latency <= --max-p99-ms and none "
        "skipped (doubling from --streams, then bisection)",
    )
    p.add_argument(
        "--max-p99-ms",
        type=float,
        default=250.0,
        help="p99 latency bound for --find-max, milliseconds (default 250)",
    )
    p.add_argument(
        "--find-max-limit",
        type=int,
        default=1024,
        help="most streams --find-max tries (default 1024)",
    )
    p.add_argument(
        "--hold",
        type=float,
        default=0.0,
        metavar="S",
        help="after their audio, keep the streams open and silent S seconds and read the "
        "server's RSS near the end: idle_rss_mb_per_100_streams (default 0: no hold)",
    )
    _server_workers_arg(p)
    p.add_argument("--json", action="store_true", help="print only the JSON object, on one line")
    p.add_argument(
        "--token",
        help="token the clients send, for a config or environment that sets some "
        f"(default: ${TOKEN_ENV}); it needs the ingest and read scopes",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "soak",
        help="run N live streams and M subscribers against a server process for T minutes: "
        "RSS growth, lost updates, latency",
    )
    p.add_argument("--config", type=Path, help="config.toml (default: the project's)")
    p.add_argument("--model", help="checkpoint directory or hub id (config: model.path)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (config: engine.device)")
    p.add_argument(
        "--streams", type=int, default=10, help="live streams, at most 2000 (default 10)"
    )
    p.add_argument(
        "--subscribers",
        type=int,
        default=10,
        help="/ws/updates subscribers, at most 2000 (default 10)",
    )
    p.add_argument(
        "--minutes", type=float, default=1.0, help="length of the soak, at most 60 (default 1)"
    )
    p.add_argument(
        "--follow",
        choices=("stream", "all"),
        default="stream",
        help="each subscriber follows one stream (subscriber j: stream j mod N; default) or "
        "every stream",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="client processes (default 0: as many as the load needs, at most the CPUs)",
    )
    p.add_argument(
        "--churn",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="each stream slot ends its stream and opens a new one after about this many "
        "seconds, again and again (default 0: every stream lives the whole soak)",
    )
    _server_workers_arg(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="loopback address to serve on (default 127.0.0.1)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--token",
        help="token the server is started with and the clients send (default: "
        f"${TOKEN_ENV}, passed through to the server)",
    )
    p.set_defaults(func=cmd_soak)

    d = TrainOptions(data="", out="")
    p = sub.add_parser("train", help="train a genre model on a folder-per-genre dataset")
    p.add_argument("--data", required=True, help="dataset root: one folder of clips per genre")
    p.add_argument("--out", required=True, help="output directory for the checkpoint")
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), help=f"model recipe (default {d.arch})")
    p.add_argument("--genres", help="comma-separated genre folders (default: all large enough)")
    p.add_argument(
        "--min-clips",
        type=int,
        help=f"without --genres, skip folders with fewer clips (default {d.min_clips})",
    )
    p.add_argument("--epochs", type=int, help=f"student epochs (default {d.epochs})")
    p.add_argument(
        "--teacher-epochs",
        type=int,
        help=f"CNN teacher epochs, with --teacher cnn (default {d.teacher_epochs})",
    )
    p.add_argument(
        "--teacher",
        choices=("musicnn", "cnn", "none"),
        help="distillation teacher: a classifier on the pretrained musicnn's embeddings, a "
        "small CNN trained first (deit, levit), or none (vit, hybrid: the labels alone) "
        f"(default {d.teacher})",
    )
    p.add_argument("--batch-size", type=int, help=f"windows per step (default {d.batch_size})")
    p.add_argument(
        "--windows-per-clip",
        type=int,
        help=f"random windows per training clip per epoch (default {d.windows_per_clip})",
    )
    p.add_argument(
        "--grid-seconds",
        type=float,
        help=f"seconds between the starts of the windows training draws (default {d.grid_seconds})",
    )
    p.add_argument(
        "--balance",
        type=float,
        help="genre balancing: clips drawn with weight count(genre) ** -BALANCE; 0 none, 1 every "
        f"genre equally often (default {d.balance})",
    )
    p.add_argument(
        "--codec-prob",
        type=float,
        help=f"share of training windows through a lossy codec (default {d.codec_prob})",
    )
    p.add_argument(
        "--lowpass-prob",
        type=float,
        help=f"share of training windows band-limited (default {d.lowpass_prob})",
    )
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    p.add_argument(
        "--val-fraction",
        type=float,
        help=f"share of each genre held out (default {d.val_fraction})",
    )
    p.add_argument("--device", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--cache", help=f"decoded-audio cache directory (default {d.cache_dir})")
    p.add_argument("--resume", action="store_true", help="continue from the saved state in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "train-speech", help="train the speech detector that gates music from speech"
    )
    p.add_argument(
        "--speech", required=True, help="speech set: speech/ and music/ with MANIFEST.tsv"
    )
    p.add_argument("--music", required=True, help="the genre dataset (music with vocals)")
    p.add_argument("--out", required=True, help="output directory for the detector")
    p.add_argument(
        "--genre-split",
        help="the genre model's split.json: its training music trains the detector, its "
        "validation music measures it (default: the shipped model's)",
    )
    p.add_argument("--epochs", type=int, help="epochs (default 12)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.set_defaults(func=cmd_train_speech)

    p = sub.add_parser("evaluate", help="accuracy, per-genre figures and confusion on a dataset")
    p.add_argument("--data", required=True, help="dataset root: one folder of clips per genre")
    p.add_argument("--model", help="checkpoint directory or hub id (default: config model.path)")
    p.add_argument("--config", type=Path, help="config.toml (default: the project's)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (config: engine.device)")
    p.add_argument(
        "--split",
        choices=("all", "val", "train"),
        default="all",
        help="all clips in --data (default), or one side of the model's split.json",
    )
    p.add_argument("--genres", help="comma-separated genre folders (with --split all)")
    p.add_argument(
        "--hop", type=float, default=2.5, help="seconds between window starts (default 2.5)"
    )
    p.add_argument("--cache", help="decoded-audio cache directory (default: none)")
    p.add_argument("--out", help="write evaluation.json and confusion.png into this directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--mixes",
        type=int,
        default=0,
        help="also build N mixes of the clips and measure how the live and offline timelines "
        "follow them (default 0: none)",
    )
    p.add_argument("--mix-seed", type=int, default=0, help="seed of the mixes (default 0)")
    p.add_argument(
        "--speech",
        help="with --mixes: a speech set (speech/, music/, MANIFEST.tsv); its validation speech "
        "and three quiet clips join the mixes as 'speech' and 'silence', and the figures say "
        "what each kind of second was labelled",
    )
    p.add_argument("--mix-parts", type=int, default=6, help="parts per mix (default 6)")
    p.add_argument(
        "--mix-min-s", type=float, default=10.0, help="shortest part, seconds (default 10)"
    )
    p.add_argument(
        "--mix-max-s", type=float, default=40.0, help="longest part, seconds (default 40)"
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("dashboard", help="the live dashboard (Streamlit) for a running server")
    _client_args(p)
    p.add_argument("--port", type=int, default=8501, help="dashboard port (default 8501)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser(
        "doctor",
        help="check this installation: versions, CUDA, codecs, the model, the port, the database",
    )
    p.add_argument("--config", type=Path, help="config.toml (default: the project's)")
    p.add_argument("--host", help="listen address to check (config: server.host)")
    p.add_argument("--port", type=int, help="listen port to check (config: server.port)")
    p.add_argument("--model", help="checkpoint directory or hub id (config: model.path)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (config: engine.device)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except GenrecastError as exc:
        print(f"genrecast: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a file that cannot be read: said in words, without errno
        from stream_server.tools.client import error_words

        where = f"{exc.filename}: " if exc.filename else ""
        print(f"genrecast: {where}{error_words(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
