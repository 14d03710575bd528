"""``ssc-agent test``: every driver polled once against its simulator, through the real CLI.

One set of simulated devices for the module, served by an event loop in a thread of its own
while ``ssc-agent test`` runs as a subprocess: a Modbus TCP meter (pymodbus simulator), two
Modbus RTU meters on one socat RS-485 line, an IEC 62056-21 meter, a PMS5003 and an SDS011
(the drivers' own simulators on socat ptys), a closed TCP port (a dead device), a serial port
held by another program, and a TCP listener that never answers (a hung device). The values
printed are checked against what the simulators serve; the example third-party driver is
tested in tests/test_plugins.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import serial
from hypothesis import given
from hypothesis import strategies as st

from agent.tools.device_test import _shown, _within
from drivers.iec62056.simulator import Iec62056Simulator
from drivers.modbus.simulator import SimulatorServer, serve, serve_serial
from drivers.pms5003 import frames as pms_frames
from drivers.pms5003.driver import UNITS as PMS_UNITS
from drivers.pms5003.simulator import Pms5003Simulator
from drivers.sds011.driver import POINTS as SDS_POINTS
from drivers.sds011.simulator import Sds011Simulator
from tests.conftest import free_port
from tests.drivers.iec62056.conftest import READINGS
from tests.drivers.modbus.conftest import PtyPair
from tests.drivers.modbus.test_rtu import expected_values, unit_profile
from tests.drivers.pms5003.conftest import VALUES as PMS_VALUES

# the module's simulators and ptys are set up once, on one worker
pytestmark = pytest.mark.xdist_group("device-test")

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

MODBUS_POINTS = """
points = [
    { name = "unit_id", address = 0, type = "u16" },
    { name = "volts", address = 1, type = "f32", unit = "V" },
    { name = "energy", address = 3, type = "u32", unit = "Wh" },
]
"""
MODBUS_UNITS = {"unit_id": None, "volts": "V", "energy": "Wh"}
IEC_POINTS = {  # point → (OBIS code the simulator serves, scale, unit)
    "energy_import": ("1.8.0", 1.0, "kWh"),
    "power": ("1-0:16.7.0*255", 1000.0, "W"),
    "meter_number": ("0.0.0", 1.0, None),
}
SDS = {"pm2_5": 14.0, "pm10": 14.8}
SILENT_UNIT = 4  # a meter on the RS-485 line that never answers
GOOD_DEVICES = ("meter-tcp", "meter-rtu-2", "meter-rtu-3", "house-meter", "dust-1", "air-1")


class LoopThread:
    """An event loop in a daemon thread: the simulators live there while the test waits on
    subprocesses."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="simulators",
                                       daemon=True)
        self.thread.start()
        self.tasks: list[asyncio.Task[None]] = []

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        async def start() -> asyncio.Task[None]:
            return asyncio.create_task(coroutine)

        self.tasks.append(self.run(start()))

    async def _cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def close(self) -> None:
        """Cancel the spawned tasks (they close their ports), stop the loop and the thread."""
        self.run(self._cancel())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Site:
    config: Path
    ports: dict[str, str]  # device → where it is reached, as the header shows it


