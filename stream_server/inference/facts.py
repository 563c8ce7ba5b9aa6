"""What the server knows of a model without its weights, and how it windows streams for it.

Plain data and arithmetic, without torch: an ingest worker of ``genrecast serve --workers N``
gets these facts from the engine process (which holds the weights) and windows its streams by them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from stream_server.config import Config
from stream_server.core.session import SessionParams

if TYPE_CHECKING:
    from stream_server.inference.features import Preprocessing

__all__ = ["ModelFacts", "ModelInfo", "session_params", "window_seconds"]


class ModelFacts(Protocol):
    """What the server tells of a model and windows its streams by, without its weights:
    :class:`LoadedModel` and :class:`ModelInfo` both are."""

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def preprocessing(self) -> Preprocessing: ...

    @property
    def source(self) -> str: ...

    @property
    def trained(self) -> bool: ...


@dataclass(frozen=True)
class ModelInfo:
    """A model's :class:`ModelFacts` alone (an ingest worker of ``serve --workers N`` gets them
    from the engine process, which holds the weights)."""

    labels: tuple[str, ...]
    preprocessing: Preprocessing
    source: str
    trained: bool

    @staticmethod
    def of(model: ModelFacts) -> ModelInfo:
        return ModelInfo(model.labels, model.preprocessing, model.source, model.trained)


def window_seconds(config: Config, model: ModelFacts) -> float:
    """Window length in seconds: ``engine.window_s`` if set, else the model's own."""
    return config.engine.window_s or model.preprocessing.window_seconds


def session_params(config: Config, model: ModelFacts) -> SessionParams:
    """Windowing, labels and smoothing for ``model`` under ``config``."""
    pre, eng, sm, gate = model.preprocessing, config.engine, config.smoothing, config.gate
    rate = pre.sample_rate
    window = round(window_seconds(config, model) * rate)
    hop = round(eng.hop_s * rate)
    display = [config.model.labels.get(label, label) for label in model.labels]
    labels = tuple(dict.fromkeys(display))  # merged labels appear once, in first-seen order
    return SessionParams(
        model_rate=rate,
        window_samples=window,
        hop_samples=hop,
        buffer_samples=max(round(eng.buffer_s * rate), window + hop),
        labels=labels,
        top_k=eng.top_k,
        smoothing=sm.params(),
        label_map=tuple(labels.index(d) for d in display) if len(labels) < len(display) else (),
        gate=gate.params(),
        backdate_max_s=sm.backdate_max_s,
        offline=config.offline.params(),
        feed_samples=round(eng.feed_s * rate),
    )
