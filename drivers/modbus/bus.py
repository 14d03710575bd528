"""Modbus lines: one client, one lock and the line's pauses, shared by the devices on it.

A :class:`ModbusLine` is one physical path to one or more Modbus devices:

- an RS-485 serial bus (``[[buses]]``, RTU framing), one client per serial port;
- an ``rtu+tcp://`` endpoint: RTU frames through a TCP socket (a serial device server);
- a ``tcp://`` endpoint with ``serialize = true`` (a Modbus TCP gateway in front of a line
  that answers one request at a time), or a device's own plain TCP connection.

Every exchange (one request out, one answer or timeout in) holds the line's lock, so frames of
two devices never interleave, and a neighbour's request can go between two of a device's
requests. Between exchanges the line keeps ``inter_frame`` seconds of silence; after an RTU
timeout it keeps the *quiet gap* (at least the timeout, and at least 100 ms), because a late
answer would otherwise be taken for the answer to the next request (docs/protocols.md §3).

Lines shared by several devices live in ``DriverContext.resources`` under
``modbus:line:…`` keys and are closed by a closer registered in ``DriverContext.closers``.
Requests go through the driver's own client (drivers/modbus/client.py, frames in
drivers/modbus/frames.py): the running agent does not load pymodbus.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from agent.driver import DriverContext
from agent.errors import ConfigError, DeviceUnavailable
from agent.fdlimit import fds_exhausted, report_fds_exhausted
from drivers.modbus.client import ExchangeFailed, ModbusClient
from drivers.modbus.config import ModbusDeviceConfig, Transport
from drivers.modbus.frames import Answer, crc16
from drivers.serialio import SerialSettings, port_missing

__all__ = [
    "MIN_QUIET_GAP_SECONDS",
    "LineStats",
    "LineUnavailable",
    "ModbusLine",
    "NoAnswer",
    "WrongAnswer",
    "describe_wrong_bytes",
    "line_for",
]

log = structlog.get_logger()

MIN_QUIET_GAP_SECONDS = 0.1
RESOURCE_PREFIX = "modbus:line:"


class NoAnswer(Exception):
    """One exchange got no usable answer: silence (timeout, or the connection closed before
    a byte came back), or a :class:`WrongAnswer`."""


class WrongAnswer(NoAnswer):
    """Bytes came back, but no valid answer to the request: a wrong transaction or unit id,
    a CRC error, junk, or a connection reset in the middle of the answer.

    The client skips frames with another transaction id (a late answer to an earlier request)
    and RTU frames of another unit, and times out; the line tells the two apart by whether any
    byte arrived during the exchange.
    """


EXCERPT_BYTES = 12


def describe_wrong_bytes(data: bytes, *, rtu: bool, unit: int, tid: int) -> str:
    """Why ``data``, received in answer to a request (``unit``, ``tid``), is no answer to it.

    Pure: ``data`` is what arrived in the exchange (possibly cut short); names the first thing
    that does not match, else shows an excerpt.
    """
    shown = data[:EXCERPT_BYTES].hex(" ") + (" …" if len(data) > EXCERPT_BYTES else "")
    if rtu:
        whole = len(data) >= 4 and crc16(data[:-2]) == int.from_bytes(data[-2:], "little")
        if unit and whole and data[0] != unit:
            return f"answer from unit {data[0]}, asked unit {unit} ({len(data)} bytes: {shown})"
        return f"{len(data)} bytes with no valid RTU frame (CRC error or junk: {shown})"
    if len(data) < 7 and b"\x00\x00".startswith(data[2:4]):
        return f"answer cut off after {len(data)} bytes ({shown})"
    if len(data) >= 7 and data[2:4] == b"\x00\x00":
        got_tid = int.from_bytes(data[0:2], "big")
        if tid and got_tid != tid:
            return f"answer with transaction id {got_tid}, sent {tid} ({len(data)} bytes: {shown})"
        if unit and data[6] != unit:
            return f"answer from unit {data[6]}, asked unit {unit} ({len(data)} bytes: {shown})"
        length = int.from_bytes(data[4:6], "big") + 6
        if len(data) < length:
            return f"answer cut off after {len(data)} of {length} bytes ({shown})"
        return f"{len(data)} bytes that are no valid answer ({shown})"
    return f"{len(data)} bytes that are no Modbus TCP answer (junk: {shown})"


class LineUnavailable(DeviceUnavailable):
    """The line cannot be opened (serial port missing or busy, TCP refused or unanswered).

    ``reason`` is the cause without the line's name, for callers that name the device;
    ``missing`` says the serial port is not there at all (see :class:`PortMissing`).
    """

    def __init__(self, where: str, reason: str, *, missing: bool = False) -> None:
        self.reason = reason
        self.missing = missing
        super().__init__(f"{where}: {reason}")


@dataclass
class LineStats:
    """Counters of one line since it was created."""

    exchanges: int = 0
    no_answers: int = 0  # wrong answers included
    wrong_answers: int = 0
    connects: int = 0
    connect_failures: int = 0


class ModbusLine:
    """One Modbus client, its lock, and the pauses the line needs between exchanges."""

    def __init__(
        self,
        name: str,
        transport: Transport,
        *,
        timeout: float,
        serial: SerialSettings | None = None,
        host: str = "",
        port: int = 0,
        inter_frame: float = 0.0,
        shared: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if transport is Transport.BUS and serial is None:
            raise ValueError(f"{name}: a serial bus line needs its serial settings")
        if timeout <= 0 or inter_frame < 0:
            raise ValueError(
                f"{name}: timeout must be > 0 and inter_frame ≥ 0 "
                f"(got {timeout}, {inter_frame})"
            )
        self.name = name
        self.transport = transport
        self.serial = serial
        self.host = host
        self.port = port
        self.inter_frame = inter_frame
        self.shared = shared
        self._timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._client: ModbusClient | None = None
        self._ready_at = 0.0
        self._holders = 0
        self.stats = LineStats()
        self._log = log.bind(line=name)

    # ---------------------------------------------------------------- settings

    @property
    def is_rtu(self) -> bool:
        """True when the line carries RTU frames (no transaction ids to match answers)."""
        return self.transport is not Transport.TCP

    @property
    def timeout(self) -> float:
        """Seconds to wait for each answer (and for a TCP connect)."""
        return self._timeout

    @property
    def quiet_gap(self) -> float:
        """Silence kept after an unanswered RTU request: a late answer must not count."""
        if not self.is_rtu:
            return 0.0
        return max(self._timeout, MIN_QUIET_GAP_SECONDS)

    def raise_timeout(self, seconds: float) -> None:
        """Wait at least ``seconds`` for answers: the line serves its slowest device."""
        if seconds > self._timeout:
            self._timeout = seconds
            if self._client is not None:
                # Takes effect with the next exchange (and connect); logged for a live line.
                self._log.debug("modbus_line_timeout_raised", timeout=seconds)

    # ---------------------------------------------------------------- connection

    def _new_client(self) -> ModbusClient:
        if self.transport is Transport.BUS:
            return ModbusClient(rtu=True, serial=self.serial, name=self.name)
        return ModbusClient(rtu=self.transport is Transport.RTU_TCP, host=self.host,
                            port=self.port)

    @property
    def connected(self) -> bool:
        """True while the client's port or connection is open."""
        return self._client is not None and self._client.connected

    async def _open(self) -> ModbusClient:
        """The connected client; (re)opens it. Call with the lock held."""
        if self._client is not None and self._client.connected:
            return self._client
        if self._client is not None:
            # A fresh client per connection: no request state survives a lost connection.
            await self._client.close()
        self._client = self._new_client()
        started = self._clock()
        try:
            await self._client.connect(self._timeout)
        except (DeviceUnavailable, OSError):  # TimeoutError is an OSError
            pass
        else:
            self.stats.connects += 1
            self._log.debug("modbus_line_connected")
            return self._client
        self.stats.connect_failures += 1
        await self._client.close()
        self._client = None
        missing = self.serial is not None and port_missing(self.serial)
        raise LineUnavailable(self.name, self._connect_failure(self._clock() - started),
                              missing=missing)

    def _connect_failure(self, elapsed: float) -> str:
        # An EMFILE would otherwise read as "refused".
        if fds_exhausted():
            return report_fds_exhausted()
        if self.transport is Transport.BUS:
            assert self.serial is not None
            port = self.serial.port
            if "://" in port:
                return f"cannot open {port}: check that the serial server listens there"
            if not os.path.exists(port):
                return (
                    f"serial port {port} does not exist (USB adapter unplugged?): check the "
                    "cable and the port name"
                )
            return (
                f"serial port {port} cannot be opened (in use by another program, or no "
                "permission): stop the other program or fix the port's permissions"
            )
        # The elapsed time tells a refused connection (at once) from an unanswered one (the
        # whole timeout), whatever the OS called it.
        if elapsed >= 0.9 * self._timeout:
            return (
                f"no answer within {self._timeout:g} s (timed out): check the address and "
                "network"
            )
        return "connection refused: check that the device is on and the port is right"

    async def connect(self) -> None:
        """Open the line if it is not open; raise LineUnavailable when it cannot be."""
        async with self._lock:
            await self._open()

    def hold(self) -> None:
        """A device starts using the line; it stays open while anyone holds it."""
        self._holders += 1

    async def release(self) -> None:
        """A device stops using the line; the last one out closes it (reopened on demand)."""
        self._holders = max(0, self._holders - 1)
        if self._holders == 0:
            await self.close()

    async def close(self) -> None:
        """Close the client; the next exchange opens it again. Idempotent."""
        async with self._lock:
            if self._client is not None:
                await self._client.close()
                self._client = None
                self._log.debug("modbus_line_closed")

    # ---------------------------------------------------------------- exchanges

    async def exchange(self, pdu: bytes, *, unit: int = 0) -> Answer:
        """Send one request ``pdu`` to ``unit`` on the line, alone, after the pause the line
        needs; the answer (data or a Modbus exception).

        Raises :class:`WrongAnswer` when bytes came back but no valid answer to it,
        :class:`NoAnswer` when nothing came back (either way the line then stays quiet for the
        quiet gap), :class:`LineUnavailable` when the line cannot be opened.
        """
        async with self._lock:
            client = await self._open()
            wait = self._ready_at - self._clock()
            if wait > 0:
                await self._sleep(wait)
            self.stats.exchanges += 1
            answered = False
            try:
                answer = await client.request(unit, pdu, seconds=self._timeout)
                answered = True
            except ExchangeFailed as exc:
                self.stats.no_answers += 1
                if exc.heard:
                    self.stats.wrong_answers += 1
                    detail = self._wrong(exc, unit, client.sent_tid)
                    if exc.closed:
                        detail += "; then the connection closed"
                    raise WrongAnswer(detail) from exc
                raise NoAnswer(str(exc)) from exc
            finally:
                # Also after a cancelled exchange: its answer may still be on its way.
                pause = self.inter_frame if answered else max(self.inter_frame, self.quiet_gap)
                self._ready_at = self._clock() + pause
            return answer

    def _wrong(self, exc: ExchangeFailed, unit: int, tid: int) -> str:
        """The message of a wrong answer: what was wrong, and an excerpt of what came."""
        described = describe_wrong_bytes(exc.heard, rtu=self.is_rtu, unit=unit, tid=tid)
        if not exc.problem or exc.problem == "unit":
            return described
        shown = exc.heard[:EXCERPT_BYTES].hex(" ") + (" …" if len(exc.heard) > EXCERPT_BYTES
                                                      else "")
        if not self.is_rtu and "junk" in described:
            return described
        return f"no valid answer: {exc.problem} ({len(exc.heard)} bytes: {shown})"


