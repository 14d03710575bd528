"""The driver's own small Modbus client: one connection, one request at a time.

A :class:`ModbusClient` sends a request PDU and waits for its answer over Modbus TCP (MBAP,
answers matched by transaction id), RTU through a TCP socket (``rtu+tcp://``), or RTU on a
serial port (drivers/serialio.py's :class:`~drivers.serialio.SerialLink`). It does no retries
and keeps no pauses: the line (drivers/modbus/bus.py) owns both. Deadlines are
``asyncio.timeout`` scopes, so a cancelled exchange is cancelled, never swallowed (Python
3.11's ``asyncio.wait_for`` can drop a cancellation).

A stale answer (to an earlier request that timed out) is never taken for the current one: on
TCP its transaction id differs and it is skipped; on RTU the input is flushed before each
request. What an exchange heard is kept, so a timeout tells silence from a wrong answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from drivers.modbus.frames import (
    Answer,
    FrameError,
    decode_answer,
    mbap_frame,
    rtu_frame,
    scan_mbap,
    scan_rtu,
)
from drivers.serialio import MAX_BUFFER_BYTES, PortGone, ReadTimeout, SerialLink, SerialSettings

__all__ = ["ExchangeFailed", "ModbusClient", "TcpLink"]

T = TypeVar("T")


class ExchangeFailed(Exception):
    """No answer to a request: ``heard`` holds every byte that came back during it (empty
    for silence), ``closed`` says the connection closed, ``problem`` what was wrong if known."""

    def __init__(self, message: str, *, heard: bytes = b"", closed: bool = False,
                 problem: str = "") -> None:
        self.heard = heard
        self.closed = closed
        self.problem = problem
        super().__init__(message)


class _LinkClosed(Exception):
    def __init__(self, partial: bytes) -> None:
        self.partial = partial
        super().__init__("the connection closed")


class _Receiver(asyncio.Protocol):
    """Buffers what a TCP socket receives; notes when it closes."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.arrived = asyncio.Event()
        self.lost = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_BUFFER_BYTES:
            del self.buffer[: len(self.buffer) - MAX_BUFFER_BYTES]
        self.arrived.set()

    def eof_received(self) -> bool | None:
        self.lost = True
        self.arrived.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.arrived.set()


class TcpLink:
    """One TCP connection with a receive buffer, read like a serial link (read_frame)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._receiver: _Receiver | None = None

    @property
    def is_open(self) -> bool:
        """True while the connection is up and the far side has not closed it."""
        receiver = self._receiver
        return (receiver is not None and not receiver.lost and receiver.transport is not None
                and not receiver.transport.is_closing())

    async def open(self, seconds: float) -> None:
        """Connect; TimeoutError or OSError when it cannot be done within ``seconds``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(seconds):
            _, receiver = await loop.create_connection(_Receiver, self.host, self.port)
        self._receiver = receiver

    async def close(self) -> None:
        """Close the connection. Idempotent."""
        receiver, self._receiver = self._receiver, None
        if receiver is not None and receiver.transport is not None:
            receiver.transport.close()

    def _live(self) -> _Receiver:
        if self._receiver is None or self._receiver.transport is None:
            raise _LinkClosed(b"")
        return self._receiver

    async def write(self, data: bytes) -> None:
        """Send ``data``."""
        receiver = self._live()
        if receiver.lost:
            raise _LinkClosed(b"")
        assert receiver.transport is not None
        receiver.transport.write(data)

    def discard(self) -> bytes:
        """Drop and return whatever was received and not read yet."""
        receiver = self._live()
        data = bytes(receiver.buffer)
        receiver.buffer.clear()
        return data

    async def read_frame(self, scan: Callable[[bytes], tuple[int, T | None]], deadline: float) -> T:
        """The next frame ``scan`` accepts (see drivers/serialio.py ``read_frame``)."""
        receiver = self._live()
        while True:
            consumed, frame = scan(bytes(receiver.buffer))
            del receiver.buffer[:consumed]
            if frame is not None:
                return frame
            if consumed:
                continue
            if receiver.lost:
                raise _LinkClosed(bytes(receiver.buffer))
            receiver.arrived.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await receiver.arrived.wait()
            except TimeoutError:
                raise ReadTimeout(bytes(receiver.buffer)) from None


