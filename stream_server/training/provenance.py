"""Where each clip of a dataset comes from: its recording source and its artist group.

A dataset root may hold ``MANIFEST.tsv`` (``file``, ``genre``, ``source_repo``, ``source_path``
per clip) and ``ARTISTS.tsv`` (``file``, ``artist``, ``title``). From them every clip gets

- a **source**: the recording collection it belongs to, which decides how it sounds (bandwidth,
  loudness, length): ``gtzan``, ``emotify``, ``allmusic``, ``fma`` or ``web`` (anything else);
- a **group**: clips that must stay on the same side of a train/validation split because they
  share an artist. The artist is used where ``ARTISTS.tsv`` names one; GTZAN files are grouped
  in runs of :data:`GTZAN_RUN` consecutive track numbers per genre (GTZAN stores an artist's
  tracks next to each other), Emotify excerpts likewise in runs of :data:`EMOTIFY_RUN`; any other
  clip is a group of its own.

Without the manifest every clip is its own group from an ``unknown`` source, and splits are by
file as before. Pure: reads two small text files, decodes no audio.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MANIFEST_FILE: Final = "MANIFEST.tsv"
ARTISTS_FILE: Final = "ARTISTS.tsv"

#: GTZAN track numbers per group (a genre's tracks 0-24, 25-49, ...).
GTZAN_RUN: Final = 25
#: Emotify excerpt numbers per group.
EMOTIFY_RUN: Final = 10

UNKNOWN: Final = "unknown"

_GTZAN = re.compile(r"(?:^|/)([a-z]+)\.(\d{5})\.")
_EMOTIFY = re.compile(r"emotify\w*/([a-z]+)/(\d+)\.")


@dataclass(frozen=True)
class Provenance:
    """A clip's recording ``source`` and its split ``group`` (see the module docstring)."""

    source: str
    group: str


def classify_source(source_path: str, artist: str | None) -> Provenance:
    """The source and group of one manifest row (``source_path`` as the manifest gives it)."""
    if m := _GTZAN.search(source_path):
        genre, number = m.group(1), int(m.group(2))
        return Provenance("gtzan", f"gtzan:{genre}:{number // GTZAN_RUN}")
    if m := _EMOTIFY.search(source_path):
        genre, number = m.group(1), int(m.group(2))
        return Provenance("emotify", f"emotify:{genre}:{number // EMOTIFY_RUN}")
    if artist:
        return Provenance("allmusic", f"artist:{artist.strip().lower()}")
    if "fma_" in source_path:
        return Provenance("fma", f"fma:{source_path}")
    return Provenance("web", f"web:{source_path}")


def read_tsv(path: Path) -> list[dict[str, str]]:
    """The rows of a tab-separated file with a header line; none when it does not exist."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def read_provenance(root: str | Path) -> dict[str, Provenance]:
    """Provenance by clip path (relative to ``root``), from the root's manifest files.

    Empty when there is no ``MANIFEST.tsv``.
    """
    base = Path(root).expanduser()
    artists = {row["file"]: row.get("artist", "") for row in read_tsv(base / ARTISTS_FILE)}
    return {
        row["file"]: classify_source(row.get("source_path", ""), artists.get(row["file"]))
        for row in read_tsv(base / MANIFEST_FILE)
        if row.get("file")
    }


def provenance_of(paths: Iterable[str], known: Mapping[str, Provenance]) -> list[Provenance]:
    """Each path's provenance; a path the manifest does not list is its own ``unknown`` group."""
    return [known.get(path, Provenance(UNKNOWN, f"file:{path}")) for path in paths]
