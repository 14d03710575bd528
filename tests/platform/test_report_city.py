"""City-wide figures worked out by hand (docs/reports.md §4, §5): the share of inhabitants
exposed to noise from the sites' yearly Lden and populations, electricity per inhabitant from
daily meter windows (a leap year among them), and progress toward a city-wide target and a
relative one from its baseline."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.platform.city import selected_limits
from agent.platform.city_checks import load_city
from agent.platform.indicators import load_catalogue
from agent.platform.report.compute import build_report
from agent.platform.report.model import IndicatorReport, Report
from agent.platform.report.reader import WindowReader
from agent.platform.sink import open_sink
from agent.platform.sink.url import open_read_only
from agent.wire import Batch

ZONE = ZoneInfo("Europe/Berlin")
CITY = """
[city]
name = "Testville"
timezone = "Europe/Berlin"

[[sites]]
id = "a"
name = "Road A"
location = { lat = 53.0, lon = 9.0 }
population = 1000
feeds = [{ gateway = "gw-a", kpis = ["lden_year"] }]

[[sites]]
id = "b"
name = "Road B"
location = { lat = 53.0, lon = 9.0 }
population = 2000
feeds = [{ gateway = "gw-b", kpis = ["lden_year"] }]

[[sites]]
id = "c"
name = "Road C"
location = { lat = 53.0, lon = 9.0 }
population = 3000
feeds = [{ gateway = "gw-c", kpis = ["lden_year"] }]

[[sites]]
id = "d"
name = "District D"
location = { lat = 53.0, lon = 9.0 }
population = 100
feeds = [{ gateway = "gw-d", kpis = ["energy_day"] }]

[[sites]]
id = "e"
name = "District E"
location = { lat = 53.0, lon = 9.0 }
population = 300
feeds = [{ gateway = "gw-e", kpis = ["energy_day"] }]

[[sites]]
id = "w"
name = "Water district"
location = { lat = 53.0, lon = 9.0 }
population = 500
feeds = [{ gateway = "gw-w", kpis = ["water_day"] }]

[[targets]]
id = "loss"
indicator = "water_supply_loss"
comparison = "<="
value = 10.0
unit = "%"
scope = "city"
by = 2030

[[targets]]
id = "meters"
indicator = "smart_electricity_meters"
comparison = ">="
value = 90.0
unit = "%"
scope = "city"
by = 2030

[[targets]]
id = "electricity_abs"
indicator = "electricity_consumption_per_capita"
comparison = "<="
value = 20.0
unit = "kWh/yr/capita"
baseline = { year = 2020, value = 30.0, unit = "kWh/yr/capita" }
scope = "city"
by = 2030

[[targets]]
id = "noise"
indicator = "noise_exposure_share"
comparison = "<"
value = 15.0
unit = "%"
threshold = 55.0
threshold_unit = "dB(A)"
scope = "city"
by = 2032

