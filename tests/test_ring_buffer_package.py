"""The ``ring_buffer`` package: what it exports, and what importing it costs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ring_buffer
from ring_buffer import buffer, errors


def test_the_package_exports_the_buffer_and_its_errors() -> None:
    assert ring_buffer.RingBuffer is buffer.RingBuffer
    for name in ("RingBufferError", "WindowUnavailable", "WindowOverwritten", "WindowNotWritten"):
        assert getattr(ring_buffer, name) is getattr(errors, name)
    assert set(ring_buffer.__all__) == {"RingBuffer", *errors.__all__}


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="'ring_buffer' has no attribute 'Nope'"):
        ring_buffer.Nope  # noqa: B018


def imported_after(statement: str) -> list[str]:
    """The numpy and stream_server modules a fresh interpreter holds after ``statement``."""
    code = (
        f"import json, sys\n{statement}\n"
        "top = {m.split('.')[0] for m in sys.modules}\n"
        "print(json.dumps(sorted(top & {'numpy', 'stream_server'})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    names: list[str] = json.loads(out.stdout)
    return names


def test_the_pure_package_imports_nothing_from_the_application() -> None:
    assert imported_after("import ring_buffer.buffer, ring_buffer.errors") == ["numpy"]


def test_the_errors_alone_import_no_numpy() -> None:
    # stream_server.errors re-exports them: the command line builds its parser without numpy
    assert imported_after("import ring_buffer.errors") == []
