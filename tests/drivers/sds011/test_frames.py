"""SDS011 frames: docs/protocols.md §4 vectors; fuzzed parsers raise only their own error."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import DeviceProtocolError
from drivers.sds011 import frames

VECTOR = bytes.fromhex("AA C0 8C 00 94 00 BC F9 D5 AB")


def test_frame_errors_are_protocol_errors() -> None:
    assert issubclass(frames.Sds011FrameError, DeviceProtocolError)


def test_data_frame_vector() -> None:
    data = frames.parse_data_frame(VECTOR)
    assert (data.pm2_5, data.pm10, data.device_id) == (14.0, 14.8, 0xBCF9)
    assert frames.build_data_frame(14.0, 14.8, 0xBCF9) == VECTOR


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (frames.query_data(), "AA B4 04" + " 00" * 12 + " FF FF 02 AB"),
        (frames.set_reporting_mode(query=True), "AA B4 02 01 01" + " 00" * 10 + " FF FF 02 AB"),
        (frames.set_working(work=False), "AA B4 06 01 00" + " 00" * 10 + " FF FF 05 AB"),
        (frames.set_working(work=True), "AA B4 06 01 01" + " 00" * 10 + " FF FF 06 AB"),
    ],
)
def test_command_vectors(built: bytes, expected: str) -> None:
    assert built == bytes.fromhex(expected)
    assert frames.parse_command(built)[2] == frames.ANY_ID


@pytest.mark.parametrize(
    ("text", "value"),
    [("any", 0xFFFF), ("ANY", 0xFFFF), ("BCF9", 0xBCF9), ("00a1", 0x00A1)],
)
def test_device_id_forms(text: str, value: int) -> None:
    assert frames.parse_device_id(text) == value


@pytest.mark.parametrize("text", ["", "BCF", "BCF9A", "XYZW", "-001"])
def test_bad_device_ids(text: str) -> None:
    with pytest.raises(ValueError, match="not a sensor ID"):
        frames.parse_device_id(text)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (VECTOR[:9], "9 bytes"),
        (VECTOR[:8] + b"\xd6\xab", "checksum D6, computed D5"),
        (VECTOR[:9] + b"\xac", "not an SDS011 reply"),
        (b"\xaa\xc5" + VECTOR[2:], "not a data frame"),
    ],
)
def test_bad_data_frames(frame: bytes, message: str) -> None:
    if message == "not a data frame":  # a valid setting reply, not a measurement
        frame = frames.build_reply(frames.SETTING_REPLY, VECTOR[2:6], 0xBCF9)
    with pytest.raises(frames.Sds011FrameError, match=message):
        frames.parse_data_frame(frame)


def scan_all(buffer: bytes) -> list[frames.Reply]:
    """Run a scanner over a buffer as SerialLink.read_frame does, without the waiting."""
    scanner = frames.ReplyScanner()
    found: list[frames.Reply] = []
    while True:
        consumed, reply = scanner(buffer)
        assert 0 <= consumed <= len(buffer)
        buffer = buffer[consumed:]
        if reply is not None:
            found.append(reply)
        elif consumed == 0:
            return found


noise_without_head = st.binary(max_size=64).map(lambda b: b.replace(b"\xaa", b"\x00"))


@given(st.binary(max_size=64))
def test_parsers_raise_only_their_protocol_error(data: bytes) -> None:
    for parse in (frames.parse_reply, frames.parse_data_frame, frames.parse_command):
        with contextlib.suppress(frames.Sds011FrameError):  # anything else fails the test
            parse(data)
    scan_all(data)  # never raises, always makes progress


@given(noise_without_head, noise_without_head, st.floats(0, 999.9), st.floats(0, 999.9))
def test_scanner_finds_a_frame_inside_noise(
    before: bytes, after: bytes, pm25: float, pm10: float
) -> None:
    frame = frames.build_data_frame(pm25, pm10, 0x1234)
    found = scan_all(before + frame + after)
    assert [frames.data_from_reply(r) for r in found] == [frames.parse_data_frame(frame)]


@given(st.integers(0, 9), st.integers(1, 255))
def test_any_single_byte_corruption_is_caught(position: int, delta: int) -> None:
    corrupted = bytearray(VECTOR)
    corrupted[position] = (corrupted[position] + delta) & 0xFF
    with pytest.raises(frames.Sds011FrameError):
        frames.parse_data_frame(bytes(corrupted))
    assert scan_all(bytes(corrupted)) == []


@given(st.integers(0, 9))
def test_truncated_frames_are_incomplete_not_wrong(length: int) -> None:
    with pytest.raises(frames.Sds011FrameError):
        frames.parse_data_frame(VECTOR[:length])
    scanner = frames.ReplyScanner()
    # A truncated frame waits for more bytes: the scanner keeps it and reports nothing.
    consumed, reply = scanner(VECTOR[:length])
    assert (consumed, reply) == (0, None)