def _resource_key(config: ModbusDeviceConfig) -> str:
    if config.bus is not None:
        return f"{RESOURCE_PREFIX}bus:{config.bus}"
    return f"{RESOURCE_PREFIX}{config.endpoint}"


def _where(config: ModbusDeviceConfig) -> str:
    return f"devices (name={config.name}, driver=modbus)"


def _new_line(config: ModbusDeviceConfig, context: DriverContext) -> ModbusLine:
    transport = config.transport
    if transport is Transport.BUS:
        bus: Any = context.buses.get(config.bus or "")
        if bus is None:
            known = ", ".join(sorted(context.buses)) or "none"
            raise ConfigError(
                f"{_where(config)} → bus: no bus named {config.bus!r} (defined: {known}); "
                "add a [[buses]] table for it"
            )
        serial = SerialSettings(
            port=bus.port,
            baudrate=bus.baudrate,
            parity=bus.parity,
            stopbits=bus.stopbits,
            bytesize=bus.bytesize,
        )
        return ModbusLine(
            f"bus {bus.name} ({bus.port})",
            transport,
            timeout=bus.timeout.seconds,
            serial=serial,
            inter_frame=bus.inter_frame_seconds,
        )
    host, port = config.host_port
    return ModbusLine(str(config.endpoint), transport, timeout=config.timeout.seconds,
                      host=host, port=port)


