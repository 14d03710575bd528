"""KPIs in the running agent: aggregates reach the receiver, and a SIGKILL in the middle of a
window loses nothing of it: after the restart the window closes with every committed reading,
exactly once. Real agent process, real mosquitto, real Modbus simulator."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

from agent.platform.sink import SqliteSink
from agent.profiles import load_profile
from drivers.modbus.simulator import serve
from tests.conftest import Mosquitto, free_port
from tests.test_end_to_end import log_events, receiving, start_agent, stop_agent
from tests.waiting import wait_until_async

GW = "gw-kpi"
WINDOW_MS = 20_000


def config_text(tmp_path: Path, broker: Mosquitto, port: int) -> str:
    return f"""
[gateway]
id = "{GW}"
timezone = "Europe/Berlin"
data_dir = "{tmp_path / "data"}"
kpi_lateness = "2 s"
kpi_checkpoint_interval = "3 s"

[uplink]
broker = "{broker.url}"
batch_max_age = "2 s"

[[devices]]
name = "meter-1"
driver = "modbus"
endpoint = "tcp://127.0.0.1:{port}"
profile = "ssc-demo-meter"
interval = "1 s"

[[kpis]]
name = "voltage_20s"
source = "meter-1.voltage_l1"
operator = "mean"
window = "20 s"
sample_interval = "1 s"
min_coverage = 0.1
unit = "V"

[[kpis]]
name = "energy_20s"
source = "meter-1.energy_import"
operator = "counter_delta"
window = "20 s"
sample_interval = "1 s"
min_coverage = 0.1
"""


async def test_windows_survive_a_sigkill_and_match_the_readings(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    port = free_port()
    server = await serve({1: load_profile("ssc-demo-meter")}, "127.0.0.1", port)
    config = tmp_path / "agent.toml"
    config.write_text(config_text(tmp_path, mosquitto, port))
    log = tmp_path / "agent.log"
    sink = tmp_path / "received.db"
    try:
        async with receiving(mosquitto, sink) as stats:
            agent = start_agent(config, log)
            # kill in the middle of a window, after a checkpoint and some journal steps: the
            # first window that starts once the agent runs (a slow start on a loaded machine
            # must not leave the window's first half unpolled)
            assert await wait_until_async(
                lambda: any(e["event"] == "agent_started" for e in log_events(log)), 30)
            now = time.time() * 1000
            window_end = (now // WINDOW_MS + 2) * WINDOW_MS
            kill_at = (window_end - WINDOW_MS / 2) / 1000
            await wait_until_async(lambda: time.time() >= kill_at, 60)
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait()
            await asyncio.sleep(2.0)  # the outage is the input: down for two seconds
            agent = start_agent(config, log)
            await wait_until_async(lambda: time.time() * 1000 >= window_end + WINDOW_MS + 4000, 60)
            stop_agent(agent)
            assert agent.returncode == 0, log.read_text()
            await wait_until_async(lambda: stats.batches >= 10, 5)
    finally:
        await server.stop()

    with SqliteSink.open(f"sqlite:///{sink}") as db:
        aggregates = db.aggregates_for(GW)
        readings = db.readings_for(GW)
    assert aggregates, log.read_text()[-3000:]
    keys = Counter((a["kpi"], a["start"]) for a in aggregates)
    assert max(keys.values()) == 1, "a window was emitted twice"
    voltage = {r.t: float(r.value) for r in readings
               if r.point == "voltage_l1" and r.quality == 0 and r.value is not None}
    killed = [a for a in aggregates if a["kpi"] == "voltage_20s" and a["end"] == window_end]
    assert killed, (window_end, [(a["kpi"], a["end"]) for a in aggregates])
    for a in aggregates:
        if a["kpi"] != "voltage_20s":
            continue
        inside = [v for t, v in voltage.items() if a["start"] <= t < a["end"]]
        # the window holds exactly the readings that were committed (none twice, none lost)
        assert a["n"] == len(inside), (a, len(inside))
        assert a["expected"] == 20
        if a["valid"]:
            assert a["value"] == sum(inside) / len(inside)
    [window] = killed
    # it spans the kill: readings from before it and after the restart are both in it
    before = [t for t in voltage if window["start"] <= t < window["start"] + WINDOW_MS / 2 - 1000]
    after = [t for t in voltage if window["end"] - 5000 <= t < window["end"]]
    assert before and after and window["n"] >= len(before) + len(after)
    starts = [e for e in log_events(log) if e.get("event") == "agent_started"]
    resumed = [e for e in log_events(log) if e.get("event") == "kpi_resumed"]
    assert len(starts) == 2 and len(resumed) == 1, log.read_text()[-2000:]
    assert resumed[0]["checkpoint"] is True
    energy = [a for a in aggregates if a["kpi"] == "energy_20s" and a["valid"]]
    assert energy and all(a["value"] >= 0 and a["resets"] == 0 for a in energy)
