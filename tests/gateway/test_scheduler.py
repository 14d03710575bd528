"""Scheduler timing with an injected clock: alignment, backoff, overruns, down/up logged once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import cast

import pytest
from structlog.testing import capture_logs

from agent.damper import FLAP_PERIOD_SECONDS, max_lines
from agent.driver import DEFAULT_MAX_POLL_SECONDS, Driver, PointInfo, max_poll_seconds
from agent.errors import DeviceUnavailable, PortMissing
from agent.gateway.scheduler import DevicePoller, backoff_slots, hang_guard, next_slot
from agent.readings import Event, PointValue, Quality, Reading


class FakeClock:
    """Time that moves only when the poller sleeps (or a driver 'takes' time)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class ScriptedDriver:
    """A driver whose answers follow a script: True = answer, False = no answer."""

    max_poll_seconds: float | None = None

    def __init__(self, clock: FakeClock, script: Sequence[bool], read_seconds: float = 0.0):
        self._clock = clock
        self._script = list(script)
        self._read_seconds = read_seconds
        self.reads = 0
        self.connects = 0
        self.closes = 0

    @property
    def points(self) -> Sequence[PointInfo]:
        return [PointInfo("p", "W"), PointInfo("q", None)]

    async def connect(self) -> None:
        self.connects += 1

    async def read(self) -> Sequence[PointValue]:
        self._clock.now += self._read_seconds
        ok = self._script[self.reads] if self.reads < len(self._script) else True
        self.reads += 1
        if not ok:
            raise DeviceUnavailable("dev: no answer")
        return [PointValue("p", 1.5), PointValue("q", 7)]

    async def close(self) -> None:
        self.closes += 1


async def run_for(poller: DevicePoller, clock: FakeClock, until: float) -> None:
    task = asyncio.create_task(poller.run())
    while clock.now < until:
        await asyncio.sleep(0)
        if task.done():
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(
    ("now", "interval", "expected"),
    [(0.0, 10.0, 10.0), (9.99, 10.0, 10.0), (10.0, 10.0, 20.0), (1003.2, 15.0, 1005.0),
     (1_700_000_001.5, 1.0, 1_700_000_002.0)],
)
def test_next_slot_is_aligned_to_the_epoch_grid(
    now: float, interval: float, expected: float
) -> None:
    assert next_slot(now, interval) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("failures", "interval", "slots"),
    [(0, 10, 1), (1, 10, 1), (2, 10, 2), (3, 10, 4), (5, 10, 16), (9, 10, 30), (20, 1, 300)],
)
def test_backoff_doubles_and_is_capped(failures: int, interval: float, slots: int) -> None:
    assert backoff_slots(failures, interval) == slots


async def test_readings_carry_the_scheduled_time_and_values() -> None:
    clock = FakeClock(1_000_003.3)
    driver = ScriptedDriver(clock, [True] * 10, read_seconds=0.4)
    got: list[Reading] = []
    poller = DevicePoller("m1", driver, 10.0, emit=got.extend, event=lambda e: None,
                          clock=clock, sleep=clock.sleep)
    await run_for(poller, clock, 1_000_040.0)
    times = sorted({r.t for r in got})
    assert times[:3] == [1_000_010_000, 1_000_020_000, 1_000_030_000]
    first = [r for r in got if r.t == 1_000_010_000]
    assert [(r.point, r.value, r.unit, r.quality) for r in first] == [
        ("p", 1.5, "W", Quality.GOOD), ("q", 7, None, Quality.GOOD)]
    assert driver.connects == 1


async def test_dead_device_backs_off_records_bad_slots_and_logs_once() -> None:
    clock = FakeClock(0.5)
    # fails 5 times, then answers
    driver = ScriptedDriver(clock, [False] * 5 + [True] * 50)
    got: list[Reading] = []
    events: list[Event] = []
    poller = DevicePoller("m1", driver, 1.0, emit=got.extend, event=events.append,
                          clock=clock, sleep=clock.sleep)
    with capture_logs() as logs:
        await run_for(poller, clock, 40.0)
    # attempts at 1, 2 (1 slot), 4 (2 slots), 8 (4), 16 (8), then ok at 32 (16 slots)
    p_readings = sorted((r.t, r.quality) for r in got if r.point == "p")
    attempts_ok = [t for t, q in p_readings if q is Quality.GOOD]
    assert attempts_ok[0] == 32_000
    # every slot has a reading: nothing disappears while backing off
    assert [t for t, _ in p_readings] == list(range(1000, p_readings[-1][0] + 1, 1000))
    assert driver.reads >= 6
    assert all(q is Quality.COMM_ERROR for t, q in p_readings if t < 32_000)
    down = [entry for entry in logs if entry["event"] == "device_unavailable"]
    up = [entry for entry in logs if entry["event"] == "device_available"]
    assert len(down) == 1 and len(up) == 1
    assert down[0]["device"] == "m1"
    assert [e.kind for e in events] == ["device_down", "device_up"]
    assert events[0].t == 1000 and events[1].t == 32_000


async def test_overrun_is_counted_and_skipped_not_queued() -> None:
    clock = FakeClock(0.0)
    driver = ScriptedDriver(clock, [True] * 20, read_seconds=2.5)  # longer than the interval
    got: list[Reading] = []
    poller = DevicePoller("m1", driver, 1.0, emit=got.extend, event=lambda e: None,
                          clock=clock, sleep=clock.sleep)
    await run_for(poller, clock, 20.0)
    times = sorted({r.t for r in got})
    # polls at 1, 4, 7, …: each read ends 2.5 s later and the next slot after that is taken
    assert times[:4] == [1000, 4000, 7000, 10000]
    assert poller.stats.overruns >= 4


class BuggyDriver(ScriptedDriver):
    """A third-party driver with a bug: some reads raise something it should never raise."""

    async def read(self) -> Sequence[PointValue]:
        self.reads += 1
        if self.reads in (2, 3):
            raise KeyError("register_map")
        return [PointValue("p", 1.0), PointValue("q", 2)]


async def test_a_driver_bug_is_a_failed_poll_not_a_dead_agent() -> None:
    clock = FakeClock(0.5)
    driver = BuggyDriver(clock, [])
    got: list[Reading] = []
    poller = DevicePoller("m1", driver, 1.0, emit=got.extend, event=lambda e: None,
                          clock=clock, sleep=clock.sleep)
    with capture_logs() as logs:
        await run_for(poller, clock, 12.0)
    qualities = [q for t, q in sorted((r.t, r.quality) for r in got if r.point == "p")]
    assert Quality.COMM_ERROR in qualities and qualities[-1] is Quality.GOOD
    down = [e for e in logs if e["event"] == "device_unavailable"]
    assert len(down) == 1 and "KeyError" in down[0]["error"]
    assert driver.closes >= 1  # reconnects after the failure


@pytest.mark.parametrize(("interval", "max_poll", "guard"), [
    (1.0, None, 20.0),       # at least 20 s
    (60.0, None, 120.0),     # twice the interval
    (15.0, 35.0, 52.5),      # an IEC 62056-21 readout of up to 35 s at a 15-s interval
    (900.0, 35.0, 1800.0),   # a long interval already covers it
    (1.0, 0.0, 20.0),        # nonsense from a third-party driver is ignored
    (1.0, -5.0, 20.0),
])
def test_hang_guard_covers_what_the_driver_says_a_poll_may_take(
        interval: float, max_poll: float | None, guard: float) -> None:
    assert hang_guard(interval, max_poll) == guard


class OlderDriver:
    """A third-party driver written before ``max_poll_seconds`` was part of the contract."""

    @property
    def points(self) -> Sequence[PointInfo]:
        return [PointInfo("p", "W")]

    async def connect(self) -> None:
        pass

    async def read(self) -> Sequence[PointValue]:
        return [PointValue("p", 1.5)]

    async def close(self) -> None:
        pass


async def test_a_driver_without_max_poll_seconds_still_runs_with_the_plain_guard() -> None:
    older = cast(Driver, OlderDriver())
    assert not hasattr(older, "max_poll_seconds")
    assert max_poll_seconds(older) is DEFAULT_MAX_POLL_SECONDS is None
    clock = FakeClock(1_000.0)
    got: list[Reading] = []
    poller = DevicePoller("o", older, 15.0, emit=got.extend, event=lambda e: None, clock=clock,
                          sleep=clock.sleep)
    assert poller.guard == 30.0
    task = asyncio.create_task(poller.run())
    while not got:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [(r.point, r.value, r.quality) for r in got] == [("p", 1.5, Quality.GOOD)]


def test_the_iec62056_driver_declares_its_longest_readout() -> None:
    from drivers.iec62056.config import Iec62056Config
    from drivers.iec62056.driver import Iec62056Driver

    config = Iec62056Config.model_validate({
        "name": "m", "driver": "iec62056", "port": "/dev/null", "timeout": "3 s",
        "readout_timeout": "40 s", "points": [{"name": "e", "obis": "1.8.0", "unit": "kWh"}]})
    driver = Iec62056Driver(config)
    assert driver.max_poll_seconds == 45.0
    poller = DevicePoller("m", driver, 15.0, emit=lambda r: None, event=lambda e: None,
                          clock=FakeClock(0.0))
    assert poller.guard == 67.5
    # a driver that says nothing gets the plain guard
    plain = DevicePoller("p", ScriptedDriver(FakeClock(0.0), []), 15.0, emit=lambda r: None,
                         event=lambda e: None, clock=FakeClock(0.0))
    assert plain.guard == 30.0


# ------------------------------------------------------------------ wall-clock steps, skipped slots


class SteppingClocks:
    """A wall and a monotonic clock; sleeping moves both, a step moves only the wall."""

    def __init__(self, wall: float, mono: float = 100.0) -> None:
        self.wall_now = wall
        self.mono_now = mono
        self.slept = 0.0

    def wall(self) -> float:
        return self.wall_now

    def mono(self) -> float:
        return self.mono_now

    async def sleep(self, seconds: float) -> None:
        self.wall_now += seconds
        self.mono_now += seconds
        self.slept += seconds
        await asyncio.sleep(0)


class SteppingDriver:
    """Answers every read; the wall clock steps by ``steps[n]`` during read number ``n``."""

    max_poll_seconds: float | None = None

    def __init__(self, clocks: SteppingClocks, steps: dict[int, float]) -> None:
        self._clocks = clocks
        self._steps = steps
        self.reads = 0
        self.read_mono: list[float] = []

    @property
    def points(self) -> Sequence[PointInfo]:
        return [PointInfo("p", "W")]

    async def connect(self) -> None:
        pass

    async def read(self) -> Sequence[PointValue]:
        self.reads += 1
        self.read_mono.append(self._clocks.mono_now)
        self._clocks.wall_now += self._steps.get(self.reads, 0.0)
        return [PointValue("p", float(self.reads))]

    async def close(self) -> None:
        pass


