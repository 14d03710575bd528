"""The fixed facts of one KPI (:class:`KpiContext`) and what its windows should hold
(:class:`ItemScope`): shared by every accumulator and runner."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from agent.kpi.calendar import Calendar
from agent.kpi.operators import coverage, expected_items
from agent.kpi.output import Emit, Extra, KpiOutput
from agent.units import KpiDuration

if TYPE_CHECKING:
    from agent.config import KpiConfig

__all__ = ["ItemScope", "KpiContext", "State", "in_clock"]


State: TypeAlias = dict[str, Any]
_DAY_SECONDS = 86400


class KpiContext:
    """The fixed facts of one KPI that every part of its pipeline needs."""

    def __init__(
        self, config: KpiConfig, calendar: Calendar, emit: Emit, default_unit: str | None
    ) -> None:
        self.config = config
        self.name = config.name
        self.src = config.source
        self.calendar = calendar
        self.emit = emit
        self.scale = config.scale
        self.window = config.window_duration
        self.base = config.base_duration
        interval = config.sample_interval_duration
        self.interval_ms = 0 if interval is None else interval.seconds * 1000
        self.min_coverage = config.min_coverage
        self.unit = config.unit if config.unit is not None else default_unit

    def output(
        self,
        start: int,
        end: int,
        value: float | int | None,
        *,
        valid: bool,
        n: int,
        expected: int,
        extras: Mapping[str, Extra] | None = None,
        always: Iterable[str] = (),
        cover: float | None = None,
    ) -> KpiOutput:
        """An output; when not valid, the value and every extra not in ``always`` are null."""
        shown = dict(extras or {})
        if not valid:
            value = None
            keep = set(always)
            shown = {key: (item if key in keep else None) for key, item in shown.items()}
        return KpiOutput(
            kpi=self.name,
            src=self.src,
            start=start,
            end=end,
            value=value,
            valid=valid,
            n=n,
            expected=expected,
            coverage=coverage(n, expected) if cover is None else cover,
            unit=self.unit,
            extras=shown,
        )


class ItemScope:
    """What the items of a window are, for ``expected``: readings, or steps of a duration."""

    def __init__(self, calendar: Calendar, interval_ms: int, step: KpiDuration | None) -> None:
        self.calendar = calendar
        self.interval_ms = interval_ms
        self.step = step

    def total(self, start: int, end: int) -> int:
        """Items the window ``[start, end)`` should hold."""
        if self.step is not None:
            return self.calendar.count(self.step, start, end)
        return expected_items(end - start, self.interval_ms)

    def in_clock(self, start: int, end: int, low: int, high: int) -> int:
        """Items expected at local wall times of day in ``[low, high)`` (wrapping midnight)."""
        if self.step is None:
            seconds = _clock_span(self.calendar, start, end, low, high)
            return expected_items(seconds * 1000, self.interval_ms)
        return sum(
            1
            for step_start, _ in self.calendar.windows(self.step, start, end)
            if in_clock(self.calendar.wall_seconds(step_start), low, high)
        )


def in_clock(wall: int, low: int, high: int) -> bool:
    return low <= wall < high if low < high else wall >= low or wall < high


def _clock_span(calendar: Calendar, start: int, end: int, low: int, high: int) -> int:
    if low < high:
        return calendar.clock_span_seconds(start, end, low, high)
    return calendar.clock_span_seconds(start, end, low, _DAY_SECONDS) + (
        calendar.clock_span_seconds(start, end, 0, high)
    )