async def _wait_open(simulator: Any) -> None:
    async with asyncio.timeout(5):
        while not simulator.link.is_open:
            await asyncio.sleep(0.002)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if shutil.which("socat") is None:
        pytest.fail("socat is needed for the serial devices (apt-get install socat)")
    tmp = tmp_path_factory.mktemp("device-test")
    pairs = {name: PtyPair(tmp / name) for name in ("rtu", "iec", "pms", "sds", "busy")}
    loops = LoopThread()
    servers: list[SimulatorServer] = []
    with contextlib.ExitStack() as stack:
        for pair in pairs.values():
            pair.workdir.mkdir()
            pair.start()
            stack.callback(pair.kill)
        stack.callback(loops.close)
        tcp_port = free_port()
        servers.append(loops.run(serve({1: unit_profile(tmp, 1)}, "127.0.0.1", tcp_port,
                                       update_interval=3600)))
        servers.append(loops.run(serve_serial(
            {unit: unit_profile(tmp, unit) for unit in (2, 3, SILENT_UNIT)}, pairs["rtu"].a,
            update_interval=3600, silent_units={SILENT_UNIT})))
        stack.callback(lambda: [loops.run(s.stop()) for s in servers])
        simulators = (Iec62056Simulator(pairs["iec"].a, readings=dict(READINGS), reaction=0.01),
                      Pms5003Simulator(pairs["pms"].a, values=PMS_VALUES, period=0.05),
                      Sds011Simulator(pairs["sds"].a, period=0.05, pm2_5=SDS["pm2_5"],
                                      pm10=SDS["pm10"]))
        for simulator in simulators:
            loops.spawn(simulator.run())
            loops.run(_wait_open(simulator))
        # another program holds this port (as the running agent would)
        stack.enter_context(serial.Serial(pairs["busy"].b, exclusive=True))
        hung = stack.enter_context(socket.create_server(("127.0.0.1", 0)))  # never accepts
        hung_port = hung.getsockname()[1]
        dead_port = free_port()
        config = tmp / "site.toml"
        config.write_text(f"""
[gateway]
id = "gw-commission"
data_dir = "{tmp / 'data'}"

[[buses]]
name = "rs485-1"
port = "{pairs['rtu'].b}"
timeout = "500 ms"

[[devices]]
name = "meter-tcp"
driver = "modbus"
endpoint = "tcp://127.0.0.1:{tcp_port}"
unit = 1
{MODBUS_POINTS}
[[devices]]
name = "meter-rtu-silent"
driver = "modbus"
bus = "rs485-1"
unit = {SILENT_UNIT}
retries = 3
enabled = false
{MODBUS_POINTS}
[[devices]]
name = "meter-rtu-2"
driver = "modbus"
bus = "rs485-1"
unit = 2
{MODBUS_POINTS}
[[devices]]
name = "meter-rtu-3"
driver = "modbus"
bus = "rs485-1"
unit = 3
{MODBUS_POINTS}
[[devices]]
name = "house-meter"
driver = "iec62056"
port = "{pairs['iec'].b}"
framing = "8N1"
timeout = "2 s"
readout_timeout = "5 s"
points = [
""" + "".join(f'    {{ name = "{name}", obis = "{obis}", scale = {scale}'
              + (f', unit = "{unit}"' if unit else "") + " },\n"
              for name, (obis, scale, unit) in IEC_POINTS.items()) + f"""]

[[devices]]
name = "dust-1"
driver = "pms5003"
port = "{pairs['pms'].b}"
mode = "passive"

[[devices]]
name = "air-1"
driver = "sds011"
port = "{pairs['sds'].b}"
mode = "query"

[[devices]]
name = "meter-bad-map"
driver = "modbus"
endpoint = "tcp://127.0.0.1:{tcp_port}"
unit = 1
enabled = false
points = [{{ name = "nothing_here", address = 500, type = "u16" }}]

[[devices]]
name = "dead-1"
driver = "modbus"
endpoint = "tcp://127.0.0.1:{dead_port}"
unit = 1
{MODBUS_POINTS}
[[devices]]
name = "busy-1"
driver = "sds011"
port = "{pairs['busy'].b}"

[[devices]]
name = "hung-1"
driver = "modbus"
endpoint = "tcp://127.0.0.1:{hung_port}"
unit = 1
timeout = "30 s"
retries = 0
enabled = false
{MODBUS_POINTS}""", encoding="utf-8")
        yield Site(config, {"meter-tcp": f"tcp://127.0.0.1:{tcp_port}",
                            "dead-1": f"tcp://127.0.0.1:{dead_port}",
                            "busy-1": pairs["busy"].b})


def ssc_test(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "test", "--config", str(config),
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          check=False)


def expected() -> dict[str, dict[str, tuple[float | int, str | None]]]:
    """Device → point → (value, unit): what the simulators serve, as the drivers decode it."""
    modbus = {unit: {point: (value, MODBUS_UNITS[point])
                     for point, value in expected_values(unit).items()} for unit in (1, 2, 3)}
    return {
        "meter-tcp": modbus[1], "meter-rtu-2": modbus[2], "meter-rtu-3": modbus[3],
        "house-meter": {name: (float(READINGS[obis][0]) * scale, unit)
                        for name, (obis, scale, unit) in IEC_POINTS.items()},
        "dust-1": {name: (value, PMS_UNITS[name])
                   for name, value in zip(pms_frames.FIELDS, PMS_VALUES, strict=True)},
        "air-1": {p.name: (SDS[p.name], p.unit) for p in SDS_POINTS},
    }


