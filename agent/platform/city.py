"""The city config (docs/city.md): the city a report is about, its sites (the gateways and KPIs
that feed each, where it is, what kind of station it is, whom it serves) and the targets the
council set, each on an indicator of the catalogue (:mod:`agent.platform.indicators`) with a
value, a scope and a year to reach it by.

The models are :class:`~agent.schema.ConfigModel` tables, as the agent's config. Build a
:class:`CityConfig` with :func:`load_city` (a TOML file) or :func:`city_from_dict`
(:mod:`agent.platform.city_checks`): they check every table and what spans tables and the
catalogue, and report every problem at once as a :class:`~agent.errors.ConfigError`, one line
each, naming the file, the table and the key. Nothing here touches a gateway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from agent.config.rules import NAME_PATTERN, known_zone
from agent.platform.indicators import Indicator, Limit
from agent.schema import AfterValidator, BeforeValidator, ConfigModel, Field
from agent.schema.json_schema import DRAFT, SchemaWriter
from agent.unit_fields import DurationField, duration_range
from agent.units import Duration

__all__ = [
    "CONVERSIONS",
    "SECTIONS",
    "Baseline",
    "CityConfig",
    "CitySection",
    "Feed",
    "IndicatorLimits",
    "InventorySection",
    "Location",
    "MeterGroup",
    "ReportSection",
    "Site",
    "Target",
    "city_schema",
    "convert",
    "limit_refs",
    "scope_sites",
    "selected_limits",
]

SECTIONS = ("city", "sites", "targets", "report", "inventory")

# The sampling-point classes of the air quality directives (2008/50/EC Annex III; (EU)
# 2024/2881 keeps them): a station's figures are read and compared by its class.
StationType = Literal[
    "traffic", "industrial", "urban_background", "suburban_background", "rural_background"
]
Comparison = Literal["<=", "<", ">=", ">"]
Scope = Literal["every_site", "city", "sites", "share_of_sites"]
# What a gateway's device measures, for the fleet's meter inventory (docs/city.md
# `[inventory]`); the first four are meters a utility counts a stock of (`<kind>_meters`).
MeterKind = Literal["electricity", "water", "heat", "gas", "air", "noise"]
STOCK_KINDS: tuple[MeterKind, ...] = ("electricity", "water", "heat", "gas")

# A target may be written in a unit other than its indicator's when one converts exactly into
# the other: (written, indicator's) → factor. Counts (d, h), levels (dB) and shares do not.
CONVERSIONS: Mapping[tuple[str, str], float] = {
    ("mg/m³", "µg/m³"): 1000.0,
    ("µg/m³", "mg/m³"): 0.001,
}

# Years a target or a baseline may name: the U4SSC and the directives report from the 1990s,
# and a target beyond 2100 is a typo.
FIRST_YEAR, LAST_YEAR = 1990, 2100

_KPI_NAME = r"^[a-z0-9_]+$"  # as [[kpis]] name them


def _whole_year(value: object) -> object:
    """A year as TOML writes a number; a date or a string gets words saying how to write it
    (a ValueError, as every validator refuses)."""
    if isinstance(value, date):
        raise ValueError(  # noqa: TRY004
            f"write the year alone ({value.year}): a target is judged on a whole calendar "
            "year, local time")
    if isinstance(value, str):
        raise ValueError("must be a year written as a number, e.g. 2030")  # noqa: TRY004
    return value


_Year = Annotated[int, BeforeValidator(_whole_year), Field(ge=FIRST_YEAR, le=LAST_YEAR)]


def convert(value: float, unit: str, to: str) -> float:
    """``value`` in ``unit`` expressed in ``to``; ValueError when one does not convert."""
    if unit == to:
        return value
    factor = CONVERSIONS.get((unit, to))
    if factor is None:
        raise ValueError(f"{unit!r} does not convert to {to!r}")
    return value * factor


class CitySection(ConfigModel):
    """``[city]``: the city the reports are about."""

    name: str = Field(min_length=1, max_length=200, description="the city's name, as reports "
                      "title it")
    timezone: Annotated[str, AfterValidator(known_zone)] = Field(
        description="IANA time zone: a report's days and years are local days and years "
        "(a day is 23 or 25 h long when the clocks change)")
    population: int | None = Field(default=None, gt=0, description="inhabitants; a city-wide "
                                   "figure per inhabitant divides by it when set")

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class Location(ConfigModel):
    """Where a site is (WGS 84)."""

    lat: float = Field(ge=-90.0, le=90.0, description="latitude, degrees north")
    lon: float = Field(ge=-180.0, le=180.0, description="longitude, degrees east")
    address: str = Field(default="", max_length=200, description="as a reader finds it")


class Feed(ConfigModel):
    """A gateway whose KPI windows are a site's figures."""

    gateway: str = Field(pattern=NAME_PATTERN, max_length=64,
                         description="the gateway's [gateway] id")
    kpis: list[Annotated[str, Field(pattern=_KPI_NAME, max_length=64)]] = Field(
        min_length=1, description="names of its [[kpis]] whose windows belong to this site")
    devices: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, description="only the windows of these devices' points "
        "(their source); empty: every device of the gateway")


