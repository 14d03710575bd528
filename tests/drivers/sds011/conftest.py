"""Fixtures: a socat virtual serial line and a running SDS011 simulator on its far end."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from drivers.sds011.simulator import Sds011Simulator
from tests.drivers.modbus.conftest import PtyPair
from tests.waiting import wait_until_async


@pytest.fixture
def line(tmp_path: Path) -> Iterator[PtyPair]:
    """A socat pty pair: ``a`` for the simulator, ``b`` for the driver; killed afterwards."""
    if shutil.which("socat") is None:
        pytest.fail("socat is needed for the serial driver tests (apt-get install socat)")
    pair = PtyPair(tmp_path)
    pair.start()
    yield pair
    pair.kill()


async def wait_open(sim: Sds011Simulator) -> None:
    """Until the simulator has (re)opened its end of the line."""
    assert await wait_until_async(lambda: sim.link.is_open, 5, step=0.002)


@pytest.fixture
async def sim(line: PtyPair) -> AsyncIterator[Sds011Simulator]:
    """A simulated sensor reporting PM2.5 14.0 and PM10 14.8, streaming fast in active mode."""
    simulator = Sds011Simulator(line.a, pm2_5=14.0, pm10=14.8, period=0.05)
    task = asyncio.create_task(simulator.run(), name="sds011-simulator")
    await wait_open(simulator)
    yield simulator
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
