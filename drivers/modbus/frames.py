"""Modbus frames without I/O: request PDUs, answers, the MBAP header (TCP) and RTU frames.

Pure functions over bytes, shared by the driver's client (drivers/modbus/client.py) and its
tests. Every parse is bounded: an answer longer than an ADU may be (256 bytes), a byte count
that disagrees with the data, a wrong unit, function or transaction id, or a bad CRC is a
:class:`FrameError` naming what was wrong (docs/protocols.md §3).

Frame scanners follow the ``scan(buffer) -> (consumed, frame | None)`` shape of
drivers/serialio.py: ``(0, None)`` means "need more bytes".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from drivers.modbus.codec import EXCEPTION_MEANINGS

__all__ = [
    "MAX_ADU_BYTES",
    "MAX_PDU_BYTES",
    "READ_FUNCTIONS",
    "Answer",
    "FrameError",
    "crc16",
    "decode_answer",
    "exception_text",
    "mbap_frame",
    "read_request",
    "rtu_answer_length",
    "rtu_frame",
    "scan_mbap",
    "scan_rtu",
    "write_registers_request",
]

MAX_ADU_BYTES = 256
MAX_PDU_BYTES = 253
MBAP_BYTES = 7
READ_FUNCTIONS = frozenset({1, 2, 3, 4})
WRITE_REGISTER = 6
WRITE_REGISTERS = 16
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000



class FrameError(ValueError):
    """Bytes that are no valid answer to the request; the message says what was wrong."""


def exception_text(code: int) -> str:
    """``exception 2 (illegal data address)``, or ``exception 99`` for an unknown code."""
    name = EXCEPTION_MEANINGS.get(code)
    return f"exception {code} ({name})" if name else f"exception {code}"


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS of ``data`` (poly 0xA001 reflected, init 0xFFFF; sent low byte first)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


@dataclass(frozen=True, slots=True)
class Answer:
    """One decoded answer PDU: data of a read, an echo of a write, or an exception."""

    function_code: int  # as received: bit 7 set on an exception answer
    unit: int
    transaction_id: int = 0
    registers: tuple[int, ...] = ()
    bits: tuple[bool, ...] = ()
    exception_code: int = 0

    def is_error(self) -> bool:
        """True for an exception answer."""
        return bool(self.function_code & 0x80)


def read_request(function: int, address: int, count: int) -> bytes:
    """The PDU of a read (function 1-4) of ``count`` items from ``address``."""
    if function not in READ_FUNCTIONS:
        raise ValueError(f"function {function} is no read function (1-4)")
    limit = MAX_READ_BITS if function in (1, 2) else MAX_READ_REGISTERS
    if not 1 <= count <= limit or not 0 <= address <= 0xFFFF or address + count > 0x10000:
        raise ValueError(f"read of {count} from {address}: count 1..{limit} within 0..65535")
    return struct.pack(">BHH", function, address, count)


def write_registers_request(address: int, values: list[int]) -> bytes:
    """The PDU of a write: function 6 for one register, 16 for several."""
    if not 1 <= len(values) <= 123 or not all(0 <= v <= 0xFFFF for v in values):
        raise ValueError("1..123 register values of 0..65535")
    if len(values) == 1:
        return struct.pack(">BHH", WRITE_REGISTER, address, values[0])
    body = b"".join(struct.pack(">H", v) for v in values)
    return struct.pack(">BHHB", WRITE_REGISTERS, address, len(values), len(body)) + body


def mbap_frame(transaction_id: int, unit: int, pdu: bytes) -> bytes:
    """A Modbus TCP ADU: MBAP header (transaction id, protocol 0, length, unit) + PDU."""
    return struct.pack(">HHHB", transaction_id & 0xFFFF, 0, len(pdu) + 1, unit) + pdu


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    """An RTU ADU: unit + PDU + CRC (low byte first)."""
    body = bytes([unit]) + pdu
    return body + crc16(body).to_bytes(2, "little")


def decode_answer(pdu: bytes, *, unit: int, transaction_id: int = 0) -> Answer:
    """The answer a PDU carries; FrameError when its length disagrees with its contents."""
    if not pdu:
        raise FrameError("empty answer (no function code)")
    if len(pdu) > MAX_PDU_BYTES:
        raise FrameError(f"answer of {len(pdu)} bytes, longer than Modbus allows")
    function = pdu[0]
    if function & 0x80:
        if len(pdu) != 2:
            raise FrameError(f"exception answer of {len(pdu)} bytes, expected 2")
        return Answer(function, unit, transaction_id, exception_code=pdu[1])
    if function in READ_FUNCTIONS:
        if len(pdu) < 2 or pdu[1] != len(pdu) - 2:
            declared = pdu[1] if len(pdu) > 1 else 0
            raise FrameError(
                f"byte count {declared}, but {max(len(pdu) - 2, 0)} data bytes follow"
            )
        data = pdu[2:]
        if function in (1, 2):
            bits = tuple(bool(byte >> i & 1) for byte in data for i in range(8))
            return Answer(function, unit, transaction_id, bits=bits)
        if len(data) % 2:
            raise FrameError(f"{len(data)} data bytes: registers come in pairs")
        registers = struct.unpack(f">{len(data) // 2}H", data)
        return Answer(function, unit, transaction_id, registers=registers)
    if function in (WRITE_REGISTER, WRITE_REGISTERS):
        if len(pdu) != 5:
            raise FrameError(f"write answer of {len(pdu)} bytes, expected 5")
        return Answer(function, unit, transaction_id, registers=struct.unpack(">HH", pdu[1:]))
    raise FrameError(f"answer with function code {function}, which no request here sends")


def scan_mbap(buffer: bytes) -> tuple[int, tuple[int, int, bytes] | None]:
    """The first Modbus TCP frame of ``buffer``: ``(consumed, (tid, unit, pdu))``.

    ``(0, None)`` while the frame is incomplete. A header with a protocol id other than 0 or a
    length no ADU may have is FrameError: a TCP stream has no frame marks to resync on.
    """
    if len(buffer) < MBAP_BYTES:
        if len(buffer) >= 4 and buffer[2:4] != b"\x00\x00":
            raise FrameError("protocol id is not 0")
        return 0, None
    tid, protocol, length, unit = struct.unpack(">HHHB", buffer[:MBAP_BYTES])
    if protocol != 0:
        raise FrameError(f"protocol id {protocol}, not 0")
    if not 2 <= length <= MAX_PDU_BYTES + 1:
        raise FrameError(f"length field {length}, outside 2..{MAX_PDU_BYTES + 1}")
    end = 6 + length
    if len(buffer) < end:
        return 0, None
    return end, (tid, unit, bytes(buffer[MBAP_BYTES:end]))


def rtu_answer_length(head: bytes) -> int | None:
    """The whole length of an RTU answer from its first 3 bytes, or None if unknown yet."""
    if len(head) < 2:
        return None
    function = head[1]
    if function & 0x80:
        return 5
    if function in READ_FUNCTIONS:
        return None if len(head) < 3 else 3 + head[2] + 2
    if function in (WRITE_REGISTER, WRITE_REGISTERS):
        return 8
    return 0  # no answer this client asks for starts so: junk


def scan_rtu(buffer: bytes, *, unit: int) -> tuple[int, tuple[int, bytes] | None]:
    """The first RTU answer from ``unit`` in ``buffer``: ``(consumed, (unit, pdu))``.

    Skips (consumes) bytes that start no valid frame, one at a time, so a frame behind line
    noise is still found; ``(0, None)`` while a candidate is incomplete. A frame of another
    unit with a good CRC is skipped too: the caller tells what it heard at its deadline.
    """
    start = 0
    while start < len(buffer):
        head = buffer[start : start + 3]
        if head[0] == unit or not unit:
            length = rtu_answer_length(head)
            if length is None:
                return start, None
            if 4 <= length <= MAX_ADU_BYTES:
                if len(buffer) - start < length:
                    return start, None
                frame = buffer[start : start + length]
                if crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little"):
                    return start + length, (frame[0], bytes(frame[1:-2]))
        start += 1
    return start, None
