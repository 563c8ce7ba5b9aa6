"""The packages' imports flow one way, and nothing imports in a circle.

Layers, lowest first (a module may import its own layer and the ones below, never one above)::

    ring_buffer                          imports nothing of stream_server
    stream_server (errors, config, messages, types, extras)   stdlib, numpy, ring_buffer
    stream_server.core                   + numpy, ring_buffer: no torch, no I/O
    stream_server.media                  + PyAV
    stream_server.inference              + torch
    stream_server.sources
    stream_server.cluster                + NATS (nats-py)
    stream_server.serve
    stream_server.training
    stream_server.tools
    dashboard

Every import counts, those inside functions too: a lazy import still couples the modules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (
    "ring_buffer",
    "stream_server",
    "stream_server.core",
    "stream_server.media",
    "stream_server.inference",
    "stream_server.sources",
    "stream_server.cluster",
    "stream_server.serve",
    "stream_server.training",
    "stream_server.tools",
    "dashboard",
)
#: Third-party packages the two lowest application layers may use.
ALLOWED_BELOW_MEDIA = {
    "stream_server": {"numpy", "ring_buffer"},
    "stream_server.core": {"numpy", "ring_buffer"},
}


def modules() -> dict[str, Path]:
    """Every module of the three packages by dotted name."""
    found = {}
    for package in ("ring_buffer", "stream_server", "dashboard"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def layer_of(name: str) -> str:
    """The deepest layer that contains module ``name``."""
    matches = [layer for layer in LAYERS if name == layer or name.startswith(layer + ".")]
    if not matches:
        raise AssertionError(f"{name} is in no layer: add its package to LAYERS")
    return max(matches, key=len)


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports (``from package import module`` resolved)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {name for name in found if name in known}


def third_party(path: Path) -> set[str]:
    """Top-level names of the non-stdlib, non-project packages ``path`` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"stream_server", "__future__"}


KNOWN = modules()
GRAPH = {name: imports(path, KNOWN) - {name} for name, path in KNOWN.items()}


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_no_import_from_a_higher_layer(name: str) -> None:
    mine = LAYERS.index(layer_of(name))
    above = sorted(t for t in GRAPH[name] if LAYERS.index(layer_of(t)) > mine)
    assert not above, f"{name} ({layer_of(name)}) imports from higher layers: {above}"


@pytest.mark.parametrize("name", sorted(n for n in KNOWN if layer_of(n) in ALLOWED_BELOW_MEDIA))
def test_the_lowest_layers_use_only_numpy(name: str) -> None:
    extra = third_party(KNOWN[name]) - ALLOWED_BELOW_MEDIA[layer_of(name)]
    assert not extra, f"{name} imports {sorted(extra)}"


def test_ring_buffer_imports_nothing_of_the_application() -> None:
    for name, path in KNOWN.items():
        if layer_of(name) == "ring_buffer":
            assert not {"stream_server", "dashboard"} & third_party(path) | {
                t.split(".")[0] for t in GRAPH[name] if not t.startswith("ring_buffer")
            }, name


def test_no_import_cycles() -> None:
    """Depth-first search over the module graph; a back edge is a cycle."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
