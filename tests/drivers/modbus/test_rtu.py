"""Modbus RTU on a socat virtual serial line: five meters on one bus, one of them dead.

Real components only: socat makes the line, the pymodbus RTU simulator serves units 1–5 on
one end (unit 3 never answers), and the agent's own scheduler polls five drivers through one
shared line on the other end, at a 1 s interval on the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.config import BusConfig
from agent.driver import DriverContext
from agent.errors import DeviceUnavailable
from agent.gateway.scheduler import DevicePoller, backoff_slots
from agent.profiles import Profile
from agent.readings import Event, Quality, Reading
from agent.units import Duration
from drivers.modbus.config import ModbusDeviceConfig
from drivers.modbus.driver import SPEC, ModbusDriver
from drivers.modbus.planner import ReadRequest
from drivers.modbus.simulator import SimulatorServer, serve_serial
from tests.drivers.modbus.conftest import PtyPair

UNITS = (1, 2, 3, 4, 5)
DEAD = 3
INTERVAL = 1.0
SLOTS = 10  # polls of each live device; the dead one tries at slots 0, 1, 3, 7
LINE_TIMEOUT = Duration.parse("200 ms")
RETRIES = 1
RTU_READ_REQUEST_BYTES = 8  # unit, fc, address (2), count (2), CRC (2)


def unit_profile(tmp_path: Path, unit: int) -> Profile:
    """A meter whose values name its unit, so an answer for the wrong unit cannot pass."""
    points = [
        {"name": "unit_id", "address": 0, "type": "u16"},
        {"name": "volts", "address": 1, "type": "f32", "unit": "V"},
        {"name": "energy", "address": 3, "type": "u32", "unit": "Wh"},
    ]
    simulate = {
        "unit_id": {"kind": "constant", "value": unit},
        "volts": {"kind": "constant", "value": 230.0 + unit / 4},
        "energy": {"kind": "constant", "value": 100_000 * unit + 7},
    }
    return Profile(f"unit-{unit}", tmp_path / f"unit-{unit}.toml", "", "modbus", {}, points,
                   simulate)


def expected_values(unit: int) -> dict[str, int | float]:
    return {"unit_id": unit, "volts": 230.0 + unit / 4, "energy": 100_000 * unit + 7}


def bus_device(unit: int, **extra: Any) -> ModbusDeviceConfig:
    points = [
        {"name": "unit_id", "address": 0, "type": "u16"},
        {"name": "volts", "address": 1, "type": "f32", "unit": "V"},
        {"name": "energy", "address": 3, "type": "u32", "unit": "Wh"},
    ]
    table = {"name": f"meter-{unit}", "bus": "rs485-1", "unit": unit, "retries": RETRIES,
             "interval": "1 s", "points": points, **extra}
    return ModbusDeviceConfig.model_validate(table)


def crc_ok(frame: bytes) -> bool:
    """Modbus RTU CRC-16 (poly 0xA001, init 0xFFFF, low byte first) of a whole frame."""
    crc = 0xFFFF
    for byte in frame[:-2]:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return frame[-2:] == crc.to_bytes(2, "little")


def test_crc_checker_knows_a_real_frame() -> None:
    # Read holding 0, count 2, unit 1: the frame pymodbus sends (docs/protocols.md §3).
    assert crc_ok(bytes.fromhex("010300000002c40b"))
    assert not crc_ok(bytes.fromhex("010300000002c40c"))


@dataclass
class LineRecorder:
    """What the server saw on the line, in order, with wall-clock times."""

    received: list[bytes] = field(default_factory=list)
    events: list[tuple[float, bool, int]] = field(default_factory=list)  # (t, sending, unit)

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.received.append(bytes(data))
        return data

    def trace_pdu(self, sending: bool, pdu: Any) -> Any:
        self.events.append((time.time(), sending, int(pdu.dev_id)))
        return pdu

    def requests(self, unit: int) -> list[float]:
        return [t for t, sending, u in self.events if not sending and u == unit]


@pytest.fixture
async def rtu_bus(
    pty_pair: PtyPair, tmp_path: Path
) -> AsyncIterator[tuple[SimulatorServer, LineRecorder, BusConfig]]:
    recorder = LineRecorder()
    server = await serve_serial(
        {unit: unit_profile(tmp_path, unit) for unit in UNITS},
        pty_pair.a,
        baudrate=9600,
        update_interval=3600,
        silent_units={DEAD},
        trace_packet=recorder.trace_packet,
        trace_pdu=recorder.trace_pdu,
    )
    bus = BusConfig(name="rs485-1", port=pty_pair.b, baudrate=9600, timeout=LINE_TIMEOUT,
                    inter_frame_ms=2.0)
    yield server, recorder, bus
    await server.stop()


async def run_pollers(
    pollers: list[DevicePoller], until: Callable[[], bool], deadline: float
) -> None:
    tasks = [asyncio.create_task(p.run(), name=f"poll-{p.name}") for p in pollers]
    try:
        while not until() and time.time() < deadline:
            await asyncio.sleep(0.05)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_five_meters_one_dead_neighbours_keep_their_interval(
    rtu_bus: tuple[SimulatorServer, LineRecorder, BusConfig],
) -> None:
    _, recorder, bus = rtu_bus
    context = DriverContext(buses={bus.name: bus})
    drivers = {unit: SPEC.create(bus_device(unit), context) for unit in UNITS}
    assert len({id(d.line) for d in drivers.values() if isinstance(d, ModbusDriver)}) == 1
    readings: dict[str, list[Reading]] = {f"meter-{u}": [] for u in UNITS}
    events: list[Event] = []

    def emit(batch: list[Reading]) -> None:
        for reading in batch:
            readings[reading.device].append(reading)

    pollers = [
        DevicePoller(f"meter-{u}", drivers[u], INTERVAL, emit=emit, event=events.append,
                     clock=time.time)
        for u in UNITS
    ]
    points = len(bus_device(1).points)
    live = [f"meter-{u}" for u in UNITS if u != DEAD]
    try:
        await run_pollers(
            pollers,
            until=lambda: all(len(readings[name]) >= SLOTS * points for name in live),
            deadline=time.time() + SLOTS * INTERVAL + 5,
        )
    finally:
        for driver in drivers.values():
            await driver.close()
        await context.close()

    # Every live meter has a good reading of every point at every slot, on the 1 s grid.
    first_slot = min(r.t for rs in readings.values() for r in rs)
    assert first_slot % 1000 == 0
    for unit in UNITS:
        name = f"meter-{unit}"
        slots = sorted({r.t for r in readings[name]})
        assert slots == list(range(first_slot, first_slot + 1000 * len(slots), 1000)), name
        assert len(slots) >= SLOTS, name
        if unit == DEAD:
            assert {r.quality for r in readings[name]} == {Quality.COMM_ERROR}
            assert all(r.value is None for r in readings[name])
            continue
        assert all(r.quality is Quality.GOOD for r in readings[name]), name
        for reading in readings[name]:
            assert reading.value == pytest.approx(expected_values(unit)[reading.point]), name
    for poller in pollers:
        if poller.name != f"meter-{DEAD}":
            assert poller.stats.overruns == 0, poller.name
            assert poller.stats.failures == 0, poller.name

    # The dead meter's attempts, seen by the server, fall on slots 0, 1, 3, 7: the backoff.
    attempts_by_slot: dict[int, int] = {}
    for t in recorder.requests(DEAD):
        slot = math.floor(t - first_slot / 1000)
        attempts_by_slot[slot] = attempts_by_slot.get(slot, 0) + 1
    polled = sorted(attempts_by_slot)
    expected_polls = [0]
    while True:
        step = backoff_slots(len(expected_polls), INTERVAL)
        if expected_polls[-1] + step >= len(sorted({r.t for r in readings["meter-3"]})):
            break
        expected_polls.append(expected_polls[-1] + step)
    assert expected_polls[:4] == [0, 1, 3, 7]
    assert polled == expected_polls
    assert set(attempts_by_slot.values()) == {RETRIES + 1}  # a poll = one request, resent once
    dead_poller = pollers[UNITS.index(DEAD)]
    assert dead_poller.stats.polls == len(expected_polls)
    assert [e.kind for e in events] == ["device_down"]
    assert events[0].device == f"meter-{DEAD}"

    # Nothing interleaved: the server got whole, valid request frames only, one per attempt,
    # and never a request while an answer was still due.
    assert recorder.received
    assert all(len(f) == RTU_READ_REQUEST_BYTES and crc_ok(f) for f in recorder.received)
    attempts = sum(d.stats.attempts for d in drivers.values() if isinstance(d, ModbusDriver))
    assert len(recorder.requests(DEAD)) + sum(
        len(recorder.requests(u)) for u in UNITS if u != DEAD
    ) == attempts
    # After each unanswered request the line stayed quiet: timeout, then the quiet gap.
    line = next(d.line for d in drivers.values() if isinstance(d, ModbusDriver))
    arrivals = [(t, unit) for t, sending, unit in recorder.events if not sending]
    for (t, unit), (t_next, _) in itertools.pairwise(arrivals):
        if unit == DEAD:
            assert t_next - t >= line.timeout + line.quiet_gap - 0.02
    pending: int | None = None
    for _, sending, unit in recorder.events:
        if sending:
            assert pending == unit
            pending = None
        else:
            assert pending is None or pending == DEAD  # only the dead unit leaves no answer
            pending = unit


async def test_unplugged_port_is_unavailable_and_comes_back_by_itself(
    pty_pair: PtyPair, tmp_path: Path
) -> None:
    profiles = {1: unit_profile(tmp_path, 1)}
    bus = BusConfig(name="rs485-1", port=pty_pair.b, timeout=LINE_TIMEOUT)
    context = DriverContext(buses={bus.name: bus})
    driver = SPEC.create(bus_device(1), context)
    server = await serve_serial(profiles, pty_pair.a, update_interval=3600)
    try:
        await driver.connect()
        assert {v.point: v.value for v in await driver.read()} == pytest.approx(
            expected_values(1)
        )

        await server.stop()
        pty_pair.kill()  # the USB adapter is pulled: both ends of the line vanish
        await asyncio.sleep(0.1)
        for _ in range(2):  # stays down, each attempt says why
            with pytest.raises(DeviceUnavailable) as caught:
                await driver.read()
            message = str(caught.value)
            assert message.startswith("meter-1 (bus rs485-1 (")
            assert f"serial port {pty_pair.b} does not exist" in message

        pty_pair.start()  # plugged back in: same paths
        server = await serve_serial(profiles, pty_pair.a, update_interval=3600)
        values = await driver.read()  # no connect(): the line reopens on its own
        assert {v.point: v.value for v in values} == pytest.approx(expected_values(1))
        assert all(v.quality is Quality.GOOD for v in values)
    finally:
        await driver.close()
        await context.close()
        await server.stop()


async def test_replugged_between_two_polls_the_next_poll_reads(
    pty_pair: PtyPair, tmp_path: Path
) -> None:
    """Unplugged and plugged back between two polls, another pty behind the same link: the
    next poll reads through a fresh client on the new port, without a failed poll (pymodbus
    notices the old port's hang-up and drops the connection by itself)."""
    profiles = {1: unit_profile(tmp_path, 1)}
    bus = BusConfig(name="rs485-1", port=pty_pair.b, timeout=LINE_TIMEOUT)
    context = DriverContext(buses={bus.name: bus})
    driver = SPEC.create(bus_device(1), context)
    server = await serve_serial(profiles, pty_pair.a, update_interval=3600)
    (tmp_path / "placeholder").mkdir()
    placeholder = PtyPair(tmp_path / "placeholder")
    try:
        assert {v.point: v.value for v in await driver.read()} == pytest.approx(
            expected_values(1))
        before = os.path.realpath(pty_pair.b)
        pty_pair.kill()
        await server.stop()
        placeholder.start()  # holds the freed pty: the replugged line gets another one
        pty_pair.start()
        assert os.path.realpath(pty_pair.b) != before  # the input
        server = await serve_serial(profiles, pty_pair.a, update_interval=3600)
        values = await driver.read()
        assert {v.point: v.value for v in values} == pytest.approx(expected_values(1))
        assert all(v.quality is Quality.GOOD for v in values)
        assert isinstance(driver, ModbusDriver)
        assert driver.line.stats.connects == 2
    finally:
        placeholder.kill()
        await driver.close()
        await context.close()
        await server.stop()


async def test_a_second_program_on_the_port_is_named(
    rtu_bus: tuple[SimulatorServer, LineRecorder, BusConfig],
) -> None:
    """Ports open exclusively: a port held elsewhere gives a clear, different reason."""
    _, _, bus = rtu_bus
    holder = DriverContext(buses={bus.name: bus})
    other = DriverContext(buses={bus.name: bus})
    first = SPEC.create(bus_device(1), holder)
    second = SPEC.create(bus_device(2), other)
    try:
        await first.connect()
        with pytest.raises(DeviceUnavailable, match=r"cannot be opened \(in use by another"):
            await second.connect()
    finally:
        await first.close()
        await holder.close()
        await other.close()


async def test_retries_resend_after_the_quiet_gap(
    rtu_bus: tuple[SimulatorServer, LineRecorder, BusConfig],
) -> None:
    """A silent unit gets retries + 1 frames per request, each after the line's quiet gap."""
    _, recorder, bus = rtu_bus
    context = DriverContext(buses={bus.name: bus})
    dead = SPEC.create(bus_device(DEAD, retries=2), context)
    assert isinstance(dead, ModbusDriver)
    try:
        with pytest.raises(DeviceUnavailable, match=r"meter-3 \(bus rs485-1 .*unit 3\)"):
            await dead.read()
    finally:
        await dead.close()
        await context.close()
    sent = recorder.requests(DEAD)
    assert len(sent) == 3
    gap = dead.line.quiet_gap
    assert gap == pytest.approx(0.2)
    for before, after in itertools.pairwise(sent):
        # timeout, then the quiet gap, before the resend
        assert after - before >= dead.line.timeout + gap - 0.02
    plan_request: ReadRequest = dead.plan.requests[0]
    assert (plan_request.address, plan_request.count) == (0, 5)


async def test_run_simulate_serves_a_profile_on_a_serial_path(
    pty_pair: PtyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `ssc-agent simulate PROFILE --serial PATH` runs: the demo meter as RTU units."""
    from agent.profiles import apply_profile, load_profile
    from drivers.modbus.simulator import run_simulate

    task = asyncio.create_task(
        run_simulate("ssc-demo-meter", "", 0, [4, 5], duration=5.0, serial=pty_pair.a,
                     silent_units=[5])
    )
    bus = BusConfig(name="rs485-1", port=pty_pair.b, timeout=LINE_TIMEOUT)
    context = DriverContext(buses={bus.name: bus})

    def meter(unit: int) -> ModbusDeviceConfig:
        table = {"name": f"demo-{unit}", "bus": "rs485-1", "unit": unit, "retries": 0}
        return ModbusDeviceConfig.model_validate(
            apply_profile(table, load_profile("ssc-demo-meter"))
        )

    live, silent = SPEC.create(meter(4), context), SPEC.create(meter(5), context)
    try:
        printed = ""
        for _ in range(200):  # until the server has opened its end
            printed += capsys.readouterr().out
            if "simulating" in printed:
                break
            await asyncio.sleep(0.01)
        assert f"as unit 4, 5 on {pty_pair.a} (Modbus RTU, 9600 8N1)" in printed
        values = await live.read()
        assert len(values) == 20
        assert all(v.quality is Quality.GOOD for v in values)
        with pytest.raises(DeviceUnavailable, match="demo-5"):
            await silent.read()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await live.close()
        await silent.close()
        await context.close()
