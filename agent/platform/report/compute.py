"""Building a report (docs/reports.md): for each indicator of the catalogue that a site of the
city feeds, read the site's stored KPI windows of the period, compute each station's yearly
figures and their checks against the limits, the city-wide share of stations meeting each
limit, the city-wide figures, progress toward each target and each station's data capture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from agent.kpi.calendar import Calendar
from agent.platform import statistics as st
from agent.platform.indicators import Catalogue, Indicator, Limit
from agent.platform.report import figures as fg
from agent.platform.report.inputs import CityLike, SiteLike
from agent.platform.report.model import (
    Capture,
    CityFigure,
    CityLimit,
    IndicatorReport,
    LimitInfo,
    Report,
    SourceDoc,
    Station,
    StationYear,
)
from agent.platform.report.reader import WindowReader
from agent.platform.report.trend import Figure, capture, share_meeting
from agent.units import KpiDuration, parse_kpi_duration

if TYPE_CHECKING:
    from agent.platform.inventory import Inventory

__all__ = ["Builder", "LimitsFor", "SiteSeries", "build_report", "not_computed",
           "period_bounds"]

LimitsFor = Callable[[Indicator], Sequence[Limit]]
_DAY = KpiDuration(1, "d")
INVENTORY_WHAT = "smart meters reporting, % of the meters installed"


def not_computed(indicator: Indicator) -> str:
    """Why this release gives no figure of ``indicator`` at all, or ''."""
    if indicator.computation.input == "inventory":
        return "not computed: this release does not read the fleet's meter inventory"
    if indicator.computation.statistic == "loss_share":
        return ("not computed: it needs the volume billed by the utility, which the city "
                "config does not give")
    return ""


def period_bounds(zone: ZoneInfo, first: date, last: date) -> tuple[int, int]:
    """``[start, end)`` epoch ms of the local dates ``first`` … ``last``."""
    calendar = Calendar(zone)

    def noon(day: date) -> int:
        return int(datetime.combine(day, time(12), tzinfo=zone).timestamp() * 1000)

    return calendar.window_at(_DAY, noon(first))[0], calendar.window_at(_DAY, noon(last))[1]


@dataclass(frozen=True, slots=True)
class SiteSeries:
    """A site's windows of one KPI in the period, or why there are none."""

    source: str
    problem: str
    records: tuple[st.Record, ...]
    by_year: dict[int, tuple[st.Record, ...]]  # by the local year a window starts in


class _Instants:
    """Aware UTC datetimes by epoch ms, each made once: a window's end is the next one's
    start, so a year of hourly windows holds half as many (a report holds ~1 M windows)."""

    def __init__(self) -> None:
        self._made: dict[int, datetime] = {}

    def __call__(self, ms: int) -> datetime:
        moment = self._made.get(ms)
        if moment is None:
            moment = self._made[ms] = datetime.fromtimestamp(ms / 1000, UTC)
        return moment


def limit_info(limit: Limit, catalogue: Catalogue) -> LimitInfo:
    source = catalogue.sources.get(limit.source)
    # "Directive 2008/50/EC", "WHO global air quality guidelines": the title's head
    title = source.title.split(" of the ")[0].split(":")[0] if source else limit.source
    kind = limit.kind.replace("_", " ")
    label = f"{title}: {kind}" + (f" {limit.level}" if limit.level else "")
    return LimitInfo(
        key=fg.limit_key(limit), label=label, kind=limit.kind, level=limit.level,
        value=limit.value, unit=limit.unit, averaging=limit.averaging,
        comparison=limit.comparison, allowed=limit.exceedances_allowed,
        percentile=limit.percentile.value if limit.percentile else None,
        years_averaged=limit.years_averaged, applies_from=limit.applies_from,
        source=limit.source, ref=limit.ref, verified=limit.verified, note=limit.note)


