"""Log volume (issue 14 part 7): an agent process with a device that flaps at every poll and
its broker down, its clocks run 100 times faster by libfaketime, so ~36 s cover an hour.

The meter (a pymodbus server in this process) answers every other request; the agent polls it
every 10 s (one request per poll), so it goes down and up at every poll, the worst a device
can flap. No broker listens: the uplink is down the whole time, retrying every 1-30 s, and the
buffer, bounded by ``max_age = "2 min"``, drops a batch at every seal. The test counts the
lines the agent wrote per event and checks them against the bound the damper promises
(``agent.damper.max_lines`` for the device's down/up and for its overrun episodes,
one line per 15 minutes for the buffer's drops, one ``uplink_down`` and one-offs for the
rest); it prints the lines per simulated hour. Measured: 397 lines per simulated hour before
the damping (a line per change, 169 downs, 169 ups, 54 buffer_drop), 19 after.

libfaketime (``FAKETIME="+0 x100"``, no ``FAKETIME_DONT_FAKE_MONOTONIC``) speeds up the wall
and the monotonic clock, and the waits the event loop makes on them, together; the meter runs
at real speed, which only makes its answers look 100 times faster. A timeout the loaded
machine makes the agent see is one more flap: the bound holds for any sequence.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.damper import FLAP_PERIOD_SECONDS, max_lines
from agent.profiles import load_profile
from drivers.modbus.simulator import SimulatorServer, serve
from tests.chaos.harness import ROOT, AgentProcess
from tests.conftest import free_port

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SPEED = 100
REAL_SECONDS = 36.0
METER = "meter-flap"
ONE_OFFS = {"agent_started", "agent_stopping", "agent_stopped", "clock_not_synchronised",
            "uplink_down"}


class AlternatingMeter:
    """A Modbus TCP meter that drops every other answer (``trace_packet``), in a thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.answered = 0
        self.dropped = 0
        self._server: SimulatorServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="meter",
                                        daemon=True)

    def _answer(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            return data
        if self.answered > self.dropped:
            self.dropped += 1
            return b""
        self.answered += 1
        return data

    def __enter__(self) -> AlternatingMeter:
        self._thread.start()

        async def start() -> SimulatorServer:
            return await serve({1: load_profile("ssc-demo-meter")}, "127.0.0.1", self.port,
                               trace_packet=self._answer)

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class FastAgent(AgentProcess):
    """``ssc-agent run`` whose clocks run ``SPEED`` times faster (libfaketime)."""

    def start(self) -> None:
        env = dict(os.environ, LD_PRELOAD=str(LIBFAKETIME), FAKETIME=f"+0 x{SPEED}")
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "--log-json", "run", "--config",
                 str(self.config)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                env=env,
            )


def agent_config(tmp_path: Path, meter: AlternatingMeter) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[gateway]\nid = "gw-flap"\ndata_dir = "{tmp_path / "data"}"\n'
        'shutdown_timeout = "5 s"\n\n'
        f'[uplink]\nbroker = "mqtt://127.0.0.1:{free_port()}"\n'
        'reconnect_min = "1 s"\nreconnect_max = "30 s"\nbatch_max_age = "1 min"\n\n'
        '[buffer]\nmax_age = "2 min"\n\n'
        f'[[devices]]\nname = "{METER}"\ndriver = "modbus"\n'
        f'endpoint = "tcp://127.0.0.1:{meter.port}"\ninterval = "10 s"\ntimeout = "1 s"\n'
        'retries = 0\n'
        'points = [{name = "voltage_l1", address = 0, table = "input", type = "f32", '
        'unit = "V"}]\n'
    )
    return path


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def test_a_flapping_device_and_a_dead_uplink_write_a_bounded_number_of_lines(
    tmp_path: Path,
) -> None:
    if not LIBFAKETIME.exists():
        message = f"libfaketime is not installed ({LIBFAKETIME}): apt-get install faketime"
        if os.environ.get("SSC_REQUIRE_MOSQUITTO") == "1":  # CI: a missing tool is a failure
            pytest.fail(message)
        pytest.skip(message)
    with AlternatingMeter() as meter:
        agent = FastAgent(agent_config(tmp_path, meter), tmp_path / "agent.log")
        agent.start()
        try:
            agent.wait_started(1)
            time.sleep(REAL_SECONDS)  # the input: an hour on the agent's clocks
            assert agent.terminate() == 0, agent.log_text()[-3000:]
        finally:
            if agent.alive:
                agent.kill()
        answered, dropped = meter.answered, meter.dropped
    events = agent.events()
    started = _at(agent.events("agent_started")[0])
    stopping = _at(agent.events("agent_stopping")[0])
    simulated = stopping - started  # seconds on the agent's (faked) clock
    kinds = Counter(str(e["event"]) for e in events)
    per_hour = len(events) * 3600 / simulated
    print(f"\nlog volume: {len(events)} lines in {simulated:.0f} simulated s "
          f"({per_hour:.1f} per simulated hour); meter answered {answered}, "
          f"dropped {dropped}; {dict(kinds)}")

    # the input: it flapped at (almost) every poll, for most of an hour
    assert simulated >= 1800, simulated
    assert answered >= 50 and dropped >= 50, (answered, dropped)  # 100+ changes
    stray = [line for line in agent.log_text().splitlines() if not line.startswith("{")]
    assert stray == [], stray[:5]

    device = Counter(str(e["event"]) for e in events if e.get("device") == METER)
    # two dampers per device: down/up, and overrun episodes (the loaded machine may make some)
    overruns = sum(n for k, n in device.items() if k.startswith("poll_"))
    assert overruns <= max_lines(simulated), device
    assert sum(device.values()) - overruns <= max_lines(simulated), device
    # One episode, unless the loaded machine stalled the agent for 15 simulated minutes
    # (9 real seconds at x100): that ends it, and the next flap starts another.
    assert device["device_flapping"] >= 1 and device["device_flapping_summary"] >= 1, device
    assert device["device_flapping"] - device["device_flapping_ended"] in {0, 1}, device
    uplink = Counter(k for k in kinds if k.startswith("uplink"))
    assert kinds["uplink_down"] == 1 and set(uplink) == {"uplink_down"}, kinds
    drops = kinds["buffer_drop"] + kinds["buffer_drop_summary"]
    assert kinds["buffer_drop"] == 1, kinds  # the input: it dropped, and logged the first
    assert drops <= math.floor(simulated / FLAP_PERIOD_SECONDS) + 1, kinds
    others = {k: n for k, n in kinds.items()
              if k not in device and not k.startswith("buffer_drop")}
    assert set(others) <= ONE_OFFS and all(n == 1 for n in others.values()), kinds
