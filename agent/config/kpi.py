"""What each KPI operator takes: its keys, base and source rules (:data:`_RULES`,
:func:`kpi_key_problems`) and the checks of lengths and times that must fit together
(:func:`kpi_value_problems`). docs/kpis.md describes the operators.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from agent.units import KpiDuration, nests_in

if TYPE_CHECKING:
    from agent.config.models import KpiConfig

Operator = Literal[
    "mean",
    "min",
    "max",
    "sum",
    "count",
    "percentile",
    "energetic_mean",
    "time_weighted_mean",
    "counter_delta",
    "demand",
    "exceedance_count",
    "running_mean",
    "daily_max_running_mean",
    "aqi_us_pm25",
    "min_night_flow",
    "lden",
]
OPERATORS: tuple[str, ...] = get_args(Operator)


@dataclass(frozen=True)
class _OperatorRule:
    keys: frozenset[str] = frozenset()  # operator-specific keys it takes
    required: frozenset[str] = frozenset()
    # "device": required with a device source (a kpi: source never takes a base)
    base: Literal["no", "optional", "required", "device"] = "optional"
    kpi_source: Literal["no", "allowed", "only"] = "allowed"
    takes_min_coverage: bool = True


_COUNTER_KEYS = frozenset({"modulus", "max_delta"})
_RULES: dict[str, _OperatorRule] = {
    "mean": _OperatorRule(),
    "min": _OperatorRule(),
    "max": _OperatorRule(),
    "sum": _OperatorRule(),
    "count": _OperatorRule(base="no", takes_min_coverage=False),
    "percentile": _OperatorRule(keys=frozenset({"q"}), required=frozenset({"q"})),
    "energetic_mean": _OperatorRule(),
    "time_weighted_mean": _OperatorRule(keys=frozenset({"max_hold"}), base="no", kpi_source="no"),
    "counter_delta": _OperatorRule(keys=_COUNTER_KEYS, base="no", kpi_source="no"),
    "demand": _OperatorRule(keys=_COUNTER_KEYS, base="required", kpi_source="no"),
    "exceedance_count": _OperatorRule(
        keys=frozenset({"threshold"}),
        required=frozenset({"threshold"}),
        base="no",
        kpi_source="only",
    ),
    "running_mean": _OperatorRule(base="required", kpi_source="no"),
    "daily_max_running_mean": _OperatorRule(
        keys=frozenset({"running_window", "running_min_coverage"}),
        required=frozenset({"running_window"}),
        base="required",
        kpi_source="no",
    ),
    "aqi_us_pm25": _OperatorRule(keys=frozenset({"averaging"}), base="required", kpi_source="no"),
    "min_night_flow": _OperatorRule(keys=frozenset({"night_start", "night_end"}), base="device"),
    "lden": _OperatorRule(keys=frozenset({"day_start", "evening_start", "night_start"})),
}
# A percentile without a base keeps every value of its window (nearest rank needs them all):
# a day of 1-s samples (86,400) is fine; a year of 1-min samples (525,600: ~5 MB in memory and
# in each checkpoint, every minute) is not, on a gateway with an SD card.
MAX_PERCENTILE_VALUES = 200_000
_OPERATOR_KEYS = frozenset().union(*(rule.keys for rule in _RULES.values()))
_KPI_NAME = re.compile(r"^[a-z0-9_]+$")


def _source_kind(source: object) -> Literal["kpi", "device"] | None:
    if not isinstance(source, str):
        return None
    if source.startswith("kpi:"):
        return "kpi" if _KPI_NAME.match(source[4:]) else None
    device, dot, point = source.partition(".")
    return "device" if dot and device and point else None


def _field_order(key: str) -> int:
    from agent.config.models import KpiConfig  # models imports this module

    names = list(KpiConfig.model_fields)
    return names.index(key) if key in names else len(names)


def kpi_key_problems(
    operator: str, source: object, given: Collection[str]
) -> list[tuple[str, str]]:
    """(key, message) for keys ``operator`` does not take or needs, given the keys set."""
    rule = _RULES.get(operator)
    if rule is None:
        return []  # the operator itself is reported by field validation
    kind = _source_kind(source)
    problems: list[tuple[str, str]] = []
    for key in sorted(_OPERATOR_KEYS & set(given) - rule.keys):
        problems.append((key, f"operator {operator} does not take {key}; remove it"))
    if "min_coverage" in given and not rule.takes_min_coverage:
        message = f"operator {operator} is always valid and takes no min_coverage; remove it"
        problems.append(("min_coverage", message))
    for key in sorted(rule.required - set(given)):
        problems.append((key, f"required for operator {operator}"))
    if rule.base == "no":
        for key in ("base", "base_min_coverage"):
            if key in given:
                problems.append((key, f"operator {operator} takes no {key}; remove it"))
    elif kind == "kpi":
        for key in ("base", "base_min_coverage"):
            if key in given:
                message = f"a kpi: source takes no {key}: its items are the source KPI's outputs"
                problems.append((key, message))
    elif "base" not in given:
        if rule.base == "required" or (rule.base == "device" and kind == "device"):
            problems.append(("base", f'required for operator {operator}, e.g. base = "1 h"'))
        elif "base_min_coverage" in given:
            message = "takes effect only with base: set base or remove it"
            problems.append(("base_min_coverage", message))
    if kind == "kpi" and rule.kpi_source == "no":
        message = f"operator {operator} needs a device source ('device.point'), not kpi:"
        problems.append(("source", message))
    if kind == "device" and rule.kpi_source == "only":
        message = f'operator {operator} counts another KPI\'s outputs: write source = "kpi:NAME"'
        problems.append(("source", message))
    if kind == "kpi" and "sample_interval" in given:
        message = "a kpi: source takes no sample_interval: the source KPI sets the step"
        problems.append(("sample_interval", message))
    if kind == "device" and rule.kpi_source != "only" and "sample_interval" not in given:
        message = 'required for a device source: the expected reading period, e.g. "1 min"'
        problems.append(("sample_interval", message))
    problems.sort(key=lambda item: _field_order(item[0]))
    return problems


def kpi_value_problems(kpi: KpiConfig) -> list[tuple[str, str]]:
    """(key, message) for lengths and times that do not fit together (nesting, operator windows)."""
    problems: list[tuple[str, str]] = []
    window = kpi.window_duration
    base = kpi.base_duration
    op = kpi.operator

    def need_window(*allowed: str) -> None:
        if str(window) not in allowed:
            choices = " or ".join(repr(a) for a in allowed)
            problems.append(("window", f"operator {op} needs window {choices}"))

    def need_fixed(key: str, duration: KpiDuration | None) -> None:
        if duration is not None and duration.is_calendar:
            problems.append((key, f"operator {op} needs a fixed length here (s, min or h)"))

    if base is not None and not nests_in(base, window):
        message = f"{base} does not nest in window {window}: a window must hold whole bases"
        problems.append(("base", message))
    interval = kpi.sample_interval_duration
    finest, level = (base, "base") if base is not None else (window, "window")
    if interval is not None and interval.nominal_seconds > finest.nominal_seconds:
        problems.append(("sample_interval", f"{interval} is longer than the {level} ({finest})"))
    if op == "percentile" and base is None and interval is not None:
        kept = window.nominal_seconds // max(1, interval.nominal_seconds)
        if kept > MAX_PERCENTILE_VALUES:
            problems.append(("window", (
                f"a percentile keeps every value of its window: {window} at {interval} is "
                f"{kept:,} values (at most {MAX_PERCENTILE_VALUES:,}), held in memory and "
                "written with every KPI checkpoint; take a shorter window, or set base to take "
                "the percentile of the base aggregates (e.g. of daily means) instead")))

    if op == "running_mean":
        need_fixed("window", window)
        need_fixed("base", base)
    elif op == "daily_max_running_mean":
        need_window("1 d")
        need_fixed("base", base)
        running = kpi.running_window_duration
        need_fixed("running_window", running)
        if running is not None and base is not None and not nests_in(base, running):
            problems.append(("running_window", f"{running} does not hold whole bases ({base})"))
    elif op == "aqi_us_pm25":
        need_window("12 h" if kpi.averaging == "nowcast" else "1 d")
        if base is not None and str(base) != "1 h":
            problems.append(("base", 'operator aqi_us_pm25 works on hourly means: base = "1 h"'))
    elif op == "min_night_flow":
        need_window("1 d")
        need_fixed("base", base)
        if kpi.clock("night_start") == kpi.clock("night_end"):
            problems.append(("night_end", "must differ from night_start"))
    elif op == "lden":
        need_window("1 d", "1 mo", "1 y")
        need_fixed("base", base)
        day, evening = kpi.clock("day_start"), kpi.clock("evening_start")
        night = kpi.clock("night_start")
        if not day < evening < night:
            message = (
                "need day_start < evening_start < night_start, "
                f"got {day:%H:%M}, {evening:%H:%M}, {night:%H:%M}"
            )
            problems.append(("evening_start", message))
    elif op == "demand":
        need_fixed("base", base)
    return problems


