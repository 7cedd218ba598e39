"""``Range: bytes=`` parsing: every answer lies inside the file; the RFC's examples hold."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imreactor.servers.msfs.ranges import Unsatisfiable, byte_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-499", 10000, (0, 499)),
        ("bytes=500-999", 10000, (500, 999)),
        ("bytes=-500", 10000, (9500, 9999)),
        ("bytes=9500-", 10000, (9500, 9999)),
        ("bytes=-20000", 10000, (0, 9999)),
        ("bytes = 1 - 2", 10, (1, 2)),
        (None, 10, None),
        ("bytes=-", 10, None),
        ("bytes=3-1", 10, None),
        ("bytes=0-1,5-6", 10, None),
        ("lines=0-1", 10, None),
        ("bytes=a-b", 10, None),
    ],
)
def test_examples(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0)])
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        byte_range(header, size)


@given(st.text(max_size=40), st.integers(0, 10**12))
def test_any_header_gives_a_span_inside_the_file_or_none(header: str, size: int) -> None:
    try:
        span = byte_range(header, size)
    except Unsatisfiable:
        return
    if span is not None:
        first, last = span
        assert 0 <= first <= last < size


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**6))
def test_a_well_formed_range_is_clipped_to_the_file(a: int, b: int, size: int) -> None:
    first, last = min(a, b), max(a, b)
    try:
        span = byte_range(f"bytes={first}-{last}", size)
    except Unsatisfiable:
        assert first >= size
        return
    assert span == (first, min(last, size - 1))
