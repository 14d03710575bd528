"""Modbus driver over its own TCP connection, against a real pymodbus simulator on loopback.

RTU, shared lines and request splitting have their own files: test_rtu, test_bus, test_split.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes

from agent.driver import DriverContext, PointInfo
from agent.errors import ConfigError, DeviceUnavailable
from agent.profiles import Profile, apply_profile, load_profile
from agent.readings import PointValue, Quality
from drivers.modbus.config import ModbusDeviceConfig
from drivers.modbus.driver import SPEC, ModbusDriver
from drivers.modbus.simulator import SimulatorServer, serve

# name, table, type, byte order, scale, offset, value the device holds (engineering units)
TYPED_POINTS: list[tuple[str, str, str, str, float, float, int | float]] = [
    ("u16_abcd", "holding", "u16", "ABCD", 1.0, 0.0, 0xBEEF),
    ("u16_badc", "holding", "u16", "BADC", 1.0, 0.0, 0x1234),
    ("i16_abcd", "holding", "i16", "ABCD", 1.0, 0.0, -1234),
    ("i16_dcba", "holding", "i16", "DCBA", 1.0, 0.0, -2),
    ("temp_x01", "holding", "i16", "ABCD", 0.1, 0.0, -12.5),
    ("u32_abcd", "holding", "u32", "ABCD", 1.0, 0.0, 3_000_000_000),
    ("u32_cdab", "holding", "u32", "CDAB", 1.0, 0.0, 0x12345678),
    ("i32_cdab_em24", "holding", "i32", "CDAB", 0.1, 0.0, -1234.5),
    ("i32_badc", "holding", "i32", "BADC", 1.0, 0.0, -123_456_789),
    ("i32_dcba", "holding", "i32", "DCBA", 1.0, 0.0, 987_654_321),
    ("u64_abcd", "holding", "u64", "ABCD", 1.0, 0.0, 2**63 + 5),
    ("i64_cdab", "holding", "i64", "CDAB", 1.0, 0.0, -(2**40) - 3),
    ("u64_badc", "holding", "u64", "BADC", 1.0, 0.0, 0x0102030405060708),
    ("i64_dcba", "holding", "i64", "DCBA", 1.0, 0.0, -7),
    ("f32_abcd", "input", "f32", "ABCD", 1.0, 0.0, 2000.25),
    ("f32_cdab", "input", "f32", "CDAB", 1.0, 0.0, -0.5),
    ("f32_badc", "input", "f32", "BADC", 1.0, 0.0, 1.0e-3),
    ("f32_dcba", "input", "f32", "DCBA", 1.0, 0.0, 123456.0),
    ("f64_abcd", "input", "f64", "ABCD", 1.0, 0.0, -1234.5678),
    ("f64_cdab", "input", "f64", "CDAB", 1.0, 0.0, 6.02214076e23),
    ("f64_badc", "input", "f64", "BADC", 1.0, 0.0, math.pi),
    ("f64_dcba", "input", "f64", "DCBA", 1.0, 0.0, 1 / 3),
    ("u16_offset", "input", "u16", "ABCD", 0.5, -40.0, 10.0),
    ("relay", "coil", "bool", "ABCD", 1.0, 0.0, 1),
    ("relay_off", "coil", "bool", "ABCD", 1.0, 0.0, 0),
    ("door_open", "discrete", "bool", "ABCD", 1.0, 0.0, 1),
]
WIDTH = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2, "u64": 4, "i64": 4, "f64": 4, "bool": 1}


def typed_profile(tmp_path: Path) -> Profile:
    """A profile with one point per row of TYPED_POINTS, packed per table, constant values."""
    next_address: dict[str, int] = {}
    points: list[dict[str, Any]] = []
    simulate: dict[str, Any] = {}
    for name, table, type_, order, scale, offset, value in TYPED_POINTS:
        address = next_address.get(table, 0)
        next_address[table] = address + WIDTH[type_]
        points.append(
            {
                "name": name,
                "address": address,
                "table": table,
                "type": type_,
                "byte_order": order,
                "scale": scale,
                "offset": offset,
            }
        )
        simulate[name] = {"kind": "constant", "value": value}
    return Profile("typed", tmp_path / "typed.toml", "", "modbus", {}, points, simulate)


def device(port: int, profile: Profile, **extra: Any) -> ModbusDeviceConfig:
    table: dict[str, Any] = {
        "name": "meter-1",
        "endpoint": f"tcp://127.0.0.1:{port}",
        "timeout": "500 ms",
        "retries": 0,
        **extra,
    }
    return ModbusDeviceConfig.model_validate(apply_profile(table, profile))


Requests = list[tuple[int, int, int]]


def recording_action(
    seen: Requests, answer: Callable[[int, int, int], ExcCodes | None] = lambda fc, a, c: None
) -> Any:
    """A SimDevice action that records read requests (fc, address, count) and may refuse."""

    async def action(
        fc: int, start: int, address: int, count: int, registers: list[int], set_values: Any
    ) -> ExcCodes | None:
        if set_values is not None:  # the simulator's own register updates
            return None
        seen.append((fc, address, count))
        return answer(fc, address, count)

    return action


@pytest.fixture
async def driver_factory() -> AsyncIterator[Callable[[ModbusDeviceConfig], ModbusDriver]]:
    made: list[ModbusDriver] = []

    def make(config: ModbusDeviceConfig) -> ModbusDriver:
        made.append(ModbusDriver(config))
        return made[-1]

    yield make
    for d in made:
        await d.close()


@pytest.fixture
async def servers() -> AsyncIterator[list[SimulatorServer]]:
    started: list[SimulatorServer] = []
    yield started
    for s in started:
        await s.stop()


async def test_every_type_and_byte_order_decodes(
    tmp_path: Path,
    port: int,
    servers: list[SimulatorServer],
    driver_factory: Callable[[ModbusDeviceConfig], ModbusDriver],
) -> None:
    profile = typed_profile(tmp_path)
    seen: Requests = []
    servers.append(
        await serve(
            {1: profile}, "127.0.0.1", port, update_interval=3600, action=recording_action(seen)
        )
    )
    driver = driver_factory(device(port, profile))
    assert list(driver.points) == [PointInfo(name, None) for name, *_ in TYPED_POINTS]
    await driver.connect()
    values = await driver.read()

    assert [v.point for v in values] == [name for name, *_ in TYPED_POINTS]
    for value, (name, _, type_, _, _, _, expected) in zip(values, TYPED_POINTS, strict=True):
        assert value.quality is Quality.GOOD, name
        if type_ == "f32":
            assert value.value == pytest.approx(expected, rel=1e-7), name
        else:
            assert value.value == expected, name
        assert type(value.value) is type(expected), name

    # one request per table, exactly as planned (the action sees bit reads in 16-bit words)
    def span(table: str) -> int:
        return sum(WIDTH[t] for _, tb, t, *_ in TYPED_POINTS if tb == table)

    assert driver.requests_per_cycle == 4
    assert sorted(seen) == [(1, 0, 1), (2, 0, 1), (3, 0, span("holding")), (4, 0, span("input"))]
    assert [(r.table.value, r.address, r.count) for r in driver.plan] == [
        ("holding", 0, span("holding")),
        ("input", 0, span("input")),
        ("coil", 0, 2),
        ("discrete", 0, 1),
    ]


async def test_registers_agree_with_pymodbus_own_decoder(
    tmp_path: Path, port: int, servers: list[SimulatorServer]
) -> None:
    """An independent check of simulator + codec: pymodbus decodes the big-endian points too."""
    profile = typed_profile(tmp_path)
    servers.append(await serve({1: profile}, "127.0.0.1", port, update_interval=3600))
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    assert await client.connect()
    try:
        dt = client.DATATYPE
        rr = await client.read_input_registers(0, count=2, device_id=1)
        assert client.convert_from_registers(rr.registers, dt.FLOAT32) == 2000.25
        rr = await client.read_holding_registers(2, count=1, device_id=1)
        assert client.convert_from_registers(rr.registers, dt.INT16) == -1234
        rr = await client.read_holding_registers(5, count=2, device_id=1)
        assert client.convert_from_registers(rr.registers, dt.UINT32) == 3_000_000_000
        rr = await client.read_holding_registers(7, count=2, device_id=1)
        low_first = client.convert_from_registers(rr.registers, dt.UINT32, word_order="little")
        assert low_first == 0x12345678
    finally:
        client.close()


async def test_exception_answer_marks_only_that_requests_points(
    tmp_path: Path,
    port: int,
    servers: list[SimulatorServer],
    driver_factory: Callable[[ModbusDeviceConfig], ModbusDriver],
) -> None:
    profile = load_profile("ssc-demo-meter")
    seen: Requests = []
    busy_holding = recording_action(
        seen, lambda fc, a, c: ExcCodes.DEVICE_BUSY if fc == 3 else None
    )
    server = await serve({1: profile}, "127.0.0.1", port, update_interval=3600, action=busy_holding)
    servers.append(server)
    driver = driver_factory(device(port, profile))
    values = await driver.read()  # connects on its own
    served = server.meters[1].values_at(server.meters[1].t0)
    by_table = {
        p.name: p.table.value
        for p in ModbusDeviceConfig.model_validate(
            apply_profile({"name": "x", "endpoint": "tcp://127.0.0.1:1"}, profile)
        ).points
    }
    assert len(values) == 20
    for v in values:
        if by_table[v.point] == "holding":
            assert v == PointValue(v.point, None, Quality.PROTOCOL_ERROR)
        else:
            assert v.quality is Quality.GOOD
            assert v.value == pytest.approx(served[v.point], rel=1e-6)
    assert (3, 0, 6) in seen
    assert (4, 0, 28) in seen


async def test_gap_the_device_does_not_define_is_split_and_read(
    tmp_path: Path,
    port: int,
    servers: list[SimulatorServer],
    driver_factory: Callable[[ModbusDeviceConfig], ModbusDriver],
) -> None:
    """Merging across an undefined register gets exception 2: the request is split."""
    points = [
        {"name": "a", "address": 0, "table": "holding"},
        {"name": "b", "address": 5, "table": "holding"},
        {"name": "c", "address": 0, "table": "input"},
    ]
    simulate = {k: {"kind": "constant", "value": v} for k, v in (("a", 1), ("b", 2), ("c", 3))}
    profile = Profile("gappy", tmp_path / "gappy.toml", "", "modbus", {}, points, simulate)
    servers.append(await serve({1: profile}, "127.0.0.1", port, update_interval=3600))
    merged = driver_factory(device(port, profile, max_gap=10))
    assert merged.requests_per_cycle == 2
    values = await merged.read()
    assert [(v.value, v.quality) for v in values] == [
        (1, Quality.GOOD),
        (2, Quality.GOOD),
        (3, Quality.GOOD),
    ]
    assert merged.requests_per_cycle == 3
    split = driver_factory(device(port, profile, max_gap=0))
    assert [v.value for v in await split.read()] == [1, 2, 3]
    assert split.requests_per_cycle == 3


async def test_nan_float_is_out_of_range(
    tmp_path: Path,
    port: int,
    servers: list[SimulatorServer],
    driver_factory: Callable[[ModbusDeviceConfig], ModbusDriver],
) -> None:
    points = [
        {"name": "ok", "address": 0, "table": "input", "type": "f32"},
        {"name": "nan", "address": 2, "table": "input", "type": "f32"},
        {"name": "inf", "address": 4, "table": "input", "type": "f64"},
    ]
    simulate = {
        "ok": {"kind": "constant", "value": 1.5},
        "nan": {"kind": "constant", "value": math.nan},
        "inf": {"kind": "constant", "value": -math.inf},
    }
    profile = Profile("nan", tmp_path / "nan.toml", "", "modbus", {}, points, simulate)
    servers.append(await serve({1: profile}, "127.0.0.1", port, update_interval=3600))
    values = await driver_factory(device(port, profile)).read()
    assert values == [
        PointValue("ok", 1.5, Quality.GOOD),
        PointValue("nan", None, Quality.OUT_OF_RANGE),
        PointValue("inf", None, Quality.OUT_OF_RANGE),
    ]


async def test_timeout_of_one_request_is_a_comm_error(
    port: int,
    servers: list[SimulatorServer],
    driver_factory: Callable[[ModbusDeviceConfig], ModbusDriver],
) -> None:
    async def slow_input(
        fc: int, start: int, address: int, count: int, registers: list[int], set_values: Any
    ) -> ExcCodes | None:
        if fc == 4 and set_values is None:
            await asyncio.sleep(1.0)
        return None

    profile = load_profile("ssc-demo-meter")
    servers.append(
        await serve({1: profile}, "127.0.0.1", port, update_interval=3600, action=slow_input)
    )
    driver = driver_factory(device(port, profile, timeout="200 ms"))
    values = await driver.read()
    qualities = {v.point: v.quality for v in values}
    assert qualities["enclosure_temperature"] is Quality.GOOD
    assert qualities["voltage_l1"] is Quality.COMM_ERROR
    assert all(v.value is None for v in values if v.quality is Quality.COMM_ERROR)
    assert sum(q is Quality.COMM_ERROR for q in qualities.values()) == 14


async def test_server_down_is_device_unavailable(
    port: int, driver_factory: Callable[[ModbusDeviceConfig], ModbusDriver]
) -> None:
    driver = driver_factory(device(port, load_profile("ssc-demo-meter")))
    with pytest.raises(DeviceUnavailable) as caught:
        await driver.connect()
    assert str(caught.value).startswith(f"meter-1 (tcp://127.0.0.1:{port}): connection refused")
    with pytest.raises(DeviceUnavailable, match="meter-1"):
        await driver.read()


async def test_reconnects_after_server_restart(
    port: int,
    servers: list[SimulatorServer],
    driver_factory: Callable[[ModbusDeviceConfig], ModbusDriver],
) -> None:
    profile = load_profile("ssc-demo-meter")
    first = await serve({1: profile}, "127.0.0.1", port, update_interval=3600)
    driver = driver_factory(device(port, profile))
    await driver.connect()
    assert all(v.quality is Quality.GOOD for v in await driver.read())

    await first.stop()
    with pytest.raises(DeviceUnavailable, match=r"meter-1 \(tcp://127\.0\.0\.1:\d+\)"):
        await driver.read()

    servers.append(await serve({1: profile}, "127.0.0.1", port, update_interval=3600, seed=7))
    values = await driver.read()
    assert all(v.quality is Quality.GOOD for v in values)
    expected = servers[0].meters[1].values_at(servers[0].meters[1].t0)
    assert {v.point: v.value for v in values} == pytest.approx(expected, rel=1e-6)


async def test_close_is_idempotent_and_read_reconnects(
    port: int,
    servers: list[SimulatorServer],
    driver_factory: Callable[[ModbusDeviceConfig], ModbusDriver],
) -> None:
    profile = load_profile("ssc-demo-meter")
    servers.append(await serve({1: profile}, "127.0.0.1", port, update_interval=3600))
    driver = driver_factory(device(port, profile))
    await driver.connect()
    await driver.close()
    await driver.close()
    assert len(await driver.read()) == 20


def test_spec_factory_puts_bus_devices_on_one_shared_line() -> None:
    from agent.config import BusConfig

    def bus_device(name: str, unit: int, bus: str = "rs485-1") -> ModbusDeviceConfig:
        return ModbusDeviceConfig.model_validate(
            {"name": name, "bus": bus, "unit": unit, "points": [{"name": "a", "address": 0}]}
        )

    context = DriverContext(buses={"rs485-1": BusConfig(name="rs485-1", port="/dev/ttyUSB0")})
    one = SPEC.create(bus_device("rtu-1", 1), context)
    two = SPEC.create(bus_device("rtu-2", 2), context)
    assert isinstance(one, ModbusDriver)
    assert isinstance(two, ModbusDriver)
    assert one.line is two.line
    assert one.line.name == "bus rs485-1 (/dev/ttyUSB0)"
    with pytest.raises(ConfigError, match=r"rtu-3.*→ bus: no bus named 'rs485-2'"):
        SPEC.create(bus_device("rtu-3", 3, bus="rs485-2"), context)


def test_spec_describes_the_driver() -> None:
    config = ModbusDeviceConfig.model_validate(
        {
            "name": "tcp-1",
            "endpoint": "tcp://127.0.0.1:502",
            "points": [{"name": "a", "address": 0}],
        }
    )
    driver = SPEC.create(config, DriverContext())
    assert isinstance(driver, ModbusDriver)
    assert driver.requests_per_cycle == 1
    assert SPEC.name == "modbus"
    assert SPEC.config_model is ModbusDeviceConfig
    assert "[[devices]]" in SPEC.sample_toml


def test_demo_meter_needs_two_requests() -> None:
    driver = ModbusDriver(device(1502, load_profile("ssc-demo-meter")))
    assert len(driver.points) == 20
    assert driver.requests_per_cycle == 2
