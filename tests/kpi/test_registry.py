"""The operator registry is the one place an operator is defined: the config, the engine and
the reference (docs/kpis.md §4) all follow it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest

from agent.config import OPERATORS, KpiConfig, kpi_key_problems
from agent.kpi.registry import OPERATOR_KEYS, REGISTRY, OperatorSpec

KPIS_MD = Path(__file__).resolve().parents[2] / "docs" / "kpis.md"


def _reference_operators() -> set[str]:
    """The operators named in the first column of the table of docs/kpis.md §4."""
    text = KPIS_MD.read_text(encoding="utf-8")
    section = text[text.index("## 4. Operators") : text.index("## 5.")]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z0-9_]+)`", line.split("|")[1]))
    return names


def _source_for(spec: OperatorSpec) -> str:
    return "kpi:upstream" if spec.kpi_source == "only" else "meter-1.value"


def test_the_reference_documents_exactly_the_registry_operators() -> None:
    assert _reference_operators() == set(REGISTRY)


def test_the_config_takes_exactly_the_registry_operators_in_its_order() -> None:
    assert tuple(REGISTRY) == OPERATORS
    assert get_args(KpiConfig.model_fields["operator"].annotation) == tuple(REGISTRY)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_an_entry_is_named_by_its_key(name: str) -> None:
    assert REGISTRY[name].name == name


@pytest.mark.parametrize("spec", REGISTRY.values(), ids=list(REGISTRY))
def test_the_config_asks_the_entry_for_required_keys(spec: OperatorSpec) -> None:
    given = {"name", "source", "operator", "window", "sample_interval"}
    problems = kpi_key_problems(spec.name, _source_for(spec), given)
    required = {key for key, message in problems if message == f"required for operator {spec.name}"}
    assert required == set(spec.required)


@pytest.mark.parametrize("spec", REGISTRY.values(), ids=list(REGISTRY))
def test_the_config_refuses_keys_of_other_operators(spec: OperatorSpec) -> None:
    foreign = OPERATOR_KEYS - spec.keys
    given = {"name", "source", "operator", "window", "sample_interval", *spec.required, *foreign}
    problems = kpi_key_problems(spec.name, _source_for(spec), given)
    refused = {key for key, message in problems if message.endswith(f"take {key}; remove it")}
    assert refused == foreign


@pytest.mark.parametrize("spec", REGISTRY.values(), ids=list(REGISTRY))
def test_wall_time_defaults_are_for_keys_the_operator_takes(spec: OperatorSpec) -> None:
    assert set(spec.clock_defaults) <= spec.keys
