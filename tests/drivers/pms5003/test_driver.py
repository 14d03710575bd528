"""The PMS5003 driver against its simulator through a socat virtual serial line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.driver import DriverContext
from agent.errors import ConfigError, DeviceProtocolError, DeviceUnavailable
from agent.readings import Quality
from drivers.pms5003 import frames
from drivers.pms5003.config import Pms5003Config
from drivers.pms5003.driver import SPEC, Pms5003Driver
from drivers.pms5003.simulator import Fault, Pms5003Simulator
from tests.drivers.modbus.conftest import PtyPair
from tests.drivers.pms5003.conftest import VALUES, wait_open

DRIVER_DIR = Path(__file__).parents[3] / "drivers" / "pms5003"
MODE, READ = frames.Command.MODE, frames.Command.READ
GOOD = list(zip(frames.FIELDS, VALUES, [Quality.GOOD] * 12, strict=True))


def config(port: str, **extra: Any) -> Pms5003Config:
    table = {"name": "dust-1", "driver": "pms5003", "port": port, "timeout": "300 ms"} | extra
    return Pms5003Config.model_validate(table)


def values(result: Any) -> list[tuple[str, int | float | None, Quality]]:
    return [(v.point, v.value, v.quality) for v in result]


@pytest.fixture
async def driver_factory() -> Any:
    made: list[Pms5003Driver] = []

    def make(cfg: Pms5003Config) -> Pms5003Driver:
        driver = SPEC.create(cfg, DriverContext())
        assert isinstance(driver, Pms5003Driver)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        await driver.close()


async def test_passive_mode_all_twelve_values(
    line: PtyPair, sim: Pms5003Simulator, driver_factory: Any
) -> None:
    driver = driver_factory(config(line.b))
    assert [(p.name, p.unit) for p in driver.points][:3] == [
        ("pm1_0_cf1", "µg/m³"), ("pm2_5_cf1", "µg/m³"), ("pm10_cf1", "µg/m³")
    ]
    assert {p.unit for p in driver.points[6:]} == {"1/0.1L"}
    await driver.connect()
    assert values(await driver.read()) == GOOD
    assert sim.passive
    sim.values = tuple(range(1, 13))
    assert [v.value for v in await driver.read()] == list(range(1, 13))
    assert sim.commands == [MODE, READ, READ]


async def test_active_mode_and_a_subset_of_points(
    line: PtyPair, sim: Pms5003Simulator, driver_factory: Any
) -> None:
    driver = driver_factory(config(line.b, mode="active", points=["pm10", "pm2_5"]))
    assert values(await driver.read()) == [("pm10", 11, Quality.GOOD), ("pm2_5", 9, Quality.GOOD)]
    assert not sim.passive
    assert READ not in sim.commands


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (Fault.NOISE, None, None),
        (Fault.PARTIAL, DeviceProtocolError, "incomplete answer to the read command"),
        (Fault.BAD_CHECKSUM, frames.Pms5003FrameError, "checksum 02CF, computed 02CE"),
        (Fault.SILENCE, DeviceUnavailable, "no answer within 0.3 s to the read command"),
    ],
)
async def test_passive_faults_then_recovery(
    line: PtyPair,
    sim: Pms5003Simulator,
    driver_factory: Any,
    fault: Fault,
    error: type[Exception] | None,
    message: str | None,
) -> None:
    driver = driver_factory(config(line.b))
    assert values(await driver.read()) == GOOD
    sim.inject(fault)
    if error is None:
        # The noise holds a false header with a plausible length: resync slides past it.
        assert values(await driver.read()) == GOOD
    else:
        with pytest.raises(error, match=message) as caught:
            await driver.read()
        assert line.b in str(caught.value)
    assert values(await driver.read()) == GOOD


async def test_active_mode_resyncs_past_a_broken_stream(
    line: PtyPair, sim: Pms5003Simulator, driver_factory: Any
) -> None:
    driver = driver_factory(config(line.b, mode="active", timeout="1 s"))
    await driver.read()
    sim.inject(Fault.PARTIAL, Fault.BAD_CHECKSUM, Fault.SILENCE, Fault.NOISE)
    assert values(await driver.read()) == GOOD
    assert not sim.faults


async def test_unplugged_and_plugged_back(
    line: PtyPair, sim: Pms5003Simulator, driver_factory: Any
) -> None:
    driver = driver_factory(config(line.b))
    assert values(await driver.read()) == GOOD
    line.kill()
    await asyncio.sleep(0.05)
    for _ in range(2):
        with pytest.raises(DeviceUnavailable) as caught:
            await driver.read()
        assert line.b in str(caught.value)
    with pytest.raises(DeviceUnavailable, match="does not exist"):
        await driver.connect()
    line.start()
    await wait_open(sim)
    assert not sim.passive  # power-cycled: back in active mode
    commands = len(sim.commands)
    assert values(await driver.read()) == GOOD
    assert sim.commands[commands:] == [MODE, READ]  # passive mode set again
    assert sim.passive


async def test_replugged_between_two_polls_the_next_poll_reads(
    line: PtyPair, sim: Pms5003Simulator, driver_factory: Any, tmp_path: Path
) -> None:
    """Unplugged and plugged back between two polls, another pty behind the same link: the
    next poll reopens the port first instead of failing once on the stale one."""
    driver = driver_factory(config(line.b))
    assert values(await driver.read()) == GOOD
    before = os.path.realpath(line.b)
    placeholder = PtyPair(tmp_path / "placeholder")
    (tmp_path / "placeholder").mkdir()
    line.kill()
    placeholder.start()  # holds the freed pty: the replugged line gets another one
    try:
        line.start()
        assert os.path.realpath(line.b) != before  # the input
        await wait_open(sim)
        assert values(await driver.read()) == GOOD
        assert driver.link.opens == 2
    finally:
        placeholder.kill()


async def test_spec_simulate_serves_a_sensor(line: PtyPair) -> None:
    assert SPEC.simulate is not None
    task = asyncio.create_task(SPEC.simulate(line.a, 5.0))
    driver = Pms5003Driver(config(line.b, timeout="1 s"))
    try:
        for _ in range(50):
            with contextlib.suppress(DeviceUnavailable):
                result = await driver.read()
                break
            await asyncio.sleep(0.02)
        by_name = {v.point: v.value for v in result if isinstance(v.value, int)}
        assert all(v.quality is Quality.GOOD for v in result)
        assert 0 < by_name["pm1_0"] <= by_name["pm2_5"] <= by_name["pm10"]
    finally:
        await driver.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_sample_validates_and_the_readme_shows_it(tmp_path: Path) -> None:
    sample = (DRIVER_DIR / "sample.toml").read_text(encoding="utf-8")
    assert sample == SPEC.sample_toml
    devices = [SPEC.config_model.model_validate(d) for d in tomllib.loads(sample)["devices"]]
    assert [len(d.point_names) for d in devices if isinstance(d, Pms5003Config)] == [12, 3, 5]
    assert [d.model for d in devices if isinstance(d, Pms5003Config)] == [
        "pms5003", "pms5003", "pms5003t"]
    readme = (DRIVER_DIR / "README.md").read_text(encoding="utf-8")
    assert f"```toml\n{sample}```" in readme.split("## Configuration", 1)[1]
    path = tmp_path / "agent.toml"
    head = '[gateway]\nid = "gw-1"\n\n[uplink]\nbroker = "mqtt://127.0.0.1:1883"\n\n'
    path.write_text(head + sample, encoding="utf-8")
    assert len(load_config(path, driver_models={"pms5003": Pms5003Config}).devices) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mode": "query"}, "mode"),
        ({"points": ["pm25"]}, "'pm25' is not a pms5003 value: write one of pm1_0_cf1"),
        ({"points": ["temperature"]},
         "'temperature' is not a pms5003 value \\(a value of pms5003t, pms5003st\\)"),
        ({"model": "pms5003t", "points": ["count_10"]},
         "'count_10' is not a pms5003t value \\(a value of pms5003, pms7003"),
        ({"model": "pms9003"}, "model"),
        ({"points": ["x" * 5000]}, "'x{40}…' is not"),
        ({"points": ["pm10", "pm10"]}, "twice"),
        ({"points": []}, "at least 1"),
        ({"timeout": "3"}, "not a duration"),
    ],
)
def test_config_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config("/dev/ttyUSB0", **change)


def test_a_bad_point_is_located_at_the_device_and_key(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[gateway]\nid = "gw-1"\n\n[uplink]\nbroker = "mqtt://127.0.0.1:1883"\n\n'
        '[[devices]]\nname = "dust-9"\ndriver = "pms5003"\nport = "/dev/ttyS0"\n'
        'points = ["humidity"]\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, driver_models={"pms5003": Pms5003Config})
    [line] = caught.value.problems
    assert "dust-9" in line and "points" in line
    assert "'humidity' is not a pms5003 value (a value of pms5003t, pms5003st)" in line


# A PMS5003T / PMS5003ST's values: temperature -3.5 °C (two's complement), 61.2 %, 0.045 mg/m³.
CLIMATE = (-3.5, 61.2, 0.045)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("pms5003t", [*GOOD[:9], ("temperature", -3.5, Quality.GOOD),
                      ("humidity", 61.2, Quality.GOOD)]),
        ("pms5003st", [*GOOD, ("formaldehyde", 0.045, Quality.GOOD),
                       ("temperature", -3.5, Quality.GOOD), ("humidity", 61.2, Quality.GOOD)]),
        ("pms5003s", [*GOOD, ("formaldehyde", 0.045, Quality.GOOD)]),
        ("pms7003", GOOD),
    ],
)
@pytest.mark.parametrize("mode", ["passive", "active"])
async def test_models_decode_their_words(
    line: PtyPair, driver_factory: Any, model: str, expected: list[Any], mode: str
) -> None:
    simulator = Pms5003Simulator(line.a, model=model, values=VALUES, climate=CLIMATE, period=0.05)
    task = asyncio.create_task(simulator.run(), name="pms5003-simulator")
    try:
        await wait_open(simulator)
        driver = driver_factory(config(line.b, model=model, mode=mode))
        units = {p.name: p.unit for p in driver.points}
        assert values(await driver.read()) == expected
        assert {k: units[k] for k in units if k in ("temperature", "humidity", "formaldehyde")} \
            == {k: v for k, v in {"temperature": "°C", "humidity": "%",
                                  "formaldehyde": "mg/m³"}.items() if k in units}
        assert "count_2_5" not in units if model == "pms5003t" else "count_2_5" in units
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(("sensor", "configured"), [("pms5003st", "pms5003t"),
                                                    ("pms5003", "pms5003st")])
async def test_a_wrong_model_setting_is_named(
    line: PtyPair, driver_factory: Any, sensor: str, configured: str
) -> None:
    simulator = Pms5003Simulator(line.a, model=sensor, values=VALUES, period=0.05)
    task = asyncio.create_task(simulator.run(), name="pms5003-simulator")
    try:
        await wait_open(simulator)
        driver = driver_factory(config(line.b, model=configured))
        with pytest.raises(DeviceProtocolError, match="check the model setting"):
            await driver.read()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
