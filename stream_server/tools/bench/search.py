"""The ``--find-max`` search: the largest count that passes a probe, by doubling then bisection.
No I/O: the probe is given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Search:
    """Where a search ended: ``best`` passed (0: nothing did); ``probes``: each count tried and
    whether it passed, in order."""

    best: int = 0
    probes: list[tuple[int, bool]] = field(default_factory=list)


def find_max(passes: Callable[[int], bool], *, start: int, limit: int) -> Search:
    """The largest ``n`` in ``1..limit`` for which ``passes(n)``, assuming that every count
    below a passing one passes too.

    Tries ``start`` (clamped to ``1..limit``), doubles while it passes (at most to ``limit``),
    then bisects between the largest count that passed (0 if none) and the smallest that failed,
    to one stream: about ``2 * log2(answer / start)`` probes.
    """
    search = Search()

    def probe(n: int) -> bool:
        ok = passes(n)
        search.probes.append((n, ok))
        return ok

    n = max(1, min(start, limit))
    failed: int | None = None
    while failed is None:
        if not probe(n):
            failed = n
        elif n >= limit:
            search.best = n
            return search
        else:
            search.best = n
            n = min(2 * n, limit)
    while failed - search.best > 1:
        middle = (search.best + failed) // 2
        if probe(middle):
            search.best = middle
        else:
            failed = middle
    return search
