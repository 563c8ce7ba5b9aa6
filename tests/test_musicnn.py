"""Tests for stream_server.inference.musicnn: features, network, converted weights, golden
outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
import torchaudio.functional as AF
from safetensors import safe_open

from stream_server.errors import ModelLoadError
from stream_server.inference.musicnn import (
    HOP_LENGTH,
    MIN_SAMPLES,
    MSD_TAGS,
    MTT_TAGS,
    N_FFT,
    N_MELS,
    PATCH_FRAMES,
    PATCH_SAMPLES,
    SAMPLE_RATE,
    TEACHERS_DIR,
    FrontendBlock,
    Musicnn,
    MusicnnFeatures,
    MusicnnNet,
    cut_patches,
    load_musicnn,
    slaney_mel_filters,
)

F64 = npt.NDArray[np.float64]


# --- deterministic test signals (also fed to musicnn's TensorFlow extractor) -------------------


def tone_sequence(seconds: float = 3.0) -> npt.NDArray[np.float32]:
    """A C-major arpeggio of decaying harmonic tones, 0.25 s a note, at 16 kHz."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    note = 0.25
    steps = (0, 4, 7, 12, 16, 12, 7, 4)
    out = np.zeros_like(t)
    for k in range(int(seconds / note)):
        seg = (t >= k * note) & (t < (k + 1) * note)
        local = t[seg] - k * note
        freq = 261.63 * 2 ** (steps[k % len(steps)] / 12)
        for h in (1, 2, 3, 4):
            out[seg] += 0.2 / h * np.exp(-6 * local) * np.sin(2 * np.pi * h * freq * local)
    result: npt.NDArray[np.float32] = out.astype(np.float32)
    return result