[[targets]]
id = "electricity"
indicator = "electricity_consumption_per_capita"
comparison = "<="
change_percent = -20.0
baseline = { year = 2023 }
scope = "city"
by = 2035
"""
LDEN = {"gw-a": {2023: (58.0, 50.0), 2024: (54.0, 47.0)},  # (Lden, Lnight)
        "gw-b": {2023: (52.0, 44.0), 2024: (52.0, 44.0)},
        "gw-c": {2023: (60.0, 52.0), 2024: (56.0, 48.0)}}
KWH_A_DAY = {"gw-d": {2023: 10.0, 2024: 9.0}, "gw-e": {2023: 20.0, 2024: 18.0}}


def _ms(year: int, month: int = 1, day: int = 1) -> int:
    return int(datetime(year, month, day, tzinfo=ZONE).timestamp() * 1000)


def _windows(gw: str) -> tuple[dict[str, Any], ...]:
    if gw in LDEN:
        return tuple({"kpi": "lden_year", "src": "slm.laeq", "start": _ms(y), "end": _ms(y + 1),
                      "value": lden, "valid": True, "n": 1, "expected": 1, "unit": "dB(A)",
                      "lnight": lnight} for y, (lden, lnight) in LDEN[gw].items())
    windows = []
    for year, kwh in KWH_A_DAY[gw].items():
        day = date(year, 1, 1)
        while day.year == year:
            following = day + timedelta(days=1)
            windows.append({"kpi": "energy_day", "src": "meter.energy_import",
                            "start": _ms(day.year, day.month, day.day),
                            "end": _ms(following.year, following.month, following.day),
                            "value": kwh, "valid": True, "n": 96, "expected": 96,
                            "unit": "kWh"})
            day = following
    return tuple(windows)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    folder = tmp_path_factory.mktemp("city")
    url = f"sqlite:///{folder}/sink.db"
    with open_sink(url) as sink:
        for gw in (*LDEN, *KWH_A_DAY):
            sink.store(Batch(gw, 1, 1, 0, (), _windows(gw)))
    (folder / "city.toml").write_text(CITY, encoding="utf-8")
    catalogue = load_catalogue()
    city = load_city(folder / "city.toml", catalogue=catalogue)
    with open_read_only(url) as select:
        return build_report(city, catalogue, WindowReader(select), date(2023, 1, 1),
                            date(2024, 12, 31), generated="test",
                            limits_for=lambda indicator: selected_limits(city, indicator))


def _section(report: Report, indicator: str) -> IndicatorReport:
    return next(s for s in report.indicators if s.id == indicator)


def test_share_of_inhabitants_exposed(report: Report) -> None:
    shares = {(c.year, c.what.split(" (")[0]): c.figure for c in
              _section(report, "noise_exposure_share").city_figures}
    # 2023: a (58) and c (60) are at or over 55: (1000 + 3000) / 6000
    assert shares[2023, "at or above 55 dB(A)"].value == pytest.approx(100 * 4000 / 6000)
    # 2024: only c (56): 3000 / 6000; over 53 (WHO, road traffic): a (54) and c
    assert shares[2024, "at or above 55 dB(A)"].value == pytest.approx(50.0)
    assert shares[2024, "at or above 53 dB(A)"].value == pytest.approx(100 * 4000 / 6000)


def test_lnight_is_read_from_the_yearly_window_extra(report: Report) -> None:
    station = next(s for s in _section(report, "lnight_annual").stations if s.id == "c")
    assert [(y.year, y.figure.value if y.figure else None) for y in station.years] == [
        (2023, 52.0), (2024, 48.0)]


def test_electricity_per_inhabitant(report: Report) -> None:
    section = _section(report, "electricity_consumption_per_capita")
    by_site = {(s.id, y.year): y.figure for s in section.stations for y in s.years
               if y.figure is not None}
    assert by_site["d", 2023].value == pytest.approx(10 * 365 / 100)
    assert by_site["d", 2024].value == pytest.approx(9 * 366 / 100)  # a leap year
    assert by_site["e", 2024].value == pytest.approx(18 * 366 / 300)
    city = {c.year: c.figure.value for c in section.city_figures}
    assert city[2023] == pytest.approx((3650 + 7300) / 400)
    assert city[2024] == pytest.approx((9 * 366 + 18 * 366) / 400)


def test_city_targets_progress(report: Report) -> None:
    noise = next(t for t in report.targets if t.id == "noise")
    assert [ty.figure.value for ty in noise.years] == pytest.approx([100 * 4000 / 6000, 50.0])
    assert [ty.meets for ty in noise.years] == [False, False]
    slope = 50.0 - 100 * 4000 / 6000
    assert noise.slope.value == pytest.approx(slope)
    assert 50.0 + 8 * slope < 0
    assert noise.projection.value == 0.0  # a share does not fall below 0 %
    assert noise.on_track is True and noise.status.startswith("not met in 2024; on track")
    electricity = next(t for t in report.targets if t.id == "electricity")
    baseline = (3650 + 7300) / 400  # 2023's city-wide figure, computed: no value was given
    assert electricity.target.value == pytest.approx(baseline * 0.8)
    # 2024: 27 × 366 / 400 = 24.705, over 21.9; the line falls 2.67 a year, to 21.9 by 2026
    assert [ty.meets for ty in electricity.years] == [False, False]
    slope = 27 * 366 / 400 - baseline
    assert 27 * 366 / 400 + 11 * slope < 0
    assert electricity.projection.value == 0.0
    assert electricity.status.startswith("not met in 2024; on track: the trend gives")


def test_what_cannot_be_computed_says_why(report: Report) -> None:
    loss = _section(report, "water_supply_loss")
    assert loss.not_computed.startswith("not computed: it needs the volume billed")
    assert loss.stations == ()
    targets = {t.id: t for t in report.targets}
    assert targets["loss"].status == loss.not_computed
    assert targets["meters"].status.startswith("not computed: this release does not read")
    assert not targets["meters"].target.valid and targets["meters"].years == ()
    # a site whose gateway never sent its KPI: every figure says so
    water = _section(report, "water_consumption_per_capita")
    (station,) = water.stations
    assert station.problem == "no water_day window of gateway gw-w is stored for the period"
    assert all(y.figure is not None and not y.figure.valid
               and y.figure.reason == station.problem for y in station.years)
    city = {c.year: c.figure for c in water.city_figures}
    assert not city[2023].valid and city[2023].reason == "no valid figure at w"


def test_a_baseline_before_the_period_starts_the_progress_line(report: Report) -> None:
    target = next(t for t in report.targets if t.id == "electricity_abs")
    assert target.baseline is not None
    assert (target.baseline.year, target.baseline.figure.value) == (2020, 30.0)
    points = [(2020, 30.0), (2023, (3650 + 7300) / 400), (2024, 27 * 366 / 400)]
    mean_x = sum(x for x, _ in points) / 3
    mean_y = sum(y for _, y in points) / 3
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in points)
             / sum((x - mean_x) ** 2 for x, _ in points))
    assert target.slope.value == pytest.approx(slope)
    assert target.slope.n == 3
    assert target.projection.value == pytest.approx(mean_y + slope * (2030 - mean_x))
    # the years judged are the period's own: the baseline is where the line starts
    assert [ty.year for ty in target.years] == [2023, 2024]
