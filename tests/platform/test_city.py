"""The city config (docs/city.md): the shipped example validates, every problem is reported at
once with its place (file, table, key), what spans tables and the indicator catalogue is
checked, and ``ssc-agent validate --city`` exits 0 or 2 as ``validate --config`` does."""

from __future__ import annotations

import copy
import datetime
import json
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.platform.city import (
    Site,
    Target,
    city_schema,
    convert,
    scope_sites,
    selected_limits,
)
from agent.platform.city_checks import city_from_dict, load_city
from agent.platform.indicators import Catalogue, load_catalogue

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "city.example.toml"


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120, check=False)


# A small valid city: two air stations, a metered district; one target of each form.
BASE: dict[str, Any] = {
    "city": {"name": "Testtown", "timezone": "Europe/Berlin"},
    "sites": [
        {"id": "road", "name": "Road", "station_type": "traffic",
         "location": {"lat": 50.1, "lon": 8.6, "address": "Road 1"},
         "feeds": [{"gateway": "gw-road", "kpis": ["pm25_day", "pm10_day", "o3_max8h_day"]}]},
        {"id": "park", "name": "Park", "station_type": "urban_background",
         "location": {"lat": 50.2, "lon": 8.7},
         "feeds": [{"gateway": "gw-park", "kpis": ["pm25_day"]}]},
        {"id": "district", "name": "District", "population": 12000,
         "location": {"lat": 50.0, "lon": 8.5},
         "feeds": [{"gateway": "gw-park", "devices": ["meter"], "kpis": ["energy_day"]}]},
    ],
    "targets": [
        {"id": "pm25", "indicator": "pm25_annual_mean", "comparison": "<=", "value": 10.0,
         "unit": "µg/m³", "by": 2030},
        {"id": "o3", "indicator": "o3_days_over", "comparison": "<=", "value": 18,
         "unit": "d", "threshold": 120.0, "threshold_unit": "µg/m³", "by": 2030},
        {"id": "power", "indicator": "electricity_consumption_per_capita",
         "comparison": "<=", "change_percent": -20.0, "scope": "city",
         "baseline": {"year": 2025, "value": 1500.0, "unit": "kWh/yr/capita"}, "by": 2035},
    ],
}


def problems(data: dict[str, Any], catalogue: Catalogue) -> list[str]:
    try:
        city_from_dict(data, catalogue=catalogue)
    except ConfigError as exc:
        return exc.problems
    return []


def changed(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    change(data)
    return data


# --------------------------------------------------------------------------------------------
# What validates


def test_the_base_validates(catalogue: Catalogue) -> None:
    config = city_from_dict(BASE, catalogue=catalogue)
    assert [site.id for site in config.sites] == ["road", "park", "district"]
    assert [target.id for target in config.targets] == ["pm25", "o3", "power"]
    assert config.targets[2].is_relative and not config.targets[0].is_relative
    assert config.city.tz.key == "Europe/Berlin"


def test_the_shipped_example_validates(catalogue: Catalogue) -> None:
    config = load_city(EXAMPLE, catalogue=catalogue)
    assert config.city.name == "Lakeside"
    assert config.source_path == EXAMPLE
    by_id = {target.id: target for target in config.targets}
    # the targets the docs name, each in the example
    assert by_id["pm25_2030"].value == 10.0 and by_id["pm25_2030"].scope == "every_site"
    assert by_id["o3_days_2030"].threshold == 120.0
    assert by_id["electricity_minus_20"].change_percent == -20.0
    pm25 = catalogue.by_id("pm25_annual_mean")
    judged = scope_sites(config.sites, by_id["pm25_2030"], pm25)
    assert [site.id for site in judged] == ["harbour_road", "city_park", "steelworks"]
    shown = {(limit.source, limit.level or limit.kind) for limit in selected_limits(config, pm25)}
    assert shown == {("eu_2008_50", "limit_value"), ("eu_2024_2881", "limit_value"),
                     ("who_aqg_2021", "guideline_level"), ("who_aqg_2021", "IT-4")}


def test_the_example_satisfies_its_json_schema() -> None:
    schema = city_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    jsonschema.validate(data, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "colour": "blue"}, schema)


