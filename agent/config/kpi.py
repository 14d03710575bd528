"""The config's side of a ``[[kpis]]`` entry: the rules every KPI follows (its source, base
and sample interval, lengths that must nest) applied with what its operator takes, needs and
checks, which :data:`agent.kpi.registry.REGISTRY` holds, one entry per operator
(:func:`kpi_key_problems`, :func:`kpi_value_problems`). docs/kpis.md describes the operators.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import TYPE_CHECKING, Literal

from agent.kpi.registry import OPERATOR_KEYS, OPERATOR_NAMES, REGISTRY
from agent.units import nests_in

if TYPE_CHECKING:
    from agent.config.models import KpiConfig

    Operator = str
else:
    # The model's field accepts exactly the registry's operators, and a wrong one is reported
    # with the list of them; the type is built from the registry so that it is written once.
    Operator = Literal[OPERATOR_NAMES]
OPERATORS: tuple[str, ...] = OPERATOR_NAMES
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
    rule = REGISTRY.get(operator)
    if rule is None:
        return []  # the operator itself is reported by field validation
    kind = _source_kind(source)
    problems: list[tuple[str, str]] = []
    for key in sorted(OPERATOR_KEYS & set(given) - rule.keys):
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
    if base is not None and not nests_in(base, window):
        message = f"{base} does not nest in window {window}: a window must hold whole bases"
        problems.append(("base", message))
    interval = kpi.sample_interval_duration
    finest, level = (base, "base") if base is not None else (window, "window")
    if interval is not None and interval.nominal_seconds > finest.nominal_seconds:
        problems.append(("sample_interval", f"{interval} is longer than the {level} ({finest})"))
    return problems + REGISTRY[kpi.operator].value_problems(kpi)