def noise_bursts(seconds: float = 6.0, seed: int = 0) -> npt.NDArray[np.float32]:
    """White noise struck twice a second and decaying (a noise beat), fixed seed, at 16 kHz."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    envelope = np.exp(-12 * np.mod(t, 0.5))
    result: npt.NDArray[np.float32] = (0.3 * envelope * rng.standard_normal(n)).astype(np.float32)
    return result


SIGNALS = {"tones": tone_sequence, "noise": noise_bursts}

# Tag probabilities of the converted models for SIGNALS: the top tags, highest first, with their
# probabilities, and the mean over all 50 tags. They were checked against musicnn's TensorFlow
# reference (musicnn.extractor.extractor on the same float32 samples) when the weights were
# converted (see tools/convert_musicnn.py): every tag probability agreed to within 3e-6.
GOLDEN: dict[tuple[str, str], tuple[tuple[tuple[str, float], ...], float]] = {
    ("msd", "tones"): (
        (
            ("electronic", 0.68678),
            ("electro", 0.28671),
            ("indie", 0.20106),
            ("electronica", 0.18924),
        ),
        0.04009,
    ),
    ("msd", "noise"): (
        (("electronic", 0.31682), ("electro", 0.18180), ("80s", 0.16294), ("rock", 0.16164)),
        0.03575,
    ),
    ("mtt", "tones"): (
        (("electronic", 0.66489), ("techno", 0.41229), ("synth", 0.38096), ("slow", 0.13562)),
        0.04151,
    ),
    ("mtt", "noise"): (
        (("drums", 0.46803), ("rock", 0.41560), ("beat", 0.19913), ("fast", 0.14826)),
        0.04141,
    ),
}
GOLDEN_ATOL = 2e-4


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def msd() -> Musicnn:
    return load_musicnn("msd")


@pytest.fixture(scope="module")
def mtt() -> Musicnn:
    return load_musicnn("mtt")


# --- features ----------------------------------------------------------------------------------


def numpy_hz_to_mel(hz: F64) -> F64:
    """librosa.hz_to_mel(htk=False), written out."""
    logstep = np.log(6.4) / 27.0
    mel = hz / (200.0 / 3)
    high = hz >= 1000.0
    mel[high] = 15.0 + np.log(hz[high] / 1000.0) / logstep
    return mel


def numpy_mel_to_hz(mel: F64) -> F64:
    """librosa.mel_to_hz(htk=False), written out."""
    logstep = np.log(6.4) / 27.0
    hz = (200.0 / 3) * mel
    high = mel >= 15.0
    hz[high] = 1000.0 * np.exp(logstep * (mel[high] - 15.0))
    return hz


def numpy_slaney_mel(sr: int, n_fft: int, n_mels: int) -> npt.NDArray[np.float32]:
    """librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels) (fmin 0, fmax sr/2, Slaney)."""
    fftfreqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    top = numpy_hz_to_mel(np.array([sr / 2.0]))[0]
    mel_f = numpy_mel_to_hz(np.linspace(0.0, top, n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, fftfreqs.size), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    return weights  # (n_mels, n_fft // 2 + 1)


def numpy_musicnn_log_mel(y: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """musicnn's extractor features, the librosa formulas in numpy: ``(frames, n_mels)``."""
    padded = np.pad(y, N_FFT // 2, mode="reflect")
    frames = 1 + (padded.size - N_FFT) // HOP_LENGTH
    index = np.arange(N_FFT)[None, :] + HOP_LENGTH * np.arange(frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    spec = np.fft.rfft(window * padded[index], axis=-1).astype(np.complex64)
    power = np.abs(spec) ** 2  # (frames, freqs), float32
    mel = power @ numpy_slaney_mel(SAMPLE_RATE, N_FFT, N_MELS).T
    return np.log10(10000 * mel.astype(np.float16).astype(np.float32) + 1)


def test_mel_filters_match_librosa_formula() -> None:
    ours = slaney_mel_filters().numpy()
    assert ours.shape == (N_FFT // 2 + 1, N_MELS)
    np.testing.assert_allclose(ours, numpy_slaney_mel(SAMPLE_RATE, N_FFT, N_MELS).T, atol=1e-8)
    audio = AF.melscale_fbanks(
        N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, N_MELS, SAMPLE_RATE, norm="slaney", mel_scale="slaney"
    )
    np.testing.assert_allclose(ours, audio.numpy(), atol=1e-6)


def test_log_mel_matches_numpy_formula() -> None:
    rng = np.random.default_rng(3)
    y = (0.2 * rng.standard_normal(SAMPLE_RATE // 2)).astype(np.float32)
    y += tone_sequence(0.5)
    ours = MusicnnFeatures()(torch.from_numpy(y)[None])[0].numpy()
    expected = numpy_musicnn_log_mel(y)
    assert ours.shape == expected.shape == (y.size // HOP_LENGTH + 1, N_MELS)
    # Summation order may rarely move a mel power across a float16 rounding boundary: one float16
    # step (at most 2**-10 relative) is at most 4.3e-4 after log10.
    np.testing.assert_allclose(ours, expected, rtol=0, atol=5e-4)
    assert np.mean(np.abs(ours - expected) > 1e-5) < 0.01


def test_frames_and_patches() -> None:
    features = MusicnnFeatures()
    for samples, frames, patches in (
        (MIN_SAMPLES, 187, 1),
        (PATCH_SAMPLES, 188, 1),
        (192000, 751, 4),
    ):
        mel = features(torch.zeros(2, samples))
        assert mel.shape == (2, frames, N_MELS)
        assert cut_patches(mel).shape == (2, patches, PATCH_FRAMES, N_MELS)
    mel = torch.arange(2 * 400 * N_MELS, dtype=torch.float32).view(2, 400, N_MELS)
    assert torch.equal(cut_patches(mel)[1, 1], mel[1, 187:374])
    with pytest.raises(ValueError, match="187 frames"):
        cut_patches(mel[:, :186])


def test_silence_gives_zero_features() -> None:
    mel = MusicnnFeatures()(torch.zeros(1, PATCH_SAMPLES))
    assert torch.equal(mel, torch.zeros_like(mel))


# --- network -----------------------------------------------------------------------------------


def test_network_shapes_untrained() -> None:
    net = MusicnnNet().eval()
    with torch.no_grad():
        out = net(torch.rand(3, PATCH_FRAMES, N_MELS))
    assert out.logits.shape == (3, 50)
    assert out.penultimate.shape == (3, 200)
    assert out.mean_pool.shape == out.max_pool.shape == (3, 753)
    assert sum(p.numel() for p in net.parameters()) == 787_159


def test_frontend_takes_the_max_before_batch_norm_exactly(msd: Musicnn) -> None:
    # Eval mode pools over frequency before the batch norm; musicnn normalises, then pools.
    patches = msd.patches(torch.from_numpy(noise_bursts(3.0))[None])[0]
    blocks = [block for block in msd.net.frontend if isinstance(block, FrontendBlock)]
    assert len(blocks) == 5
    assert any(bool((block.norm.weight < 0).any()) for block in blocks)
    with torch.no_grad():
        x = msd.net.input_norm(patches.unsqueeze(1))
        for block in blocks:
            conv = block.conv(torch.nn.functional.pad(x, (0, 0, *block.pad)))
            plain = block.norm(torch.relu(conv)).amax(dim=3)
            torch.testing.assert_close(block(x), plain, atol=1e-6, rtol=0)


def test_training_mode_runs() -> None:
    net = MusicnnNet().train()
    out = net(torch.rand(2, PATCH_FRAMES, N_MELS))
    out.logits.sum().backward()
    first = net.frontend[0]
    assert isinstance(first, FrontendBlock)
    assert first.conv.weight.grad is not None


def test_outputs_shapes_and_ranges(msd: Musicnn) -> None:
    wave = torch.from_numpy(np.stack([noise_bursts(6.0, seed=1), noise_bursts(6.0, seed=2)]))
    wave[1] += torch.from_numpy(tone_sequence(6.0))
    with torch.no_grad():
        out = msd(wave)
        alone = msd(wave[1:])
    assert out.tags.shape == (2, 50)
    assert out.taggram.shape == (2, 2, 50)
    assert out.penultimate.shape == (2, 200)
    assert out.mean_pool.shape == out.max_pool.shape == (2, 753)
    assert ((out.taggram >= 0) & (out.taggram <= 1)).all()
    torch.testing.assert_close(out.tags, out.taggram.mean(dim=1))
    assert (out.max_pool >= out.mean_pool - 1e-5).all()
    for field in out._fields:
        assert torch.isfinite(getattr(out, field)).all()
        torch.testing.assert_close(
            getattr(alone, field)[0], getattr(out, field)[1], atol=1e-5, rtol=0
        )


def test_rejects_short_or_unbatched_audio(msd: Musicnn) -> None:
    with pytest.raises(ValueError, match="samples"):
        msd(torch.zeros(1, MIN_SAMPLES - 1))
    with pytest.raises(ValueError, match="batch, samples"):
        msd(torch.zeros(PATCH_SAMPLES))


# --- converted weights -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "tags"), [("msd", MSD_TAGS), ("mtt", MTT_TAGS)])
def test_converted_weights_load(name: str, tags: tuple[str, ...]) -> None:
    model = load_musicnn(name)
    assert model.tags == tags
    assert len(tags) == len(set(tags)) == 50
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    state = model.net.state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key
    for key in (k for k in state if k.endswith("running_var")):
        assert (state[key] > 0).all(), key
    folder = TEACHERS_DIR / f"musicnn_{name}"
    weights = folder / "model.safetensors"
    assert weights.stat().st_size < 5_000_000
    with safe_open(str(weights), framework="pt") as f:
        keys = set(f.keys())
        assert all(f.get_tensor(k).dtype == torch.float32 for k in keys)
    assert keys == {k for k in state if not k.endswith("num_batches_tracked")}
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert tuple(config["tags"]) == tags
    assert config["sample_rate"] == SAMPLE_RATE
    licence = (folder / "LICENSE").read_text(encoding="utf-8")
    assert "Universitat Pompeu Fabra" in licence
    assert "Permission to use, copy, modify, and/or distribute" in licence
    assert (folder / "README.md").is_file()


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load musicnn"):
        load_musicnn("msd", directory=tmp_path)
    config = json.loads((TEACHERS_DIR / "musicnn_msd" / "config.json").read_text(encoding="utf-8"))
    config["sample_rate"] = 22050
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (tmp_path / "model.safetensors").write_bytes(
        (TEACHERS_DIR / "musicnn_msd" / "model.safetensors").read_bytes()
    )
    with pytest.raises(ModelLoadError, match="sample_rate"):
        load_musicnn("msd", directory=tmp_path)
    with pytest.raises(ModelLoadError, match="no musicnn model 'gtzan'"):
        load_musicnn("gtzan")
    assert load_musicnn(directory=TEACHERS_DIR / "musicnn_mtt").tags == MTT_TAGS


# --- golden outputs ----------------------------------------------------------------------------


@pytest.mark.parametrize(("model_name", "signal"), sorted(GOLDEN))
def test_golden_tags(model_name: str, signal: str, msd: Musicnn, mtt: Musicnn) -> None:
    model = {"msd": msd, "mtt": mtt}[model_name]
    with torch.no_grad():
        tags = model(torch.from_numpy(SIGNALS[signal]())[None]).tags[0]
    top, mean = GOLDEN[(model_name, signal)]
    ranked = [model.tags[i] for i in tags.argsort(descending=True)[: len(top)].tolist()]
    assert ranked == [tag for tag, _ in top]
    for tag, probability in top:
        assert math.isclose(float(tags[model.tags.index(tag)]), probability, abs_tol=GOLDEN_ATOL)
    assert math.isclose(float(tags.mean()), mean, abs_tol=GOLDEN_ATOL)