def test_a_target_in_another_unit_converts(catalogue: Catalogue) -> None:
    data = changed(lambda d: d["targets"][0].update(value=0.01, unit="mg/m³"))
    assert problems(data, catalogue) == []
    assert convert(0.01, "mg/m³", "µg/m³") == pytest.approx(10.0)
    assert convert(10.0, "µg/m³", "mg/m³") == pytest.approx(0.01)
    with pytest.raises(ValueError, match="does not convert"):
        convert(1.0, "d", "h")


def test_scope_filters_named_sites_station_types_and_feeds(catalogue: Catalogue) -> None:
    config = city_from_dict(BASE, catalogue=catalogue)
    pm25 = catalogue.by_id("pm25_annual_mean")

    def judged(**keys: Any) -> list[str]:
        target = Target.model_validate({**BASE["targets"][0], **keys})
        return [site.id for site in scope_sites(config.sites, target, pm25)]

    assert judged() == ["road", "park"]  # the district feeds no pm25_day
    assert judged(scope="sites", sites=["park"]) == ["park"]
    assert judged(station_types=["urban_background"]) == ["park"]


def test_report_limits_default_to_all_and_narrow_per_indicator(catalogue: Catalogue) -> None:
    pm10 = catalogue.by_id("pm10_annual_mean")
    config = city_from_dict(BASE, catalogue=catalogue)
    assert selected_limits(config, pm10) == list(pm10.limits)
    narrowed = city_from_dict({**BASE, "report": {
        "limits": ["eu_2024_2881"],
        "indicators": [{"id": "pm10_annual_mean", "limits": ["who_aqg_2021/IT-4"]}]}},
        catalogue=catalogue)
    assert [(lim.source, lim.level) for lim in selected_limits(narrowed, pm10)] == [
        ("who_aqg_2021", "IT-4")]
    pm25 = catalogue.by_id("pm25_annual_mean")
    assert {lim.source for lim in selected_limits(narrowed, pm25)} == {"eu_2024_2881"}


# --------------------------------------------------------------------------------------------
# Each problem, with its place

def _site(i: int, **keys: Any) -> Callable[[dict[str, Any]], object]:
    return lambda d: d["sites"][i].update(keys)


def _target(i: int, **keys: Any) -> Callable[[dict[str, Any]], object]:
    return lambda d: d["targets"][i].update(keys)


def _drop(section: str, i: int, key: str) -> Callable[[dict[str, Any]], object]:
    return lambda d: d[section][i].pop(key)


T0 = "targets[0] (id=pm25, indicator=pm25_annual_mean) → "
T1 = "targets[1] (id=o3, indicator=o3_days_over) → "
T2 = "targets[2] (id=power, indicator=electricity_consumption_per_capita) → "

