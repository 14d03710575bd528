"""Simulated Modbus devices served from device profiles (``ssc-agent simulate``).

Served over Modbus TCP (:func:`serve`), RTU frames over TCP (``serve(..., rtu=True)``, like a
serial device server), or RTU on a serial port (:func:`serve_serial`, e.g. one end of a socat
pty pair). Several unit ids share one server, as meters share one RS-485 line; units listed
in ``silent_units`` never answer (a dead meter on the bus).

The simulated devices themselves, and the profile's ``[simulate]`` table that says how their
values move, are in :mod:`drivers.modbus.simulated_meter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict, Unpack

import structlog

from agent.profiles import Profile, load_profile
from drivers.modbus.config import BIT_TABLES, Table
from drivers.modbus.simulated_meter import SimulatedMeter
from drivers.serialio import SerialSettings

if TYPE_CHECKING:
    from pymodbus.pdu import ModbusPDU
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer
    from pymodbus.simulator import SimAction

__all__ = [
    "SerialSettings",
    "ServeOptions",
    "ServedLog",
    "SimulatedMeter",
    "SimulatorFleet",
    "SimulatorServer",
    "run_simulate",
    "serve",
    "serve_many",
    "serve_serial",
]

log = structlog.get_logger()

ServedLog = Callable[[int, float, dict[str, float | int]], None]
"""Called with (unit, t, values) each time a simulated device's registers are updated."""

TracePacket = Callable[[bool, bytes], bytes]
"""pymodbus ``trace_packet`` hook: (sending, frame) → the frame to use (b"" sends nothing)."""

TracePdu = Callable[[bool, "ModbusPDU"], "ModbusPDU"]
"""pymodbus ``trace_pdu`` hook: (sending, pdu) → the pdu to use; tests count requests with it."""

_FUNCTION_CODE = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}

MeterSource = Profile | SimulatedMeter
UnitsSpec = Mapping[int, MeterSource] | Iterable[tuple[MeterSource, int]]


def _unit_map(
    profiles_and_units: UnitsSpec, seed: int | str, t0: float, step_seconds: float
) -> dict[int, SimulatedMeter]:
    pairs: Iterable[tuple[MeterSource, int]]
    if isinstance(profiles_and_units, Mapping):
        pairs = [(source, unit) for unit, source in profiles_and_units.items()]
    else:
        pairs = profiles_and_units
    meters: dict[int, SimulatedMeter] = {}
    for source, unit in pairs:
        if not 0 <= unit <= 255:
            raise ValueError(f"unit id {unit} is not a Modbus unit: use 0..255")
        if unit in meters:
            raise ValueError(f"unit id {unit} is given twice: each unit is its own meter")
        meters[unit] = (
            source
            if isinstance(source, SimulatedMeter)
            else SimulatedMeter(source, f"{seed}/{unit}", t0=t0, step_seconds=step_seconds)
        )
    if not meters:
        raise ValueError("nothing to serve: give at least one profile and unit id")
    return meters


def _muting(silent: frozenset[int], trace_packet: TracePacket | None,
            answering: frozenset[int] | None = None) -> TracePacket | None:
    """A trace_packet hook that drops every answer of a silent unit (first byte = unit id).

    With ``answering`` (RTU), every other unit is silent too: on a real RS-485 line an absent
    unit says nothing, while pymodbus would answer it with exception 4.
    """
    if not silent and answering is None:
        return trace_packet

    def hook(sending: bool, data: bytes) -> bytes:
        if sending and data and (data[0] in silent
                                 or (answering is not None and data[0] not in answering)):
            return b""
        return trace_packet(sending, data) if trace_packet is not None else data

    return hook


