"""sample.toml validates, the README shows it verbatim, and the shipped profiles plan right."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent.config import BusConfig, load_config
from agent.driver import DriverContext
from agent.profiles import apply_profile, load_profile
from drivers.modbus.config import ModbusDeviceConfig, PointType, Table, Transport
from drivers.modbus.driver import SPEC, ModbusDriver

DRIVER_DIR = Path(__file__).parents[3] / "drivers" / "modbus"


def merged(device: dict[str, Any]) -> ModbusDeviceConfig:
    if "profile" in device:
        device = apply_profile(device, load_profile(device["profile"]))
    return ModbusDeviceConfig.model_validate(device)


def test_sample_devices_validate_after_profile_merging() -> None:
    sample = tomllib.loads((DRIVER_DIR / "sample.toml").read_text(encoding="utf-8"))
    devices = [merged(d) for d in sample["devices"]]
    assert [d.name for d in devices] == [
        "meter-1", "boiler-1", "meter-2", "meter-3", "meter-4", "meter-5"
    ]
    assert len(devices[0].points) == 19  # from the eastron-sdm630 profile
    assert devices[0].max_registers_per_request == 60
    assert {p.table for p in devices[1].points} == {Table.HOLDING, Table.INPUT, Table.COIL}
    assert [d.transport for d in devices] == [
        Transport.TCP, Transport.TCP, Transport.BUS, Transport.BUS, Transport.RTU_TCP,
        Transport.TCP,
    ]
    buses = {b["name"]: BusConfig.model_validate(b) for b in sample["buses"]}
    context = DriverContext(buses=buses)
    drivers = [SPEC.create(device, context) for device in devices]
    assert all(isinstance(d, ModbusDriver) for d in drivers)
    # the two bus meters share the line; rtu+tcp and the serialized gateway have their own
    assert len(context.closers) == 3


def test_sample_config_file_validates_as_a_whole(tmp_path: Path) -> None:
    """Through the real loader: bus names resolve, names are unique, ports are distinct."""
    sample = (DRIVER_DIR / "sample.toml").read_text(encoding="utf-8")
    path = tmp_path / "agent.toml"
    head = '[gateway]\nid = "gw-1"\n\n[uplink]\nbroker = "mqtt://127.0.0.1:1883"\n\n'
    path.write_text(head + sample, encoding="utf-8")
    config = load_config(path, driver_models={"modbus": ModbusDeviceConfig})
    assert [b.name for b in config.buses] == ["rs485-1"]
    assert len(config.devices) == 6


def test_readme_configuration_section_is_the_sample() -> None:
    sample = (DRIVER_DIR / "sample.toml").read_text(encoding="utf-8")
    readme = (DRIVER_DIR / "README.md").read_text(encoding="utf-8")
    configuration = readme.split("## Configuration", 1)[1]
    assert f"```toml\n{sample}```" in configuration
    assert sample == SPEC.sample_toml


@pytest.mark.parametrize(
    ("profile", "points", "requests"),
    [("eastron-sdm630", 19, 5), ("ssc-demo-meter", 20, 2)],
)
def test_shipped_profiles_plan(profile: str, points: int, requests: int) -> None:
    config = merged({"name": "m", "endpoint": "tcp://127.0.0.1:502", "profile": profile})
    assert len(config.points) == points
    driver = ModbusDriver(config)
    assert driver.requests_per_cycle == requests
    assert {r.table for r in driver.plan} <= {Table.INPUT, Table.HOLDING}


def test_sdm630_map() -> None:
    config = merged({"name": "m", "endpoint": "tcp://127.0.0.1:502", "profile": "eastron-sdm630"})
    by_name = {p.name: p for p in config.points}
    assert all(p.table is Table.INPUT and p.type is PointType.F32 for p in config.points)
    expected = {
        "voltage_l1": 0x00, "voltage_l2": 0x02, "voltage_l3": 0x04,
        "current_l1": 0x06, "current_l2": 0x08, "current_l3": 0x0A,
        "power_l1": 0x0C, "power_l2": 0x0E, "power_l3": 0x10,
        "power_factor_l1": 0x1E, "power_factor_l2": 0x20, "power_factor_l3": 0x22,
        "power_total": 0x34, "frequency": 0x46, "energy_import": 0x48, "energy_export": 0x4A,
        "reactive_energy_import": 0x4C, "reactive_energy_export": 0x4E, "energy_total": 0x156,
    }  # fmt: skip
    assert {n: p.address for n, p in by_name.items()} == expected
    assert by_name["energy_total"].unit == "kWh"
    assert by_name["reactive_energy_import"].unit == "kvarh"
    assert by_name["frequency"].unit == "Hz"
