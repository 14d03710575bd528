"""The pure frame-scanner building blocks (drivers/frame_scan.py), table-driven and by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.frame_scan import scan_fixed_frame, skip_to_header

HEADER = b"\x42\x4d"


class Rejected(Exception):
    pass


def parse(frame: bytes) -> bytes:
    """A 4-byte frame is good when its last byte is the low byte of the sum of the others."""
    if sum(frame[:3]) & 0xFF != frame[3]:
        raise Rejected(frame.hex())
    return frame


@pytest.mark.parametrize(
    ("buffer", "skip"),
    [
        (b"", 0),
        (b"\x42\x4d\x01", 0),
        (b"\x00\x01\x42\x4d", 2),
        (b"\x00\x01\x02", 3),
        (b"\x00\x01\x42", 2),  # a trailing 42 may be the first half of a header
        (b"\x42", 0),
        (b"\x4d\x42\x00", 3),
    ],
)
def test_skip_to_header(buffer: bytes, skip: int) -> None:
    assert skip_to_header(buffer, HEADER) == skip


GOOD = b"\x42\x4d\x01" + bytes([(0x42 + 0x4D + 0x01) & 0xFF])
BAD = b"\x42\x4d\x01\x00"


@pytest.mark.parametrize(
    ("buffer", "result"),
    [
        (b"", (0, None)),
        (b"\x42\x4d\x01", (0, None)),  # wait for the rest
        (b"\x00\x00" + GOOD, (2, None)),  # noise first
        (GOOD + b"\x99", (4, GOOD)),
        (BAD + GOOD, (1, None)),  # slide past a rejected candidate
    ],
)
def test_scan_fixed_frame(buffer: bytes, result: tuple[int, bytes | None]) -> None:
    assert scan_fixed_frame(buffer, HEADER, 4, parse, Rejected) == result


def test_scan_fixed_frame_strict_lets_the_rejection_through() -> None:
    with pytest.raises(Rejected):
        scan_fixed_frame(BAD, HEADER, 4, parse, Rejected, strict=True)


# Noise without a 42: no candidate in it could swallow the good frame's first byte.
NOISE = st.lists(st.integers(0, 255).filter(lambda b: b != 0x42), max_size=40).map(bytes)


@given(NOISE, st.binary(max_size=40))
def test_scanning_finds_a_good_frame_behind_any_noise(before: bytes, after: bytes) -> None:
    buffer = before + GOOD + after
    found: list[bytes] = []
    while buffer:
        consumed, frame = scan_fixed_frame(buffer, HEADER, 4, parse, Rejected)
        if frame is not None:
            found.append(frame)
        if consumed == 0:
            break
        buffer = buffer[consumed:]
    assert GOOD in found
