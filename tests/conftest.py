"""Shared fixtures: a tiny ViT checkpoint saved to disk, test configs.

Plain helpers (synthetic music, constants, devices, servers) live in ``tests/helpers/``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stream_server.config import Config, config_from_dict
from stream_server.inference.model import LoadedModel, load_model, save_checkpoint, tiny_vit
from stream_server.inference.preprocessing import AudioPreprocessing
from tests.helpers.constants import LABELS


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny ViT over 2 s windows, saved with ``save_pretrained``."""
    pre = AudioPreprocessing(image_size=(64, 64), window_seconds=2.0)
    model, pre = tiny_vit(LABELS, pre, seed=1)
    return save_checkpoint(model, pre, tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path) -> LoadedModel:
    return load_model(str(tiny_checkpoint))


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Config for a test server: free port, a SQLite file in tmp_path, short windows.

    Keyword arguments are tables, e.g. ``engine={"hop_s": 0.25}``; they update the defaults.
    """

    def make(**tables: dict[str, Any]) -> Config:
        raw: dict[str, dict[str, Any]] = {
            "server": {"port": 0, "log_level": "warning"},
            "engine": {"device": "cpu", "hop_s": 0.5, "max_wait_ms": 5.0},
            "smoothing": {"time_constant_s": 1.0, "min_dwell_s": 1.0},
            "storage": {"database": str(tmp_path / "timeline.db")},
        }
        for name, values in tables.items():
            raw.setdefault(name, {}).update(values)
        return config_from_dict(raw)

    return make
