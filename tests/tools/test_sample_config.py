"""``sample-config``: the printed config validates, documents every key, and names drivers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import (
    AgentConfig,
    BufferConfig,
    BusConfig,
    GatewayConfig,
    KpiConfig,
    UplinkConfig,
    load_config,
)
from agent.driver import DeviceConfig, DriverEntry, DriverSpec, discover
from agent.errors import ConfigError
from agent.profiles import available_profiles
from agent.schema import ConfigModel
from agent.tools.sample_config import sample_config
from drivers.modbus.config import ModbusDeviceConfig


class PlainDevice(DeviceConfig):
    """A made-up driver model: no profile, no points."""

    port: str
    address: int = 1


def _never(_: DeviceConfig) -> object:
    raise AssertionError("sample-config must not create drivers")


def spec(name: str, model: type[DeviceConfig], sample: str) -> DriverSpec:
    return DriverSpec(name, "0.0.1", f"{name} test driver", model, _never, sample)  # type: ignore[arg-type]


def validate(tmp_path: Path, text: str, **drivers: type[DeviceConfig]) -> AgentConfig:
    path = tmp_path / "sample.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, driver_models=drivers or None)


def test_default_sample_validates(tmp_path: Path) -> None:
    assert "ssc-demo-meter" in available_profiles()
    text = sample_config()
    config = validate(tmp_path, text, modbus=ModbusDeviceConfig)
    assert config.gateway.data_dir == Path("/var/lib/ssc-agent")
    [device] = config.devices
    assert isinstance(device, ModbusDeviceConfig)
    assert (device.endpoint, device.profile) == ("tcp://127.0.0.1:5020", "ssc-demo-meter")
    assert len(device.points) == 20  # merged from the profile
    kpis = {k.name: k for k in config.kpis}
    assert kpis["power_total_15min"].source == "demo-meter.power_total"
    assert kpis["power_total_day_max"].source_kpi == "power_total_15min"
    assert kpis["energy_import_day"].operator == "counter_delta"


def test_default_sample_validates_with_installed_drivers(tmp_path: Path) -> None:
    entries = discover()
    if entries.get("modbus") is None or entries["modbus"].spec is None:
        pytest.fail(f"the modbus driver is not installed: {entries.get('modbus')}")
    validate(tmp_path, sample_config())


def test_modbus_driver_sample_validates(tmp_path: Path) -> None:
    text = sample_config("modbus")
    assert "--driver modbus" in text
    config = validate(tmp_path, text)  # the installed driver's model, through discover()
    assert len(config.devices) >= 1
    first = config.devices[0]
    assert all(k.source.startswith((f"{first.name}.", "kpi:")) for k in config.kpis)


def test_sample_of_a_driver_without_points_or_header(tmp_path: Path) -> None:
    entries = {
        "plain": DriverEntry(
            "plain",
            "test",
            spec("plain", PlainDevice, 'name = "p1"\ndriver = "plain"\nport = "/dev/ttyS0"\n'),
            None,
        )
    }
    text = sample_config("plain", entries=entries)
    config = validate(tmp_path, text, plain=PlainDevice)
    [device] = config.devices
    assert isinstance(device, PlainDevice)
    assert config.kpis == []
    assert "no example KPIs" in text


def test_driver_sample_with_its_own_bus_replaces_the_generic_one(tmp_path: Path) -> None:
    sample = (
        '[[buses]]\nname = "rs485-1"\nport = "/dev/ttyAMA0"\n\n'
        '[[devices]]\nname = "p1"\ndriver = "plain"\nport = "/dev/ttyAMA0"\n'
    )
    entries = {"plain": DriverEntry("plain", "test", spec("plain", PlainDevice, sample), None)}
    config = validate(tmp_path, sample_config("plain", entries=entries), plain=PlainDevice)
    assert [bus.port for bus in config.buses] == ["/dev/ttyAMA0"]


def test_unknown_driver_lists_the_installed_ones() -> None:
    entries = {"modbus": DriverEntry("modbus", "x", spec("modbus", ModbusDeviceConfig, ""), None)}
    with pytest.raises(ConfigError) as info:
        sample_config("bacnet", entries=entries)
    assert info.value.problems == ["unknown driver 'bacnet'; installed drivers: modbus"]


def test_unknown_driver_with_real_discovery() -> None:
    with pytest.raises(ConfigError, match=r"unknown driver 'nope'; installed drivers: .*modbus"):
        sample_config("nope")


def test_broken_driver_is_named() -> None:
    entries = {"mbus": DriverEntry("mbus", "x", None, "import failed: ImportError('serial')")}
    with pytest.raises(ConfigError) as info:
        sample_config("mbus", entries=entries)
    assert info.value.problems == [
        "driver 'mbus' could not be loaded: import failed: ImportError('serial')"
    ]


@pytest.mark.parametrize("model", [GatewayConfig, UplinkConfig, BufferConfig, BusConfig, KpiConfig])
def test_every_key_is_documented(model: type[ConfigModel]) -> None:
    text = sample_config()
    fields = model.model_fields
    missing = [key for key in fields if not re.search(rf"(^|[#\s,]){key}\b", text, re.MULTILINE)]
    assert missing == []


def test_every_section_is_there() -> None:
    text = sample_config()
    for header in ("[gateway]", "[uplink]", "[buffer]", "[[buses]]", "[[devices]]", "[[kpis]]"):
        assert header in text
