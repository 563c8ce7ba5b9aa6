"""Constants the tests share: the tiny model's labels, the shared data set, the timeout unit."""

from __future__ import annotations

import os
from pathlib import Path

LABELS = ("blues", "classical", "jazz", "rock")
SHARED_GENRES = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "genres"

#: A test's timeouts, in seconds, are multiples of this (raise it on a slow machine).
TIMEOUT_S = float(os.environ.get("GENRECAST_TEST_TIMEOUT_S", "20"))