CASES: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
    ("unknown section", lambda d: d.update(colour="blue"),
     "colour: unknown key; known keys: city, sites, targets, report"),
    ("no [city]", lambda d: d.pop("city"), "city: required (add a [city] table)"),
    ("no sites", lambda d: d.pop("sites"), "sites: required (add a [[sites]] table)"),
    ("bad zone", lambda d: d["city"].update(timezone="Mars/Olympus"),
     "city.timezone: 'Mars/Olympus' is not an IANA time zone name: write e.g. "
     "'Europe/Berlin' or 'UTC'"),
    ("no zone", lambda d: d["city"].pop("timezone"), "city.timezone: required"),
    ("city population 0", lambda d: d["city"].update(population=0),
     "city.population: must be greater than 0"),
    ("site not a table", lambda d: d["sites"].append("x"), "sites[3]: must be a table"),
    ("latitude", _site(0, location={"lat": 91.0, "lon": 8.0}),
     "sites[0] (id=road) → location.lat: must be at most 90"),
    ("site population 0", _site(2, population=0),
     "sites[2] (id=district) → population: must be greater than 0"),
    ("network length", _site(2, network_length_km=-1.0),
     "sites[2] (id=district) → network_length_km: must be greater than 0"),
    ("station type", _site(0, station_type="roadside"),
     "sites[0] (id=road) → station_type: must be one of traffic, industrial, "
     "urban_background, suburban_background, rural_background"),
    ("no feeds", _site(1, feeds=[]),
     "sites[1] (id=park) → feeds: must have at least 1 item"),
    ("duplicate site id", _site(1, id="road"),
     "sites[1] (id=road) → id: 'road' is already used by sites[0]"),
    ("a window feeding two sites", _site(1, feeds=[{"gateway": "gw-road", "kpis": ["pm25_day"]}]),
     "sites[1] (id=park) → feeds[0].kpis[0]: KPI 'pm25_day' of gateway 'gw-road' already feeds "
     "site 'road': a window belongs to one site (split them by devices)"),
    ("unknown indicator", _target(0, indicator="pm25_anual_mean"),
     "targets[0] (id=pm25, indicator=pm25_anual_mean) → indicator: no indicator "
     "'pm25_anual_mean'; did you mean 'pm25_annual_mean'?"),
    ("statistic not the indicator's", _target(0, statistic="exceedances"),
     T0 + "statistic: indicator pm25_annual_mean is computed as 'mean' (its catalogue entry), "
     "not 'exceedances'"),
    ("unknown statistic", _target(0, statistic="median"),
     T0 + "statistic: no statistic 'median';"),
    ("unit that does not convert", _target(0, unit="d"),
     T0 + "unit: 'd' does not convert to 'µg/m³', the unit of pm25_annual_mean"),
    ("unknown unit", _target(0, unit="ppb"), T0 + "unit: unknown unit 'ppb'; known: µg/m³,"),
    ("no unit", _drop("targets", 0, "unit"),
     T0 + "unit: required with value: pm25_annual_mean is in 'µg/m³'"),
    ("no value", _drop("targets", 0, "value"),
     T0 + "value: required: the figure to reach (or change_percent with a baseline"),
    ("both forms", _target(2, value=1000.0),
     T2 + "value: give value (an absolute target) or change_percent with a baseline "
     "(a relative one), not both"),
    ("relative without baseline", _drop("targets", 2, "baseline"),
     T2 + "baseline: required with change_percent"),
    ("baseline after the year", _target(2, baseline={"year": 2036}),
     T2 + "baseline.year: 2036 is not before the target's year (by = 2035)"),
    ("baseline in the wrong unit", _target(2, baseline={"year": 2025, "value": 1.0, "unit": "%"}),
     T2 + "baseline.unit: '%' does not convert to 'kWh/yr/capita'"),
    ("baseline value 0", _target(2, baseline={"year": 2025, "value": 0.0,
                                              "unit": "kWh/yr/capita"}),
     T2 + "baseline.value: a change in percent needs a baseline figure above 0"),
    ("change of -100 %", _target(2, change_percent=-100.0),
     T2 + "change_percent: must be greater than -100"),
    ("year far off", _target(0, by=2300), T0 + "by: must be at most 2100"),
    ("year missing", _drop("targets", 0, "by"), T0 + "by: required"),
    ("a date for a year", _target(0, by=datetime.date(2030, 12, 31)),
     T0 + "by: write the year alone (2030): a target is judged on a whole calendar year"),
    ("a year in quotes", _target(2, baseline={"year": "2025"}),
     T2 + "baseline.year: must be a year written as a number, e.g. 2030"),
    ("more days than a year has", _target(1, value=400),
     T1 + "value: 400 d: a year has at most 366"),
    ("negative figure", _target(0, value=-1.0),
     T0 + "value: -1 µg/m³: a figure of pm25_annual_mean is never negative"),
    ("exceedances without threshold", _drop("targets", 1, "threshold"),
     T1 + "threshold: required: o3_days_over counts the windows strictly over a value; name "
     "it (e.g. a limit's: 100 µg/m³, 120 µg/m³, 160 µg/m³)"),
    ("threshold in days", _target(1, threshold_unit="d"),
     T1 + "threshold_unit: 'd' does not convert to 'µg/m³', the unit of the windows of "
     "o3_days_over"),
    ("threshold on a mean", _target(0, threshold=5.0),
     T0 + "threshold: indicator pm25_annual_mean compares no window with a value (it is "
     "computed as 'mean')"),
    ("comparison", _target(0, comparison="=<"),
     T0 + "comparison: must be one of <=, <, >=, >"),
    ("unknown site", _target(0, scope="sites", sites=["parc"]),
     T0 + "sites[0]: no site 'parc'; did you mean 'park'? known: district, park, road"),
    ("site without the KPI", _target(0, scope="sites", sites=["district"]),
     T0 + "sites[0]: site 'district' has no feed with KPI 'pm25_day', which indicator "
     "pm25_annual_mean reads"),
    ("every_site with names", _target(0, sites=["park"]),
     T0 + "sites: scope every_site takes every site that feeds the indicator"),
    ("sites scope without names", _target(0, scope="sites"),
     T0 + "sites: scope sites judges the sites named here: name at least one"),
    ("no site feeds it", _target(0, indicator="no2_annual_mean"),
     "targets[0] (id=pm25, indicator=no2_annual_mean) → scope: no site feeds KPI 'no2_1h', "
     "which it reads: the target has nothing to be judged on"),
    ("no station of that type", _target(0, station_types=["industrial"]),
     T0 + "scope: no site of station type industrial feeds KPI 'pm25_day'"),
    ("air station without a type", lambda d: d["sites"][1].pop("station_type"),
     T0 + "scope: sites without station_type: park; an air quality figure is read by its "
     "station's type"),
    ("per capita without population", lambda d: d["sites"][2].pop("population"),
     T2 + "scope: indicator electricity_consumption_per_capita needs the population each "
     "site serves: give population or [city] population for district"),
    ("exposure share without the sites' population", lambda d: (
        d["city"].update(population=50000),
        d["sites"].append({"id": "ring", "name": "Ring", "location": {"lat": 50.0, "lon": 8.0},
                           "feeds": [{"gateway": "gw-ring", "kpis": ["lden_year"]}]}),
        d["targets"].__setitem__(0, {
            "id": "pm25", "indicator": "noise_exposure_share", "comparison": "<", "value": 15.0,
            "unit": "%", "threshold": 55.0, "threshold_unit": "dB(A)", "scope": "city",
            "by": 2032})),
     "targets[0] (id=pm25, indicator=noise_exposure_share) → scope: indicator "
     "noise_exposure_share needs the population each site serves: give population for ring"),
    ("share without share", _target(0, scope="share_of_sites"),
     T0 + "share_percent: required with scope share_of_sites"),
    ("share with another scope", _target(0, share_percent=50.0),
     T0 + "share_percent: only with scope share_of_sites"),
    ("inventory per site", lambda d: d["targets"].__setitem__(0, {
        "id": "pm25", "indicator": "smart_electricity_meters", "comparison": ">=",
        "value": 90.0, "unit": "%", "by": 2030}),
     "targets[0] (id=pm25, indicator=smart_electricity_meters) → scope: indicator "
     "smart_electricity_meters is read from the fleet's inventory, city-wide: write "
     "scope = \"city\""),
    ("share over 100 %", lambda d: d["targets"].__setitem__(0, {
        "id": "pm25", "indicator": "smart_electricity_meters", "comparison": ">=",
        "value": 120.0, "unit": "%", "scope": "city", "by": 2030}),
     "targets[0] (id=pm25, indicator=smart_electricity_meters) → value: 120 %: a share is at "
     "most 100 %"),
    ("duplicate target id", _target(1, id="pm25"),
     "targets[1] (id=pm25, indicator=o3_days_over) → id: 'pm25' is already used by targets[0]"),
    ("unknown key in a target", _target(0, deadline=2030),
     T0 + "deadline: unknown key; known keys: id, name, indicator,"),
    ("report limit", lambda d: d.update(report={"limits": ["eu_2008_5O"]}),
     "report.limits[0]: no limit 'eu_2008_5O'; did you mean 'eu_2008_50'?"),
    ("report limit of an indicator", lambda d: d.update(report={"indicators": [
        {"id": "pm25_annual_mean", "limits": ["who_aqg_2021/IT-9"]}]}),
     "report.indicators[0].limits[0]: no limit of pm25_annual_mean 'who_aqg_2021/IT-9'; "
     "did you mean 'who_aqg_2021/IT-4'?"),
    ("report indicator", lambda d: d.update(report={"indicators": [
        {"id": "pm26_annual_mean", "limits": []}]}),
     "report.indicators[0].id: no indicator 'pm26_annual_mean'; did you mean "
     "'pm25_annual_mean'?"),
]


