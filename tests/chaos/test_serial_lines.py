"""Serial lines that come and go (issue 14 part 6): the agent as a real process, its USB–RS-485
adapter and its dust sensor's USB-serial cable unplugged and plugged back.

Each line is a socat pty pair whose agent-side path is a symlink (``link=``, as
``/dev/serial/by-id`` is); unplugging SIGKILLs socat (both ends and the link vanish), plugging
back starts a new socat on the same link paths while placeholder pty pairs hold the old
``/dev/pts/N``, so a different pty is behind the same name. The simulators (a Modbus RTU
meter, a PMS5003) run in this process and count the requests they get. The agent is never
restarted: it must reopen the ports itself, resume polling, and log each device down once
and back once (no line per failed poll or reopen attempt). The PMS5003's line is missing when
the agent starts: the agent starts anyway, reports the sensor down, and picks it up when the
port appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.profiles import load_profile
from drivers.modbus.simulator import SimulatorServer, serve_serial
from drivers.pms5003.simulator import Pms5003Simulator
from tests.chaos.harness import AgentProcess
from tests.conftest import free_port
from tests.drivers.modbus.conftest import PtyPair
from tests.waiting import wait_until

T = TypeVar("T")
METER, DUST = "meter-rtu", "dust-1"
PROFILE = "ssc-demo-meter"


class SerialDevices:
    """A Modbus RTU meter and a PMS5003 on the far ends of two pty pairs, in an event loop of
    their own (the test blocks while the agent runs); both count the requests they get."""

    def __init__(self, bus: PtyPair, dust: PtyPair) -> None:
        self.bus = bus
        self.dust = dust
        self.meter_requests = 0
        self._meter: SimulatorServer | None = None
        self._sensor: Pms5003Simulator | None = None
        self._sensor_task: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="serial-devices",
                                        daemon=True)
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def _count(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            self.meter_requests += 1
        return pdu

    def start_meter(self) -> None:
        async def start() -> SimulatorServer:
            return await serve_serial({1: load_profile(PROFILE)}, self.bus.a,
                                      trace_pdu=self._count)

        self._meter = self._run(start())

    def stop_meter(self) -> None:
        if self._meter is not None:
            self._run(self._meter.stop())
            self._meter = None

    def start_sensor(self) -> None:
        """The sensor reopens its end by itself whenever the port (re)appears."""

        async def start() -> None:
            self._sensor = Pms5003Simulator(self.dust.a, period=0.2)
            self._sensor_task = asyncio.create_task(self._sensor.run())

        self._run(start())

    @property
    def sensor_reads(self) -> int:
        """READ commands the sensor took (one per poll in passive mode)."""
        return 0 if self._sensor is None else len(self._sensor.commands)

    def close(self) -> None:
        self.stop_meter()

        async def stop() -> None:
            if self._sensor_task is not None:
                self._sensor_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._sensor_task

        self._run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class Placeholders:
    """Pty pairs that take the ptys an unplugged line freed, so that the line plugged back in
    gets another /dev/pts/N (the kernel hands out the lowest free one, and tests running in
    parallel free and take ptys too)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pairs: list[PtyPair] = []

    def hold(self, ptys: list[str]) -> None:
        """Start placeholder pairs until every one of ``ptys`` is taken again."""
        while not all(os.path.exists(pty) for pty in ptys):
            assert len(self.pairs) < 10, (ptys, [p.b for p in self.pairs])
            workdir = self.workdir / f"placeholder-{len(self.pairs)}"
            workdir.mkdir()
            pair = PtyPair(workdir)
            pair.start()
            self.pairs.append(pair)

    def kill(self) -> None:
        for pair in self.pairs:
            pair.kill()


@pytest.fixture
def lines(tmp_path: Path) -> Iterator[tuple[PtyPair, PtyPair, Placeholders]]:
    if shutil.which("socat") is None:
        pytest.fail("socat is needed for the serial line tests (apt-get install socat)")
    made = []
    for name in ("bus", "dust"):
        (tmp_path / name).mkdir()
        made.append(PtyPair(tmp_path / name))
    placeholders = Placeholders(tmp_path)
    yield made[0], made[1], placeholders
    for pair in made:
        pair.kill()
    placeholders.kill()