class Site(ConfigModel):
    """``[[sites]]``: a monitoring station or metered area."""

    id: str = Field(pattern=NAME_PATTERN, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    location: Location
    feeds: list[Feed] = Field(min_length=1)
    station_type: StationType | None = Field(
        default=None, description="air quality: the station's class in the directives")
    population: int | None = Field(default=None, gt=0, description="inhabitants the site "
                                   "serves or represents (per-capita and exposure indicators)")
    network_length_km: float | None = Field(default=None, gt=0.0,
                                            description="length of the network it meters, km")

    def feeds_kpi(self, kpi: str) -> bool:
        return any(kpi in feed.kpis for feed in self.feeds)


class Baseline(ConfigModel):
    """The year a target is measured from, and its figure when known."""

    year: _Year
    value: float | None = Field(default=None, ge=0.0, description="the indicator's figure "
                                "that year; absent: computed from the stored windows")
    unit: str | None = Field(default=None, description="the unit of value")


class Target(ConfigModel):
    """``[[targets]]``: a figure the council wants an indicator to reach, where, and by when."""

    id: str = Field(pattern=NAME_PATTERN, max_length=64)
    name: str = Field(default="", max_length=200, description="as reports title it")
    indicator: str = Field(pattern=_KPI_NAME, max_length=64,
                           description="an indicator id of the catalogue (config/indicators/)")
    statistic: str | None = Field(default=None, description="the indicator's statistic "
                                  "(checked against the catalogue); absent: the indicator's")
    comparison: Comparison = Field(description="how the figure must relate to value")
    value: float | None = Field(default=None, description="the figure to reach, in unit "
                                "(absolute target)")
    unit: str | None = Field(default=None, description="value's unit: the indicator's or one "
                             "that converts to it")
    change_percent: float | None = Field(default=None, gt=-100.0, le=1000.0,
                                         description="relative target: change from the "
                                         "baseline in percent (-20: down a fifth)")
    baseline: Baseline | None = None
    threshold: float | None = Field(default=None, ge=0.0, description="exceedance indicators: "
                                    "the windows over this value are counted")
    threshold_unit: str | None = Field(default=None, description="the unit of threshold: the "
                                       "windows' (the indicator's limits')")
    years_averaged: int = Field(default=1, ge=1, le=10, description="the figure is averaged "
                                "over this many years ending in the reporting year")
    scope: Scope = Field(default="every_site", description="every_site: each site that feeds "
                         "the indicator meets it; city: the city-wide figure; sites: each site "
                         "named; share_of_sites: at least share_percent of the sites")
    sites: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, description="the sites judged (scope sites) or counted (city, "
        "share_of_sites); default every site that feeds the indicator")
    station_types: list[StationType] = Field(default_factory=list, description="only sites of "
                                             "these station types")
    share_percent: float | None = Field(default=None, gt=0.0, le=100.0,
                                        description="share_of_sites: the sites that must meet it")
    by: _Year = Field(description="the reporting year that must meet it")

    @property
    def is_relative(self) -> bool:
        return self.change_percent is not None


