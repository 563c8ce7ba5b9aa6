"""The model genrecast ships: present, small, documented, trained, and right on held-out clips."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from stream_server.config import load_config
from stream_server.inference.classify import classify_audio
from stream_server.inference.facts import session_params
from stream_server.inference.model import (
    DEFAULT_GENRES,
    DEFAULT_MODEL_DIR,
    LoadedModel,
    resolve_model,
)
from stream_server.inference.musicnn import TEACHERS_DIR
from stream_server.inference.preprocessing import MusicnnPreprocessing
from stream_server.inference.runner import InferenceRunner
from stream_server.media.decode import decode_mono
from stream_server.training.dataset import SPLIT_FILE, Clip, load_split
from tests.helpers.constants import SHARED_GENRES, TIMEOUT_S

MAX_BYTES = 25 * 1024 * 1024


@pytest.fixture(scope="module")
def default_model() -> LoadedModel:
    return resolve_model("")


@pytest.fixture(scope="module")
def held_out() -> list[Clip]:
    """The first three validation clips of each genre (path order): never seen in training."""
    if not SHARED_GENRES.is_dir():
        pytest.skip(f"shared data set not found at {SHARED_GENRES}")
    clips = load_split(DEFAULT_MODEL_DIR / SPLIT_FILE, "val")
    first: dict[str, list[Clip]] = {}
    for clip in clips:
        first.setdefault(clip.label, []).append(clip)
    return [c for g in sorted(first) for c in first[g][:3]]


def test_shipped_files_and_size() -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "audio_preprocessing.json",
        SPLIT_FILE,
        "training.json",
        "evaluation.json",
        "confusion.png",
        "README.md",
    ):
        assert (DEFAULT_MODEL_DIR / name).is_file(), name
    # the model is its own files and the frozen front-end it names
    front_end = (
        TEACHERS_DIR
        / MusicnnPreprocessing.from_json(
            json.loads((DEFAULT_MODEL_DIR / "audio_preprocessing.json").read_text())
        ).weights
    )
    files = [*DEFAULT_MODEL_DIR.iterdir(), *front_end.iterdir()]
    total = sum(p.stat().st_size for p in files if p.is_file())
    assert total <= MAX_BYTES, f"{total / 2**20:.1f} MiB shipped"


def test_default_model_is_the_trained_one(default_model: LoadedModel) -> None:
    assert default_model.trained
    assert default_model.source == str(DEFAULT_MODEL_DIR)
    assert default_model.labels == DEFAULT_GENRES
    assert type(default_model.classifier.model).__name__ == "ViTForImageClassification"
    # the hybrid: its tokens come from the frozen musicnn front-end that ships with the project
    pre = default_model.preprocessing
    assert isinstance(pre, MusicnnPreprocessing) and pre.weights == "musicnn_msd"
    assert len(pre.feature_mean) == len(pre.feature_std) == 753


def test_split_is_by_file_and_stratified() -> None:
    train = load_split(DEFAULT_MODEL_DIR / SPLIT_FILE, "train")
    val = load_split(DEFAULT_MODEL_DIR / SPLIT_FILE, "val")
    assert not {c.path for c in train} & {c.path for c in val}
    for genre in DEFAULT_GENRES:
        n_train = sum(c.label == genre for c in train)
        n_val = sum(c.label == genre for c in val)
        assert n_val >= 1 and n_train > n_val, genre


def test_model_card_quotes_the_evaluation() -> None:
    """The card's figures are the ones ``genrecast evaluate`` wrote, per genre included."""
    card = (DEFAULT_MODEL_DIR / "README.md").read_text(encoding="utf-8")
    report = json.loads((DEFAULT_MODEL_DIR / "evaluation.json").read_text(encoding="utf-8"))
    # the targets the default model must clear on unseen artists
    assert report["clip_accuracy"] >= 0.85
    assert report["macro_f1"] >= 0.80
    for genre, figures in report["per_genre"].items():
        if figures["clips"] >= 10:  # recall below 0.60 only where too few clips say so
            assert figures["recall"] >= 0.60, genre
    assert f"{report['clip_accuracy']:.3f}" in card
    assert f"{report['window_accuracy']:.3f}" in card
    assert f"{report['macro_f1']:.3f}" in card
    assert set(report["per_genre"]) == set(DEFAULT_GENRES)
    for genre, figures in report["per_genre"].items():
        assert f"| {genre} | {figures['clips']} | {figures['precision']:.2f} | " in card, genre
    assert "genrecast train" in card and "genrecast evaluate" in card


def test_held_out_clips_are_recognised(default_model: LoadedModel, held_out: list[Clip]) -> None:
    """Through the live windowing, as ``classify`` runs it: far above chance (10 %), on a subset
    that over-weights the small genres."""
    config = load_config(None)
    config = config.replace(engine=dataclasses.replace(config.engine, hop_s=2.5))
    runner = InferenceRunner(default_model, torch.device("cpu"))
    params = session_params(config, default_model)
    right = []
    for clip in held_out:
        audio = decode_mono(str(SHARED_GENRES / clip.path), params.model_rate)
        _, probs, _, _ = classify_audio(audio, runner, params)
        guess = default_model.labels[int(np.argmax(probs.mean(axis=0)))]
        right.append(guess == clip.label)
    assert len(held_out) == 29  # disco has only two validation clips
    assert sum(right) / len(right) >= 0.55, list(
        zip([c.path for c in held_out], right, strict=True)
    )


def test_classify_needs_no_configuration(held_out: list[Clip]) -> None:
    clip = next(c for c in held_out if c.label == "classical")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream_server.tools.cli",
            "classify",
            str(SHARED_GENRES / clip.path),
        ],
        capture_output=True,
        text=True,
        timeout=6 * TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    top = done.stdout.split("top genres:")[1].split()[0]
    assert top == "classical", done.stdout
    assert str(DEFAULT_MODEL_DIR) in done.stdout
