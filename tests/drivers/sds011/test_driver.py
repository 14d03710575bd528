"""The SDS011 driver against its simulator through a socat virtual serial line."""

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
from agent.gateway.scheduler import DevicePoller
from agent.readings import Quality, Reading
from drivers.sds011 import frames
from drivers.sds011.config import Sds011Config
from drivers.sds011.driver import SPEC, Sds011Driver
from drivers.sds011.simulator import Fault, Sds011Simulator
from tests.drivers.modbus.conftest import PtyPair
from tests.drivers.sds011.conftest import wait_open

DRIVER_DIR = Path(__file__).parents[3] / "drivers" / "sds011"
WORK, MODE, QUERY = (frames.Command.SLEEP_WORK, frames.Command.REPORTING_MODE,
                     frames.Command.QUERY_DATA)


class Clock:
    """A hand-moved clock for the duty cycle."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(port: str, **extra: Any) -> Sds011Config:
    table = {"name": "air-1", "driver": "sds011", "port": port, "timeout": "300 ms"} | extra
    return Sds011Config.model_validate(table)


def values(result: Any) -> list[tuple[str, float | None, Quality]]:
    return [(v.point, v.value, v.quality) for v in result]


def good(pm25: float = 14.0, pm10: float = 14.8) -> list[tuple[str, float | None, Quality]]:
    return [("pm2_5", pm25, Quality.GOOD), ("pm10", pm10, Quality.GOOD)]


def stale(pm25: float | None = 14.0, pm10: float | None = 14.8) -> list[
    tuple[str, float | None, Quality]
]:
    return [("pm2_5", pm25, Quality.STALE), ("pm10", pm10, Quality.STALE)]


@pytest.fixture
async def driver_factory() -> Any:
    made: list[Sds011Driver] = []

    def make(cfg: Sds011Config, clock: Clock | None = None) -> Sds011Driver:
        driver = Sds011Driver(cfg, clock=clock or Clock(100.0))
        made.append(driver)
        return driver

    yield make
    for driver in made:
        await driver.close()


async def test_query_mode_through_spec(line: PtyPair, sim: Sds011Simulator) -> None:
    driver = SPEC.create(config(line.b, warmup="50 ms"), DriverContext())
    assert isinstance(driver, Sds011Driver)
    assert [(p.name, p.unit) for p in driver.points] == [("pm2_5", "µg/m³"), ("pm10", "µg/m³")]
    try:
        await driver.connect()
        assert values(await driver.read()) == stale()  # just woken: warming up
        assert sim.query_mode and sim.awake
        await asyncio.sleep(0.06)
        sim.pm2_5, sim.pm10 = 21.3, 30.9
        assert values(await driver.read()) == good(21.3, 30.9)
        assert sim.commands == [WORK, MODE, QUERY, QUERY]
    finally:
        await driver.close()


async def test_active_mode_reads_the_stream(
    line: PtyPair, sim: Sds011Simulator, driver_factory: Any
) -> None:
    clock = Clock()
    driver = driver_factory(config(line.b, mode="active"), clock)
    assert values(await driver.read()) == stale()
    clock.now = 31.0
    sent = sim.frames_sent
    assert values(await driver.read()) == good()
    assert not sim.query_mode
    assert sim.frames_sent > sent  # a fresh frame, not one buffered before the poll
    assert QUERY not in sim.commands


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (Fault.NOISE, None, None),
        (Fault.PARTIAL, DeviceProtocolError, "incomplete answer to the query command"),
        (Fault.BAD_CHECKSUM, frames.Sds011FrameError, "checksum D6, computed D5"),
        (Fault.SILENCE, DeviceUnavailable, "no answer within 0.3 s to the query command"),
    ],
)
async def test_query_faults_then_recovery(
    line: PtyPair,
    sim: Sds011Simulator,
    driver_factory: Any,
    fault: Fault,
    error: type[Exception] | None,
    message: str | None,
) -> None:
    clock = Clock()
    driver = driver_factory(config(line.b), clock)
    await driver.read()
    clock.now = 40.0
    sim.inject(fault)
    if error is None:
        assert values(await driver.read()) == good()
    else:
        with pytest.raises(error, match=message) as caught:
            await driver.read()
        assert line.b in str(caught.value)
    assert values(await driver.read()) == good()  # the next read recovers by itself


async def test_active_mode_resyncs_past_every_fault(
    line: PtyPair, sim: Sds011Simulator, driver_factory: Any
) -> None:
    clock = Clock()
    driver = driver_factory(config(line.b, mode="active", timeout="1 s"), clock)
    await driver.read()
    clock.now = 40.0
    # The noisy frame is good after its noise: it comes last, so every other fault is skipped.
    sim.inject(Fault.PARTIAL, Fault.BAD_CHECKSUM, Fault.SILENCE, Fault.NOISE)
    assert values(await driver.read()) == good()
    assert not sim.faults  # every fault was sent and skipped


async def test_active_mode_stream_of_bad_frames_is_a_protocol_error(
    line: PtyPair, sim: Sds011Simulator, driver_factory: Any
) -> None:
    clock = Clock()
    driver = driver_factory(config(line.b, mode="active"), clock)
    await driver.read()
    sim.inject(*[Fault.BAD_CHECKSUM] * 100)
    with pytest.raises(frames.Sds011FrameError, match=r"no good reply within 0\.3 s; last"):
        await driver.read()
    sim.faults.clear()
    assert values(await driver.read())[0][1] == 14.0


async def test_device_id(line: PtyPair, sim: Sds011Simulator, driver_factory: Any) -> None:
    right = driver_factory(config(line.b, device_id="BCF9"))
    assert values(await right.read()) == stale()
    await right.close()
    # Commands for another ID are ignored by the sensor: silence.
    wrong = driver_factory(config(line.b, device_id="1234"))
    with pytest.raises(DeviceUnavailable, match="no answer"):
        await wrong.read()
    await wrong.close()
    # A streaming sensor with another ID is named (the stream set up by an "any" driver).
    streaming = driver_factory(config(line.b, mode="active"))
    await streaming.read()
    await streaming.close()
    active = driver_factory(config(line.b, device_id="1234", mode="active"))
    await active.connect()
    with pytest.raises(DeviceProtocolError, match="answer from sensor BCF9, configured"):
        await active._measure()  # the frame itself, past the wake command it would ignore


async def test_unplugged_and_plugged_back(
    line: PtyPair, sim: Sds011Simulator, driver_factory: Any
) -> None:
    clock = Clock()
    driver = driver_factory(config(line.b), clock)
    await driver.connect()
    await driver.read()
    clock.now = 40.0
    assert values(await driver.read()) == good()
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
    commands = len(sim.commands)
    # Replugged means power-cycled: woken and set to query mode again, warming up again.
    assert values(await driver.read()) == stale()
    assert sim.commands[commands:] == [WORK, MODE, QUERY]
    clock.now = 80.0
    assert values(await driver.read()) == good()


async def test_duty_cycle_sleeps_and_wakes_the_sensor(
    line: PtyPair, sim: Sds011Simulator, driver_factory: Any
) -> None:
    clock = Clock()
    cfg = config(line.b, warmup="30 s", duty={"work": "45 s", "sleep": "1 min"})
    driver = driver_factory(cfg, clock)
    seen = []
    for now in range(0, 151, 15):
        clock.now = float(now)
        before = len(sim.commands)
        result = values(await driver.read())
        seen.append((now, result[0][2], sim.awake, sim.commands[before:]))
    S, G = Quality.STALE, Quality.GOOD
    assert seen == [
        (0, S, True, [WORK, MODE, QUERY]),
        (15, S, True, [QUERY]),
        (30, G, True, [QUERY]),
        (45, G, False, [QUERY, WORK]),  # work phase over: the sleep command
        (60, S, False, []),  # asleep: no I/O at all, the last value repeated as STALE
        (75, S, False, []),
        (90, S, False, []),
        (105, S, True, [WORK, QUERY]),  # sleep over: woken, warming up
        (120, S, True, [QUERY]),
        (135, G, True, [QUERY]),
        (150, G, False, [QUERY, WORK]),
    ]


async def test_scheduler_records_the_quality_and_logs_once(
    line: PtyPair, sim: Sds011Simulator
) -> None:
    """Through the real scheduler: PROTOCOL_ERROR readings, one log line down, one up."""
    now = [1000.0]

    async def advance(seconds: float) -> None:
        now[0] += seconds
        await asyncio.sleep(0)

    driver = Sds011Driver(config(line.b), clock=lambda: now[0])
    batches: list[list[Reading]] = []
    done = asyncio.Event()

    def emit(readings: list[Reading]) -> None:
        batches.append(readings)
        if len(batches) == 2:
            sim.inject(Fault.BAD_CHECKSUM)
        if len(batches) == 4:
            done.set()

    poller = DevicePoller("air-1", driver, 30.0, emit=emit, event=lambda e: None,
                          clock=lambda: now[0], sleep=advance)
    with capture_logs() as logs:
        task = asyncio.create_task(poller.run())
        async with asyncio.timeout(10):
            await done.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [[(r.point, r.value, r.quality) for r in b] for b in batches] == [
        stale(), good(), [("pm2_5", None, Quality.PROTOCOL_ERROR),
                          ("pm10", None, Quality.PROTOCOL_ERROR)], good(),
    ]
    assert {r.unit for b in batches for r in b} == {"µg/m³"}
    events = [(e["event"], e.get("error_type")) for e in logs if e["log_level"] != "debug"]
    assert events == [("device_unavailable", "Sds011FrameError"), ("device_available", None)]


async def test_spec_simulate_serves_a_sensor(line: PtyPair) -> None:
    assert SPEC.simulate is not None
    task = asyncio.create_task(SPEC.simulate(line.a, 5.0))
    driver = Sds011Driver(config(line.b, timeout="1 s"), clock=Clock())
    try:
        for _ in range(50):
            with contextlib.suppress(DeviceUnavailable):
                result = await driver.read()
                break
            await asyncio.sleep(0.02)
        assert [v.quality for v in result] == [Quality.STALE, Quality.STALE]
        assert all(isinstance(v.value, float) and 0 < v.value < 1000 for v in result)
    finally:
        await driver.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_sample_validates_and_the_readme_shows_it(tmp_path: Path) -> None:
    sample = (DRIVER_DIR / "sample.toml").read_text(encoding="utf-8")
    assert sample == SPEC.sample_toml
    devices = [SPEC.config_model.model_validate(d) for d in tomllib.loads(sample)["devices"]]
    assert [(d.name, getattr(d, "mode", None)) for d in devices] == [
        ("air-1", "query"), ("air-2", "active")
    ]
    readme = (DRIVER_DIR / "README.md").read_text(encoding="utf-8")
    assert f"```toml\n{sample}```" in readme.split("## Configuration", 1)[1]
    path = tmp_path / "agent.toml"
    head = '[gateway]\nid = "gw-1"\n\n[uplink]\nbroker = "mqtt://127.0.0.1:1883"\n\n'
    path.write_text(head + sample, encoding="utf-8")
    loaded = load_config(path, driver_models={"sds011": Sds011Config})
    assert len(loaded.devices) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mode": "passive"}, "mode"),
        ({"device_id": "XYZ1"}, "not a sensor ID"),
        ({"duty": {"work": "10 s", "sleep": "1 min"}}, "shorter than warmup"),
        ({"duty": {"work": "40 s"}}, "sleep"),
        ({"timeout": "soon"}, "not a duration"),
        ({"baud": 9600}, "unknown key"),
    ],
)
def test_config_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config("/dev/ttyUSB0", **change)
