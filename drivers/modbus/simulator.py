"""Simulated Modbus devices served from device profiles (``ssc-agent simulate``).

Served over Modbus TCP (:func:`serve`), RTU frames over TCP (``serve(..., rtu=True)``, like a
serial device server), or RTU on a serial port (:func:`serve_serial`, e.g. one end of a socat
pty pair). Several unit ids share one server, as meters share one RS-485 line; units listed
in ``silent_units`` never answer (a dead meter on the bus).

A profile's ``[simulate]`` table says how each point's value moves; one key per point name,
each an inline table with a ``kind``:

```toml
[simulate]
voltage_l1    = { kind = "noise", base = 230.0, spread = 1.5, resolution = 0.1 }
energy_import = { kind = "counter", start = 12345.0, rate_per_hour = 4.2, resolution = 0.001 }
frequency     = { kind = "constant", value = 50.0 }
defined       = { input = [[0x00, 0x4F], [0x156, 0x157]] }   # optional, see below
```

- ``constant``: always ``value``.
- ``noise``: ``base`` plus uniform noise in ``[-spread, +spread]``, drawn afresh every time
  step (``step_seconds`` of the meter, 1 s by default) from the seed, the point name and the
  step number, so a given seed and time always give the same value.
- ``counter``: ``start + rate_per_hour × elapsed hours`` since the meter's start time ``t0``;
  never decreases.
- ``resolution`` (noise, counter; default 0.01): values are quantized to it, as a real meter's
  finite resolution does (it matters for compression on the wire). Counters round down.
- A point without a hint is a constant 0.
- ``defined`` (optional): extra address ranges ``[first, last]`` per table (``holding``,
  ``input``, ``coil``, ``discrete``) that the device answers, beyond what is derived.

Values are engineering values (after ``scale`` and ``offset``); integer points store
``round((value - offset) / scale)``, clamped to the type's range, and report the value that
raw number stands for. A simulated device answers for every register of its points, for the
gaps between neighbouring points up to the profile's ``max_gap`` (so any plan the profile's
defaults allow can be read), and for the ``defined`` ranges; ``forbidden_ranges`` of the
profile stay undefined (illegal address, exception 2) unless a point lies there. Anything
else also answers exception 2, like a real device.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.profiles import Profile, load_profile
from drivers.modbus.bus import SerialSettings
from drivers.modbus.codec import apply_scale, encode_value, is_float_type
from drivers.modbus.config import BIT_TABLES, ModbusPoint, PointType, Table

if TYPE_CHECKING:
    from pymodbus.pdu import ModbusPDU
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer
    from pymodbus.simulator import SimAction, SimDevice

__all__ = [
    "SerialSettings",
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
_INT_RANGE: dict[PointType, tuple[int, int]] = {
    PointType.U16: (0, 2**16 - 1),
    PointType.I16: (-(2**15), 2**15 - 1),
    PointType.U32: (0, 2**32 - 1),
    PointType.I32: (-(2**31), 2**31 - 1),
    PointType.U64: (0, 2**64 - 1),
    PointType.I64: (-(2**63), 2**63 - 1),
    PointType.BOOL: (0, 1),
}
_DEFINED_KEY = "defined"


class _Hint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConstantHint(_Hint):
    """The value never changes."""

    kind: Literal["constant"]
    value: int | float = 0


class NoiseHint(_Hint):
    """Base value plus seeded uniform noise, new each time step."""

    kind: Literal["noise"]
    base: float
    spread: float = Field(ge=0)
    resolution: float = Field(default=0.01, gt=0)


class CounterHint(_Hint):
    """A counter rising at a constant rate from its start value."""

    kind: Literal["counter"]
    start: float = 0.0
    rate_per_hour: float = Field(ge=0)
    resolution: float = Field(default=0.01, gt=0)


class _HintFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hints: dict[str, Annotated[ConstantHint | NoiseHint | CounterHint, Field(discriminator="kind")]]
    defined: dict[Table, list[tuple[int, int]]] = Field(default_factory=dict)


def _quantize(value: float, resolution: float, *, down: bool = False) -> float | int:
    # A tiny epsilon keeps 0.3 / 0.1 = 2.9999999999999996 from flooring to 2.
    steps = math.floor(value / resolution + 1e-9) if down else round(value / resolution)
    return apply_scale(steps, resolution, 0.0)


def _runs(addresses: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted addresses as inclusive (first, last) runs."""
    runs: list[tuple[int, int]] = []
    for address in sorted(set(addresses)):
        if runs and runs[-1][1] == address - 1:
            runs[-1] = (runs[-1][0], address)
        else:
            runs.append((address, address))
    return runs


