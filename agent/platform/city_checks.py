"""Loading a city config (docs/city.md §3): read the TOML file, validate every table, then what
spans tables and the indicator catalogue (site ids, feeds, a target's indicator, statistic,
units, scope, population, years, the limits a report shows), and report every problem at once
as a :class:`~agent.errors.ConfigError`, one line each, naming the file, the table and the key:

    city.toml: targets[2] (id=pm25_2030, indicator=pm25_annual_mean) → unit: 'd' does not …

The words and places are the agent config's (:mod:`agent.config.messages`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.config.loader import read_toml_file
from agent.config.messages import _M, _header, _Item
from agent.errors import ConfigError, excerpt
from agent.platform.city import (
    SECTIONS,
    CityConfig,
    CitySection,
    InventorySection,
    ReportSection,
    Site,
    Target,
    convert,
    limit_refs,
    scope_sites,
)
from agent.platform.indicators import STATISTICS, UNITS, Catalogue, Indicator, load_catalogue

__all__ = ["city_from_dict", "describe", "load_city"]

# The statistics that compare each window with a value, which a target names (`threshold`):
# what they do with it, in the words of an error.
THRESHOLD_STATISTICS = {
    "exceedances": "counts the windows strictly over",
    "population_share": "counts the population at sites at or over",
}
# The most a count of days or hours over a value can be in one year.
_MOST_PER_YEAR = {"d": 366.0, "h": 8784.0}


def load_city(path: Path, *, catalogue: Catalogue | None = None) -> CityConfig:
    """Read and validate a city config file against ``catalogue`` (default: the shipped one);
    ConfigError lists every problem, one line each, each starting with the file's path."""
    data = read_toml_file(path, "city config")
    return city_from_dict(data, catalogue=catalogue, source_path=path)


def city_from_dict(
    data: Mapping[str, Any],
    *,
    catalogue: Catalogue | None = None,
    source_path: Path | None = None,
) -> CityConfig:
    """Validate a parsed city config; lines start with ``source_path`` when given."""
    return _CityLoader(data, catalogue or load_catalogue()).run(source_path)


def describe(path: Path, config: CityConfig) -> str:
    """The line ``validate --city`` prints for a valid file."""
    return (f"{path}: valid ({config.city.name}, {len(config.sites)} sites, "
            f"{len(config.targets)} targets)")


