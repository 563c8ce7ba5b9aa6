"""What a configuration serves: the genre model ``[model] path`` names, with the speech
detector ``[gate] speech_model`` names attached (fed at the genre model's sample rate)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from stream_server.config import Config
from stream_server.core.windows import ErrorCallback, ResultsCallback
from stream_server.inference.device import pick_device
from stream_server.inference.engine import Engine
from stream_server.inference.facts import session_params
from stream_server.inference.heap import trim_heap
from stream_server.inference.model import LoadedModel, resolve_model
from stream_server.inference.runner import InferenceRunner
from stream_server.inference.speech import DEFAULT_SPEECH_DIR, load_detector

#: ``[gate] speech_model`` value for no speech detector.
NO_SPEECH_MODEL = "none"


def load_configured_model(config: Config) -> LoadedModel:
    """The genre model and speech detector of ``config``.

    Without the gate, or with ``speech_model = "none"``, the model has no speech detector.

    Raises:
        ModelLoadError: either cannot be loaded.
    """
    model = resolve_model(config.model.path)
    directory = speech_model_dir(config)
    if directory is None:
        return model
    detector = load_detector(directory, model.preprocessing.sample_rate)
    return with_speech_detector(model, detector)


def speech_model_dir(config: Config) -> Path | None:
    """The directory of the speech detector ``config`` serves (``[gate] speech_model``, the
    shipped one for ``""``); ``None`` when the gate is off or ``speech_model`` is ``"none"``."""
    spec = config.gate.speech_model
    if not config.gate.enabled or spec == NO_SPEECH_MODEL:
        return None
    return Path(spec) if spec else DEFAULT_SPEECH_DIR


def with_speech_detector(loaded: LoadedModel, detector: nn.Module | None) -> LoadedModel:
    """``loaded`` with ``detector`` as its speech detector (``None``: without one).

    This is where a speech model is plugged in: the runner computes its ``(batch,)`` speech
    probabilities next to the genre probabilities of every batch (the interface is in
    :mod:`stream_server.core.gate`).
    """
    return dataclasses.replace(loaded, speech_detector=detector)


def configured_runner(config: Config, loaded: LoadedModel) -> InferenceRunner:
    """An :class:`~stream_server.inference.runner.InferenceRunner` of ``loaded`` as ``[engine]``
    says: device, precision, batch, the level over a hop and the catch-up."""
    cfg = config.engine
    params = session_params(config, loaded)
    return InferenceRunner(
        loaded,
        pick_device(cfg.device),
        half=cfg.half_precision,
        max_batch=cfg.max_batch,
        level_samples=params.hop_samples,
        catch_up_samples=round(cfg.catch_up_s * params.model_rate),
    )


def start_engine(
    config: Config,
    loaded: LoadedModel,
    *,
    on_results: ResultsCallback,
    on_error: ErrorCallback,
) -> Engine:
    """``loaded`` on the device ``engine.device`` picks, warmed up for every batch size, behind
    a started :class:`~stream_server.inference.engine.Engine` (its runner is ``.runner``)."""
    cfg = config.engine
    params = session_params(config, loaded)
    runner = configured_runner(config, loaded)
    runner.warm_up(params.window_samples, params.hop_samples)
    trim_heap()  # what the warm-up freed goes back: a fresh server is as small as it can be
    engine = Engine(
        runner,
        max_batch=cfg.max_batch,
        max_wait_s=cfg.max_wait_ms / 1000.0,
        on_results=on_results,
        on_error=on_error,
    )
    engine.start()
    return engine
