"""Register codec: Modbus registers to numbers and back, in every byte order. Pure, no I/O.

The canonical form is big-endian (``ABCD``, ``ABCDEFGH``). The other orders are reached by two
independent swaps, each its own inverse, so the same transformation encodes and decodes:

- word order reversed (``CDAB``/``DCBA`` and their 64-bit forms ``GHEFCDAB``/``HGFEDCBA``);
- bytes swapped inside each word (``BADC``/``DCBA``, i.e. ``BADCFEHG``/``HGFEDCBA``).

A 16-bit value has one word, so ``ABCD``/``CDAB`` keep it as is and ``BADC``/``DCBA`` swap its
two bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from drivers.modbus.config import REGISTER_COUNT, ByteOrder, PointType

__all__ = ["EXCEPTION_MEANINGS", "apply_scale", "decode_registers", "encode_value", "is_float_type"]

_STRUCT: dict[PointType, str] = {
    PointType.U16: ">H",
    PointType.I16: ">h",
    PointType.U32: ">I",
    PointType.I32: ">i",
    PointType.U64: ">Q",
    PointType.I64: ">q",
    PointType.F32: ">f",
    PointType.F64: ">d",
    PointType.BOOL: ">H",
}
_FLOAT_TYPES = frozenset({PointType.F32, PointType.F64})
_WORDS_REVERSED = frozenset({ByteOrder.CDAB, ByteOrder.DCBA})
_BYTES_SWAPPED = frozenset({ByteOrder.BADC, ByteOrder.DCBA})


def is_float_type(type: PointType) -> bool:
    """True for the IEEE 754 types (f32, f64)."""
    return type in _FLOAT_TYPES


def _reorder(words: Sequence[int], byte_order: ByteOrder) -> list[int]:
    """Map wire words to canonical big-endian words, or back: the swaps are involutions."""
    out = list(words)
    if byte_order in _WORDS_REVERSED:
        out.reverse()
    if byte_order in _BYTES_SWAPPED:
        out = [((w & 0xFF) << 8) | (w >> 8) for w in out]
    return out


def decode_registers(
    registers: Sequence[int], type: PointType, byte_order: ByteOrder
) -> int | float:
    """Decode the registers of one point (as read, in wire order) into its raw number.

    ``bool`` gives 0 or 1 (any non-zero register is 1). NaN and infinities of float types are
    returned as they are; the caller decides what they mean.
    """
    width = REGISTER_COUNT[type]
    if len(registers) != width:
        raise ValueError(
            f"a {type.value} takes {width} register(s), got {len(registers)}: "
            "check the point's type and the read plan"
        )
    for register in registers:
        if not 0 <= register <= 0xFFFF:
            raise ValueError(f"register value {register} is not a 16-bit word (0..65535)")
    words = _reorder(registers, byte_order)
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    (value,) = struct.unpack(_STRUCT[type], raw)
    if type is PointType.BOOL:
        return int(value != 0)
    if type in _FLOAT_TYPES:
        return float(value)
    return int(value)


def encode_value(value: int | float, type: PointType, byte_order: ByteOrder) -> list[int]:
    """Encode a raw number into the registers a device would send for it (wire order)."""
    if type is PointType.BOOL:
        packed = struct.pack(">H", 1 if value else 0)
    elif type in _FLOAT_TYPES:
        try:
            packed = struct.pack(_STRUCT[type], float(value))
        except OverflowError as exc:
            raise ValueError(f"{value!r} does not fit a {type.value}") from exc
    else:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value!r} is not a whole number: a {type.value} holds integers")
        try:
            packed = struct.pack(_STRUCT[type], int(value))
        except struct.error as exc:
            raise ValueError(f"{value!r} is out of range for a {type.value}") from exc
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    return _reorder(words, byte_order)


def _exact_divisor(scale: float) -> int | None:
    """The integer n when ``scale`` is 1/n (0.1, 0.01, 0.001 …), else None."""
    if scale == 0 or abs(scale) >= 1:
        return None
    inverse = 1 / scale
    nearest = round(inverse)
    if nearest != 0 and math.isclose(inverse, nearest, rel_tol=1e-12, abs_tol=0.0):
        return int(nearest)
    return None


def apply_scale(raw: int | float, scale: float, offset: float) -> int | float:
    """Engineering value ``raw × scale + offset``; an int raw stays int when scale 1, offset 0."""
    if scale == 1 and offset == 0:
        return raw if isinstance(raw, int) else float(raw)
    divisor = _exact_divisor(scale)
    # 2305 × 0.1 is 230.50000000000003 in binary floating point, 2305 / 10 is 230.5: dividing
    # by the integer the decimal scale stands for gives the value the meter's manual means.
    scaled = raw / divisor if divisor is not None else raw * scale
    return scaled + offset if offset else float(scaled)


# What a Modbus exception code means (the protocol's names), for messages.
EXCEPTION_MEANINGS: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
