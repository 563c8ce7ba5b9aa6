"""Clip provenance from a dataset's manifest, and splits that keep an artist on one side."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from stream_server.training.dataset import Clip, stratified_split
from stream_server.training.provenance import (
    Provenance,
    classify_source,
    provenance_of,
    read_provenance,
)


@pytest.mark.parametrize(
    ("source_path", "artist", "expected"),
    [
        ("data/genres/blues/blues.00024.au", None, Provenance("gtzan", "gtzan:blues:0")),
        ("genres/rock/rock.00025.wav", None, Provenance("gtzan", "gtzan:rock:1")),
        ("audio/notebooks/metal/metal.00098.au.wav", None, Provenance("gtzan", "gtzan:metal:3")),
        ("data/emotifymusic/pop/17.mp3", None, Provenance("emotify", "emotify:pop:1")),
        ("MER/Q1/MT0002351905.mp3", "Elmore James ", Provenance("allmusic", "artist:elmore james")),
        ("fma_small/000/000148.mp3", None, Provenance("fma", "fma:fma_small/000/000148.mp3")),
        ("wav_files/12_Techno.wav", "", Provenance("web", "web:wav_files/12_Techno.wav")),
    ],
)
def test_sources_and_groups(source_path: str, artist: str | None, expected: Provenance) -> None:
    assert classify_source(source_path, artist) == expected


def test_read_provenance_from_the_manifest_files(tmp_path: Path) -> None:
    (tmp_path / "MANIFEST.tsv").write_text(
        "file\tgenre\tsource_repo\tsource_path\n"
        "jazz/a.opus\tjazz\tx/y\tdata/genres/jazz/jazz.00003.au\n"
        "jazz/b.opus\tjazz\tq/r\tQ1/MT01.mp3\n",
        encoding="utf-8",
    )
    (tmp_path / "ARTISTS.tsv").write_text(
        "file\tartist\ttitle\njazz/b.opus\tDizzy Gillespie\tSalt Peanuts\n", encoding="utf-8"
    )
    known = read_provenance(tmp_path)
    assert known == {
        "jazz/a.opus": Provenance("gtzan", "gtzan:jazz:0"),
        "jazz/b.opus": Provenance("allmusic", "artist:dizzy gillespie"),
    }
    assert provenance_of(["jazz/b.opus", "jazz/c.opus"], known) == [
        Provenance("allmusic", "artist:dizzy gillespie"),
        Provenance("unknown", "file:jazz/c.opus"),
    ]
    assert read_provenance(tmp_path / "nowhere") == {}


def _dataset() -> tuple[list[Clip], list[Provenance]]:
    """Two genres, two sources each; artists with up to four clips, one artist in both genres."""
    clips: list[Clip] = []
    prov: list[Provenance] = []
    for genre in ("jazz", "blues"):
        for i in range(40):  # GTZAN-like runs of 10 tracks
            clips.append(Clip(f"{genre}/g{i:02d}", genre))
            prov.append(Provenance("gtzan", f"gtzan:{genre}:{i // 10}"))
        for i in range(12):  # artists with 3 clips each
            clips.append(Clip(f"{genre}/a{i:02d}", genre))
            prov.append(Provenance("allmusic", f"artist:{genre}{i // 3}"))
    clips.append(Clip("jazz/both", "jazz"))
    prov.append(Provenance("allmusic", "artist:blues0"))  # one artist, two genres
    return clips, prov


@pytest.mark.parametrize("seed", range(8))
def test_a_group_never_straddles_the_split(seed: int) -> None:
    clips, prov = _dataset()
    train, val = stratified_split(clips, 0.25, seed, prov)
    group = {c.path: p.group for c, p in zip(clips, prov, strict=True)}
    assert not {group[c.path] for c in train} & {group[c.path] for c in val}
    assert sorted(c.path for c in train + val) == sorted(c.path for c in clips)
    source = {c.path: p.source for c, p in zip(clips, prov, strict=True)}
    per_stratum = Counter((c.label, source[c.path]) for c in val)
    for genre in ("jazz", "blues"):
        assert per_stratum[(genre, "gtzan")] == 10  # one run of ten out of forty
        assert 3 <= per_stratum[(genre, "allmusic")] <= 4  # one artist (plus the shared clip)
    assert stratified_split(clips, 0.25, seed, prov) == (train, val)


def test_every_genre_with_two_groups_has_both_sides() -> None:
    clips = [Clip("a/1", "a"), Clip("a/2", "a"), Clip("b/1", "b"), Clip("b/2", "b")]
    prov = [
        Provenance("s", "g1"),
        Provenance("s", "g1"),  # genre a: one group, so it all trains
        Provenance("s", "g2"),
        Provenance("t", "g3"),  # genre b: two groups in two strata of one clip each
    ]
    train, val = stratified_split(clips, 0.3, 0, prov)
    assert {c.path for c in train} >= {"a/1", "a/2"}
    assert [c.label for c in val] == ["b"] and len(train) == 3
