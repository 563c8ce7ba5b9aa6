"""``python -m tests.helpers.without MOD[,MOD...] ARGS...``: ``genrecast ARGS`` as if the named
top-level modules were not installed (a lean install without some extras).

A finder placed first on ``sys.meta_path`` answers every import of those modules, and every
``importlib.util.find_spec`` for them, with :class:`ModuleNotFoundError`, as Python does for a
package that is absent.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType


class HideModules(importlib.abc.MetaPathFinder):
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def main() -> int:
    hidden = {name for name in sys.argv[1].split(",") if name}
    sys.meta_path.insert(0, HideModules(hidden))
    from stream_server.tools.cli import main as genrecast

    return genrecast(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