@dataclass
class SimulatorServer:
    """A running simulated Modbus server: one port (TCP or serial), one meter per unit id."""

    host: str
    port: int
    meters: dict[int, SimulatedMeter]
    update_interval: float
    clock: Callable[[], float]
    served_log: ServedLog | None
    serial: SerialSettings | None = None
    rtu: bool = False
    silent_units: frozenset[int] = frozenset()
    trace_packet: TracePacket | None = field(default=None, repr=False)
    trace_pdu: TracePdu | None = field(default=None, repr=False)
    _server: ModbusTcpServer | ModbusSerialServer | None = None
    _updater: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        """Where it serves: ``tcp://HOST:PORT``, ``rtu+tcp://HOST:PORT`` or ``rtu:PATH``."""
        if self.serial is not None:
            return f"rtu:{self.serial.port}"
        return f"{'rtu+tcp' if self.rtu else 'tcp'}://{self.host}:{self.port}"

    async def _start(self, action: SimAction | None) -> None:
        from pymodbus.framer import FramerType
        from pymodbus.server import ModbusSerialServer, ModbusTcpServer

        t = self.clock()
        devices = [m.sim_device(unit, t, action) for unit, m in self.meters.items()]
        answering = (frozenset(self.meters) - self.silent_units
                     if self.serial is not None or self.rtu else None)
        trace_packet = _muting(self.silent_units, self.trace_packet, answering)
        if self.serial is not None:
            self._server = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=self.serial.port,
                baudrate=self.serial.baudrate,
                parity=self.serial.parity,
                stopbits=self.serial.stopbits,
                bytesize=self.serial.bytesize,
                trace_packet=trace_packet,
                trace_pdu=self.trace_pdu,
            )
        else:
            self._server = ModbusTcpServer(
                devices,
                address=(self.host, self.port),
                framer=FramerType.RTU if self.rtu else FramerType.SOCKET,
                trace_packet=trace_packet,
                trace_pdu=self.trace_pdu,
            )
        try:
            await self._server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus: "Could not start listen, please check address."
            self._server = None
            what = f"serial port {self.serial.port}" if self.serial else f"{self.host}:{self.port}"
            raise OSError(
                f"simulator: cannot serve on {what}: check that it exists and nothing else "
                "holds it"
            ) from exc
        self._record(t)
        self._updater = asyncio.create_task(
            self._update_forever(), name=f"simulator-update-{self.where}"
        )

    def _record(self, t: float) -> None:
        if self.served_log is not None:
            for unit, meter in self.meters.items():
                self.served_log(unit, t, meter.values_at(t))

    async def update(self, t: float | None = None) -> None:
        """Write every meter's registers as at ``t`` (default: the clock) into the server."""
        assert self._server is not None, "update() before the server started"
        t = self.clock() if t is None else t
        for unit, meter in self.meters.items():
            for table, regs in meter.registers_at(t).items():
                for first, last in meter.defined[table]:
                    values = [regs[a] for a in range(first, last + 1)]
                    if table in BIT_TABLES:
                        await self._server.async_setValues(
                            unit, _FUNCTION_CODE[table], first, [bool(v) for v in values]
                        )
                    else:
                        await self._server.async_setValues(
                            unit, _FUNCTION_CODE[table], first, values
                        )
        self._record(t)

    async def _update_forever(self) -> None:
        while True:
            await asyncio.sleep(self.update_interval)
            await self.update()

    async def stop(self) -> None:
        """Stop updating and serving; drops connected clients. Idempotent."""
        if self._updater is not None:
            self._updater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._updater
            self._updater = None
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
            log.debug("simulator_stopped", where=self.where)


class ServeOptions(TypedDict, total=False):
    """What :func:`serve` and :func:`serve_serial` take besides where to serve (defaults: see
    :func:`_serve`)."""

    update_interval: float
    clock: Callable[[], float]
    seed: int | str
    step_seconds: float
    served_log: ServedLog | None
    action: SimAction | None
    silent_units: Iterable[int]
    trace_packet: TracePacket | None
    trace_pdu: TracePdu | None


async def serve(
    profiles_and_units: UnitsSpec,
    host: str,
    port: int,
    *,
    rtu: bool = False,
    **options: Unpack[ServeOptions],
) -> SimulatorServer:
    """Serve simulated meters on ``host:port`` (a unit → profile map, or (profile, unit) pairs).

    Registers are rewritten every ``update_interval`` seconds from ``clock()``; ``action`` is
    handed to every pymodbus ``SimDevice`` (tests use it to answer exception codes). With
    ``rtu`` the port speaks RTU frames instead of Modbus TCP (a serial device server).
    """
    return await _serve(profiles_and_units, host, port, None, rtu=rtu, **options)


