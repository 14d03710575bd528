"""Annual and period statistics done the regulatory way (docs/indicators.md §7), over the KPI
windows the receiver stores: daily means from hourly values, annual means, percentiles and
counts over a limit, each with its data capture and whether it meets the rule.

Pure: no I/O and no clock; the site's zone is passed in, and every window is an aware
``[start, end)``. A figure that does not meet its data-capture rule is returned with
``valid`` false and ``reason`` saying why (``data capture 85.2 % (311 of 365 days) <
required 90 %``); its ``value`` is then None and ``partial`` holds what the data present
gives, for a report that shows it as such. No figure is returned without its validity.

Rules, Directive 2008/50/EC unless said (docs/indicators.md cites each):

- a day from hourly values: 75 % of the day's hours, i.e. 18 of 24 (Annex XI A; Annex VII A.2
  for ozone). A local day has 23 or 25 hours on DST days; the rule is applied to the day's
  real hours as the KPI engine applies it (docs/kpis.md §3.3): 18 of 23, 19 of 25;
- an annual mean: 90 % data capture for fixed measurements (Annex I A); indicative
  measurements need 90 % data capture within a time coverage of at least 14 % of the year
  (Annex I A);
- a percentile: the rank of Council Decision 97/101/EC, k = q/100 × N rounded to the nearest
  whole number (a half up), over the N valid values in ascending order; PM10's 35 days are its
  90.4th percentile of daily means (Annex I A, note a);
- an exceedance: a valid window strictly above the value (">"), or at or above it for a
  threshold that starts a band (">=");
- ozone (Annex VII A.2): its annual mean needs 75 % of the hours of summer (April-September)
  and of winter, each on its own; its yearly number of exceedances needs five of the six
  summer months, a month valid with 90 % of its daily maximum 8-hour means (27 of 30 days);
  the target value's three-year mean may rest on one valid year when three are not
  available (Annex VII B, note).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Literal
from zoneinfo import ZoneInfo

from agent.kpi.calendar import Calendar
from agent.units import KpiDuration

__all__ = [
    "ANNUAL_MIN_CAPTURE",
    "DAILY_MIN_CAPTURE",
    "INDICATIVE_MIN_TIME_COVERAGE",
    "Daily",
    "Record",
    "Stat",
    "annual_exceedances",
    "annual_mean",
    "annual_percentile",
    "daily_means",
    "exceedances",
    "mean",
    "ozone_annual_mean",
    "ozone_exceedance_days",
    "percentile",
    "percentile_rank",
    "three_year_mean",
]

# Directive 2008/50/EC: Annex XI A / VII A.2 (a day from hours), Annex I A (a year).
DAILY_MIN_CAPTURE = 0.75
ANNUAL_MIN_CAPTURE = 0.90
INDICATIVE_MIN_TIME_COVERAGE = 0.14

_HOUR = KpiDuration(1, "h")
_DAY = KpiDuration(1, "d")
_MONTH = KpiDuration(1, "mo")
_YEAR = KpiDuration(1, "y")
SUMMER_MONTHS = (4, 5, 6, 7, 8, 9)  # Annex VII A.2: April to September
OZONE_MONTH_MIN_CAPTURE = 0.90  # of a month's daily maximum 8-hour means
OZONE_SEASON_MIN_CAPTURE = 0.75  # of a season's hours, for the annual mean
_EPSILON = 1e-9  # as docs/kpis.md §3.3: 0.75 × 24 is 18 even after float rounding
Window = Literal["1 h", "1 d"]


@dataclass(frozen=True, slots=True)
class Record:
    """One closed KPI window: ``[start, end)`` (aware), its value, and whether it is valid
    (the window's own ``valid``; a None value is a missing window as well)."""

    start: datetime
    end: datetime
    value: float | None
    valid: bool = True
    # the instants as epoch ms, worked out once: a report's yearly figures filter and check
    # the same windows many times
    _start_ms: int | None = field(default=None, init=False, repr=False, compare=False)
    _end_ms: int | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def start_ms(self) -> int:
        if self._start_ms is None:
            object.__setattr__(self, "_start_ms", _ms(self.start))
        assert self._start_ms is not None
        return self._start_ms

    @property
    def end_ms(self) -> int:
        if self._end_ms is None:
            object.__setattr__(self, "_end_ms", _ms(self.end))
        assert self._end_ms is not None
        return self._end_ms

    @property
    def usable(self) -> bool:
        return self.valid and self.value is not None and math.isfinite(self.value)


@dataclass(frozen=True, slots=True)
class Stat:
    """A figure with its validity: ``n`` valid windows of ``expected``."""

    value: float | None
    valid: bool
    reason: str
    n: int
    expected: int
    partial: float | None = None  # the figure from the windows present, when not valid

    @property
    def capture(self) -> float:
        return self.n / self.expected if self.expected else 0.0


@dataclass(frozen=True, slots=True)
class Daily:
    """One local date's mean of its hourly values."""

    day: date
    start: datetime
    end: datetime
    stat: Stat

    def record(self) -> Record:
        """As a window of its own, for the annual statistics of daily means."""
        return Record(self.start, self.end, self.stat.value, self.stat.valid)


@functools.lru_cache(maxsize=16)
def _calendar(zone: ZoneInfo) -> Calendar:
    """One calendar per zone: it caches the zone's days and window counts, which a report's
    hundreds of yearly figures would otherwise work out again each time."""
    return Calendar(zone)


def _ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"{moment.isoformat()} has no UTC offset: windows are aware instants")
    return round(moment.timestamp() * 1000)


