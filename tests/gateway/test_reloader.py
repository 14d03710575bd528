"""Reloader.reload, the entry point SIGHUP and remote configuration share, in process: a real
RS-485 bus (socat pty pair, pymodbus RTU simulator), a Modbus TCP meter, the real batcher and
store. A changed bus restarts its devices on a new line; a driver's objection or a fixed key
rejects the whole config with nothing stopped."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, config_from_dict
from agent.driver import DriverContext
from agent.gateway.batcher import Batcher
from agent.gateway.devices import DeviceSet, TrackedResources
from agent.gateway.reload import Reloader, ReloadOutcome
from agent.gateway.scheduler import DevicePoller
from agent.gateway.store import BatchStore
from agent.profiles import load_profile
from agent.readings import Quality, Reading
from drivers.modbus.bus import ModbusLine
from drivers.modbus.simulator import SimulatorServer, serve, serve_serial
from tests.conftest import free_port
from tests.drivers.modbus.conftest import PtyPair
from tests.waiting import wait_until_async

PROFILE = "ssc-demo-meter"
BUS_LINE = "modbus:line:bus:rs485-1"


@pytest.fixture
async def meters(pty_pair: PtyPair) -> AsyncIterator[int]:
    """Units 1 and 2 on the bus, one Modbus TCP meter on the port returned."""
    profile = load_profile(PROFILE)
    tcp = free_port()
    servers: list[SimulatorServer] = [await serve_serial({1: profile, 2: profile}, pty_pair.a),
                                      await serve({1: profile}, "127.0.0.1", tcp)]
    yield tcp
    for server in servers:
        await server.stop()


def config(line: PtyPair, tcp: int, *, bus: dict[str, Any] | None = None,
           gw: str = "gw-r", extra: list[dict[str, Any]] | None = None,
           kpis: list[dict[str, Any]] | None = None) -> AgentConfig:
    common = {"driver": "modbus", "profile": PROFILE, "interval": "500 ms"}
    devices = [{"name": "m1", "bus": "rs485-1", "unit": 1, **common},
               {"name": "m2", "bus": "rs485-1", "unit": 2, **common},
               {"name": "t1", "endpoint": f"tcp://127.0.0.1:{tcp}", **common},
               *(extra or [])]
    return config_from_dict({
        "gateway": {"id": gw, "data_dir": "/tmp/unused", "kpi_lateness": "1 s"},
        "buses": [{"name": "rs485-1", "port": line.b, "timeout": "300 ms", **(bus or {})}],
        "devices": devices,
        "kpis": kpis or [],
    }, require_uplink=False)


class Agent:
    """The runtime pieces a reload works on, with what the pollers handed over."""

    def __init__(self, tmp_path: Path, first: AgentConfig) -> None:
        self.readings: dict[str, list[Reading]] = {}
        self.store = BatchStore.open(tmp_path / "buffer.db")
        self.batcher = Batcher(self.store, gw="gw-r", boot=1, max_readings=10_000,
                               max_age=5.0, codec=1, level=3, clock=time.time,
                               on_sealed=lambda: None)
        self.context = DriverContext(buses=first.buses_by_name, resources=TrackedResources())
        self.devices = DeviceSet(self.context, self.poller, [])
        self.uplink_restarts: list[AgentConfig] = []
        self.reloader = Reloader(first, self.devices, self.batcher, self.store,
                                 restart_uplink=self.restart_uplink, clock=time.time)
        self.hooks: list[str] = []
        self.reloader.on_reload_start.append(lambda: self.hooks.append("start"))
        self.reloader.on_reload_done.append(lambda o: self.hooks.append(o.status))

    def poller(self, device: Any, driver: Any) -> DevicePoller:
        return DevicePoller(device.name, driver, device.interval.seconds, emit=self.emit,
                            event=self.batcher.add_event, clock=time.time,
                            monotonic=time.monotonic)

    def emit(self, readings: list[Reading]) -> None:
        self.batcher.add(readings)
        for reading in readings:
            self.readings.setdefault(reading.device, []).append(reading)

    async def restart_uplink(self, config: AgentConfig) -> None:
        self.uplink_restarts.append(config)

    def good_since(self, device: str, t_ms: float) -> int:
        return sum(1 for r in self.readings.get(device, [])
                   if r.t > t_ms and r.quality == Quality.GOOD)

    async def polls_again(self, *names: str) -> None:
        now = time.time() * 1000
        assert await wait_until_async(
            lambda: all(self.good_since(n, now) >= 40 for n in names), 20), {
            n: self.good_since(n, now) for n in names}


async def test_reload_restarts_what_changed_and_rejects_whole(
    tmp_path: Path, pty_pair: PtyPair, meters: int
) -> None:
    first = config(pty_pair, meters)
    agent = Agent(tmp_path, first)
    try:
        async with asyncio.TaskGroup() as tg:
            agent.devices.add_pollers(agent.devices.create(first))
            agent.devices.start(tg)
            await agent.polls_again("m1", "m2", "t1")
            old_line = agent.context.resources[BUS_LINE]
            t1_task = agent.devices.tasks["t1"]

            # the bus's timeout changed: both devices on it restart on a new line
            slower = config(pty_pair, meters, bus={"timeout": "700 ms"})
            outcome = await agent.reloader.reload(slower)
            assert outcome.status == "applied", outcome
            assert outcome.buses.restarted == ("rs485-1",)
            assert outcome.devices.restarted == ("m1", "m2")
            assert outcome.devices.kept == ("t1",)
            assert not outcome.uplink_restarted and agent.uplink_restarts == []
            new_line = agent.context.resources[BUS_LINE]
            assert isinstance(new_line, ModbusLine) and new_line is not old_line
            assert new_line.timeout == pytest.approx(0.7)
            assert agent.devices.tasks["t1"] is t1_task
            await agent.polls_again("m1", "m2", "t1")
            assert agent.reloader.config is slower

            # the same config again: nothing to do
            assert (await agent.reloader.reload(slower)).status == "unchanged"

            # KPIs where there were none start the live engine; none left stops it
            kpi = {"name": "k", "source": "t1.power_total", "operator": "mean",
                   "window": "1 min", "sample_interval": "1 s"}
            with_kpi = config(pty_pair, meters, bus={"timeout": "700 ms"}, kpis=[kpi])
            outcome = await agent.reloader.reload(with_kpi)
            assert outcome.kpis.started == ("k",) and outcome.devices.kept == ("m1", "m2", "t1")
            assert agent.batcher.kpis is not None
            assert (await agent.reloader.reload(slower)).kpis.stopped == ("k",)
            assert agent.batcher.kpis is None

            # a driver objects (two devices on one TCP endpoint, one serialized, one not):
            # rejected before anything stopped
            clash = {"name": "t2", "driver": "modbus", "profile": PROFILE, "unit": 2,
                     "endpoint": f"tcp://127.0.0.1:{meters}", "serialize": True}
            outcome = await agent.reloader.reload(
                config(pty_pair, meters, bus={"timeout": "700 ms"}, extra=[clash]))
            assert outcome.status == "rejected" and not outcome.applied
            assert len(outcome.problems) == 1 and "serialize" in outcome.problems[0]
            assert outcome.problems[0].startswith("devices[3] (name=t2, driver=modbus)")

            # a fixed key: refused by name
            outcome = await agent.reloader.reload(config(pty_pair, meters, gw="gw-other",
                                                         bus={"timeout": "700 ms"}))
            assert outcome.status == "rejected"
            assert [p.split(":")[0] for p in outcome.problems] == ["gateway.id"]

            assert agent.reloader.config is slower
            assert agent.context.resources[BUS_LINE] is new_line
            assert agent.devices.tasks["t1"] is t1_task
            assert sorted(p.name for p in agent.devices.pollers) == ["m1", "m2", "t1"]
            await agent.polls_again("m1", "m2", "t1")
            assert agent.hooks == ["start", "applied", "start", "unchanged", "start", "applied",
                                   "start", "applied", "start", "rejected", "start",
                                   "rejected"]
            summary = ReloadOutcome("rejected", ("x",)).summary()
            assert summary["status"] == "rejected" and summary["problems"] == ["x"]

            await agent.reloader.close()
            assert (await agent.reloader.reload(first)).problems == ("the agent is stopping",)
            await agent.devices.stop_all()
    finally:
        await agent.context.close()
        agent.batcher.close()
        agent.store.close()


async def test_new_batching_settings_end_the_flush_wait_in_progress(tmp_path: Path) -> None:
    """A reload from flush_interval 60 s to 50 ms must not wait out the minute (the systemd
    watchdog allows the flush loop the current interval)."""
    store = BatchStore.open(tmp_path / "buffer.db")
    batcher = Batcher(store, gw="gw-r", boot=1, max_readings=100, max_age=120.0, codec=1,
                      level=3, clock=time.time, on_sealed=lambda: None)
    loop = asyncio.create_task(batcher.run(60.0))
    try:
        await asyncio.sleep(0)  # the loop starts its minute
        assert batcher.flush_interval == 60.0 and batcher.stats.rounds == 0
        batcher.retune(max_readings=50, max_age=1.0, codec=0, level=1, flush_interval=0.05)
        assert await wait_until_async(lambda: batcher.stats.rounds >= 3, 10)
        assert batcher.flush_interval == 0.05
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        batcher.close()
        store.close()
