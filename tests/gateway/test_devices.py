"""DeviceSet: devices stopped and started one by one next to ones that keep polling, with the
Modbus line they share kept while one of them uses it and closed once none does. Real
pymodbus simulators on loopback ports and the real Modbus driver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.config import AgentConfig, config_from_dict
from agent.driver import DeviceConfig, Driver, DriverContext
from agent.gateway.devices import DeviceSet, TrackedResources
from agent.gateway.scheduler import DevicePoller
from agent.profiles import load_profile
from agent.readings import Event, Quality, Reading
from drivers.modbus.simulator import SimulatorServer, serve
from tests.conftest import free_port
from tests.waiting import wait_until_async

PROFILE = "ssc-demo-meter"


@pytest.fixture
async def endpoints() -> AsyncIterator[tuple[int, int]]:
    """A port serving units 1 and 2 (one line, serialized) and one serving unit 1."""
    profile = load_profile(PROFILE)
    shared, own = free_port(), free_port()
    servers: list[SimulatorServer] = [
        await serve({1: profile, 2: profile}, "127.0.0.1", shared),
        await serve({1: profile}, "127.0.0.1", own),
    ]
    yield shared, own
    for server in servers:
        await server.stop()


def config(shared: int, own: int, names: list[str], *, b_interval: str = "100 ms",
           timeout: str = "1 s") -> AgentConfig:
    tables: dict[str, dict[str, Any]] = {
        "a": {"endpoint": f"tcp://127.0.0.1:{shared}", "unit": 1, "serialize": True,
              "timeout": timeout},
        "b": {"endpoint": f"tcp://127.0.0.1:{shared}", "unit": 2, "serialize": True,
              "interval": b_interval, "timeout": timeout},
        "c": {"endpoint": f"tcp://127.0.0.1:{own}", "unit": 1},
    }
    devices = [{"name": name, "driver": "modbus", "profile": PROFILE, "interval": "100 ms",
                **tables[name]} for name in names]
    return config_from_dict({"gateway": {"id": "gw-devices"}, "devices": devices},
                            require_uplink=False)


class Polled:
    """What the pollers handed over, per device."""

    def __init__(self) -> None:
        self.readings: dict[str, list[Reading]] = {}

    def add(self, readings: list[Reading]) -> None:
        for reading in readings:
            self.readings.setdefault(reading.device, []).append(reading)

    def count(self, device: str) -> int:
        return len(self.readings.get(device, []))

    def event(self, _: Event) -> None:
        pass

    def poller(self, device: DeviceConfig, driver: Driver) -> DevicePoller:
        return DevicePoller(device.name, driver, device.interval.seconds, emit=self.add,
                            event=self.event, clock=time.time, monotonic=time.monotonic)


async def test_a_device_restarts_next_to_one_that_keeps_polling_on_their_shared_line(
    endpoints: tuple[int, int],
) -> None:
    shared, own = endpoints
    line_key = f"modbus:line:tcp://127.0.0.1:{shared}"
    polled = Polled()
    context = DriverContext(resources=TrackedResources())
    devices = DeviceSet(context, polled.poller, [])
    try:
        async with asyncio.TaskGroup() as tg:
            devices.add_pollers(devices.create(config(shared, own, ["a", "b", "c"])))
            devices.start(tg)
            assert await wait_until_async(
                lambda: all(polled.count(d) >= 40 for d in "abc"), 20)
            line = context.resources[line_key]
            a_task = devices.tasks["a"]
            closers = len(context.closers)

            # b restarts (its interval changed): a goes on, on the same line
            await devices.stop(["b"])
            assert line_key in context.resources and context.resources[line_key] is line
            new = config(shared, own, ["a", "b", "c"], b_interval="200 ms")
            devices.add_pollers(devices.create(new, ["b"]))
            seen = polled.count("b")
            assert await wait_until_async(lambda: polled.count("b") >= seen + 40, 20)
            assert context.resources[line_key] is line
            assert devices.tasks["a"] is a_task and not a_task.done()
            assert len(context.closers) == closers  # no second line for b
            assert sorted(p.name for p in devices.pollers) == ["a", "b", "c"]

            # a and b go: their line is closed and dropped; c goes on
            c_task = devices.tasks["c"]
            await devices.stop(["a", "b"])
            assert line_key not in context.resources
            assert len(context.closers) == closers - 1
            assert [p.name for p in devices.pollers] == ["c"]
            assert a_task.done() and not c_task.done()

            # a line's settings changed (here: a device timeout): a new line is built
            devices.add_pollers(devices.create(
                config(shared, own, ["a", "c"], timeout="2 s"), ["a"]))
            seen = polled.count("a")
            assert await wait_until_async(lambda: polled.count("a") >= seen + 20, 20)
            assert context.resources[line_key] is not line
            assert all(r.quality == Quality.GOOD for r in polled.readings["a"][-20:])
            await devices.stop_all()
    finally:
        await context.close()
