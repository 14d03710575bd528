"""The IEC 62056-21 driver against its simulated meter through a socat virtual serial line.

A pty refuses 7E1, so the line runs 8N1 with 7-bit data (``framing = "8N1"``); the simulated
meter can set bit 7 to the parity bit, as a 7E1 meter looks on an 8N1 port.
"""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.config import load_config
from agent.driver import DriverContext
from agent.errors import DeviceProtocolError, DeviceUnavailable
from agent.readings import Quality
from drivers.iec62056 import frames
from drivers.iec62056.config import Iec62056Config
from drivers.iec62056.driver import SPEC, Iec62056Driver
from drivers.iec62056.simulator import Fault, Iec62056Simulator
from tests.drivers.iec62056.conftest import SimFactory, wait_open
from tests.drivers.modbus.conftest import PtyPair

DRIVER_DIR = Path(__file__).parents[3] / "drivers" / "iec62056"
POINTS = [
    {"name": "energy_import", "obis": "1.8.0", "unit": "kWh"},
    {"name": "energy_export", "obis": "1-0:2.8.0*255", "unit": "kWh"},
    {"name": "power", "obis": "16.7.0", "scale": 1000.0, "unit": "W"},
    {"name": "meter_number", "obis": "0.0.0"},
]
GOOD = [
    ("energy_import", 1234.567, Quality.GOOD),
    ("energy_export", 12.345, Quality.GOOD),
    ("power", 948.0, Quality.GOOD),
    ("meter_number", 12345678, Quality.GOOD),
]


def config(port: str, **extra: Any) -> Iec62056Config:
    table = {"name": "meter-1", "driver": "iec62056", "port": port, "framing": "8N1",
             "timeout": "800 ms", "readout_timeout": "800 ms", "points": POINTS} | extra
    return Iec62056Config.model_validate(table)


async def rates_after_readout(sim: Iec62056Simulator, count: int) -> list[int]:
    """The simulator's baud rates once it has switched ``count`` times (it ends after the data)."""
    async with asyncio.timeout(2):
        while len(sim.baudrates) < count:
            await asyncio.sleep(0.002)
    return sim.baudrates


def values(result: Any) -> list[tuple[str, int | float | None, Quality]]:
    return [(v.point, v.value, v.quality) for v in result]


@pytest.fixture
async def driver_factory() -> Any:
    made: list[Iec62056Driver] = []

    def make(cfg: Iec62056Config) -> Iec62056Driver:
        driver = SPEC.create(cfg, DriverContext())
        assert isinstance(driver, Iec62056Driver)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        await driver.close()


async def test_readout_with_baud_switch(
    line: PtyPair, start_sim: SimFactory, driver_factory: Any
) -> None:
    sim = await start_sim()
    driver = driver_factory(config(line.b))
    assert [(p.name, p.unit) for p in driver.points] == [
        ("energy_import", "kWh"), ("energy_export", "kWh"), ("power", "W"), ("meter_number", None)
    ]
    await driver.connect()
    assert values(await driver.read()) == GOOD
    assert driver.identification == frames.Identification("ISK", "5", 9600, "\\2", "MT382-1000")
    # Sign-on at 300, data at the 9600 acknowledged, back to 300 for the next sign-on.
    assert await rates_after_readout(sim, 3) == [300, 9600, 300]
    assert driver.link.baudrate == 300
    sim.readings["1.8.0"] = ("001235.000", "kWh")
    assert values(await driver.read())[0] == ("energy_import", 1235.0, Quality.GOOD)


@pytest.mark.parametrize(
    ("options", "rate"),
    [({"baud_switch": False}, 300), ({"max_baudrate": 2400}, 2400), ({}, 19200)],
)
async def test_baud_rate_chosen(
    line: PtyPair, start_sim: SimFactory, driver_factory: Any, options: dict[str, Any], rate: int
) -> None:
    sim = await start_sim(baud="6")
    driver = driver_factory(config(line.b, **options))
    assert values(await driver.read()) == GOOD
    assert await rates_after_readout(sim, 3) == [300, rate, 300]