def _percent(share: float) -> str:
    # Two decimals: 13.97 % must not print as the 14 % it falls short of.
    return f"{share * 100:.2f}".rstrip("0").rstrip(".")


def _judged(
    value: float | None, n: int, expected: int, required: float, unit: str, *, extra: str = ""
) -> Stat:
    """``value`` valid if ``n`` of ``expected`` meets ``required`` (and no ``extra`` reason)."""
    reasons = []
    if expected <= 0:
        reasons.append(f"no {unit} expected in the period")
    elif n < required * expected - _EPSILON or n == 0:
        reasons.append(
            f"data capture {_percent(n / expected)} % ({n} of {expected} {unit}) "
            f"< required {_percent(required)} %"
        )
    if extra:
        reasons.append(extra)
    if value is None and not reasons:
        reasons.append(f"no valid {unit}")
    if reasons:
        return Stat(None, False, "; ".join(reasons), n, expected, partial=value)
    return Stat(value, True, "", n, expected)


def _unit(records: Sequence[Record]) -> str:
    spans = {r.end_ms - r.start_ms for r in records}
    if spans and max(spans) <= 3_600_000:
        return "hours"
    return "days" if spans else "windows"


def _values(records: Iterable[Record]) -> list[float]:
    return [r.value for r in records if r.usable and r.value is not None]


def _check_unique(records: Sequence[Record]) -> None:
    starts: set[int] = set()
    for record in records:
        start = record.start_ms
        if start in starts:
            raise ValueError(f"two windows start at {record.start.isoformat()}")
        if record.end_ms <= start:
            raise ValueError(f"the window starting at {record.start.isoformat()} is empty")
        starts.add(start)


# --------------------------------------------------------------------------------------------
# Generic period statistics (the caller says how many windows the period should hold)


def mean(
    records: Sequence[Record],
    expected: int,
    min_capture: float = ANNUAL_MIN_CAPTURE,
    *,
    period_windows: int | None = None,
    min_time_coverage: float | None = None,
    unit: str | None = None,
) -> Stat:
    """The mean of the valid windows, valid if they are at least ``min_capture`` of
    ``expected``. With ``period_windows`` and ``min_time_coverage`` (indicative
    measurements, Annex I A), ``expected`` is the windows the campaign covered and must be
    at least ``min_time_coverage`` of ``period_windows``."""
    _check_unique(records)
    values = _values(records)
    unit = unit or _unit(records)
    extra = ""
    if period_windows is not None and min_time_coverage is not None:
        coverage = expected / period_windows if period_windows else 0.0
        if coverage < min_time_coverage - _EPSILON:
            extra = (
                f"time coverage {_percent(coverage)} % ({expected} of {period_windows} {unit}) "
                f"< required {_percent(min_time_coverage)} %"
            )
    value = math.fsum(values) / len(values) if values else None
    return _judged(value, len(values), expected, min_capture, unit, extra=extra)


def percentile_rank(q: float, n: int) -> int:
    """The 1-based rank of the ``q``-th percentile among ``n`` ascending values: k = q/100 × n
    rounded to the nearest whole number, a half up (Council Decision 97/101/EC), kept in
    1…n."""
    if not 0 < q <= 100:
        raise ValueError(f"a percentile is in (0, 100], not {q}")
    if n <= 0:
        raise ValueError("a percentile needs at least one value")
    # q/100 × n in exact decimal steps: 90.4 × 365 / 100 must not become 329.9599…
    scaled = round(q * 1000) * n  # q to 0.001
    k = (scaled + 50_000) // 100_000
    return min(max(k, 1), n)


