"""The KPI operators (docs/kpis.md §4), one :class:`OperatorSpec` each: the keys it takes and
needs, its base and source rules, the checks of lengths and times it adds, the defaults of its
wall times, whether it slides, and the runner the engine builds for it. Config validation
(:mod:`agent.config.kpi`, :class:`~agent.config.KpiConfig`) and the engine
(:mod:`agent.kpi.engine`) both look an operator up here: adding an operator means adding one
entry to :data:`REGISTRY` (and its section to docs/kpis.md).

The config package imports this module for the operators' names and rules; the runners and
accumulators an entry builds are imported when the engine first builds one, so that an agent
without ``[[kpis]]`` does not load them (docs/architecture.md "Footprint").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from agent.units import KpiDuration, nests_in

if TYPE_CHECKING:
    from agent.config import KpiConfig
    from agent.kpi.accumulators import Accumulator
    from agent.kpi.context import KpiContext
    from agent.kpi.runner import Runner
    from agent.kpi.windows import BaseKind

    # Builds one KPI's runner; the second argument is the step of its kpi: source, if any.
    RunnerFactory = Callable[[KpiContext, KpiDuration | None], Runner]

__all__ = [
    "MAX_PERCENTILE_VALUES",
    "OPERATOR_KEYS",
    "OPERATOR_NAMES",
    "REGISTRY",
    "OperatorSpec",
    "ValueProblems",
]

# A percentile without a base keeps every value of its window (nearest rank needs them all):
# a day of 1-s samples (86,400) is fine; a year of 1-min samples (525,600: ~5 MB in memory and
# in each checkpoint, every minute) is not, on a gateway with an SD card.
MAX_PERCENTILE_VALUES = 200_000


class ValueProblems:
    """The (key, message) problems of one KPI's lengths and times, as an operator's value
    check finds them; the checks below word them the same way for every operator."""

    def __init__(self, kpi: KpiConfig) -> None:
        self.kpi = kpi
        self.operator = kpi.operator
        self.window = kpi.window_duration
        self.base = kpi.base_duration
        self.problems: list[tuple[str, str]] = []

    def add(self, key: str, message: str) -> None:
        self.problems.append((key, message))

    def need_window(self, *allowed: str) -> None:
        if str(self.window) not in allowed:
            choices = " or ".join(repr(a) for a in allowed)
            self.add("window", f"operator {self.operator} needs window {choices}")

    def need_fixed(self, key: str, duration: KpiDuration | None) -> None:
        if duration is not None and duration.is_calendar:
            self.add(key, f"operator {self.operator} needs a fixed length here (s, min or h)")


ValueCheck = Callable[["KpiConfig", ValueProblems], None]


def _never(kpi: KpiConfig) -> bool:
    return False


def _always(kpi: KpiConfig) -> bool:
    return True


def _with_nowcast(kpi: KpiConfig) -> bool:
    return kpi.averaging == "nowcast"


def _no_clocks() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class OperatorSpec:
    """One KPI operator: what its ``[[kpis]]`` entry may and must hold, and how it runs."""

    name: str
    # The engine's pipeline for one KPI of this operator (see :func:`windowed`).
    runner: RunnerFactory
    keys: frozenset[str] = frozenset()  # operator-specific keys it takes
    required: frozenset[str] = frozenset()
    # "device": required with a device source (a kpi: source never takes a base)
    base: Literal["no", "optional", "required", "device"] = "optional"
    kpi_source: Literal["no", "allowed", "only"] = "allowed"
    takes_min_coverage: bool = True
    # Lengths and times that must fit together beyond the checks every KPI gets.
    check_values: ValueCheck | None = None
    # The unit of its outputs when the entry sets none.
    default_unit: str | None = None
    # Whether a KPI of it emits one output per base window (docs/kpis.md §4), not per window.
    sliding: Callable[[KpiConfig], bool] = _never
    # The wall times of day it takes, each with its default (docs/kpis.md §2).
    clock_defaults: Mapping[str, str] = field(default_factory=_no_clocks)

    def value_problems(self, kpi: KpiConfig) -> list[tuple[str, str]]:
        """(key, message) for this operator's own checks of ``kpi``'s lengths and times."""
        if self.check_values is None:
            return []
        found = ValueProblems(kpi)
        self.check_values(kpi, found)
        return found.problems


def windowed(
    accumulator: Callable[[KpiContext], Callable[[], Accumulator]], base_kind: BaseKind = "mean"
) -> RunnerFactory:
    """The runner of an operator over the items of calendar windows: ``accumulator`` gives, for
    one KPI, a fresh accumulator per window; with a base, each base window becomes one item of
    kind ``base_kind``."""

    def build(kpi: KpiContext, source_step: KpiDuration | None) -> Runner:
        from agent.kpi.window_runners import SimpleRunner

        return SimpleRunner(kpi, source_step, accumulator(kpi), base_kind)

    return build


def _own(runner: Callable[[KpiContext], Runner]) -> RunnerFactory:
    """An operator with a pipeline of its own (device sources only: no source step)."""
    return lambda kpi, _source_step: runner(kpi)


# --------------------------------------------------------------------------------------------
# Accumulators and runners of one KPI (their modules imported when the first is built)


def _mean(kpi: KpiContext) -> Callable[[], Accumulator]:
    from agent.kpi.accumulators import MeanAcc

    return lambda: MeanAcc(is_sum=False)


def _sum(kpi: KpiContext) -> Callable[[], Accumulator]:
    from agent.kpi.accumulators import MeanAcc

    return lambda: MeanAcc(is_sum=True)


def _min(kpi: KpiContext) -> Callable[[], Accumulator]:
    from agent.kpi.accumulators import ExtremeAcc

    return lambda: ExtremeAcc(is_max=False)


def _max(kpi: KpiContext) -> Callable[[], Accumulator]:
    from agent.kpi.accumulators import ExtremeAcc

    return lambda: ExtremeAcc(is_max=True)


def _count(kpi: KpiContext) -> Callable[[], Accumulator]:
    from agent.kpi.accumulators import CountAcc

    return CountAcc


def _percentile(kpi: KpiContext) -> Callable[[], Accumulator]:
    from agent.kpi.accumulators import PercentileAcc

    q = kpi.config.q if kpi.config.q is not None else 50.0
    return lambda: PercentileAcc(q)


def _energetic_mean(kpi: KpiContext) -> Callable[[], Accumulator]:
    from agent.kpi.accumulators import EnergyAcc

    return EnergyAcc


def _exceedance_count(kpi: KpiContext) -> Callable[[], Accumulator]:
    from agent.kpi.accumulators import ExceedAcc

    threshold = kpi.config.threshold if kpi.config.threshold is not None else math.inf
    return lambda: ExceedAcc(threshold)


def _min_night_flow(kpi: KpiContext) -> Callable[[], Accumulator]:
    from agent.kpi.accumulators import NightAcc
    from agent.kpi.calendar import clock_seconds

    config, calendar = kpi.config, kpi.calendar
    low = clock_seconds(config.clock("night_start"))
    high = clock_seconds(config.clock("night_end"))
    return lambda: NightAcc(calendar, low, high)


def _lden(kpi: KpiContext) -> Callable[[], Accumulator]:
    from agent.kpi.accumulators import LdenAcc
    from agent.kpi.calendar import clock_seconds

    config, calendar = kpi.config, kpi.calendar
    day = clock_seconds(config.clock("day_start"))
    evening = clock_seconds(config.clock("evening_start"))
    night = clock_seconds(config.clock("night_start"))
    return lambda: LdenAcc(calendar, day, evening, night)


def _time_weighted_mean(kpi: KpiContext) -> Runner:
    from agent.kpi.window_runners import TimeWeightedRunner

    return TimeWeightedRunner(kpi)


def _counter_delta(kpi: KpiContext) -> Runner:
    from agent.kpi.counter_runners import CounterRunner

    return CounterRunner(kpi)


def _demand(kpi: KpiContext) -> Runner:
    from agent.kpi.counter_runners import DemandRunner

    return DemandRunner(kpi)


def _running_mean(kpi: KpiContext) -> Runner:
    from agent.kpi.sliding_runners import SlidingRunner

    return SlidingRunner(kpi)


def _daily_max_running_mean(kpi: KpiContext) -> Runner:
    from agent.kpi.sliding_runners import DailyMaxRunner

    return DailyMaxRunner(kpi)


def _aqi_runner(kpi: KpiContext, source_step: KpiDuration | None) -> Runner:
    """NowCast slides over the last 12 hourly means; daily averaging is a window operator."""
    if kpi.config.is_sliding:
        return _running_mean(kpi)
    from agent.kpi.accumulators import AqiDailyAcc
    from agent.kpi.window_runners import SimpleRunner

    return SimpleRunner(kpi, source_step, AqiDailyAcc, "mean")


# --------------------------------------------------------------------------------------------
# Value checks of one operator


def _check_percentile(kpi: KpiConfig, found: ValueProblems) -> None:
    window, interval = found.window, kpi.sample_interval_duration
    if found.base is None and interval is not None:
        kept = window.nominal_seconds // max(1, interval.nominal_seconds)
        if kept > MAX_PERCENTILE_VALUES:
            found.add("window", (
                f"a percentile keeps every value of its window: {window} at {interval} is "
                f"{kept:,} values (at most {MAX_PERCENTILE_VALUES:,}), held in memory and "
                "written with every KPI checkpoint; take a shorter window, or set base to take "
                "the percentile of the base aggregates (e.g. of daily means) instead"))


def _check_running_mean(kpi: KpiConfig, found: ValueProblems) -> None:
    found.need_fixed("window", found.window)
    found.need_fixed("base", found.base)


def _check_daily_max_running_mean(kpi: KpiConfig, found: ValueProblems) -> None:
    found.need_window("1 d")
    base = found.base
    found.need_fixed("base", base)
    running = kpi.running_window_duration
    found.need_fixed("running_window", running)
    if running is not None and base is not None and not nests_in(base, running):
        found.add("running_window", f"{running} does not hold whole bases ({base})")


def _check_aqi_us_pm25(kpi: KpiConfig, found: ValueProblems) -> None:
    found.need_window("12 h" if kpi.averaging == "nowcast" else "1 d")
    if found.base is not None and str(found.base) != "1 h":
        found.add("base", 'operator aqi_us_pm25 works on hourly means: base = "1 h"')


def _check_min_night_flow(kpi: KpiConfig, found: ValueProblems) -> None:
    found.need_window("1 d")
    found.need_fixed("base", found.base)
    if kpi.clock("night_start") == kpi.clock("night_end"):
        found.add("night_end", "must differ from night_start")


def _check_lden(kpi: KpiConfig, found: ValueProblems) -> None:
    found.need_window("1 d", "1 mo", "1 y")
    found.need_fixed("base", found.base)
    day, evening = kpi.clock("day_start"), kpi.clock("evening_start")
    night = kpi.clock("night_start")
    if not day < evening < night:
        message = (
            "need day_start < evening_start < night_start, "
            f"got {day:%H:%M}, {evening:%H:%M}, {night:%H:%M}"
        )
        found.add("evening_start", message)


def _check_demand(kpi: KpiConfig, found: ValueProblems) -> None:
    found.need_fixed("base", found.base)


# --------------------------------------------------------------------------------------------
# The registry

_COUNTER_KEYS = frozenset({"modulus", "max_delta"})

# In the order the config's error messages list the operators.
REGISTRY: Mapping[str, OperatorSpec] = {
    spec.name: spec
    for spec in (
        OperatorSpec("mean", windowed(_mean)),
        OperatorSpec("min", windowed(_min)),
        OperatorSpec("max", windowed(_max)),
        OperatorSpec("sum", windowed(_sum, "sum")),
        OperatorSpec("count", windowed(_count), base="no", takes_min_coverage=False),
        OperatorSpec(
            "percentile",
            windowed(_percentile),
            keys=frozenset({"q"}),
            required=frozenset({"q"}),
            check_values=_check_percentile,
        ),
        OperatorSpec("energetic_mean", windowed(_energetic_mean, "energy")),
        OperatorSpec(
            "time_weighted_mean",
            _own(_time_weighted_mean),
            keys=frozenset({"max_hold"}),
            base="no",
            kpi_source="no",
        ),
        OperatorSpec(
            "counter_delta", _own(_counter_delta), keys=_COUNTER_KEYS, base="no", kpi_source="no"
        ),
        OperatorSpec(
            "demand",
            _own(_demand),
            keys=_COUNTER_KEYS,
            base="required",
            kpi_source="no",
            check_values=_check_demand,
        ),
        OperatorSpec(
            "exceedance_count",
            windowed(_exceedance_count),
            keys=frozenset({"threshold"}),
            required=frozenset({"threshold"}),
            base="no",
            kpi_source="only",
        ),
        OperatorSpec(
            "running_mean",
            _own(_running_mean),
            base="required",
            kpi_source="no",
            check_values=_check_running_mean,
            sliding=_always,
        ),
        OperatorSpec(
            "daily_max_running_mean",
            _own(_daily_max_running_mean),
            keys=frozenset({"running_window", "running_min_coverage"}),
            required=frozenset({"running_window"}),
            base="required",
            kpi_source="no",
            check_values=_check_daily_max_running_mean,
        ),
        OperatorSpec(
            "aqi_us_pm25",
            _aqi_runner,
            keys=frozenset({"averaging"}),
            base="required",
            kpi_source="no",
            check_values=_check_aqi_us_pm25,
            default_unit="AQI",
            sliding=_with_nowcast,
        ),
        OperatorSpec(
            "min_night_flow",
            windowed(_min_night_flow),
            keys=frozenset({"night_start", "night_end"}),
            base="device",
            check_values=_check_min_night_flow,
            clock_defaults=MappingProxyType({"night_start": "02:00", "night_end": "04:00"}),
        ),
        OperatorSpec(
            "lden",
            windowed(_lden, "energy"),
            keys=frozenset({"day_start", "evening_start", "night_start"}),
            check_values=_check_lden,
            clock_defaults=MappingProxyType(
                {"day_start": "07:00", "evening_start": "19:00", "night_start": "23:00"}
            ),
        ),
    )
}
OPERATOR_NAMES: tuple[str, ...] = tuple(REGISTRY)
# Every operator-specific key: an entry may hold only those of its own operator.
OPERATOR_KEYS: frozenset[str] = frozenset().union(*(spec.keys for spec in REGISTRY.values()))