async def run_mono(poller: DevicePoller, clocks: SteppingClocks, seconds: float) -> None:
    task = asyncio.create_task(poller.run())
    until = clocks.mono_now + seconds
    while clocks.mono_now < until and not task.done():
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("step", [-90.0, -3600.0, -93.7, 90.0, 400 * 86400.0, -2.5])
async def test_polling_keeps_its_interval_through_a_wall_clock_step(step: float) -> None:
    """Before: a 90 s step back stalled polling for 90 s, an hour back for the hour."""
    clocks = SteppingClocks(1_000_000.3)
    driver = SteppingDriver(clocks, {5: step})  # the clock steps during the 5th poll
    got: list[Reading] = []
    poller = DevicePoller("m1", driver, 1.0, emit=got.extend, event=lambda e: None,
                          clock=clocks.wall, monotonic=clocks.mono, sleep=clocks.sleep)
    with capture_logs() as logs:
        await run_mono(poller, clocks, 20.0)
    # a poll every second of elapsed time, through the step: no stall, no burst (a step by a
    # fraction of the interval moves the grid's phase once: one shorter gap)
    gaps = [b - a for a, b in zip(driver.read_mono, driver.read_mono[1:], strict=False)]
    assert driver.reads >= 19 and all(0.0 < g <= 1.01 for g in gaps), gaps
    assert len([g for g in gaps if g != pytest.approx(1.0, abs=0.01)]) <= 1, gaps
    times = [r.t for r in got]
    # the first five were stamped on the old clock, the rest on the new grid, one per slot
    assert times[:5] == [1_000_001_000 + 1000 * i for i in range(5)]
    after = times[5:]
    assert after == list(range(after[0], after[0] + 1000 * len(after), 1000))
    assert after[0] % 1000 == 0
    assert abs(after[0] - (times[4] + step * 1000 + 1000)) < 1000
    assert len([e for e in logs if e["event"] == "clock_step"]) == 1


async def test_a_backing_off_device_keeps_its_backoff_through_a_step() -> None:
    clocks = SteppingClocks(5_000.5)
    driver = ScriptedDriver(FakeClock(0.0), [False] * 3 + [True] * 50)
    got: list[Reading] = []
    poller = DevicePoller("m1", driver, 1.0, emit=got.extend, event=lambda e: None,
                          clock=clocks.wall, monotonic=clocks.mono, sleep=clocks.sleep)
    task = asyncio.create_task(poller.run())
    while clocks.mono_now < 103.0:  # failed at 5001 and 5002; next try at 5004
        await asyncio.sleep(0)
    clocks.wall_now -= 600.0
    while clocks.mono_now < 120.0:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    p = [(r.t, r.quality) for r in got if r.point == "p"]
    # one reading per slot throughout, the step back included
    assert len(p) == 20
    # the backoff wait is kept: the third attempt came 2 slots after the second, on the new clock
    assert driver.reads >= 4 and p[3][1] is Quality.COMM_ERROR and p[3][0] == 4_404_000 - 0


async def test_skipped_slots_are_counted_reported_and_logged_once() -> None:
    """timeout × attempts over the interval: every skipped slot is accounted for."""
    clock = FakeClock(0.0)
    driver = ScriptedDriver(clock, [True] * 20, read_seconds=2.5)
    got: list[Reading] = []
    events: list[Event] = []
    poller = DevicePoller("m1", driver, 1.0, emit=got.extend, event=events.append,
                          clock=clock, sleep=clock.sleep)
    with capture_logs() as logs:
        await run_for(poller, clock, 20.0)
    polled = sorted({r.t for r in got})
    skipped = [e for e in events if e.kind == "slots_skipped"]
    assert skipped and all(e.device == "m1" for e in skipped)
    named: set[int] = set()
    for e in skipped:
        fields = dict(word.split("=") for word in e.message.split())
        assert fields["reason"] == "overrun" and fields["interval_ms"] == "1000"
        named |= {e.t + 1000 * i for i in range(int(fields["slots"]))}
    # polled and skipped slots tile the grid exactly, from the first poll to the last
    grid = set(range(polled[0], polled[-1] + 1, 1000))
    assert named.isdisjoint(polled) and grid - set(polled) <= named
    assert poller.stats.skipped_slots == len(named)
    assert poller.stats.overruns == len(skipped)
    assert len([e for e in logs if e["event"] == "poll_overrun"]) == 1


