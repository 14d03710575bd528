"""Wall-clock steps and the kernel's NTP status, for a gateway without a real-time clock.

A Raspberry Pi boots with the clock at its last shutdown (fake-hwclock) or at 1970, and NTP
steps it later, by months. The agent stamps readings with wall-clock time but must measure
intervals and ages on a clock that does not jump, so it watches the difference between the
two:

- :class:`StepDetector` (pure, time injected): ``offset = wall − monotonic``. Between two
  looks the offset only moves by NTP slewing (at most 0.5 ms per second); a move of more than
  ``STEP_THRESHOLD_SECONDS`` is a step of the wall clock, by that amount. The agent's
  "monotonic" clock is :func:`elapsed_clock` (``CLOCK_BOOTTIME`` on Linux: monotonic, and it
  keeps counting while the machine is suspended, so a resume is not taken for a step).
- :class:`ClockWatch`: the one place that looks (every poll and every flush), logs a step once
  (``clock_step``) and tells its listeners once (the batcher sends it upstream as a
  ``clock_step`` event and corrects the readings it still holds).
- :func:`kernel_clock_synced`: whether the kernel says the clock is NTP-synchronised, read with
  ``adjtimex(2)`` (``modes = 0``: read only, needs no privilege).
"""

from __future__ import annotations

import ctypes
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

# NTP slews at most 500 ppm: 2 s of slew takes more than an hour, and the watch looks at least
# once per flush_interval. A change over 2 s between two looks cannot be slewing.
STEP_THRESHOLD_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class ClockStep:
    """The wall clock moved by ``seconds`` (negative: back) relative to elapsed time."""

    seconds: float
    wall: float  # wall time (epoch s) when it was seen, on the new clock
    monotonic: float

    @property
    def ms(self) -> int:
        """The step in whole milliseconds (what timestamps are corrected by)."""
        return round(self.seconds * 1000)


class StepDetector:
    """Pure step detection on ``wall − monotonic``; feed it readings of both clocks."""

    def __init__(self, wall: float, monotonic: float,
                 threshold: float = STEP_THRESHOLD_SECONDS) -> None:
        self.offset = wall - monotonic
        self.threshold = threshold

    def observe(self, wall: float, monotonic: float) -> ClockStep | None:
        """The step since the last look, or None; the offset follows slewing either way."""
        offset = wall - monotonic
        moved = offset - self.offset
        self.offset = offset
        if abs(moved) > self.threshold:
            return ClockStep(moved, wall, monotonic)
        return None


class ClockWatch:
    """The agent's wall and monotonic clocks, and every step between them, seen once."""

    def __init__(self, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] | None = None, *,
                 threshold: float = STEP_THRESHOLD_SECONDS,
                 synced: Callable[[], bool | None] | None = None) -> None:
        self.wall = wall
        self.monotonic = monotonic or elapsed_clock
        self._synced = synced if synced is not None else kernel_clock_synced
        self._detector = StepDetector(wall(), self.monotonic(), threshold)
        self._listeners: list[Callable[[ClockStep], None]] = []
        self.steps = 0
        self._last_synced: bool | str | None = "never asked"
        # Sum of the steps seen so far: a timestamp taken when this was S is corrected by
        # (total − S) to the current clock.
        self.total_ms = 0

    def on_step(self, listener: Callable[[ClockStep], None]) -> None:
        """Call ``listener`` once for every step (in the order they are added)."""
        self._listeners.append(listener)

    def check(self) -> ClockStep | None:
        """Look at both clocks; a step is logged and passed to the listeners here, once."""
        step = self._detector.observe(self.wall(), self.monotonic())
        if step is None:
            return None
        self.steps += 1
        self.total_ms += step.ms
        log.warning("clock_step", step_seconds=round(step.seconds, 3),
                    direction="forward" if step.seconds > 0 else "back",
                    synced=self.synced())
        for listener in self._listeners:
            listener(step)
        return step

    @property
    def offset(self) -> float:
        """``wall − monotonic`` as of the last look: wall time of a monotonic instant."""
        return self._detector.offset

    def synced(self) -> bool | None:
        """What the kernel says of the clock: synchronised, not, or None (unknown); logged
        when it says "not synchronised" and when that ends."""
        now = self._synced()
        if now is not self._last_synced:
            if now is False:
                log.warning("clock_not_synchronised",
                            detail="the kernel says the clock is not NTP-synchronised; "
                                   "batches say so until it is")
            elif now is True and self._last_synced is False:
                log.info("clock_synchronised")
            self._last_synced = now
        return now


def elapsed_clock() -> float:
    """Seconds on a clock no wall-clock step moves: ``CLOCK_BOOTTIME`` where there is one
    (Linux; it counts time suspended too), else ``time.monotonic``."""
    return time.clock_gettime(_ELAPSED_CLOCK) if _ELAPSED_CLOCK is not None else time.monotonic()


_ELAPSED_CLOCK: int | None = getattr(time, "CLOCK_BOOTTIME", None)


# --------------------------------------------------------------------------------- adjtimex

_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


class _Timex(ctypes.Structure):
    # struct timex of <sys/timex.h> (Linux, glibc/musl): ints and longs, then 11 reserved ints.
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long), ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long), ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_reserved", ctypes.c_int * 11),
    ]


@functools.cache
def _load_adjtimex() -> Callable[..., int] | None:
    """libc's adjtimex, or None where there is none (looked up once)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # the symbols the interpreter already has (libc's among them), as allocator.py does:
        # ctypes.util.find_library would run ldconfig and import shutil, tempfile and random
        libc = ctypes.CDLL(None, use_errno=True)
        call: Callable[..., int] = libc.adjtimex
    except (OSError, AttributeError):
        return None
    return call


def unsynced_from_timex(result: int, status: int) -> bool:
    """Pure: whether adjtimex's return value and ``status`` say "not synchronised"."""
    return result == _TIME_ERROR or bool(status & _STA_UNSYNC)


def kernel_clock_synced() -> bool | None:
    """The kernel's NTP status: True (synchronised), False (STA_UNSYNC / TIME_ERROR), or None
    where it cannot be read (not Linux, no libc adjtimex, a sandbox that refuses the call)."""
    call = _load_adjtimex()
    if call is None:
        return None
    timex = _Timex()  # modes = 0: read only
    result = call(ctypes.byref(timex))
    if result < 0:
        return None
    return not unsynced_from_timex(result, timex.status)
