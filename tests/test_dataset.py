"""Tests for stream_server.training.dataset: scanning genre folders, splits, decoding through the
cache."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_server.errors import DatasetError
from stream_server.training.dataset import (
    SPLIT_FILE,
    Clip,
    cached_array,
    counts,
    labels_of,
    load_audio,
    load_clip,
    load_split,
    save_split,
    scan,
    stratified_split,
    window_starts,
    windows_of,
)
from tests.helpers.audio import encode_audio, music

RATE = 22050  # the rate clips are decoded to


def mono(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """``(frames, 1)`` float32 synthetic music."""
    return music(seconds, rate=rate, channels=1, seed=seed)


def write_wav(path: Path, seconds: float, rate: int = RATE, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return encode_audio(path, mono(seconds, rate, seed), rate)


def write_flac(path: Path, seconds: float, rate: int = 48000, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return encode_audio(path, mono(seconds, rate, seed), rate, codec="flac")


def write_opus(path: Path, seconds: float, seed: int = 0) -> Path:
    if "libopus" not in av.codecs_available:
        pytest.skip("PyAV's FFmpeg has no libopus encoder")
    path.parent.mkdir(parents=True, exist_ok=True)
    return encode_audio(
        path, mono(seconds, 48000, seed), 48000, codec="libopus", container_format="ogg"
    )


def write_text(path: Path, text: str = "not audio\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """blues: 2 clips, jazz: 4 (one nested, one upper-case suffix), rock: 1, plus decoys."""
    root = tmp_path_factory.mktemp("genres")
    write_wav(root / "blues" / "b2.wav", 1.0, seed=1)
    write_flac(root / "blues" / "b1.flac", 1.0, seed=2)
    write_text(root / "blues" / "notes.txt")
    write_opus(root / "jazz" / "j1.opus", 1.0, seed=3)
    write_wav(root / "jazz" / "live" / "j0.wav", 1.0, seed=4)
    write_wav(root / "jazz" / "J2.WAV", 1.0, seed=5)
    write_flac(root / "jazz" / "j3.flac", 1.0, 22050, seed=6)
    write_text(root / "jazz" / "cover.jpg", "jpeg?")
    write_text(root / "jazz" / "._j1.wav", "resource fork")  # hidden file inside a genre
    write_wav(root / "jazz" / ".trash" / "old.wav", 1.0, seed=10)  # hidden folder inside a genre
    write_wav(root / "rock" / "r.wav", 1.0, seed=7)
    write_wav(root / ".hidden" / "h.wav", 1.0, seed=8)  # hidden folder: never a genre
    write_text(root / "docs" / "readme.txt")  # folder with no audio
    (root / "empty").mkdir()
    write_wav(root / "loose.wav", 1.0, seed=9)  # audio outside any genre folder
    write_text(root / "README.md")
    return root


EXPECTED = [
    Clip("blues/b1.flac", "blues"),
    Clip("blues/b2.wav", "blues"),
    Clip("jazz/J2.WAV", "jazz"),
    Clip("jazz/j1.opus", "jazz"),
    Clip("jazz/j3.flac", "jazz"),
    Clip("jazz/live/j0.wav", "jazz"),
    Clip("rock/r.wav", "rock"),
]


# -- scan ----------------------------------------------------------------------------------------


def test_scan_finds_every_audio_file_of_each_genre(dataset: Path) -> None:
    clips = scan(dataset)
    assert clips == EXPECTED
    assert [c.path for c in clips] == sorted(c.path for c in clips)
    assert labels_of(clips) == ("blues", "jazz", "rock")
    assert counts(clips) == {"blues": 2, "jazz": 4, "rock": 1}


def test_scan_paths_are_relative_posix_and_exist(dataset: Path) -> None:
    for clip in scan(str(dataset)):
        assert not Path(clip.path).is_absolute()
        assert "\\" not in clip.path
        assert clip.path.split("/")[0] == clip.label
        assert (dataset / clip.path).is_file()


def test_scan_ignores_hidden_folders_non_audio_and_loose_files(dataset: Path) -> None:
    paths = [c.path for c in scan(dataset)]
    assert not any(".hidden" in p for p in paths)
    assert not any(p.endswith((".txt", ".jpg", ".md")) for p in paths)
    assert "loose.wav" not in paths
    assert not {"docs", "empty", ".hidden"} & {c.label for c in scan(dataset)}


def test_scan_genres_filter(dataset: Path) -> None:
    clips = scan(dataset, genres=["rock", "blues"])
    assert clips == [c for c in EXPECTED if c.label in ("rock", "blues")]
    # the order of the request does not change the (path-sorted) result
    assert scan(dataset, genres=["blues", "rock"]) == clips
    # a genre named twice is taken once
    assert scan(dataset, genres=["jazz", "jazz"]) == [c for c in EXPECTED if c.label == "jazz"]


def test_scan_min_clips(dataset: Path) -> None:
    assert labels_of(scan(dataset, min_clips=1)) == ("blues", "jazz", "rock")
    assert labels_of(scan(dataset, min_clips=2)) == ("blues", "jazz")
    assert labels_of(scan(dataset, min_clips=4)) == ("jazz",)
    with pytest.raises(DatasetError, match="found under") as info:
        scan(dataset, min_clips=5)
    assert str(dataset) in str(info.value)
    # min_clips applies only when the genres are not named
    assert scan(dataset, genres=["rock"], min_clips=5) == [Clip("rock/r.wav", "rock")]


def test_scan_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        scan(tmp_path / "nowhere")
    write_text(tmp_path / "file.wav")
    with pytest.raises(DatasetError, match="does not exist"):
        scan(tmp_path / "file.wav")


@pytest.mark.parametrize("genre", ["metal", "empty", "docs", ".hidden"])
def test_scan_missing_or_empty_genre(dataset: Path, genre: str) -> None:
    with pytest.raises(DatasetError, match=f"genre\\(s\\) {genre} under"):
        scan(dataset, genres=["blues", genre])


def test_scan_no_clips(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write_text(tmp_path / "docs" / "a.txt")
    write_wav(tmp_path / ".cache" / "x.wav", 0.1)
    with pytest.raises(DatasetError, match="found under") as info:
        scan(tmp_path)
    assert str(tmp_path) in str(info.value)


# -- stratified_split ----------------------------------------------------------------------------


def make_clips(sizes: dict[str, int]) -> list[Clip]:
    return [Clip(f"{label}/{i:03d}.wav", label) for label, n in sizes.items() for i in range(n)]


def expected_val(n: int, fraction: float) -> int:
    if n < 2:
        return 0
    return min(max(round(n * fraction), 1), n - 1)


def check_split(clips: list[Clip], fraction: float, seed: int) -> tuple[list[Clip], list[Clip]]:
    train, val = stratified_split(clips, fraction, seed)
    assert not set(train) & set(val)
    assert sorted(train + val, key=lambda c: c.path) == sorted(clips, key=lambda c: c.path)
    assert [c.path for c in train] == sorted(c.path for c in train)
    assert [c.path for c in val] == sorted(c.path for c in val)
    total, n_val = counts(clips), counts(val)
    for label, n in total.items():
        got = n_val.get(label, 0)
        assert got == expected_val(n, fraction), label
        if n >= 2:
            assert 1 <= got <= n - 1
            if 1 <= round(n * fraction) <= n - 1:
                assert abs(got - n * fraction) <= 0.5
        else:
            assert got == 0
    return train, val


def test_split_partition_and_proportions() -> None:
    clips = make_clips({"a": 10, "b": 7, "c": 2, "d": 1, "e": 40})
    train, val = check_split(clips, 0.2, seed=3)
    assert counts(val) == {"a": 2, "b": 1, "c": 1, "e": 8}
    assert Clip("d/000.wav", "d") in train
    assert len(val) == 12
    assert len(train) == 48


def test_split_is_seeded() -> None:
    clips = make_clips({"a": 30, "b": 30, "c": 5})
    first = stratified_split(clips, 0.25, seed=7)
    assert stratified_split(clips, 0.25, seed=7) == first
    # depends only on the clips, not on the order they come in
    shuffled = list(clips)
    random.Random(1).shuffle(shuffled)
    assert stratified_split(shuffled, 0.25, seed=7) == first
    other = stratified_split(clips, 0.25, seed=8)
    assert other[1] != first[1]
    assert counts(other[1]) == counts(first[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_split_bad_fraction(fraction: float) -> None:
    with pytest.raises(DatasetError, match="val_fraction"):
        stratified_split(make_clips({"a": 4}), fraction, seed=0)


def test_split_single_clip_genre_stays_in_train() -> None:
    clips = make_clips({"solo": 1, "duo": 2})
    train, val = stratified_split(clips, 0.9, seed=0)
    assert Clip("solo/000.wav", "solo") in train
    assert counts(train) == {"duo": 1, "solo": 1}
    assert counts(val) == {"duo": 1}


@settings(max_examples=60, deadline=None, database=None)
@given(
    sizes=st.dictionaries(
        st.sampled_from(["blues", "jazz", "metal", "pop", "rock"]),
        st.integers(1, 40),
        min_size=1,
    ),
    fraction=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**32),
)
def test_split_properties(sizes: dict[str, int], fraction: float, seed: int) -> None:
    clips = make_clips(sizes)
    first = check_split(clips, fraction, seed)
    assert stratified_split(clips, fraction, seed) == first


# -- save_split / load_split ---------------------------------------------------------------------


def test_split_file_round_trip(tmp_path: Path) -> None:
    train, val = stratified_split(make_clips({"a": 5, "b": 3}), 0.3, seed=1)
    path = save_split(tmp_path, train, val)
    assert path == tmp_path / SPLIT_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) == {"train", "val"}
    assert data["val"] == [[c.path, c.label] for c in val]
    assert load_split(path, "train") == train
    assert load_split(str(path), "val") == val


@pytest.mark.parametrize(
    ("content", "part"),
    [
        (None, "train"),  # no file
        ("{not json", "train"),
        ('{"train": []}', "val"),  # part missing
        ('[["a/x.wav", "a"]]', "train"),  # not an object
        ('{"train": 5}', "train"),
        ('{"train": [["a/x.wav"]]}', "train"),  # a row without a label
        ('{"train": [["a/x.wav", "a", "extra"]]}', "train"),
        ('{"train": ["ab"]}', "train"),  # a string, not a pair
        ('{"train": [["a/x.wav", 3]]}', "train"),  # a label that is not a string
    ],
)
def test_load_split_malformed(tmp_path: Path, content: str | None, part: str) -> None:
    path = tmp_path / SPLIT_FILE
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        load_split(path, part)
    assert str(path) in str(info.value)
    assert repr(part) in str(info.value)


# -- load_clip / load_audio ----------------------------------------------------------------------


@pytest.fixture
def clip_root(tmp_path: Path) -> Path:
    """One genre folder: 1.0 s WAV at 22050 Hz, 1.5 s FLAC at 48 kHz, 2.3 s Opus, 0.5 s stereo."""
    root = tmp_path / "data"
    write_wav(root / "g" / "a.wav", 1.0, seed=1)
    write_flac(root / "g" / "b.flac", 1.5, 48000, seed=2)
    write_opus(root / "g" / "c.opus", 2.3, seed=3)
    (root / "g").mkdir(exist_ok=True)
    encode_audio(root / "g" / "d.wav", music(0.5, rate=44100, channels=2, seed=4), 44100)
    return root


SECONDS = {"g/a.wav": 1.0, "g/b.flac": 1.5, "g/c.opus": 2.3, "g/d.wav": 0.5}


def test_load_audio_decodes_mono_float32_at_the_rate(clip_root: Path) -> None:
    clips = scan(clip_root)
    assert [c.path for c in clips] == list(SECONDS)
    kept, audio = load_audio(clip_root, clips, RATE)
    assert kept == clips
    for clip, wave in zip(kept, audio, strict=True):
        assert wave.dtype == np.float32
        assert wave.ndim == 1
        assert abs(wave.size - round(SECONDS[clip.path] * RATE)) <= 1, clip.path
    # the 22050 Hz WAV comes back as written, up to 16-bit quantisation
    np.testing.assert_allclose(audio[0], mono(1.0, seed=1)[:, 0], atol=1.5 / 32768, rtol=0)
    # resampled clips keep their level
    for wave, seconds, rate, seed in [(audio[1], 1.5, 48000, 2), (audio[2], 2.3, 48000, 3)]:
        source_rms = float(np.sqrt(np.mean(mono(seconds, rate, seed) ** 2)))
        assert float(np.sqrt(np.mean(wave**2))) == pytest.approx(source_rms, rel=0.1)
    # stereo is averaged to mono
    stereo = music(0.5, rate=44100, channels=2, seed=4)
    assert float(np.abs(audio[3]).max()) == pytest.approx(float(np.abs(stereo).mean(1).max()), 0.1)


def test_load_audio_at_another_rate(clip_root: Path) -> None:
    _, audio = load_audio(clip_root, scan(clip_root), 16000)
    for (path, seconds), wave in zip(SECONDS.items(), audio, strict=True):
        assert abs(wave.size - round(seconds * 16000)) <= 1, path


def test_cache_is_written_and_read(clip_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "audio"  # created on first use
    source = clip_root / "g" / "a.wav"
    decoded = load_clip(source, RATE, cache)
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 1
    assert not list(cache.glob("*.tmp*"))
    np.testing.assert_array_equal(np.load(files[0]), decoded)
    np.testing.assert_array_equal(load_clip(source, RATE, None), decoded)

    marker = np.arange(7, dtype=np.float32) / 10
    np.save(files[0], marker)
    np.testing.assert_array_equal(load_clip(source, RATE, cache), marker)
    kept, audio = load_audio(clip_root, [Clip("g/a.wav", "g")], RATE, cache)
    assert kept == [Clip("g/a.wav", "g")]
    np.testing.assert_array_equal(audio[0], marker)
    # the cache is not used without a cache directory
    np.testing.assert_array_equal(load_audio(clip_root, kept, RATE)[1][0], decoded)


def test_cache_key_follows_content_and_rate(clip_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = clip_root / "g" / "a.wav"
    load_clip(source, RATE, cache)
    (first,) = cache.glob("*.npy")
    marker = np.zeros(3, np.float32)
    np.save(first, marker)

    other_rate = load_clip(source, 16000, cache)
    assert abs(other_rate.size - 16000) <= 1
    assert len(list(cache.glob("*.npy"))) == 2

    # touched, or copied elsewhere: the same audio, the same cache entry
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    np.testing.assert_array_equal(load_clip(source, RATE, cache), marker)
    copy = tmp_path / "copy.wav"
    shutil.copyfile(source, copy)
    np.testing.assert_array_equal(load_clip(copy, RATE, cache), marker)
    assert len(list(cache.glob("*.npy"))) == 2

    # other audio under the same name: decoded afresh
    write_wav(source, 1.0, seed=2)
    assert not np.array_equal(load_clip(source, RATE, cache), marker)
    assert len(list(cache.glob("*.npy"))) == 3


def test_unreadable_cache_file_is_replaced(
    clip_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    source = clip_root / "g" / "a.wav"
    decoded = load_clip(source, RATE, cache)
    (file,) = cache.glob("*.npy")
    file.write_bytes(b"garbage, not an npy file")
    with caplog.at_level(logging.WARNING, logger="stream_server.training.dataset"):
        np.testing.assert_array_equal(load_clip(source, RATE, cache), decoded)
    assert "ignoring unreadable cache file" in caplog.text
    np.testing.assert_array_equal(np.load(file), decoded)


@pytest.mark.parametrize("use_cache", [False, True])
def test_broken_clips_are_skipped(
    clip_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, use_cache: bool
) -> None:
    write_text(clip_root / "g" / "text.wav", "RIFF? no, just text\n" * 20)
    (clip_root / "g" / "empty.flac").write_bytes(b"")
    (clip_root / "g" / "noise.mp3").write_bytes(np.random.default_rng(0).bytes(4000))
    clips = scan(clip_root)
    assert len(clips) == 7
    missing = Clip("g/deleted.wav", "g")
    cache = tmp_path / "cache" if use_cache else None
    with caplog.at_level(logging.WARNING, logger="stream_server.training.dataset"):
        kept, audio = load_audio(clip_root, [*clips, missing], RATE, cache)
    assert [c.path for c in kept] == list(SECONDS)
    assert len(audio) == 4
    warned = {r.getMessage().split(":")[0] for r in caplog.records if r.levelno == logging.WARNING}
    assert warned == {
        "skipping g/text.wav",
        "skipping g/empty.flac",
        "skipping g/noise.mp3",
        "skipping g/deleted.wav",
    }
    if cache is not None:
        # files that cannot be opened leave nothing behind; the empty FLAC decodes to 0 samples
        cached = sorted(np.load(f).size for f in cache.glob("*.npy"))
        assert cached == sorted([0, *(a.size for a in audio)])


def test_short_clips_are_skipped(clip_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    clips = scan(clip_root)
    with caplog.at_level(logging.WARNING, logger="stream_server.training.dataset"):
        kept, audio = load_audio(clip_root, clips, RATE, min_samples=round(1.2 * RATE))
    assert [c.path for c in kept] == ["g/b.flac", "g/c.opus"]
    assert all(a.size >= round(1.2 * RATE) for a in audio)
    messages = [r.getMessage() for r in caplog.records]
    assert any("g/a.wav" in m and "shorter than needed" in m for m in messages)
    assert any("g/d.wav" in m and "shorter than needed" in m for m in messages)
    # exactly min_samples is enough
    kept, _ = load_audio(clip_root, clips, RATE, min_samples=RATE)
    assert [c.path for c in kept] == ["g/a.wav", "g/b.flac", "g/c.opus"]


def test_nothing_usable_raises(clip_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="none of the 4 clips"):
        load_audio(clip_root, scan(clip_root), RATE, min_samples=10 * RATE)
    write_text(clip_root / "g" / "text.wav")
    broken = [Clip("g/text.wav", "g"), Clip("g/gone.wav", "g")]
    for cache in (None, tmp_path / "cache"):
        with pytest.raises(DatasetError, match="none of the 2 clips"):
            load_audio(clip_root, broken, RATE, cache)


# -- window_starts / windows_of ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "window", "hop", "starts"),
    [
        (10, 4, 2, [0, 2, 4, 6]),  # exact fit
        (11, 4, 2, [0, 2, 4, 6, 7]),  # remainder: last window flush with the end
        (12, 4, 4, [0, 4, 8]),
        (13, 4, 4, [0, 4, 8, 9]),
        (5, 4, 10, [0, 1]),  # hop longer than the window
        (4, 4, 1, [0]),  # exactly one window
        (3, 4, 2, [0]),  # shorter than a window
        (0, 4, 2, [0]),
        (44100 * 3, 44100, 22050, [0, 22050, 44100, 66150, 88200]),
    ],
)
def test_window_starts(n: int, window: int, hop: int, starts: list[int]) -> None:
    assert window_starts(n, window, hop) == starts


@settings(max_examples=100, deadline=None, database=None)
@given(n=st.integers(0, 500), window=st.integers(1, 60), hop=st.integers(1, 60))
def test_window_starts_cover_the_clip(n: int, window: int, hop: int) -> None:
    starts = window_starts(n, window, hop)
    assert starts[0] == 0
    assert starts[-1] == max(0, n - window)
    assert all(0 < b - a <= hop for a, b in itertools.pairwise(starts))
    if n >= window:
        assert len(starts) == math.ceil((n - window) / hop) + 1


@pytest.mark.parametrize(("window", "hop"), [(0, 1), (4, 0), (-1, 2), (4, -3)])
def test_window_starts_bad_arguments(window: int, hop: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        window_starts(10, window, hop)
    with pytest.raises(ValueError, match="positive"):
        windows_of(np.zeros(10, np.float32), window, hop)


def test_windows_of() -> None:
    audio = np.arange(13, dtype=np.float32)
    wins = windows_of(audio, 4, 4)
    assert wins.shape == (4, 4)
    assert wins.dtype == np.float32
    np.testing.assert_array_equal(
        wins, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [9, 10, 11, 12]]
    )
    exact = windows_of(np.arange(8, dtype=np.float32), 4, 2)
    np.testing.assert_array_equal(exact, [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]])


def test_windows_of_pads_short_audio() -> None:
    wins = windows_of(np.array([1, 2, 3], np.float32), 5, 2)
    assert wins.dtype == np.float32
    np.testing.assert_array_equal(wins, [[1, 2, 3, 0, 0]])
    empty = windows_of(np.zeros(0, np.float32), 6, 3)
    np.testing.assert_array_equal(empty, np.zeros((1, 6), np.float32))
    one = windows_of(np.ones(5, np.float32), 5, 2)
    np.testing.assert_array_equal(one, np.ones((1, 5), np.float32))


def test_cached_array_computes_once_and_recovers_from_a_broken_file(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.arange(4, dtype=np.float32)

    path = tmp_path / "deep" / "a.npy"
    first = cached_array(path, compute)
    again = cached_array(path, compute)
    np.testing.assert_array_equal(again, first)
    assert again.dtype == np.float32 and len(calls) == 1
    assert [p.name for p in path.parent.iterdir()] == ["a.npy"]  # no temporary file left
    path.write_bytes(b"not an array")
    np.testing.assert_array_equal(cached_array(path, compute), first)
    assert len(calls) == 2
    np.testing.assert_array_equal(np.load(path), first)  # rewritten whole
    cached_array(None, compute)
    cached_array(None, compute)
    assert len(calls) == 4
