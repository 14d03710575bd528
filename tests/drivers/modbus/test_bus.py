"""Shared Modbus lines: RTU over TCP, serialized TCP gateways, pauses, and line sharing.

Real servers on loopback (pymodbus TCP with RTU or socket framing) and socat pty pairs.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.constants import ExcCodes

from agent.config import BusConfig
from agent.driver import DriverContext
from agent.errors import ConfigError, DeviceUnavailable
from agent.profiles import Profile
from agent.readings import Quality
from agent.units import Duration
from drivers.modbus.bus import MIN_QUIET_GAP_SECONDS, ModbusLine
from drivers.modbus.config import ModbusDeviceConfig, Transport
from drivers.modbus.driver import SPEC, ModbusDriver
from drivers.modbus.simulator import SimulatorServer, serve, serve_serial
from drivers.serialio import SerialSettings
from tests.drivers.modbus.conftest import PtyPair

POINTS: list[dict[str, Any]] = [
    {"name": "a", "address": 0, "type": "u16"},
    {"name": "b", "address": 10, "type": "u16"},
    {"name": "c", "address": 20, "type": "u16"},
]


def profile(tmp_path: Path, unit: int) -> Profile:
    """Three registers apart from each other; values 100×unit + 1, 2, 3."""
    simulate: dict[str, Any] = {
        str(p["name"]): {"kind": "constant", "value": 100 * unit + i}
        for i, p in enumerate(POINTS, start=1)
    }
    return Profile(f"u{unit}", tmp_path / f"u{unit}.toml", "", "modbus", {}, POINTS, simulate)


def expected(unit: int) -> list[int]:
    return [100 * unit + i for i in range(1, len(POINTS) + 1)]


def device(unit: int, **transport: Any) -> ModbusDeviceConfig:
    table = {"name": f"m{unit}", "unit": unit, "retries": 0, "timeout": "300 ms",
             "points": POINTS, **transport}
    return ModbusDeviceConfig.model_validate(table)


class InFlight:
    """Counts requests the server holds unanswered at once (trace_pdu on the server)."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.arrivals: list[tuple[float, int, int]] = []  # (time, unit, address)

    def trace_pdu(self, sending: bool, pdu: Any) -> Any:
        if sending:
            self.now -= 1
        else:
            self.now += 1
            self.most = max(self.most, self.now)
            self.arrivals.append((time.monotonic(), int(pdu.dev_id), int(pdu.address)))
        return pdu


@pytest.fixture
async def servers() -> AsyncIterator[list[SimulatorServer]]:
    started: list[SimulatorServer] = []
    yield started
    for server in started:
        await server.stop()


@pytest.fixture
async def contexts() -> AsyncIterator[list[DriverContext]]:
    made: list[DriverContext] = []
    yield made
    for context in made:
        await context.close()


@pytest.mark.parametrize(
    ("transport", "timeout", "gap"),
    [
        (Transport.BUS, 0.25, 0.25),
        (Transport.BUS, 0.03, MIN_QUIET_GAP_SECONDS),
        (Transport.RTU_TCP, 1.0, 1.0),
        (Transport.RTU_TCP, 0.05, MIN_QUIET_GAP_SECONDS),
        (Transport.TCP, 1.0, 0.0),  # transaction ids match answers: no gap needed
    ],
)
def test_quiet_gap_is_at_least_the_timeout_and_100_ms(
    transport: Transport, timeout: float, gap: float
) -> None:
    serial = SerialSettings("/dev/null") if transport is Transport.BUS else None
    line = ModbusLine("l", transport, timeout=timeout, serial=serial, host="127.0.0.1", port=1)
    assert line.quiet_gap == pytest.approx(gap)
    assert line.is_rtu is (transport is not Transport.TCP)


@pytest.mark.parametrize("scheme", ["rtu+tcp", "tcp-serialized"])
async def test_devices_on_one_endpoint_share_one_connection_one_request_at_a_time(
    scheme: str,
    tmp_path: Path,
    port: int,
    servers: list[SimulatorServer],
    contexts: list[DriverContext],
) -> None:
    units = (1, 2, 3, 4)
    seen = InFlight()
    servers.append(
        await serve({u: profile(tmp_path, u) for u in units}, "127.0.0.1", port,
                    update_interval=3600, rtu=scheme == "rtu+tcp", trace_pdu=seen.trace_pdu)
    )
    if scheme == "rtu+tcp":
        transport: dict[str, Any] = {"endpoint": f"rtu+tcp://127.0.0.1:{port}"}
    else:
        transport = {"endpoint": f"tcp://127.0.0.1:{port}", "serialize": True}
    context = DriverContext()
    contexts.append(context)
    drivers = [SPEC.create(device(u, **transport), context) for u in units]
    lines = {id(d.line) for d in drivers if isinstance(d, ModbusDriver)}
    assert len(lines) == 1
    assert len(context.closers) == 1
    line = next(d.line for d in drivers if isinstance(d, ModbusDriver))

    for _ in range(3):  # every device polls at once, as the scheduler does at a shared slot
        results = await asyncio.gather(*(d.read() for d in drivers))
        for unit, values in zip(units, results, strict=True):
            assert [v.value for v in values] == expected(unit)
            assert all(v.quality is Quality.GOOD for v in values)
    assert seen.most == 1
    assert len(seen.arrivals) == 3 * len(units) * 3
    assert line.stats.connects == 1
    # a neighbour's requests go between a device's requests: the lock is per request
    order = [unit for _, unit, _ in seen.arrivals[: len(units) * 3]]
    assert order != sorted(order)


