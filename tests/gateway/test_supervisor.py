"""The supervisor's shutdown: every poller stops, even one that drops a cancellation."""

from __future__ import annotations

import asyncio
import contextlib

from structlog.testing import capture_logs

from agent.gateway.supervisor import _cancel_all


async def _drops_one_cancellation(stopped: list[str]) -> None:
    # What Python 3.11's wait_for does when a cancellation meets its inner future's result.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(3600)
    try:
        await asyncio.sleep(3600)
    finally:
        stopped.append("stubborn")


async def _well_behaved(stopped: list[str]) -> None:
    try:
        await asyncio.sleep(3600)
    finally:
        stopped.append("plain")


async def test_a_poller_that_drops_a_cancellation_is_cancelled_again() -> None:
    stopped: list[str] = []
    tasks = [asyncio.create_task(_drops_one_cancellation(stopped)),
             asyncio.create_task(_well_behaved(stopped))]
    await asyncio.sleep(0)
    with capture_logs() as logs:
        async with asyncio.timeout(30):  # a hang would fail here, not block the suite
            await _cancel_all(tasks, every=0.05)
    assert sorted(stopped) == ["plain", "stubborn"]
    assert all(task.cancelled() for task in tasks)
    assert [e["event"] for e in logs] == ["pollers_cancelled_again"]
    assert logs[0]["pollers"] == 1


async def test_pollers_that_stop_at_once_are_cancelled_once() -> None:
    stopped: list[str] = []
    tasks = [asyncio.create_task(_well_behaved(stopped)) for _ in range(3)]
    await asyncio.sleep(0)
    with capture_logs() as logs:
        await _cancel_all(tasks, every=0.05)
    assert stopped == ["plain"] * 3
    assert logs == []
