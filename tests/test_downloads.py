"""Range headers for files streamed from the object store (gateway/downloads.py)."""

from __future__ import annotations

import pytest

from gateway.downloads import content_disposition, parse_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-0", (0, 0)),
        ("bytes=0-99", (0, 99)),
        ("bytes=900-", (900, 999)),
        ("bytes=900-5000", (900, 999)),  # the end is clamped to the file
        ("bytes=-100", (900, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-1", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header, expected):
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-1001", "bytes=10-5", "bytes=-0"])
def test_unsatisfiable_ranges_raise(header):
    with pytest.raises(ValueError):
        parse_range(header, 1000)


def test_content_disposition_quotes_any_name():
    assert content_disposition("inline", None) == "inline"
    value = content_disposition("attachment", 'my "holiday" video-emoji.mp4')
    assert value == "attachment; filename*=utf-8''my%20%22holiday%22%20video-emoji.mp4"
