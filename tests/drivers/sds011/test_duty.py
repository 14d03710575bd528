"""The SDS011 duty cycle as a table: what each poll does at which time."""

from __future__ import annotations

import pytest

from agent.readings import Quality
from drivers.sds011.duty import Action, DutyCycle

G, S = Quality.GOOD, Quality.STALE
WAKE, READ, SKIP = Action.WAKE_AND_READ, Action.READ, Action.SKIP


def run(duty: DutyCycle, times: list[float]) -> list[tuple[Action, Quality, bool]]:
    """Poll at ``times`` with every command acknowledged; the steps taken."""
    steps = []
    for now in times:
        step = duty.step(now)
        if step.action is WAKE:
            duty.woke(now)
        if step.sleep_after:
            duty.slept(now)
        steps.append((step.action, step.quality, step.sleep_after))
    return steps


@pytest.mark.parametrize(
    ("work", "sleep", "times", "expected"),
    [
        # Always on: wake once, warm up 30 s, then good for ever.
        (None, None, [0, 15, 30, 45, 600],
         [(WAKE, S, False), (READ, S, False), (READ, G, False), (READ, G, False),
          (READ, G, False)]),
        # 45 s work, 60 s sleep, polled every 15 s.
        (45, 60, [0, 15, 30, 45, 60, 75, 90, 105, 120, 135, 150],
         [(WAKE, S, False), (READ, S, False), (READ, G, False), (READ, G, True),
          (SKIP, S, False), (SKIP, S, False), (SKIP, S, False), (WAKE, S, False),
          (READ, S, False), (READ, G, False), (READ, G, True)]),
        # Polled every 60 s, slower than the phases: each phase stretches to the grid.
        (30, 60, [0, 60, 120, 180, 240],
         [(WAKE, S, False), (READ, G, True), (WAKE, S, False), (READ, G, True),
          (WAKE, S, False)]),
    ],
)
def test_duty_table(
    work: float | None,
    sleep: float | None,
    times: list[float],
    expected: list[tuple[Action, Quality, bool]],
) -> None:
    assert run(DutyCycle(30, work, sleep), [float(t) for t in times]) == expected


def test_reset_wakes_again_and_restarts_the_warmup() -> None:
    duty = DutyCycle(30)
    run(duty, [0.0, 40.0])
    duty.reset()  # a replug power-cycles the sensor
    assert run(duty, [50.0, 60.0, 80.0]) == [(WAKE, S, False), (READ, S, False), (READ, G, False)]


def test_unacknowledged_sleep_is_retried_at_the_next_poll() -> None:
    duty = DutyCycle(10, 20, 60)
    duty.woke(0.0)
    assert duty.step(20.0).sleep_after  # the sleep command got no echo: slept() not called
    assert duty.step(35.0).sleep_after
    assert not duty.asleep


@pytest.mark.parametrize(
    ("warmup", "work", "sleep", "message"),
    [(30, 20, 60, "shorter than warmup"), (30, 40, None, "both"), (30, None, 60, "both")],
)
def test_bad_duty_cycles(
    warmup: float, work: float | None, sleep: float | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        DutyCycle(warmup, work, sleep)
