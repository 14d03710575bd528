"""Register codec: table tests with published vectors, and encode/decode round trips."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.codec import apply_scale, decode_registers, encode_value
from drivers.modbus.config import REGISTER_COUNT, ByteOrder, PointType

T = PointType
BO = ByteOrder

# (registers as on the wire, type, order, raw value)
DECODE_CASES: list[tuple[list[int], PointType, ByteOrder, int | float]] = [
    # docs/protocols.md §4: EM24 INT32 low word first
    ([0x0901, 0x0000], T.I32, BO.CDAB, 2305),
    ([0xCFC7, 0xFFFF], T.I32, BO.CDAB, -12345),
    # docs/protocols.md §3: 2000.25 as float32, high word first
    ([0x44FA, 0x0800], T.F32, BO.ABCD, 2000.25),
    ([0x0800, 0x44FA], T.F32, BO.CDAB, 2000.25),
    ([0xFA44, 0x0008], T.F32, BO.BADC, 2000.25),
    ([0x0008, 0xFA44], T.F32, BO.DCBA, 2000.25),
    # 0x12345678 in the four orders
    ([0x1234, 0x5678], T.U32, BO.ABCD, 0x12345678),
    ([0x5678, 0x1234], T.U32, BO.CDAB, 0x12345678),
    ([0x3412, 0x7856], T.U32, BO.BADC, 0x12345678),
    ([0x7856, 0x3412], T.U32, BO.DCBA, 0x12345678),
    # 16 bit: ABCD/CDAB as is, BADC/DCBA byte-swapped
    ([0x1234], T.U16, BO.ABCD, 0x1234),
    ([0x1234], T.U16, BO.CDAB, 0x1234),
    ([0x1234], T.U16, BO.BADC, 0x3412),
    ([0x1234], T.U16, BO.DCBA, 0x3412),
    ([0xFFFF], T.I16, BO.ABCD, -1),
    ([0x7FFF], T.I16, BO.BADC, -129),
    ([0x8000], T.I16, BO.ABCD, -32768),
    # 64 bit: ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA of 0x0102030405060708
    ([0x0102, 0x0304, 0x0506, 0x0708], T.U64, BO.ABCD, 0x0102030405060708),
    ([0x0708, 0x0506, 0x0304, 0x0102], T.U64, BO.CDAB, 0x0102030405060708),
    ([0x0201, 0x0403, 0x0605, 0x0807], T.U64, BO.BADC, 0x0102030405060708),
    ([0x0807, 0x0605, 0x0403, 0x0201], T.U64, BO.DCBA, 0x0102030405060708),
    ([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], T.I64, BO.ABCD, -2),
    ([0x4059, 0x0000, 0x0000, 0x0000], T.F64, BO.ABCD, 100.0),
    ([0x0000, 0x0000, 0x0000, 0x4059], T.F64, BO.CDAB, 100.0),
    ([0x0000], T.BOOL, BO.ABCD, 0),
    ([0x0100], T.BOOL, BO.ABCD, 1),
]


@pytest.mark.parametrize(("registers", "type_", "order", "raw"), DECODE_CASES)
def test_decode_vectors(
    registers: list[int], type_: PointType, order: ByteOrder, raw: int | float
) -> None:
    got = decode_registers(registers, type_, order)
    assert got == raw
    assert type(got) is type(raw)


@pytest.mark.parametrize(("registers", "type_", "order", "raw"), DECODE_CASES)
def test_encode_vectors(
    registers: list[int], type_: PointType, order: ByteOrder, raw: int | float
) -> None:
    if type_ is T.BOOL:
        registers = [1 if registers[0] else 0]
    assert encode_value(raw, type_, order) == registers


@pytest.mark.parametrize(
    ("raw", "scale", "offset", "expected"),
    [
        (2305, 0.1, 0.0, 230.5),  # EM24 voltage
        (-12345, 0.1, 0.0, -1234.5),  # EM24 power
        (3, 0.1, 0.0, 0.3),  # not 0.30000000000000004
        (1234, 0.001, 0.0, 1.234),
        (7, 1.0, 0.0, 7),
        (7, 2.0, 0.0, 14.0),
        (7, 1.0, -40.0, -33.0),
        (500, 0.1, -40.0, 10.0),
        (2.5, 1.0, 0.0, 2.5),
        (10, -0.1, 0.0, -1.0),
    ],
)
def test_apply_scale(raw: int | float, scale: float, offset: float, expected: int | float) -> None:
    got = apply_scale(raw, scale, offset)
    assert got == expected
    assert type(got) is type(expected)


def test_em24_vectors_end_to_end() -> None:
    raw = decode_registers([0x0901, 0x0000], T.I32, BO.CDAB)
    assert apply_scale(raw, 0.1, 0.0) == 230.5
    assert encode_value(round(-1234.5 / 0.1), T.I32, BO.CDAB) == [0xCFC7, 0xFFFF]


def test_float_nan_and_inf_come_back_as_they_are() -> None:
    assert math.isnan(decode_registers([0x7FC0, 0x0000], T.F32, BO.ABCD))
    assert decode_registers([0x7F80, 0x0000], T.F32, BO.ABCD) == math.inf
    assert decode_registers([0xFFF0, 0, 0, 0], T.F64, BO.ABCD) == -math.inf


@pytest.mark.parametrize(
    ("registers", "type_", "message"),
    [
        ([1], T.U32, "takes 2 register"),
        ([1, 2, 3], T.F32, "takes 2 register"),
        ([0x10000], T.U16, "16-bit"),
        ([-1], T.U16, "16-bit"),
    ],
)
def test_decode_rejects_bad_input(registers: list[int], type_: PointType, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_registers(registers, type_, BO.ABCD)


@pytest.mark.parametrize(
    ("value", "type_", "message"),
    [
        (65536, T.U16, "out of range"),
        (-1, T.U32, "out of range"),
        (32768, T.I16, "out of range"),
        (1.5, T.I32, "whole number"),
        (1e39, T.F32, "does not fit"),
    ],
)
def test_encode_rejects_bad_values(value: int | float, type_: PointType, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_value(value, type_, BO.ABCD)


_INT_RANGES = {
    T.U16: (0, 2**16 - 1),
    T.I16: (-(2**15), 2**15 - 1),
    T.U32: (0, 2**32 - 1),
    T.I32: (-(2**31), 2**31 - 1),
    T.U64: (0, 2**64 - 1),
    T.I64: (-(2**63), 2**63 - 1),
    T.BOOL: (0, 1),
}


@st.composite
def _typed_values(draw: st.DrawFn) -> tuple[PointType, ByteOrder, int | float]:
    type_ = draw(st.sampled_from(list(PointType)))
    order = draw(st.sampled_from(list(ByteOrder)))
    value: int | float
    if type_ is T.F32:
        value = draw(st.floats(width=32, allow_nan=False))
    elif type_ is T.F64:
        value = draw(st.floats(allow_nan=False))
    else:
        low, high = _INT_RANGES[type_]
        value = draw(st.integers(low, high))
    return type_, order, value


@given(_typed_values())
def test_round_trip_value_registers_value(case: tuple[PointType, ByteOrder, int | float]) -> None:
    type_, order, value = case
    registers = encode_value(value, type_, order)
    assert len(registers) == REGISTER_COUNT[type_]
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode_registers(registers, type_, order) == value


@given(
    st.sampled_from([T.F32, T.F64]),
    st.sampled_from(list(ByteOrder)),
)
def test_round_trip_nan(type_: PointType, order: ByteOrder) -> None:
    assert math.isnan(decode_registers(encode_value(math.nan, type_, order), type_, order))


@given(
    st.sampled_from([t for t in PointType if t is not T.BOOL]),
    st.sampled_from(list(ByteOrder)),
    st.data(),
)
def test_every_order_is_a_permutation_of_the_bytes(
    type_: PointType, order: ByteOrder, data: st.DataObject
) -> None:
    """Each order only moves bytes: the wire bytes are the big-endian bytes, permuted."""
    width = REGISTER_COUNT[type_]
    registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=width, max_size=width))
    if type_ in (T.F32, T.F64):
        fmt = ">f" if type_ is T.F32 else ">d"
        raw_bytes = struct.pack(fmt, decode_registers(registers, type_, order))
        if math.isnan(struct.unpack(fmt, raw_bytes)[0]):
            return  # NaN payloads need not survive a trip through a Python float
        wire = b"".join(r.to_bytes(2, "big") for r in registers)
        assert sorted(wire) == sorted(raw_bytes)
    else:
        raw = decode_registers(registers, type_, order)
        assert encode_value(raw, type_, order) == registers