class ModbusClient:
    """Modbus requests over one TCP connection (``rtu`` framing or MBAP) or serial port (RTU)."""

    def __init__(self, *, rtu: bool, host: str = "", port: int = 0,
                 serial: SerialSettings | None = None, name: str = "") -> None:
        self.rtu = rtu or serial is not None
        self.link: TcpLink | SerialLink = (
            SerialLink(serial, name=name) if serial is not None else TcpLink(host, port))
        self._tid = 0
        self.sent_tid = 0

    @property
    def connected(self) -> bool:
        """True while the connection or port is open."""
        return self.link.is_open

    async def connect(self, seconds: float) -> None:
        """Open the connection or port (DeviceUnavailable, OSError or TimeoutError if not)."""
        if isinstance(self.link, SerialLink):
            await self.link.open()
        else:
            await self.link.open(seconds)

    async def close(self) -> None:
        """Close the connection or port. Idempotent."""
        await self.link.close()

    async def request(self, unit: int, pdu: bytes, *, seconds: float) -> Answer:
        """Send ``pdu`` to ``unit``; its answer, or ExchangeFailed (silence or wrong bytes)."""
        link = self.link
        heard = bytearray()
        problem = ""
        try:
            link.discard()  # stale answers and noise: never an answer to this request
            if self.rtu:
                self.sent_tid = 0
                await link.write(rtu_frame(unit, pdu))
            else:
                self._tid = self._tid % 0xFFFF + 1
                self.sent_tid = self._tid
                await link.write(mbap_frame(self._tid, unit, pdu))
            deadline = asyncio.get_running_loop().time() + seconds

            def scan(buffer: bytes) -> tuple[int, tuple[int, int, bytes] | None]:
                nonlocal problem
                if self.rtu:
                    consumed, rtu = scan_rtu(buffer, unit=unit)
                    found = None if rtu is None else (0, rtu[0], rtu[1])
                else:
                    consumed, found = scan_mbap(buffer)
                heard.extend(buffer[:consumed])
                if found is not None and not self.rtu and found[0] != self.sent_tid:
                    return consumed, None  # an answer to an earlier request: skipped
                return consumed, found

            try:
                tid, got_unit, body = await link.read_frame(scan, deadline)
            except FrameError as exc:
                problem = str(exc)
                heard += link_rest(link)
                await self.close()  # a TCP stream out of step: start a fresh one
                raise ExchangeFailed(problem, heard=bytes(heard), problem=problem) from exc
        except ReadTimeout as exc:
            heard += exc.partial
            if heard and not self.rtu and len(exc.partial):
                await self.close()  # a frame cut short leaves the stream out of step
            raise ExchangeFailed(f"no answer within {seconds:g} s", heard=bytes(heard)) from None
        except (_LinkClosed, PortGone, OSError) as exc:
            heard += getattr(exc, "partial", b"")
            await self.close()
            raise ExchangeFailed("the connection closed without an answer", heard=bytes(heard),
                                 closed=True) from exc
        if unit and got_unit != unit:
            raise ExchangeFailed(f"answer from unit {got_unit}, asked unit {unit}",
                                 heard=bytes(heard), problem="unit")
        try:
            return decode_answer(body, unit=got_unit, transaction_id=tid)
        except FrameError as exc:
            raise ExchangeFailed(str(exc), heard=bytes(heard), problem=str(exc)) from exc


def link_rest(link: TcpLink | SerialLink) -> bytes:
    """What is left in a link's buffer (after a frame error), for the message's excerpt."""
    try:
        return link.discard()
    except (_LinkClosed, PortGone):
        return b""
