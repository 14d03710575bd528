"""Progress toward the city's targets (docs/reports.md §5): each target's figure in every year
of the period, whether it meets the target, the least-squares trend over the valid years and
its projection to the target year."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from agent.platform.city import convert
from agent.platform.indicators import Indicator
from agent.platform.report.compute import limit_info, not_computed
from agent.platform.report.inputs import SiteLike, TargetLike
from agent.platform.report.model import TargetReport, TargetYear
from agent.platform.report.trend import Figure, compare, fit_trend, share_meeting

if TYPE_CHECKING:
    from agent.platform.report.compute import Builder

__all__ = ["target_reports"]

_WORDS = {"<=": "at most", "<": "below", ">=": "at least", ">": "above"}


def _convert(value: float, unit: str | None, to: str) -> float:
    # the city config's checks have made sure that the units convert
    return value if unit is None else convert(value, unit, to)


def _scoped(builder: Builder, target: TargetLike, indicator: Indicator) -> list[SiteLike]:
    named = set(target.sites)
    return [s for s in builder.sites_of(indicator.computation.kpi)
            if (not named or s.id in named)
            and (not target.station_types or s.station_type in target.station_types)]


def _target_value(builder: Builder, target: TargetLike, indicator: Indicator,
                  sites: list[SiteLike]) -> Figure:
    if target.change_percent is None:
        if target.value is None:
            return Figure.invalid("the target gives no value")
        return Figure(_convert(target.value, target.unit, indicator.unit), True)
    baseline = target.baseline
    if baseline is None:
        return Figure.invalid("a relative target needs a baseline")
    if baseline.value is not None:
        base = _convert(baseline.value, baseline.unit, indicator.unit)
    elif baseline.year in builder.years:
        figure = builder.city_figure(indicator, sites, baseline.year)
        if not figure.valid or figure.value is None:
            return Figure.invalid(f"baseline {baseline.year}: {figure.reason}")
        base = figure.value
    else:
        return Figure.invalid(f"the baseline year {baseline.year} is not given a value and "
                              "is outside the report's period")
    return Figure(base * (1 + target.change_percent / 100.0), True)


def _averaged(yearly: dict[int, Figure], year: int, span: int) -> Figure:
    if span <= 1:
        return yearly[year]
    values = [f.value for y, f in yearly.items()
              if year - span < y <= year and f.valid and f.value is not None]
    if not values:
        return Figure.invalid(f"no valid year among {year - span + 1}-{year}", n=0,
                              expected=span)
    return Figure(sum(values) / len(values), True, n=len(values), expected=span)


def _site_years(builder: Builder, target: TargetLike, indicator: Indicator,
                site: SiteLike, goal: Figure) -> tuple[TargetYear, ...]:
    yearly: dict[int, Figure] = {}
    for year in builder.years:
        if indicator.computation.statistic == "exceedances":
            threshold = target.threshold if target.threshold is not None else (
                indicator.limits[0].value if indicator.limits else 0.0)
            threshold = _convert(threshold, target.threshold_unit,
                                 indicator.limits[0].unit if indicator.limits else "")
            yearly[year] = builder.count(indicator, site, year, threshold=threshold)
        else:
            yearly[year] = builder.annual(indicator, site, year)
    result = []
    for year in builder.years:
        figure = _averaged(yearly, year, target.years_averaged)
        meets = (compare(figure.value, target.comparison, goal.value)
                 if figure.valid and figure.value is not None and goal.value is not None
                 else None)
        result.append(TargetYear(year, figure, meets))
    return tuple(result)


def _worst(per_site: list[tuple[str, tuple[TargetYear, ...]]], comparison: str, index: int,
           year: int) -> TargetYear:
    """Every site must meet it: the year's figure is the worst site's, valid when all are."""
    figures = [(name, years[index]) for name, years in per_site]
    bad = [name for name, ty in figures if not ty.figure.valid]
    if not figures:
        return TargetYear(year, Figure.invalid("no site is in the target's scope"), None)
    if bad:
        return TargetYear(year, Figure.invalid(
            f"no valid figure at {', '.join(bad[:5])}" + (" …" if len(bad) > 5 else ""),
            n=len(figures) - len(bad), expected=len(figures)), None)
    values = [ty.figure.value or 0.0 for _, ty in figures]
    worst = max(values) if comparison in ("<", "<=") else min(values)
    meets = all(ty.meets for _, ty in figures)
    return TargetYear(year, Figure(worst, True, n=len(figures), expected=len(figures)), meets)


def _statement(target: TargetLike, indicator: Indicator, goal: Figure, unit: str) -> str:
    if target.scope == "share_of_sites":
        where = f"at {target.share_percent or 100.0:g} % of the sites or more"
    else:
        where = {"every_site": "at every site", "city": "city-wide",
                 "sites": "at " + ", ".join(target.sites)}.get(target.scope, target.scope)
    value = f"{goal.value:g} {unit}" if goal.value is not None else "(no value)"
    text = f"{indicator.name} {_WORDS.get(target.comparison, target.comparison)} {value}"
    if target.change_percent is not None and target.baseline is not None:
        text += f" ({target.change_percent:+g} % from {target.baseline.year})"
    if target.threshold is not None:
        text += f", counting windows over {target.threshold:g} {target.threshold_unit or ''}"
    if target.years_averaged > 1:
        text += f", averaged over {target.years_averaged} years"
    return f"{text}, {where}, by {target.by}"


def _status(years: tuple[TargetYear, ...], projection: Figure, on_track: bool | None,
            target: TargetLike) -> str:
    judged = [ty for ty in years if ty.meets is not None]
    latest = judged[-1] if judged else None
    if latest is not None and latest.year >= target.by:
        return f"{'met' if latest.meets else 'not met'} in {latest.year}, the target year"
    head = (f"met in {latest.year}" if latest and latest.meets else
            f"not met in {latest.year}" if latest else "no valid figure in the period")
    if on_track is None:
        return f"{head}; cannot tell whether it will be met by {target.by}: {projection.reason}"
    shown = f"{projection.value:.1f}" if projection.value is not None else "?"
    return (f"{head}; {'on track' if on_track else 'off track'}: the trend gives {shown} in "
            f"{target.by}")


def _one(builder: Builder, target: TargetLike) -> TargetReport:
    indicator = builder.catalogue.by_id(target.indicator)
    sites = _scoped(builder, target, indicator)
    goal = _target_value(builder, target, indicator, sites)
    unit = indicator.unit
    comparison = target.comparison
    per_site: list[tuple[str, tuple[TargetYear, ...]]] = []
    years: list[TargetYear] = []
    if target.scope == "city":
        info = (limit_info(indicator.limits[0], builder.catalogue)
                if indicator.limits else None)
        if info is not None and target.threshold is not None:
            # the population at sites at or over the target's own threshold
            info = dataclasses.replace(info, value=target.threshold, comparison=">=")
        for year in builder.years:
            figure = builder.city_figure(indicator, sites, year, info)
            meets = (compare(figure.value, comparison, goal.value)
                     if figure.valid and figure.value is not None and goal.value is not None
                     else None)
            years.append(TargetYear(year, figure, meets))
    else:
        per_site = [(s.id, _site_years(builder, target, indicator, s, goal)) for s in sites]
        for index, year in enumerate(builder.years):
            if target.scope == "share_of_sites":
                share = share_meeting([(name, ys[index].meets) for name, ys in per_site])
                goal_share = target.share_percent or 100.0
                meets = (share.value >= goal_share if share.valid and share.value is not None
                         else None)
                years.append(TargetYear(year, share, meets))
            else:
                years.append(_worst(per_site, comparison, index, year))
    if target.scope == "share_of_sites":
        statement = _statement(target, indicator, goal, unit)
        goal, unit, comparison = Figure(target.share_percent or 100.0, True), "% of sites", ">="
    else:
        statement = _statement(target, indicator, goal, unit)
    baseline: TargetYear | None = None
    given = target.baseline
    if (given is not None and given.value is not None and target.scope != "share_of_sites"
            and given.year not in builder.years):
        baseline = TargetYear(given.year, Figure(_convert(given.value, given.unit,
                                                          indicator.unit), True), None)
    trend = fit_trend(([(baseline.year, baseline.figure)] if baseline else [])
                      + [(ty.year, ty.figure) for ty in years])
    projection = trend.at(target.by)
    if projection.value is not None:
        # a line runs on past what the figure can be: no share beyond 0…100 %, no negative
        # concentration, count or consumption
        high = 100.0 if unit in ("%", "% of sites") else math.inf
        projection = dataclasses.replace(projection, value=min(max(projection.value, 0.0), high))
    on_track = (compare(projection.value, comparison, goal.value)
                if projection.valid and projection.value is not None and goal.value is not None
                else None)
    if not goal.valid:
        projection = Figure.invalid(goal.reason)
        on_track = None
    return TargetReport(
        target.id, target.name or target.id, indicator.id, statement, comparison, goal, unit,
        target.by, target.scope, tuple(years), tuple(per_site), trend.slope, trend.intercept,
        projection, on_track, _status(tuple(years), projection, on_track, target), baseline,
        indicator.unit)


def target_reports(builder: Builder) -> tuple[TargetReport, ...]:
    """Every target of the city config whose indicator reads KPI windows."""
    result = []
    for target in builder.city.targets:
        indicator = builder.catalogue.by_id(target.indicator)
        why = not_computed(indicator)
        if indicator.computation.input == "inventory" and builder.inventory is not None:
            why = ""  # Builder.inventory_figure
        if why:
            result.append(TargetReport(
                target.id, target.name or target.id, indicator.id,
                f"{indicator.name} {_WORDS.get(target.comparison, target.comparison)} "
                f"{target.value if target.value is not None else '?'} {indicator.unit}, by "
                f"{target.by}", target.comparison, Figure.invalid(why), indicator.unit,
                target.by, target.scope, (), (), Figure.invalid(why), None,
                Figure.invalid(why), None, why))
            continue
        result.append(_one(builder, target))
    return tuple(result)
