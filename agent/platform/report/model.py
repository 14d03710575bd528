"""What a report holds (docs/reports.md): plain frozen data that the HTML, JSON and CSV
writers render, each figure a :class:`~agent.platform.report.trend.Figure` with its validity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from agent.platform.report.trend import Figure

__all__ = [
    "Capture",
    "Check",
    "CityFigure",
    "CityLimit",
    "IndicatorReport",
    "LimitInfo",
    "Report",
    "SourceDoc",
    "Station",
    "StationYear",
    "TargetReport",
    "TargetYear",
]


@dataclass(frozen=True, slots=True)
class SourceDoc:
    """A document limits are taken from (the catalogue's ``[sources.ID]``)."""

    id: str
    title: str
    identifier: str
    url: str


@dataclass(frozen=True, slots=True)
class LimitInfo:
    """One limit, guideline level or threshold a report judges an indicator against."""

    key: str  # unique within the indicator: "eu_2008_50/limit_value/1 d/50"
    label: str  # "EU 2008/50/EC limit value" style, for people
    kind: str
    level: str
    value: float
    unit: str
    averaging: str
    comparison: str
    allowed: int | None  # exceedances allowed a year
    percentile: float | None  # its percentile equivalent
    years_averaged: int | None
    applies_from: str | None
    source: str
    ref: str
    verified: bool
    note: str


@dataclass(frozen=True, slots=True)
class Check:
    """A station's figure of one year against one limit."""

    limit: str  # LimitInfo.key
    year: int
    what: str  # "annual mean", "days over 50 µg/m³", "90.4th percentile of daily means"
    figure: Figure
    meets: bool | None  # None: not judged (``why``)
    in_force: bool  # false: the limit applies only from a later date
    why: str = ""
    unit: str = ""  # the figure's: the indicator's, "d"/"h" for a count, the limit's


@dataclass(frozen=True, slots=True)
class StationYear:
    """A station's figures of one calendar year."""

    year: int
    what: str  # what ``figure`` is: "annual mean", "value", "per inhabitant"
    figure: Figure | None  # the indicator's own figure (None for a count per limit)
    checks: tuple[Check, ...]


@dataclass(frozen=True, slots=True)
class Station:
    """A site as one indicator sees it."""

    id: str
    name: str
    station_type: str | None
    population: int | None
    source: str  # "gateway kpi src", or '' when none
    problem: str  # '' or why the site gives no figure at all
    years: tuple[StationYear, ...]
    # local date (ISO) → the day's value (daily windows, or the daily mean of hourly ones)
    daily: tuple[tuple[str, float | None], ...] = ()
    # local date (ISO) → windows over the calendar's limit that day (None: no valid value)
    calendar: tuple[tuple[str, int | None], ...] = ()


@dataclass(frozen=True, slots=True)
class CityLimit:
    """City-wide: the share of stations meeting one limit in one year."""

    limit: str
    year: int
    share: Figure  # percent; n stations meet of expected


@dataclass(frozen=True, slots=True)
class CityFigure:
    """City-wide: the indicator's own figure in one year (per capita, population share)."""

    year: int
    what: str
    figure: Figure


@dataclass(frozen=True, slots=True)
class IndicatorReport:
    """One indicator of the catalogue in the report."""

    id: str
    domain: str
    name: str
    unit: str
    description: str
    statistic: str
    kpi: str | None
    window: str | None
    u4ssc: str
    sdgs: tuple[str, ...]
    limits: tuple[LimitInfo, ...]
    stations: tuple[Station, ...]
    city_limits: tuple[CityLimit, ...]
    city_figures: tuple[CityFigure, ...]
    calendar_limit: str | None = None  # the LimitInfo.key the calendars colour by
    not_computed: str = ""  # why the indicator has no figures at all


@dataclass(frozen=True, slots=True)
class TargetYear:
    """A target's judged figure in one year."""

    year: int
    figure: Figure
    meets: bool | None


@dataclass(frozen=True, slots=True)
class TargetReport:
    """Progress toward one target of the city config."""

    id: str
    name: str
    indicator: str
    statement: str  # the target in plain words
    comparison: str
    target: Figure  # the value to reach (a relative target's from its baseline)
    unit: str
    by: int
    scope: str
    years: tuple[TargetYear, ...]
    sites: tuple[tuple[str, tuple[TargetYear, ...]], ...]  # per site, when judged per site
    slope: Figure  # unit per year, least squares over the valid years
    intercept: float | None
    projection: Figure  # the trend's value in ``by``
    on_track: bool | None
    status: str  # plain words: met in YEAR / on track / off track / cannot tell, and why
    # the figure the city config gives for its baseline year, when that year is not in the
    # period: the progress line starts there (docs/city.md), and the trend counts it
    baseline: TargetYear | None = None
    site_unit: str = ""  # the unit of ``sites``' figures (the indicator's)


@dataclass(frozen=True, slots=True)
class Capture:
    """A station's data capture of one KPI over the period."""

    site: str
    site_name: str
    kpi: str
    window: str
    figure: Figure  # percent valid windows of the windows the period holds
    short: str = ""  # '' or why it is too little for yearly figures


@dataclass(frozen=True)
class Report:
    """A whole report."""

    city: str
    timezone: str
    first: date
    last: date
    generated: str
    years: tuple[int, ...]
    indicators: tuple[IndicatorReport, ...]
    targets: tuple[TargetReport, ...]
    capture: tuple[Capture, ...]
    sources: tuple[SourceDoc, ...]
    notes: tuple[str, ...] = field(default=())
