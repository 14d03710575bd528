"""The indicator catalogue (docs/indicators.md): the shipped files load and keep their
invariants, and the loader names the file, the indicator and the key of every problem."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.kpi.registry import REGISTRY
from agent.platform.indicators import (
    SOURCES_FILE,
    STATISTICS,
    UNITS,
    Catalogue,
    Figure,
    Limit,
    Percentile,
    Sdg,
    U4ssc,
    catalogue_dir,
    load_catalogue,
)
from agent.platform.statistics import ANNUAL_MIN_CAPTURE, DAILY_MIN_CAPTURE

REPO = Path(__file__).resolve().parents[2]
KPI_CONFIGS = REPO / "config" / "kpis"


@pytest.fixture(scope="module")
def shipped() -> Catalogue:
    return load_catalogue()


# --------------------------------------------------------------------------------------------
# The shipped catalogue


def test_the_shipped_catalogue_is_the_source_tree_one() -> None:
    assert catalogue_dir().resolve() in {
        (REPO / "config" / "indicators").resolve(),
        (Path(sys.modules["agent"].__file__ or "").parent / "_data/config/indicators").resolve(),
    }


def test_the_shipped_catalogue_covers_the_domains_and_u4ssc_codes(shipped: Catalogue) -> None:
    assert shipped.domains() == ("air", "energy", "fleet", "noise", "water")
    codes = {ind.u4ssc.code for _, ind in shipped.indicators if ind.u4ssc is not None}
    assert codes == {
        "EN:EN:AQ:1C", "EN:EN:EQ:2A", "EN:E:E:2C", "EN:EN:WS:2C", "EC:I:WS:3C",
        "EC:ICT:ES:1C", "EC:ICT:WS:1C",
    }
    # The two read in the U4SSC documents themselves; the others say why they are not.
    verified = {ind.u4ssc.code for _, ind in shipped.indicators
                if ind.u4ssc is not None and ind.u4ssc.verified}
    assert verified == {"EN:EN:AQ:1C", "EC:ICT:ES:1C"}


def test_every_figure_cites_a_source_that_exists_and_every_unverified_one_says_why(
    shipped: Catalogue,
) -> None:
    used: set[str] = set()
    for _domain, ind in shipped.indicators:
        comp = ind.computation
        cited: list[Figure | Percentile | Limit | U4ssc | Sdg] = [
            f for f in (comp.window_min_coverage, comp.period_min_coverage) if f is not None
        ]
        cited += [*ind.limits, *ind.sdg]
        cited += [lim.percentile for lim in ind.limits if lim.percentile is not None]
        if ind.u4ssc is not None:
            cited.append(ind.u4ssc)
        for figure in cited:
            assert figure.source in shipped.sources, (ind.id, figure)
            assert figure.ref.strip(), (ind.id, figure)
            assert figure.verified or figure.note.strip(), (ind.id, figure)
            used.add(figure.source)
    assert used == set(shipped.sources), "a source no figure cites"


def test_every_kpi_the_catalogue_names_exists_in_config_kpis_with_its_operator_and_window(
    shipped: Catalogue,
) -> None:
    named = 0
    for _domain, ind in shipped.indicators:
        comp = ind.computation
        if comp.kpi is None:
            assert not comp.kpi_files, ind.id
            continue
        assert comp.kpi_files, ind.id
        for name in comp.kpi_files:
            kpis = tomllib.loads((KPI_CONFIGS / name).read_text(encoding="utf-8"))["kpis"]
            found = [k for k in kpis if k["name"] == comp.kpi]
            assert len(found) == 1, (ind.id, name)
            kpi = found[0]
            assert (kpi["operator"], kpi["window"], kpi.get("base")) == (
                comp.operator, comp.window, comp.base), (ind.id, name)
            named += 1
    assert named >= 20


def test_units_statistics_and_operators_are_known(shipped: Catalogue) -> None:
    for _domain, ind in shipped.indicators:
        assert ind.unit in UNITS
        assert ind.computation.statistic in STATISTICS
        if ind.computation.input == "kpi_windows":
            assert ind.computation.operator in REGISTRY
        for limit in ind.limits:
            assert limit.unit in UNITS
            # A count of windows over a limit is in days or hours, a population share in
            # percent; the limit is a level of the windows.
            if ind.computation.statistic == "exceedances":
                assert ind.unit in {"d", "h"} and limit.unit not in {"d", "h"}
            elif ind.computation.statistic == "population_share":
                assert ind.unit == "%" and limit.unit == "dB(A)"
            else:
                assert limit.unit == ind.unit, ind.id


@pytest.mark.parametrize(
    ("indicator", "kind", "value", "allowed", "percentile"),
    [
        # Directive 2008/50/EC, Annex XI B, and its percentile equivalent (Annex I A note a).
        ("pm10_days_over", "limit_value", 50.0, 35, 90.4),
        ("no2_hours_over", "limit_value", 200.0, 18, 99.8),
        ("so2_hours_over", "limit_value", 350.0, 24, 99.7),
        ("so2_days_over", "limit_value", 125.0, 3, 99.2),
        ("pm10_annual_mean", "limit_value", 40.0, None, None),
        ("no2_annual_mean", "limit_value", 40.0, None, None),
        ("pm25_annual_mean", "limit_value", 25.0, None, None),
        ("o3_days_over", "target_value", 120.0, 25, None),
        # WHO 2021 AQG levels (short-term ones are 99th percentiles).
        ("pm25_annual_mean", "guideline_level", 5.0, None, None),
        ("pm10_days_over", "guideline_level", 45.0, None, 99.0),
        ("no2_annual_mean", "guideline_level", 10.0, None, None),
        ("so2_days_over", "guideline_level", 40.0, None, 99.0),
    ],
)
def test_key_figures_as_the_sources_give_them(
    shipped: Catalogue, indicator: str, kind: str, value: float, allowed: int | None,
    percentile: float | None,
) -> None:
    first = {"limit_value": "eu_2008_50", "target_value": "eu_2008_50",
             "guideline_level": "who_aqg_2021"}[kind]
    limits = [lim for lim in shipped.by_id(indicator).limits
              if lim.kind == kind and lim.source == first]
    assert len(limits) == 1
    limit = limits[0]
    assert (limit.value, limit.exceedances_allowed) == (value, allowed)
    assert (limit.percentile.value if limit.percentile else None) == percentile
    assert limit.verified


def test_the_catalogues_coverages_are_the_statistics_librarys(shipped: Catalogue) -> None:
    # The report computes with agent/platform/statistics.py: its rules and the catalogue's
    # figures must not drift apart.
    windows, periods = set(), set()
    for _domain, ind in shipped.indicators:
        comp = ind.computation
        if comp.window_min_coverage is not None and comp.window == "1 d" and comp.base == "1 h":
            windows.add(comp.window_min_coverage.value)
        if comp.period_min_coverage is not None and ind.period == "1 y" and comp.operator == "mean":
            periods.add(comp.period_min_coverage.value)
    assert windows == {DAILY_MIN_CAPTURE}
    assert periods == {ANNUAL_MIN_CAPTURE, 0.75}  # 0.75: ozone's seasons (ozone_annual_mean)


def test_docs_list_every_indicator(shipped: Catalogue) -> None:
    text = (REPO / "docs" / "indicators.md").read_text(encoding="utf-8")
    missing = [ind.id for _, ind in shipped.indicators if f"| `{ind.id}` |" not in text]
    assert not missing


def test_the_catalogue_module_imports_nothing_of_the_gateway() -> None:
    code = (
        "import sys, agent.platform.indicators\n"
        "print(','.join(m for m in sys.modules if m.startswith('agent.gateway')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------------------------
# The loader's errors

_SOURCES = """\
[sources.doc]
title = "A directive"
identifier = "CELEX 1"
url = "https://example.org/doc"
published = "2008"
"""

_INDICATOR = """\
[[indicators]]
id = "pm10_annual_mean"
name = "PM10, annual mean"
unit = "µg/m³"
period = "1 y"
description = "Mean of the daily means."