async def serve_serial(
    profiles_and_units: UnitsSpec,
    path: str,
    *,
    baudrate: int = 9600,
    parity: str = "N",
    stopbits: int = 1,
    bytesize: int = 8,
    **options: Unpack[ServeOptions],
) -> SimulatorServer:
    """Serve simulated meters as Modbus RTU on the serial port ``path``, one per unit id.

    ``path`` is a device (``/dev/ttyUSB0``, one end of a socat pty pair) or a pyserial URL
    (``socket://127.0.0.1:P`` for framings a pty refuses, such as 8E1). Units in
    ``silent_units`` receive their requests but never answer, like a dead meter on the bus.
    """
    serial = SerialSettings(path, baudrate, parity=parity, stopbits=stopbits, bytesize=bytesize)
    return await _serve(profiles_and_units, "", 0, serial, rtu=True, **options)


async def _serve(
    profiles_and_units: UnitsSpec,
    host: str,
    port: int,
    serial: SerialSettings | None,
    *,
    rtu: bool,
    update_interval: float = 1.0,
    clock: Callable[[], float] = time.time,
    seed: int | str = 0,
    step_seconds: float = 1.0,
    served_log: ServedLog | None = None,
    action: SimAction | None = None,
    silent_units: Iterable[int] = (),
    trace_packet: TracePacket | None = None,
    trace_pdu: TracePdu | None = None,
) -> SimulatorServer:
    if update_interval <= 0:
        raise ValueError(f"update_interval must be greater than zero, got {update_interval}")
    meters = _unit_map(profiles_and_units, seed, clock(), step_seconds)
    server = SimulatorServer(
        host, port, meters, update_interval, clock, served_log, serial=serial, rtu=rtu,
        silent_units=frozenset(silent_units), trace_packet=trace_packet, trace_pdu=trace_pdu,
    )
    await server._start(action)
    log.debug("simulator_serving", where=server.where, units=sorted(meters),
              silent_units=sorted(server.silent_units))
    return server


@dataclass
class SimulatorFleet:
    """Several simulator servers (one per port) in one event loop."""

    servers: list[SimulatorServer]

    async def stop(self) -> None:
        """Stop every server."""
        for server in self.servers:
            await server.stop()


async def serve_many(
    profiles_and_units: UnitsSpec,
    host: str,
    ports: Sequence[int],
    *,
    update_interval: float = 1.0,
    clock: Callable[[], float] = time.time,
    seed: int | str = 0,
    served_log: ServedLog | None = None,
) -> SimulatorFleet:
    """One server per port, each with its own meters (seeded by port) for the same units."""
    pairs: list[tuple[MeterSource, int]] = (
        [(s, u) for u, s in profiles_and_units.items()]
        if isinstance(profiles_and_units, Mapping)
        else list(profiles_and_units)
    )
    if any(isinstance(source, SimulatedMeter) for source, _ in pairs):
        raise ValueError("serve_many() builds its own meters: pass profiles, not SimulatedMeters")
    servers: list[SimulatorServer] = []
    try:
        for port in ports:
            servers.append(
                await serve(
                    pairs,
                    host,
                    port,
                    update_interval=update_interval,
                    clock=clock,
                    seed=f"{seed}/{port}",
                    served_log=served_log,
                )
            )
    except BaseException:
        for server in servers:
            await server.stop()
        raise
    return SimulatorFleet(servers)


async def run_simulate(
    profile: str,
    host: str,
    port: int,
    units: list[int],
    duration: float | None,
    *,
    serial: str | None = None,
    baudrate: int = 9600,
    parity: str = "N",
    stopbits: int = 1,
    bytesize: int = 8,
    silent_units: Iterable[int] = (),
) -> None:
    """Serve ``profile`` as the given unit ids until cancelled (or for ``duration`` seconds).

    Modbus TCP on ``host:port``, or with ``serial=PATH`` Modbus RTU on that serial port
    (``host`` and ``port`` are then unused).
    """
    loaded = load_profile(profile)
    meters = dict.fromkeys(units, loaded)
    if serial is None:
        server = await serve(meters, host, port, silent_units=silent_units)
    else:
        server = await serve_serial(
            meters, serial, baudrate=baudrate, parity=parity, stopbits=stopbits,
            bytesize=bytesize, silent_units=silent_units,
        )
    try:
        unit_text = ", ".join(str(u) for u in sorted(units))
        where = (
            f"tcp://{host}:{port}"
            if serial is None
            else f"{serial} (Modbus RTU, {baudrate} {bytesize}{parity}{stopbits})"
        )
        print(
            f"simulating {loaded.name} as unit {unit_text} on {where} "
            f"({len(loaded.points)} points; Ctrl-C stops)",
            flush=True,
        )
        if duration is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(duration)
    finally:
        await server.stop()
