"""Wall-clock aligned polling, one task per device.

A 10 s poll fires at :00, :10, … (not drift from start-up). Readings carry the *scheduled*
time. A device that fails gets readings with a bad quality code for every slot it misses, is
retried with exponential backoff on the same slot grid, and is logged once when it goes down
and once when it is back. A poll that overruns its interval is counted and the missed slots
are skipped, never queued up.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from agent.driver import Driver, PointInfo
from agent.errors import DeviceProtocolError, DeviceUnavailable
from agent.readings import Event, PointValue, Quality, Reading

log = structlog.get_logger(__name__)

MAX_BACKOFF_SECONDS = 300.0


def next_slot(now: float, interval: float) -> float:
    """The first slot of the ``interval`` grid (epoch-aligned) strictly after ``now``."""
    return (math.floor(now / interval) + 1) * interval


def backoff_slots(failures: int, interval: float, cap: float = MAX_BACKOFF_SECONDS) -> int:
    """Slots to wait after ``failures`` failed polls in a row: 1, 2, 4, … up to ``cap`` seconds."""
    if failures <= 1:
        return 1
    limit = max(1, int(cap // interval))
    return int(min(2 ** (failures - 1), limit))


@dataclass
class DeviceStats:
    polls: int = 0
    failures: int = 0
    overruns: int = 0
    readings: int = 0
    down: bool = False


def hang_guard(interval: float, max_poll_seconds: float | None) -> float:
    """How long a poll may take before the scheduler gives up on it.

    A driver has its own I/O timeouts; this guard only catches one that hangs anyway: twice the
    interval, at least 20 s, and never shorter than 1.5 × what the driver says a good poll may
    take (its optional ``max_poll_seconds``, e.g. a slow IEC 62056-21 readout at 300 baud).
    """
    guard = max(interval, 10.0) * 2
    if isinstance(max_poll_seconds, int | float) and max_poll_seconds > 0:
        guard = max(guard, 1.5 * float(max_poll_seconds))
    return guard


class DevicePoller:
    """Polls one device on its grid and hands readings and events to the batcher."""

    def __init__(
        self,
        name: str,
        driver: Driver,
        interval: float,
        *,
        emit: Callable[[list[Reading]], None],
        event: Callable[[Event], None],
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self._driver = driver
        self._interval = interval
        self._emit = emit
        self._event = event
        self._clock = clock
        self._sleep = sleep
        self._points: Sequence[PointInfo] = driver.points
        self._units = {p.name: p.unit for p in self._points}
        self._guard = hang_guard(interval, getattr(driver, "max_poll_seconds", None))
        self._connected = False
        self._failures = 0
        self._down_since: int | None = None
        self.stats = DeviceStats()
        self._log = log.bind(device=name)

    @property
    def guard(self) -> float:
        """Seconds after which a poll that has not returned counts as failed."""
        return self._guard

    async def run(self) -> None:
        """Poll forever (until cancelled)."""
        slot = next_slot(self._clock(), self._interval)
        retry_at = slot
        try:
            while True:
                delay = slot - self._clock()
                if delay > 0:
                    await self._sleep(delay)
                t_ms = round(slot * 1000)
                if slot >= retry_at:
                    ok = await self._poll(t_ms)
                    retry_at = slot + (
                        self._interval if ok else self._interval * backoff_slots(self._failures,
                                                                                 self._interval)
                    )
                else:
                    # Backing off: no I/O, but the slot is recorded as a communication error.
                    self._emit_bad(t_ms, Quality.COMM_ERROR)
                following = slot + self._interval
                now = self._clock()
                if now >= following:
                    skipped = math.floor((now - slot) / self._interval)
                    self.stats.overruns += 1
                    self._log.debug("poll_overrun", skipped_slots=skipped)
                    following = next_slot(now, self._interval)
                slot = following
        finally:
            await self._close_driver()

    async def _poll(self, t_ms: int) -> bool:
        self.stats.polls += 1
        try:
            async with asyncio.timeout(self._guard):
                if not self._connected:
                    await self._driver.connect()
                    self._connected = True
                values = await self._driver.read()
        except TimeoutError:
            exc = DeviceUnavailable(f"{self.name}: no result within {self._guard:.0f} s")
            self._failed(t_ms, exc)
            await self._close_driver()
            self._emit_bad(t_ms, Quality.COMM_ERROR)
            return False
        except (DeviceUnavailable, DeviceProtocolError) as exc:
            quality = (Quality.COMM_ERROR if isinstance(exc, DeviceUnavailable)
                       else Quality.PROTOCOL_ERROR)
            self._failed(t_ms, exc)
            if not self._connected:
                await self._close_driver()
            self._emit_bad(t_ms, quality)
            return False
        except Exception as exc:  # a driver bug must not stop the other devices or the agent
            failure = DeviceUnavailable(
                f"{self.name}: the driver failed: {type(exc).__name__}: {exc}")
            self._failed(t_ms, failure)
            await self._close_driver()
            self._emit_bad(t_ms, Quality.COMM_ERROR)
            return False
        self._emit_values(t_ms, values)
        if self._down_since is not None:
            self._log.info("device_available", down_seconds=(t_ms - self._down_since) / 1000,
                           failed_polls=self._failures)
            self._event(Event(t_ms, "device_up", self.name, "device answers again"))
            self._down_since = None
        self._failures = 0
        self.stats.down = False
        return True

    async def _close_driver(self) -> None:
        try:
            await self._driver.close()
        except Exception as exc:  # closing a broken connection may fail too; reconnect anyway
            self._log.debug("driver_close_failed", error=f"{type(exc).__name__}: {exc}")

    def _failed(self, t_ms: int, exc: Exception) -> None:
        self._failures += 1
        self.stats.failures += 1
        if self._down_since is None:
            self._down_since = t_ms
            self.stats.down = True
            self._log.warning("device_unavailable", error=str(exc), error_type=type(exc).__name__)
            self._event(Event(t_ms, "device_down", self.name, str(exc)))
        if isinstance(exc, DeviceUnavailable):
            self._connected = False

    def _emit_values(self, t_ms: int, values: Sequence[PointValue]) -> None:
        units = self._units
        readings = [
            Reading(self.name, v.point, units.get(v.point), t_ms, v.value, v.quality)
            for v in values
        ]
        self.stats.readings += len(readings)
        self._emit(readings)

    def _emit_bad(self, t_ms: int, quality: Quality) -> None:
        readings = [Reading(self.name, p.name, p.unit, t_ms, None, quality) for p in self._points]
        self.stats.readings += len(readings)
        self._emit(readings)
