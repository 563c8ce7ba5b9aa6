"""Every exception class genrecast raises on purpose lives in ``stream_server.errors`` (or is
re-exported there) and appears in the tree its docstring draws."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator

import numpy as np
import pytest

import stream_server
from ring_buffer import RingBuffer
from ring_buffer import errors as ring_errors
from stream_server import errors
from stream_server.errors import GenrecastError

DOC = errors.__doc__ or ""


def import_every_module() -> list[str]:
    """Import every ``stream_server`` module (so that every exception class is defined); returns
    the ones skipped because an optional dependency is not installed."""
    skipped = []
    for info in pkgutil.walk_packages(stream_server.__path__, "stream_server."):
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            if (exc.name or "").startswith("stream_server"):
                raise
            skipped.append(info.name)
    return skipped


def subclasses(cls: type[BaseException]) -> Iterator[type[BaseException]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)


def genrecast_errors() -> list[type[BaseException]]:
    import_every_module()
    found = {c for c in subclasses(GenrecastError) if c.__module__.startswith("stream_server.")}
    return sorted(found, key=lambda c: c.__name__)


def ring_buffer_errors() -> list[type[BaseException]]:
    return [ring_errors.RingBufferError, *subclasses(ring_errors.RingBufferError)]


def in_doc(name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", DOC) is not None


def tree_names() -> set[str]:
    """The class names the docstring's trees draw."""
    return set(re.findall(r"^ {4}(?:[│ ]   )*(?:[├└]── )?(_?[A-Z]\w+)", DOC, re.MULTILINE))


def test_the_walk_finds_the_errors_of_other_modules() -> None:
    names = {c.__name__ for c in genrecast_errors()}
    # defined in errors.py, and the private one the puller keeps
    assert {"ConfigError", "SourceStalled", "UploadError", "_Stopped"} <= names


@pytest.mark.parametrize("cls", genrecast_errors(), ids=lambda c: c.__name__)
def test_every_genrecast_error_is_in_the_tree(cls: type[BaseException]) -> None:
    assert in_doc(cls.__name__), f"{cls.__module__}.{cls.__name__} is not in the errors tree"
    assert cls.__name__ in tree_names()


@pytest.mark.parametrize("cls", genrecast_errors(), ids=lambda c: c.__name__)
def test_every_public_genrecast_error_is_defined_in_errors(cls: type[BaseException]) -> None:
    if cls.__name__.startswith("_"):
        # a private control-flow exception: stays in its module, still a GenrecastError
        assert issubclass(cls, GenrecastError)
        return
    assert getattr(errors, cls.__name__, None) is cls, (
        f"{cls.__module__}.{cls.__name__} is neither defined in nor re-exported by "
        "stream_server.errors"
    )
    assert cls.__name__ in errors.__all__


def test_every_name_in_the_tree_is_a_class() -> None:
    classes = {c.__name__ for c in genrecast_errors()} | {c.__name__ for c in ring_buffer_errors()}
    assert "GenrecastError" in tree_names()
    assert tree_names() - {"GenrecastError"} == classes


@pytest.mark.parametrize("cls", ring_buffer_errors(), ids=lambda c: c.__name__)
def test_ring_buffer_errors_are_re_exported_and_drawn(cls: type[BaseException]) -> None:
    assert cls.__module__ == "ring_buffer.errors"
    assert getattr(errors, cls.__name__) is cls
    assert not issubclass(cls, GenrecastError)
    assert in_doc(cls.__name__)


def test_what_the_ring_buffer_raises_is_caught_as_the_application_names_it() -> None:
    buf = RingBuffer(4)
    with pytest.raises(errors.WindowNotWritten):
        buf.read(0, 1)
    buf.write(np.zeros(8, dtype=np.float32))
    with pytest.raises(errors.WindowUnavailable) as info:
        buf.read(0, 1)
    assert isinstance(info.value, errors.WindowOverwritten)
    assert isinstance(info.value, errors.RingBufferError)
