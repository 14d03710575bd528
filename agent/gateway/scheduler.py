"""Wall-clock aligned polling, one task per device.

A 10 s poll fires at :00, :10, … (not drift from start-up). Readings carry the *scheduled*
time. A device that fails gets readings with a bad quality code for every slot it misses, is
retried with exponential backoff on the same slot grid (at every slot while its serial port
is missing: a replugged adapter is picked up at the next slot), and is logged once when it goes down
and once when it is back (a device that flaps is reported by :mod:`agent.damper`
instead: one ``device_flapping`` line, then a summary per period, until it is stable). A poll
that overruns its interval is counted and the missed slots are skipped, never queued up, and
reported (a ``slots_skipped`` event naming them); overrun episodes are logged when they start
and end, damped the same way (``poll_overrun_flapping``).

The grid is wall-clock time, but waiting is done on the monotonic clock: the poller keeps the
wall time of a monotonic instant (``wall − monotonic``, from the shared
:class:`~agent.gateway.clock.ClockWatch`) and sleeps until the monotonic instant of its next slot.
When the watch sees the wall clock step (either way), the poller re-anchors: the slot it woke
for becomes the grid slot the new clock is in, and polling goes on at its interval, without a
gap or a burst. A reading stamped before a step the batcher has already corrected for is
moved by that step when it is handed over, so every reading is on the current clock.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from agent.damper import Damper, log_notices
from agent.driver import Driver, PointInfo, max_poll_seconds
from agent.errors import DeviceProtocolError, DeviceUnavailable, PortMissing
from agent.gateway.clock import ClockWatch
from agent.readings import Event, PointValue, Quality, Reading

log = structlog.get_logger(__name__)

MAX_BACKOFF_SECONDS = 300.0
# After a step, a slot is taken as current when the new clock is this fraction of an interval
# short of it (a step by whole intervals lands exactly on a slot, give or take microseconds).
REANCHOR_TOLERANCE = 0.01
MAX_ERROR_LEN = 300  # of DeviceStats.last_error (health: status command, page, topic)


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
    """One device's polling since start."""

    polls: int = 0  # polls that returned readings
    answered: int = 0  # polls the device answered (with values)
    failures: int = 0  # polls that failed (no answer, bad frame, exception answer)
    overruns: int = 0  # polls that outlasted the interval
    skipped_slots: int = 0  # slots not polled because of overruns
    readings: int = 0  # readings handed to the batcher
    down: bool = False  # failing now (logged once down, once back)
    slots: int = 0  # slots gone through, polled or not (the systemd watchdog watches it move)
    failures_in_a_row: int = 0  # failed polls since the last good one
    # the last good poll: its slot (epoch ms, current clock) and when it ended (monotonic s)
    last_good_ms: int | None = None
    last_good_monotonic: float | None = None
    last_error: str | None = None  # why the last failed poll failed (short)
    last_error_ms: int | None = None


def hang_guard(interval: float, max_poll_seconds: float | None) -> float:
    """How long a poll may take before the scheduler gives up on it.

    A driver has its own I/O timeouts; this guard only catches one that hangs anyway: twice the
    interval, at least 20 s, and never shorter than 1.5 × what the driver says a good poll may
    take (its ``max_poll_seconds``, e.g. a slow IEC 62056-21 readout at 300 baud).
    """
    guard = max(interval, 10.0) * 2
    if isinstance(max_poll_seconds, int | float) and max_poll_seconds > 0:
        guard = max(guard, 1.5 * float(max_poll_seconds))
    return guard


