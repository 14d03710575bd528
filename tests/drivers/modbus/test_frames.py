"""Modbus frames (drivers/modbus/frames.py): the spec's examples byte for byte, CRC vectors,
round trips, and garbage that must come out as a FrameError or "need more", never a crash."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU

from drivers.modbus.frames import (
    MAX_ADU_BYTES,
    Answer,
    FrameError,
    crc16,
    decode_answer,
    exception_text,
    mbap_frame,
    read_request,
    rtu_frame,
    scan_mbap,
    scan_rtu,
    write_registers_request,
)

# Modbus Application Protocol v1.1b3 §6: request and response PDUs of its examples.
REQUESTS: list[tuple[bytes, bytes]] = [
    (read_request(1, 19, 19), bytes.fromhex("01 0013 0013")),
    (read_request(2, 196, 22), bytes.fromhex("02 00C4 0016")),
    (read_request(3, 107, 3), bytes.fromhex("03 006B 0003")),
    (read_request(4, 8, 1), bytes.fromhex("04 0008 0001")),
    (write_registers_request(1, [3]), bytes.fromhex("06 0001 0003")),
    (write_registers_request(1, [0x000A, 0x0102]), bytes.fromhex("10 0001 0002 04 000A 0102")),
]

ANSWERS: list[tuple[bytes, Answer]] = [
    # coils 20..38: CD 6B 05, bits low first
    (bytes.fromhex("01 03 CD 6B 05"), Answer(1, 1, bits=tuple(
        bool(b >> i & 1) for b in (0xCD, 0x6B, 0x05) for i in range(8)))),
    (bytes.fromhex("03 06 022B 0000 0064"), Answer(3, 1, registers=(555, 0, 100))),
    (bytes.fromhex("04 02 000A"), Answer(4, 1, registers=(10,))),
    (bytes.fromhex("06 0001 0003"), Answer(6, 1, registers=(1, 3))),
    (bytes.fromhex("10 0001 0002"), Answer(16, 1, registers=(1, 2))),
    (bytes.fromhex("81 02"), Answer(0x81, 1, exception_code=2)),
    (bytes.fromhex("83 0B"), Answer(0x83, 1, exception_code=11)),
]

BAD_ANSWERS: list[tuple[bytes, str]] = [
    (b"", "empty answer"),
    (bytes.fromhex("03 04 0001"), "byte count 4, but 2 data bytes follow"),
    (bytes.fromhex("03 03 000100"), "registers come in pairs"),
    (bytes.fromhex("83"), "exception answer of 1 bytes"),
    (bytes.fromhex("2B 0E 01"), "function code 43"),
    (bytes([3, 252]) + bytes(252), "longer than Modbus allows"),
]


@pytest.mark.parametrize(("pdu", "wire"), REQUESTS)
def test_requests_are_the_spec_examples(pdu: bytes, wire: bytes) -> None:
    assert pdu == wire


@pytest.mark.parametrize(("pdu", "answer"), ANSWERS)
def test_answers_of_the_spec_examples_decode(pdu: bytes, answer: Answer) -> None:
    assert decode_answer(pdu, unit=1) == answer
    assert answer.is_error() == bool(pdu[0] & 0x80)


@pytest.mark.parametrize(("pdu", "message"), BAD_ANSWERS)
def test_inconsistent_answers_say_what_is_wrong(pdu: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        decode_answer(pdu, unit=1)


@pytest.mark.parametrize(("args", "message"), [
    ((5, 0, 1), "no read function"), ((3, 0, 126), "count 1..125"),
    ((1, 0, 2001), "count 1..2000"), ((3, 65535, 2), "within 0..65535"), ((3, 0, 0), "count"),
])
def test_reads_outside_the_protocol_are_refused(args: tuple[int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_request(*args)


def test_exception_text_names_the_code() -> None:
    assert exception_text(11) == "exception 11 (gateway target device failed to respond)"
    assert exception_text(99) == "exception 99"


# CRC-16/MODBUS: the catalogue's check value, and frames from the serial line spec and vendors.
@pytest.mark.parametrize(("data", "crc"), [
    (b"123456789", 0x4B37),
    (bytes.fromhex("01 03 0000 0001"), 0x0A84),  # on the wire: 84 0A
    (bytes.fromhex("02 07"), 0x1241),  # Modbus over serial line §6.2.2: sent 41 12
    (b"", 0xFFFF),
])
def test_crc_vectors(data: bytes, crc: int) -> None:
    assert crc16(data) == crc


def test_rtu_and_mbap_frames_of_a_request() -> None:
    pdu = read_request(3, 0, 1)
    assert rtu_frame(1, pdu) == bytes.fromhex("01 03 0000 0001 840A")
    assert mbap_frame(0x1501, 0xFF, pdu) == bytes.fromhex("1501 0000 0006 FF 03 0000 0001")


@given(st.binary(max_size=300))
def test_crc_agrees_with_pymodbus(data: bytes) -> None:
    # pymodbus returns the CRC with its bytes in wire order (low byte first)
    assert crc16(data).to_bytes(2, "little") == FramerRTU.compute_CRC(data).to_bytes(2, "big")


registers = st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125)


@given(registers, st.integers(1, 247), st.integers(0, 0xFFFF), st.integers(0, 3))
def test_read_answers_round_trip_through_both_framings(
    values: list[int], unit: int, tid: int, noise: int
) -> None:
    data = b"".join(v.to_bytes(2, "big") for v in values)
    pdu = bytes([3, len(data)]) + data
    consumed, found = scan_mbap(mbap_frame(tid, unit, pdu) + b"\x00" * noise)
    assert found == (tid, unit, pdu) and consumed == len(pdu) + 7
    frame = rtu_frame(unit, pdu)
    assert scan_rtu(frame, unit=unit) == (len(frame), (unit, pdu))
    assert decode_answer(pdu, unit=unit).registers == tuple(values)


@given(st.binary(max_size=40), st.integers(1, 247))
def test_rtu_finds_a_frame_behind_line_noise(noise: bytes, unit: int) -> None:
    frame = rtu_frame(unit, bytes.fromhex("04 02 000A"))
    consumed, found = scan_rtu(noise + frame, unit=unit)
    if found is None:  # noise that looks like the start of a longer frame: wait for more
        assert consumed <= len(noise)
    else:
        assert found[0] == unit and consumed <= len(noise) + len(frame)


@given(st.binary(max_size=2 * MAX_ADU_BYTES))
def test_garbage_is_a_frame_error_or_needs_more_never_a_crash(data: bytes) -> None:
    try:
        consumed, found = scan_mbap(data)
    except FrameError:
        pass
    else:
        assert 0 <= consumed <= len(data)
        if found is not None:
            assert len(found[2]) <= MAX_ADU_BYTES
            with contextlib.suppress(FrameError):
                decode_answer(found[2], unit=found[1])
    consumed, rtu = scan_rtu(data, unit=data[0] if data else 1)
    assert 0 <= consumed <= len(data)
    if rtu is not None:
        assert len(rtu[1]) + 3 <= MAX_ADU_BYTES


def test_a_bad_crc_or_another_unit_is_no_frame() -> None:
    frame = rtu_frame(7, bytes.fromhex("03 02 0001"))
    broken = frame[:-1] + bytes([frame[-1] ^ 0xFF])
    assert scan_rtu(broken, unit=7)[1] is None
    assert scan_rtu(rtu_frame(8, bytes.fromhex("03 02 0001")), unit=7)[1] is None


@pytest.mark.parametrize(("data", "message"), [
    (bytes.fromhex("0001 0001 0006 01 03"), "protocol id 1"),
    (bytes.fromhex("0001 0000 0000 01"), "length field 0"),
    (bytes.fromhex("0001 0000 0100 01"), "length field 256"),
    (b"ABCD", "protocol id is not 0"),
])
def test_mbap_headers_no_answer_has_are_errors(data: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        scan_mbap(data)
