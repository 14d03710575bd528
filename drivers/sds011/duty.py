"""The SDS011 sleep/work duty cycle, decided per read from an injected clock (pure logic).

The driver never sleeps to schedule: each ``read()`` asks :meth:`DutyCycle.step` what this poll
does. A cycle is ``work`` seconds awake (the first ``warmup`` of them the fan and laser settle,
readings are STALE) and ``sleep`` seconds asleep (no I/O; the last value is repeated as STALE).
Phases end at the first poll after their time is up, so with a poll interval longer than a phase
the phase stretches to the poll grid. Without a duty cycle the sensor stays awake; the warm-up
still follows every wake command (at connect and after a replug, when the fan restarts).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from agent.readings import Quality

__all__ = ["Action", "DutyCycle", "Step"]


class Action(Enum):
    """What one poll does on the wire."""

    WAKE_AND_READ = "wake_and_read"  # send the work command, then read (warm-up starts)
    READ = "read"
    SKIP = "skip"  # asleep: no I/O


@dataclass(frozen=True, slots=True)
class Step:
    """This poll's plan: the action, the quality of what it reads, and whether to sleep after."""

    action: Action
    quality: Quality
    sleep_after: bool


class DutyCycle:
    """When to wake, read and sleep; ``work``/``sleep`` None means always awake."""

    def __init__(
        self, warmup: float, work: float | None = None, sleep: float | None = None
    ) -> None:
        if (work is None) != (sleep is None):
            raise ValueError("give both work and sleep durations, or neither")
        if work is not None and work < warmup:
            raise ValueError(
                f"work ({work:g} s) is shorter than warmup ({warmup:g} s): no reading would "
                "ever be good; make work at least as long as warmup"
            )
        self.warmup = warmup
        self.work = work
        self.sleep = sleep
        self._awake_at: float | None = None
        self._asleep_at: float | None = None

    @property
    def cycling(self) -> bool:
        """True when the sensor is put to sleep between work phases."""
        return self.work is not None

    @property
    def asleep(self) -> bool:
        """True after a sleep command until the next wake."""
        return self._asleep_at is not None

    def reset(self) -> None:
        """The sensor's state is unknown (new port, replug): the next poll wakes it."""
        self._awake_at = None
        self._asleep_at = None

    def step(self, now: float) -> Step:
        """What the poll at ``now`` does."""
        if self._awake_at is None:
            asleep_at, sleep = self._asleep_at, self.sleep
            if asleep_at is not None and sleep is not None and now - asleep_at < sleep:
                return Step(Action.SKIP, Quality.STALE, sleep_after=False)
            return Step(Action.WAKE_AND_READ, Quality.STALE, sleep_after=False)
        awake = now - self._awake_at
        quality = Quality.GOOD if awake >= self.warmup else Quality.STALE
        sleep_after = self.work is not None and awake >= self.work
        return Step(Action.READ, quality, sleep_after)

    def woke(self, now: float) -> None:
        """The sensor acknowledged the work command at ``now``."""
        self._awake_at = now
        self._asleep_at = None

    def slept(self, now: float) -> None:
        """The sensor acknowledged the sleep command at ``now``."""
        self._awake_at = None
        self._asleep_at = now
