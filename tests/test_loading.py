"""Tests for stream_server.inference.loading: which genre model and speech detector a config
serves."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from stream_server.config import Config
from stream_server.errors import ModelLoadError
from stream_server.inference.loading import load_configured_model, speech_model_dir
from stream_server.inference.speech import DEFAULT_SPEECH_DIR, SpeechDetector


def test_the_speech_model_directory_follows_the_gate(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    assert speech_model_dir(make_config()) == DEFAULT_SPEECH_DIR
    assert speech_model_dir(make_config(gate={"speech_model": str(tmp_path)})) == tmp_path
    assert speech_model_dir(make_config(gate={"speech_model": "none"})) is None
    assert speech_model_dir(make_config(gate={"enabled": False})) is None


def test_the_configured_model_carries_the_configured_detector(
    make_config: Callable[..., Config], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    model = {"path": str(tiny_checkpoint)}
    served = load_configured_model(make_config(model=model))
    assert isinstance(served.speech_detector, SpeechDetector)
    assert served.speech_detector.sample_rate == served.preprocessing.sample_rate
    for gate in ({"speech_model": "none"}, {"enabled": False}):
        assert load_configured_model(make_config(model=model, gate=gate)).speech_detector is None
    with pytest.raises(ModelLoadError, match="speech detector"):
        load_configured_model(make_config(model=model, gate={"speech_model": str(tmp_path)}))
