"""musicnn tokens of whole streams, computed once per frame, for many streams at once.

A hybrid model whose preprocessing says ``context = "stream"`` sees a stream's frames as one long
signal, not each window on its own: frame ``j`` of a stream covers its samples ``[256 j,
256 j + 512)`` (16 kHz), its front-end and mid-end features see the frames around it whatever
window they end up in (zeros before the stream's first frame, as musicnn's "same" padding), and
tokens pool runs of ``token_frames`` frames on the stream's own grid (frames ``16 t .. 16 t + 15``
make token ``t``). A window is the last ``tokens`` tokens complete when it is due.

So every frame is computed once, however many windows it falls in: for a 1 s hop over 5 s
windows, a fifth of the front-end work of computing each window on its own. The price is a
look-ahead: a frame's features need
:data:`~stream_server.inference.musicnn_tokens.LOOKAHEAD_FRAMES` (73) frames after it (the
temporal filters reach 64 frames ahead, the three mid-end layers 3 each), so a window's newest
token ends about 1.2 s (plus up to one token, 0.26 s) before its newest sample.

Two ways to the same numbers (a test holds them equal at random chunk sizes):

- :meth:`~stream_server.inference.musicnn_tokens.MusicnnTokens.stream_raw`: a whole clip at once
  (training, evaluation).
- :class:`StreamTokens`: the stream table. State for every live stream in arrays indexed by a
  slot (a ring of tokens, the last frames each layer needs), new audio of a whole batch of
  streams pushed in one call per layer, any chunk sizes.

Shapes: audio ``(samples,)`` float32 at 16 kHz; mel frames ``(batch, 96, frames)``; features
``(batch, 753, frames)``; raw tokens ``(batch, token_features, tokens)``; model input
``(batch, features, 1, tokens)`` standardised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, cast

import numpy as np
import torch
from torch import Tensor

from stream_server.inference.musicnn import (
    HOP_LENGTH,
    N_FFT,
    FrontendBlock,
    MidendBlock,
    log_mel,
)
from stream_server.inference.musicnn_tokens import (
    FRONTEND_LEFT,
    FRONTEND_RIGHT,
    MIDEND_SIDE,
    MusicnnTokens,
)

__all__ = ["FRAME_BUCKET", "GROWTH_MIN", "PIECE", "StreamTokens"]

#: Most samples of one stream computed in one call (1.024 s at 16 kHz: 64 frames).
PIECE: Final = 16384

#: A call computes its frames in multiples of this many (zero frames after each row's real
#: ones): the layers see 4 widths (16, 32, 48, 64 frames) whatever the chunk sizes, so the
#: kernels compiled for each shape (oneDNN keeps one per shape on a CPU) are few, and the
#: warm-up at load (:meth:`~stream_server.inference.runner.InferenceRunner.warm_up`) meets them.
FRAME_BUCKET: Final = 16

#: Fewest slots a table adds when it is full; it adds a quarter of its slots when that is more,
#: so a table of many streams holds at most a quarter more slots than it ever had streams
#: (doubling would hold up to twice: 2,048 slots, 311 MiB, for 1,100 streams instead of 1,103).
GROWTH_MIN: Final = 8


def _more(rows: Tensor, slots: int, device: torch.device) -> Tensor:
    """``rows`` on ``device`` with zero rows added up to ``slots`` rows."""
    rows = rows.to(device)
    return torch.cat([rows, rows.new_zeros(slots - rows.shape[0], *rows.shape[1:])])


def _windows(buf: Tensor, start: Tensor, length: int) -> Tensor:
    """``buf[b, :, start[b] : start[b] + length]`` for every row: ``(batch, C, length)``."""
    index = start[:, None] + torch.arange(length, device=buf.device)[None, :]
    return torch.gather(buf, 2, index[:, None, :].expand(-1, buf.shape[1], -1))


class _Stage:
    """One layer over time for every slot: ``fn`` maps ``(batch, C, left + right + k)`` input
    frames to ``(batch, C', k)`` outputs (output ``m`` centred on input ``left + m``).

    Each slot keeps the last ``left + right`` input frames. A new slot starts with zeros there
    (the stream's "same" padding) and its first ``right`` outputs are dropped (they are centred
    on that padding, not on frames of the stream).
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], channels: int, left: int, right: int):
        self.fn = fn
        self.width = left + right
        self.right = right
        self.channels = channels
        self.hist = torch.zeros(0, channels, self.width)
        self.skip = torch.zeros(0, dtype=torch.long)

    def grow(self, slots: int, device: torch.device) -> None:
        self.hist = _more(self.hist, slots, device)
        self.skip = _more(self.skip, slots, device)

    def reset(self, slots: Tensor) -> None:
        self.hist[slots] = 0.0
        self.skip[slots] = self.right

    def push(self, slots: Tensor, new: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
        """``new`` ``(batch, C, k)`` frames, of which the first ``count[b]`` are real, for
        ``slots`` -> outputs ``(batch, C', k)`` left-aligned, the first ``count'[b]`` real."""
        buf = torch.cat([self.hist[slots], new], dim=2)
        out = self.fn(buf)
        self.hist[slots] = _windows(buf, count, self.width)
        skip = self.skip[slots]
        drop = torch.minimum(skip, count)
        self.skip[slots] = skip - drop
        if bool(drop.any()):
            out = _windows(torch.nn.functional.pad(out, (0, out.shape[2])), drop, out.shape[2])
        return out, count - drop


@dataclass
class _Ragged:
    """Rows of different lengths, left-aligned and zero-padded: ``data`` ``(batch, C, k)``, the
    first ``count[b]`` of row ``b`` real."""

    data: Tensor
    count: Tensor


class StreamTokens:
    """The stream table: incremental musicnn tokens for many streams (see the module docstring).

    :meth:`push` takes each stream's new audio and :meth:`window` gives each stream's last
    ``tokens`` tokens as the model's input. Streams are named by a key; :meth:`release` frees
    a stream's slot, :meth:`restart` starts a stream again from nothing (after a gap). Only one
    thread may use a table (the engine's).

    Slots grow by a quarter, at least :data:`GROWTH_MIN` (each growth copies the table); every
    tensor lives on ``device`` (each stream's few samples short of a frame wait in a host array).
    Per slot, float32: the front-end's last 127 mel frames (96 bands), each mid-end layer's last
    6 frames, the running sum (and maximum) of the frames short of a token, and the ring of
    ``tokens`` tokens: about 150 KiB for the shipped model (5 s windows, mean pooling).
    """

    def __init__(self, features: MusicnnTokens, tokens: int, *, device: torch.device | None = None):
        pre = features.pre
        self.features = features
        self.tokens = tokens
        self.token_frames = pre.token_frames
        self.pooling = pre.pooling
        self.device = device or torch.device("cpu")
        net = features.net
        self._frontend_blocks = [cast(FrontendBlock, block) for block in net.frontend]
        self._midend_blocks = [cast(MidendBlock, block) for block in net.midend]
        bands = int(features.mel.fbanks.shape[1])
        frontend = sum(block.conv.out_channels for block in self._frontend_blocks)
        midend = [block.conv.out_channels for block in self._midend_blocks]
        width = net.features
        self.width = width
        # Token ring: the last ``tokens`` tokens, all a window reads (a push keeps only its newest
        # ``capacity`` tokens, so any push fits).
        self.capacity = tokens
        self.slot_of: dict[str, int] = {}
        self._free: list[int] = []
        self._slots = 0
        self._tail = np.zeros((0, N_FFT - 1), dtype=np.float32)
        self._tail_n = np.zeros(0, dtype=np.int64)
        self._stages = [
            _Stage(self._frontend, bands, FRONTEND_LEFT, FRONTEND_RIGHT),
            _Stage(self._midend(0), frontend, MIDEND_SIDE, MIDEND_SIDE),
            _Stage(self._midend(1), frontend + midend[0], MIDEND_SIDE, MIDEND_SIDE),
            _Stage(self._midend(2), frontend + midend[0] + midend[1], MIDEND_SIDE, MIDEND_SIDE),
        ]
        pooled = 2 * width if pre.pooling != "mean" else width
        # A slot's frames short of a token: their count, sum and (pooling with "max") maximum.
        self._sum = torch.zeros(0, width)
        self._max: Tensor | None = torch.zeros(0, width) if pre.pooling != "mean" else None
        self._pending_n = torch.zeros(0, dtype=torch.long)
        self._ring = torch.zeros(0, pooled, self.capacity)
        self._written = torch.zeros(0, dtype=torch.long)
        self._grow(8)

    # -- slots --------------------------------------------------------------------------------

    def _grow(self, slots: int) -> None:
        more = slots - self._slots
        dev = self.device
        self._tail = np.concatenate([self._tail, np.zeros((more, N_FFT - 1), np.float32)])
        self._tail_n = np.concatenate([self._tail_n, np.zeros(more, np.int64)])
        for stage in self._stages:
            stage.grow(slots, dev)
        self._sum = _more(self._sum, slots, dev)
        if self._max is not None:
            self._max = _more(self._max, slots, dev)
        self._pending_n = _more(self._pending_n, slots, dev)
        self._ring = _more(self._ring, slots, dev)
        self._written = _more(self._written, slots, dev)
        self._free.extend(range(slots - 1, self._slots - 1, -1))
        self._slots = slots

    def _take(self, key: str) -> int:
        if not self._free:
            self._grow(self._slots + max(GROWTH_MIN, self._slots // 4))
        slot = self._free.pop()
        self.slot_of[key] = slot
        self._clear([slot])
        return slot

    @torch.inference_mode()
    def _clear(self, slots: Sequence[int]) -> None:
        index = torch.tensor(slots, dtype=torch.long, device=self.device)
        self._tail_n[list(slots)] = 0
        for stage in self._stages:
            stage.reset(index)
        self._pending_n[index] = 0
        self._sum[index] = 0.0
        if self._max is not None:
            self._max[index] = -torch.inf
        self._written[index] = 0

    def __contains__(self, key: str) -> bool:
        return key in self.slot_of

    def __len__(self) -> int:
        return len(self.slot_of)

    def release(self, key: str) -> None:
        """Forget a stream (no error if unknown)."""
        slot = self.slot_of.pop(key, None)
        if slot is not None:
            self._free.append(slot)

    @torch.inference_mode()
    def restart(self, key: str) -> None:
        """Start a stream again from nothing: its next audio is a new stream's first."""
        if key in self.slot_of:
            self._clear([self.slot_of[key]])

    def count(self, key: str) -> int:
        """Tokens the stream has so far."""
        return int(self._written[self.slot_of[key]]) if key in self.slot_of else 0

    # -- layers ---------------------------------------------------------------------------------

    def _frontend(self, buf: Tensor) -> Tensor:
        """``(batch, 96, 127 + k)`` normalised mel -> ``(batch, 561, k)`` front-end features."""
        x = buf.transpose(1, 2).unsqueeze(1)
        k = buf.shape[2] - FRONTEND_LEFT - FRONTEND_RIGHT
        outs = []
        for block in self._frontend_blocks:
            before, after = block.pad
            start = FRONTEND_LEFT - before
            outs.append(block.valid(x[:, :, start : start + k + before + after]))
        return torch.cat(outs, dim=1)

    def _midend(self, layer: int) -> Callable[[Tensor], Tensor]:
        """Mid-end layer ``layer``: ``(batch, carried, 6 + k)`` -> ``(batch, carried + 64, k)``,
        the carried features of the centre frames and the layer's output (residual after the
        first)."""
        block = self._midend_blocks[layer]
        side = MIDEND_SIDE

        def fn(buf: Tensor) -> Tensor:
            k = buf.shape[2] - 2 * side
            centre = buf[:, :, side : side + k]
            if layer == 0:
                return torch.cat([centre, block.valid(buf)], dim=1)
            last = buf[:, -block.conv.in_channels :]
            out = block.valid(last) + centre[:, -block.conv.in_channels :]
            return torch.cat([centre, out], dim=1)

        return fn

    # -- audio in, windows out ----------------------------------------------------------------

    @torch.inference_mode()
    def push(self, keys: Sequence[str], audio: Sequence[np.ndarray]) -> None:
        """New audio for each stream: ``audio[b]`` ``(samples,)`` float32 at 16 kHz, any length
        (a stream not seen before starts here).

        The batch's rows are computed padded to the longest, so long audio goes in pieces of
        :data:`PIECE` samples, one piece of each stream per call: a stream that brings 5 s (its
        first window, or windows skipped under load) costs its own frames, not 5 s for every
        stream of the batch.
        """
        if len(set(keys)) != len(keys):
            raise ValueError("a stream may appear only once in a push")
        for key in keys:
            if key not in self.slot_of:
                self._take(key)
        rounds = max((-(-a.size // PIECE) for a in audio), default=0)
        for r in range(rounds):
            part = [(k, a[r * PIECE : (r + 1) * PIECE]) for k, a in zip(keys, audio, strict=True)]
            part = [(k, a) for k, a in part if a.size]
            self._push([k for k, _ in part], [a for _, a in part])

    def _push(self, keys: Sequence[str], audio: Sequence[np.ndarray]) -> None:
        """:meth:`push` of pieces, one per stream."""
        if not keys:
            return
        slots = [self.slot_of[k] if k in self.slot_of else self._take(k) for k in keys]
        rows = np.asarray(slots, dtype=np.int64)
        lengths = self._tail_n[rows] + np.array([a.size for a in audio], dtype=np.int64)
        frames = np.where(lengths >= N_FFT, (lengths - N_FFT) // HOP_LENGTH + 1, 0)
        # Computed frames, rounded up to whole buckets (the rows' counts say which are real).
        shaped = -(-int(frames.max()) // FRAME_BUCKET) * FRAME_BUCKET
        width = (shaped - 1) * HOP_LENGTH + N_FFT
        buf = np.zeros((len(keys), max(int(lengths.max()), width)), dtype=np.float32)
        for b, (slot, new) in enumerate(zip(slots, audio, strict=True)):
            held = int(self._tail_n[slot])
            buf[b, :held] = self._tail[slot, :held]
            buf[b, held : held + new.size] = new
        for b, slot in enumerate(slots):
            rest = int(lengths[b] - frames[b] * HOP_LENGTH)
            self._tail[slot, :rest] = buf[b, lengths[b] - rest : lengths[b]]
            self._tail_n[slot] = rest
        if not frames.any():
            return
        wave = torch.from_numpy(buf[:, :width])
        mel = log_mel(
            wave.to(self.device), self.features.mel.window, self.features.mel.fbanks, center=False
        )
        x = self.features.net.input_norm(mel.unsqueeze(1)).squeeze(1).transpose(1, 2)
        index = torch.from_numpy(rows).to(self.device)
        count = torch.from_numpy(frames).to(self.device)
        for stage in self._stages:
            x, count = stage.push(index, x, count)
        self._add_frames(index, _Ragged(x, count))

    def _add_frames(self, index: Tensor, frames: _Ragged) -> None:
        """Final features ``(batch, 753, k)`` -> pooled into each slot's ring of tokens.

        A slot's frames short of a token are kept as their running sum (and maximum), not as
        frames: row ``b``'s new frames are placed after its ``held`` pending ones (zeros, and
        ``-inf`` for the maximum, stand in for them), runs of ``token_frames`` pooled, and the
        pending sum and maximum added to each row's first run.
        """
        tf = self.token_frames
        held = self._pending_n[index]
        total = held + frames.count
        made = total // tf
        runs = int(made.max()) + 1  # the last run of each row is its new pending one
        pos = torch.arange(runs * tf, device=self.device)[None, :] - held[:, None]
        real = (pos >= 0) & (pos < frames.count[:, None])
        place = pos.clamp(0, frames.data.shape[2] - 1)[:, None, :]
        picked = torch.gather(frames.data, 2, place.expand(-1, self.width, -1))
        shape = (len(index), self.width, runs, tf)
        last = made[:, None, None].expand(-1, self.width, 1)  # each row's pending run
        sums = torch.where(real[:, None, :], picked, 0.0).reshape(shape).sum(dim=3)
        sums[:, :, 0] += self._sum[index]
        self._sum[index] = sums.gather(2, last).squeeze(2)
        pooled = [sums / tf]
        if self._max is not None:
            maxes = torch.where(real[:, None, :], picked, -torch.inf).reshape(shape).amax(dim=3)
            maxes[:, :, 0] = torch.maximum(maxes[:, :, 0], self._max[index])
            self._max[index] = maxes.gather(2, last).squeeze(2)
            pooled.append(maxes)
        self._pending_n[index] = total - made * tf
        if runs == 1:  # no row made a token
            return
        tokens = torch.cat(pooled, dim=1)  # (batch, pooled, runs): the first made[b] complete
        # Only the newest ``capacity`` tokens of one push are kept: no two land on one place.
        t = torch.arange(runs, device=self.device)[None, :]
        keep = (t < made[:, None]) & (t >= (made - self.capacity)[:, None])
        rows, cols = keep.nonzero(as_tuple=True)
        at = (self._written[index][rows] + cols) % self.capacity
        self._ring[index[rows], :, at] = tokens[rows, :, cols]
        self._written[index] += made

    @torch.inference_mode()
    def window(self, keys: Sequence[str]) -> Tensor:
        """The model input of each stream's newest window: ``(batch, features, 1, tokens)``
        standardised, tokens before the stream's start at 0."""
        index = torch.tensor([self.slot_of[k] for k in keys], dtype=torch.long, device=self.device)
        written = self._written[index]
        place = written[:, None] - self.tokens + torch.arange(self.tokens, device=self.device)
        place = place % self.capacity
        raw = self._ring[index[:, None], :, place].transpose(1, 2)  # (batch, pooled, tokens)
        return self.features.standardise(raw, written.clamp(max=self.tokens))