def percentile(
    records: Sequence[Record],
    q: float,
    expected: int,
    min_capture: float = ANNUAL_MIN_CAPTURE,
    *,
    unit: str | None = None,
) -> Stat:
    """The ``q``-th percentile of the valid windows (rank: :func:`percentile_rank`)."""
    _check_unique(records)
    values = sorted(_values(records))
    value = values[percentile_rank(q, len(values)) - 1] if values else None
    return _judged(value, len(values), expected, min_capture, unit or _unit(records))


def exceedances(
    records: Sequence[Record],
    threshold: float,
    expected: int,
    min_capture: float = ANNUAL_MIN_CAPTURE,
    *,
    comparison: Literal[">", ">="] = ">",
    unit: str | None = None,
) -> Stat:
    """How many valid windows are over ``threshold`` (strictly, or at or above with ">=").
    When capture is short the count is only a lower bound: ``partial`` holds it."""
    _check_unique(records)
    values = _values(records)
    if comparison == ">":
        count = sum(1 for v in values if v > threshold)
    else:
        count = sum(1 for v in values if v >= threshold)
    return _judged(float(count), len(values), expected, min_capture, unit or _unit(records))


# --------------------------------------------------------------------------------------------
# Calendar-aware helpers in the site's zone


def _day_bounds(calendar: Calendar, day: date) -> tuple[int, int]:
    noon = datetime.combine(day, time(12), tzinfo=calendar.tz)
    return calendar.window_at(_DAY, _ms(noon))


def _aware(calendar: Calendar, t_ms: int) -> datetime:
    return datetime.fromtimestamp(t_ms / 1000, UTC).astimezone(calendar.tz)


def daily_means(
    hourly: Sequence[Record],
    zone: ZoneInfo,
    first: date,
    last: date,
    min_capture: float = DAILY_MIN_CAPTURE,
) -> list[Daily]:
    """The mean of each local date ``first``…``last`` (inclusive) from hourly windows: valid
    with at least ``min_capture`` of the day's real hours (18 of 24, 18 of 23, 19 of 25).
    A window belongs to the date its start falls on; windows outside the dates are not used."""
    _check_unique(hourly)
    for record in hourly:
        if record.end_ms - record.start_ms != 3_600_000:
            raise ValueError(f"the window starting at {record.start.isoformat()} is not 1 h")
    calendar = _calendar(zone)
    by_day: dict[date, list[Record]] = {}
    for record in hourly:
        by_day.setdefault(record.start.astimezone(zone).date(), []).append(record)
    days: list[Daily] = []
    for ordinal in range(first.toordinal(), last.toordinal() + 1):
        day = date.fromordinal(ordinal)
        start_ms, end_ms = _day_bounds(calendar, day)
        expected = calendar.count(_HOUR, start_ms, end_ms)
        values = _values(by_day.get(day, []))
        value = math.fsum(values) / len(values) if values else None
        stat = _judged(value, len(values), expected, min_capture, "hours")
        days.append(Daily(day, _aware(calendar, start_ms), _aware(calendar, end_ms), stat))
    return days


def _year(records: Sequence[Record], zone: ZoneInfo, year: int, window: Window
          ) -> tuple[list[Record], int, str]:
    """The records that start in the local calendar year, how many windows it holds, and
    what they are called."""
    calendar = _calendar(zone)
    start_ms, end_ms = calendar.window_at(_YEAR, _ms(datetime(year, 7, 1, tzinfo=zone)))
    inside = [r for r in records if start_ms <= r.start_ms < end_ms]
    step = _HOUR if window == "1 h" else _DAY
    return inside, calendar.count(step, start_ms, end_ms), "hours" if window == "1 h" else "days"


def annual_mean(
    records: Sequence[Record],
    zone: ZoneInfo,
    year: int,
    window: Window,
    *,
    indicative_windows: int | None = None,
) -> Stat:
    """The calendar year's mean of hourly (``"1 h"``: 8760 or 8784 expected) or daily
    (``"1 d"``: 365 or 366) windows, valid with 90 % data capture (Annex I A). For
    indicative measurements pass the windows the campaign covered as
    ``indicative_windows``: 90 % of those, and they at least 14 % of the year."""
    inside, total, unit = _year(records, zone, year, window)
    if indicative_windows is None:
        return mean(inside, total, ANNUAL_MIN_CAPTURE, unit=unit)
    return mean(
        inside, indicative_windows, ANNUAL_MIN_CAPTURE,
        period_windows=total, min_time_coverage=INDICATIVE_MIN_TIME_COVERAGE, unit=unit,
    )


def annual_percentile(
    records: Sequence[Record], zone: ZoneInfo, year: int, window: Window, q: float
) -> Stat:
    """The calendar year's ``q``-th percentile of its windows (90 % data capture)."""
    inside, total, unit = _year(records, zone, year, window)
    return percentile(inside, q, total, ANNUAL_MIN_CAPTURE, unit=unit)