def blocks(stdout: str) -> dict[str, tuple[str, list[dict[str, str]]]]:
    """Human output by device: its header line and its table rows (cut at the header's
    columns), and the summary line under ''."""
    out: dict[str, tuple[str, list[dict[str, str]]]] = {}
    *chunks, summary = stdout.rstrip("\n").split("\n\n")
    for chunk in chunks:
        head, *lines = chunk.split("\n")
        rows: list[dict[str, str]] = []
        if lines and lines[0].split() == ["point", "value", "unit", "quality"]:
            columns = ["point", "value", "unit", "quality"]
            starts = [lines[0].index(c) for c in columns] + [None]
            rows = [{c: line[starts[i]:starts[i + 1]].strip() for i, c in enumerate(columns)}
                    for line in lines[1:]]
        out[head.split()[0]] = (chunk, rows)
    out[""] = (summary, [])
    return out


def test_every_driver_shows_what_its_device_serves_and_failures_in_the_drivers_words(
    site: Site,
) -> None:
    done = ssc_test(site.config)
    assert done.returncode == 1, done.stdout + done.stderr
    shown = blocks(done.stdout)
    assert list(shown) == [*GOOD_DEVICES, "dead-1", "busy-1", ""], done.stdout  # not hung-1
    for device, points in expected().items():
        chunk, rows = shown[device]
        # an SDS011 is woken at the port's opening: its first reading is stale (warming up)
        quality = "stale" if device == "air-1" else "good"
        status = "good (2 of 2 points stale: not fresh yet)" if device == "air-1" else "good"
        assert chunk.startswith(f"{device}  (") and f"  {status} in " in chunk, chunk
        assert [r["point"] for r in rows] == list(points), chunk
        for row in rows:
            value, unit = points[row["point"]]
            assert float(row["value"]) == pytest.approx(value, rel=1e-6), (device, row)
            assert row["unit"] == (unit or "-"), (device, row)
            assert row["quality"] == quality, (device, row)
    assert site.ports["meter-tcp"] in shown["meter-tcp"][0]
    dead, rows = shown["dead-1"]
    assert "FAILED (unavailable)" in dead and not rows, dead
    assert f"error: dead-1 ({site.ports['dead-1']}): connection refused" in dead, dead
    busy, _ = shown["busy-1"]
    assert "FAILED (unavailable)" in busy and "stop the other program using it" in busy, busy
    assert shown[""][0] == "6 of 8 devices good; not good: dead-1, busy-1", done.stdout
    assert done.stderr.strip().endswith("2 of 8 devices not good: dead-1, busy-1"), done.stderr


def test_device_filter_and_json(site: Site) -> None:
    done = ssc_test(site.config, "--json", "--device", "dust-1", "meter-tcp",
                    "--device", "house-meter")
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] is True and doc["failed"] == [] and doc["config"] == str(site.config)
    # config order, whatever the order of the flags
    assert [d["name"] for d in doc["devices"]] == ["meter-tcp", "house-meter", "dust-1"]
    want = expected()
    for device in doc["devices"]:
        assert device["ok"] is True and device["error"] is None, device
        assert device["seconds"] <= device["bound_seconds"], device
        points = want[device["name"]]
        assert [p["point"] for p in device["points"]] == list(points), device
        for p in device["points"]:
            value, unit = points[p["point"]]
            assert p["value"] == pytest.approx(value, rel=1e-6) and p["unit"] == unit, p
            assert p["quality"] == "good", p


