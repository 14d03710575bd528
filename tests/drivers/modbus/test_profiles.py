"""Every shipped device profile loads, validates, states its request limits and plans within
them; the simulator serves it, and the plan read from a real pymodbus server decodes right."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from agent.profiles import Profile, apply_profile, available_profiles, load_profile
from drivers.modbus.codec import apply_scale, decode_registers
from drivers.modbus.config import BIT_TABLES, ByteOrder, ModbusDeviceConfig, PointType, Table
from drivers.modbus.planner import ReadPlan, gap_ranges, plan_reads
from drivers.modbus.simulated_meter import SimulatedMeter
from drivers.modbus.simulator import SimulatorServer, serve

PROFILE_DIR = Path(__file__).parents[3] / "config" / "profiles"
PROFILE_FILES = sorted(PROFILE_DIR.glob("*.toml"))
NAMES = [p.stem for p in PROFILE_FILES]


def config_for(profile: Profile, port: int = 502) -> ModbusDeviceConfig:
    device = {"name": "m", "endpoint": f"tcp://127.0.0.1:{port}", "profile": profile.name}
    return ModbusDeviceConfig.model_validate(apply_profile(device, profile))


def plan_for(config: ModbusDeviceConfig) -> ReadPlan:
    return plan_reads(
        config.points,
        max_registers=config.max_registers_per_request,
        max_bits=config.max_bits_per_request,
        max_gap=config.max_gap,
        forbidden=config.forbidden_ranges,
    )


def test_the_profiles_of_the_issue_are_shipped() -> None:
    expected = {
        "eastron-sdm630",
        "eastron-sdm120",
        "carlo-gavazzi-em24",
        "generic-water-meter",
        "ssc-demo-meter",
    }
    assert expected <= set(NAMES)
    assert set(NAMES) <= set(available_profiles())


@pytest.mark.parametrize("name", NAMES)
def test_profile_loads_and_says_where_its_map_comes_from(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.driver == "modbus"
    assert profile.description
    head = profile.path.read_text(encoding="utf-8").splitlines()[0]
    assert head.startswith("# "), f"{name}: begin with a comment naming the source document"


@pytest.mark.parametrize("name", NAMES)
def test_profile_states_its_request_limits(name: str) -> None:
    profile = load_profile(name)
    assert "max_registers_per_request" in profile.defaults, name
    assert "max_gap" in profile.defaults, name
    config = config_for(profile)
    if any(p.table in BIT_TABLES for p in config.points):
        assert "max_bits_per_request" in profile.defaults, name
    assert config.max_registers_per_request == profile.defaults["max_registers_per_request"]
    assert config.max_gap == profile.defaults["max_gap"]


@pytest.mark.parametrize("name", NAMES)
def test_profile_plan_respects_its_limits(name: str) -> None:
    config = config_for(load_profile(name))
    plan = plan_for(config)
    read = sorted(i for r in plan for i, _ in r.points)
    assert read == list(range(len(config.points)))
    for request in plan:
        limit = (
            config.max_bits_per_request
            if request.table in BIT_TABLES
            else config.max_registers_per_request
        )
        assert request.count <= limit
        for first, last in gap_ranges(request, config.points):
            assert last - first + 1 <= config.max_gap
            for f_first, f_last in config.forbidden_ranges:
                assert last < f_first or f_last < first


@pytest.mark.parametrize(
    ("name", "points", "requests"),
    [
        ("eastron-sdm630", 19, 5),
        ("eastron-sdm120", 12, 3),
        ("carlo-gavazzi-em24", 20, 7),
        ("generic-water-meter", 5, 1),
        ("ssc-demo-meter", 20, 2),
    ],
)
def test_requests_per_cycle(name: str, points: int, requests: int) -> None:
    config = config_for(load_profile(name))
    assert len(config.points) == points
    assert len(plan_for(config)) == requests


@pytest.mark.parametrize("name", NAMES)
def test_simulator_defines_every_register_the_plan_reads(name: str) -> None:
    profile = load_profile(name)
    meter = SimulatedMeter(profile, seed=1, t0=1_700_000_000.0)
    t = 1_700_000_123.0
    registers = meter.registers_at(t)
    config = config_for(profile)
    for request in plan_for(config):
        table = registers[request.table]
        missing = [a for a in range(request.address, request.last + 1) if a not in table]
        assert missing == [], f"{name}: the simulator would refuse {request}"
    values = meter.values_at(t)
    for point in config.points:
        words = [registers[point.table][point.address + i] for i in range(point.width)]
        raw = decode_registers(words, point.type, point.byte_order)
        assert apply_scale(raw, point.scale, point.offset) == pytest.approx(
            values[point.name], rel=1e-6
        ), point.name


def _by_name(name: str) -> dict[str, Any]:
    return {p.name: p for p in config_for(load_profile(name)).points}


def test_sdm120_map() -> None:
    points = _by_name("eastron-sdm120")
    expected = {
        "voltage": 0x00, "current": 0x06, "power": 0x0C, "apparent_power": 0x12,
        "reactive_power": 0x18, "power_factor": 0x1E, "frequency": 0x46,
        "energy_import": 0x48, "energy_export": 0x4A, "reactive_energy_import": 0x4C,
        "reactive_energy_export": 0x4E, "energy_total": 0x156,
    }  # fmt: skip
    assert {n: p.address for n, p in points.items()} == expected
    for p in points.values():
        assert (p.table, p.type, p.byte_order) == (Table.INPUT, PointType.F32, ByteOrder.ABCD)
    assert load_profile("eastron-sdm120").defaults["max_registers_per_request"] == 60


def test_em24_map_decodes_the_protocol_examples() -> None:
    points = _by_name("carlo-gavazzi-em24")
    voltage = points["voltage_l1_n"]
    assert (voltage.address, voltage.type, voltage.byte_order) == (0, PointType.I32, ByteOrder.CDAB)
    raw = decode_registers([0x0901, 0x0000], voltage.type, voltage.byte_order)
    assert apply_scale(raw, voltage.scale, voltage.offset) == 230.5
    power = points["power_l1"]
    raw = decode_registers([0xCFC7, 0xFFFF], power.type, power.byte_order)
    assert apply_scale(raw, power.scale, power.offset) == -1234.5
    scales = {n: p.scale for n, p in points.items()}
    assert scales["current_l2"] == 0.001
    assert scales["power_factor"] == 0.001
    assert scales["frequency"] == 0.1
    assert scales["energy_import"] == 0.1


# The RS-485 EM24 DIN's table 2.3-1 ("EM24-DIN PFA, PFB & X models - Communication Protocol",
# V4R0): after W sys come VA sys, var sys, DMD W (0x2E), DMD VA (0x30), then the power factors.
EM24_DIN = {
    "voltage_l1_n": (0x00, "i32", 0.1), "voltage_l2_n": (0x02, "i32", 0.1),
    "voltage_l3_n": (0x04, "i32", 0.1), "voltage_l1_l2": (0x06, "i32", 0.1),
    "voltage_l2_l3": (0x08, "i32", 0.1), "voltage_l3_l1": (0x0A, "i32", 0.1),
    "current_l1": (0x0C, "i32", 0.001), "current_l2": (0x0E, "i32", 0.001),
    "current_l3": (0x10, "i32", 0.001), "power_l1": (0x12, "i32", 0.1),
    "power_l2": (0x14, "i32", 0.1), "power_l3": (0x16, "i32", 0.1),
    "power_total": (0x28, "i32", 0.1),
    "power_factor_l1": (0x32, "i16", 0.001), "power_factor_l2": (0x33, "i16", 0.001),
    "power_factor_l3": (0x34, "i16", 0.001), "power_factor": (0x35, "i16", 0.001),
    "frequency": (0x37, "i16", 0.1),
    "energy_import": (0x3E, "i32", 0.1), "energy_export": (0x5C, "i32", 0.1),
}  # fmt: skip


def test_em24_is_the_rs485_din_map() -> None:
    points = _by_name("carlo-gavazzi-em24")
    got = {n: (p.address, p.type.value, p.scale) for n, p in points.items()}
    assert got == EM24_DIN
    for p in points.values():
        assert p.table is Table.HOLDING
        assert p.byte_order is (ByteOrder.CDAB if p.type is PointType.I32 else ByteOrder.ABCD)
    # The demand words (0x2E-0x31) are never read as power factors again.
    assert not {0x2E, 0x2F, 0x30, 0x31} & {p.address for p in points.values()}


def test_em24_requests_stay_within_the_documented_11_registers() -> None:
    config = config_for(load_profile("carlo-gavazzi-em24"))
    assert config.max_registers_per_request == 11
    assert max(r.count for r in plan_for(config)) <= 11


def test_every_vendor_profile_cites_its_document() -> None:
    for name, document in [
        ("carlo-gavazzi-em24", "EM24-DIN PFA, PFB & X models - Communication Protocol"),
        ("eastron-sdm630", "SDM630-Modbus MID V2 User Manual"),
        ("eastron-sdm120", "SDM630-Modbus MID V2 User Manual"),
    ]:
        head = load_profile(name).path.read_text(encoding="utf-8").split("[profile]")[0]
        assert document in head, name


def test_water_meter_counter_is_32_bit_litres() -> None:
    volume = _by_name("generic-water-meter")["volume_total"]
    assert (volume.table, volume.type, volume.scale, volume.unit) == (
        Table.HOLDING, PointType.U32, 0.001, "m³",
    )  # fmt: skip
    raw = decode_registers([0x0001, 0x0000], volume.type, volume.byte_order)
    assert apply_scale(raw, volume.scale, volume.offset) == 65.536  # 65 536 litres
    text = load_profile("generic-water-meter").path.read_text(encoding="utf-8")
    assert "ssc-agent probe" in text


@pytest.fixture
async def servers() -> AsyncIterator[list[SimulatorServer]]:
    started: list[SimulatorServer] = []
    yield started
    for s in started:
        await s.stop()


@pytest.mark.parametrize("name", NAMES)
async def test_plan_read_from_a_served_profile_decodes(
    name: str, port: int, servers: list[SimulatorServer]
) -> None:
    profile = load_profile(name)
    server = await serve({3: profile}, "127.0.0.1", port, update_interval=3600)
    servers.append(server)
    meter = server.meters[3]
    expected = meter.values_at(meter.t0)
    config = config_for(profile, port)
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    assert await client.connect()
    got: dict[str, int | float] = {}
    try:
        for request in plan_for(config):
            read = {
                Table.HOLDING: client.read_holding_registers,
                Table.INPUT: client.read_input_registers,
                Table.COIL: client.read_coils,
                Table.DISCRETE: client.read_discrete_inputs,
            }[request.table]
            answer = await read(request.address, count=request.count, device_id=3)
            assert not answer.isError(), f"{name}: {request} answered {answer}"
            for index, offset in request.points:
                point = config.points[index]
                if request.table in BIT_TABLES:
                    raw: int | float = int(answer.bits[offset])
                else:
                    words = answer.registers[offset : offset + point.width]
                    raw = decode_registers(words, point.type, point.byte_order)
                got[point.name] = apply_scale(raw, point.scale, point.offset)
    finally:
        client.close()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
