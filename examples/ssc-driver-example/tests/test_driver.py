"""The driver against the simulated sensor on a real TCP port, and inside the real scheduler."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent.config import load_config
from agent.driver import DeviceConfig, DriverContext
from agent.errors import ConfigError, DeviceProtocolError, DeviceUnavailable
from agent.gateway.scheduler import DevicePoller
from agent.readings import Event, Quality, Reading
from structlog.testing import capture_logs

from ssc_driver_example.config import AsciiTcpDeviceConfig
from ssc_driver_example.driver import SAMPLE_TOML, SPEC, AsciiTcpDriver, create_driver
from ssc_driver_example.protocol import AnswerError, SensorError
from ssc_driver_example.simulator import Fault, SensorSimulator


def fixed(n: int) -> dict[str, int | float | None]:
    return {"t": 21.5, "rh": 48, "p": 10132, "n": n}


@pytest.fixture
async def sensor() -> AsyncIterator[SensorSimulator]:
    sim = SensorSimulator(fixed)
    await sim.start()
    yield sim
    await sim.stop()


def device(port: int, **extra: object) -> AsciiTcpDeviceConfig:
    table: dict[str, object] = {
        "name": "weather-1",
        "driver": "ascii_tcp",
        "endpoint": f"tcp://127.0.0.1:{port}",
        "timeout": "300 ms",
        "points": [
            {"name": "air_temperature", "key": "t", "unit": "°C", "valid_max": 85.0},
            {"name": "relative_humidity", "key": "rh", "unit": "%"},
            {"name": "air_pressure", "key": "p", "unit": "hPa", "scale": 0.1},
            {"name": "count", "key": "n"},
        ],
        **extra,
    }
    return AsciiTcpDeviceConfig.model_validate(table)


async def test_reads_every_point_with_its_value_and_quality(sensor: SensorSimulator) -> None:
    driver = create_driver(device(sensor.port), DriverContext())
    await driver.connect()
    try:
        first = await driver.read()
        second = await driver.read()
    finally:
        await driver.close()
    assert [(v.point, v.value, v.quality) for v in first] == [
        ("air_temperature", 21.5, Quality.GOOD),
        ("relative_humidity", 48, Quality.GOOD),
        ("air_pressure", 1013.2, Quality.GOOD),
        ("count", 1, Quality.GOOD),
    ]
    assert second[3].value == 2, "one request per read, on the same connection"
    assert [p.name for p in driver.points] == [v.point for v in first]


async def test_missing_keys_no_value_and_out_of_range_get_their_quality_codes() -> None:
    sim = SensorSimulator(lambda n: {"t": 99.0, "rh": None, "n": n})
    await sim.start()
    driver = AsciiTcpDriver(device(sim.port))
    try:
        values = {v.point: (v.value, v.quality) for v in await driver.read()}
    finally:
        await driver.close()
        await sim.stop()
    assert values == {
        "air_temperature": (None, Quality.OUT_OF_RANGE),  # above valid_max
        "relative_humidity": (None, Quality.OUT_OF_RANGE),  # the sensor sent "-"
        "air_pressure": (None, Quality.PROTOCOL_ERROR),  # the sensor did not send p
        "count": (1, Quality.GOOD),
    }


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (Fault.SILENT, DeviceUnavailable, "no answer within 0.3 s"),
        (Fault.HANG_UP, DeviceUnavailable, "closed the connection"),
        (Fault.GARBAGE, AnswerError, "not ASCII"),
        (Fault.BAD_CHECKSUM, AnswerError, "does not match"),
        (Fault.ERROR, SensorError, "warming up"),
    ],
)
async def test_each_fault_raises_its_error_naming_the_device_and_the_driver_recovers(
    sensor: SensorSimulator, fault: Fault, error: type[Exception], message: str
) -> None:
    driver = AsciiTcpDriver(device(sensor.port))
    await driver.connect()
    try:
        await driver.read()
        sensor.fault = fault
        with pytest.raises(error, match=message) as raised:
            await driver.read()
        assert str(raised.value).startswith(f"weather-1 (tcp://127.0.0.1:{sensor.port}): ")
        sensor.fault = Fault.NONE
        if isinstance(raised.value, DeviceUnavailable):
            await driver.connect()  # what the scheduler does after DeviceUnavailable
        values = await driver.read()
    finally:
        await driver.close()
    assert all(v.quality is Quality.GOOD for v in values)
    assert values[3].value == len(sensor.served)


async def test_a_sensor_that_is_not_there_is_unavailable_with_a_hint() -> None:
    sim = SensorSimulator()
    await sim.start()
    port = sim.port
    await sim.stop()  # nothing listens there now
    driver = AsciiTcpDriver(device(port))
    with pytest.raises(DeviceUnavailable, match=r"cannot connect: .*listens on port"):
        await driver.connect()
    await driver.close()


async def test_the_scheduler_logs_down_once_and_up_once(sensor: SensorSimulator) -> None:
    readings: list[Reading] = []
    events: list[Event] = []
    driver = AsciiTcpDriver(device(sensor.port, timeout="100 ms"))
    poller = DevicePoller("weather-1", driver, 0.2, emit=readings.extend, event=events.append,
                          clock=time.time)
    with capture_logs() as logs:
        task = asyncio.create_task(poller.run())
        try:
            await asyncio.sleep(0.5)
            sensor.fault = Fault.SILENT
            await asyncio.sleep(0.5)  # two or three failed polls: backoff stays short
            sensor.fault = Fault.NONE
            await asyncio.sleep(1.8)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    names = [e["event"] for e in logs if e["event"].startswith("device_")]
    assert names == ["device_unavailable", "device_available"], logs
    assert [e.kind for e in events] == ["device_down", "device_up"]
    qualities = [r.quality for r in readings if r.point == "count"]
    assert Quality.COMM_ERROR in qualities
    assert qualities[-1] is Quality.GOOD, "the driver must recover by itself"


def test_spec_names_the_model_and_ships_the_sample() -> None:
    assert SPEC.name == "ascii_tcp"
    assert SPEC.config_model is AsciiTcpDeviceConfig
    assert SPEC.sample_toml == SAMPLE_TOML
    assert (Path(__file__).parents[1] / "src/ssc_driver_example/sample.toml").read_text(
        encoding="utf-8"
    ) == SAMPLE_TOML


def test_the_sample_validates_through_the_agents_config_loader(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[gateway]\nid = "gw-1"\ndata_dir = "{tmp_path}"\n\n'
        '[uplink]\nbroker = "mqtt://127.0.0.1:1883"\n\n' + SAMPLE_TOML,
        encoding="utf-8",
    )
    loaded = load_config(config, driver_models={"ascii_tcp": AsciiTcpDeviceConfig})
    assert [d.name for d in loaded.devices] == ["weather-1"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"endpoint": "10.0.0.20:7070"}, "write tcp://HOST:PORT"),
        ({"timeout": "2"}, "is not a duration"),
        ({"colour": "red"}, "colour"),
        ({"points": []}, "points"),
    ],
)
def test_config_errors_name_the_key(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        device(7070, **change)


def test_two_points_on_one_key_are_refused() -> None:
    with pytest.raises(ValueError, match="both read key 't'"):
        AsciiTcpDeviceConfig.model_validate({
            "name": "w", "endpoint": "tcp://127.0.0.1:7070",
            "points": [{"name": "a", "key": "t"}, {"name": "t"}],
        })


def test_create_refuses_another_drivers_config() -> None:
    with pytest.raises(ConfigError, match="expected AsciiTcpDeviceConfig, got DeviceConfig"):
        create_driver(DeviceConfig(name="x", driver="ascii_tcp"), DriverContext())


def test_protocol_errors_are_the_agents_protocol_errors() -> None:
    assert issubclass(AnswerError, DeviceProtocolError)
    assert issubclass(SensorError, DeviceProtocolError)
