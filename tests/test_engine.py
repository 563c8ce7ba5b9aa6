"""Tests for stream_server.inference.engine: batching across streams, latest wins, errors, shutdown.

The engine runs a real :class:`InferenceRunner` over the tiny test checkpoint on the CPU.
Callbacks run on the engine thread; tests wait for them with queues and events (timeouts only
as a safety net).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest
import torch

from stream_server.core.windows import WindowJob, WindowResult, WindowScores
from stream_server.inference import engine as engine_module
from stream_server.inference import heap
from stream_server.inference.engine import IDLE_S, Engine, EngineStopped
from stream_server.inference.model import LoadedModel
from stream_server.inference.runner import BatchTiming, InferenceRunner
from tests.helpers.audio import music
from tests.helpers.constants import TIMEOUT_S

WINDOW = 44100  # 2 s at 22050 Hz, the tiny model's window


def window(seed: int) -> np.ndarray:
    return music(2.0, rate=22050, channels=1, seed=seed)[:, 0]


def job(stream_id: str, seed: int = 0, end_sample: int = WINDOW) -> WindowJob:
    return WindowJob(stream_id, window(seed), end_sample, arrival=0.0)


class Recorder:
    """Collects engine callbacks; ``next_results``/``next_error`` wait for one."""

    def __init__(self) -> None:
        self.results: queue.Queue[Sequence[WindowResult]] = queue.Queue()
        self.errors: queue.Queue[tuple[Sequence[WindowJob], BaseException]] = queue.Queue()

    def on_results(self, results: Sequence[WindowResult]) -> None:
        self.results.put(results)

    def on_error(self, jobs: Sequence[WindowJob], exc: BaseException) -> None:
        self.errors.put((jobs, exc))

    def next_results(self) -> Sequence[WindowResult]:
        return self.results.get(timeout=TIMEOUT_S)

    def next_error(self) -> tuple[Sequence[WindowJob], BaseException]:
        return self.errors.get(timeout=TIMEOUT_S)


@pytest.fixture
def runner(tiny_model: LoadedModel) -> InferenceRunner:
    return InferenceRunner(tiny_model, torch.device("cpu"), max_batch=8)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_engine(runner: InferenceRunner, recorder: Recorder) -> Iterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def make(
        *,
        max_batch: int = 4,
        max_wait_s: float = 0.0,
        runner_: InferenceRunner | None = None,
        on_tidy: Callable[[], object] = heap.trim_heap,
    ) -> Engine:
        engine = Engine(
            runner_ or runner,
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            on_results=recorder.on_results,
            on_error=recorder.on_error,
            on_tidy=on_tidy,
        )
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


# --------------------------------------------------------------------------- results


def test_results_have_probabilities_for_the_submitted_job(
    make_engine: Callable[..., Engine], recorder: Recorder, tiny_model: LoadedModel
) -> None:
    engine = make_engine(max_batch=4, max_wait_s=0.0)
    engine.start()
    submitted = job("a", seed=3, end_sample=123456)
    assert engine.submit(submitted) is None
    (result,) = recorder.next_results()
    assert result.job is submitted
    assert result.probs.shape == (len(tiny_model.labels),)
    assert result.probs.dtype == np.float32
    assert np.all(result.probs >= 0)
    assert float(result.probs.sum()) == pytest.approx(1.0, abs=1e-5)
    assert result.batch_size == 1
    assert result.batch_seconds > 0
    assert engine.batches == 1
    assert engine.computed == 1
    assert not engine.busy("a")
    assert engine.pending == 0


def test_streams_submitted_together_run_in_one_batch(
    make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    streams = ["a", "b", "c"]
    engine = make_engine(max_batch=len(streams), max_wait_s=1.0)
    jobs = [job(sid, seed=i) for i, sid in enumerate(streams)]
    for j in jobs:
        assert engine.submit(j) is None
    assert engine.pending == 3
    assert all(engine.busy(sid) for sid in streams)
    engine.start()
    results = recorder.next_results()
    assert [r.job for r in results] == jobs  # oldest first
    assert {r.batch_size for r in results} == {3}
    assert len({r.batch_seconds for r in results}) == 1
    for r in results:
        assert float(r.probs.sum()) == pytest.approx(1.0, abs=1e-5)
    assert engine.batches == 1
    assert engine.computed == 3
    assert recorder.results.empty()


def test_batch_is_capped_at_max_batch(
    make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    engine = make_engine(max_batch=2, max_wait_s=0.0)
    jobs = [job(sid, seed=i) for i, sid in enumerate("abcde")]
    for j in jobs:
        engine.submit(j)
    engine.start()
    batches = [recorder.next_results() for _ in range(3)]
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [r.job for b in batches for r in b] == jobs
    assert [b[0].batch_size for b in batches] == [2, 2, 1]
    assert engine.batches == 3
    assert engine.computed == 5


def test_batched_probabilities_equal_one_at_a_time(
    make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    streams = ["a", "b", "c", "d"]
    together = make_engine(max_batch=len(streams), max_wait_s=1.0)
    for i, sid in enumerate(streams):
        together.submit(job(sid, seed=10 + i))
    together.start()
    batch = {r.job.stream_id: r.probs for r in recorder.next_results()}
    together.stop()
    assert sorted(batch) == streams

    alone = make_engine(max_batch=1, max_wait_s=0.0)
    alone.start()
    single = {}
    for i, sid in enumerate(streams):
        alone.submit(job(sid, seed=10 + i))
        (result,) = recorder.next_results()
        assert result.batch_size == 1
        single[sid] = result.probs
    for sid in streams:
        np.testing.assert_allclose(batch[sid], single[sid], atol=1e-5)
    # the windows differ, and so do their scores: the comparison is not vacuous
    assert not np.allclose(batch["a"], batch["b"], atol=1e-6)


# --------------------------------------------------------------------------- latest wins


def test_newer_job_replaces_the_pending_one(
    make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    engine = make_engine(max_batch=4, max_wait_s=0.0)
    first = job("a", seed=1, end_sample=WINDOW)
    second = job("a", seed=2, end_sample=WINDOW + 11025)
    other = job("b", seed=3)
    assert engine.submit(first) is None
    assert engine.submit(other) is None
    assert engine.submit(second) is first
    assert engine.pending == 2
    engine.start()
    results = recorder.next_results()
    by_stream = {r.job.stream_id: r.job for r in results}
    assert by_stream == {"a": second, "b": other}
    assert engine.computed == 2


def test_a_warm_up_job_never_displaces_a_pending_window(
    make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    """Audio fed ahead of a window is dropped while the stream's window waits (the window takes
    the same audio in); a window replaces a pending warm-up job."""
    engine = make_engine(max_batch=4, max_wait_s=0.0)
    window = job("a", seed=1, end_sample=WINDOW)
    feed = dataclasses.replace(job("a", seed=2, end_sample=WINDOW + 2000), warm=True)
    assert engine.submit(window) is None
    assert engine.submit(feed) is feed  # not queued: the window stays
    assert engine.pending == 1
    early = dataclasses.replace(job("b", seed=3, end_sample=WINDOW - 2000), warm=True)
    later = job("b", seed=4, end_sample=WINDOW)
    assert engine.submit(early) is None
    assert engine.submit(later) is early
    engine.start()
    results = recorder.next_results()
    assert {r.job.stream_id: r.job for r in results} == {"a": window, "b": later}
    assert engine.computed == 2


def test_warm_up_jobs_wait_while_any_window_does(
    make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    engine = make_engine(max_batch=4, max_wait_s=0.0)
    feeds = [dataclasses.replace(job(f"w{i}", seed=i), warm=True) for i in range(3)]
    for feed in feeds:
        assert engine.submit(feed) is None
    window = job("a", seed=9)
    assert engine.submit(window) is None  # submitted last, it runs first, alone
    engine.start()
    assert [r.job for r in recorder.next_results()] == [window]
    deadline = time.monotonic() + TIMEOUT_S
    while engine.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.pending == 0 and engine.computed == 1  # then the feeds, not scored


def test_job_in_flight_is_not_replaced(
    tiny_model: LoadedModel, make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    class GatedRunner(InferenceRunner):
        """Blocks in the first batch until released."""

        def __init__(self) -> None:
            super().__init__(tiny_model, torch.device("cpu"), max_batch=4)
            self.entered = threading.Event()
            self.go = threading.Event()

        def timed_score(
            self, windows: np.ndarray, jobs: Sequence[WindowJob] | None = None
        ) -> tuple[WindowScores, BatchTiming]:
            if not self.entered.is_set():
                self.entered.set()
                assert self.go.wait(TIMEOUT_S)
            return super().timed_score(windows, jobs)

    gated = GatedRunner()
    engine = make_engine(max_batch=4, max_wait_s=0.0, runner_=gated)
    engine.start()
    first = job("a", seed=1)
    engine.submit(first)
    assert gated.entered.wait(TIMEOUT_S)
    # running now: busy, but not pending, so a newer job queues behind it
    assert engine.busy("a")
    assert engine.pending == 0
    assert engine.cancel("a") is None
    second = job("a", seed=2, end_sample=2 * WINDOW)
    assert engine.submit(second) is None
    assert engine.pending == 1
    gated.go.set()
    assert [r.job for r in recorder.next_results()] == [first]
    assert [r.job for r in recorder.next_results()] == [second]
    assert engine.batches == 2


# --------------------------------------------------------------------------- cancel / stop


def test_cancel_drops_the_pending_job(
    make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    engine = make_engine(max_batch=1, max_wait_s=0.0)
    a, b = job("a", seed=1), job("b", seed=2)
    engine.submit(a)
    engine.submit(b)
    assert engine.cancel("a") is a
    assert engine.cancel("a") is None
    assert engine.cancel("never") is None
    assert not engine.busy("a")
    assert engine.busy("b")
    engine.start()
    assert [r.job for r in recorder.next_results()] == [b]
    assert engine.computed == 1


def test_stop_joins_the_thread_and_refuses_new_jobs(
    make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    engine = make_engine(max_batch=1, max_wait_s=0.0)
    engine.start()
    engine.submit(job("a"))
    recorder.next_results()
    engine.stop()
    assert not engine._thread.is_alive()
    late = job("b")
    assert engine.submit(late) is late  # refused: handed back to count as skipped
    assert engine.pending == 0
    assert not engine.busy("b")
    engine.stop()  # twice is harmless


def test_stop_drops_pending_jobs_without_running_them(
    make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    engine = make_engine(max_batch=4, max_wait_s=0.0)
    engine.submit(job("a"))
    engine.submit(job("b"))
    engine.stop()  # never started
    assert engine.pending == 0
    assert engine.batches == 0
    engine.start()  # a stopped engine's thread exits at once
    engine._thread.join(TIMEOUT_S)
    assert not engine._thread.is_alive()
    assert recorder.results.empty() and recorder.errors.empty()


def test_stop_while_waiting_for_a_batch_to_fill(
    make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    engine = make_engine(max_batch=8, max_wait_s=60.0)
    engine.submit(job("a"))
    engine.start()
    engine.stop()  # wakes the engine long before its 60 s deadline
    assert not engine._thread.is_alive()
    assert recorder.results.empty()
    assert engine.batches == 0


# --------------------------------------------------------------------------- failures


class FailingRunner(InferenceRunner):
    """Raises on the first ``failures`` batches, then runs normally."""

    def __init__(self, loaded: LoadedModel, failures: int = 1) -> None:
        super().__init__(loaded, torch.device("cpu"), max_batch=4)
        self.failures = failures

    def timed_score(
        self, windows: np.ndarray, jobs: Sequence[WindowJob] | None = None
    ) -> tuple[WindowScores, BatchTiming]:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError(f"device lost on a batch of {len(windows)}")
        return super().timed_score(windows, jobs)


def test_failed_batch_goes_to_on_error_and_the_engine_carries_on(
    tiny_model: LoadedModel, make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    engine = make_engine(max_batch=2, max_wait_s=1.0, runner_=FailingRunner(tiny_model))
    a, b = job("a", seed=1), job("b", seed=2)
    engine.submit(a)
    engine.submit(b)
    engine.start()
    jobs, exc = recorder.next_error()
    assert list(jobs) == [a, b]
    assert isinstance(exc, RuntimeError)
    assert str(exc) == "device lost on a batch of 2"
    assert not engine.busy("a") and not engine.busy("b")
    assert engine.batches == 0 and engine.computed == 0

    c, d = job("a", seed=3), job("c", seed=4)
    engine.submit(c)
    engine.submit(d)
    results = recorder.next_results()
    assert [r.job for r in results] == [c, d]
    for r in results:
        assert float(r.probs.sum()) == pytest.approx(1.0, abs=1e-5)
    assert engine.batches == 1 and engine.computed == 2
    assert recorder.errors.empty()


def test_windows_of_different_lengths_fail_the_batch(
    make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    engine = make_engine(max_batch=2, max_wait_s=1.0)
    a = job("a")
    b = WindowJob("b", window(1)[:1000], 1000, arrival=0.0)
    engine.submit(a)
    engine.submit(b)
    engine.start()
    jobs, exc = recorder.next_error()
    assert list(jobs) == [a, b]
    assert isinstance(exc, ValueError)


def test_a_failing_results_callback_does_not_stop_the_engine(runner: InferenceRunner) -> None:
    delivered: queue.Queue[WindowJob] = queue.Queue()
    calls = 0

    def on_results(results: Sequence[WindowResult]) -> None:
        nonlocal calls
        calls += 1
        delivered.put(results[0].job)
        if calls == 1:
            raise KeyError("caller bug")

    def on_error(jobs: Sequence[WindowJob], exc: BaseException) -> None:
        raise AssertionError("no batch should fail")  # pragma: no cover

    engine = Engine(runner, max_batch=1, max_wait_s=0.0, on_results=on_results, on_error=on_error)
    engine.start()
    try:
        a, b = job("a"), job("b", seed=1)
        engine.submit(a)
        assert delivered.get(timeout=TIMEOUT_S) is a
        engine.submit(b)
        assert delivered.get(timeout=TIMEOUT_S) is b
        assert engine.batches == 2
    finally:
        engine.stop()


def test_cancel_during_batch_fill_does_not_run_an_empty_batch(
    make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    engine = make_engine(max_batch=2, max_wait_s=0.05)
    idle_again = threading.Event()

    class Probe(threading.Condition):
        """Cancels stream "a" when the engine starts waiting for its batch to fill, and
        signals when the engine is back to waiting for new jobs."""

        def wait(self, timeout: float | None = None) -> bool:
            if timeout is not None:
                engine.cancel("a")  # same thread; the lock is re-entrant
            else:
                idle_again.set()
            return super().wait(timeout)

    engine._cond = Probe()
    engine.submit(job("a"))
    engine.start()
    assert idle_again.wait(TIMEOUT_S)
    assert recorder.errors.empty()
    assert recorder.results.empty()


# --------------------------------------------------------------------------- one-shot runs


def windows_of(count: int, first_seed: int = 0) -> np.ndarray:
    return np.stack([window(first_seed + i) for i in range(count)])


class GatedRecordingRunner(InferenceRunner):
    """Records every batch it runs; blocks in the first one until released."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded, torch.device("cpu"), max_batch=8)
        self.batches: list[np.ndarray] = []
        self.entered = threading.Event()
        self.go = threading.Event()

    def timed_score(
        self, windows: np.ndarray, jobs: Sequence[WindowJob] | None = None
    ) -> tuple[WindowScores, BatchTiming]:
        self.batches.append(np.array(windows))
        if not self.entered.is_set():
            self.entered.set()
            assert self.go.wait(TIMEOUT_S)
        return super().timed_score(windows, jobs)


