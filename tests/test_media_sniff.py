"""The first-bytes test the gateway applies to uploads that go straight to an object store."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from common.media import SNIFF_BYTES, looks_like_video

CONTAINERS = [
    ("mp4", []), ("mov", []), ("mkv", []), ("webm", ["-c:v", "libvpx"]), ("avi", []), ("ts", []),
    ("flv", ["-c:v", "flv"]), ("mpg", ["-c:v", "mpeg2video"]), ("ogv", ["-c:v", "libtheora"]),
    ("wmv", ["-c:v", "wmv2"]), ("3gp", ["-c:v", "h263", "-s", "176x144"]),
]


@pytest.mark.parametrize(("suffix", "codec"), CONTAINERS, ids=[c[0] for c in CONTAINERS])
def test_every_accepted_container_passes(tmp_path: Path, suffix, codec):
    out = tmp_path / f"clip.{suffix}"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=176x144:rate=10:duration=0.5",
                    *codec, "-y", str(out)], check=True)
    assert looks_like_video(out.read_bytes()[:SNIFF_BYTES])


@pytest.mark.parametrize(
    "head",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"GIF89a" + bytes(400),
        b"#EXTM3U\n#EXT-X-VERSION:3\n", b"ffconcat version 1.0\n", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3",
        b"hello, this is text", b"PK\x03\x04zipfile...", b"",
    ],
    ids=["png", "jpeg", "gif", "hls", "concat", "pdf", "text", "zip", "empty"],
)
def test_other_files_fail(head):
    assert not looks_like_video(head)
