"""A misbehaving Modbus device: a small asyncio server that answers each read request the way
a test tells it (well, with an exception, too short, with a wrong transaction, unit or function
code, junk, a reset in the middle of the answer, or not at all).

It speaks Modbus TCP (MBAP), RTU frames through TCP (for ``rtu+tcp://``), or RTU on a serial
path (one end of a socat pty pair). Register A holds A + 1000; bit A is A % 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import termios
import tty
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from pymodbus.framer import FramerRTU

__all__ = ["Answer", "HostileServer", "Request", "always", "register_value"]


class Answer(Enum):
    """How the server answers one request."""

    GOOD = "good"
    EXCEPTION = "exception"  # exception ``code`` of the Request's reply
    SHORT = "short"  # a consistent answer with one register (or 8 bits) fewer than asked
    SHORT_DECLARED = "short_declared"  # byte count as asked, but half the data bytes
    WRONG_TID = "wrong_tid"  # TCP: transaction id + 1
    TID_ZERO = "tid_zero"  # TCP: transaction id 0 (pymodbus takes it as a match)
    WRONG_UNIT = "wrong_unit"  # unit id + 1
    WRONG_FC = "wrong_fc"  # a good answer of another read function
    JUNK = "junk"  # bytes that are no Modbus frame
    BAD_CRC = "bad_crc"  # RTU: a good answer with a broken CRC
    RST = "rst"  # half of a good answer, then a TCP reset
    CLOSE = "close"  # the connection closed at once, nothing sent
    SILENT = "silent"


@dataclass(frozen=True, slots=True)
class Request:
    """A read request as the server got it; ``index`` counts requests from 0."""

    index: int
    tid: int
    unit: int
    fc: int
    address: int
    count: int


Behaviour = Callable[[Request], tuple[Answer, int]]
"""For each request: how to answer it, and the exception code (for Answer.EXCEPTION)."""

JUNK = bytes(range(0x41, 0x51)) + b"\r\n"


def always(answer: Answer, code: int = 4) -> Behaviour:
    """Answer every request the same way."""
    return lambda _request: (answer, code)


def register_value(address: int) -> int:
    """What holding/input register ``address`` holds."""
    return (address + 1000) & 0xFFFF


def _data(fc: int, address: int, count: int) -> bytes:
    if fc in (1, 2):
        bits = [(address + i) % 2 for i in range(count)]
        out = bytearray((count + 7) // 8)
        for i, bit in enumerate(bits):
            out[i // 8] |= bit << (i % 8)
        return bytes(out)
    return b"".join(struct.pack(">H", register_value(address + i)) for i in range(count))


def _pdu(request: Request, answer: Answer, code: int) -> bytes:
    fc, address, count = request.fc, request.address, request.count
    if answer is Answer.EXCEPTION:
        return bytes([fc | 0x80, code])
    if answer is Answer.WRONG_FC:
        fc = 4 if fc == 3 else 3
    if answer is Answer.SHORT:
        count -= 8 if fc in (1, 2) else 1
        data = _data(fc, address, max(count, 0))
        return bytes([fc, len(data)]) + data
    data = _data(fc, address, count)
    if answer is Answer.SHORT_DECLARED:
        return bytes([fc, len(data)]) + data[: len(data) // 2]
    return bytes([fc, len(data)]) + data


def _rtu(unit: int, pdu: bytes) -> bytes:
    frame = bytes([unit]) + pdu
    return frame + FramerRTU.compute_CRC(frame).to_bytes(2, "big")


class HostileServer:
    """Serves one behaviour on TCP (``framing`` "tcp" or "rtu") or on a serial path (RTU)."""

    def __init__(self, behaviour: Behaviour, *, framing: str = "tcp") -> None:
        if framing not in ("tcp", "rtu"):
            raise ValueError(f"framing {framing!r}: tcp or rtu")
        self.behaviour = behaviour
        self.framing = framing
        self.requests: list[Request] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._serial_fd: int | None = None
        self._serial_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ framing

    def _answer(self, tid: int, unit: int, pdu: bytes) -> tuple[Answer, bytes]:
        fc = pdu[0]
        address, count = struct.unpack(">HH", pdu[1:5])
        request = Request(len(self.requests), tid, unit, fc, address, count)
        self.requests.append(request)
        answer, code = self.behaviour(request)
        if answer in (Answer.SILENT, Answer.CLOSE):
            return answer, b""
        if answer is Answer.JUNK:
            return answer, JUNK
        body = _pdu(request, answer, code)
        if answer is Answer.WRONG_UNIT:
            unit = (unit + 1) & 0xFF
        if self.framing == "rtu":
            frame = _rtu(unit, body)
            if answer is Answer.BAD_CRC:
                frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])
        else:
            if answer is Answer.WRONG_TID:
                tid = (tid + 1) & 0xFFFF
            elif answer is Answer.TID_ZERO:
                tid = 0
            frame = struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
        if answer is Answer.RST:
            frame = frame[: len(frame) // 2]
        return answer, frame

    def _next_request(self, buffer: bytearray) -> tuple[int, int, bytes] | None:
        """(tid, unit, pdu) of the first whole request in ``buffer`` (consumed), or None."""
        if self.framing == "rtu":
            if len(buffer) < 8:
                return None
            frame = bytes(buffer[:8])
            del buffer[:8]
            return 0, frame[0], frame[1:6]
        if len(buffer) < 7:
            return None
        tid, _pid, length, unit = struct.unpack(">HHHB", buffer[:7])
        if len(buffer) < 6 + length:
            return None
        pdu = bytes(buffer[7 : 6 + length])
        del buffer[: 6 + length]
        return tid, unit, pdu

    # ------------------------------------------------------------------ TCP

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        buffer = bytearray()
        try:
            while chunk := await reader.read(4096):
                buffer += chunk
                while (request := self._next_request(buffer)) is not None:
                    answer, frame = self._answer(*request)
                    if frame:
                        writer.write(frame)
                        await writer.drain()
                    if answer is Answer.RST:
                        # SO_LINGER 0: closing sends RST instead of FIN.
                        writer.get_extra_info("socket").setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        writer.transport.abort()
                        return
                    if answer is Answer.CLOSE:
                        writer.close()
                        return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def start_tcp(self, port: int) -> HostileServer:
        """Listen on 127.0.0.1:port."""
        self._server = await asyncio.start_server(self._client, "127.0.0.1", port)
        return self

    # ------------------------------------------------------------------ serial (pty)

    async def start_serial(self, path: str) -> HostileServer:
        """Serve RTU on a serial path (the server end of a socat pty pair)."""
        if self.framing != "rtu":
            raise ValueError("a serial line carries RTU frames: framing='rtu'")
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd, termios.TCSANOW)
        self._serial_fd = fd
        self._serial_task = asyncio.create_task(self._serve_serial(fd), name="hostile-serial")
        return self

    async def _serve_serial(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        buffer = bytearray()
        readable = asyncio.Event()
        loop.add_reader(fd, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    buffer += os.read(fd, 4096)
                except BlockingIOError:
                    continue
                while (request := self._next_request(buffer)) is not None:
                    _answer, frame = self._answer(*request)
                    if frame:
                        os.write(fd, frame)
        finally:
            loop.remove_reader(fd)

    async def stop(self) -> None:
        """Stop serving and drop every connection."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None
        if self._serial_task is not None:
            self._serial_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._serial_task
            self._serial_task = None
        if self._serial_fd is not None:
            os.close(self._serial_fd)
            self._serial_fd = None
