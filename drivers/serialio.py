"""A small async serial link shared by the serial sensor and meter drivers (and their simulators).

Why ``serial_asyncio_fast`` and not pyserial in a thread: the event loop watches the port's file
descriptor (``add_reader``), so a waiting read costs no thread and no polling, a deadline is a
plain ``asyncio.timeout`` that cancels cleanly (a blocking ``Serial.read`` in a thread cannot be
cancelled), and an unplugged adapter is noticed at once, because the kernel marks the descriptor
readable and the read fails. ``socket://HOST:PORT`` URLs go through ``asyncio`` sockets.

A :class:`SerialLink` keeps every received byte in its own buffer, so drivers can look ahead,
resynchronise on a frame header and push a rejected candidate back. Frame *scanners* are pure
functions ``scan(buffer) -> (consumed, frame | None)`` (see :meth:`SerialLink.read_frame`), so
the resync logic of each protocol lives in its ``frames.py`` and is fuzzed there.

The link reopens itself: after the port vanished (``PortGone``) the next :meth:`open` opens the
path again, and fails with ``DeviceUnavailable`` naming the port while it is missing. The path is
looked up at every open, never resolved once, and an open link whose path now names another
device (an adapter unplugged and plugged back between two polls, its ``/dev/serial/by-id`` link
pointing to a new tty) counts as closed, so it is reopened before it is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from agent.errors import DeviceUnavailable, PortMissing

if TYPE_CHECKING:
    from asyncio import BaseTransport

__all__ = [
    "FRAMINGS",
    "MAX_BUFFER_BYTES",
    "PortGone",
    "ReadTimeout",
    "SerialLink",
    "SerialSettings",
    "device_identity",
    "parse_framing",
    "port_missing",
    "serve_port",
    "strip_bit7",
]

log = structlog.get_logger()

T = TypeVar("T")

MAX_BUFFER_BYTES = 64 * 1024
"""Bytes kept when nobody reads (an active-mode sensor streaming between polls); oldest dropped."""

_CLOSE_WAIT_SECONDS = 2.0
_DRAIN_WAIT_SECONDS = 5.0

FRAMINGS: dict[str, tuple[int, str, int]] = {
    "8N1": (8, "N", 1),
    "8E1": (8, "E", 1),
    "8O1": (8, "O", 1),
    "8N2": (8, "N", 2),
    "7E1": (7, "E", 1),
    "7O1": (7, "O", 1),
    "7N2": (7, "N", 2),
}


def parse_framing(text: str) -> tuple[int, str, int]:
    """``"7E1"`` → ``(7, "E", 1)``: data bits, parity, stop bits."""
    try:
        return FRAMINGS[text.upper()]
    except KeyError:
        known = ", ".join(FRAMINGS)
        raise ValueError(f"{text!r} is not a serial framing: write one of {known}") from None


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """A port (device path or pyserial URL such as ``socket://127.0.0.1:7000``) and its framing.

    The one serial settings type of every driver, simulator and tool: the serial sensor and
    meter links here, the Modbus RTU lines (from a ``[[buses]]`` table) and ``probe``/``scan``.
    """

    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1

    @property
    def is_url(self) -> bool:
        """True for pyserial URLs (``socket://``, ``rfc2217://``): framing is the far end's job."""
        return "://" in self.port

    @property
    def label(self) -> str:
        """The port and its framing, e.g. ``/dev/ttyUSB0 9600 8N1``."""
        return f"{self.port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


def device_identity(settings: SerialSettings) -> tuple[int, int] | None:
    """The device file a port's path names now, through any symlink (None for a URL, or
    when it is missing): another value than at open means the adapter was replugged."""
    if settings.is_url:
        return None
    try:
        found = os.stat(settings.port)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def port_missing(settings: SerialSettings) -> bool:
    """True when the port's path names nothing (an adapter unplugged or not plugged in yet)."""
    return not settings.is_url and not os.path.exists(settings.port)


class PortGone(DeviceUnavailable):
    """The port went away while in use (USB adapter unplugged, pty closed)."""


class ReadTimeout(Exception):  # a condition the drivers translate, not an AgentError
    """A read's deadline passed; ``partial`` holds what had arrived (after skipped garbage)."""

    def __init__(self, partial: bytes, skipped: int = 0) -> None:
        self.partial = partial
        self.skipped = skipped
        super().__init__(f"timed out with {len(partial)} byte(s) pending, {skipped} skipped")

    @property
    def silent(self) -> bool:
        """True when nothing at all arrived: the device did not answer."""
        return not self.partial and not self.skipped


def strip_bit7(data: bytes) -> bytes:
    """Clear bit 7 of every byte: 7-bit data read at 8N1 carries its parity bit there."""
    return bytes(b & 0x7F for b in data)


class _Receiver(asyncio.Protocol):
    """Collects received bytes for the link; notes when the port goes away."""

    def __init__(self, receive_filter: Callable[[bytes], bytes] | None) -> None:
        self.buffer = bytearray()
        self.arrived = asyncio.Event()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: Exception | None = None
        self._filter = receive_filter

    def data_received(self, data: bytes) -> None:
        if self._filter is not None:
            data = self._filter(data)
        self.buffer += data
        overflow = len(self.buffer) - MAX_BUFFER_BYTES
        if overflow > 0:
            del self.buffer[:overflow]
        self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("port closed")
        self.arrived.set()
        if not self.closed.done():
            self.closed.set_result(None)


class SerialLink:
    """One serial port (or pyserial URL) with a receive buffer, deadlines and frame resync.

    ``receive_filter`` rewrites received bytes before they are buffered, e.g. :func:`strip_bit7`
    for 7-bit protocols read at 8N1 (docs/protocols.md §4). ``name`` prefixes every error message.
    """

    def __init__(
        self,
        settings: SerialSettings,
        *,
        name: str = "",
        receive_filter: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.settings = settings
        self.name = name or settings.port
        self._filter = receive_filter
        self._transport: BaseTransport | None = None
        self._receiver: _Receiver | None = None
        self._device: tuple[int, int] | None = None  # what the path named when opened
        self._baudrate = settings.baudrate
        self.opens = 0
        self._log = log.bind(port=settings.port)

    # ------------------------------------------------------------------ open / close

    @property
    def port(self) -> str:
        """The device path or URL."""
        return self.settings.port

    @property
    def is_open(self) -> bool:
        """True while the port is open and has not gone away."""
        return (
            self._transport is not None
            and self._receiver is not None
            and self._receiver.lost is None
            and not self._transport.is_closing()
            and self._device == self._identity()
        )

    def _identity(self) -> tuple[int, int] | None:
        return device_identity(self.settings)

    @property
    def baudrate(self) -> int:
        """The baud rate the port runs at now."""
        return self._baudrate

    async def open(self) -> None:
        """Open the port if it is not open; raise DeviceUnavailable naming it when it cannot be."""
        if self.is_open:
            return
        await self.close()
        import serial
        from serial_asyncio_fast import create_serial_connection

        loop = asyncio.get_running_loop()
        receiver = _Receiver(self._filter)
        options: dict[str, Any] = {
            "baudrate": self.settings.baudrate,
            "bytesize": self.settings.bytesize,
            "parity": self.settings.parity,
            "stopbits": self.settings.stopbits,
        }
        if not self.settings.is_url:
            options["exclusive"] = True  # a second program on the port garbles both
        try:
            transport, _ = await create_serial_connection(
                loop, lambda: receiver, self.settings.port, **options
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            error = PortMissing if port_missing(self.settings) else DeviceUnavailable
            raise error(f"{self.name}: {self._open_failure(exc)}") from exc
        self._transport = transport
        self._receiver = receiver
        self._device = self._identity()
        self._baudrate = self.settings.baudrate
        self.opens += 1
        self._log.debug("serial_port_opened", framing=self.settings.label)

    def _open_failure(self, exc: BaseException) -> str:
        port = self.settings.port
        if self.settings.is_url:
            return f"cannot open {port} ({exc}): check that the serial server listens there"
        if not os.path.exists(port):
            return (
                f"serial port {port} does not exist (sensor or USB adapter unplugged?): check "
                "the cable and the port name"
            )
        text = str(exc)
        if "Invalid argument" in text or "EINVAL" in text:
            return (
                f"serial port {port} refuses framing {self.settings.label} ({text}): a pty "
                "accepts 8N1 only; use framing 8N1 or a socket:// URL"
            )
        return (
            f"serial port {port} cannot be opened ({text}): stop the other program using it, "
            "or fix the port's permissions"
        )

    async def close(self) -> None:
        """Close the port and wait until it is released. Idempotent."""
        transport, receiver = self._transport, self._receiver
        self._transport = None
        self._receiver = None
        if transport is None or receiver is None:
            return
        if not transport.is_closing():
            transport.close()
        # serial_asyncio_fast closes the descriptor in a background task; a reopen before that
        # finished would fail on the exclusive lock.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(receiver.closed), _CLOSE_WAIT_SECONDS)

    def _live(self) -> tuple[BaseTransport, _Receiver]:
        transport, receiver = self._transport, self._receiver
        if transport is None or receiver is None:
            raise PortGone(f"{self.name}: serial port {self.port} is not open")
        if receiver.lost is not None or transport.is_closing():
            reason = receiver.lost or "closing"
            raise PortGone(
                f"{self.name}: serial port {self.port} went away ({reason}): check the "
                "cable; it is reopened at the next poll"
            )
        return transport, receiver

    # ------------------------------------------------------------------ settings

    def set_baudrate(self, baudrate: int) -> None:
        """Switch the port's baud rate now (ignored by ptys and socket:// URLs, as on the wire)."""
        import serial

        transport, _ = self._live()
        port = transport.get_extra_info("serial")
        if port is not None and not self.settings.is_url:
            try:
                port.baudrate = baudrate
            except (serial.SerialException, OSError) as exc:
                transport.close()
                raise PortGone(
                    f"{self.name}: serial port {self.port} went away ({exc}): check the cable; "
                    "it is reopened at the next poll"
                ) from exc
        self._baudrate = baudrate

    # ------------------------------------------------------------------ writing

    async def write(self, data: bytes) -> None:
        """Queue ``data`` for sending."""
        transport, _ = self._live()
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(data)

    async def drain(self) -> None:
        """Wait until everything written has left the port (before a baud-rate switch)."""
        transport, _ = self._live()
        assert isinstance(transport, asyncio.WriteTransport)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _DRAIN_WAIT_SECONDS
        # The transport has no "drained" event below its high-water mark; bytes rarely wait here.
        while transport.get_write_buffer_size() > 0 and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        port = transport.get_extra_info("serial")
        if port is None or self.settings.is_url:
            return
        # tcdrain: the UART's own FIFO empties at the line's baud rate.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(loop.run_in_executor(None, port.flush), _DRAIN_WAIT_SECONDS)

    # ------------------------------------------------------------------ reading

    def deadline(self, seconds: float) -> float:
        """The event-loop time ``seconds`` from now, for the read methods."""
        return asyncio.get_running_loop().time() + seconds

    def discard(self) -> bytes:
        """Drop and return whatever was received and not read yet (stale frames, noise)."""
        _, receiver = self._live()
        data = bytes(receiver.buffer)
        receiver.buffer.clear()
        return data

    def push_back(self, data: bytes) -> None:
        """Put bytes back in front of the buffer (a rejected frame candidate's tail)."""
        _, receiver = self._live()
        receiver.buffer[:0] = data

    @property
    def pending(self) -> int:
        """Bytes received and not read yet."""
        return len(self._receiver.buffer) if self._receiver is not None else 0

    async def _more(self, receiver: _Receiver, deadline: float, skipped: int) -> None:
        """Wait for more bytes until ``deadline``; ReadTimeout or PortGone otherwise."""
        if receiver.lost is not None:
            self._live()
        receiver.arrived.clear()
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise ReadTimeout(bytes(receiver.buffer), skipped)
        try:
            async with asyncio.timeout(remaining):
                await receiver.arrived.wait()
        except TimeoutError:
            raise ReadTimeout(bytes(receiver.buffer), skipped) from None
        if receiver.lost is not None:
            self._live()

    async def read_exactly(self, count: int, deadline: float) -> bytes:
        """The next ``count`` bytes, or ReadTimeout at ``deadline`` (the bytes stay buffered)."""
        _, receiver = self._live()
        while len(receiver.buffer) < count:
            await self._more(receiver, deadline, 0)
        data = bytes(receiver.buffer[:count])
        del receiver.buffer[:count]
        return data

    async def read_until(self, terminator: bytes, deadline: float, *, limit: int = 4096) -> bytes:
        """Bytes up to and including ``terminator``; ReadTimeout at ``deadline`` or past ``limit``.

        Past ``limit`` bytes without the terminator it raises ReadTimeout at once: a stream of
        noise must not keep a read busy until its deadline.
        """
        _, receiver = self._live()
        while True:
            end = receiver.buffer.find(terminator)
            if end >= 0:
                end += len(terminator)
                data = bytes(receiver.buffer[:end])
                del receiver.buffer[:end]
                return data
            if len(receiver.buffer) > limit:
                raise ReadTimeout(bytes(receiver.buffer), 0)
            await self._more(receiver, deadline, 0)

    async def read_frame(self, scan: Callable[[bytes], tuple[int, T | None]], deadline: float) -> T:
        """The next frame ``scan`` accepts, resynchronising past whatever it rejects.

        ``scan(buffer)`` returns ``(consumed, frame)``: a frame and the bytes it used; ``(n,
        None)`` with n > 0 to drop n bytes of garbage (or a rejected candidate) and go on;
        ``(0, None)`` when it needs more bytes. A scanner may raise its protocol error to stop
        (a strict reply check). ReadTimeout at ``deadline`` carries the bytes left over and the
        count skipped.
        """
        _, receiver = self._live()
        skipped = 0
        while True:
            consumed, frame = scan(bytes(receiver.buffer))
            if consumed < 0 or consumed > len(receiver.buffer):
                raise ValueError(f"scanner consumed {consumed} of {len(receiver.buffer)} bytes")
            del receiver.buffer[:consumed]
            if frame is not None:
                return frame
            if consumed > 0:
                skipped += consumed
                continue
            await self._more(receiver, deadline, skipped)


async def serve_port(
    link: SerialLink,
    session: Callable[[SerialLink], Awaitable[None]],
    *,
    retry_seconds: float = 0.05,
) -> None:
    """Device side (simulators): run ``session`` on the port, reopening it whenever it vanishes.

    Runs until cancelled. While the port is missing it retries every ``retry_seconds``, so a
    simulator outlives a restarted socat pair just as a sensor outlives a replugged adapter.
    """
    try:
        while True:
            try:
                await link.open()
            except DeviceUnavailable:
                await asyncio.sleep(retry_seconds)
                continue
            with contextlib.suppress(PortGone):
                await session(link)
            await link.close()
    finally:
        await link.close()
