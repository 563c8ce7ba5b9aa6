"""A timbral filter's convolution and maximum over frequency as bfloat16 matrix products.

musicnn's timbral filters (:class:`~stream_server.inference.musicnn.FrontendBlock`) convolve a
``(frames, mels)`` map with a ``(kernel_frames, bands)`` kernel (7 x 38 and 7 x 67, 204 maps
each) and keep each map's maximum over the ``mels - bands + 1`` frequency positions. On a CPU they
are most of the front-end's work, and a direct float32 convolution writes its whole
``(n, maps, frames, positions)`` output to memory before the maximum reads it back.

The same numbers are matrix products: an output frame's ``kernel_frames`` input frames over the
mels a group of frequency positions sees, flattened (``7 x 96`` values for one group of all the
positions), times a banded matrix ``(kernel_frames * span, group * maps)`` that holds the kernel
once per position of the group (zeros elsewhere). The products do more multiply-adds than the
convolution (for one group, 2.5 times for 38 bands, 1.4 times for 67; groups of
:data:`NARROW_GROUP` bring the 38-band filter to 1.3 times), but they are plain GEMMs, which a CPU
with AMX tiles runs in bfloat16 at several times its float32 rate; rows go in chunks of
:data:`ROWS` so that each chunk's ``(ROWS, positions, maps)`` product is still in cache when its
maximum is taken. On the 2-core development machine (AMX), 16 streams' 64 frames took 15 + 7 ms
for the two filters against 58 + 31 ms for the float32 convolutions.

Precision: inputs and weights are rounded to bfloat16 (8 significant bits), sums are accumulated
in float32 and rounded to bfloat16 once; the maps come out within about 1 % of their range of the
float32 convolution. A row's result does not depend on the other rows of its call (GEMM rows are
computed alike whatever their number), so a stream's features do not depend on which streams
shared its batch.

Shapes: ``x`` ``(n, 1, frames, mels)`` float32; ``weight`` ``(maps, 1, kernel_frames, bands)``;
result ``(n, maps, frames - kernel_frames + 1)`` float32, without the convolution's bias.
"""

from __future__ import annotations

from typing import Final

import torch
from torch import Tensor

__all__ = ["NARROW_GROUP", "ROWS", "BandedMax", "amx_available", "banded_matrix", "group_starts"]

#: Rows per matrix product (output frames times their groups): at most 256 x 59 x 204
#: bfloat16 products (6 MiB) before the maximum.
ROWS: Final = 256

#: Frequency positions per product for a kernel narrower than half the mels (the 38-band
#: filter: one matrix over all 96 mels would be 60 % zeros). Measured on 2 cores: 0.34 against
#: 1.13 ms for one stream's 16 frames, 15.1 against 16.1 ms for 16 streams' 64; the 67-band
#: filter is faster as one matrix (7.0 against 8.9 ms).
NARROW_GROUP: Final = 8


def amx_available() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in AMX tiles (oneDNN uses them for torch's
    bfloat16 ``matmul``); without them a bfloat16 product does not pay for its extra work."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if check is None:
        return False
    try:
        return bool(check())
    except RuntimeError:
        return False


def group_starts(positions: int, group: int) -> list[int]:
    """First frequency position of each group of ``group`` positions covering ``positions``;
    the last group ends at the last position (it may overlap the one before: a maximum does not
    mind)."""
    starts = list(range(0, positions - group + 1, group))
    if starts[-1] + group < positions:
        starts.append(positions - group)
    return starts


def banded_matrix(weight: Tensor, group: int, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """``(maps, 1, kernel_frames, bands)`` kernel -> ``(span * kernel_frames, group * maps)``
    with ``span = bands + group - 1``: row ``b * kernel_frames + t`` (input band ``b`` of the
    group's span, frame ``t``), column ``p * maps + m``: map ``m``'s kernel at position ``p`` of
    the group."""
    maps, channels, frames, bands = weight.shape
    if channels != 1 or group < 1:
        raise ValueError(
            f"expected a (maps, 1, frames, bands) kernel and a group >= 1: {weight.shape}"
        )
    kernel = weight[:, 0].permute(2, 1, 0)  # (bands, frames, maps)
    span = bands + group - 1
    out = torch.zeros(span, frames, group, maps, dtype=weight.dtype, device=weight.device)
    for p in range(group):
        out[p : p + bands, :, p, :] = kernel
    return out.reshape(span * frames, group * maps).to(dtype)


class BandedMax:
    """``(n, 1, frames, mels)`` -> ``(n, maps, frames - kernel_frames + 1)`` float32: each map's
    maximum over frequency of the (unpadded, bias-free) convolution with ``weight``.

    ``group`` frequency positions share one product (0: all of them, one banded matrix; the
    default: :data:`NARROW_GROUP` for a kernel narrower than half the mels, else all); each
    group's input is its ``bands + group - 1`` mels, so a narrow kernel in small groups
    multiplies fewer zeros than in one matrix over every mel, at the price of copying the
    overlapping mels once per group. The matrix is the same for every group.
    """

    def __init__(
        self,
        weight: Tensor,
        mels: int,
        dtype: torch.dtype = torch.bfloat16,
        group: int | None = None,
    ) -> None:
        self.maps, _, self.frames, bands = weight.shape
        if not 1 <= bands <= mels:
            raise ValueError(f"expected a kernel of 1 to {mels} bands: {tuple(weight.shape)}")
        self.mels = mels
        positions = mels - bands + 1
        if group is None:
            group = NARROW_GROUP if 2 * bands < mels else 0
        self.group = min(group or positions, positions)
        self.span = bands + self.group - 1
        self.starts = group_starts(positions, self.group)
        self.matrix = banded_matrix(weight.detach(), self.group, dtype)

    def __call__(self, x: Tensor) -> Tensor:
        n, channels, frames, mels = x.shape
        if channels != 1 or mels != self.mels or frames < self.frames:
            raise ValueError(
                f"expected (n, 1, >= {self.frames} frames, {self.mels} mels), got {tuple(x.shape)}"
            )
        out_frames = frames - self.frames + 1
        rows = n * out_frames
        # (rows, mels, kernel_frames): each output frame's input frames, per mel.
        seen = x[:, 0].to(self.matrix.dtype).unfold(1, self.frames, 1).reshape(rows, mels, -1)
        out = torch.empty((rows, self.maps), dtype=torch.float32, device=x.device)
        step = max(1, ROWS // len(self.starts))
        for start in range(0, rows, step):
            part = seen[start : start + step]
            groups = [part[:, s : s + self.span] for s in self.starts]
            stacked = groups[0] if len(groups) == 1 else torch.stack(groups, dim=1)
            product = stacked.reshape(-1, self.span * self.frames) @ self.matrix
            out[start : start + step] = product.view(len(part), -1, self.maps).amax(dim=1)
        return out.view(n, out_frames, self.maps).transpose(1, 2)
