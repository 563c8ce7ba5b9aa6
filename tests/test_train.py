"""Tests for stream_server.training.train: real clips on disk, real HF models, saved and loaded
back."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from stream_server.config import Config
from stream_server.core.session import StreamSession
from stream_server.errors import DatasetError, GenrecastError
from stream_server.inference.facts import session_params
from stream_server.inference.features import LogMelImage, make_features
from stream_server.inference.model import load_model, save_checkpoint
from stream_server.training.dataset import SPLIT_FILE, Clip, genre_weights, load_split
from stream_server.training.optim import lr_at, soft_cross_entropy
from stream_server.training.recipes import ARCHITECTURES, Architecture, TrainOptions
from stream_server.training.train import (
    REPORT_FILE,
    STATE_FILE,
    TEACHER_FILE,
    ConvTeacher,
    build_model,
    draw_grid_windows,
    train,
    training_images,
)
from tests.helpers.audio import encode_audio, music
from tests.helpers.constants import TIMEOUT_S

RATE = 22050
GENRES = ("drone", "noise", "whistle")

#: A recipe small enough to train in a second: 1 s windows, 32x32 images.
TINY = Architecture("deit", 32, 1, 2, 16, (32, 32), 1, 1.0, dropout=0.0)
TINY_VIT = Architecture("vit", 32, 1, 2, 16, (32, 32), 1, 1.0, dropout=0.0)
TINY_LEVIT = Architecture(
    "levit", 32, 3, 2, 16, (64, 64), 1, 1.0, stages=((16, 1, 2), (24, 1, 2), (32, 1, 2))
)


def _genre_audio(genre: str, seconds: float, seed: int) -> np.ndarray:
    """Three easily told apart "genres": low tones, noise bursts, high tones. ``(n, 1)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    if genre == "drone":
        wave = 0.4 * np.sin(2 * np.pi * (80 + 20 * rng.random()) * t)
    elif genre == "noise":
        wave = 0.3 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 2 * t) > 0)
    else:
        wave = 0.4 * np.sin(2 * np.pi * (3000 + 500 * rng.random()) * t)
    return wave.astype(np.float32).reshape(-1, 1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("genres")
    for g, genre in enumerate(GENRES):
        (root / genre).mkdir()
        for i in range(5):
            seconds = 2.0 if i else 0.7  # one clip shorter than a window: padded, not dropped
            encode_audio(root / genre / f"{i}.wav", _genre_audio(genre, seconds, 10 * g + i), RATE)
    return root


def _opts(dataset: Path, out: Path, **kw: object) -> TrainOptions:
    base: dict[str, object] = {
        "data": str(dataset),
        "out": str(out),
        "epochs": 2,
        "teacher_epochs": 2,
        "batch_size": 8,
        "windows_per_clip": 4,
        "val_fraction": 0.4,
        "val_hop_seconds": 0.5,
        "cache_dir": str(out.parent / "cache"),
        "progress": False,
        "min_clips": 1,
    }
    base.update(kw)
    return TrainOptions(**base)  # type: ignore[arg-type]


# -- training features are serving features ------------------------------------------------------


def test_training_features_equal_serving_features(
    tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    """The windows a live stream produces, through the loaded checkpoint's features, give exactly
    the images the training loop computes for the same audio."""
    pre = TINY.preprocessing()
    model = build_model(TINY, GENRES)
    loaded = load_model(str(save_checkpoint(model, pre, tmp_path / "ckpt")))
    audio = music(4.0, rate=RATE, channels=1, seed=3)[:, 0].copy()

    config = make_config(engine={"hop_s": 0.5})
    params = session_params(config, loaded)
    session = StreamSession("s", params, sample_rate=RATE, channels=1, fmt="f32le")
    jobs = []
    for start in range(0, audio.size, 2205):
        job = session.feed(audio[start : start + 2205].tobytes())
        if job is not None:
            jobs.append(job)
    assert len(jobs) >= 5

    train_features = LogMelImage(pre)
    for job in jobs:
        start = job.end_sample - pre.window_samples
        crop = torch.from_numpy(audio[start : job.end_sample].copy()).unsqueeze(0)
        trained_on = training_images(train_features, crop)
        served = loaded.classifier.features(torch.from_numpy(job.window).unsqueeze(0))
        assert torch.equal(trained_on, served)
        with torch.inference_mode():
            direct = torch.softmax(model(pixel_values=trained_on).logits, dim=-1)
            torch.testing.assert_close(loaded.classifier(crop), direct)


def test_augmented_images_differ_but_keep_shape() -> None:
    features = LogMelImage(TINY.preprocessing())
    wave = torch.from_numpy(music(1.0, rate=RATE, channels=1)[:, 0].copy()).repeat(4, 1)
    gen = torch.Generator().manual_seed(0)
    opts = TrainOptions(data="", out="", noise_prob=1.0)
    aug = training_images(features, wave, gen, opts)
    plain = training_images(features, wave)
    assert aug.shape == plain.shape
    assert not torch.equal(aug, plain)


# -- pieces ---------------------------------------------------------------------------------------


def test_genre_weights_balance() -> None:
    clips = [Clip(f"a/{i}", "a") for i in range(8)] + [Clip(f"b/{i}", "b") for i in range(2)]
    uniform = genre_weights(clips, 0.0)
    np.testing.assert_allclose(uniform, np.full(10, 0.1))
    equal = genre_weights(clips, 1.0)
    assert math.isclose(equal[:8].sum(), 0.5) and math.isclose(equal[8:].sum(), 0.5)
    sqrt = genre_weights(clips, 0.5)
    assert math.isclose(sqrt.sum(), 1.0)
    assert 0.5 < sqrt[:8].sum() < 0.8  # between the two


def test_draw_grid_windows_crops_pads_and_takes_variants() -> None:
    ramp = np.arange(100, dtype=np.float32)
    audio = [ramp, np.ones(10, dtype=np.float32)]
    variants = [-ramp, -np.ones(10, dtype=np.float32)]
    rng = np.random.default_rng(0)
    idx, pos, waves = draw_grid_windows(audio, variants, np.array([0.5, 0.5]), 200, 20, 5, 0.3, rng)
    assert waves.shape == (200, 20) and waves.dtype == np.float32
    assert set(idx.tolist()) == {0, 1}
    flipped = 0
    for i, p, row in zip(idx, pos, waves, strict=True):
        if i == 0:  # a slice of the ramp at a grid start (0, 5, ..., 80), or of its variant
            sign = -1 if row[1] < row[0] else 1
            flipped += sign < 0
            assert np.array_equal(sign * row, np.arange(5 * p, 5 * p + 20, dtype=np.float32))
        else:  # the short clip, zero-padded, at its only start
            assert p == 0 and np.array_equal(np.abs(row), np.r_[np.ones(10), np.zeros(10)])
    assert set(pos[idx == 0].tolist()) == set(range(17))
    assert 0.15 < flipped / int((idx == 0).sum()) < 0.45  # about the variant share


def test_lr_schedule() -> None:
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-12)
    values = [lr_at(s, 100, 10, 1.0) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_soft_cross_entropy_matches_hard_labels() -> None:
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    got = soft_cross_entropy(logits, F.one_hot(labels, 4).float())
    torch.testing.assert_close(got, F.cross_entropy(logits, labels))


def test_conv_teacher_shapes() -> None:
    teacher = ConvTeacher(1, 5).eval()
    assert teacher(torch.randn(3, 1, 128, 224)).shape == (3, 5)
    assert teacher(torch.randn(2, 1, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_recipe_builds_and_round_trips(name: str, tmp_path: Path) -> None:
    arch = ARCHITECTURES[name]
    if arch.hidden_size > 256:
        arch = Architecture(arch.family, 32, 1, 2, arch.patch, arch.image_size, arch.channels, 1.0)
    model = build_model(arch, GENRES, seed=0).eval()
    pre = arch.preprocessing()
    loaded = load_model(str(save_checkpoint(model, pre, tmp_path / name)))
    assert type(loaded.classifier.model) is type(model)
    assert loaded.labels == GENRES
    assert loaded.preprocessing == pre
    wave = music(pre.window_seconds, rate=pre.sample_rate, channels=1)[:, 0].copy()
    wave = torch.from_numpy(wave).unsqueeze(0)
    with torch.inference_mode():
        direct = torch.softmax(model(pixel_values=make_features(pre)(wave)).logits, dim=-1)
        torch.testing.assert_close(loaded.classifier(wave), direct)


# -- whole runs -----------------------------------------------------------------------------------


def test_train_saves_a_loadable_checkpoint_and_resumes(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    seen: list[str] = []
    result = train(
        _opts(dataset, out, teacher="cnn"), TINY, on_epoch=lambda s: seen.append(s.phase)
    )
    assert seen == ["teacher", "teacher", "student", "student"]
    for name in ("config.json", "model.safetensors", "audio_preprocessing.json", SPLIT_FILE):
        assert (out / name).is_file(), name
    assert (out / TEACHER_FILE).is_file() and (out / STATE_FILE).is_file()

    # split by file, stratified: two of five clips per genre held out, none on both sides
    train_clips, val_clips = (
        load_split(out / SPLIT_FILE, "train"),
        load_split(out / SPLIT_FILE, "val"),
    )
    assert not {c.path for c in train_clips} & {c.path for c in val_clips}
    assert sorted(c.label for c in val_clips) == sorted(GENRES * 2)

    loaded = load_model(str(out))
    assert loaded.labels == GENRES
    assert loaded.preprocessing == TINY.preprocessing()
    assert type(loaded.classifier.model).__name__ == "DeiTForImageClassificationWithTeacher"
    report = json.loads((out / REPORT_FILE).read_text())
    assert [h["phase"] for h in report["history"]] == seen
    assert report["val_clips"] == {g: 2 for g in GENRES}
    assert report["architecture"]["hidden_size"] == TINY.hidden_size  # the recipe actually used
    assert result.history[-1].val_clip_accuracy == report["history"][-1]["val_clip_accuracy"]

    # resume: two more student epochs; the teacher is not trained again
    weights = load_file(str(out / "model.safetensors"))
    again = train(_opts(dataset, out, epochs=4, resume=True, teacher="cnn"), TINY)
    assert [h.phase for h in again.history] == [*seen, "student", "student"]
    assert [h.epoch for h in again.history if h.phase == "student"] == [1, 2, 3, 4]
    resumed = load_file(str(out / "model.safetensors"))
    assert weights.keys() == resumed.keys()
    assert any(not torch.equal(weights[k], resumed[k]) for k in weights)


def test_training_learns_separable_genres(dataset: Path, tmp_path: Path) -> None:
    result = train(
        _opts(
            dataset,
            tmp_path / "m",
            epochs=6,
            teacher_epochs=4,
            lr=3e-3,
            mixup_prob=0.0,
            teacher="cnn",
        ),
        TINY,
    )
    teacher = [h for h in result.history if h.phase == "teacher"]
    student = [h for h in result.history if h.phase == "student"]
    assert teacher[-1].val_clip_accuracy >= 2 / 3, result.history
    assert student[-1].val_window_accuracy >= 0.5, result.history  # chance is 1/3
    assert student[-1].loss < student[0].loss


def test_levit_trains_with_its_distillation_head(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "levit"
    result = train(_opts(dataset, out, epochs=2, teacher_epochs=1, teacher="cnn"), TINY_LEVIT)
    assert [h.phase for h in result.history] == ["teacher", "student", "student"]
    assert (out / TEACHER_FILE).is_file()
    loaded = load_model(str(out))
    assert type(loaded.classifier.model).__name__ == "LevitForImageClassificationWithTeacher"
    assert loaded.labels == GENRES and loaded.preprocessing == TINY_LEVIT.preprocessing()
    wave = torch.from_numpy(_genre_audio("drone", 1.0, 99)[:, 0].copy()).unsqueeze(0)
    probs = loaded.classifier(wave)
    assert probs.shape == (1, len(GENRES))
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))


def test_the_musicnn_teacher_scores_the_clips_and_teaches_the_student(
    dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "taught"
    result = train(_opts(dataset, out, epochs=2, teacher="musicnn"), TINY_LEVIT)
    assert [h.phase for h in result.history] == ["student", "student"]  # no teacher epochs
    assert result.teacher_val_clip_accuracy is not None
    assert result.teacher_val_clip_accuracy >= 2 / 3  # drone, noise and whistle are easy
    assert not (out / TEACHER_FILE).exists()
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["options"]["teacher"] == "musicnn"
    assert report["teacher_val_clip_accuracy"] == result.teacher_val_clip_accuracy
    assert load_model(str(out)).labels == GENRES


def test_levit_needs_a_square_image_and_stages() -> None:
    with pytest.raises(GenrecastError, match="square"):
        build_model(replace(TINY_LEVIT, image_size=(64, 32)), GENRES)
    with pytest.raises(GenrecastError, match="stages"):
        build_model(replace(TINY_LEVIT, stages=()), GENRES)


def test_same_seed_same_model(dataset: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        train(_opts(dataset, tmp_path / name, epochs=1), TINY_VIT)
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "a" / TEACHER_FILE).exists()  # a plain ViT has no teacher


def test_bad_options(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(GenrecastError, match="unknown architecture"):
        train(_opts(dataset, tmp_path / "x", arch="resnet"))
    with pytest.raises(GenrecastError, match="at least 1"):
        train(_opts(dataset, tmp_path / "x", epochs=0), TINY)
    with pytest.raises(DatasetError, match="two genres"):
        train(_opts(dataset, tmp_path / "x", genres=("drone",)), TINY)
    with pytest.raises(DatasetError, match="does not exist"):
        train(_opts(tmp_path / "nowhere", tmp_path / "x"), TINY)
    if not torch.cuda.is_available():
        with pytest.raises(GenrecastError, match="no CUDA"):
            train(_opts(dataset, tmp_path / "x", device="cuda"), TINY)


def test_resume_refuses_other_genres(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    train(_opts(dataset, out, epochs=1), TINY_VIT)
    with pytest.raises(GenrecastError, match="other genres"):
        train(_opts(dataset, out, epochs=2, resume=True, genres=("drone", "noise")), TINY_VIT)


# -- the command line -----------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_server.tools.cli", *args],
        capture_output=True,
        text=True,
        timeout=12 * TIMEOUT_S,
        check=False,
    )


def test_cli_train_then_evaluate(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-model"
    done = _cli(
        "train", "--data", str(dataset), "--out", str(out), "--arch", "vit-tiny",
        "--epochs", "1", "--windows-per-clip", "1", "--min-clips", "2", "--batch-size", "16",
        "--quiet", "--cache", str(tmp_path / "cache"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"model saved to {out}" in done.stdout
    assert "student epoch 1/1" in done.stderr

    done = _cli("evaluate", "--data", str(dataset), "--model", str(out), "--split", "val", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["clips"] == 3  # one of five clips per genre held out (--val-fraction 0.2)
    assert set(report["per_genre"]) == set(GENRES)
    for key in ("clip_accuracy", "window_accuracy", "macro_f1"):
        assert 0.0 <= report[key] <= 1.0
    history = json.loads((out / REPORT_FILE).read_text())["history"]
    assert report["clip_accuracy"] == pytest.approx(history[-1]["val_clip_accuracy"], abs=1e-4)

    done = _cli("train", "--data", str(tmp_path / "nowhere"), "--out", str(out), "--quiet")
    assert done.returncode == 2
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr
