"""One station's yearly figures of one indicator, the regulatory way (docs/reports.md §3):
which function of :mod:`agent.platform.statistics` computes each statistic of the catalogue,
and how each figure is judged against each limit. Pure: records in, figures out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from agent.platform import statistics as st
from agent.platform.indicators import Indicator, Limit
from agent.platform.report.model import Check, LimitInfo
from agent.platform.report.trend import Figure

__all__ = [
    "annual_figure",
    "count_over",
    "exceeds",
    "is_ozone_days",
    "limit_checks",
    "limit_key",
    "window_of",
    "yearly_window",
]


def window_of(indicator: Indicator) -> st.Window:
    return "1 h" if indicator.computation.window == "1 h" else "1 d"


def is_ozone_days(indicator: Indicator) -> bool:
    """The O3 days-over indicator counts by Annex VII A.2's month rule, not 90 % of days."""
    return (indicator.computation.operator == "daily_max_running_mean"
            and indicator.id.startswith("o3_"))


def limit_key(limit: Limit) -> str:
    return f"{limit.source}/{limit.level or limit.kind}/{limit.averaging}/{limit.value:g}"


def exceeds(value: float, limit: Limit | LimitInfo, threshold: float | None = None) -> bool:
    """Whether a figure is over a limit: strictly above, or at or above for a band's start."""
    bound = limit.value if threshold is None else threshold
    return value >= bound if limit.comparison == ">=" else value > bound


def yearly_window(records: Sequence[st.Record], zone: ZoneInfo, year: int) -> Figure:
    """The value of the yearly window that starts in the local ``year``."""
    for record in records:
        if record.start.astimezone(zone).year == year:
            if record.usable:
                return Figure(record.value, True, n=1, expected=1)
            return Figure.invalid(f"the gateway marked its {year} window not valid "
                                  "(too little data in the year)", n=0, expected=1)
    return Figure.invalid(f"no window of {year} is stored", n=0, expected=1)


def annual_figure(indicator: Indicator, records: Sequence[st.Record], zone: ZoneInfo,
                  year: int) -> Figure:
    """The indicator's own yearly figure at a station: an annual mean (``mean``), the yearly
    window's value (``value``, ``population_share``) or the mean daily value (the base of
    ``sum_per_capita``)."""
    statistic = indicator.computation.statistic
    if statistic in ("value", "population_share"):
        return yearly_window(records, zone, year)
    if indicator.id.startswith("o3_") and window_of(indicator) == "1 h":
        return Figure.of(st.ozone_annual_mean(records, zone, year))
    return Figure.of(st.annual_mean(records, zone, year, window_of(indicator)))


def count_over(indicator: Indicator, records: Sequence[st.Record], zone: ZoneInfo, year: int,
               *, threshold: float, comparison: str = ">") -> Figure:
    """Windows of the year over ``threshold``: days or hours, with the year's capture rule."""
    if is_ozone_days(indicator):
        return Figure.of(st.ozone_exceedance_days(records, zone, year, threshold))
    return Figure.of(st.annual_exceedances(records, zone, year, window_of(indicator),
                                           threshold=threshold,
                                           comparison=">=" if comparison == ">=" else ">"))


def _in_force(limit: Limit, year: int) -> bool:
    return limit.applies_from is None or int(limit.applies_from[:4]) <= year


def _judge(figure: Figure, bad: bool | None) -> tuple[bool | None, str]:
    if not figure.valid or figure.value is None:
        return None, figure.reason
    return (not bad) if bad is not None else None, ""


def _years_mean(counts: Sequence[tuple[int, Figure]], year: int, span: int) -> Figure:
    """The mean of the valid yearly counts of ``year - span + 1 … year`` (the target value's
    three-year mean: the valid years among them, one at least; Annex VII B, note)."""
    wanted = [f for y, f in counts if year - span < y <= year]
    values = [f.value for f in wanted if f.valid and f.value is not None]
    if not values:
        return Figure.invalid(f"no valid year among {year - span + 1}-{year}", n=0,
                              expected=span)
    return Figure(sum(values) / len(values), True, n=len(values), expected=span)


def limit_checks(indicator: Indicator, limits: Sequence[Limit],
                 by_year: Mapping[int, Sequence[st.Record]], zone: ZoneInfo, *,
                 years: Sequence[int], annual: dict[int, Figure]) -> list[Check]:
    """Every limit's check in every year; ``annual`` holds the indicator's own yearly
    figures (for ``mean`` and ``value`` statistics); ``by_year`` the station's records by the
    local year they start in."""
    checks: list[Check] = []
    statistic = indicator.computation.statistic
    window = "hours" if window_of(indicator) == "1 h" else "days"
    count_unit = window[0]
    base = "hourly means" if window == "hours" else "daily values"
    for limit in limits:
        key = limit_key(limit)
        if statistic != "exceedances":
            for year in years:
                figure = annual[year]
                bad = None if figure.value is None else exceeds(figure.value, limit)
                meets, why = _judge(figure, bad)
                what = "annual mean" if statistic == "mean" else f"{year} value"
                checks.append(Check(key, year, what, figure, meets, _in_force(limit, year), why,
                                    indicator.unit))
            continue
        counts = [(y, count_over(indicator, by_year.get(y, ()), zone, y, threshold=limit.value,
                                 comparison=limit.comparison)) for y in years]
        over = f"{window} over {limit.value:g} {limit.unit}"
        for year, yearly in counts:
            in_force = _in_force(limit, year)
            count = yearly
            if limit.years_averaged and limit.years_averaged > 1:
                count = _years_mean(counts, year, limit.years_averaged)
                what = f"{over}, mean of {limit.years_averaged} years ({count.n} valid)"
            else:
                what = over
            pct: Figure | None = None
            q = limit.percentile.value if limit.percentile is not None else None
            if q is not None:
                pct = Figure.of(st.annual_percentile(by_year.get(year, ()), zone, year,
                                                     window_of(indicator), q))
            if limit.exceedances_allowed is not None:
                bad = None if count.value is None else count.value > limit.exceedances_allowed
                meets, why = _judge(count, bad)
                checks.append(Check(key, year, what, count, meets, in_force, why, count_unit))
                if pct is not None:
                    bad = None if pct.value is None else exceeds(pct.value, limit)
                    meets, why = _judge(pct, bad)
                    checks.append(Check(key, year, f"{q:g}th percentile "
                                        f"of {base}", pct, meets, in_force, why, limit.unit))
            elif pct is not None:
                checks.append(Check(key, year, over, count, None, in_force,
                                    "judged on its percentile", count_unit))
                bad = None if pct.value is None else exceeds(pct.value, limit)
                meets, why = _judge(pct, bad)
                checks.append(Check(key, year, f"{q:g}th percentile of "
                                    f"{base}", pct, meets, in_force, why, limit.unit))
            else:
                why = (count.reason if not count.valid else
                       "the source sets no number of exceedances allowed: counted, not judged")
                checks.append(Check(key, year, what, count, None, in_force, why, count_unit))
    return checks


def primary_checks(checks: Sequence[Check]) -> dict[tuple[str, int], Check]:
    """The check a limit is judged by in a year: the first one that judges, else the first."""
    chosen: dict[tuple[str, int], Check] = {}
    for check in checks:
        key = (check.limit, check.year)
        if key not in chosen or (chosen[key].meets is None and chosen[key].why ==
                                 "judged on its percentile"):
            chosen[key] = check
    return chosen


def local_day(moment: datetime, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).date().isoformat()
