"""The optional extras: which feature needs which, and one clear error when one is missing.

``pip``/``uv`` extras of the ``genrecast`` package (``pyproject.toml``); the quick start installs
all of them (``bash tools/install.sh``), a lean serving install (``uv sync --frozen``) none. Each
maps to the module that proves it installed, found without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from stream_server.errors import MissingExtraError


@dataclass(frozen=True)
class Extra:
    """One optional extra: its name, the distribution that marks it and what it enables."""

    name: str
    module: str
    distribution: str
    enables: str

    def installed(self) -> bool:
        from importlib.util import find_spec

        try:
            return find_spec(self.module) is not None
        except (ImportError, ValueError):  # a broken or half-removed package
            return False

    def version(self) -> str | None:
        """The marking distribution's version, ``None`` when it is not installed."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(self.distribution)
        except PackageNotFoundError:
            return None

    @property
    def install_hint(self) -> str:
        return f"bash tools/install.sh (every extra), or add --extra {self.name} to your uv sync"

    @property
    def missing(self) -> str:
        """What a user reads when the extra is needed and not installed."""
        return (
            f"{self.enables} needs the {self.name!r} extra, which is not installed; "
            f"install it with: {self.install_hint}"
        )


EXTRAS: Final = {
    extra.name: extra
    for extra in (
        Extra("webrtc", "aiortc", "aiortc", "the browser microphone (/mic, POST /webrtc/offer)"),
        Extra("dashboard", "streamlit", "streamlit", "the live dashboard (genrecast dashboard)"),
        Extra(
            "train",
            "matplotlib",
            "matplotlib",
            "training and evaluation (genrecast train, genrecast evaluate)",
        ),
        Extra("cluster", "nats", "nats-py", "a cluster on NATS (genrecast cluster, --cluster)"),
    )
}


def require(name: str) -> None:
    """Raise :class:`MissingExtraError` naming the fix when extra ``name`` is not installed."""
    extra = EXTRAS[name]
    if not extra.installed():
        raise MissingExtraError(extra.missing)
