"""Chaos: KPIs under a clock step and a full disk, with a real agent process.

Before: an agent started 400 days back with two 1-min KPIs and then stepped to now closed every
1-min window of the skipped span into one batch (over 200 MB, refused by the encoder every few
seconds, RSS up to 1.9 GB): nothing reached the receiver again, and the batch, left pending,
was reloaded at every start. And with the disk full, the KPI journal held in memory grew
without bound.

The agent runs under libfaketime (``FakeTimeAgent``, see ``tests/chaos/test_clock.py``): its
wall clock starts 400 days back and is stepped to real time by rewriting the offset file while
it runs. Ground truth: the receiver's SQLite sink, real mosquitto, a simulated meter.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from agent.platform.sink import SqliteSink
from tests.chaos.harness import (
    AgentProcess,
    MeterFleet,
    ReceiverProcess,
    fill,
    store_batches,
    write_agent_config,
)
from tests.chaos.test_clock import FakeTimeAgent, _need_libfaketime
from tests.conftest import Mosquitto
from tests.waiting import wait_until

GW = "gw-kpi-faults"
DAY_MS = 86_400_000
MINUTE_MS = 60_000
KPIS = """
[[kpis]]
name = "voltage_1m"
source = "meter-1.voltage_l1"
operator = "mean"
window = "1 min"
sample_interval = "1 s"

[[kpis]]
name = "current_1m"
source = "meter-1.current_l1"
operator = "max"
window = "1 min"
sample_interval = "1 s"
"""
WORDS = re.compile(r"(\w+)=(\S+)")


def kpi_config(tmp_path: Path, fleet: MeterFleet, broker: Mosquitto, data: Path) -> Path:
    path = write_agent_config(tmp_path / f"{GW}.toml", gw=GW, data_dir=data,
                              broker_url=broker.url, devices=fleet.devices,
                              gateway={"kpi_lateness": "2 s", "timezone": "UTC"})
    path.write_text(path.read_text() + KPIS)
    return path


def sink_rows(sink: Path) -> tuple[list[int], list[dict[str, Any]], list[dict[str, Any]]]:
    """Reading times, aggregates and events the receiver stored for the gateway."""
    with SqliteSink.open(f"sqlite:///{sink}") as db:
        return ([r.t for r in db.readings_for(GW)], db.aggregates_for(GW), db.events_for(GW))


def tail(agent: AgentProcess, receiver: ReceiverProcess) -> str:
    return (f"agent log:\n{agent.log_text()[-4000:]}\nreceiver log:\n"
            f"{receiver.log_text()[-2000:]}")


def test_a_400_day_step_forward_with_kpis_keeps_delivering_and_survives_a_restart(
    tmp_path: Path, broker: Mosquitto, receiver: ReceiverProcess, agents: list[AgentProcess],
) -> None:
    _need_libfaketime()
    sink = tmp_path / "received.db"
    data = tmp_path / "data"
    with MeterFleet([1000]) as fleet:
        config = kpi_config(tmp_path, fleet, broker, data)
        agent = FakeTimeAgent(config, tmp_path / f"{GW}.log", tmp_path / "faketime")
        agents.append(agent)
        agent.set_offset("-400d")
        agent.start()
        agent.wait_started(1)
        # a 1-min window closes on the old clock first (its end + 2 s lateness)
        assert wait_until(lambda: len(sink_rows(sink)[1]) >= 2, 150), tail(agent, receiver)
        stepped_at = agent.set_offset("+0")
        assert wait_until(lambda: any(t >= stepped_at * 1000 for t in sink_rows(sink)[0]),
                          30), tail(agent, receiver)
        # and KPI windows of the new clock follow
        assert wait_until(lambda: any(a["start"] >= stepped_at * 1000 - MINUTE_MS
                                      for a in sink_rows(sink)[1]), 150), tail(agent, receiver)
        assert agent.terminate() == 0, tail(agent, receiver)
        restarted_at = time.time()
        agent.start()
        agent.wait_started(2)
        assert wait_until(lambda: any(t >= (restarted_at + 2) * 1000
                                      for t in sink_rows(sink)[0]), 30), tail(agent, receiver)
        assert wait_until(lambda: store_batches(data) == 0, 30), tail(agent, receiver)
        assert agent.terminate() == 0, tail(agent, receiver)
    _, aggregates, events = sink_rows(sink)
    old = [a for a in aggregates if a["end"] < stepped_at * 1000 - 300 * DAY_MS]
    new = [a for a in aggregates if a["start"] >= stepped_at * 1000 - 2 * MINUTE_MS]
    assert old and new
    # no window of the 400 skipped days was materialised, none was sent twice
    assert len(aggregates) == len(old) + len(new), [(a["start"], a["n"]) for a in aggregates]
    assert max(Counter((a["kpi"], a["start"]) for a in aggregates).values()) == 1
    assert all(a["n"] > 0 for a in aggregates), "a window without readings was sent"
    steps = [dict(WORDS.findall(e["msg"])) for e in events if e["kind"] == "kpi_clock_step"]
    assert len(steps) == 1, events
    assert abs(float(steps[0]["size_s"]) - 400 * 86_400) < 120
    assert not [e for e in agent.events() if e.get("event") in ("batch_encode_failed",
                                                                "store_set_aside")]
    assert [e["kind"] for e in events if e["kind"] == "buffer_drop"] == []


def test_disk_full_with_kpis_keeps_the_windows_and_reports_what_it_could_not(
    tmp_path: Path, broker: Mosquitto, receiver: ReceiverProcess, agents: list[AgentProcess],
    tiny_fs: Path,
) -> None:
    sink = tmp_path / "received.db"
    data = tiny_fs / "data"
    with MeterFleet([1000]) as fleet:
        config = kpi_config(tmp_path, fleet, broker, data)
        agent = AgentProcess(config, tmp_path / f"{GW}.log")
        agents.append(agent)
        agent.start()
        agent.wait_started(1)
        assert wait_until(lambda: len(sink_rows(sink)[0]) > 0, 30), tail(agent, receiver)
        filler = tiny_fs / "filler"
        fill(filler)
        full_at = time.time()
        assert wait_until(lambda: bool(agent.events("buffer_write_failed")), 10), \
            tail(agent, receiver)
        # full across a window end: that window closes while nothing can be written
        assert wait_until(lambda: time.time() // 60 > full_at // 60 and time.time() % 60 > 5,
                          70)
        assert agent.alive, tail(agent, receiver)
        filler.unlink()
        assert wait_until(lambda: bool(agent.events("buffer_writable_again")), 15), \
            tail(agent, receiver)
        closed_while_full = (full_at // 60 + 1) * MINUTE_MS  # the end of the window
        assert wait_until(lambda: {a["kpi"] for a in sink_rows(sink)[1]
                                   if a["end"] == closed_while_full}
                          == {"voltage_1m", "current_1m"}, 30), tail(agent, receiver)
        assert wait_until(lambda: store_batches(data) == 0, 30), tail(agent, receiver)
        assert agent.terminate() == 0, tail(agent, receiver)
    _, aggregates, events = sink_rows(sink)
    assert max(Counter((a["kpi"], a["start"]) for a in aggregates).values()) == 1
    drops = [e["msg"] for e in events if e["kind"] == "buffer_drop"]
    # everything lost while full is counted in a report (here: held within the bounds)
    lost = sum(int(n) for msg in drops for n in re.findall(r"aggregates=(\d+)", msg))
    assert lost == 0, drops