[indicators.computation]
statistic = "mean"
operator = "mean"
window = "1 d"
base = "1 h"
period_min_coverage = { value = 0.9, source = "doc", ref = "Annex I" }

[[indicators.limits]]
kind = "limit_value"
value = 40.0
unit = "µg/m³"
averaging = "1 y"
source = "doc"
ref = "Annex XI"
"""


def _write(folder: Path, sources: str = _SOURCES, **files: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / SOURCES_FILE).write_text(sources, encoding="utf-8")
    for name, text in (files or {"air": _INDICATOR}).items():
        (folder / f"{name}.toml").write_text(text, encoding="utf-8")
    return folder


def test_a_minimal_catalogue_loads(tmp_path: Path) -> None:
    catalogue = load_catalogue(_write(tmp_path / "c"))
    ind = catalogue.by_id("pm10_annual_mean")
    assert ind.limits[0].value == 40.0 and ind.computation.period_min_coverage is not None
    assert catalogue.sources["doc"].read_at == []


WHERE = "air.toml: indicators[0] (id=pm10_annual_mean)"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('period = "1 y"\n', 'period = "1 y"\ncolour = "red"\n',
         f"{WHERE} → colour: unknown key"),
        ('source = "doc"\nref = "Annex XI"', 'source = "nope"\nref = "Annex XI"',
         f"{WHERE} → limits[0].source: no [sources.nope] in sources.toml; known: doc"),
        ('unit = "µg/m³"\nperiod', 'unit = "ug/m3"\nperiod',
         f"{WHERE} → unit: unknown unit 'ug/m3'"),
        ('operator = "mean"', 'operator = "average"',
         f"{WHERE} → computation.operator: unknown operator 'average'"),
        ('averaging = "1 y"', 'averaging = "2 d"',
         f"{WHERE} → limits[0].averaging: '2 d': d, mo and y take only a count of 1"),
        ('ref = "Annex XI"', 'ref = "Annex XI"\nverified = false',
         f"{WHERE} → limits[0].note: a figure with verified = false says why in note"),
        ('statistic = "mean"', 'statistic = "median"',
         f"{WHERE} → computation.statistic: unknown statistic 'median'"),
        ('base = "1 h"', 'base = "7 h"', f"{WHERE} → computation.base: does not nest"),
        ('value = 0.9,', 'value = 1.5,',
         f"{WHERE} → computation.period_min_coverage.value: a coverage is 0…1"),
        ('value = 40.0', 'value = "40"', f"{WHERE} → limits[0].value: must be a number"),
        ('kind = "limit_value"', 'kind = "law"', f"{WHERE} → limits[0].kind: must be one of"),
        ('period = "1 y"\n', 'period = "1 y"\n[indicators.u4ssc]\ncode = "AQ-1"\n'
         'name = "x"\nsource = "doc"\nref = "p. 1"\n', f"{WHERE} → u4ssc.code: must match"),
    ],
)
def test_the_loader_names_file_indicator_and_key(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in _INDICATOR
    folder = _write(tmp_path / "c", air=_INDICATOR.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_catalogue(folder)
    lines = caught.value.problems
    assert any(expected in line for line in lines), lines
    assert all(str(folder) in line for line in lines), lines


def test_an_inventory_indicator_reads_no_kpi_and_a_counter_takes_no_base(tmp_path: Path) -> None:
    inventory = _INDICATOR.replace('statistic = "mean"', 'input = "inventory"\nstatistic = "mean"')
    counter = _INDICATOR.replace('"pm10_annual_mean"', '"energy"').replace(
        'operator = "mean"', 'operator = "counter_delta"')
    folder = _write(tmp_path / "c", air=inventory, energy=counter)
    with pytest.raises(ConfigError) as caught:
        load_catalogue(folder)
    text = "\n".join(caught.value.problems)
    assert f"{WHERE} → computation.operator: an inventory indicator reads no KPI" in text
    assert "energy.toml: indicators[0] (id=energy) → computation.base: operator counter_delta " \
        "takes no base" in text


def test_every_problem_of_every_file_is_reported_at_once(tmp_path: Path) -> None:
    second = _INDICATOR.replace('unit = "µg/m³"\nperiod', 'unit = "ppb"\nperiod')
    folder = _write(tmp_path / "c", air=_INDICATOR, water=second)
    with pytest.raises(ConfigError) as caught:
        load_catalogue(folder)
    lines = caught.value.problems
    assert any("water.toml: indicators[0] (id=pm10_annual_mean) → id: 'pm10_annual_mean' is "
               "taken by" in line and "air.toml" in line for line in lines), lines
    assert any("water.toml" in line and "unknown unit 'ppb'" in line for line in lines), lines


@pytest.mark.parametrize(
    ("sources", "files", "expected"),
    [
        (None, {"air": _INDICATOR}, "sources.toml: does not exist"),
        ("[sources\n", {"air": _INDICATOR}, "sources.toml: is not valid TOML"),
        (_SOURCES + "[extra]\nx = 1\n", {"air": _INDICATOR},
         "sources.toml → extra: unknown table; this file holds only [sources]"),
        (_SOURCES.replace('url = "https://example.org/doc"', 'url = "example.org"'),
         {"air": _INDICATOR}, "sources.toml → sources.doc.url: must match"),
        (_SOURCES, {"air": "[[indicators]]\n"}, "air.toml: indicators[0] → id: required"),
        (_SOURCES, {"air": "title = 'x'\n"}, "air.toml → indicators: needs at least one"),
    ],
)
def test_file_level_problems(
    tmp_path: Path, sources: str | None, files: dict[str, str], expected: str
) -> None:
    folder = _write(tmp_path / "c", sources or "", **files)
    if sources is None:
        (folder / SOURCES_FILE).unlink()
    with pytest.raises(ConfigError) as caught:
        load_catalogue(folder)
    assert any(expected in line for line in caught.value.problems), caught.value.problems


def test_a_missing_folder_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a folder"):
        load_catalogue(tmp_path / "absent")
