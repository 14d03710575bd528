"""Reloading a running agent with SIGHUP: real agent process, real meters, real broker.

One broker, four simulated meters and one receiver serve the whole module; each test runs
its own agent (own gateway id and data_dir). What the receiver stored is the ground truth.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import (
    AgentProcess,
    Device,
    MeterFleet,
    ReceiverProcess,
    last_sealed_seq,
    store_batches,
    write_agent_config,
)
from tests.conftest import Mosquitto, _require_mosquitto, free_port
from tests.waiting import wait_until

POINT = "power_total"
WINDOW_S = 10


@dataclass
class Rig:
    broker: Mosquitto
    meters: MeterFleet
    receiver: ReceiverProcess
    sink: Path
    workdir: Path

    @property
    def a(self) -> Device:
        return self.meters.devices[0]

    @property
    def b(self) -> Device:
        return self.meters.devices[1]

    @property
    def c(self) -> Device:
        return self.meters.devices[2]

    @property
    def d(self) -> Device:
        return self.meters.devices[3]

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.sink}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def slots(self, gw: str, device: str) -> list[int]:
        rows = self.query("SELECT t FROM readings WHERE gw = ? AND dev = ? AND pt = ? "
                          "ORDER BY t", gw, device, POINT)
        return [t for (t,) in rows]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    _require_mosquitto()
    workdir = tmp_path_factory.mktemp("reload")
    broker_dir = workdir / "broker"
    broker_dir.mkdir()
    broker = Mosquitto(broker_dir, free_port())
    broker.start()
    sink = workdir / "sink.db"
    receiver = ReceiverProcess(broker.url, sink, workdir / "receiver.log",
                               client_id="reload-receiver")
    try:
        with MeterFleet([1000, 1000, 1000, 1000]) as meters:
            receiver.start()
            yield Rig(broker, meters, receiver, sink, workdir)
    finally:
        if receiver.alive:
            receiver.terminate()
        broker.terminate()


def kpi_tables(*kpis: dict[str, str]) -> str:
    out = ""
    for kpi in kpis:
        out += "[[kpis]]\n" + "".join(f'{k} = "{v}"\n' for k, v in kpi.items()) + "\n"
    return out


def write_config(rig: Rig, path: Path, gw: str, devices: Sequence[Device], *,
                 kpis: str = "", extra: str = "", **keys: Any) -> Path:
    write_agent_config(path, gw=gw, data_dir=rig.workdir / gw, broker_url=rig.broker.url,
                       devices=devices, gateway={"kpi_lateness": "2 s", **keys.pop("gateway", {})},
                       **keys)
    with path.open("a") as out:
        out.write(kpis + extra)
    return path


def start_agent(rig: Rig, config: Path, gw: str) -> AgentProcess:
    agent = AgentProcess(config, rig.workdir / f"{gw}.log")
    agent.start()
    agent.wait_started(1)
    return agent


def sighup(agent: AgentProcess, event: str, count: int = 1) -> dict[str, Any]:
    """SIGHUP the agent; the ``count``-th ``event`` line it logs after."""
    assert agent.proc is not None
    os.kill(agent.proc.pid, signal.SIGHUP)
    assert wait_until(lambda: len(agent.events(event)) >= count, 30), agent.log_text()[-3000:]
    return agent.events(event)[count - 1]


def wall_ms(event: dict[str, Any]) -> int:
    """The time of a log line (ISO UTC) in epoch ms."""
    return round(datetime.fromisoformat(event["timestamp"]).timestamp() * 1000)


def test_reload_keeps_unchanged_devices_and_windows_and_loses_nothing(
    rig: Rig, tmp_path: Path
) -> None:
    gw = "gw-reload"
    a_power = {"name": "a_power", "source": f"{rig.a.name}.{POINT}", "operator": "mean",
               "window": f"{WINDOW_S} s", "sample_interval": "1 s"}
    b_power = {"name": "b_power", "source": f"{rig.b.name}.{POINT}", "operator": "mean",
               "window": f"{WINDOW_S} s", "sample_interval": "1 s"}
    config = write_config(rig, tmp_path / "agent.toml", gw, [rig.a, rig.b, rig.c],
                          kpis=kpi_tables(a_power, b_power), uplink={"keepalive": "2 s"})
    agent = start_agent(rig, config, gw)
    data_dir = rig.workdir / gw
    try:
        assert wait_until(lambda: len(rig.slots(gw, rig.a.name)) >= 3, 30)
        first_a = rig.slots(gw, rig.a.name)[0]
        # Batches pending at the reload: the broker is frozen while two are sealed.
        rig.broker.stop()
        try:
            sealed = last_sealed_seq(data_dir)
            assert wait_until(lambda: last_sealed_seq(data_dir) >= sealed + 2, 20)
            # Reload 4-6 s into a KPI window that began at or after A's first poll.
            now = time.time()
            window_start = math.ceil(first_a / 1000 / WINDOW_S) * WINDOW_S
            while now > window_start + 6:
                window_start += WINDOW_S
            hup = max(now, window_start + 4)
            time.sleep(hup - now)  # the moment of the reload is the input
            assert store_batches(data_dir) >= 2
            b_new = Device(rig.b.name, rig.b.port, 2000)
            write_config(rig, config, gw, [rig.a, b_new, rig.d],
                         kpis=kpi_tables(a_power, {**b_power, "sample_interval": "2 s"}),
                         uplink={"keepalive": "3 s"})
            reloaded = sighup(agent, "config_reloaded")
        finally:
            rig.broker.cont()
        hup_ms = round(hup * 1000)
        done_ms = wall_ms(reloaded)
        assert reloaded["status"] == "applied"
        assert reloaded["devices"] == {"kept": [rig.a.name], "restarted": [rig.b.name],
                                       "stopped": [rig.c.name], "started": [rig.d.name]}
        assert reloaded["kpis"] == {"kept": ["a_power"], "restarted": ["b_power"]}
        assert reloaded["uplink_restarted"] is True
        # the window holding the reload closes (plus the lateness) and reaches the receiver
        reload_window = int(window_start * 1000)
        assert wait_until(lambda: rig.query(
            "SELECT count(*) FROM aggregates WHERE gw = ? AND start = ?", gw,
            reload_window)[0][0] >= 2, WINDOW_S * 3), agent.log_text()[-3000:]
        assert wait_until(lambda: len([t for t in rig.slots(gw, rig.b.name) if t > done_ms])
                          >= 3, 20)
    finally:
        assert agent.terminate() == 0
    last = last_sealed_seq(data_dir)
    rig.receiver.wait_for_seq(gw, last)

    # The outage the reload fell in is logged as one: down once, restored once (the uplink
    # that the reload started ends the one the old uplink began).
    assert len(agent.events("uplink_down")) == len(agent.events("uplink_restored")) <= 1

    # Every batch arrived once: seqs 1..last, none twice, no reading stored twice.
    seqs = [s for (s,) in rig.query("SELECT seq FROM batches WHERE gw = ? ORDER BY seq", gw)]
    assert seqs == list(range(1, last + 1))
    dupes = rig.query("SELECT dev, pt, t, count(*) FROM readings WHERE gw = ? "
                      "GROUP BY dev, pt, t HAVING count(*) > 1", gw)
    assert dupes == []

    # A kept polling through the reload: every 1-s slot from its first to its last
    # (a slot the agent itself reported skipped, an overrun of a loaded machine, excepted).
    a_slots = rig.slots(gw, rig.a.name)
    skipped = [e for e in agent.events("poll_overrun") if e.get("device") == rig.a.name]
    assert a_slots[0] < hup_ms < done_ms < a_slots[-1]
    missing = sorted(set(range(a_slots[0], a_slots[-1] + 1, 1000)) - set(a_slots))
    assert missing == [] or skipped, missing
    # B moved to its new 2-s interval; C stopped; D started.
    b_after = [t for t in rig.slots(gw, rig.b.name) if t > done_ms]
    assert len(b_after) >= 3
    assert all(t % 2000 == 0 for t in b_after), b_after
    b_skipped = [e for e in agent.events("poll_overrun") if e.get("device") == rig.b.name]
    steps = {later - earlier for earlier, later in itertools.pairwise(b_after)}
    assert steps == {2000} or b_skipped, steps
    c_slots = rig.slots(gw, rig.c.name)
    assert c_slots and c_slots[-1] <= done_ms
    # (a request C's poller sent as it was cancelled may be logged by the meter a moment late)
    assert not [r for r in rig.meters.requests(rig.c.name) if r * 1000 > done_ms + 1000]
    d_slots = rig.slots(gw, rig.d.name)
    assert d_slots and d_slots[0] >= hup_ms

    # The unchanged KPI's window holds every reading of A in it, from before and after the
    # reload; the changed one started afresh: it holds fewer of B's readings than were stored.
    windows = dict(rig.query("SELECT kpi, n FROM aggregates WHERE gw = ? AND start = ?",
                             gw, reload_window))
    a_in = [t for t in a_slots if reload_window <= t < reload_window + WINDOW_S * 1000]
    b_in = [t for t in rig.slots(gw, rig.b.name)
            if reload_window <= t < reload_window + WINDOW_S * 1000]
    assert windows["a_power"] == len(a_in) == WINDOW_S
    assert windows["b_power"] < len(b_in)
    assert min(a_in) < hup_ms < max(a_in)


def test_rejected_configs_keep_the_running_one(rig: Rig, tmp_path: Path) -> None:
    gw = "gw-reject"
    config = write_config(rig, tmp_path / "agent.toml", gw, [rig.a])
    good = config.read_text()
    agent = start_agent(rig, config, gw)
    try:
        assert wait_until(lambda: len(rig.slots(gw, rig.a.name)) >= 2, 30)
        # Three mistakes: all of them are reported, and the running config goes on.
        broken = good.replace(f'interval = "{rig.a.interval}"', 'interval = "often"')
        broken = broken.replace("[gateway]\n", '[gateway]\ncolour = "blue"\n')
        broken += kpi_tables({"name": "k", "source": "nowhere.p", "operator": "mean",
                              "window": "1 min", "sample_interval": "1 s"})
        config.write_text(broken)
        rejected = sighup(agent, "config_rejected")
        assert rejected["reason"] == "invalid"
        problems = "\n".join(rejected["problems"])
        assert len(rejected["problems"]) >= 3, problems
        assert "gateway.colour: unknown key" in problems
        assert "interval" in problems and "'often'" in problems
        assert "no device named 'nowhere'" in problems

        # A key a running agent cannot take: refused, named.
        config.write_text(good.replace(f'id = "{gw}"', 'id = "gw-other"'))
        refused = sighup(agent, "config_rejected", 2)
        assert refused["reason"] == "fixed_keys"
        assert [p.split(":")[0] for p in refused["problems"]] == ["gateway.id"]
        assert "restart the agent" in refused["problems"][0]

        # Still polling with the old config after both.
        after = wall_ms(refused)
        assert wait_until(lambda: len([t for t in rig.slots(gw, rig.a.name) if t > after])
                          >= 2, 20)
        assert agent.events("config_reloaded") == []
        assert agent.alive
    finally:
        assert agent.terminate() == 0