def line_for(config: ModbusDeviceConfig, context: DriverContext) -> ModbusLine:
    """The line a device shares with its neighbours, created once per run in ``context``.

    On a bus, the bus's ``timeout`` applies; a device that sets its own ``timeout`` raises
    the line's to it. On a shared endpoint, the longest ``timeout`` of its devices applies.
    """
    if not config.shares_line:
        raise ValueError(f"device {config.name} has its own connection, not a shared line")
    key = _resource_key(config)
    mode_key = f"modbus:serialize:{config.endpoint}"
    if config.transport is Transport.TCP:
        # Devices on one tcp:// endpoint must agree: half of them serialized is no lock at all.
        mode = context.resources.setdefault(mode_key, True)
        if mode is not True:
            raise ConfigError(
                f"{_where(config)} → serialize: other devices on {config.endpoint} do not set "
                "serialize = true; set it on every device of that endpoint, or on none"
            )
    line = context.resources.get(key)
    if line is None:
        line = _new_line(config, context)
        context.resources[key] = line
        context.closers.append(line.close)
        log.debug("modbus_line_created", line=line.name, key=key)
    assert isinstance(line, ModbusLine)
    if config.transport is Transport.BUS:
        explicit = config.explicit_timeout_seconds
        if explicit is not None:
            line.raise_timeout(explicit)
    else:
        line.raise_timeout(config.timeout.seconds)
    return line


def note_private_endpoint(config: ModbusDeviceConfig, context: DriverContext) -> None:
    """Record that a tcp:// device has its own connection (``serialize`` left false)."""
    mode_key = f"modbus:serialize:{config.endpoint}"
    mode = context.resources.setdefault(mode_key, False)
    if mode is not False:
        raise ConfigError(
            f"{_where(config)} → serialize: other devices on {config.endpoint} set "
            "serialize = true; set it on this device too, or on none"
        )
