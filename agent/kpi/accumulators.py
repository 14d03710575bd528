"""Window accumulators (docs/kpis.md §4): the valid items of one window, (time, value) in time
order, folded into one output when the window closes."""

from __future__ import annotations

import math
from typing import Any, Protocol

from agent.kpi.calendar import Calendar
from agent.kpi.context import ItemScope, KpiContext, in_clock
from agent.kpi.operators import (
    aqi_category,
    aqi_us_pm25,
    energy,
    is_valid,
    lden_level,
    level_of_energy,
    percentile,
)
from agent.kpi.output import Extra, KpiOutput


class Accumulator(Protocol):
    n: int

    def add(self, t: int, x: float) -> None: ...

    def result(self, kpi: KpiContext, scope: ItemScope, start: int, end: int) -> KpiOutput: ...

    def state(self) -> list[Any]: ...

    def load(self, state: list[Any]) -> None: ...


class TotalAcc:
    """Valid items and their running total, in time order: what ``mean``, ``sum``,
    ``energetic_mean`` (a total of energies) and the daily AQI keep of a window."""

    __slots__ = ("n", "total")

    def __init__(self) -> None:
        self.n = 0
        self.total = 0.0

    def add(self, t: int, x: float) -> None:
        self.n += 1
        self.total += x

    def state(self) -> list[Any]:
        return [self.n, self.total]

    def load(self, state: list[Any]) -> None:
        self.n, self.total = int(state[0]), float(state[1])


class MeanAcc(TotalAcc):
    """``mean`` and ``sum``."""

    __slots__ = ("is_sum",)

    def __init__(self, *, is_sum: bool) -> None:
        super().__init__()
        self.is_sum = is_sum

    def result(self, kpi: KpiContext, scope: ItemScope, start: int, end: int) -> KpiOutput:
        expected = scope.total(start, end)
        valid = is_valid(self.n, expected, kpi.min_coverage)
        value = self.total if self.is_sum else (self.total / self.n if self.n else None)
        return kpi.output(start, end, value, valid=valid, n=self.n, expected=expected)


class CountAcc:
    """``count``: the number of valid items; always valid."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def add(self, t: int, x: float) -> None:
        self.n += 1

    def result(self, kpi: KpiContext, scope: ItemScope, start: int, end: int) -> KpiOutput:
        expected = scope.total(start, end)
        return kpi.output(start, end, self.n, valid=True, n=self.n, expected=expected)

    def state(self) -> list[Any]:
        return [self.n]

    def load(self, state: list[Any]) -> None:
        self.n = int(state[0])


class ExtremeAcc:
    """``min`` / ``max`` with ``at``, the first extreme item (strict comparison: earliest wins)."""

    __slots__ = ("at", "best", "is_max", "n")

    def __init__(self, *, is_max: bool) -> None:
        self.is_max = is_max
        self.n = 0
        self.best = 0.0
        self.at = 0

    def add(self, t: int, x: float) -> None:
        if self.n == 0 or (x > self.best if self.is_max else x < self.best):
            self.best, self.at = x, t
        self.n += 1

    def expected(self, scope: ItemScope, start: int, end: int) -> int:
        return scope.total(start, end)

    def result(self, kpi: KpiContext, scope: ItemScope, start: int, end: int) -> KpiOutput:
        expected = self.expected(scope, start, end)
        valid = is_valid(self.n, expected, kpi.min_coverage)
        return kpi.output(
            start, end, self.best, valid=valid, n=self.n, expected=expected, extras={"at": self.at}
        )

    def state(self) -> list[Any]:
        return [self.n, self.best, self.at]

    def load(self, state: list[Any]) -> None:
        self.n, self.best, self.at = int(state[0]), float(state[1]), int(state[2])


class PercentileAcc:
    """``percentile``: keeps the values (nearest rank needs them all)."""

    __slots__ = ("n", "q", "values")

    def __init__(self, q: float) -> None:
        self.q = q
        self.n = 0
        self.values: list[float] = []

    def add(self, t: int, x: float) -> None:
        self.n += 1
        self.values.append(x)

    def result(self, kpi: KpiContext, scope: ItemScope, start: int, end: int) -> KpiOutput:
        expected = scope.total(start, end)
        valid = is_valid(self.n, expected, kpi.min_coverage)
        value, rank = percentile(self.values, self.q) if self.values else (None, None)
        return kpi.output(
            start, end, value, valid=valid, n=self.n, expected=expected, extras={"rank": rank}
        )

    def state(self) -> list[Any]:
        return [self.n, list(self.values)]

    def load(self, state: list[Any]) -> None:
        self.n, self.values = int(state[0]), [float(x) for x in state[1]]


class EnergyAcc(TotalAcc):
    """``energetic_mean``: ``10·log10(mean(10^(x/10)))``."""

    __slots__ = ()

    def add(self, t: int, x: float) -> None:
        e = energy(x)
        if e != math.inf:  # beyond any real level: invalid
            self.n += 1
            self.total += e

    def result(self, kpi: KpiContext, scope: ItemScope, start: int, end: int) -> KpiOutput:
        expected = scope.total(start, end)
        valid = is_valid(self.n, expected, kpi.min_coverage)
        value = level_of_energy(self.total, self.n) if valid else None
        return kpi.output(start, end, value, valid=valid, n=self.n, expected=expected)


class ExceedAcc:
    """``exceedance_count``: valid items strictly above the threshold."""

    __slots__ = ("above", "n", "threshold")

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.n = 0
        self.above = 0

    def add(self, t: int, x: float) -> None:
        self.n += 1
        if x > self.threshold:
            self.above += 1

    def result(self, kpi: KpiContext, scope: ItemScope, start: int, end: int) -> KpiOutput:
        expected = scope.total(start, end)
        valid = is_valid(self.n, expected, kpi.min_coverage)
        return kpi.output(
            start,
            end,
            self.above,
            valid=valid,
            n=self.n,
            expected=expected,
            extras={"exceedances": self.above},
            always=("exceedances",),
        )

    def state(self) -> list[Any]:
        return [self.n, self.above]

    def load(self, state: list[Any]) -> None:
        self.n, self.above = int(state[0]), int(state[1])


class AqiDailyAcc(MeanAcc):
    """``aqi_us_pm25`` with ``averaging = "daily"``: the AQI of the mean of hourly means."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(is_sum=False)

    def result(self, kpi: KpiContext, scope: ItemScope, start: int, end: int) -> KpiOutput:
        expected = scope.total(start, end)
        valid = is_valid(self.n, expected, kpi.min_coverage)
        extras: dict[str, Extra] = {"concentration": None, "category": None}
        value: int | None = None
        if valid:
            value, concentration = aqi_us_pm25(self.total / self.n)
            extras = {"concentration": concentration, "category": aqi_category(value)}
        return kpi.output(
            start, end, value, valid=valid, n=self.n, expected=expected, extras=extras
        )


