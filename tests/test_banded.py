"""musicnn's timbral filters as banded bfloat16 products: the same maps as the convolutions (to
bfloat16 rounding), rows independent of their batch, and a runner that uses them only where a
CPU has AMX tiles and half precision is asked, scoring real music as float32 does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stream_server.config import load_config
from stream_server.core.windows import WindowJob
from stream_server.inference.banded import (
    NARROW_GROUP,
    ROWS,
    BandedMax,
    amx_available,
    banded_matrix,
    group_starts,
)
from stream_server.inference.facts import session_params
from stream_server.inference.loading import load_configured_model
from stream_server.inference.model import LoadedModel
from stream_server.inference.musicnn import FRONTEND_FILTERS, N_MELS, FrontendBlock, use_banded
from stream_server.inference.musicnn_stream import StreamTokens
from stream_server.inference.musicnn_tokens import MusicnnTokens
from stream_server.inference.preprocessing import MusicnnPreprocessing
from stream_server.inference.runner import InferenceRunner
from stream_server.inference.speech import SpeechDetector, for_inference, load_detector
from stream_server.media.decode import decode_mono
from tests.helpers.audio import clips, music

TIMBRAL = [spec for spec in FRONTEND_FILTERS if spec[1] > 1]
#: bfloat16 keeps 8 significant bits: a product of rounded inputs and weights, rounded once,
#: lands within a few parts in a thousand of the map's range (0.4-0.6 % seen).
BF16_TOL = 0.02
NEEDS_AMX = pytest.mark.skipif(
    not amx_available(), reason="this CPU has no AMX tiles: the runner keeps float32"
)


def _reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The direct convolution's maximum over frequency, float32."""
    return F.conv2d(x, weight).amax(dim=3)


@pytest.mark.parametrize("group", [None, 0, 1, 8, 13])
@pytest.mark.parametrize(("frames", "bands", "maps"), TIMBRAL)
def test_the_banded_product_is_the_convolutions_maximum_in_float32(
    frames: int, bands: int, maps: int, group: int | None
) -> None:
    """In float32 the products give the convolution's maxima, whatever the grouping of the
    frequency positions (13 does not divide 59 or 30: the last group overlaps)."""
    gen = torch.Generator().manual_seed(bands)
    weight = torch.randn(maps, 1, frames, bands, generator=gen)
    x = torch.randn(3, 1, 40, N_MELS, generator=gen)
    banded = BandedMax(weight, N_MELS, torch.float32, group=group)
    if group is None:
        assert banded.group == (NARROW_GROUP if bands == 38 else N_MELS - bands + 1)
    got = banded(x)
    assert got.shape == (3, maps, 40 - frames + 1) and got.dtype == torch.float32
    torch.testing.assert_close(got, _reference(x, weight), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("positions", "group"), [(59, 8), (30, 8), (30, 30), (7, 3), (5, 9)])
def test_groups_cover_every_position_and_stay_inside(positions: int, group: int) -> None:
    g = min(group, positions)
    starts = group_starts(positions, g)
    covered = {s + i for s in starts for i in range(g)}
    assert covered == set(range(positions))
    assert starts == sorted(set(starts)) and starts[-1] + g == positions


@pytest.mark.parametrize(("frames", "bands", "maps"), TIMBRAL)
def test_the_bfloat16_product_is_within_rounding_of_float32(
    frames: int, bands: int, maps: int
) -> None:
    gen = torch.Generator().manual_seed(7)
    weight = torch.randn(maps, 1, frames, bands, generator=gen) * 0.05
    x = torch.randn(5, 1, 90, N_MELS, generator=gen)  # 5 x 84 rows: two chunks of ROWS
    want = _reference(x, weight)
    got = BandedMax(weight, N_MELS)(x)
    error = (got - want).abs().max() / want.abs().max()
    assert 0 < error < BF16_TOL  # rounded, and not by much


def test_a_rows_result_does_not_depend_on_the_rest_of_its_batch() -> None:
    """A stream's features are the same whichever streams share its call (no batch noise)."""
    gen = torch.Generator().manual_seed(3)
    banded = BandedMax(torch.randn(204, 1, 7, 38, generator=gen), N_MELS)
    x = torch.randn(6, 1, 70, N_MELS, generator=gen)  # 6 x 64 rows: ROWS falls inside row 4
    assert ROWS < 6 * 64
    together = banded(x)
    for b in (0, 3, 5):
        assert torch.equal(banded(x[b : b + 1]), together[b : b + 1])


def test_bad_shapes_are_refused_with_what_was_expected() -> None:
    with pytest.raises(ValueError, match="kernel"):
        banded_matrix(torch.zeros(4, 2, 7, 38), 8)
    with pytest.raises(ValueError, match="group"):
        banded_matrix(torch.zeros(4, 1, 7, 38), 0)
    with pytest.raises(ValueError, match="1 to 96 bands"):
        BandedMax(torch.zeros(4, 1, 7, 97), N_MELS)
    banded = BandedMax(torch.zeros(4, 1, 7, 38), N_MELS)
    with pytest.raises(ValueError, match="96 mels"):
        banded(torch.zeros(1, 1, 20, 95))
    with pytest.raises(ValueError, match=">= 7 frames"):
        banded(torch.zeros(1, 1, 6, 96))