@pytest.mark.parametrize(("change", "expected"), [(c, e) for _, c, e in CASES],
                         ids=[name for name, _, _ in CASES])
def test_each_problem_is_one_line_naming_its_place(
    catalogue: Catalogue, change: Callable[[dict[str, Any]], object], expected: str
) -> None:
    found = problems(changed(change), catalogue)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


# Cases of different tables (or different targets) that do not touch each other: made at once,
# they must be reported as the lines of each alone, in file order.
_BY_NAME = {name: (change, expected) for name, change, expected in CASES}
_SLOTS = [
    ["bad zone", "no zone"],
    ["city population 0"],
    ["statistic not the indicator's", "unit that does not convert", "unknown unit", "no value",
     "year far off", "negative figure", "comparison", "threshold on a mean", "unknown site",
     "share without share"],
    ["more days than a year has", "exceedances without threshold", "threshold in days"],
    ["both forms", "relative without baseline", "baseline after the year", "change of -100 %"],
    ["report limit", "report limit of an indicator"],
]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.tuples(*(st.sampled_from([None, *slot]) for slot in _SLOTS)))
def test_several_problems_at_once_are_each_reported(
    catalogue: Catalogue, chosen: tuple[str | None, ...]
) -> None:
    names = [name for name in chosen if name is not None]
    data = copy.deepcopy(BASE)
    for name in names:
        _BY_NAME[name][0](data)
    found = problems(data, catalogue)
    assert len(found) == len(names), found
    for line, name in zip(found, names, strict=True):
        assert line.startswith(_BY_NAME[name][1]), (name, found)