def _unknown(what: str, name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"no {what} {excerpt(name)!r}; {hint}known: {', '.join(known) or 'none'}"


class _CityLoader:
    """One validation run: every table, then what spans them, every problem collected."""

    def __init__(self, data: Mapping[str, Any], catalogue: Catalogue) -> None:
        self.data = data
        self.catalogue = catalogue
        self.indicator_ids = [indicator.id for _, indicator in catalogue.indicators]
        self.domains = {indicator.id: domain for domain, indicator in catalogue.indicators}
        self.items: list[_Item] = []
        # Site ids as written, valid or not, and whether every site is valid: a target is
        # judged on the sites only when all are (a bad site is a line of its own already).
        self.site_ids: set[str] = set()
        self.sites_valid = True

    def item(self, where: str, *, listed: bool) -> _Item:
        item = _Item(where, listed=listed)
        self.items.append(item)
        return item

    def run(self, source_path: Path | None) -> CityConfig:
        top = self.item("", listed=False)
        for key in self.data:
            if key not in SECTIONS:
                top.add((key,), f"unknown key; known keys: {', '.join(SECTIONS)}")
        city = self._table("city", CitySection, required=True)
        sites = self._sites()
        targets = self._targets(city, sites)
        report = self._table("report", ReportSection, required=False)
        if report is not None:
            self._report(report)
        inventory = self._table("inventory", InventorySection, required=False)
        if inventory is not None:
            self._inventory(inventory)
        lines = [line for item in self.items for line in item.lines]
        if lines:
            prefix = f"{source_path}: " if source_path is not None else ""
            raise ConfigError([prefix + line for line in lines])
        assert city is not None  # a missing [city] is a line above
        return CityConfig(city=city, sites=list(sites.values()), targets=targets,
                          report=report or ReportSection(),
                          inventory=inventory or InventorySection(), source_path=source_path)

    def _table(self, section: str, model: type[_M], *, required: bool) -> _M | None:
        value = self.data.get(section)
        item = self.item(section, listed=False)
        if value is None:
            if required:
                item.add((), f"required (add a [{section}] table)")
            return None
        if not isinstance(value, dict):
            item.add((), f"must be a table ([{section}])")
            return None
        return item.validate(model, value, {})

    def _tables(self, section: str) -> Iterator[tuple[int, dict[str, Any]]]:
        """The items of ``[[section]]`` that are tables, by index; a line for each other one."""
        value = self.data.get(section, [])
        if not isinstance(value, list):
            self.item(section, listed=False).add((), f"must be a list of tables ([[{section}]])")
            return
        for i, raw in enumerate(value):
            if isinstance(raw, dict):
                yield i, raw
            else:
                self.item(f"{section}[{i}]", listed=True).add((), "must be a table")

    # ----------------------------------------------------------------------------------------
    # Sites

    def _sites(self) -> dict[str, Site]:
        if "sites" not in self.data:
            self.item("sites", listed=False).add((), "required (add a [[sites]] table)")
        sites: dict[str, Site] = {}
        first: dict[str, int] = {}
        # (gateway, kpi) → the sites it feeds with their devices (empty: every device).
        fed: dict[tuple[str, str], list[tuple[str, frozenset[str]]]] = {}
        for i, raw in self._tables("sites"):
            site_id = raw.get("id")
            item = self.item(f"sites[{i}]{_header(id=site_id)}", listed=True)
            site = item.validate(Site, raw, {})
            self.sites_valid &= site is not None
            if isinstance(site_id, str):
                self.site_ids.add(site_id)
                if site_id in first:
                    item.add(("id",), f"{site_id!r} is already used by sites[{first[site_id]}]")
                first.setdefault(site_id, i)
            if site is None or site.id in sites:
                continue
            sites[site.id] = site
            for j, feed in enumerate(site.feeds):
                devices = frozenset(feed.devices)
                for k, kpi in enumerate(feed.kpis):
                    for other, theirs in fed.get((feed.gateway, kpi), []):
                        if not devices or not theirs or devices & theirs:
                            where = "this site" if other == site.id else f"site {other!r}"
                            item.add(("feeds", j, "kpis", k), (
                                f"KPI {kpi!r} of gateway {feed.gateway!r} already feeds {where}"
                                ": a window belongs to one site (split them by devices)"))
                            break
                    fed.setdefault((feed.gateway, kpi), []).append((site.id, devices))
        return sites

    # ----------------------------------------------------------------------------------------
    # Targets

    def _targets(self, city: CitySection | None, sites: Mapping[str, Site]) -> list[Target]:
        out: list[Target] = []
        first: dict[str, int] = {}
        for i, raw in self._tables("targets"):
            target_id = raw.get("id")
            item = self.item(f"targets[{i}]{_header(id=target_id, indicator=raw.get('indicator'))}",
                             listed=True)
            target = item.validate(Target, raw, {})
            if isinstance(target_id, str):
                if target_id in first:
                    item.add(("id",),
                             f"{target_id!r} is already used by targets[{first[target_id]}]")
                first.setdefault(target_id, i)
            if target is None:
                continue
            if target.indicator not in self.domains:
                item.add(("indicator",), _unknown("indicator", target.indicator,
                                                  self.indicator_ids) + " (config/indicators/)")
                continue
            indicator = self.catalogue.by_id(target.indicator)
            _TargetCheck(target, indicator, item).run()
            self._scope(target, indicator, item, city, sites)
            out.append(target)
        return out

    def _scope(self, target: Target, indicator: Indicator, item: _Item,
               city: CitySection | None, sites: Mapping[str, Site]) -> None:
        computation = indicator.computation
        if target.scope == "share_of_sites" and target.share_percent is None:
            item.add(("share_percent",), "required with scope share_of_sites: the share of "
                     "the sites that must meet the target, in percent")
        elif target.scope != "share_of_sites" and target.share_percent is not None:
            item.add(("share_percent",), f"only with scope share_of_sites (this target's is "
                     f"{target.scope})")
        if computation.input == "inventory":
            if target.scope != "city":
                item.add(("scope",), f"indicator {indicator.id} is read from the fleet's "
                         "inventory, city-wide: write scope = \"city\"")
            return
        if target.scope == "every_site" and target.sites:
            item.add(("sites",), "scope every_site takes every site that feeds the indicator; "
                     "to judge only these, write scope = \"sites\"")
            return
        if target.scope == "sites" and not target.sites:
            item.add(("sites",), "scope sites judges the sites named here: name at least one")
        known = sorted(self.site_ids)
        missing = False
        for k, site_id in enumerate(target.sites):
            if site_id not in self.site_ids:
                item.add(("sites", k), _unknown("site", site_id, known))
                missing = True
            elif site_id not in sites:
                missing = True
            elif computation.kpi is not None and not sites[site_id].feeds_kpi(computation.kpi):
                item.add(("sites", k), f"site {site_id!r} has no feed with KPI "
                         f"{computation.kpi!r}, which indicator {indicator.id} reads")
                missing = True
        if missing or not sites or not self.sites_valid:
            return  # no site list to judge the rest on (its problems are lines already)
        judged = scope_sites(list(sites.values()), target, indicator)
        key = ("sites",) if target.sites else ("scope",)
        if not judged:
            fed = f"feeds KPI {computation.kpi!r}, which it reads" if computation.kpi else \
                "is in scope"
            kinds = f" of station type {', '.join(target.station_types)}" \
                if target.station_types else ""
            item.add(key, f"no site{kinds} {fed}: the target has nothing to be judged on")
            return
        if self.domains[indicator.id] == "air":
            untyped = [site.id for site in judged if site.station_type is None]
            if untyped:
                item.add(key, f"sites without station_type: {', '.join(untyped)}; an air "
                         "quality figure is read by its station's type (traffic, industrial, "
                         "urban_background, …)")
        if "population" in computation.needs:
            # Per capita city-wide may divide by the city's population; a share of the
            # population exposed needs each site's population all the same.
            per_city = target.scope == "city" and computation.statistic != "population_share"
            unpopulated = [site.id for site in judged if site.population is None]
            if unpopulated and not (per_city and city is not None and city.population):
                hint = " or [city] population" if per_city else ""
                item.add(key, f"indicator {indicator.id} needs the population each site "
                         f"serves: give population{hint} for {', '.join(unpopulated)}")

    # ----------------------------------------------------------------------------------------
    # Report

    def _report(self, report: ReportSection) -> None:
        item = self.item("report", listed=False)
        every_ref = sorted({ref for _, indicator in self.catalogue.indicators
                            for limit in indicator.limits for ref in limit_refs(limit)})
        for k, ref in enumerate(report.limits or []):
            if ref not in every_ref:
                item.add(("limits", k), _unknown("limit", ref, every_ref))
        first: dict[str, int] = {}
        for i, entry in enumerate(report.indicators):
            loc: tuple[str | int, ...] = ("indicators", i)
            if entry.id in first:
                item.add((*loc, "id"), f"{entry.id!r} is already listed at "
                         f"report.indicators[{first[entry.id]}]")
            first.setdefault(entry.id, i)
            if entry.id not in self.domains:
                item.add((*loc, "id"), _unknown("indicator", entry.id, self.indicator_ids))
                continue
            indicator = self.catalogue.by_id(entry.id)
            refs = sorted({ref for limit in indicator.limits for ref in limit_refs(limit)})
            for k, ref in enumerate(entry.limits):
                if ref not in refs:
                    item.add((*loc, "limits", k),
                             _unknown(f"limit of {entry.id}", ref, refs))

    def _inventory(self, inventory: InventorySection) -> None:
        """A device is a meter of one kind: listed once, by name or by its gateway's 'every
        device' (an empty ``devices``)."""
        item = self.item("inventory", listed=False)
        whole: dict[str, int] = {}  # gateway → the group that takes every device of it
        named: dict[tuple[str, str], int] = {}  # (gateway, device) → the group naming it
        for i, group in enumerate(inventory.meters):
            loc: tuple[str | int, ...] = ("meters", i)
            if not group.devices:
                other = whole.get(group.gateway, next(
                    (g for (gw, _), g in named.items() if gw == group.gateway), None))
                if other is not None:
                    item.add((*loc, "devices"), f"empty: every device of gateway "
                             f"{group.gateway!r}, which inventory.meters[{other}] lists too: "
                             "name the devices of each kind")
                whole.setdefault(group.gateway, i)
                continue
            for k, device in enumerate(group.devices):
                key = (group.gateway, device)
                other = named.get(key, whole.get(group.gateway))
                if other is not None:
                    where = "this entry" if other == i else f"inventory.meters[{other}]"
                    item.add((*loc, "devices", k), f"device {excerpt(device)!r} of gateway "
                             f"{group.gateway!r} is listed by {where} already: a meter has "
                             "one kind")
                    continue
                named[key] = i


class _TargetCheck:
    """A target against its indicator: statistic, the figure's form and unit, years."""

    def __init__(self, target: Target, indicator: Indicator, item: _Item) -> None:
        self.target = target
        self.indicator = indicator
        self.item = item

    def run(self) -> None:
        self._statistic()
        if self.target.is_relative:
            self._relative()
        else:
            self._absolute()
        self._baseline()
        self._threshold()

    def _statistic(self) -> None:
        given, own = self.target.statistic, self.indicator.computation.statistic
        if given is None:
            return
        if given not in STATISTICS:
            self.item.add(("statistic",), _unknown("statistic", given, list(STATISTICS)))
        elif given != own:
            self.item.add(("statistic",), f"indicator {self.indicator.id} is computed as "
                          f"{own!r} (its catalogue entry), not {given!r}")

    def _unit(self, loc: tuple[str, ...], unit: str | None, to: str, *, what: str) -> bool:
        """True when ``unit`` is given, known and converts into ``to``; a line otherwise."""
        whose = ("the windows of " if what == "threshold" else "") + self.indicator.id
        if unit is None:
            self.item.add(loc, f"required with {what}: {whose} is in {to!r}")
            return False
        if unit not in UNITS:
            self.item.add(loc, f"unknown unit {excerpt(unit)!r}; known: {', '.join(UNITS)}")
            return False
        try:
            convert(1.0, unit, to)
        except ValueError:
            self.item.add(loc, f"{unit!r} does not convert to {to!r}, the unit of {whose}")
            return False
        return True

    def _absolute(self) -> None:
        target, unit = self.target, self.indicator.unit
        if target.value is None:
            self.item.add(("value",), "required: the figure to reach (or change_percent with "
                          "a baseline for a relative target)")
            return
        if not self._unit(("unit",), target.unit, unit, what="value"):
            return
        value = convert(target.value, target.unit or unit, unit)
        if value < 0:
            self.item.add(("value",), f"{target.value:g} {target.unit}: a figure of "
                          f"{self.indicator.id} is never negative")
        elif unit == "%" and value > 100:
            self.item.add(("value",), f"{target.value:g} %: a share is at most 100 %")
        elif unit in _MOST_PER_YEAR and value > _MOST_PER_YEAR[unit]:
            self.item.add(("value",), f"{target.value:g} {unit}: a year has at most "
                          f"{_MOST_PER_YEAR[unit]:g}")

    def _relative(self) -> None:
        target = self.target
        if target.value is not None:
            self.item.add(("value",), "give value (an absolute target) or change_percent "
                          "with a baseline (a relative one), not both")
        if target.unit is not None and target.unit != "%":
            self.item.add(("unit",), "a relative target is in percent of its baseline: leave "
                          "unit out or write \"%\"")
        if target.baseline is None:
            self.item.add(("baseline",), "required with change_percent: the year (and "
                          "figure) the change is measured from, e.g. { year = 2025 }")

    def _baseline(self) -> None:
        baseline, target = self.target.baseline, self.target
        if baseline is None:
            return
        if baseline.year >= target.by:
            self.item.add(("baseline", "year"), f"{baseline.year} is not before the target's "
                          f"year (by = {target.by})")
        if baseline.value is not None:
            self._unit(("baseline", "unit"), baseline.unit, self.indicator.unit,
                       what="baseline.value")
            if target.is_relative and baseline.value == 0:
                self.item.add(("baseline", "value"), "a change in percent needs a baseline "
                              "figure above 0")
        elif baseline.unit is not None:
            self.item.add(("baseline", "unit"), "the unit of baseline.value, which is absent")

    def _threshold(self) -> None:
        target, indicator = self.target, self.indicator
        statistic = indicator.computation.statistic
        if statistic not in THRESHOLD_STATISTICS:
            for key in ("threshold", "threshold_unit"):
                if getattr(target, key) is not None:
                    self.item.add((key,), f"indicator {indicator.id} compares no window with "
                                  f"a value (it is computed as {statistic!r})")
            return
        if target.threshold is None:
            counts = THRESHOLD_STATISTICS[statistic]
            self.item.add(("threshold",), f"required: {indicator.id} {counts} a value; name it "
                          f"(e.g. a limit's: {_limit_values(indicator)})")
            return
        windows_unit = next((limit.unit for limit in indicator.limits), None)
        if windows_unit is not None:
            self._unit(("threshold_unit",), target.threshold_unit, windows_unit,
                       what="threshold")


def _limit_values(indicator: Indicator) -> str:
    shown = sorted({f"{limit.value:g} {limit.unit}" for limit in indicator.limits})
    return ", ".join(shown) or "none in the catalogue"