async def test_an_overrun_episode_ends_with_one_line() -> None:
    clock = FakeClock(0.0)
    driver = ScriptedDriver(clock, [True] * 40)
    got: list[Reading] = []
    poller = DevicePoller("m1", driver, 1.0, emit=got.extend, event=lambda e: None,
                          clock=clock, sleep=clock.sleep)
    slow = [2.5, 2.5, 0.0]
    original = driver.read

    async def read() -> Sequence[PointValue]:
        clock.now += slow.pop(0) if slow else 0.0
        return await original()

    driver.read = read  # type: ignore[method-assign]
    with capture_logs() as logs:
        await run_for(poller, clock, 15.0)
    events = [e["event"] for e in logs if e["event"] in ("poll_overrun", "poll_on_time")]
    assert events == ["poll_overrun", "poll_on_time"]
    assert poller.stats.skipped_slots == 4


async def test_a_poll_in_flight_when_another_task_sees_the_step_lands_on_the_new_clock() -> None:
    """The batcher has already moved what it holds; a reading stamped before the step and
    handed over after it is moved by the poller, so all of them are on one clock."""
    from agent.gateway.clock import ClockWatch

    clocks = SteppingClocks(2_000.0)
    watch = ClockWatch(clocks.wall, clocks.mono, synced=lambda: None)
    seen: list[int] = []
    watch.on_step(lambda step: seen.append(step.ms))

    class StepMidRead(SteppingDriver):
        async def read(self) -> Sequence[PointValue]:
            values = await super().read()
            if self.reads == 3:
                watch.check()  # e.g. the batcher's flush sees the step while this poll runs
            return values

    driver = StepMidRead(clocks, {3: -600.0})
    got: list[Reading] = []
    events: list[Event] = []
    poller = DevicePoller("m1", driver, 1.0, emit=got.extend, event=events.append,
                          watch=watch, sleep=clocks.sleep)
    await run_mono(poller, clocks, 6.0)
    assert seen == [-600_000]
    times = [r.t for r in got]
    # polls at 2001, 2002 on the old clock; the third (stamped 2003, read during the step) is
    # moved to 1403; then 1404, 1405, … on the new grid
    assert times[:2] == [2_001_000, 2_002_000]
    assert times[2:] == list(range(1_403_000, 1_403_000 + 1000 * len(times[2:]), 1000))


async def test_a_poll_that_wakes_intervals_late_is_stamped_with_the_slot_it_is_taken_in() -> None:
    """An event loop held up for 2.5 intervals: the poll taken then belongs to the slot it is
    taken in, not the one it was scheduled for, and the slots in between are skipped, named."""
    clock = FakeClock(0.0)
    driver = ScriptedDriver(clock, [True] * 20)
    got: list[Reading] = []
    events: list[Event] = []
    late = [0.0, 0.0, 2.5]  # the third sleep returns 2.5 s after it was due

    async def sleep(seconds: float) -> None:
        clock.now += seconds + (late.pop(0) if late else 0.0)
        await asyncio.sleep(0)

    poller = DevicePoller("m1", driver, 1.0, emit=got.extend, event=events.append,
                          clock=clock, sleep=sleep)
    await run_for(poller, clock, 8.0)
    polled = sorted({r.t for r in got})
    # slots 1 and 2 polled on time; the sleep towards 3 woke at 5.5: polled as slot 5
    assert polled[:4] == [1000, 2000, 5000, 6000], polled
    skipped = [e for e in events if e.kind == "slots_skipped"]
    assert [(e.t, e.message.split()[0]) for e in skipped] == [(3000, "slots=2")], skipped
    assert poller.stats.skipped_slots == 2


