"""The city indicator catalogue (docs/indicators.md): which city indicators the gateways' KPI
windows feed, how each is computed, and the limits, guideline values and thresholds it is
judged against, every figure with the document and table it comes from.

The catalogue is TOML under ``config/indicators/``: ``sources.toml`` holds the documents
(``[sources.ID]``), every other file one domain's ``[[indicators]]``. :func:`load_catalogue`
reads a folder and checks it whole: strict keys, every ``source`` naming a document that
exists, every unit in :data:`UNITS`, every operator in :data:`agent.kpi.registry.REGISTRY`,
every duration written as ``[[kpis]]`` write theirs, and a ``note`` on every figure marked
``verified = false``. Problems are reported together, one line each, naming the file, the
indicator and the key (:class:`~agent.errors.ConfigError`).

Reading the catalogue is the platform's business; nothing here touches a gateway.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import agent
from agent.errors import ConfigError, excerpt
from agent.kpi.registry import REGISTRY
from agent.schema import ConfigModel, Field, ValidationError, render_loc
from agent.units import KpiDuration, nests_in, parse_kpi_duration

__all__ = [
    "STATISTICS",
    "UNITS",
    "Catalogue",
    "Computation",
    "Figure",
    "Indicator",
    "Limit",
    "Percentile",
    "Sdg",
    "Source",
    "U4ssc",
    "catalogue_dir",
    "load_catalogue",
]

_PACKAGED = Path(agent.__file__).parent / "_data" / "config" / "indicators"
_SOURCE_TREE = Path(agent.__file__).parent.parent / "config" / "indicators"
SOURCES_FILE = "sources.toml"

# The units an indicator or a limit may be given in, each with what it means. Units of KPI
# outputs are free labels (docs/kpis.md §2); an indicator's unit is a contract with the report.
UNITS: Mapping[str, str] = {
    "µg/m³": "micrograms per cubic metre (air pollutants)",
    "mg/m³": "milligrams per cubic metre (carbon monoxide)",
    "dB(A)": "A-weighted sound level in decibels (LAeq, Lden, Lnight)",
    "d": "days (a count of days over a value)",
    "h": "hours (a count of hours over a value)",
    "%": "percent",
    "kWh/yr/capita": "kilowatt-hours a year per inhabitant",
    "l/capita/day": "litres a day per inhabitant",
    "m³/h": "cubic metres an hour (flow)",
}

# What the report derives from the KPI windows of one reporting period (docs/indicators.md §3).
STATISTICS: Mapping[str, str] = {
    "mean": "the mean of the valid window values of the period (an annual mean)",
    "exceedances": "per limit, the number of valid windows over its value (its `comparison`)",
    "value": "the value of the window that is the period itself (a yearly window)",
    "sum_per_capita": "the sum of the period's windows divided by the population served",
    "population_share": "the share of the population at sites at or above the threshold",
    "loss_share": "(volume supplied - volume billed) / volume supplied, in percent",
    "inventory_share": "the share of meters in the fleet's inventory that are smart and reporting",
}

_ID = r"^[a-z0-9_]+$"
Kind = Literal[
    "limit_value",
    "target_value",
    "long_term_objective",
    "guideline_level",
    "interim_target",
    "reporting_threshold",
]


class _Strict(ConfigModel):
    """Every catalogue table: unknown keys are errors (the schema refuses them)."""


class Source(_Strict):
    """``[sources.ID]``: one document figures are taken from."""

    title: str = Field(min_length=1)
    identifier: str = Field(min_length=1)  # CELEX number, ISBN, report number
    url: str = Field(pattern=r"^https?://")
    published: str = Field(min_length=4)
    # The copies (or summaries) of it that were read to check the figures: the document itself
    # could not always be fetched, and a reader should know what the check rests on.
    read_at: list[str] = Field(default_factory=list)


class _Cited(_Strict):
    """What every figure and code carries: where it comes from, and whether it was checked
    there (``verified = false`` always says why in ``note``)."""

    source: str = Field(pattern=_ID)
    ref: str = Field(min_length=1)  # annex, table, article or page in the source
    verified: bool = True
    note: str = ""


class Figure(_Cited):
    """A number with the place it comes from."""

    value: float


class Percentile(_Cited):
    """The percentile of the windows equivalent to an allowed number of exceedances."""

    value: float = Field(gt=0, lt=100)


class Limit(_Cited):
    """One limit value, target value, guideline level or threshold for an indicator."""

    kind: Kind
    value: float = Field(ge=0)
    unit: str
    averaging: str  # a [[kpis]] duration: "1 h", "8 h", "1 d", "1 y"
    # ">": a value strictly above exceeds (limit values); ">=": the band starts at the value.
    comparison: Literal[">", ">="] = ">"
    exceedances_allowed: int | None = Field(default=None, ge=0)
    years_averaged: int | None = Field(default=None, ge=1)
    percentile: Percentile | None = None
    applies_from: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    level: str = ""  # the interim target's name, e.g. "IT-1"


class Computation(_Strict):
    """How the gateways' KPI windows (or the fleet's inventory) feed the indicator."""

    input: Literal["kpi_windows", "inventory"] = "kpi_windows"
    statistic: str
    operator: str | None = None
    window: str | None = None
    base: str | None = None
    extra: str | None = None  # the output extra read instead of `value` (lden's `lnight`)
    # A KPI of that name in config/kpis/ computes these windows (tests/platform checks it).
    kpi: str | None = Field(default=None, pattern=_ID)
    kpi_files: list[str] = Field(default_factory=list)
    window_min_coverage: Figure | None = None
    period_min_coverage: Figure | None = None
    needs: list[Literal["population", "billed_volume", "meter_inventory"]] = Field(
        default_factory=list
    )
    # inventory: the kind of meter counted (a kind of the city config's [[inventory.meters]])
    meter: Literal["electricity", "water", "heat", "gas"] | None = None


class U4ssc(_Cited):
    """The U4SSC key performance indicator the indicator reports to."""

    code: str = Field(pattern=r"^(EC|EN|SC): ?[A-Z]+: ?[A-Z]+: ?\d+[CA]$")
    name: str = Field(min_length=1)


class Sdg(_Cited):
    """An SDG indicator (``11.6.2``) or target (``7.3``) the indicator reports to."""

    id: str = Field(pattern=r"^\d{1,2}\.[0-9a-z]{1,2}(\.\d{1,2})?$")
    name: str = Field(min_length=1)


class Indicator(_Strict):
    """One ``[[indicators]]`` table."""

    id: str = Field(pattern=_ID, max_length=64)
    name: str = Field(min_length=1)
    unit: str
    period: str  # the reporting period, a [[kpis]] duration ("1 y")
    description: str = Field(min_length=1)
    computation: Computation
    u4ssc: U4ssc | None = None
    sdg: list[Sdg] = Field(default_factory=list)
    limits: list[Limit] = Field(default_factory=list)


@dataclass(frozen=True)
class Catalogue:
    """The loaded catalogue: indicators by domain (the file's stem) and the documents."""

    sources: Mapping[str, Source]
    indicators: tuple[tuple[str, Indicator], ...]  # (domain, indicator), in file order

    def by_id(self, indicator_id: str) -> Indicator:
        for _domain, indicator in self.indicators:
            if indicator.id == indicator_id:
                return indicator
        raise KeyError(indicator_id)

    def domains(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(domain for domain, _ in self.indicators))


def catalogue_dir() -> Path:
    """The shipped catalogue: the installed copy, else the source tree's."""
    return _PACKAGED if _PACKAGED.is_dir() else _SOURCE_TREE


_M = TypeVar("_M", bound=ConfigModel)


class _Problems:
    """One line per problem: ``FILE: indicators[2] (id=x) → limits[0].source: message``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, where: str, loc: tuple[str | int, ...], message: str) -> None:
        path = render_loc(loc)
        self.lines.append(f"{where} → {path}: {message}" if path else f"{where}: {message}")

    def validate(self, model: type[_M], data: object, where: str, loc: tuple[str | int, ...]
                 ) -> _M | None:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors():
                self.add(where, (*loc, *error.loc), error.message)
            return None


def load_catalogue(directory: Path | None = None) -> Catalogue:
    """Read and check every ``*.toml`` of ``directory`` (default :func:`catalogue_dir`);
    :class:`ConfigError` lists every problem, one line each."""
    folder = catalogue_dir() if directory is None else directory
    if not folder.is_dir():
        raise ConfigError(f"indicator catalogue {folder} is not a folder")
    problems = _Problems()
    sources_path = folder / SOURCES_FILE
    sources = _read_sources(sources_path, problems)
    indicators: list[tuple[str, Indicator]] = []
    seen: dict[str, str] = {}
    domain_files = sorted(p for p in folder.glob("*.toml") if p.name != SOURCES_FILE)
    if not domain_files:
        problems.add(str(folder), (), "holds no indicator file (*.toml besides sources.toml)")
    for path in domain_files:
        for position, indicator in _read_indicators(path, problems):
            where = f"{path}: indicators[{position}] (id={excerpt(indicator.id)})"
            if indicator.id in seen:
                problems.add(where, ("id",), f"{indicator.id!r} is taken by {seen[indicator.id]}")
            seen.setdefault(indicator.id, str(path))
            _check_indicator(indicator, where, sources, problems)
            indicators.append((path.stem, indicator))
    if problems.lines:
        raise ConfigError(problems.lines)
    return Catalogue(sources=sources, indicators=tuple(indicators))


def _read_toml(path: Path, problems: _Problems) -> dict[str, Any] | None:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.add(str(path), (), "does not exist")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(str(path), (), f"cannot be read: {exc}")
    except tomllib.TOMLDecodeError as exc:
        problems.add(str(path), (), f"is not valid TOML: {exc}")
    return None


def _only_key(data: dict[str, Any], key: str, path: Path, problems: _Problems) -> object:
    for other in data:
        if other != key:
            problems.add(str(path), (other,), f"unknown table; this file holds only [{key}]")
    return data.get(key)


def _read_sources(path: Path, problems: _Problems) -> dict[str, Source]:
    data = _read_toml(path, problems)
    if data is None:
        return {}
    table = _only_key(data, "sources", path, problems)
    if not isinstance(table, dict) or not table:
        problems.add(str(path), ("sources",), "needs at least one [sources.ID] table")
        return {}
    sources: dict[str, Source] = {}
    for name, entry in table.items():
        if re.match(_ID, name) is None:
            problems.add(str(path), ("sources", name), "an id is [a-z0-9_]+")
            continue
        source = problems.validate(Source, entry, str(path), ("sources", name))
        if source is not None:
            sources[name] = source
    return sources


def _read_indicators(path: Path, problems: _Problems) -> Iterator[tuple[int, Indicator]]:
    data = _read_toml(path, problems)
    if data is None:
        return
    entries = _only_key(data, "indicators", path, problems)
    if not isinstance(entries, list) or not entries:
        problems.add(str(path), ("indicators",), "needs at least one [[indicators]] table")
        return
    for position, entry in enumerate(entries):
        name = entry.get("id") if isinstance(entry, dict) else None
        where = f"{path}: indicators[{position}]"
        if isinstance(name, str):
            where += f" (id={excerpt(name)})"
        indicator = problems.validate(Indicator, entry, where, ())
        if indicator is not None:
            yield position, indicator


def _duration(text: str | None, problems: _Problems, where: str, loc: tuple[str | int, ...]
              ) -> KpiDuration | None:
    if text is None:
        return None
    try:
        return parse_kpi_duration(text)
    except ValueError as exc:
        problems.add(where, loc, str(exc))
        return None


def _check_indicator(
    indicator: Indicator, where: str, sources: Mapping[str, Source], problems: _Problems
) -> None:
    def known_source(name: str, loc: tuple[str | int, ...]) -> None:
        if sources and name not in sources:
            known = ", ".join(sorted(sources))
            problems.add(where, loc, f"no [sources.{name}] in {SOURCES_FILE}; known: {known}")

    def unit(name: str, loc: tuple[str | int, ...]) -> None:
        if name not in UNITS:
            problems.add(where, loc, f"unknown unit {excerpt(name)!r}; known: {', '.join(UNITS)}")

    def cited(item: Figure | Percentile | Limit | U4ssc | Sdg, loc: tuple[str | int, ...]) -> None:
        known_source(item.source, (*loc, "source"))
        if not item.verified and not item.note.strip():
            problems.add(where, (*loc, "note"), "a figure with verified = false says why in note")

    unit(indicator.unit, ("unit",))
    _duration(indicator.period, problems, where, ("period",))
    _check_computation(indicator.computation, where, problems)
    for name in ("window_min_coverage", "period_min_coverage"):
        figure = getattr(indicator.computation, name)
        if figure is not None:
            cited(figure, ("computation", name))
            if not 0.0 <= figure.value <= 1.0:
                problems.add(where, ("computation", name, "value"), "a coverage is 0…1")
    if indicator.u4ssc is not None:
        cited(indicator.u4ssc, ("u4ssc",))
    for index, sdg in enumerate(indicator.sdg):
        cited(sdg, ("sdg", index))
    for index, limit in enumerate(indicator.limits):
        loc: tuple[str | int, ...] = ("limits", index)
        cited(limit, loc)
        unit(limit.unit, (*loc, "unit"))
        _duration(limit.averaging, problems, where, (*loc, "averaging"))
        if limit.percentile is not None:
            cited(limit.percentile, (*loc, "percentile"))


def _check_computation(computation: Computation, where: str, problems: _Problems) -> None:
    if computation.statistic not in STATISTICS:
        problems.add(where, ("computation", "statistic"),
                     f"unknown statistic {excerpt(computation.statistic)!r}; "
                     f"known: {', '.join(STATISTICS)}")
    keys = ("operator", "window", "base", "extra", "kpi")
    if computation.input == "inventory":
        for key in keys:
            if getattr(computation, key) is not None:
                problems.add(where, ("computation", key), "an inventory indicator reads no KPI")
        if computation.meter is None:
            problems.add(where, ("computation", "meter"), "an inventory indicator names the "
                         "kind of meter it counts")
        return
    if computation.meter is not None:
        problems.add(where, ("computation", "meter"), "only an inventory indicator counts meters")
    if computation.operator is None or computation.window is None:
        problems.add(where, ("computation",), "needs operator and window (the KPI windows read)")
        return
    spec = REGISTRY.get(computation.operator)
    if spec is None:
        problems.add(where, ("computation", "operator"),
                     f"unknown operator {excerpt(computation.operator)!r}; "
                     f"known: {', '.join(REGISTRY)}")
        return
    window = _duration(computation.window, problems, where, ("computation", "window"))
    base = _duration(computation.base, problems, where, ("computation", "base"))
    if base is None and computation.base is None and spec.base == "required":
        problems.add(where, ("computation", "base"), f"operator {spec.name} needs a base")
    if computation.base is not None and spec.base == "no":
        problems.add(where, ("computation", "base"), f"operator {spec.name} takes no base")
    if window is not None and base is not None and not nests_in(base, window):
        problems.add(where, ("computation", "base"), f"does not nest in window {window}")
