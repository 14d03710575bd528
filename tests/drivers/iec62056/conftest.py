"""Fixtures: a socat virtual serial line and IEC 62056-21 simulators on its far end."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.iec62056.simulator import Iec62056Simulator
from tests.drivers.modbus.conftest import PtyPair
from tests.waiting import wait_until_async

READINGS: dict[str, tuple[str, str | None]] = {  # the docs/protocols.md §4 test vector, and power
    "0.0.0": ("12345678", None),
    "1.8.0": ("001234.567", "kWh"),
    "2.8.0": ("000012.345", "kWh"),
    "1-0:16.7.0*255": ("00.948", "kW"),
}


@pytest.fixture
def line(tmp_path: Path) -> Iterator[PtyPair]:
    """A socat pty pair: ``a`` for the simulator, ``b`` for the driver; killed afterwards."""
    if shutil.which("socat") is None:
        pytest.fail("socat is needed for the serial driver tests (apt-get install socat)")
    pair = PtyPair(tmp_path)
    pair.start()
    yield pair
    pair.kill()


async def wait_open(sim: Iec62056Simulator) -> None:
    """Until the simulator has (re)opened its end of the line."""
    assert await wait_until_async(lambda: sim.link.is_open, 5, step=0.002)


SimFactory = Callable[..., Any]


@pytest.fixture
async def start_sim(line: PtyPair) -> AsyncIterator[SimFactory]:
    """``await start_sim(**options)``: a running simulated meter on the line's ``a`` end."""
    tasks: list[asyncio.Task[None]] = []

    async def start(**options: Any) -> Iec62056Simulator:
        options.setdefault("readings", dict(READINGS))
        options.setdefault("reaction", 0.01)
        simulator = Iec62056Simulator(line.a, **options)
        tasks.append(asyncio.create_task(simulator.run(), name="iec62056-simulator"))
        await wait_open(simulator)
        return simulator

    yield start
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