def test_failed_devices_each_with_its_error_and_within_the_bound(site: Site) -> None:
    # All disabled but dead-1: named, they are polled all the same. With the bound at 1 s,
    # hung-1 (its driver would wait 30 s) and meter-rtu-silent (4 attempts of 500 ms) run out
    # of time; meter-rtu-2, on the same line after meter-rtu-silent, is polled once the line
    # is free, so its own bound is not spent waiting for it.
    done = ssc_test(site.config, "--json", "--timeout", "1", "--device", "dead-1", "hung-1",
                    "meter-bad-map", "meter-rtu-2", "meter-rtu-silent")
    assert done.returncode == 1, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    failed = ["meter-rtu-silent", "meter-bad-map", "dead-1", "hung-1"]
    assert doc["ok"] is False and doc["failed"] == failed, doc
    devices = {device["name"]: device for device in doc["devices"]}
    assert list(devices) == ["meter-rtu-silent", "meter-rtu-2", *failed[1:]], doc
    good = devices.pop("meter-rtu-2")
    assert good["ok"] is True and good["error"] is None, good
    assert {p["point"]: p["value"] for p in good["points"]} == expected_values(2), good
    errors = {name: device["error"] for name, device in devices.items()}
    assert errors["dead-1"]["kind"] == "unavailable", errors
    assert errors["dead-1"]["message"].startswith(
        f"dead-1 ({site.ports['dead-1']}): connection refused"), errors
    assert errors["meter-bad-map"]["kind"] == "protocol", errors
    assert errors["meter-bad-map"]["code"] == 2, errors
    assert "exception 2 (illegal data address)" in errors["meter-bad-map"]["message"], errors
    for name in ("hung-1", "meter-rtu-silent"):
        assert errors[name] == {"kind": "timeout", "code": None,
                                "message": f"{name}: no result within 1 s (the poll's bound: "
                                "the hang guard, or --timeout)"}, errors
    for device in devices.values():
        assert device["bound_seconds"] == 1 and device["points"] == [], device
        assert device["seconds"] <= device["bound_seconds"] + 0.5, device
    assert ", ".join(failed) in done.stderr, done.stderr


def test_an_unknown_device_lists_the_known_ones(site: Site) -> None:
    done = ssc_test(site.config, "--device", "meter-tcp", "nope")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"ssc-agent: --device 'nope': no such device in {site.config}; known devices: "
        "meter-tcp, meter-rtu-silent, meter-rtu-2, meter-rtu-3, house-meter, dust-1, air-1, "
        "meter-bad-map, dead-1, busy-1, hung-1"]


def test_an_invalid_config_lists_every_error(site: Site, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(site.config.read_text(encoding="utf-8")
                   .replace('mode = "query"', 'mode = "sometimes"')
                   .replace('name = "rs485-1"\n', 'name = "rs485-1"\nbaudrate = "fast"\n'),
                   encoding="utf-8")
    done = ssc_test(bad, "--device", "meter-tcp")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    errors = done.stderr.splitlines()
    assert len(errors) == 2, errors
    assert any("buses[0] (name=rs485-1) → baudrate" in e for e in errors), errors
    assert any("(name=air-1, driver=sds011) → mode" in e for e in errors), errors
    bounded = ssc_test(site.config, "--timeout", "soon")
    assert bounded.returncode == 2 and "--timeout: " in bounded.stderr, bounded.stderr


# --------------------------------------------------------------------------------------------
# Pure parts: how a value is shown, how a poll is bounded


def single(value: float) -> float | None:
    try:
        return float(struct.unpack("<f", struct.pack("<f", value))[0])
    except OverflowError:
        return None


@pytest.mark.parametrize(("value", "shown"), [
    (None, "-"), (7, "7"), (-68, "-68"), (230.0, "230.0"),
    (single(229.1), "229.1"),  # an f32 register: its digits, not 229.10000610351562
    (single(12345.012), "12345.012"),
    (0.1 * 123.4, "12.34"),  # a scale's noise (12.340000000000002) is not shown
    (1234.567, "1234.567"), (12345678901.5, "12345678901.5"), (1e20, "1e+20"),
])
def test_a_value_is_shown_with_the_digits_it_has(value: float | None, shown: str) -> None:
    assert _shown(value) == shown


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_an_f32_value_shown_reads_back_as_itself(value: float) -> None:
    assert single(float(_shown(value))) == value


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_value_shown_is_within_15_digits_of_itself(value: float) -> None:
    shown = float(_shown(value))
    if single(value) == value:  # as an f32 has it: the digits that read back as that f32
        assert single(shown) == value
    else:
        assert shown == pytest.approx(value, rel=1e-14, abs=0)


async def test_a_poll_that_swallows_a_cancellation_still_ends_at_its_bound() -> None:
    # Python 3.11's asyncio.wait_for (pymodbus uses it) can drop a cancellation
    ended = asyncio.Event()

    async def stubborn() -> None:
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(60)
            await asyncio.sleep(60)
        finally:
            ended.set()

    with pytest.raises(TimeoutError):
        await _within(stubborn(), 0.05)
    assert ended.is_set()
    assert await _within(asyncio.sleep(0, result="answer"), 0.05) == "answer"
