"""One colour per label, the same on every page and picture.

Genres take :data:`GENRE_COLOURS` in the model's label order (``/ready``'s ``labels``), so a
genre's colour depends on the model only, never on which genres a chart happens to show or the
order they appeared in. ``speech`` and ``silence`` are :data:`NEUTRAL`, unlike any genre. A label
the model does not have (a renamed or older stored timeline) gets a colour from its name, stable
from run to run. Colours are CSS ``#rrggbb`` strings.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Iterable, Mapping, Sequence

from stream_server.messages import NON_MUSIC_LABELS

__all__ = [
    "GENRE_COLOURS",
    "NEUTRAL",
    "chip_html",
    "colour_of",
    "colour_of_name",
    "label_colours",
    "text_colour",
]

#: The colour of speech and silence: a grey unlike any genre's.
NEUTRAL = "#9e9e9e"
#: Genre colours in the order they are given out: Tableau 10 (its grey swapped for cyan), then
#: ten darker or lighter ones for models with more labels; all distinct from :data:`NEUTRAL`.
GENRE_COLOURS: tuple[str, ...] = (
    "#4e79a7",  # blue
    "#f28e2b",  # orange
    "#e15759",  # red
    "#76b7b2",  # teal
    "#59a14f",  # green
    "#edc948",  # yellow
    "#b07aa1",  # purple
    "#ff9da7",  # pink
    "#9c755f",  # brown
    "#17becf",  # cyan
    "#2c4a6e",
    "#b35806",
    "#8c1c13",
    "#3b7d78",
    "#2e6b26",
    "#a68a00",
    "#6a3d7c",
    "#c9577a",
    "#5e4330",
    "#0b7f8c",
)


def colour_of_name(label: str) -> str:
    """A colour for a label the model lacks, from its name (stable across runs and machines)."""
    digest = hashlib.sha256(label.encode("utf-8")).digest()
    return GENRE_COLOURS[int.from_bytes(digest[:4], "big") % len(GENRE_COLOURS)]


def label_colours(model_labels: Sequence[str], extra: Iterable[str] = ()) -> dict[str, str]:
    """Label to colour for ``model_labels`` (in the model's order) and any ``extra`` labels.

    The i-th genre of the model gets ``GENRE_COLOURS[i % 20]``; speech and silence
    :data:`NEUTRAL`; an ``extra`` label the model lacks a colour from its name (a hash, stable
    across runs and machines).
    """
    colours: dict[str, str] = {}
    genres = [label for label in dict.fromkeys(model_labels) if label not in NON_MUSIC_LABELS]
    for i, label in enumerate(genres):
        colours[label] = GENRE_COLOURS[i % len(GENRE_COLOURS)]
    for label in NON_MUSIC_LABELS:
        colours[label] = NEUTRAL
    for label in extra:
        colours.setdefault(label, colour_of_name(label))
    return colours


def colour_of(label: str, colours: Mapping[str, str]) -> str:
    """``label``'s colour in ``colours`` (from :func:`label_colours`), or
    :func:`colour_of_name` for a label it lacks."""
    return colours.get(label) or colour_of_name(label)


def text_colour(background: str) -> str:
    """Near-black or white, whichever reads better on ``background`` (``#rrggbb``): by the
    background's relative luminance."""
    try:
        r, g, b = (int(background[i : i + 2], 16) / 255 for i in (1, 3, 5))
    except ValueError:
        return "#fff"
    luminance = 0.2126 * r**2.2 + 0.7152 * g**2.2 + 0.0722 * b**2.2
    return "#111" if luminance > 0.33 else "#fff"


def chip_html(label: str, colours: Mapping[str, str], text: str | None = None) -> str:
    """``label`` as a coloured chip: ``<span class="chip" data-genre=... data-colour=...>``
    in its colour (:func:`colour_of`) with readable text; ``text`` shown instead of the label.
    The one chip of every page (dashboard, landing page)."""
    bg = colour_of(label, colours)
    return (
        f'<span class="chip" data-genre="{html.escape(label)}" data-colour="{bg}" '
        f'style="background:{bg};color:{text_colour(bg)}">{html.escape(text or label)}</span>'
    )