async def test_a_device_flapping_for_a_day_logs_a_bounded_number_of_lines() -> None:
    """Down at one poll, back at the next, for a simulated day at 10 s: before, two lines per
    cycle (8,640); now the damper's few single changes, one device_flapping and a summary per
    period. The platform still gets every device_down/device_up event."""
    day = 86_400.0
    clock = FakeClock(0.5)
    driver = ScriptedDriver(clock, [False, True] * int(day / 20))
    events: list[Event] = []
    poller = DevicePoller("m1", driver, 10.0, emit=lambda r: None, event=events.append,
                          clock=clock, sleep=clock.sleep)
    with capture_logs() as logs:
        await run_for(poller, clock, day)
    kinds = Counter(str(line["event"]) for line in logs)
    assert kinds == {"device_unavailable": 2, "device_available": 2, "device_flapping": 1,
                     "device_flapping_summary": int(day / FLAP_PERIOD_SECONDS) - 1}, kinds
    assert sum(kinds.values()) <= max_lines(day)
    flapping = next(line for line in logs if line["event"] == "device_flapping")
    assert flapping["state"] == "down" and flapping["error"] == "dev: no answer"
    summary = next(line for line in logs if line["event"] == "device_flapping_summary")
    assert summary["downs"] + summary["ups"] >= 88 and summary["device"] == "m1"
    changes = Counter(e.kind for e in events)
    assert changes["device_down"] >= day / 20 - 2 and changes["device_up"] >= day / 20 - 2

    # steady again for a period: one device_flapping_ended, then a single outage is logged
    driver._script.extend([True] * 100 + [False] + [True] * 10)
    with capture_logs() as logs:
        await run_for(poller, clock, day + 1100.0)
    names = [line["event"] for line in logs]
    assert names[-3:] == ["device_flapping_ended", "device_unavailable", "device_available"]
    assert set(names[:-3]) <= {"device_flapping_summary"}, names  # the period's tail
    assert logs[-3]["state"] == "up"


class AlternatelySlowDriver(ScriptedDriver):
    """Answers always, but every other read outlasts the interval."""

    async def read(self) -> Sequence[PointValue]:
        self._clock.now += 1.5 if self.reads % 2 == 0 else 0.1
        self.reads += 1
        return [PointValue("p", 1.5), PointValue("q", 7)]


async def test_overrun_episodes_that_flap_are_damped_too() -> None:
    clock = FakeClock(0.5)
    driver = AlternatelySlowDriver(clock, [])
    poller = DevicePoller("m1", driver, 1.0, emit=lambda r: None, event=lambda e: None,
                          clock=clock, sleep=clock.sleep)
    with capture_logs() as logs:
        await run_for(poller, clock, 7200.0)
    kinds = Counter(str(line["event"]) for line in logs)
    assert poller.stats.overruns >= 2000  # the input: an episode every few seconds
    assert kinds["poll_overrun"] + kinds["poll_on_time"] == 4, kinds
    assert kinds["poll_overrun_flapping"] == 1, kinds
    assert kinds["poll_overrun_flapping_summary"] == 7, kinds
    assert sum(kinds.values()) <= max_lines(7200.0)


class UnpluggedDriver(ScriptedDriver):
    """Its port is missing (PortMissing) for the scripted failures, like an unplugged
    USB adapter, then it answers."""

    async def connect(self) -> None:
        self.connects += 1
        if self.reads < len(self._script) and not self._script[self.reads]:
            self.reads += 1
            raise PortMissing("dev: serial port /dev/ttyUSB0 does not exist")


async def test_a_missing_port_is_tried_at_every_slot_and_logged_once() -> None:
    """Opening a missing port costs nothing on the wire: no backoff, so the adapter is picked
    up at the first slot after it is plugged back, and the outage is still logged once."""
    clock = FakeClock(0.5)
    driver = UnpluggedDriver(clock, [False] * 20 + [True] * 20)
    got: list[Reading] = []
    poller = DevicePoller("m1", driver, 1.0, emit=got.extend, event=lambda e: None,
                          clock=clock, sleep=clock.sleep)
    with capture_logs() as logs:
        await run_for(poller, clock, 30.0)
    good = sorted(r.t for r in got if r.point == "p" and r.quality is Quality.GOOD)
    assert good[0] == 21_000  # 20 slots missing, tried at each: back at the 21st
    assert driver.connects == 21
    assert [e["event"] for e in logs] == ["device_unavailable", "device_available"]
    assert logs[0]["error_type"] == "PortMissing" and logs[1]["failed_polls"] == 20