def agent_config(tmp_path: Path, bus: PtyPair, dust: PtyPair) -> Path:
    path = tmp_path / "agent.toml"
    # No broker listens: the uplink stays down (logged once); this test is about the lines.
    path.write_text(
        f'[gateway]\nid = "gw-serial"\ndata_dir = "{tmp_path / "data"}"\n'
        'shutdown_timeout = "5 s"\n\n'
        f'[uplink]\nbroker = "mqtt://127.0.0.1:{free_port()}"\n\n'
        f'[[buses]]\nname = "rs485-1"\nport = "{bus.b}"\nbaudrate = 9600\n'
        'timeout = "500 ms"\n\n'
        f'[[devices]]\nname = "{METER}"\ndriver = "modbus"\nbus = "rs485-1"\nunit = 1\n'
        f'profile = "{PROFILE}"\ninterval = "1 s"\nretries = 0\n\n'
        f'[[devices]]\nname = "{DUST}"\ndriver = "pms5003"\nport = "{dust.b}"\n'
        'interval = "1 s"\ntimeout = "500 ms"\n'
    )
    return path


def device_lines(agent: AgentProcess, device: str) -> list[str]:
    """The events the agent logged about ``device`` at info level and above, in order."""
    return [str(e["event"]) for e in agent.events() if e.get("device") == device]


def test_unplugged_adapters_are_reopened_by_themselves_and_logged_once(
    tmp_path: Path, lines: tuple[PtyPair, PtyPair, Placeholders]
) -> None:
    bus, dust, placeholders = lines
    bus.start()
    devices = SerialDevices(bus, dust)
    agent = AgentProcess(agent_config(tmp_path, bus, dust), tmp_path / "agent.log")

    def tail() -> str:
        return agent.log_text()[-4000:]

    try:
        devices.start_meter()
        devices.start_sensor()  # waits for its port, which is not there yet
        agent.start()
        agent.wait_started(1)
        assert wait_until(lambda: devices.meter_requests >= 3, 20), tail()
        # the sensor's port is missing at start: down, once, naming the port
        assert wait_until(lambda: "device_unavailable" in device_lines(agent, DUST), 20), tail()
        missing = [e for e in agent.events("device_unavailable") if e.get("device") == DUST]
        assert f"serial port {dust.b} does not exist" in missing[0]["error"], missing
        assert missing[0]["error_type"] == "PortMissing", missing  # tried at every slot
        time.sleep(2.5)  # several polls with the port still missing
        dust.start()  # plugged in
        assert wait_until(lambda: devices.sensor_reads >= 3, 20), tail()
        assert wait_until(lambda: "device_available" in device_lines(agent, DUST), 10), tail()
        assert device_lines(agent, METER) == [], tail()  # up from the start: nothing to say

        # Both adapters pulled; placeholders take the freed ptys, so the ones plugged back
        # in are other /dev/pts/N behind the same link paths.
        before = {p.b: os.path.realpath(p.b) for p in (bus, dust)}
        bus.kill()  # while the meter and the sensor still serve their ends
        dust.kill()
        devices.stop_meter()  # its port is gone; a new one is served after the replug
        placeholders.hold(list(before.values()))
        assert wait_until(lambda: "device_unavailable" in device_lines(agent, METER), 10), tail()
        unplugged_at = (devices.meter_requests, devices.sensor_reads)
        time.sleep(3.5)  # several polls (and reopen attempts) with both ports gone
        bus.start()
        dust.start()
        after = {p.b: os.path.realpath(p.b) for p in (bus, dust)}
        assert all(before[k] != after[k] for k in before), (before, after)  # the input
        devices.start_meter()
        assert wait_until(lambda: devices.meter_requests >= unplugged_at[0] + 3, 20), tail()
        assert wait_until(lambda: devices.sensor_reads >= unplugged_at[1] + 3, 20), tail()
        assert wait_until(lambda: device_lines(agent, METER)[-1:] == ["device_available"], 10
                          ), tail()
        assert wait_until(lambda: device_lines(agent, DUST)[-1:] == ["device_available"], 10
                          ), tail()
        assert agent.alive and len(agent.events("agent_started")) == 1  # never restarted
    finally:
        if agent.alive:
            agent.terminate()
        devices.close()

    # Down once and back once per outage, nothing per failed poll or reopen attempt.
    assert device_lines(agent, METER) == ["device_unavailable", "device_available"], tail()
    assert device_lines(agent, DUST) == ["device_unavailable", "device_available",
                                         "device_unavailable", "device_available"], tail()
    down = [e for e in agent.events("device_unavailable") if e.get("device") == METER]
    # names the line's port (the first failure may be the exchange the unplug cut short)
    assert f"({bus.b})" in down[0]["error"], down
    # Nothing else repeats: every event but the devices' own is a one-off (the uplink's
    # single uplink_down included), and no traceback or stray line reaches stderr.
    kinds = Counter(str(e["event"]) for e in agent.events() if "device" not in e)
    assert all(n == 1 for n in kinds.values()), kinds
    stray = [line for line in agent.log_text().splitlines() if not line.startswith("{")]
    assert stray == [], stray