def annual_exceedances(
    records: Sequence[Record],
    zone: ZoneInfo,
    year: int,
    window: Window,
    *,
    threshold: float,
    comparison: Literal[">", ">="] = ">",
) -> Stat:
    """The calendar year's count of windows over ``threshold`` (90 % data capture)."""
    inside, total, unit = _year(records, zone, year, window)
    return exceedances(
        inside, threshold, total, ANNUAL_MIN_CAPTURE, comparison=comparison, unit=unit
    )


# --------------------------------------------------------------------------------------------
# Ozone (Directive 2008/50/EC, Annex VII)

_MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August",
                "September", "October", "November", "December")


def _month_bounds(calendar: Calendar, year: int, month: int) -> tuple[int, int]:
    return calendar.window_at(_MONTH, _ms(datetime(year, month, 15, 12, tzinfo=calendar.tz)))


def ozone_annual_mean(hourly: Sequence[Record], zone: ZoneInfo, year: int) -> Stat:
    """The calendar year's mean of hourly ozone values, valid with 75 % of the summer hours
    (April-September) and 75 % of the winter hours (January-March, October-December), each
    season on its own (Annex VII A.2). ``n``/``expected`` count the whole year."""
    _check_unique(hourly)
    calendar = _calendar(zone)
    inside, total, _unit_name = _year(hourly, zone, year, "1 h")
    summer_start = _month_bounds(calendar, year, SUMMER_MONTHS[0])[0]
    summer_end = _month_bounds(calendar, year, SUMMER_MONTHS[-1])[1]
    summer_hours = calendar.count(_HOUR, summer_start, summer_end)
    in_summer = [r for r in inside if summer_start <= r.start_ms < summer_end]
    summer_n = len(_values(in_summer))
    values = _values(inside)
    reasons = []
    for season, n, expected in (("summer", summer_n, summer_hours),
                                ("winter", len(values) - summer_n, total - summer_hours)):
        if n < OZONE_SEASON_MIN_CAPTURE * expected - _EPSILON:
            reasons.append(
                f"{season} data capture {_percent(n / expected)} % ({n} of {expected} hours) "
                f"< required {_percent(OZONE_SEASON_MIN_CAPTURE)} %"
            )
    value = math.fsum(values) / len(values) if values else None
    if reasons or value is None:
        return Stat(None, False, "; ".join(reasons) or "no valid hours", len(values), total,
                    partial=value)
    return Stat(value, True, "", len(values), total)


def ozone_exceedance_days(
    max8h_days: Sequence[Record], zone: ZoneInfo, year: int, threshold: float = 120.0
) -> Stat:
    """Days of the calendar year whose maximum daily 8-hour mean (one daily window each, as
    the ``daily_max_running_mean`` KPI sends) is strictly above ``threshold``. Valid when five
    of the six summer months hold 90 % of their days each (Annex VII A.2: 27 of 30)."""
    _check_unique(max8h_days)
    calendar = _calendar(zone)
    inside, total, _unit_name = _year(max8h_days, zone, year, "1 d")
    short: list[str] = []
    for month in SUMMER_MONTHS:
        start, end = _month_bounds(calendar, year, month)
        days = calendar.count(_DAY, start, end)
        n = len(_values(r for r in inside if start <= r.start_ms < end))
        if n < OZONE_MONTH_MIN_CAPTURE * days - _EPSILON:
            short.append(f"{_MONTH_NAMES[month - 1]} {n} of {days}")
    values = _values(inside)
    count = float(sum(1 for v in values if v > threshold))
    if len(short) > len(SUMMER_MONTHS) - 5:
        reason = (
            f"{len(SUMMER_MONTHS) - len(short)} of the 6 summer months hold 90 % of their "
            f"days, 5 required ({', '.join(short)} days)"
        )
        return Stat(None, False, reason, len(values), total, partial=count)
    return Stat(count, True, "", len(values), total)


def three_year_mean(yearly: Sequence[Stat]) -> Stat:
    """The mean of the valid yearly figures among the last three years (a target value
    "averaged over three years"); when not all three are valid, the valid ones, and at least
    one is needed (Annex VII B, note). ``n`` valid years of ``expected`` (3)."""
    if len(yearly) > 3:
        raise ValueError(f"three years at most, not {len(yearly)}")
    values = [s.value for s in yearly if s.valid and s.value is not None]
    if not values:
        return Stat(None, False, "no year with valid data (one is the minimum)", 0, 3)
    return Stat(math.fsum(values) / len(values), True, "", len(values), 3)