async def test_a_dead_unit_does_not_drop_the_shared_connection(
    tmp_path: Path, port: int, servers: list[SimulatorServer], contexts: list[DriverContext]
) -> None:
    """pymodbus closes a TCP connection after a few silent requests; not a shared one."""
    servers.append(
        await serve({1: profile(tmp_path, 1)}, "127.0.0.1", port, update_interval=3600,
                    rtu=True, silent_units={9})
    )
    context = DriverContext()
    contexts.append(context)
    endpoint = {"endpoint": f"rtu+tcp://127.0.0.1:{port}"}
    alive = SPEC.create(device(1, timeout="150 ms", **endpoint), context)
    dead_config = ModbusDeviceConfig.model_validate(
        {"name": "m9", "unit": 9, "retries": 0, "timeout": "100 ms", "points": POINTS[:1],
         **endpoint}
    )
    dead = SPEC.create(dead_config, context)
    assert isinstance(alive, ModbusDriver)
    for _ in range(5):  # pymodbus would close after 4 silent requests in a row
        with pytest.raises(DeviceUnavailable, match=r"m9 \(rtu\+tcp://127\.0\.0\.1:\d+, unit 9\)"):
            await dead.read()
    assert [v.value for v in await alive.read()] == expected(1)
    assert alive.line.stats.connects == 1
    # the line waits for its slowest device: 150 ms of m1, not 100 ms of m9
    assert alive.line.timeout == pytest.approx(0.15)