async def test_7e1_in_software_on_an_8n1_line(
    line: PtyPair, start_sim: SimFactory, driver_factory: Any
) -> None:
    """A strict 7E1 meter behind an 8N1 port: its parity bits are stripped, ours must be right."""
    await start_sim(parity_bit=True)
    driver = driver_factory(config(line.b))
    assert values(await driver.read()) == GOOD


async def test_7e1_over_socket_url(tcp_port: int) -> None:
    """socket:// (a transparent device server) with the default 7E1: parity bits arrive, dropped."""
    text = "1.8.0(001234.567*kWh)\r\n!\r\n"
    seen: list[bytes] = []

    async def meter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"!\r\n"))
        writer.write(frames.add_even_parity(b"/ABC5METER\r\n"))
        seen.append(await reader.readuntil(b"\r\n"))
        writer.write(frames.add_even_parity(frames.build_data_block(text)))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(meter, "127.0.0.1", tcp_port)
    cfg = config(f"socket://127.0.0.1:{tcp_port}", framing="7E1", points=POINTS[:1])
    driver = Iec62056Driver(cfg)
    try:
        assert values(await driver.read()) == GOOD[:1]
    finally:
        await driver.close()
        server.close()
        await server.wait_closed()
    assert seen == [b"/?!\r\n", frames.build_ack("5")]  # 7E1: the device server adds parity


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (Fault.NOISE, None, None),
        (Fault.PARTIAL, DeviceProtocolError, "the readout was cut off"),
        # The block: 17 + 23 + 23 + 3 bytes of text, and ETX.
        (Fault.BAD_BCC, frames.Iec62056FrameError,
         "BCC 18, but the XOR of its 67 bytes after STX up to and including ETX is 19"),
        (Fault.SILENCE, DeviceUnavailable, "no answer to the sign-on within 0.8 s"),
        (Fault.GARBLED_ID, frames.Iec62056FrameError, "not an IEC 62056-21 identification"),
    ],
)
async def test_faults_then_recovery(
    line: PtyPair,
    start_sim: SimFactory,
    driver_factory: Any,
    fault: Fault,
    error: type[Exception] | None,
    message: str | None,
) -> None:
    sim = await start_sim(readings={"0.0.0": ("12345678", None), "1.8.0": ("001234.567", "kWh"),
                                    "2.8.0": ("000012.345", "kWh")})
    driver = driver_factory(config(line.b, points=POINTS[:2]))
    sim.inject(fault)
    if error is None:
        assert values(await driver.read()) == GOOD[:2]
    else:
        with pytest.raises(error, match=message) as caught:
            await driver.read()
        assert line.b in str(caught.value)
    assert values(await driver.read()) == GOOD[:2]  # the next read recovers by itself


async def test_a_data_set_without_address_and_an_empty_unit_keep_the_readout(
    line: PtyPair, start_sim: SimFactory, driver_factory: Any
) -> None:
    # "(00054.386)" has no address, "013925.5*" an empty unit: both are valid data sets.
    await start_sim(readings={"0.0.0": ("12345678", None), "": ("00054.386", None),
                              "1.8.0": ("013925.5", ""), "2.8.0": ("000012.345", "kWh")})
    driver = driver_factory(config(line.b, points=POINTS[:2]))
    assert values(await driver.read()) == [
        ("energy_import", 13925.5, Quality.GOOD),
        ("energy_export", 12.345, Quality.GOOD),
    ]