def test_an_exposure_share_needs_its_threshold(catalogue: Catalogue, tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    path = tmp_path / "city.toml"
    path.write_text(text.replace('threshold = 55.0\nthreshold_unit = "dB(A)"\n', ""),
                    encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_city(path, catalogue=catalogue)
    assert caught.value.problems == [
        f"{path}: targets[5] (id=noise_exposure, indicator=noise_exposure_share) → threshold: "
        "required: noise_exposure_share counts the population at sites at or over a value; "
        "name it (e.g. a limit's: 53 dB(A), 55 dB(A))"]
    path.write_text(text.replace('threshold_unit = "dB(A)"', 'threshold_unit = "%"'),
                    encoding="utf-8")
    with pytest.raises(ConfigError, match=r"threshold_unit: '%' does not convert to 'dB\(A\)'"):
        load_city(path, catalogue=catalogue)


def test_every_problem_is_reported_at_once_with_the_file(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    text = text.replace('timezone = "Europe/Berlin"', 'timezone = "Europe/Nowhere"')
    text = text.replace('indicator = "o3_days_over"', 'indicator = "o3_dayz_over"')
    text = text.replace("by = 2028", "by = 2020\nbaseline = { year = 2024 }")
    text = text.replace('"who_aqg_2021/IT-4"]', '"who_aqg_2021/IT-7"]')
    path = tmp_path / "city.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_city(path, catalogue=catalogue)
    lines = caught.value.problems
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    places = [line.removeprefix(f"{path}: ").split(":")[0] for line in lines]
    assert places == [
        "city.timezone",
        "targets[2] (id=o3_days_2030, indicator=o3_dayz_over) → indicator",
        "targets[3] (id=no2_most_stations, indicator=no2_annual_mean) → baseline.year",
        "report.indicators[0].limits[3]",
    ]


# --------------------------------------------------------------------------------------------
# The command line


def test_validate_city_exits_0_on_the_example() -> None:
    done = cli("validate", "--city", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{EXAMPLE}: valid (Lakeside, 5 sites, 7 targets)"


def test_validate_city_exits_2_with_every_error(tmp_path: Path) -> None:
    data = changed(lambda d: (d["city"].update(timezone="Nowhere"), d["targets"][0].update(
        unit="d"), d["sites"][0]["location"].update(lon=200.0)))
    path = tmp_path / "city.toml"
    path.write_text(_toml(data), encoding="utf-8")
    done = cli("validate", "--city", str(path))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"ssc-agent: {path}: city.timezone: 'Nowhere' is not")
    assert lines[1].startswith(f"ssc-agent: {path}: sites[0] (id=road) → location.lon: ")
    assert lines[2].startswith(f"ssc-agent: {path}: {T0}unit: 'd' does not convert")


def test_validate_city_on_a_missing_or_broken_file_exits_2(tmp_path: Path) -> None:
    done = cli("validate", "--city", str(tmp_path / "none.toml"))
    assert done.returncode == 2
    assert f"city config {tmp_path / 'none.toml'} does not exist" in done.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[city]\nname = \n", encoding="utf-8")
    done = cli("validate", "--city", str(broken))
    assert done.returncode == 2
    assert done.stderr.startswith(f"ssc-agent: {broken}:2:")
    both = cli("validate", "--city", str(EXAMPLE), "--config", str(EXAMPLE))
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_schema_city_prints_the_city_schema() -> None:
    done = cli("schema", "--city")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == city_schema()


def test_the_city_config_imports_nothing_of_the_gateway() -> None:
    code = (
        "import sys, agent.platform.city_checks\n"
        "print(','.join(m for m in sys.modules if m.startswith('agent.gateway')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _toml(data: dict[str, Any]) -> str:
    """Enough TOML for the tests' tables: scalars, lists of scalars, inline tables."""
    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v, ensure_ascii=False)

    out = ["[city]\n" + "".join(f"{k} = {value(v)}\n" for k, v in data["city"].items())]
    for section in ("sites", "targets"):
        for table in data[section]:
            out.append(f"[[{section}]]\n" + "".join(
                f"{k} = {value(v)}\n" for k, v in table.items()))
    return "\n".join(out)


def test_a_site_knows_the_kpis_it_is_fed() -> None:
    site = Site.model_validate(BASE["sites"][0])
    assert site.feeds_kpi("pm10_day") and not site.feeds_kpi("no2_1h")
    config = city_from_dict(BASE)  # the shipped catalogue
    assert config.site("park").station_type == "urban_background"
    with pytest.raises(KeyError):
        config.site("nowhere")


def test_docs_name_every_key() -> None:
    from agent.platform import city

    text = (REPO / "docs" / "city.md").read_text(encoding="utf-8")
    models = (city.CitySection, city.Location, city.Feed, city.Site, city.Baseline, city.Target,
              city.IndicatorLimits, city.ReportSection)
    missing = [f"{model.__name__}.{key}" for model in models for key in model.model_fields
               if f"`{key}`" not in text and f"{key}," not in text and f".{key}]]`" not in text]
    assert not missing