def test_run_windows_runs_in_chunks_of_max_batch(
    make_engine: Callable[..., Engine],
    recorder: Recorder,
    runner: InferenceRunner,
    tiny_model: LoadedModel,
) -> None:
    sizes: list[int] = []

    class CountingRunner(InferenceRunner):
        def timed_score(
            self, windows: np.ndarray, jobs: Sequence[WindowJob] | None = None
        ) -> tuple[WindowScores, BatchTiming]:
            sizes.append(len(windows))
            return super().timed_score(windows, jobs)

    counting = CountingRunner(tiny_model, torch.device("cpu"), max_batch=8)
    engine = make_engine(max_batch=3, runner_=counting)
    engine.start()
    windows = windows_of(7)
    scores = engine.run_windows(windows).result(timeout=TIMEOUT_S)
    probs = scores.probs
    assert sizes == [3, 3, 1]
    assert scores.level_dbfs.shape == scores.speech.shape == (7,)
    assert probs.shape == (7, len(tiny_model.labels))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, runner.run(windows), atol=1e-5)
    assert not np.allclose(probs[0], probs[1], atol=1e-6)  # rows differ: order is checked
    assert engine.batches == 3
    assert engine.computed == 7
    assert recorder.results.empty()  # one-shot results go to the future only


def test_live_batches_take_turns_with_a_one_shot_run(
    tiny_model: LoadedModel, make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    gated = GatedRecordingRunner(tiny_model)
    engine = make_engine(max_batch=2, max_wait_s=60.0, runner_=gated)
    engine.start()
    windows = windows_of(6)
    future = engine.run_windows(windows)
    assert gated.entered.wait(TIMEOUT_S)  # the first chunk is running
    live = job("a", seed=40)
    engine.submit(live)
    gated.go.set()
    probs = future.result(timeout=TIMEOUT_S).probs
    (result,) = recorder.next_results()
    assert result.job is live
    assert result.batch_size == 1  # not held back 60 s waiting for a fuller batch
    # chunk, live batch, chunk, chunk: the live window did not wait for the whole file
    assert [len(b) for b in gated.batches] == [2, 1, 2, 2]
    np.testing.assert_array_equal(gated.batches[1][0], live.window)
    np.testing.assert_array_equal(np.concatenate([gated.batches[i] for i in (0, 2, 3)]), windows)
    assert probs.shape == (6, len(tiny_model.labels))
    assert engine.batches == 4
    assert engine.computed == 7


def test_a_failed_one_shot_chunk_fails_its_future_and_the_engine_carries_on(
    tiny_model: LoadedModel, make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    engine = make_engine(max_batch=2, runner_=FailingRunner(tiny_model, failures=1))
    engine.start()
    failed = engine.run_windows(windows_of(4))
    with pytest.raises(RuntimeError, match="device lost on a batch of 2"):
        failed.result(timeout=TIMEOUT_S)
    assert engine.batches == 0 and engine.computed == 0
    engine.submit(job("a"))
    assert [r.job.stream_id for r in recorder.next_results()] == ["a"]
    probs = engine.run_windows(windows_of(3)).result(timeout=TIMEOUT_S).probs
    assert probs.shape == (3, len(tiny_model.labels))
    assert recorder.errors.empty()  # a one-shot failure is its caller's, not on_error's


def test_cancelled_one_shot_runs_are_skipped(
    make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    engine = make_engine(max_batch=4)
    dropped = engine.run_windows(windows_of(3))
    kept = engine.run_windows(windows_of(2, first_seed=5))
    assert dropped.cancel()
    engine.start()
    assert len(kept.result(timeout=TIMEOUT_S)) == 2
    assert engine.batches == 1
    assert engine.computed == 2


def test_cancelling_a_one_shot_run_stops_its_remaining_chunks(
    tiny_model: LoadedModel, make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    gated = GatedRecordingRunner(tiny_model)
    engine = make_engine(max_batch=2, runner_=gated)
    engine.start()
    future = engine.run_windows(windows_of(6))
    assert gated.entered.wait(TIMEOUT_S)
    assert future.cancel()  # not done yet: the caller went away
    engine.submit(job("a"))
    gated.go.set()
    assert [r.job.stream_id for r in recorder.next_results()] == ["a"]
    assert [len(b) for b in gated.batches] == [2, 1]
    assert engine.computed == 3


def test_stop_fails_queued_one_shot_runs(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(max_batch=2)
    queued = engine.run_windows(windows_of(2))
    engine.stop()
    assert isinstance(queued.exception(timeout=TIMEOUT_S), EngineStopped)
    late = engine.run_windows(windows_of(1))
    assert late.done()
    assert isinstance(late.exception(), EngineStopped)
    assert engine.batches == 0


def test_run_windows_with_no_windows_or_a_bad_shape(
    make_engine: Callable[..., Engine], tiny_model: LoadedModel
) -> None:
    engine = make_engine()  # never started: nothing needs the thread
    empty = engine.run_windows(np.empty((0, WINDOW), dtype=np.float32))
    assert empty.done()
    assert empty.result().probs.shape == (0, len(tiny_model.labels))
    assert empty.result().level_dbfs.shape == (0,)
    with pytest.raises(ValueError, match=r"\(n, samples\)"):
        engine.run_windows(window(0))


def test_the_engine_tidies_up_once_after_work_and_never_while_it_had_none(
    make_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    idle: queue.Queue[str] = queue.Queue()

    def on_tidy() -> None:
        idle.put(threading.current_thread().name)
        raise RuntimeError("a failing tidy-up does not stop the engine")

    engine = make_engine(on_tidy=on_tidy)
    engine.start()
    with pytest.raises(queue.Empty):  # started, no work yet: not idle "after work"
        idle.get(timeout=3 * IDLE_S)
    engine.submit(job("a"))
    recorder.next_results()
    assert idle.get(timeout=TIMEOUT_S) == "genrecast-engine"
    with pytest.raises(queue.Empty):  # once per stretch of work, not again and again
        idle.get(timeout=3 * IDLE_S)
    engine.submit(job("b"))
    recorder.next_results()
    assert idle.get(timeout=TIMEOUT_S) == "genrecast-engine"


def test_trim_heap_gives_freed_memory_back() -> None:
    """On glibc, memory freed by a large computation goes back to the system."""
    if heap._malloc_trim() is None:
        pytest.skip("not glibc: trim_heap does nothing here")
    blocks = [np.ones(100_000) for _ in range(200)]  # 160 MB in 800 KB blocks...
    del blocks[:-1]  # ...freed, but the newest keeps the heap's top in place
    assert heap.trim_heap() is True


def test_the_engine_tidies_up_between_batches_when_work_never_stops(
    make_engine: Callable[..., Engine], recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "IDLE_S", 3600.0)  # never idle long enough here
    monkeypatch.setattr(engine_module, "TIDY_EVERY_S", 0.0)  # so only the busy rule tidies
    tidied: queue.Queue[None] = queue.Queue()
    engine = make_engine(on_tidy=lambda: tidied.put(None))
    engine.start()
    for stream in ("a", "b"):
        engine.submit(job(stream))
        recorder.next_results()
        tidied.get(timeout=TIMEOUT_S)  # after each batch