class NightAcc(ExtremeAcc):
    """``min_night_flow``: the minimum of the items that start in ``[night_start, night_end)``."""

    __slots__ = ("calendar", "high", "low")

    def __init__(self, calendar: Calendar, low: int, high: int) -> None:
        super().__init__(is_max=False)
        self.calendar = calendar
        self.low, self.high = low, high

    def add(self, t: int, x: float) -> None:
        if in_clock(self.calendar.wall_seconds(t), self.low, self.high):
            super().add(t, x)

    def expected(self, scope: ItemScope, start: int, end: int) -> int:
        return scope.in_clock(start, end, self.low, self.high)


_PERIODS = ("day", "evening", "night")


class LdenAcc:
    """``lden``: energies per period (day, evening, night) by the items' local wall time."""

    __slots__ = ("calendar", "counts", "day", "energies", "evening", "n", "night")

    def __init__(self, calendar: Calendar, day: int, evening: int, night: int) -> None:
        self.calendar = calendar
        self.day, self.evening, self.night = day, evening, night
        self.n = 0
        self.counts = [0, 0, 0]
        self.energies = [0.0, 0.0, 0.0]

    def add(self, t: int, x: float) -> None:
        wall = self.calendar.wall_seconds(t)
        period = (
            0 if self.day <= wall < self.evening else 1 if self.evening <= wall < self.night else 2
        )
        e = energy(x)
        if e == math.inf:  # beyond any real level: invalid
            return
        self.n += 1
        self.counts[period] += 1
        self.energies[period] += e

    def result(self, kpi: KpiContext, scope: ItemScope, start: int, end: int) -> KpiOutput:
        spans = ((self.day, self.evening), (self.evening, self.night), (self.night, self.day))
        seconds_day = self.calendar.clock_span_seconds(start, end, self.day, self.evening)
        seconds_evening = self.calendar.clock_span_seconds(start, end, self.evening, self.night)
        seconds_night = (end - start) // 1000 - seconds_day - seconds_evening
        hours = dict(
            zip(
                _PERIODS,
                (seconds_day / 3600, seconds_evening / 3600, seconds_night / 3600),
                strict=True,
            )
        )
        expected = [scope.in_clock(start, end, low, high) for low, high in spans]
        valid = all(
            is_valid(count, want, kpi.min_coverage)
            for count, want in zip(self.counts, expected, strict=True)
        )
        extras: dict[str, Extra] = {"lday": None, "levening": None, "lnight": None}
        value: float | None = None
        if valid:
            levels = {
                period: level_of_energy(total, count)
                for period, total, count in zip(_PERIODS, self.energies, self.counts, strict=True)
            }
            value = lden_level(levels, hours)
            extras = {
                "lday": levels["day"],
                "levening": levels["evening"],
                "lnight": levels["night"],
            }
        extras.update({f"hours_{period}": hours[period] for period in _PERIODS})
        return kpi.output(
            start,
            end,
            value,
            valid=valid,
            n=self.n,
            expected=sum(expected),
            extras=extras,
            always=("hours_day", "hours_evening", "hours_night"),
        )

    def state(self) -> list[Any]:
        return [self.n, list(self.counts), list(self.energies)]

    def load(self, state: list[Any]) -> None:
        self.n = int(state[0])
        self.counts = [int(x) for x in state[1]]
        self.energies = [float(x) for x in state[2]]
