"""HLS material for pull tests: real AAC segments (made by the ffmpeg command) and playlists."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.helpers.audio import encode_audio, music
from tests.helpers.constants import TIMEOUT_S

HLS_TYPE = (("Content-Type", "application/vnd.apple.mpegurl"),)
TS_TYPE = (("Content-Type", "video/mp2t"),)


def aac_segments(tmp_path: Path, seconds: float, segment_s: float = 1.0) -> list[bytes]:
    """MPEG-TS segments of AAC music, about ``segment_s`` seconds each, in playing order.

    Skips the test when the ``ffmpeg`` command is not installed.
    """
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("the ffmpeg command is not installed")
    folder = tmp_path / "hls-segments"
    folder.mkdir()
    source = encode_audio(tmp_path / "hls-source.wav", music(seconds, 44100), 44100)
    subprocess.run(
        [
            *(ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"),
            *("-i", str(source), "-c:a", "aac", "-b:a", "96k", "-f", "hls"),
            *("-hls_time", f"{segment_s:g}", "-hls_list_size", "0"),
            *("-hls_segment_filename", str(folder / "s%d.ts"), str(folder / "index.m3u8")),
        ],
        check=True,
        timeout=TIMEOUT_S,
    )
    files = sorted(folder.glob("s*.ts"), key=lambda p: int(p.stem[1:]))
    return [p.read_bytes() for p in files]


def media_playlist(
    uris: Sequence[str], *, segment_s: float = 1.0, first: int = 0, ended: bool = True
) -> bytes:
    """An HLS media playlist of ``uris`` (each ``segment_s`` seconds); ``first`` is the media
    sequence number of the first; without ``ended`` it is a live playlist (no ENDLIST)."""
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{round(segment_s)}",
        f"#EXT-X-MEDIA-SEQUENCE:{first}",
    ]
    for uri in uris:
        lines += [f"#EXTINF:{segment_s:.3f},", uri]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return ("\n".join(lines) + "\n").encode()