class IndicatorLimits(ConfigModel):
    """``[[report.indicators]]``: the limits a report shows for one indicator."""

    id: str = Field(pattern=_KPI_NAME, max_length=64)
    limits: list[str] = Field(description="SOURCE (each limit from that document) or "
                              "SOURCE/LEVEL (one: its level, e.g. IT-4, or kind)")


class ReportSection(ConfigModel):
    """``[report]``: what a report shows besides the targets."""

    limits: list[str] | None = Field(default=None, description="the limits shown for every "
                                     "indicator (SOURCE or SOURCE/LEVEL); absent: all")
    indicators: list[IndicatorLimits] = Field(default_factory=list)


class MeterGroup(ConfigModel):
    """``[[inventory.meters]]``: devices of one gateway that are meters of one kind."""

    gateway: str = Field(pattern=NAME_PATTERN, max_length=64,
                         description="the gateway's [gateway] id")
    kind: MeterKind = Field(description="what its devices meter")
    devices: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, description="the devices' names (their [[devices]] name); "
        "empty: every device of the gateway that sent a reading")


class InventorySection(ConfigModel):
    """``[inventory]``: the meter stock the utilities report, and which gateway devices are
    meters of which kind (the fleet's smart meters)."""

    electricity_meters: int | None = Field(default=None, gt=0, description="electricity "
                                           "meters installed in the city, smart or not")
    water_meters: int | None = Field(default=None, gt=0, description="water meters installed "
                                     "in the city, smart or not")
    heat_meters: int | None = Field(default=None, gt=0, description="heat meters installed "
                                    "in the city, smart or not")
    gas_meters: int | None = Field(default=None, gt=0, description="gas meters installed in "
                                   "the city, smart or not")
    reporting_window: Annotated[
        DurationField, duration_range("1 h", "366 d", "a smart meter reports within it")
    ] = Duration.parse("24 h")
    meters: list[MeterGroup] = Field(default_factory=list)

    def stock(self, kind: str) -> int | None:
        """The stock stated for ``kind`` (None: not stated, or not a kind with a stock)."""
        value = getattr(self, f"{kind}_meters", None) if kind in STOCK_KINDS else None
        return value if isinstance(value, int) else None


class CityConfig(ConfigModel):
    """The validated city config. Build it with :func:`load_city`."""

    city: CitySection
    sites: list[Site] = Field(min_length=1)
    targets: list[Target] = Field(default_factory=list)
    report: ReportSection = Field(default_factory=ReportSection)
    inventory: InventorySection = Field(default_factory=InventorySection)
    source_path: Path | None = None

    def site(self, site_id: str) -> Site:
        for site in self.sites:
            if site.id == site_id:
                return site
        raise KeyError(site_id)


def limit_refs(limit: Limit) -> tuple[str, ...]:
    """The names a city config may pick ``limit`` by: its source, and source/level (or
    source/kind for a limit without a level: ``who_aqg_2021/guideline_level``)."""
    return (limit.source, f"{limit.source}/{limit.level or limit.kind}")


def selected_limits(config: CityConfig, indicator: Indicator) -> list[Limit]:
    """The limits of ``indicator`` a report shows, in catalogue order."""
    chosen: Sequence[str] | None = config.report.limits
    for entry in config.report.indicators:
        if entry.id == indicator.id:
            chosen = entry.limits
    if chosen is None:
        return list(indicator.limits)
    return [limit for limit in indicator.limits if set(limit_refs(limit)) & set(chosen)]


def scope_sites(sites: Sequence[Site], target: Target, indicator: Indicator) -> list[Site]:
    """The sites (of a config's ``sites``) a target is judged on, or city-wide summed over:
    those named or else all, of the station types named, that feed the KPI the indicator
    reads."""
    named = set(target.sites)
    kpi = indicator.computation.kpi
    return [
        site for site in sites
        if (not named or site.id in named)
        and (not target.station_types or site.station_type in target.station_types)
        and (kpi is None or site.feeds_kpi(kpi))
    ]


def city_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of a city config file, for editors (``schema --city``)."""
    writer = SchemaWriter()
    top = writer.model(CityConfig, skip=("source_path",))
    return {"$schema": DRAFT, "title": "ssc-edge-agent city config", **top,
            "definitions": writer.definitions}