def test_serialize_must_agree_on_an_endpoint() -> None:
    context = DriverContext()
    SPEC.create(device(1, endpoint="tcp://127.0.0.1:1502", serialize=True), context)
    with pytest.raises(ConfigError, match=r"m2.*→ serialize: other devices on tcp://127\.0\.0\.1"
                                          r":1502 set serialize = true"):
        SPEC.create(device(2, endpoint="tcp://127.0.0.1:1502"), context)
    other = DriverContext()
    SPEC.create(device(1, endpoint="tcp://127.0.0.1:1502"), other)
    with pytest.raises(ConfigError, match="do not set serialize = true"):
        SPEC.create(device(2, endpoint="tcp://127.0.0.1:1502", serialize=True), other)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"bus": "b", "serialize": True}, "serialize = true applies to tcp:// endpoints only"),
        ({"endpoint": "rtu+tcp://h:1", "serialize": True}, "serialize = true applies to tcp://"),
        ({"endpoint": "rtu://h:1"}, "write tcp://HOST:PORT (Modbus TCP) or rtu+tcp://HOST:PORT"),
        ({"endpoint": "rtu+tcp://h:70000"}, "is not an endpoint"),
    ],
)
def test_transport_keys_are_validated(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ModbusDeviceConfig.model_validate({"name": "x", "points": POINTS, **table})


@pytest.mark.parametrize(
    ("table", "transport", "shares"),
    [
        ({"endpoint": "tcp://h:502"}, Transport.TCP, False),
        ({"endpoint": "tcp://h:502", "serialize": True}, Transport.TCP, True),
        ({"endpoint": "rtu+tcp://[::1]:4001"}, Transport.RTU_TCP, True),
        ({"bus": "rs485-1"}, Transport.BUS, True),
    ],
)
def test_transport_of_a_device(table: dict[str, Any], transport: Transport, shares: bool) -> None:
    config = ModbusDeviceConfig.model_validate({"name": "x", "points": POINTS, **table})
    assert config.transport is transport
    assert config.shares_line is shares


async def test_bus_line_is_made_once_and_closed_by_the_last_user(
    pty_pair: PtyPair, tmp_path: Path, servers: list[SimulatorServer]
) -> None:
    servers.append(
        await serve_serial({u: profile(tmp_path, u) for u in (1, 2)}, pty_pair.a,
                           update_interval=3600)
    )
    bus = BusConfig(name="rs485-1", port=pty_pair.b, timeout=Duration.parse("200 ms"))
    context = DriverContext(buses={"rs485-1": bus})
    one, two = (SPEC.create(device(u, bus="rs485-1"), context) for u in (1, 2))
    assert isinstance(one, ModbusDriver)
    assert isinstance(two, ModbusDriver)
    assert context.resources["modbus:line:bus:rs485-1"] is one.line is two.line
    assert len(context.closers) == 1
    await one.connect()
    await two.connect()
    assert [v.value for v in await one.read()] == expected(1)
    await one.close()  # a neighbour still uses the port
    assert one.line.connected
    assert [v.value for v in await two.read()] == expected(2)
    await two.close()
    assert not one.line.connected  # the last one out closes the port
    assert [v.value for v in await one.read()] == expected(1)  # and it reopens on demand
    await context.close()
    assert not one.line.connected


async def test_bus_device_timeout_raises_the_line_timeout(pty_pair: PtyPair) -> None:
    bus = BusConfig(name="rs485-1", port=pty_pair.b, timeout=Duration.parse("200 ms"))
    context = DriverContext(buses={"rs485-1": bus})
    first = SPEC.create(device(1, bus="rs485-1"), context)  # sets timeout = "300 ms"
    assert isinstance(first, ModbusDriver)
    assert first.line.timeout == pytest.approx(0.3)
    plain = ModbusDeviceConfig.model_validate(
        {"name": "m2", "unit": 2, "bus": "rs485-1", "points": POINTS}
    )
    SPEC.create(plain, context)  # its default timeout is not a wish: the bus's stays
    assert first.line.timeout == pytest.approx(0.3)
    with pytest.raises(ConfigError, match=r"→ bus: no bus named 'rs485-9'"):
        SPEC.create(device(3, bus="rs485-9"), context)


async def test_inter_frame_pause_separates_requests(
    pty_pair: PtyPair, tmp_path: Path, servers: list[SimulatorServer],
    contexts: list[DriverContext],
) -> None:
    seen = InFlight()
    servers.append(
        await serve_serial({1: profile(tmp_path, 1)}, pty_pair.a, update_interval=3600,
                           trace_pdu=seen.trace_pdu)
    )
    bus = BusConfig(name="rs485-1", port=pty_pair.b, timeout=Duration.parse("200 ms"),
                    inter_frame_ms=40)
    context = DriverContext(buses={"rs485-1": bus})
    contexts.append(context)
    driver = SPEC.create(device(1, bus="rs485-1"), context)
    for _ in range(2):
        assert [v.value for v in await driver.read()] == expected(1)
    times = [t for t, _, _ in seen.arrivals]
    assert len(times) == 6
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.04 - 0.005


async def test_a_late_answer_is_not_taken_for_the_next_one(
    pty_pair: PtyPair, tmp_path: Path, servers: list[SimulatorServer],
    contexts: list[DriverContext],
) -> None:
    """docs/protocols.md §3: a late RTU answer would shift every later one; the quiet gap stops it.

    Register 10 answers 250 ms late (after the 200 ms timeout); register 20 takes 100 ms. Sent
    right after the timeout, the request for 20 would get the late answer of 10.
    """
    late_once = [True]

    async def action(
        fc: int, start: int, address: int, count: int, registers: list[int], set_values: Any
    ) -> ExcCodes | None:
        if set_values is not None:  # the simulator's own register updates
            return None
        if address == POINTS[1]["address"] and late_once:
            late_once.clear()
            await asyncio.sleep(0.25)
        elif address == POINTS[2]["address"]:
            await asyncio.sleep(0.1)
        return None

    servers.append(
        await serve_serial({1: profile(tmp_path, 1)}, pty_pair.a, update_interval=3600,
                           action=action)
    )
    bus = BusConfig(name="rs485-1", port=pty_pair.b, timeout=Duration.parse("200 ms"))
    context = DriverContext(buses={"rs485-1": bus})
    contexts.append(context)
    driver = SPEC.create(
        ModbusDeviceConfig.model_validate(
            {"name": "m1", "unit": 1, "retries": 0, "bus": "rs485-1", "points": POINTS}
        ),
        context,
    )
    first = await driver.read()
    assert [(v.value, v.quality) for v in first] == [
        (101, Quality.GOOD),
        (None, Quality.COMM_ERROR),
        (103, Quality.GOOD),
    ]
    assert [v.value for v in await driver.read()] == expected(1)


async def test_even_parity_seven_bits_over_a_socket_url(
    port: int, tmp_path: Path, servers: list[SimulatorServer], contexts: list[DriverContext]
) -> None:
    """A pty refuses 8E1/7E1; pyserial's socket:// carries any framing (docs/protocols.md §3)."""
    url = f"socket://127.0.0.1:{port}"
    servers.append(
        await serve_serial({2: profile(tmp_path, 2)}, url, parity="E", bytesize=7,
                           update_interval=3600)
    )
    bus = BusConfig(name="rs485-1", port=url, parity="E", bytesize=7, stopbits=2,
                    timeout=Duration.parse("200 ms"))
    context = DriverContext(buses={"rs485-1": bus})
    contexts.append(context)
    driver = SPEC.create(device(2, bus="rs485-1"), context)
    assert isinstance(driver, ModbusDriver)
    assert driver.line.serial == SerialSettings(url, 9600, parity="E", stopbits=2, bytesize=7)
    assert [v.value for v in await driver.read()] == expected(2)
