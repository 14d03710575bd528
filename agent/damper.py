"""Log damping for a thing that goes down and up (a device, the uplink): bounded lines a day.

A device or an uplink that flaps (down and up every few seconds) would otherwise log two lines
per cycle, ~8,600 a day at a 10 s flap. The rule (docs/operations.md "Logs"):

- Each state change is logged on its own while the thing changed at most ``limit`` times in
  the last ``period`` (the change itself counted).
- The change that exceeds that is not logged; one ``…_flapping`` line says so instead. While
  flapping no change is logged; a ``…_flapping_summary`` line every ``period`` (counted from
  the ``…_flapping`` line) says how many downs and ups there were and the state now.
- When nothing changed for ``quiet`` seconds, one ``…_flapping_ended`` line gives the state
  then; changes are logged on their own again (still at most ``limit`` per ``period``).

So over any stretch of ``D`` seconds at most :func:`max_lines` (``D``) lines are written,
whatever the changes (e.g. 679 a day with the defaults; a steady flap gives about one line per
``period``). Pure: time comes from the ``clock`` given (monotonic seconds), and the
:class:`Notice` values say what to log; the caller writes the lines.

:class:`Repeats` damps a condition that recurs rather than flaps (the buffer dropping a batch
at every seal while the uplink is dead): one line, then one summary per ``period`` at most.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["FLAP_LIMIT", "FLAP_PERIOD_SECONDS", "Damper", "Notice", "Repeats", "Tally",
           "log_notices", "max_lines"]

FLAP_LIMIT = 4
"""State changes logged one by one per ``FLAP_PERIOD_SECONDS``: two outages and their ends."""
FLAP_PERIOD_SECONDS = 900.0
"""The window of the limit, the time between summaries, and the quiet that ends flapping."""

NoticeKind = Literal["change", "flapping", "summary", "ended"]


@dataclass(frozen=True, slots=True)
class Notice:
    """One line to log.

    ``change``: log the state change itself (the caller's own line, e.g. device_unavailable).
    ``flapping``: it started to flap; ``changes`` in the last ``seconds`` (the period).
    ``summary``: still flapping; ``downs``/``ups`` since the previous notice, ``seconds``
    flapping so far. ``ended``: stable for the quiet time; ``downs``/``ups`` since the previous
    notice, ``seconds`` it flapped (until its last change).
    """

    kind: NoticeKind
    up: bool
    downs: int = 0
    ups: int = 0
    changes: int = 0
    seconds: float = 0.0

    @property
    def state(self) -> str:
        """``up`` or ``down``: the state now."""
        return "up" if self.up else "down"

    def event(self, subject: str) -> str:
        """The event name for ``subject`` (``device``, ``uplink``); not for ``change``."""
        return subject if self.kind == "change" else f"{subject}_flapping" + {
            "flapping": "", "summary": "_summary", "ended": "_ended"}[self.kind]

    def fields(self) -> dict[str, object]:
        """The log line's fields."""
        if self.kind == "flapping":
            return {"state": self.state, "changes": self.changes,
                    "period_seconds": round(self.seconds)}
        if self.kind in ("summary", "ended"):
            return {"state": self.state, "downs": self.downs, "ups": self.ups,
                    "flapping_seconds": round(self.seconds)}
        return {"state": self.state}


def max_lines(seconds: float, *, limit: int = FLAP_LIMIT, period: float = FLAP_PERIOD_SECONDS,
              quiet: float | None = None) -> int:
    """The most lines a :class:`Damper` lets through in any ``seconds``, whatever the changes.

    Single changes: at most ``limit`` in any window of ``period``. ``flapping`` and ``ended``
    lines: one each per episode, and episodes are ``quiet`` apart. Summaries: one per
    ``period`` of flapping.
    """
    quiet = period if quiet is None else quiet
    windows = math.floor(seconds / period) + 1  # of a closed stretch
    episodes = math.floor(seconds / quiet) + 1
    return limit * windows + 2 * episodes + math.floor(seconds / period) + 1


class Damper:
    """Decides which state changes of one thing are logged (see the module's rule)."""

    def __init__(self, clock: Callable[[], float], *, limit: int = FLAP_LIMIT,
                 period: float = FLAP_PERIOD_SECONDS, quiet: float | None = None) -> None:
        if limit < 1 or period <= 0:
            raise ValueError(f"limit must be ≥ 1 and period > 0 (got {limit}, {period})")
        self._clock = clock
        self._limit = limit
        self._period = period
        self._quiet = period if quiet is None else quiet
        self._recent: deque[float] = deque()  # times of the changes in the last period
        self._flapping_since: float | None = None
        self._next_summary = 0.0
        self._last_change = -math.inf
        self._up = True
        self._downs = 0  # since the last notice while flapping
        self._ups = 0

    @property
    def flapping(self) -> bool:
        """True while changes are not logged one by one."""
        return self._flapping_since is not None

    def change(self, up: bool) -> list[Notice]:
        """The thing went up (``up``) or down now: what to log (maybe nothing)."""
        notices = self.tick()
        now = self._clock()
        self._up = up
        self._last_change = now
        recent = self._recent
        recent.append(now)
        while recent and recent[0] <= now - self._period:
            recent.popleft()
        if self._flapping_since is not None:
            if up:
                self._ups += 1
            else:
                self._downs += 1
            return notices
        if len(recent) <= self._limit:
            notices.append(Notice("change", up))
            return notices
        self._flapping_since = now
        self._next_summary = now + self._period
        self._downs = self._ups = 0
        notices.append(Notice("flapping", up, changes=len(recent), seconds=self._period))
        return notices

    def tick(self) -> list[Notice]:
        """Call now and then (each poll, each reconnect): a summary or the end of flapping."""
        since = self._flapping_since
        if since is None:
            return []
        now = self._clock()
        if now - self._last_change >= self._quiet:
            notice = Notice("ended", self._up, self._downs, self._ups,
                            seconds=max(0.0, self._last_change - since))
            self._flapping_since = None
            return [notice]
        if now < self._next_summary:
            return []
        notice = Notice("summary", self._up, self._downs, self._ups, seconds=now - since)
        self._downs = self._ups = 0
        # a tick late by several periods gives one summary, not a burst
        behind = math.floor((now - self._next_summary) / self._period) + 1
        self._next_summary += behind * self._period
        return [notice]



def log_notices(logger: Any, subject: str, notices: list[Notice],
                change: Callable[[], None] | None = None, **context: object) -> None:
    """Write what the damper let through on ``logger`` (a structlog logger): ``change()`` logs
    a single change the caller's own way; the others become ``{subject}_flapping…`` lines
    with ``context`` added (such as the last error)."""
    for notice in notices:
        if notice.kind == "change":
            if change is not None:
                change()
            continue
        level = logger.warning if notice.kind == "flapping" else logger.info
        level(notice.event(subject), **notice.fields(), **context)


@dataclass(frozen=True, slots=True)
class Tally:
    """Occurrences of a repeated condition not logged one by one, and what they added up to,
    over ``seconds`` since the previous line."""

    occurrences: int
    totals: dict[str, int]
    seconds: float


class Repeats:
    """A condition that may recur at every flush or seal: an occurrence is logged on its own
    when the previous line about it is at least ``period`` old; the others are added up into a
    :class:`Tally`, logged once that line is ``period`` old (at the next occurrence or tick).
    So at most one line per ``period``, plus one."""

    def __init__(self, clock: Callable[[], float], *,
                 period: float = FLAP_PERIOD_SECONDS) -> None:
        self._clock = clock
        self._period = period
        self._last_line = -math.inf
        self._occurrences = 0
        self._totals: dict[str, int] = {}

    def occurred(self, **counts: int) -> Literal["log"] | Tally | None:
        """It happened again, adding ``counts``: ``"log"`` (log this one), a :class:`Tally`
        to log instead (this one included), or None (added up, nothing to log now)."""
        if self._clock() - self._last_line >= self._period and not self._occurrences:
            self._last_line = self._clock()
            return "log"
        self._occurrences += 1
        for key, n in counts.items():
            self._totals[key] = self._totals.get(key, 0) + n
        return self.tick()

    def flush(self) -> Tally | None:
        """The tally of what was added up since the last line, due or not (at shutdown)."""
        if not self._occurrences:
            return None
        tally = Tally(self._occurrences, self._totals, self._clock() - self._last_line)
        self._occurrences, self._totals, self._last_line = 0, {}, self._clock()
        return tally

    def tick(self) -> Tally | None:
        """Call now and then: the tally, once the last line is ``period`` old."""
        now = self._clock()
        if not self._occurrences or now - self._last_line < self._period:
            return None
        tally = Tally(self._occurrences, self._totals, now - self._last_line)
        self._occurrences, self._totals, self._last_line = 0, {}, now
        return tally