class SimulatedMeter:
    """A device simulated from a profile; values are a pure function of seed and time."""

    def __init__(
        self,
        profile: Profile,
        seed: int | str = 0,
        *,
        t0: float = 0.0,
        step_seconds: float = 1.0,
    ) -> None:
        if step_seconds <= 0:
            raise ValueError(f"step_seconds must be greater than zero, got {step_seconds}")
        self.profile = profile
        self.seed = seed
        self.t0 = t0
        self.step_seconds = step_seconds
        where = f"profile {profile.name} ({profile.path})"
        try:
            self.points = [ModbusPoint.model_validate(p) for p in profile.points]
        except ValidationError as exc:
            raise ValueError(f"{where}: invalid point: {exc.errors()[0]['msg']}") from exc
        if not self.points:
            raise ValueError(f"{where}: has no [[points]] to simulate")
        names = {p.name for p in self.points}
        raw_hints = dict(profile.simulate)
        defined = raw_hints.pop(_DEFINED_KEY, {}) if _DEFINED_KEY not in names else {}
        try:
            parsed = _HintFile.model_validate({"hints": raw_hints, "defined": defined})
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(x) for x in first["loc"][1:])
            raise ValueError(f"{where}: [simulate] {loc}: {first['msg']}") from exc
        unknown = sorted(set(parsed.hints) - names)
        if unknown:
            raise ValueError(f"{where}: [simulate] names no such point(s) {unknown}")
        self._hints = parsed.hints
        self.defined = self._defined_addresses(parsed.defined)

    def _defined_addresses(
        self, extra: Mapping[Table, Sequence[tuple[int, int]]]
    ) -> dict[Table, list[tuple[int, int]]]:
        max_gap = int(self.profile.defaults.get("max_gap", 0))
        forbidden = [tuple(r) for r in self.profile.defaults.get("forbidden_ranges", [])]
        result: dict[Table, list[tuple[int, int]]] = {}
        for table in Table:
            spans = sorted(
                (p.address, p.address + p.width - 1) for p in self.points if p.table is table
            )
            own = {a for first, last in spans for a in range(first, last + 1)}
            filled = set(own)
            for (_, end), (start, _) in itertools.pairwise(spans):
                if 0 < start - end - 1 <= max_gap:
                    filled.update(range(end + 1, start))
            for first, last in extra.get(table, []):
                filled.update(range(first, last + 1))
            for first, last in forbidden:
                filled -= set(range(first, last + 1)) - own
            if filled:
                result[table] = _runs(filled)
        return result

    def _value(self, name: str, t: float) -> float | int:
        hint = self._hints.get(name)
        if hint is None:
            return 0.0
        if isinstance(hint, ConstantHint):
            return hint.value
        if isinstance(hint, CounterHint):
            hours = max(0.0, t - self.t0) / 3600.0
            return _quantize(hint.start + hint.rate_per_hour * hours, hint.resolution, down=True)
        step = math.floor(t / self.step_seconds)
        rng = random.Random(f"{self.seed}/{name}/{step}")
        return _quantize(hint.base + rng.uniform(-hint.spread, hint.spread), hint.resolution)

    def _raw(self, point: ModbusPoint, value: float | int) -> int | float:
        """The number the device stores for an engineering value."""
        if point.scale == 1 and point.offset == 0 and isinstance(value, int):
            unscaled: int | float = value  # a float would round 64-bit integers
        else:
            unscaled = (value - point.offset) / point.scale
        if is_float_type(point.type):
            return value if point.scale == 1 and point.offset == 0 else unscaled
        if point.type is PointType.BOOL:
            return int(unscaled >= 0.5)
        low, high = _INT_RANGE[point.type]
        if isinstance(unscaled, float) and not math.isfinite(unscaled):
            return 0
        return min(high, max(low, round(unscaled)))

    def values_at(self, t: float) -> dict[str, float | int]:
        """Each point's engineering value at time ``t`` (epoch seconds), as served."""
        values: dict[str, float | int] = {}
        for point in self.points:
            value = self._value(point.name, t)
            if is_float_type(point.type):
                values[point.name] = float(value)
            else:
                values[point.name] = apply_scale(self._raw(point, value), point.scale, point.offset)
        return values

    def registers_at(self, t: float) -> dict[Table, dict[int, int]]:
        """Per table, address → register (or bit: 0/1) of every defined address at ``t``."""
        tables: dict[Table, dict[int, int]] = {
            table: {a: 0 for first, last in runs for a in range(first, last + 1)}
            for table, runs in self.defined.items()
        }
        for point in self.points:
            raw = self._raw(point, self._value(point.name, t))
            words = encode_value(raw, point.type, point.byte_order)
            if point.table in BIT_TABLES:
                words = [1 if words[0] else 0]
            for i, word in enumerate(words):
                tables[point.table][point.address + i] = word
        return tables

    def sim_device(self, unit: int, t: float, action: SimAction | None = None) -> SimDevice:
        """The pymodbus ``SimDevice`` serving this meter as ``unit``, registers as at ``t``."""
        from pymodbus.simulator import DataType, SimData, SimDevice

        registers = self.registers_at(t)
        blocks: dict[Table, list[SimData]] = {}
        for table in Table:
            runs = self.defined.get(table, [])
            table_regs = registers.get(table, {})
            if table in BIT_TABLES:
                entries = [
                    SimData(
                        first,
                        values=[bool(table_regs[a]) for a in range(first, last + 1)],
                        datatype=DataType.BITS,
                    )
                    for first, last in runs
                ]
                # pymodbus needs every block non-empty; 16 spare bits at the very top.
                blocks[table] = entries or [
                    SimData(65520, values=[False] * 16, datatype=DataType.BITS)
                ]
            else:
                entries = [
                    SimData(
                        first,
                        values=[table_regs[a] for a in range(first, last + 1)],
                        datatype=DataType.REGISTERS,
                    )
                    for first, last in runs
                ]
                blocks[table] = entries or [SimData(0, datatype=DataType.INVALID)]
        return SimDevice(
            id=unit,
            action=action,
            simdata=(
                blocks[Table.COIL],
                blocks[Table.DISCRETE],
                blocks[Table.HOLDING],
                blocks[Table.INPUT],
            ),
        )


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


