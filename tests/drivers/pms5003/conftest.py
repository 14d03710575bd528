"""Fixtures: a socat virtual serial line and a running PMS5003 simulator on its far end."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from drivers.pms5003.simulator import Pms5003Simulator
from tests.drivers.modbus.conftest import PtyPair
from tests.waiting import wait_until_async

VALUES = (5, 9, 11, 5, 9, 11, 1200, 350, 60, 8, 2, 1)  # the docs/protocols.md §4 frame


@pytest.fixture
def line(tmp_path: Path) -> Iterator[PtyPair]:
    """A socat pty pair: ``a`` for the simulator, ``b`` for the driver; killed afterwards."""
    if shutil.which("socat") is None:
        pytest.fail("socat is needed for the serial driver tests (apt-get install socat)")
    pair = PtyPair(tmp_path)
    pair.start()
    yield pair
    pair.kill()


async def wait_open(sim: Pms5003Simulator) -> None:
    """Until the simulator has (re)opened its end of the line."""
    assert await wait_until_async(lambda: sim.link.is_open, 5, step=0.002)


@pytest.fixture
async def sim(line: PtyPair) -> AsyncIterator[Pms5003Simulator]:
    """A simulated sensor sending the docs/protocols.md §4 values, streaming fast in active mode."""
    simulator = Pms5003Simulator(line.a, values=VALUES, period=0.05)
    task = asyncio.create_task(simulator.run(), name="pms5003-simulator")
    await wait_open(simulator)
    yield simulator
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