async def test_point_problems_are_per_point_and_logged_on_change(
    line: PtyPair, start_sim: SimFactory, driver_factory: Any
) -> None:
    sim = await start_sim()
    points = [*POINTS, {"name": "voltage", "obis": "32.7.0", "unit": "V"}]
    driver = driver_factory(config(line.b, points=points))
    sim.readings["2.8.0"] = ("000012.345", "Wh")  # not the configured kWh
    sim.readings["0.0.0"] = ("A1-77", None)  # not a number
    with capture_logs() as logs:
        first = values(await driver.read())
        second = values(await driver.read())
        sim.readings["2.8.0"] = ("000012.345", "kWh")
        sim.readings["32.7.0"] = ("230.1", "V")
        third = values(await driver.read())
    bad = Quality.PROTOCOL_ERROR
    assert first == second == [
        GOOD[0], ("energy_export", None, bad), GOOD[2], ("meter_number", None, bad),
        ("voltage", None, bad),
    ]
    assert third == [*GOOD[:3], ("meter_number", None, bad), ("voltage", 230.1, Quality.GOOD)]
    events = [(e["event"], e["point"]) for e in logs if e["log_level"] != "debug"]
    assert events == [  # once each when it appears, once when it clears; nothing per poll
        ("iec62056_point_unreadable", "energy_export"),
        ("iec62056_point_unreadable", "meter_number"),
        ("iec62056_point_unreadable", "voltage"),
        ("iec62056_point_recovered", "energy_export"),
        ("iec62056_point_recovered", "voltage"),
    ]
    problems = {e["point"]: e.get("problem", "") for e in logs if "problem" in e}
    assert "comes in 'Wh', configured unit 'kWh'" in problems["energy_export"]
    assert "not a number" in problems["meter_number"]
    assert "not in the readout" in problems["voltage"]


async def test_device_address(line: PtyPair, start_sim: SimFactory, driver_factory: Any) -> None:
    await start_sim(address="12345678")
    # One at a time: a port opens exclusively (a second program would garble both).
    right = driver_factory(config(line.b, address="12345678"))
    assert values(await right.read()) == GOOD
    wrong = driver_factory(config(line.b, address="999"))
    with pytest.raises(DeviceUnavailable, match=r"cannot be opened .* exclusively lock"):
        await wrong.read()
    await right.close()
    with pytest.raises(DeviceUnavailable, match="no answer to the sign-on"):
        await wrong.read()
    await wrong.close()
    assert values(await driver_factory(config(line.b)).read()) == GOOD  # /?! reaches any meter


async def test_unplugged_and_plugged_back(
    line: PtyPair, start_sim: SimFactory, driver_factory: Any
) -> None:
    sim = await start_sim()
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
    assert values(await driver.read()) == GOOD


async def test_spec_simulate_serves_a_meter(line: PtyPair) -> None:
    assert SPEC.simulate is not None
    task = asyncio.create_task(SPEC.simulate(line.a, 5.0))
    driver = Iec62056Driver(config(line.b, timeout="1 s", readout_timeout="1 s"))
    try:
        for _ in range(50):
            with contextlib.suppress(DeviceUnavailable):
                result = await driver.read()
                break
            await asyncio.sleep(0.02)
        by_name = {v.point: v for v in result}
        assert by_name["energy_import"].quality is Quality.GOOD
        assert 1234.5 < by_name["energy_import"].value < 1240  # type: ignore[operator]
    finally:
        await driver.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_sample_validates_and_the_readme_shows_it(tmp_path: Path) -> None:
    sample = (DRIVER_DIR / "sample.toml").read_text(encoding="utf-8")
    assert sample == SPEC.sample_toml
    devices = [SPEC.config_model.model_validate(d) for d in tomllib.loads(sample)["devices"]]
    assert [p.obis for p in getattr(devices[0], "points", [])] == ["1.8.0", "2.8.0", "16.7.0"]
    readme = (DRIVER_DIR / "README.md").read_text(encoding="utf-8")
    assert f"```toml\n{sample}```" in readme.split("## Configuration", 1)[1]
    path = tmp_path / "agent.toml"
    head = '[gateway]\nid = "gw-1"\n\n[uplink]\nbroker = "mqtt://127.0.0.1:1883"\n\n'
    path.write_text(head + sample, encoding="utf-8")
    assert len(load_config(path, driver_models={"iec62056": Iec62056Config}).devices) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"framing": "8E1"}, "framing"),
        ({"max_baudrate": 115200}, "not a mode C baud rate"),
        ({"address": "a!b"}, "address"),
        ({"points": [{"name": "e", "obis": "one.eight"}]}, "not an OBIS code"),
        ({"points": [{"name": "e", "obis": "1.8.0"}, {"name": "e", "obis": "2.8.0"}]}, "twice"),
        ({"points": [{"name": "a", "obis": "1.8.0"}, {"name": "b", "obis": "1-0:1.8.0"}]},
         "mapped twice"),
        ({"points": []}, "at least 1"),
    ],
)
def test_config_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config("/dev/ttyUSB0", **change)
