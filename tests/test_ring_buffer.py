"""Tests for ring_buffer.RingBuffer: contents, errors, overrun accounting and a model check."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ring_buffer import RingBuffer
from stream_server.errors import WindowNotWritten, WindowOverwritten, WindowUnavailable


def ramp(start: int, n: int) -> npt.NDArray[np.float32]:
    """Samples whose value equals their absolute index, so contents show their position."""
    return np.arange(start, start + n, dtype=np.float32)


def filled(capacity: int, n: int) -> RingBuffer:
    buf = RingBuffer(capacity)
    buf.write(ramp(0, n))
    return buf


# --- construction and properties -------------------------------------------------------------


def test_new_buffer_is_empty() -> None:
    buf = RingBuffer(8)
    assert buf.capacity == 8
    assert buf.written == 0
    assert buf.oldest == 0
    assert buf.consumed == 0
    assert buf.overruns == 0
    assert len(buf) == 0
    assert buf.read(0, 0).shape == (0,)
    assert buf.latest(0).shape == (0,)


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity must be > 0"):
        RingBuffer(capacity)


def test_repr_shows_held_range() -> None:
    buf = filled(4, 6)
    assert repr(buf) == "RingBuffer(capacity=4, held=[2, 6), consumed=2, overruns=2)"


# --- writes ------------------------------------------------------------------------------------


def test_write_smaller_than_capacity() -> None:
    buf = RingBuffer(8)
    assert buf.write(ramp(0, 3)) == 3
    assert buf.written == 3
    assert buf.oldest == 0
    assert len(buf) == 3
    np.testing.assert_array_equal(buf.read(0, 3), [0, 1, 2])
    assert buf.write(ramp(3, 2)) == 5
    np.testing.assert_array_equal(buf.read(0, 5), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(buf.read(2, 2), [2, 3])


def test_write_equal_to_capacity() -> None:
    buf = filled(8, 8)
    assert buf.written == 8
    assert buf.oldest == 0
    assert len(buf) == 8
    np.testing.assert_array_equal(buf.read(0, 8), ramp(0, 8))
    assert buf.overruns == 0


def test_write_greater_than_capacity_keeps_last_samples() -> None:
    buf = RingBuffer(4)
    assert buf.write(ramp(0, 10)) == 10
    assert buf.written == 10
    assert buf.oldest == 6
    assert len(buf) == 4
    np.testing.assert_array_equal(buf.read(6, 4), [6, 7, 8, 9])
    assert buf.overruns == 6
    assert buf.consumed == 6


def test_write_greater_than_capacity_after_partial_fill() -> None:
    buf = filled(4, 3)
    buf.write(ramp(3, 9))
    assert buf.written == 12
    np.testing.assert_array_equal(buf.read(8, 4), [8, 9, 10, 11])


def test_empty_write_changes_nothing() -> None:
    buf = filled(4, 3)
    assert buf.write(np.empty(0, dtype=np.float32)) == 3
    assert buf.written == 3
    np.testing.assert_array_equal(buf.read(0, 3), [0, 1, 2])


def test_write_across_the_seam() -> None:
    buf = filled(5, 3)
    buf.write(ramp(3, 4))  # slots 3, 4, 0, 1
    assert buf.oldest == 2
    np.testing.assert_array_equal(buf.read(2, 5), [2, 3, 4, 5, 6])


def test_many_small_writes_wrap_repeatedly() -> None:
    buf = RingBuffer(7)
    pos = 0
    for size in [3, 5, 2, 7, 1, 6, 4]:
        buf.write(ramp(pos, size))
        pos += size
        held = len(buf)
        np.testing.assert_array_equal(buf.latest(held), ramp(pos - held, held))
    assert buf.written == pos


@pytest.mark.parametrize("dtype", [np.float64, np.int16, np.int32, np.float16])
def test_write_converts_dtype(dtype: type[np.generic]) -> None:
    buf = RingBuffer(4)
    buf.write(np.array([1, -2, 3], dtype=dtype))
    out = buf.read(0, 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([1.0, -2.0, 3.0], dtype=np.float32))


def test_write_float64_rounds_to_float32() -> None:
    buf = RingBuffer(2)
    buf.write(np.array([0.1, 1e-3]))
    np.testing.assert_array_equal(buf.read(0, 2), np.array([0.1, 1e-3], dtype=np.float32))


def test_write_does_not_keep_a_reference_to_the_input() -> None:
    buf = RingBuffer(4)
    data = ramp(0, 3)
    buf.write(data)
    data[:] = -1.0
    np.testing.assert_array_equal(buf.read(0, 3), [0, 1, 2])


@pytest.mark.parametrize("shape", [(), (2, 3), (1, 1, 4)])
def test_write_rejects_non_1d(shape: tuple[int, ...]) -> None:
    buf = RingBuffer(8)
    with pytest.raises(ValueError, match="samples must be 1-D"):
        buf.write(np.zeros(shape, dtype=np.float32))
    assert buf.written == 0


# --- reads -------------------------------------------------------------------------------------


def test_read_spanning_the_seam() -> None:
    buf = filled(5, 8)  # holds [3, 8) in slots 3, 4, 0, 1, 2
    np.testing.assert_array_equal(buf.read(3, 5), [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(buf.read(4, 2), [4, 5])
    np.testing.assert_array_equal(buf.read(5, 3), [5, 6, 7])
    np.testing.assert_array_equal(buf.read(4, 0), np.empty(0, dtype=np.float32))


def test_read_returns_an_independent_contiguous_copy() -> None:
    buf = filled(5, 8)
    out = buf.read(3, 5)
    assert out.dtype == np.float32
    assert out.shape == (5,)
    assert out.flags["C_CONTIGUOUS"]
    assert out.flags["OWNDATA"]
    out[:] = -1.0
    np.testing.assert_array_equal(buf.read(3, 5), [3, 4, 5, 6, 7])
    single = buf.read(3, 1)  # fits without crossing the seam
    single[:] = -1.0
    np.testing.assert_array_equal(buf.read(3, 1), [3])


def test_read_empty_window_at_the_edges() -> None:
    buf = filled(4, 10)
    assert buf.read(6, 0).shape == (0,)
    assert buf.read(10, 0).shape == (0,)
    with pytest.raises(WindowOverwritten):
        buf.read(5, 0)
    with pytest.raises(WindowNotWritten):
        buf.read(11, 0)


def test_read_overwritten_message() -> None:
    buf = RingBuffer(661500)
    buf.write(np.zeros(961500, dtype=np.float32))
    with pytest.raises(WindowOverwritten) as excinfo:
        buf.read(0, 220500)
    assert str(excinfo.value) == (
        "samples [0, 220500) were overwritten; buffer holds [300000, 961500)"
    )
    assert isinstance(excinfo.value, WindowUnavailable)


def test_read_partially_overwritten_window() -> None:
    buf = filled(4, 10)
    with pytest.raises(WindowOverwritten, match=r"^samples \[5, 8\) were overwritten; "):
        buf.read(5, 3)


def test_read_not_written_message() -> None:
    buf = filled(8, 5)
    with pytest.raises(WindowNotWritten) as excinfo:
        buf.read(3, 4)
    assert str(excinfo.value) == "samples [3, 7) are not written yet; buffer holds [0, 5)"
    assert isinstance(excinfo.value, WindowUnavailable)


def test_read_after_wrap_not_written() -> None:
    buf = filled(4, 10)
    with pytest.raises(
        WindowNotWritten,
        match=r"^samples \[8, 12\) are not written yet; buffer holds \[6, 10\)$",
    ):
        buf.read(8, 4)


@pytest.mark.parametrize(
    ("start", "n", "message"),
    [
        (-1, 1, "start must be >= 0"),
        (0, -1, r"n must be in \[0, 4\]"),
        (0, 5, r"n must be in \[0, 4\]"),
    ],
)
def test_read_bad_arguments(start: int, n: int, message: str) -> None:
    buf = filled(4, 4)
    with pytest.raises(ValueError, match=message):
        buf.read(start, n)


def test_latest() -> None:
    buf = filled(5, 8)
    np.testing.assert_array_equal(buf.latest(5), [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(buf.latest(2), [6, 7])
    assert buf.latest(0).shape == (0,)
    out = buf.latest(3)
    assert out.dtype == np.float32
    assert out.flags["OWNDATA"]


def test_latest_before_enough_is_written() -> None:
    buf = filled(8, 3)
    np.testing.assert_array_equal(buf.latest(3), [0, 1, 2])
    with pytest.raises(WindowNotWritten) as excinfo:
        buf.latest(4)
    assert str(excinfo.value) == (
        "latest 4 samples requested but only 3 are written; buffer holds [0, 3)"
    )


@pytest.mark.parametrize("n", [-1, 9])
def test_latest_bad_arguments(n: int) -> None:
    buf = filled(8, 8)
    with pytest.raises(ValueError, match=r"n must be in \[0, 8\]"):
        buf.latest(n)


# --- consume and overruns ----------------------------------------------------------------------


def test_consume_is_monotonic_idempotent_and_clamped() -> None:
    buf = filled(10, 6)
    buf.consume(4)
    assert buf.consumed == 4
    buf.consume(4)
    assert buf.consumed == 4
    buf.consume(2)
    assert buf.consumed == 4
    buf.consume(-3)
    assert buf.consumed == 4
    buf.consume(100)
    assert buf.consumed == 6
    buf.write(ramp(6, 2))
    assert buf.consumed == 6
    buf.consume(100)
    assert buf.consumed == 8


def test_no_overrun_when_reader_keeps_up() -> None:
    buf = RingBuffer(4)
    for pos in range(0, 40, 3):
        buf.write(ramp(pos, 3))
        np.testing.assert_array_equal(
            buf.read(buf.consumed, buf.written - buf.consumed),
            ramp(buf.consumed, buf.written - buf.consumed),
        )
        buf.consume(buf.written)
    assert buf.overruns == 0
    assert buf.consumed == buf.written


def test_overruns_count_samples_lost_unread() -> None:
    buf = RingBuffer(4)
    buf.write(ramp(0, 4))
    assert (buf.overruns, buf.consumed) == (0, 0)
    buf.consume(1)
    buf.write(ramp(4, 3))  # oldest 0 -> 3: samples 1 and 2 lost unread
    assert buf.oldest == 3
    assert buf.overruns == 2
    assert buf.consumed == 3
    buf.consume(7)
    buf.write(ramp(7, 2))  # oldest 3 -> 5: all already consumed
    assert buf.overruns == 2
    assert buf.consumed == 7
    buf.write(ramp(9, 10))  # oldest 5 -> 15: samples 7..14 lost unread
    assert buf.oldest == 15
    assert buf.overruns == 10
    assert buf.consumed == 15


def test_overrun_partly_consumed() -> None:
    buf = filled(4, 4)
    buf.consume(2)
    buf.write(ramp(4, 3))  # oldest 0 -> 3: only sample 2 lost unread
    assert buf.overruns == 1
    assert buf.consumed == 3


def test_consume_never_falls_behind_oldest() -> None:
    buf = filled(4, 12)
    assert buf.consumed == buf.oldest == 8
    buf.consume(5)
    assert buf.consumed == 8


# --- model-based property test -----------------------------------------------------------------


class RingBufferModel(RuleBasedStateMachine):
    """Compare RingBuffer against a plain list of every sample ever written."""

    def __init__(self) -> None:
        super().__init__()
        self.buf = RingBuffer(1)
        self.capacity = 1
        self.samples: list[float] = []
        self.consumed_flags: list[bool] = []
        self.cursor = 0
        self.overruns = 0

    @initialize(capacity=st.integers(min_value=1, max_value=16))
    def make(self, capacity: int) -> None:
        self.buf = RingBuffer(capacity)
        self.capacity = capacity

    @property
    def model_oldest(self) -> int:
        return max(0, len(self.samples) - self.capacity)

    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        size = data.draw(st.integers(min_value=0, max_value=3 * self.capacity), label="size")
        new = [float(len(self.samples) + i) for i in range(size)]
        old_oldest = self.model_oldest
        self.samples.extend(new)
        self.consumed_flags.extend([False] * size)
        for i in range(old_oldest, self.model_oldest):
            if not self.consumed_flags[i]:
                self.overruns += 1
                self.consumed_flags[i] = True
        self.cursor = max(self.cursor, self.model_oldest)
        assert self.buf.write(np.array(new, dtype=np.float64)) == len(self.samples)

    @rule(data=st.data())
    def consume(self, data: st.DataObject) -> None:
        upto = data.draw(st.integers(min_value=-2, max_value=len(self.samples) + 5), label="upto")
        for i in range(max(0, min(upto, len(self.samples)))):
            self.consumed_flags[i] = True
        self.cursor = max(self.cursor, min(upto, len(self.samples)))
        self.buf.consume(upto)

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        start = data.draw(
            st.integers(min_value=0, max_value=len(self.samples) + self.capacity), label="start"
        )
        n = data.draw(st.integers(min_value=0, max_value=self.capacity), label="n")
        if start < self.model_oldest:
            with pytest.raises(WindowOverwritten):
                self.buf.read(start, n)
        elif start + n > len(self.samples):
            with pytest.raises(WindowNotWritten):
                self.buf.read(start, n)
        else:
            out = self.buf.read(start, n)
            assert out.dtype == np.float32
            assert out.tolist() == self.samples[start : start + n]

    @precondition(lambda self: self.samples)
    @rule(data=st.data())
    def read_at_edges(self, data: st.DataObject) -> None:
        start = data.draw(st.sampled_from([self.model_oldest, len(self.samples)]), label="start")
        n = len(self.samples) - start
        assert self.buf.read(start, n).tolist() == self.samples[start:]

    @rule(data=st.data())
    def latest(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(min_value=0, max_value=self.capacity), label="n")
        if n > len(self.samples):
            with pytest.raises(WindowNotWritten):
                self.buf.latest(n)
        else:
            assert self.buf.latest(n).tolist() == self.samples[len(self.samples) - n :]

    @invariant()
    def counters_match(self) -> None:
        assert self.buf.capacity == self.capacity
        assert self.buf.written == len(self.samples)
        assert self.buf.oldest == self.model_oldest
        assert len(self.buf) == len(self.samples) - self.model_oldest
        assert self.buf.consumed == self.cursor
        assert self.buf.overruns == self.overruns
        unread = len(self.samples) - self.cursor
        assert self.consumed_flags == [True] * self.cursor + [False] * unread


RingBufferModel.TestCase.settings = settings(
    max_examples=200, stateful_step_count=30, deadline=None, database=None
)
TestRingBufferModel = RingBufferModel.TestCase


# --- 16-bit PCM storage ----------------------------------------------------------------------


def test_pcm16_storage_is_exact_for_16_bit_audio_and_halves_the_memory() -> None:
    rng = np.random.default_rng(3)
    pcm = rng.integers(-32768, 32768, size=50).astype(np.int16)
    samples = pcm.astype(np.float32) / 32768.0
    buf = RingBuffer(16, pcm16=True)
    assert buf.pcm16 and not RingBuffer(16).pcm16
    assert buf._buf.nbytes == RingBuffer(16)._buf.nbytes // 2
    buf.write(samples[:30])
    buf.write(samples[30:])  # wraps around
    got = buf.read(34, 16)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, samples[34:])
    np.testing.assert_array_equal(buf.latest(5), samples[-5:])
    assert repr(buf) == "RingBuffer(capacity=16, pcm16, held=[34, 50), consumed=34, overruns=34)"


def test_pcm16_rounds_to_the_nearest_step_and_clips_to_full_scale() -> None:
    step = 1.0 / 32768
    buf = RingBuffer(8, pcm16=True)
    buf.write(np.array([0.3 * step, 0.7 * step, -1.6 * step, 1.0, 1.5, -1.0, -2.0, np.nan]))
    want = [0.0, step, -2 * step, 1 - step, 1 - step, -1.0, -1.0, 0.0]
    np.testing.assert_array_equal(buf.read(0, 8), np.array(want, np.float32))
    buf.write(np.array([np.inf, -np.inf]))
    np.testing.assert_array_equal(buf.latest(2), np.array([1 - step, -1.0], np.float32))