def test_use_banded_sets_the_timbral_blocks_only_and_can_undo_it() -> None:
    features = MusicnnTokens(_pre())
    blocks = [b for b in features.modules() if isinstance(b, FrontendBlock)]
    x = torch.randn(2, 1, 60, N_MELS) * 2
    before = [block(x) for block in blocks]
    assert use_banded(features, True) == len(TIMBRAL)
    assert [b.banded is not None for b in blocks] == [spec[1] > 1 for spec in FRONTEND_FILTERS]
    for block, want in zip(blocks, before, strict=True):
        error = (block(x) - want).abs().max() / want.abs().max()
        assert error < BF16_TOL
    assert use_banded(features, False) == len(TIMBRAL)
    for block, want in zip(blocks, before, strict=True):
        assert torch.equal(block(x), want)


def _pre() -> MusicnnPreprocessing:
    rng = np.random.default_rng(0)
    return MusicnnPreprocessing(
        window_seconds=1.0,
        pooling="mean",
        context="stream",
        feature_mean=tuple(rng.normal(size=753).tolist()),
        feature_std=tuple(rng.uniform(0.5, 2.0, 753).tolist()),
    )


def test_the_stream_table_still_equals_the_whole_clip_with_banded_filters() -> None:
    """Incremental = whole clip holds with bfloat16 products as with float32 convolutions; the
    only difference is where a value sits on a bfloat16 rounding edge (inputs cut differently
    round apart in their last float32 bits)."""
    features = MusicnnTokens(_pre())
    use_banded(features, True)
    rng = np.random.default_rng(5)
    clip = music(6.0, 16000, channels=1, seed=5)[:, 0].copy()
    table = StreamTokens(features, 3)
    table.capacity = 64
    table._ring = torch.zeros(table._ring.shape[0], table._ring.shape[1], 64)
    offset = 0
    while offset < clip.size:
        size = int(rng.choice([255, 4096, 16000, int(rng.integers(1, 30000))]))
        table.push(["s"], [clip[offset : offset + size]])
        offset += size
    whole = features.stream_raw(torch.from_numpy(clip)[None])[0]
    written = table.count("s")
    got = table._ring[table.slot_of["s"]][:, [t % table.capacity for t in range(written)]]
    assert got.shape == whole.shape
    torch.testing.assert_close(got, whole, rtol=BF16_TOL, atol=BF16_TOL)


def test_the_folded_speech_detector_gives_the_same_probabilities() -> None:
    detector = load_detector(sample_rate=16000)
    wave = torch.from_numpy(music(5.0, 16000, channels=1, seed=2)[:, 0].copy())[None]
    song = torch.from_numpy(decode_mono(str(clips("jazz", 1)[0]), 16000)[:80000].copy())[None]
    batch = torch.cat([wave, song * 0.5])
    with torch.inference_mode():
        want = detector(batch)
        folded = detector.folded()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(batch), want, rtol=0, atol=1e-5)
        assert (folded.folded(bfloat16=True)(batch) - want).abs().max() < 0.02
    other = torch.nn.Linear(2, 1).train()
    assert for_inference(other) is other and not other.training
    assert isinstance(for_inference(detector), SpeechDetector)


@pytest.fixture(scope="module")
def shipped() -> LoadedModel:
    return load_configured_model(load_config())


def _probs(model: LoadedModel, half: bool, audio: list[np.ndarray]) -> tuple[str, np.ndarray]:
    """Eight windows one hop apart of each clip, scored as live streams; the runner's
    precision and ``(streams * 8, labels)`` probabilities."""
    params = session_params(load_config(), model)
    window, hop = params.window_samples, params.hop_samples
    runner = InferenceRunner(model, torch.device("cpu"), half=half, level_samples=hop)
    out = []
    for i in range(8):
        end = window + i * hop
        windows = np.stack([a[end - window : end] for a in audio])
        jobs = [WindowJob(f"s{b}", windows[b], end, 0.0) for b in range(len(audio))]
        out.append(runner.score(windows, jobs).probs)
    use_banded(model.classifier, False)  # the module-scoped model back as loaded
    return runner.precision, np.concatenate(out)


@NEEDS_AMX
def test_the_shipped_model_scores_real_music_alike_in_bfloat16(shipped: LoadedModel) -> None:
    """Windows of real clips of every genre: the same leading genre, probabilities close."""
    genres = shipped.labels
    audio = [decode_mono(str(path), 16000)[: 16000 * 13] for g in genres for path in clips(g, 2)]
    precision, want = _probs(shipped, False, audio)
    assert precision == "float32"
    precision, got = _probs(shipped, True, audio)
    assert precision == "bfloat16"
    assert (got.argmax(axis=1) == want.argmax(axis=1)).mean() >= 0.97
    assert np.abs(got - want).max() < 0.1


def test_half_precision_on_a_cpu_without_amx_stays_float32(
    shipped: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stream_server.inference.runner.amx_available", lambda: False)
    runner = InferenceRunner(shipped, torch.device("cpu"), half=True)
    assert runner.precision == "float32" and not runner.bfloat16
    blocks = [b for b in shipped.classifier.modules() if isinstance(b, FrontendBlock)]
    assert blocks and all(b.banded is None for b in blocks)