async def serve(
    profiles_and_units: UnitsSpec,
    host: str,
    port: int,
    *,
    update_interval: float = 1.0,
    clock: Callable[[], float] = time.time,
    seed: int | str = 0,
    step_seconds: float = 1.0,
    served_log: ServedLog | None = None,
    action: SimAction | None = None,
    rtu: bool = False,
    silent_units: Iterable[int] = (),
    trace_packet: TracePacket | None = None,
    trace_pdu: TracePdu | None = None,
) -> SimulatorServer:
    """Serve simulated meters on ``host:port`` (a unit → profile map, or (profile, unit) pairs).

    Registers are rewritten every ``update_interval`` seconds from ``clock()``; ``action`` is
    handed to every pymodbus ``SimDevice`` (tests use it to answer exception codes). With
    ``rtu`` the port speaks RTU frames instead of Modbus TCP (a serial device server).
    """
    return await _serve(
        profiles_and_units, host, port, None, rtu=rtu, update_interval=update_interval,
        clock=clock, seed=seed, step_seconds=step_seconds, served_log=served_log, action=action,
        silent_units=silent_units, trace_packet=trace_packet, trace_pdu=trace_pdu,
    )


async def serve_serial(
    profiles_and_units: UnitsSpec,
    path: str,
    *,
    baudrate: int = 9600,
    parity: str = "N",
    stopbits: int = 1,
    bytesize: int = 8,
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
    """Serve simulated meters as Modbus RTU on the serial port ``path``, one per unit id.

    ``path`` is a device (``/dev/ttyUSB0``, one end of a socat pty pair) or a pyserial URL
    (``socket://127.0.0.1:P`` for framings a pty refuses, such as 8E1). Units in
    ``silent_units`` receive their requests but never answer, like a dead meter on the bus.
    """
    serial = SerialSettings(path, baudrate, parity, stopbits, bytesize)
    return await _serve(
        profiles_and_units, "", 0, serial, rtu=True, update_interval=update_interval,
        clock=clock, seed=seed, step_seconds=step_seconds, served_log=served_log, action=action,
        silent_units=silent_units, trace_packet=trace_packet, trace_pdu=trace_pdu,
    )


async def _serve(
    profiles_and_units: UnitsSpec,
    host: str,
    port: int,
    serial: SerialSettings | None,
    *,
    rtu: bool,
    update_interval: float,
    clock: Callable[[], float],
    seed: int | str,
    step_seconds: float,
    served_log: ServedLog | None,
    action: SimAction | None,
    silent_units: Iterable[int],
    trace_packet: TracePacket | None,
    trace_pdu: TracePdu | None,
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