class Builder:
    """Reads each site's windows once and computes what the report shows."""

    def __init__(self, city: CityLike, catalogue: Catalogue, reader: WindowReader,
                 first: date, last: date, *, limits_for: LimitsFor | None = None,
                 inventory: Inventory | None = None) -> None:
        if last < first:
            raise ValueError(f"the period ends ({last}) before it starts ({first})")
        self.city = city
        self.catalogue = catalogue
        self.reader = reader
        self.first, self.last = first, last
        self.zone = city.city.tz
        self.start_ms, self.end_ms = period_bounds(self.zone, first, last)
        self.years = tuple(range(first.year, last.year + 1))
        self.limits_for: LimitsFor = limits_for or (lambda indicator: indicator.limits)
        self.inventory = inventory  # the fleet's meter inventory (None: not read)
        self._series: dict[tuple[str, str, str | None], SiteSeries] = {}
        self._daily: dict[tuple[str, str, str | None], tuple[tuple[str, float | None], ...]] = {}

    # ------------------------------------------------------------------ reading

    def sites_of(self, kpi: str | None) -> list[SiteLike]:
        if kpi is None:
            return []
        return [s for s in self.city.sites if any(kpi in f.kpis for f in s.feeds)]

    def series(self, site: SiteLike, kpi: str, extra: str | None = None) -> SiteSeries:
        key = (site.id, kpi, extra)
        if key not in self._series:
            self._series[key] = self._read(site, kpi, extra)
        return self._series[key]

    def _read(self, site: SiteLike, kpi: str, extra: str | None) -> SiteSeries:
        found: dict[str, list[st.Record]] = {}
        instant = _Instants()
        for feed in site.feeds:
            if kpi not in feed.kpis:
                continue
            windows = self.reader.windows(feed.gateway, kpi, self.start_ms, self.end_ms,
                                          devices=feed.devices, extra=extra)
            for src, rows in windows.items():
                found[f"{feed.gateway} {kpi} {src}"] = [
                    st.Record(instant(w.start_ms), instant(w.end_ms), w.value, w.valid)
                    for w in rows]
        gateways = ", ".join(dict.fromkeys(f.gateway for f in site.feeds if kpi in f.kpis))
        if not found:
            return SiteSeries("", f"no {kpi} window of gateway {gateways} is stored for the "
                              "period", (), {})
        if len(found) > 1:
            names = ", ".join(sorted(found)[:4])
            return SiteSeries("", f"{len(found)} sources feed {kpi} at this site ({names}): "
                              "name the one device in the site's feed (devices)", (), {})
        source, records = next(iter(found.items()))
        by_year: dict[int, list[st.Record]] = {}
        for record in records:
            by_year.setdefault(record.start.astimezone(self.zone).year, []).append(record)
        return SiteSeries(source, "", tuple(records),
                          {year: tuple(rows) for year, rows in by_year.items()})

    # ------------------------------------------------------------------ indicators

    def annual(self, indicator: Indicator, site: SiteLike, year: int) -> Figure:
        """The indicator's own yearly figure at ``site`` (targets use it too)."""
        kpi = indicator.computation.kpi
        assert kpi is not None
        series = self.series(site, kpi, indicator.computation.extra)
        if series.problem:
            return Figure.invalid(series.problem)
        figure = fg.annual_figure(indicator, series.by_year.get(year, ()), self.zone, year)
        if indicator.computation.statistic == "sum_per_capita":
            return self._per_capita(indicator, site.population, figure, year)
        return figure

    def _per_capita(self, indicator: Indicator, population: int | None, daily_mean: Figure,
                    year: int) -> Figure:
        if not daily_mean.valid or daily_mean.value is None:
            return daily_mean
        if not population:
            return Figure.invalid("the site's population is not set in the city config")
        days = daily_mean.expected or 365
        if indicator.unit == "l/capita/day":  # m³ a day → litres a day per inhabitant
            value = daily_mean.value * 1000.0 / population
        else:  # the year's total (missing days at the year's mean daily value) per inhabitant
            value = daily_mean.value * days / population
        return Figure(value, True, n=daily_mean.n, expected=daily_mean.expected)

    def count(self, indicator: Indicator, site: SiteLike, year: int, *, threshold: float,
              comparison: str = ">") -> Figure:
        kpi = indicator.computation.kpi
        assert kpi is not None
        series = self.series(site, kpi, indicator.computation.extra)
        if series.problem:
            return Figure.invalid(series.problem)
        return fg.count_over(indicator, series.by_year.get(year, ()), self.zone, year,
                             threshold=threshold, comparison=comparison)

    def indicator(self, domain: str, indicator: Indicator) -> IndicatorReport | None:
        """The indicator's section; None when no site feeds it."""
        computation = indicator.computation
        limits = list(self.limits_for(indicator))
        infos = tuple(limit_info(limit, self.catalogue) for limit in limits)
        u4ssc = indicator.u4ssc.code if indicator.u4ssc else ""
        sdgs = tuple(f"{s.id} {s.name}" for s in indicator.sdg)

        def section(stations: tuple[Station, ...] = (), city_limits: tuple[CityLimit, ...] = (),
                    city_figures: tuple[CityFigure, ...] = (), calendar: str | None = None,
                    not_computed: str = "") -> IndicatorReport:
            return IndicatorReport(
                indicator.id, domain, indicator.name, indicator.unit, indicator.description,
                computation.statistic, computation.kpi, computation.window, u4ssc, sdgs, infos,
                stations, city_limits, city_figures, calendar, not_computed)

        if computation.input == "inventory":  # read from the fleet's inventory, city-wide
            if self.inventory is None:
                return None
            return section(city_figures=(CityFigure(
                self.last.year, INVENTORY_WHAT, self.inventory_figure(indicator, self.last.year)),))
        sites = self.sites_of(computation.kpi)
        if not sites:
            return None
        if not_computed(indicator):
            return section(not_computed=not_computed(indicator))
        calendar_limit = next(
            (limit for limit in limits if computation.statistic == "exceedances"
             and computation.window in ("1 d", "1 h")), None)
        stations = tuple(self._station(indicator, site, limits, calendar_limit)
                         for site in sites)
        city_limits = self._city_limits(indicator, stations, infos)
        city_figures = self._city_figures(indicator, sites, infos)
        return section(stations, city_limits, city_figures,
                       fg.limit_key(calendar_limit) if calendar_limit else None)

    def _station(self, indicator: Indicator, site: SiteLike, limits: Sequence[Limit],
                 calendar_limit: Limit | None) -> Station:
        kpi = indicator.computation.kpi
        assert kpi is not None
        series = self.series(site, kpi, indicator.computation.extra)
        statistic = indicator.computation.statistic

        def station(years: tuple[StationYear, ...] = (), daily: tuple[tuple[str, float | None],
                    ...] = (), calendar: tuple[tuple[str, int | None], ...] = ()) -> Station:
            return Station(site.id, site.name, site.station_type, site.population,
                           series.source, series.problem, years, daily, calendar)

        if series.problem:
            years = tuple(StationYear(y, "", Figure.invalid(series.problem), ())
                          for y in self.years)
            return station(years)
        annual = {year: self.annual(indicator, site, year) for year in self.years}
        checks = fg.limit_checks(indicator, limits, series.by_year, self.zone,
                                 years=self.years, annual=annual)
        what = {"mean": "annual mean", "value": "value of the year",
                "population_share": "value of the year",
                "sum_per_capita": "per inhabitant"}.get(statistic, "")
        years = tuple(
            StationYear(y, what, annual[y] if statistic != "exceedances" else None,
                        tuple(c for c in checks if c.year == y)) for y in self.years)
        key = (site.id, kpi, indicator.computation.extra)
        if key not in self._daily:  # an annual-mean and an exceedance indicator share them
            self._daily[key] = self._daily_values(indicator, series.records)
        daily = self._daily[key]
        return station(years, daily, self._calendar(indicator, series.records, daily,
                                                    calendar_limit))

    def _daily_values(self, indicator: Indicator, records: Sequence[st.Record]
                      ) -> tuple[tuple[str, float | None], ...]:
        """Each local day's value, for the time series: a daily window's, or the mean of the
        day's hourly windows (valid with 75 % of its hours)."""
        window = indicator.computation.window
        if window == "1 d":
            days: dict[str, float | None] = {}
            for record in records:
                days[fg.local_day(record.start, self.zone)] = (
                    record.value if record.usable else None)
            return tuple(days.items())
        if window != "1 h":
            return ()
        means = st.daily_means(records, self.zone, self.first, self.last)
        return tuple((d.day.isoformat(), d.stat.value) for d in means)

    def _calendar(self, indicator: Indicator, records: Sequence[st.Record],
                  daily: Sequence[tuple[str, float | None]], limit: Limit | None
                  ) -> tuple[tuple[str, int | None], ...]:
        """Each local day's windows over ``limit`` (None: the day has no valid value)."""
        if limit is None:
            return ()
        if indicator.computation.window == "1 d":
            return tuple((day, None if v is None else int(fg.exceeds(v, limit)))
                         for day, v in daily)
        over: dict[str, int] = {}
        for record in records:
            if record.usable and record.value is not None and fg.exceeds(record.value, limit):
                day = fg.local_day(record.start, self.zone)
                over[day] = over.get(day, 0) + 1
        return tuple((day, None if v is None else over.get(day, 0)) for day, v in daily)

    def _city_limits(self, indicator: Indicator, stations: Sequence[Station],
                     infos: Sequence[LimitInfo]) -> tuple[CityLimit, ...]:
        result = []
        chosen = {s.id: fg.primary_checks([c for y in s.years for c in y.checks])
                  for s in stations}
        counts = indicator.computation.statistic == "exceedances"
        for info in infos:
            if counts and info.allowed is None and info.percentile is None:
                continue  # counted, not judged: no share to give
            for year in self.years:
                verdicts = []
                for s in stations:
                    check = chosen[s.id].get((info.key, year))
                    verdicts.append((s.id, check.meets if check else None))
                result.append(CityLimit(info.key, year, share_meeting(verdicts)))
        return tuple(result)

    def _city_figures(self, indicator: Indicator, sites: Sequence[SiteLike],
                      infos: Sequence[LimitInfo]) -> tuple[CityFigure, ...]:
        statistic = indicator.computation.statistic
        result: list[CityFigure] = []
        for year in self.years:
            if statistic == "sum_per_capita":
                result.append(CityFigure(year, "all sites together",
                                         self._city_per_capita(indicator, sites, year)))
            elif statistic == "population_share":
                for info in infos:
                    result.append(CityFigure(
                        year, f"at or above {info.value:g} {info.unit} ({info.label})",
                        self._population_share(indicator, sites, year, info)))
        return tuple(result)

    def _city_per_capita(self, indicator: Indicator, sites: Sequence[SiteLike], year: int
                         ) -> Figure:
        totals = [(s, self.annual(indicator, s, year)) for s in sites]
        bad = [s.id for s, f in totals if not f.valid]
        if bad:
            return Figure.invalid(f"no valid figure at {', '.join(bad)}", n=len(sites) -
                                  len(bad), expected=len(sites))
        people = sum(s.population or 0 for s in sites)
        total = sum((f.value or 0.0) * (s.population or 0) for s, f in totals)
        return Figure(total / people, True, n=len(sites), expected=len(sites))

    def city_figure(self, indicator: Indicator, sites: Sequence[SiteLike], year: int,
                    info: LimitInfo | None = None) -> Figure:
        """The city-wide figure of ``sites`` in ``year`` (a target's ``city`` scope)."""
        if indicator.computation.input == "inventory":
            return self.inventory_figure(indicator, year)
        statistic = indicator.computation.statistic
        if statistic == "sum_per_capita":
            return self._city_per_capita(indicator, sites, year)
        if statistic == "population_share" and info is not None:
            return self._population_share(indicator, sites, year, info)
        figures = [(s.id, self.annual(indicator, s, year)) for s in sites]
        bad = [name for name, f in figures if not f.valid]
        if not figures:
            return Figure.invalid("no site is in the target's scope")
        if bad:
            return Figure.invalid(f"no valid figure at {', '.join(bad)}",
                                  n=len(figures) - len(bad), expected=len(figures))
        values = [f.value or 0.0 for _, f in figures]
        return Figure(sum(values) / len(values), True, n=len(values), expected=len(values))

    def inventory_figure(self, indicator: Indicator, year: int) -> Figure:
        """A smart meter share (docs/platform.md §5.1): a figure of when the report is made,
        so of the period's last year, and only when the period reaches that time."""
        inv = self.inventory
        found = None if inv is None else next(
            (f for f in inv.indicators if f.indicator.id == indicator.id), None)
        if inv is None or found is None:
            return Figure.invalid(not_computed(indicator))
        history = "the sink keeps each meter's newest good reading, not its history"
        if year != self.last.year:
            return Figure.invalid(f"the inventory is a figure of {self.last.year} only: "
                                  f"{history}")
        if self.end_ms <= inv.at_ms - inv.window_ms:
            return Figure.invalid(f"the period ended before the last "
                                  f"{inv.window_ms // 3_600_000} h the inventory is of: {history}")
        k = found.figures
        if k.share is None:  # the page says "not valid:" itself
            why = k.why.removeprefix("not computed: ").removeprefix("not valid: ")
            return Figure.invalid(why, n=k.reporting, expected=k.stock)
        return Figure(k.share, True, n=k.reporting, expected=k.stock)

    def _population_share(self, indicator: Indicator, sites: Sequence[SiteLike], year: int,
                          info: LimitInfo) -> Figure:
        exposed = total = 0
        missing = []
        for site in sites:
            level = self.annual(indicator, site, year)
            if not site.population:
                missing.append(f"{site.id} (no population)")
            elif not level.valid or level.value is None:
                missing.append(site.id)
            else:
                total += site.population
                exposed += site.population if fg.exceeds(level.value, info) else 0
        if missing or total == 0:
            return Figure.invalid("no valid level or population at " + (", ".join(missing)
                                  or "any site"), n=len(sites) - len(missing),
                                  expected=len(sites))
        return Figure(100.0 * exposed / total, True, n=len(sites), expected=len(sites))

    # ------------------------------------------------------------------ capture

    def captures(self) -> tuple[Capture, ...]:
        """Each site's data capture of each KPI it feeds: valid windows / windows the period
        holds (windows of the KPI's length in the site's zone)."""
        calendar = Calendar(self.zone)
        windows = {ind.computation.kpi: ind.computation.window
                   for _, ind in self.catalogue.indicators if ind.computation.kpi}
        result = []
        for site in self.city.sites:
            kpis = dict.fromkeys(k for f in site.feeds for k in f.kpis)
            for kpi in kpis:
                window = windows.get(kpi)
                series = self.series(site, kpi)
                if window is None:
                    continue  # a KPI no indicator reads: not the report's business
                expected = calendar.count(parse_kpi_duration(window), self.start_ms,
                                          self.end_ms)
                if series.problem:
                    figure, short = Figure(0.0, True, n=0, expected=expected), series.problem
                else:
                    valid = sum(1 for r in series.records if r.usable)
                    figure, short = capture(valid, expected)
                result.append(Capture(site.id, site.name, kpi, window, figure, short))
        return tuple(result)