class DevicePoller:
    """Polls one device on its grid and hands readings and events to the batcher.

    Time comes from ``watch`` (shared by the agent's pollers and batcher), or, in tests, from
    ``clock`` (wall) and ``monotonic``; without ``monotonic`` the wall clock is taken as one
    that never steps.
    """

    def __init__(
        self,
        name: str,
        driver: Driver,
        interval: float,
        *,
        emit: Callable[[list[Reading]], None],
        event: Callable[[Event], None],
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] | None = None,
        watch: ClockWatch | None = None,
    ) -> None:
        if watch is None:
            if clock is None:
                raise ValueError("DevicePoller needs a clock or a watch")
            watch = ClockWatch(clock, monotonic or clock, synced=lambda: None)
        self.name = name
        self._driver = driver
        self._interval = interval
        self._emit = emit
        self._event = event
        self._watch = watch
        self._sleep = sleep
        self._points: Sequence[PointInfo] = driver.points
        self._units = {p.name: p.unit for p in self._points}
        self._guard = hang_guard(interval, max_poll_seconds(driver))
        self._connected = False
        self._failures = 0
        self._port_missing = False  # the last failure: its port is not there (no backoff)
        self._down_since: int | None = None
        self._frame = watch.total_ms  # the watch's step total when the current slot was stamped
        self._overrunning = 0  # slots skipped in the current overrun episode (0: on time)
        self.stats = DeviceStats()
        self._log = log.bind(device=name)
        self._damper = Damper(watch.monotonic)
        self._overrun_damper = Damper(watch.monotonic)  # overrun episodes may flap too

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def guard(self) -> float:
        """Seconds after which a poll that has not returned counts as failed."""
        return self._guard

    def _wall(self, offset: float) -> float:
        return self._watch.monotonic() + offset

    async def run(self) -> None:
        """Poll forever (until cancelled)."""
        watch = self._watch
        interval = self._interval
        watch.check()
        offset = watch.offset  # wall time = monotonic + offset, until the next step
        self._frame = watch.total_ms
        slot = next_slot(self._wall(offset), interval)
        retry_at = slot
        try:
            while True:
                delay = slot - self._wall(offset)
                if delay > 0:
                    await self._sleep(delay)
                watch.check()
                if watch.total_ms != self._frame:
                    # The wall clock stepped: poll now, stamped with the grid slot the new
                    # clock is in (a hair of tolerance so a step by whole intervals keeps the
                    # slot it lands on), and keep any backoff's remaining length.
                    offset = watch.offset
                    self._frame = watch.total_ms
                    anchored = math.floor((self._wall(offset) + REANCHOR_TOLERANCE * interval)
                                          / interval) * interval
                    retry_at += anchored - slot
                    slot = anchored
                else:
                    late = math.floor(self._wall(offset) / interval) * interval
                    if late > slot:
                        # Woke a whole interval late (the event loop was held up): a poll now
                        # is taken in a later slot, so it is stamped with that slot, and the
                        # slots it missed are accounted for as skipped.
                        self._skipped(slot - interval, late)
                        slot = late
                t_ms = round(slot * 1000)
                polled = slot >= retry_at
                if polled:
                    ok = await self._poll(t_ms)
                    retry_at = slot + (
                        interval if ok or self._port_missing
                        else interval * backoff_slots(self._failures, interval)
                    )
                else:
                    # Backing off: no I/O, but the slot is recorded as a communication error.
                    self._emit_bad(t_ms, Quality.COMM_ERROR)
                log_notices(self._log, "device", self._damper.tick())
                log_notices(self._log, "poll_overrun", self._overrun_damper.tick())
                following = slot + interval
                now = self._wall(offset)
                if now >= following:
                    following = next_slot(now, interval)
                    self._skipped(slot, following)
                elif self._overrunning and polled:
                    # (a slot skipped by backoff does no I/O: it ends no overrun episode)
                    log_notices(self._log, "poll_overrun", self._overrun_damper.change(True),
                                functools.partial(self._log.info, "poll_on_time",
                                                  skipped_slots=self._overrunning))
                    self._overrunning = 0
                slot = following
                self.stats.slots += 1
        finally:
            await self._close_driver()

    def _skipped(self, slot: float, following: float) -> None:
        """Account for the slots between ``slot`` and ``following`` an overrun skipped: counted,
        logged when overruns start, and one ``slots_skipped`` event naming them."""
        interval = self._interval
        skipped = round((following - slot) / interval) - 1
        if skipped <= 0:
            return
        self.stats.overruns += 1
        self.stats.skipped_slots += skipped
        if not self._overrunning:
            log_notices(self._log, "poll_overrun", self._overrun_damper.change(False),
                        functools.partial(self._log.warning, "poll_overrun",
                                          skipped_slots=skipped, interval_seconds=interval))
        self._overrunning += skipped
        first = round((slot + interval) * 1000)
        self._event(Event(self._now_frame(first), "slots_skipped", self.name,
                          f"slots={skipped} interval_ms={round(interval * 1000)} "
                          "reason=overrun"))

    def _now_frame(self, t_ms: int) -> int:
        """``t_ms`` stamped on the clock of this slot, moved by any step seen since."""
        return t_ms + (self._watch.total_ms - self._frame)

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
        t_ms = self._now_frame(t_ms)
        if self._down_since is not None:
            down_seconds = (t_ms - self._down_since) / 1000
            failed_polls = self._failures
            log_notices(self._log, "device", self._damper.change(True), lambda: self._log.info(
                "device_available", down_seconds=down_seconds, failed_polls=failed_polls))
            self._event(Event(t_ms, "device_up", self.name, "device answers again"))
            self._down_since = None
        self._failures = 0
        self.stats.down = False
        self.stats.answered += 1
        self.stats.failures_in_a_row = 0
        self.stats.last_good_ms = t_ms
        self.stats.last_good_monotonic = self._watch.monotonic()
        return True

    async def _close_driver(self) -> None:
        try:
            await self._driver.close()
        except Exception as exc:  # closing a broken connection may fail too; reconnect anyway
            self._log.debug("driver_close_failed", error=f"{type(exc).__name__}: {exc}")

    def _failed(self, t_ms: int, exc: Exception) -> None:
        t_ms = self._now_frame(t_ms)
        self._failures += 1
        self._port_missing = isinstance(exc, PortMissing)
        self.stats.failures += 1
        self.stats.failures_in_a_row = self._failures
        self.stats.last_error = str(exc)[:MAX_ERROR_LEN]
        self.stats.last_error_ms = t_ms
        if self._down_since is None:
            self._down_since = t_ms
            self.stats.down = True
            log_notices(self._log, "device", self._damper.change(False),
                        lambda: self._log.warning("device_unavailable", error=str(exc),
                                                  error_type=type(exc).__name__),
                        error=str(exc)[:200])
            self._event(Event(t_ms, "device_down", self.name, str(exc)))
        if isinstance(exc, DeviceUnavailable):
            self._connected = False

    def _emit_values(self, t_ms: int, values: Sequence[PointValue]) -> None:
        t_ms = self._now_frame(t_ms)
        units = self._units
        readings = [
            Reading(self.name, v.point, units.get(v.point), t_ms, v.value, v.quality)
            for v in values
        ]
        self.stats.readings += len(readings)
        self._emit(readings)

    def _emit_bad(self, t_ms: int, quality: Quality) -> None:
        t_ms = self._now_frame(t_ms)
        readings = [Reading(self.name, p.name, p.unit, t_ms, None, quality) for p in self._points]
        self.stats.readings += len(readings)
        self._emit(readings)
