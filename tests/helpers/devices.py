"""The devices a test body runs on: the CPU always, CUDA where there is a GPU."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch


def cuda_param() -> Any:
    """``"cuda"`` as a parameter that is skipped without a GPU, unless GENRECAST_REQUIRE_CUDA=1."""
    required = os.environ.get("GENRECAST_REQUIRE_CUDA") == "1"
    missing = not torch.cuda.is_available()
    marks = [pytest.mark.cuda]
    if missing and not required:
        marks.append(
            pytest.mark.skip(reason="no CUDA device (set GENRECAST_REQUIRE_CUDA=1 to fail)")
        )
    return pytest.param("cuda", marks=marks)


DEVICES = ["cpu", cuda_param()]
