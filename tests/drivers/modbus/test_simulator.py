"""Simulated meters: pure values over time, and the served registers over real Modbus TCP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient

from agent.profiles import Profile, load_profile
from drivers.modbus.codec import decode_registers
from drivers.modbus.config import ByteOrder, PointType, Table
from drivers.modbus.simulated_meter import SimulatedMeter
from drivers.modbus.simulator import run_simulate, serve, serve_many
from tests.conftest import free_port

T0 = 1_780_000_000.0  # a fixed epoch second, so results do not depend on today


def tiny_profile(tmp_path: Path, simulate: dict[str, Any], **defaults: Any) -> Profile:
    points = [
        {"name": "volts", "address": 0, "table": "input", "type": "f32"},
        {"name": "energy", "address": 2, "table": "input", "type": "f32"},
        {"name": "pulses", "address": 10, "table": "input", "type": "u32", "byte_order": "CDAB"},
        {"name": "temp", "address": 0, "table": "holding", "type": "i16", "scale": 0.1},
        {"name": "relay", "address": 3, "table": "coil", "type": "bool"},
    ]
    return Profile("tiny", tmp_path / "tiny.toml", "", "modbus", defaults, points, simulate)


HINTS: dict[str, Any] = {
    "volts": {"kind": "noise", "base": 230.0, "spread": 2.0, "resolution": 0.1},
    "energy": {"kind": "counter", "start": 100.0, "rate_per_hour": 3.6, "resolution": 0.001},
    "pulses": {"kind": "counter", "start": 10, "rate_per_hour": 3600, "resolution": 1},
    "temp": {"kind": "noise", "base": 21.0, "spread": 0.5, "resolution": 0.1},
    "relay": {"kind": "constant", "value": 1},
}


def test_counters_rise_with_time_and_are_quantized(tmp_path: Path) -> None:
    meter = SimulatedMeter(tiny_profile(tmp_path, HINTS), seed=1, t0=T0)
    at_start = meter.values_at(T0)
    after_hour = meter.values_at(T0 + 3600)
    assert at_start["energy"] == 100.0
    assert after_hour["energy"] == pytest.approx(103.6, abs=1e-9)
    assert at_start["pulses"] == 10
    assert after_hour["pulses"] == 3610
    assert meter.values_at(T0 + 0.5)["pulses"] == 10  # counters round down
    assert meter.values_at(T0 + 1.0)["pulses"] == 11
    assert isinstance(after_hour["pulses"], int)


@given(st.floats(0, 86400 * 365), st.floats(0, 3600))
def test_counters_never_decrease(start: float, later: float) -> None:
    meter = SimulatedMeter(tiny_profile(Path("/nonexistent"), HINTS), seed=3, t0=T0)
    a, b = meter.values_at(T0 + start), meter.values_at(T0 + start + later)
    assert b["energy"] >= a["energy"]
    assert b["pulses"] >= a["pulses"]


@given(st.floats(0, 86400 * 30))
def test_values_sit_on_the_resolution_grid_and_in_band(dt: float) -> None:
    meter = SimulatedMeter(tiny_profile(Path("/nonexistent"), HINTS), seed=5, t0=T0)
    values = meter.values_at(T0 + dt)
    assert 228.0 <= values["volts"] <= 232.0
    assert abs(values["volts"] * 10 - round(values["volts"] * 10)) < 1e-9
    assert abs(values["energy"] * 1000 - round(values["energy"] * 1000)) < 1e-6
    assert 20.5 <= values["temp"] <= 21.5
    assert abs(values["temp"] * 10 - round(values["temp"] * 10)) < 1e-9
    assert values["relay"] == 1


def test_deterministic_for_a_seed_and_time(tmp_path: Path) -> None:
    profile = tiny_profile(tmp_path, HINTS)
    a = SimulatedMeter(profile, seed=42, t0=T0)
    b = SimulatedMeter(profile, seed=42, t0=T0)
    other = SimulatedMeter(profile, seed=43, t0=T0)
    times = [T0 + k * 7.3 for k in range(50)]
    assert [a.values_at(t) for t in times] == [b.values_at(t) for t in times]
    assert [a.registers_at(t) for t in times] == [b.registers_at(t) for t in times]
    assert [a.values_at(t)["volts"] for t in times] != [other.values_at(t)["volts"] for t in times]
    # noise moves from step to step, and stays put within one step
    volts = {a.values_at(t)["volts"] for t in times}
    assert len(volts) > 5
    assert a.values_at(T0 + 10.1) == a.values_at(T0 + 10.9)


def test_registers_encode_the_values(tmp_path: Path) -> None:
    meter = SimulatedMeter(tiny_profile(tmp_path, HINTS), seed=9, t0=T0)
    t = T0 + 1234.0
    values = meter.values_at(t)
    regs = meter.registers_at(t)
    ir, hr = regs[Table.INPUT], regs[Table.HOLDING]
    volts = decode_registers([ir[0], ir[1]], PointType.F32, ByteOrder.ABCD)
    assert volts == pytest.approx(values["volts"], rel=1e-6)
    assert decode_registers([ir[10], ir[11]], PointType.U32, ByteOrder.CDAB) == values["pulses"]
    assert ir[11] == 0  # low word first: a small counter leaves the second word empty
    temp_raw = decode_registers([hr[0]], PointType.I16, ByteOrder.ABCD)
    assert temp_raw / 10 == values["temp"]
    assert regs[Table.COIL][3] == 1


def test_defined_addresses_follow_points_gaps_and_forbidden(tmp_path: Path) -> None:
    meter = SimulatedMeter(
        tiny_profile(tmp_path, {**HINTS, "defined": {"holding": [[100, 101]]}}, max_gap=6)
    )
    # input: 0-3 points, gap 4-9 (6 <= max_gap) filled, 10-11 the counter
    assert meter.defined[Table.INPUT] == [(0, 11)]
    assert meter.defined[Table.HOLDING] == [(0, 0), (100, 101)]
    narrow = SimulatedMeter(
        tiny_profile(tmp_path, HINTS, max_gap=6, forbidden_ranges=[[5, 6], [1, 1]])
    )
    # a forbidden range stays undefined, except where a point lies
    assert narrow.defined[Table.INPUT] == [(0, 4), (7, 11)]


@pytest.mark.parametrize(
    ("simulate", "message"),
    [
        ({"nope": {"kind": "constant", "value": 1}}, "no such point"),
        ({"volts": {"kind": "wobble"}}, "volts"),
        ({"volts": {"kind": "noise", "base": 1.0, "spread": -1.0}}, "volts"),
        ({"volts": {"kind": "counter", "rate_per_hour": 1, "bogus": 2}}, "bogus"),
    ],
)
def test_bad_hints_are_named(tmp_path: Path, simulate: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        SimulatedMeter(tiny_profile(tmp_path, simulate))
    assert "profile tiny" in str(caught.value)


def test_shipped_profiles_load_and_simulate() -> None:
    for name, count in (("eastron-sdm630", 19), ("ssc-demo-meter", 20)):
        meter = SimulatedMeter(load_profile(name), seed=0, t0=T0)
        values = meter.values_at(T0 + 60)
        assert len(values) == count
        assert all(v != 0 for k, v in values.items() if k not in ("status", "energy_export"))


async def test_serves_two_units_and_updates_over_time(tmp_path: Path) -> None:
    port = free_port()
    now = [T0]
    served: list[tuple[int, float, dict[str, float | int]]] = []
    profile = tiny_profile(tmp_path, HINTS)
    server = await serve(
        {1: profile, 2: profile},
        "127.0.0.1",
        port,
        update_interval=0.02,
        clock=lambda: now[0],
        served_log=lambda unit, t, values: served.append((unit, t, values)),
    )
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    try:
        assert await client.connect()

        async def pulses(unit: int) -> int:
            rr = await client.read_input_registers(10, count=2, device_id=unit)
            assert not rr.isError()
            raw = decode_registers(list(rr.registers), PointType.U32, ByteOrder.CDAB)
            assert isinstance(raw, int)
            return raw

        assert await pulses(1) == 10
        assert await pulses(2) == 10
        assert {u for u, _, _ in served} == {1, 2}

        now[0] = T0 + 120.0
        for _ in range(100):  # the updater runs every 20 ms
            await asyncio.sleep(0.02)
            if served[-1][1] == now[0]:
                break
        assert served[-1][1] == now[0]
        assert await pulses(1) == 130
        assert served[-1][2]["pulses"] == 130

        # each unit is its own meter: different noise
        rr1 = await client.read_input_registers(0, count=2, device_id=1)
        rr2 = await client.read_input_registers(0, count=2, device_id=2)
        values = [v for u, t, v in served if t == now[0]]
        assert len(values) >= 2
        v1 = decode_registers(list(rr1.registers), PointType.F32, ByteOrder.ABCD)
        v2 = decode_registers(list(rr2.registers), PointType.F32, ByteOrder.ABCD)
        assert v1 == pytest.approx(server.meters[1].values_at(now[0])["volts"], rel=1e-6)
        assert v2 == pytest.approx(server.meters[2].values_at(now[0])["volts"], rel=1e-6)

        # an undefined address answers exception 2, like a real device
        rr = await client.read_input_registers(200, count=1, device_id=1)
        assert rr.isError()
        assert rr.exception_code == 2
    finally:
        client.close()
        await server.stop()
        await server.stop()


async def test_serve_many_runs_one_server_per_port() -> None:
    ports = [free_port() for _ in range(3)]
    fleet = await serve_many(
        {1: load_profile("ssc-demo-meter")}, "127.0.0.1", ports, update_interval=3600
    )
    try:
        seen: list[float] = []
        for port in ports:
            client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
            assert await client.connect()
            rr = await client.read_input_registers(0, count=28, device_id=1)
            client.close()
            assert not rr.isError()
            seen.append(decode_registers(list(rr.registers[:2]), PointType.F32, ByteOrder.ABCD))
        assert all(220 < v < 240 for v in seen)
        assert len(fleet.servers) == 3
        assert len({id(s.meters[1]) for s in fleet.servers}) == 3
    finally:
        await fleet.stop()


async def test_run_simulate_prints_where_it_serves(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    await run_simulate("ssc-demo-meter", "127.0.0.1", port, [1, 3], duration=0.05)
    out = capsys.readouterr().out
    assert f"tcp://127.0.0.1:{port}" in out
    assert "ssc-demo-meter" in out
    assert "unit 1, 3" in out