def build_report(city: CityLike, catalogue: Catalogue, reader: WindowReader, first: date,
                 last: date, *, generated: str, limits_for: LimitsFor | None = None,
                 inventory: Inventory | None = None) -> Report:
    """The whole report of ``city`` over the local dates ``first`` … ``last``; the smart meter
    indicators from ``inventory`` when given."""
    from agent.platform.report.targets import target_reports

    builder = Builder(city, catalogue, reader, first, last, limits_for=limits_for,
                      inventory=inventory)
    sections = []
    for domain, indicator in catalogue.indicators:
        section = builder.indicator(domain, indicator)
        if section is not None:
            sections.append(section)
    targets = target_reports(builder)
    cited = dict.fromkeys(info.source for s in sections for info in s.limits)
    sources = tuple(SourceDoc(name, doc.title, doc.identifier, doc.url)
                    for name, doc in catalogue.sources.items() if name in cited)
    notes = []
    partial = [str(year) for year in builder.years
               if (first > date(year, 1, 1)) or (last < date(year, 12, 31))]
    if partial:
        whose = "that year's" if len(partial) == 1 else "those years'"
        notes.append(f"The period covers only part of {' and '.join(partial)}: {whose} "
                     "figures rest on the days read, and a yearly figure needs 90 % of its "
                     "year, so they are not valid.")
    if reader.duplicates:
        notes.append(f"{reader.duplicates} KPI windows were stored twice; each is counted once")
    return Report(city.city.name, city.city.timezone, first, last, generated, builder.years,
                  tuple(sections), targets, builder.captures(), sources, tuple(notes))
