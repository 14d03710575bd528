"""Clock steps (pure detection, the watch that reports them once) and the kernel's NTP status."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.gateway.clock import (
    STEP_THRESHOLD_SECONDS,
    ClockStep,
    ClockWatch,
    StepDetector,
    kernel_clock_synced,
    unsynced_from_timex,
)


@pytest.mark.parametrize(("looks", "steps"), [
    # (wall, monotonic) looks after a start at wall 1000, monotonic 10
    ([(1001.0, 11.0), (1002.0, 12.0)], []),                       # both move together
    ([(1001.0, 11.0), (911.0, 12.0)], [-91.0]),                   # 90 s back
    ([(-2599.0, 11.0)], [-3600.0]),                               # an hour back
    ([(1000.0 + 180 * 86400 + 15, 25.0)], [180 * 86400.0]),       # NTP, 180 days forward
    ([(1001.0, 11.0), (1002.0 + STEP_THRESHOLD_SECONDS, 12.0)], []),  # at the threshold: not
    ([(1001.0, 11.0), (1004.1, 12.0)], [2.1]),                    # just over it
    ([(1000.5, 11.0), (1001.0, 12.0), (1001.5, 13.0), (1002.0, 14.0), (1002.5, 15.0)], []),
    ([(990.0, 11.0), (991.0, 12.0), (1001.0, 13.0)], [-11.0, 9.0]),  # back, then forward again
])
def test_steps_are_offset_changes_beyond_the_threshold(
        looks: list[tuple[float, float]], steps: list[float]) -> None:
    detector = StepDetector(1000.0, 10.0)
    seen = [detector.observe(w, m) for w, m in looks]
    assert [pytest.approx(s.seconds) for s in seen if s is not None] == steps


@given(drift_ppm=st.floats(-500, 500), looks=st.integers(1, 500),
       gap=st.floats(0.01, 3600.0))
def test_ntp_slewing_is_never_a_step(drift_ppm: float, looks: int, gap: float) -> None:
    """Slewing (≤ 500 ppm) between looks up to an hour apart never adds up to a step."""
    detector = StepDetector(1_700_000_000.0, 0.0)
    wall, mono = 1_700_000_000.0, 0.0
    for _ in range(looks):
        mono += gap
        wall += gap * (1 + drift_ppm / 1e6)
        assert detector.observe(wall, mono) is None


@given(step=st.one_of(st.floats(-1e9, -2.001), st.floats(2.001, 1e9)),
       before=st.floats(0, 1e6), after=st.floats(0, 100))
def test_a_step_is_seen_once_with_its_size(step: float, before: float, after: float) -> None:
    detector = StepDetector(1_000_000.0, 5.0)
    assert detector.observe(1_000_000.0 + before, 5.0 + before) is None
    seen = detector.observe(1_000_000.0 + before + 1.0 + step, 5.0 + before + 1.0)
    assert seen is not None and seen.seconds == pytest.approx(step, abs=1e-6)
    assert seen.ms == round(seen.seconds * 1000)
    # the same clock looked at again: no second report
    assert detector.observe(1_000_000.0 + before + 1.0 + step + after,
                            5.0 + before + 1.0 + after) is None


class Clocks:
    def __init__(self) -> None:
        self.wall_now = 1_000.0
        self.mono_now = 7.0

    def wall(self) -> float:
        return self.wall_now

    def mono(self) -> float:
        return self.mono_now


def test_the_watch_logs_and_tells_its_listeners_once_per_step() -> None:
    clocks = Clocks()
    watch = ClockWatch(clocks.wall, clocks.mono, synced=lambda: True)
    heard: list[ClockStep] = []
    watch.on_step(heard.append)
    with capture_logs() as logs:
        clocks.wall_now -= 90
        assert watch.check() is not None
        for _ in range(5):
            clocks.wall_now += 1
            clocks.mono_now += 1
            assert watch.check() is None
        clocks.wall_now += 3600
        watch.check()
    steps = [e for e in logs if e["event"] == "clock_step"]
    assert [s["step_seconds"] for s in steps] == [-90.0, 3600.0]
    assert [s["direction"] for s in steps] == ["back", "forward"]
    assert [h.ms for h in heard] == [-90_000, 3_600_000]
    assert watch.steps == 2 and watch.total_ms == 3_510_000
    assert watch.offset == pytest.approx(1000.0 - 7.0 + 3510.0)


def test_the_watch_logs_an_unsynchronised_clock_once_and_its_end_once() -> None:
    said: list[bool | None] = [False]
    watch = ClockWatch(lambda: 0.0, lambda: 0.0, synced=lambda: said[0])
    with capture_logs() as logs:
        for value in (False, False, False, True, True, None, True):
            said[0] = value
            watch.synced()
    events = [e["event"] for e in logs]
    assert events == ["clock_not_synchronised", "clock_synchronised"]


@pytest.mark.parametrize(("result", "status", "unsynced"), [
    (0, 0x0001, False),    # TIME_OK, STA_PLL
    (0, 0x0040, True),     # STA_UNSYNC set
    (5, 0x0000, True),     # TIME_ERROR
    (5, 0x0040, True),
    (1, 0x2001, False),    # TIME_INS (leap second pending), synchronised
])
def test_ntp_status_from_adjtimex(result: int, status: int, unsynced: bool) -> None:
    assert unsynced_from_timex(result, status) is unsynced


def test_the_kernel_is_asked_read_only_and_answers_or_says_unknown() -> None:
    # No privilege is needed for modes = 0; an answer is a bool (None where unavailable).
    assert kernel_clock_synced() in (True, False, None)
