"""Stream-context musicnn tokens: the stream table computes, chunk by chunk and many streams at
once, exactly what the whole clip gives; the runner and the engine keep one slot per stream."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from stream_server.config import Config, load_config
from stream_server.core.session import SessionParams, StreamSession
from stream_server.core.windows import WindowJob, WindowScores
from stream_server.inference.classify import OfflineStream
from stream_server.inference.engine import Engine
from stream_server.inference.facts import session_params
from stream_server.inference.model import GenreClassifier, LoadedModel
from stream_server.inference.musicnn_stream import StreamTokens
from stream_server.inference.musicnn_tokens import (
    LOOKAHEAD_FRAMES,
    MusicnnTokens,
    final_frames,
    token_count,
)
from stream_server.inference.preprocessing import MusicnnPreprocessing
from stream_server.inference.runner import BatchTiming, InferenceRunner
from stream_server.training.hybrid_data import stream_windows
from stream_server.training.recipes import Architecture
from stream_server.training.train import build_model
from tests.helpers.audio import music
from tests.helpers.devices import DEVICES
from tests.helpers.live import collect_until_end, recv_json, run, serving, updates, ws

RATE = 16000
#: Tolerance of the equality: float32 convolutions over differently cut inputs round apart (up
#: to 1.3e-4 seen, on features of magnitude 0.1 to 10, after batch norms that scale them up).
TOL = 1e-3


def _pre(pooling: str = "mean+max", seconds: float = 1.0) -> MusicnnPreprocessing:
    rng = np.random.default_rng(0)
    width = 1506 if pooling == "mean+max" else 753
    return MusicnnPreprocessing(
        window_seconds=seconds,
        pooling=pooling,
        context="stream",
        feature_mean=tuple(rng.normal(size=width).tolist()),
        feature_std=tuple(rng.uniform(0.5, 2.0, width).tolist()),
    )


@pytest.fixture(scope="module")
def features() -> MusicnnTokens:
    return MusicnnTokens(_pre())


@pytest.fixture(scope="module")
def mean_features() -> MusicnnTokens:
    """Tokens pooled by their mean only (the shipped model's pooling)."""
    return MusicnnTokens(_pre("mean"))


def _audio(seconds: float, seed: int) -> np.ndarray:
    return music(seconds, RATE, channels=1, seed=seed)[:, 0].copy()


def _ring_tokens(table: StreamTokens, key: str, count: int) -> torch.Tensor:
    """The newest ``count`` raw tokens of a stream, oldest first."""
    slot = table.slot_of[key]
    written = table.count(key)
    places = [(t % table.capacity) for t in range(written - count, written)]
    return table._ring[slot][:, places]


@pytest.mark.parametrize(("pooling", "seed"), [("mean+max", 0), ("mean+max", 1), ("mean", 2)])
def test_incremental_tokens_equal_the_whole_clip_at_random_chunk_sizes(
    request: pytest.FixtureRequest, pooling: str, seed: int
) -> None:
    """Frames short of a token wait as running sums (and maxima) across pushes of any size."""
    features: MusicnnTokens = request.getfixturevalue(
        "features" if pooling == "mean+max" else "mean_features"
    )
    rng = np.random.default_rng(seed)
    clips = [_audio(float(rng.uniform(3.0, 8.0)), seed=10 * seed + i) for i in range(4)]
    table = StreamTokens(features, 3)
    table.capacity = 64  # keep every token of these short clips to compare them all
    table._ring = torch.zeros(table._ring.shape[0], table._ring.shape[1], 64)
    offsets = [0] * len(clips)
    while any(o < c.size for o, c in zip(offsets, clips, strict=True)):
        keys, chunks = [], []
        for i, clip in enumerate(clips):
            if offsets[i] >= clip.size or rng.random() < 0.2:  # not every stream every tick
                continue
            size = int(
                rng.choice([1, 255, 256, 257, 511, 4096, 16000, int(rng.integers(1, 30000))])
            )
            keys.append(f"s{i}")
            chunks.append(clip[offsets[i] : offsets[i] + size])
            offsets[i] += size
        table.push(keys, chunks)
    for i, clip in enumerate(clips):
        whole = features.stream_raw(torch.from_numpy(clip)[None])[0]
        assert table.count(f"s{i}") == whole.shape[1] == final_frames(clip.size) // 16 > 0
        torch.testing.assert_close(
            _ring_tokens(table, f"s{i}", whole.shape[1]), whole, rtol=TOL, atol=TOL
        )


def test_a_frame_is_final_only_with_its_look_ahead(features: MusicnnTokens) -> None:
    """Tokens depend only on audio up to their look-ahead: more audio later changes none."""
    clip = _audio(6.0, seed=5)
    short = features.stream_raw(torch.from_numpy(clip[:64000])[None])[0]
    longer = features.stream_raw(torch.from_numpy(clip)[None])[0]
    torch.testing.assert_close(longer[:, : short.shape[1]], short, rtol=TOL, atol=TOL)
    assert final_frames(64000) == (64000 - 512) // 256 + 1 - LOOKAHEAD_FRAMES == 176


def test_windows_are_the_newest_tokens_and_zeros_before_the_start(
    features: MusicnnTokens,
) -> None:
    table = StreamTokens(features, 3)
    clip = _audio(4.0, seed=7)
    table.push(["a"], [clip[: 16 * 256 * 2 + LOOKAHEAD_FRAMES * 256 + 256]])  # two tokens
    assert table.count("a") == 2
    first = table.window(["a"])
    assert first.shape == (1, features.features, 1, 3)
    assert torch.equal(first[0, :, 0, 0], torch.zeros(features.features))  # before the start
    whole = features.stream_raw(torch.from_numpy(clip[: 16 * 256 * 2 + 73 * 256 + 256])[None])
    torch.testing.assert_close(first[..., 1:], features.standardise(whole), rtol=TOL, atol=TOL)
    table.push(["a"], [clip[16 * 256 * 2 + 73 * 256 + 256 :]])
    later = table.window(["a"])
    whole = features.stream_raw(torch.from_numpy(clip)[None])
    torch.testing.assert_close(later, features.standardise(whole[:, :, -3:]), rtol=TOL, atol=TOL)


def test_release_frees_the_slot_and_restart_starts_afresh(features: MusicnnTokens) -> None:
    table = StreamTokens(features, 3)
    clip, other = _audio(3.0, seed=1), _audio(3.0, seed=2)
    table.push(["a", "b"], [clip, other])
    table.restart("a")
    assert table.count("a") == 0
    table.push(["a"], [other])
    torch.testing.assert_close(table.window(["a"]), table.window(["b"]), rtol=TOL, atol=TOL)
    table.release("a")
    table.release("a")  # twice: no error
    assert "a" not in table and len(table) == 1
    for i in range(20):  # slots are reused and grow past the first eight
        table.push([f"n{i}"], [clip[:1000]])
    assert len(table) == 21 and table._slots == 24
    for i in range(20):
        table.release(f"n{i}")
    table.push(["c"], [clip])
    assert table.slot_of["c"] in range(24)


def test_the_table_grows_by_a_quarter_and_keeps_its_streams(features: MusicnnTokens) -> None:
    """A full table adds a quarter of its slots (at least 8): it never holds much more than
    its streams, and the streams it had go on unchanged."""
    table = StreamTokens(features, 3)
    clip = _audio(3.0, seed=1)
    table.push(["first"], [clip])
    before = table.window(["first"])
    sizes = []
    for i in range(60):
        table.push([f"n{i}"], [clip[:600]])
        sizes.append(table._slots)
    assert sorted(set(sizes)) == [8, 16, 24, 32, 40, 50, 62]
    assert torch.equal(table.window(["first"]), before)
    more = _audio(1.0, seed=2)
    table.push(["first"], [more])  # it goes on from where it was
    whole = features.stream_raw(torch.from_numpy(np.concatenate([clip, more]))[None])
    expected = features.standardise(whole[:, :, -3:])
    torch.testing.assert_close(table.window(["first"]), expected, rtol=TOL, atol=TOL)


def test_the_ring_of_tokens_wraps_and_a_push_may_bring_more_than_it_holds(
    features: MusicnnTokens,
) -> None:
    clip = _audio(10.0, seed=8)
    whole = features.standardise(features.stream_raw(torch.from_numpy(clip)[None]))
    assert whole.shape[3] == 34
    table = StreamTokens(features, 3)
    assert table.capacity < 34
    table.push(["once"], [clip])  # 34 tokens in one push
    for start in range(0, clip.size, 3000):  # the ring goes round three times
        table.push(["chunks"], [clip[start : start + 3000]])
        have = final_frames(min(start + 3000, clip.size)) // 16
        if have >= 3:
            expected = whole[..., have - 3 : have]
            torch.testing.assert_close(table.window(["chunks"]), expected, rtol=TOL, atol=TOL)
    torch.testing.assert_close(table.window(["once"]), whole[..., -3:], rtol=TOL, atol=TOL)


def test_the_layers_see_whole_buckets_of_frames_whatever_the_chunk_sizes(
    features: MusicnnTokens,
) -> None:
    """Calls are padded to multiples of ``FRAME_BUCKET`` frames: at any chunk size the layers
    see only a few shapes (one compiled kernel each), and the tokens stay those of the clip."""
    table = StreamTokens(features, 3)
    widths: set[int] = set()

    def watched(fn: Callable[[torch.Tensor], torch.Tensor], held: int) -> Any:
        def call(buf: torch.Tensor) -> torch.Tensor:
            widths.add(buf.shape[2] - held)  # the new frames of this call
            return fn(buf)

        return call

    for stage in table._stages:
        stage.fn = watched(stage.fn, stage.width)
    clip, rng, at = _audio(6.0, seed=4), np.random.default_rng(4), 0
    while at < clip.size:
        size = int(rng.integers(200, 20000))
        table.push(["a"], [clip[at : at + size]])
        at += size
    assert widths and widths <= {16, 32, 48, 64}
    whole = features.stream_raw(torch.from_numpy(clip)[None])[0]
    torch.testing.assert_close(_ring_tokens(table, "a", 3), whole[:, -3:], rtol=TOL, atol=TOL)


def test_a_stream_appears_once_per_push_and_restarts_after_the_table_grew(
    features: MusicnnTokens,
) -> None:
    table = StreamTokens(features, 3)
    clip = _audio(2.0, seed=6)
    with pytest.raises(ValueError, match="once"):
        table.push(["a", "a"], [clip, clip])
    for i in range(12):  # grows past its first eight slots inside push
        table.push([f"s{i}"], [clip])
    table.restart("s11")  # outside inference mode
    assert table.count("s11") == 0


def test_a_window_on_its_own_is_a_stream_that_starts_with_it(features: MusicnnTokens) -> None:
    pre = replace(features.pre, window_seconds=3.0)
    tokens = MusicnnTokens(pre)
    windows = torch.from_numpy(np.stack([_audio(3.0, seed=3), _audio(3.0, seed=4)]))
    table = StreamTokens(tokens, tokens.tokens)
    table.push(["x", "y"], list(windows.numpy()))
    torch.testing.assert_close(tokens(windows), table.window(["x", "y"]), rtol=TOL, atol=TOL)
    assert tokens.tokens == token_count(pre) == 11


def test_training_windows_are_runs_of_the_clips_tokens(features: MusicnnTokens) -> None:
    clip = _audio(5.0, seed=9)
    wins = stream_windows(features, clip, hop=2 * 4096)
    whole = features.stream_raw(torch.from_numpy(clip)[None])[0].half().numpy()
    assert wins.shape[1:] == (1506, 3)
    for i, win in enumerate(wins):
        np.testing.assert_array_equal(win, whole[:, 2 * i : 2 * i + 3])
    short = stream_windows(features, clip[:8000], hop=4096)  # padded to one window
    assert short.shape == (1, 1506, 3)


def test_stream_context_needs_16_khz_and_a_known_context() -> None:
    with pytest.raises(ValueError, match="16000 Hz"):
        MusicnnTokens(replace(_pre(), sample_rate=22050))
    with pytest.raises(ValueError, match="context"):
        MusicnnTokens(replace(_pre(), context="song"))


# -- the runner and the engine ------------------------------------------------------------------


class Recording(GenreClassifier):
    """A classifier that keeps every model input it is given (features ``(n, 753, 1, 11)``)."""

    def __init__(self, features: MusicnnTokens, model: torch.nn.Module) -> None:
        super().__init__(features, model)
        self.seen: list[torch.Tensor] = []

    def from_features(self, inputs: torch.Tensor) -> torch.Tensor:
        self.seen.append(inputs.detach().cpu().clone())
        return super().from_features(inputs)

    def inputs(self) -> torch.Tensor:
        """Every input seen since the last call, one row per window, in order."""
        seen, self.seen = self.seen, []
        return torch.cat(seen)


@pytest.fixture
def stream_model() -> LoadedModel:
    pre = _pre("mean", seconds=3.0)  # 11 tokens; a window on its own has the newest 7
    arch = Architecture("hybrid", 32, 1, 2, 16, (1, 11), 753, 3.0, dropout=0.0, context="stream")
    model = build_model(arch, ("a", "b", "c")).eval()
    classifier = Recording(MusicnnTokens(pre), model)
    return LoadedModel(classifier, ("a", "b", "c"), pre, "test", trained=False)


def _params(model: LoadedModel) -> SessionParams:
    return session_params(load_config(None), model)


def _recorded(model: LoadedModel) -> torch.Tensor:
    assert isinstance(model.classifier, Recording)
    return model.classifier.inputs()


def _reference(model: LoadedModel, audio: np.ndarray, ends: list[int]) -> torch.Tensor:
    """Each window's model input from the whole clip's tokens (the newest complete at its end):
    ``(len(ends), 753, 1, 11)``. The inputs, not the probabilities, are compared: a random model
    moves its probabilities too little to tell a wrong token apart."""
    features = model.classifier.features
    assert isinstance(features, MusicnnTokens)
    raw = features.stream_raw(torch.from_numpy(audio)[None])
    n = features.tokens
    out = []
    with torch.inference_mode():
        for end in ends:
            have = final_frames(end) // 16
            tok = raw[:, :, max(0, have - n) : have]
            count = torch.tensor([tok.shape[2]])
            tok = torch.nn.functional.pad(tok, (n - tok.shape[2], 0))
            out.append(features.standardise(tok, count))
    return torch.cat(out)


def test_an_offline_stream_scores_each_window_from_the_streams_tokens(
    stream_model: LoadedModel,
) -> None:
    runner = InferenceRunner(stream_model, torch.device("cpu"), max_batch=4)
    assert runner.table is not None
    audio = _audio(7.0, seed=11)
    stream = OfflineStream(audio, _params(stream_model), 4)
    ends: list[int] = []
    while (jobs := stream.next_batch()) is not None:
        runner.score_jobs(jobs)
        ends.extend(job.end_sample for job in jobs)
    assert len(ends) == 5
    expected = _reference(stream_model, audio, ends)
    torch.testing.assert_close(_recorded(stream_model), expected, rtol=TOL, atol=TOL)
    runner.release(stream.stream_id)
    assert len(runner.table) == 0


def test_live_jobs_push_only_new_audio_and_a_gap_or_a_miss_starts_afresh(
    stream_model: LoadedModel,
) -> None:
    runner = InferenceRunner(stream_model, torch.device("cpu"), max_batch=8)
    assert runner.table is not None
    audio = _audio(11.0, seed=12)
    window = 3 * RATE  # the model's 3 s windows

    def job(end: int, since: int = 0, key: str = "live") -> WindowJob:
        return WindowJob(key, audio[end - window : end], end, 0.0, since=since)

    ends = [48000, 52000, 56000, 100000]  # windows between 56000 and 100000 were skipped
    for end in ends:
        runner.score_jobs([job(end)])
    # 44000 unseen samples fit in the 48000-sample window: the stream goes on.
    expected = _reference(stream_model, audio, ends)
    torch.testing.assert_close(_recorded(stream_model), expected, rtol=TOL, atol=TOL)
    # More than a window unseen: the stream restarts with its window, as a new one would.
    runner.score_jobs([job(160000)])
    fresh = _reference(stream_model, audio[160000 - window : 160000], [window])
    torch.testing.assert_close(_recorded(stream_model), fresh, rtol=TOL, atol=TOL)
    # A gap (since moved): afresh as well, even though the ends are close.
    runner.score_jobs([job(168000, since=120000)])
    gap = _reference(stream_model, audio[120000:168000], [window])
    torch.testing.assert_close(_recorded(stream_model), gap, rtol=TOL, atol=TOL)
    assert not torch.allclose(fresh, gap, rtol=TOL, atol=TOL)


def test_feeds_between_windows_leave_every_window_as_the_whole_clip_gives_it(
    stream_model: LoadedModel,
) -> None:
    """Live sessions that feed their audio every 0.25 s between windows (``engine.feed_s``),
    several streams per call, some feeds dropped as the engine drops them while a window
    waits: each window's input is still the whole clip's newest tokens."""
    runner = InferenceRunner(stream_model, torch.device("cpu"), max_batch=8)
    params = replace(_params(stream_model), warm_up=True, feed_samples=RATE // 4)
    clips = [_audio(9.0, seed=30 + i) for i in range(3)]
    sessions = [
        StreamSession(f"s{i}", params, sample_rate=RATE, channels=1, fmt="f32le") for i in range(3)
    ]
    rng = np.random.default_rng(3)
    ends: dict[str, list[int]] = {s.stream_id: [] for s in sessions}
    order: list[str] = []
    offsets = [0, 0, 0]
    while any(o < c.size for o, c in zip(offsets, clips, strict=True)):
        warm, due = [], []
        for i, (session, clip) in enumerate(zip(sessions, clips, strict=True)):
            size = int(rng.integers(700, 9000))
            job = session.feed_samples(clip[offsets[i] : offsets[i] + size])
            offsets[i] += size
            if job is None or (job.warm and rng.random() < 0.3):  # some feeds never run
                continue
            (warm if job.warm else due).append(job)
        runner.warm(warm)
        if due:
            runner.score_jobs(due)
            for job in due:
                ends[job.stream_id].append(job.end_sample)
                order.append(job.stream_id)
    got = _recorded(stream_model)
    assert len(got) == len(order) >= 3 * 6
    for i, session in enumerate(sessions):
        rows = [k for k, key in enumerate(order) if key == session.stream_id]
        want = _reference(stream_model, clips[i], ends[session.stream_id])
        torch.testing.assert_close(got[rows], want, rtol=TOL, atol=TOL)


def test_a_push_that_fails_halfway_restarts_the_streams_it_held(
    stream_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = InferenceRunner(stream_model, torch.device("cpu"), max_batch=8)
    table = runner.table
    assert table is not None
    audio = _audio(4.0, seed=14)

    window = 3 * RATE

    def job(end: int) -> WindowJob:
        return WindowJob("s", audio[end - window : end], end, 0.0)

    runner.score_jobs([job(48000)])
    stage = table._stages[1]
    real = stage.push

    def broken(*args: Any) -> Any:
        raise RuntimeError("device lost")

    monkeypatch.setattr(stage, "push", broken)  # the first layer has moved on already
    with pytest.raises(RuntimeError, match="device lost"):
        runner.score_jobs([job(52000)])
    monkeypatch.setattr(stage, "push", real)
    _recorded(stream_model)
    runner.score_jobs([job(56000)])  # afresh from its window, not from a half-pushed state
    fresh = _reference(stream_model, audio[56000 - window : 56000], [window])
    torch.testing.assert_close(_recorded(stream_model), fresh, rtol=TOL, atol=TOL)


def test_the_engine_releases_a_streams_slot_when_it_is_cancelled(
    stream_model: LoadedModel,
) -> None:
    runner = InferenceRunner(stream_model, torch.device("cpu"), max_batch=4)
    assert runner.table is not None
    done = threading.Event()
    engine = Engine(
        runner,
        max_batch=4,
        max_wait_s=0.0,
        on_results=lambda results: done.set(),
        on_error=lambda jobs, exc: None,
    )
    engine.start()
    try:
        audio = _audio(3.0, seed=13)
        for key in ("a", "b"):
            done.clear()
            engine.submit(WindowJob(key, audio, 3 * RATE, 0.0))
            assert done.wait(30)
        assert set(runner.table.slot_of) == {"a", "b"}
        assert engine.cancel("a") is None
        engine.release("b")
        for _ in range(300):
            if len(runner.table) == 0:
                break
            threading.Event().wait(0.01)
        assert len(runner.table) == 0
    finally:
        engine.stop()


@pytest.mark.parametrize("device", DEVICES)
def test_the_table_runs_on_the_engines_device(device: str) -> None:
    """On CUDA the table's state and work stay on the GPU (cuDNN may use TF32: looser)."""
    tol = TOL if device == "cpu" else 2e-2
    on_device = MusicnnTokens(_pre()).to(device)
    reference = MusicnnTokens(_pre())
    table = StreamTokens(on_device, 3, device=torch.device(device))
    clips = [_audio(4.0, seed=20), _audio(4.0, seed=21)]
    for start in range(0, clips[0].size, 5000):
        table.push(["a", "b"], [clip[start : start + 5000] for clip in clips])
    window = table.window(["a", "b"])
    assert window.device.type == device
    whole = reference.stream_raw(torch.from_numpy(np.stack(clips)))
    torch.testing.assert_close(
        window.cpu(), reference.standardise(whole[:, :, -3:]), rtol=tol, atol=tol
    )


def test_the_runner_warms_every_batch_size_up_and_keeps_nothing(
    stream_model: LoadedModel,
) -> None:
    runner = InferenceRunner(stream_model, torch.device("cpu"), max_batch=4)
    assert runner.table is not None
    pushed: list[int] = []
    push = runner.table.push

    def counted(keys: Sequence[str], audio: Sequence[np.ndarray]) -> None:
        pushed.append(len(keys))
        push(keys, audio)

    runner.table.push = counted  # type: ignore[method-assign]
    runner.warm_up(3 * RATE, RATE)
    assert set(pushed) == {1, 2, 3, 4} and len(runner.table) == 0 and not runner._ends


def test_warm_up_jobs_are_taken_in_and_not_scored(stream_model: LoadedModel) -> None:
    runner = InferenceRunner(stream_model, torch.device("cpu"), max_batch=4)
    assert runner.table is not None
    results: list[Any] = []
    done = threading.Event()

    def on_results(batch: Sequence[Any]) -> None:
        results.extend(batch)
        done.set()

    engine = Engine(
        runner, max_batch=4, max_wait_s=0.0, on_results=on_results, on_error=lambda j, e: None
    )
    engine.start()
    try:
        audio = _audio(4.0, seed=16)
        for end in (16000, 32000):  # the audio before the first 3 s window, hop by hop
            engine.submit(WindowJob("w", audio[:end], end, 0.0, warm=True))
            for _ in range(300):
                if runner.table.count("w") or not engine.busy("w"):
                    break
                threading.Event().wait(0.01)
        engine.submit(WindowJob("w", audio[:48000], 48000, 0.0))
        assert done.wait(30)
        assert [r.job.end_sample for r in results] == [48000]  # only the window is scored
        seen = _recorded(stream_model)
        torch.testing.assert_close(
            seen, _reference(stream_model, audio, [48000]), rtol=TOL, atol=TOL
        )
        assert runner._ends["w"] == (48000, 0)
    finally:
        engine.stop()


def test_a_cancelled_upload_leaves_no_state_behind(stream_model: LoadedModel) -> None:
    """Chunks of a one-shot stream queued behind a running one are cancelled, then the stream
    released: nothing of it runs afterwards, so no slot is left."""
    entered, go = threading.Event(), threading.Event()

    class Gated(InferenceRunner):
        def timed_score(
            self, windows: np.ndarray, jobs: Sequence[WindowJob] | None = None
        ) -> tuple[WindowScores, BatchTiming]:
            entered.set()
            assert go.wait(30)
            return super().timed_score(windows, jobs)

    runner = Gated(stream_model, torch.device("cpu"), max_batch=4)
    assert runner.table is not None
    engine = Engine(
        runner, max_batch=4, max_wait_s=0.0, on_results=lambda r: None, on_error=lambda j, e: None
    )
    engine.start()
    try:
        audio = _audio(6.0, seed=15)
        ends = (48000, 64000, 80000)
        jobs = [WindowJob("upload", audio[e - 3 * RATE : e], e, 0.0) for e in ends]
        first = engine.run_windows(np.stack([jobs[0].window]), jobs[:1])
        later = engine.run_windows(np.stack([j.window for j in jobs[1:]]), jobs[1:])
        assert entered.wait(30)
        assert later.cancel()
        engine.release("upload")
        go.set()
        first.result(30)
        for _ in range(300):
            if len(runner.table) == 0 and engine.pending == 0:
                break
            threading.Event().wait(0.01)
        threading.Event().wait(0.2)  # time for a wrongly run chunk to make a slot again
        assert len(runner.table) == 0 and runner.table.slot_of == {}
    finally:
        go.set()
        engine.stop()


def test_a_live_stream_through_the_server_gets_the_whole_streams_windows(
    make_config: Callable[..., Config], stream_model: LoadedModel
) -> None:
    """PCM pushed over a real WebSocket: every update is the window of the whole stream's
    tokens at its end, whether the engine kept up or skipped windows."""
    audio = _audio(8.0, seed=30)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    heard = pcm.astype(np.float32) / 32768.0

    async def scenario() -> list[dict[str, Any]]:
        config = make_config(gate={"enabled": False})
        async with serving(config, stream_model) as (server, _):
            assert len(_recorded(stream_model)) > 0  # the warm-up at load, not this stream's
            async with ws(server, "/ws/ingest") as ingest:
                start = {"type": "start", "name": "s", "sample_rate": RATE, "channels": 1}
                await ingest.send(json.dumps({**start, "format": "s16le"}))
                stream_id = (await recv_json(ingest))["stream_id"]
                async with updates(server, stream_id) as sub:
                    for i in range(0, pcm.size, 1600):  # 0.1 s frames at 4x real time
                        await ingest.send(pcm[i : i + 1600].tobytes())
                        await asyncio.sleep(0.025)
                    await ingest.send(json.dumps({"type": "stop"}))
                    return await collect_until_end(sub, stream_id)

    messages = run(scenario())
    got = [m for m in messages if m["type"] == "genre.update"]
    assert len(got) >= 5
    ends = [round(m["stream_time_s"] * RATE) for m in got]
    seen = _recorded(stream_model)
    assert len(seen) == len(got)  # one model input per update, in order
    torch.testing.assert_close(seen, _reference(stream_model, heard, ends), rtol=TOL, atol=TOL)


def test_a_stream_more_than_a_window_behind_catches_up_from_its_newest_audio(
    stream_model: LoadedModel,
) -> None:
    """With ``catch_up_samples``, a miss of more than a window restarts the stream from its
    newest audio only; a gap still restarts from the whole window, and the stream goes on
    from the catch-up as from any start."""
    catch_up = 2 * RATE
    runner = InferenceRunner(stream_model, torch.device("cpu"), catch_up_samples=catch_up)
    audio = _audio(12.0, seed=16)
    window = 3 * RATE

    def job(end: int, since: int = 0) -> WindowJob:
        return WindowJob("live", audio[end - window : end], end, 0.0, since=since)

    runner.score_jobs([job(48000)])
    _recorded(stream_model)
    runner.score_jobs([job(112000)])  # 64000 unseen: more than the 48000-sample window
    caught = audio[112000 - catch_up : 112000]
    torch.testing.assert_close(
        _recorded(stream_model), _reference(stream_model, caught, [catch_up]), rtol=TOL, atol=TOL
    )
    runner.score_jobs([job(128000)])  # it goes on from there
    torch.testing.assert_close(
        _recorded(stream_model),
        _reference(stream_model, audio[112000 - catch_up : 128000], [catch_up + 16000]),
        rtol=TOL,
        atol=TOL,
    )
    runner.score_jobs([job(176000, since=128000)])  # a gap: its whole window, as before
    torch.testing.assert_close(
        _recorded(stream_model),
        _reference(stream_model, audio[176000 - window : 176000], [window]),
        rtol=TOL,
        atol=TOL,
    )
    with pytest.raises(ValueError, match="catch_up_samples"):
        InferenceRunner(stream_model, torch.device("cpu"), catch_up_samples=-1)
