"""A station's yearly checks against the catalogue's limits, worked out by hand
(docs/reports.md §3), and what the report says about a site it cannot read one figure for."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.platform import statistics as st
from agent.platform.indicators import load_catalogue
from agent.platform.report.compute import Builder
from agent.platform.report.figures import limit_checks, primary_checks
from agent.platform.report.inputs import TargetLike
from agent.platform.report.reader import WindowReader
from agent.platform.report.trend import Figure
from agent.platform.sink import open_sink
from agent.platform.sink.url import open_read_only
from agent.wire import Batch

ZONE = ZoneInfo("Europe/Berlin")
CATALOGUE = load_catalogue()
PM10_DAYS = CATALOGUE.by_id("pm10_days_over")
EU2008 = "eu_2008_50/limit_value/1 d/50"
EU2024 = "eu_2024_2881/limit_value/1 d/45"
WHO = "who_aqg_2021/guideline_level/1 d/45"
IT1 = "who_aqg_2021/IT-1/1 d/150"


def days_2023(over: int, valid: int = 365, high: float = 60.0) -> list[st.Record]:
    """The local days of 2023: the first ``over`` at ``high``, the rest at 20, only the first
    ``valid`` of them stored."""
    records = []
    for index in range(valid):
        day = date(2023, 1, 1) + timedelta(days=index)
        start = datetime(day.year, day.month, day.day, tzinfo=ZONE)
        end = start + timedelta(days=1)
        end = datetime(end.year, end.month, end.day, tzinfo=ZONE)  # 23 or 25 h on DST days
        records.append(st.Record(start.astimezone(UTC), end.astimezone(UTC),
                                 high if index < over else 20.0))
    return records


def checks(records: list[st.Record]) -> dict[tuple[str, str], tuple[float | None, bool | None,
                                                                     bool, str]]:
    found = limit_checks(PM10_DAYS, PM10_DAYS.limits, {2023: records}, ZONE, years=[2023],
                         annual={})
    return {(c.limit, c.what.split(" ")[0]): (c.figure.value, c.meets, c.in_force, c.why)
            for c in found}


def test_36_days_over_50_exceed_the_35_allowed() -> None:
    got = checks(days_2023(over=36))
    # 36 > 35 days allowed; the 90.4th percentile: rank round(0.904 × 365 = 329.96) = 330 of
    # 329 days at 20 and 36 at 60 is 60, over 50
    assert got[EU2008, "days"] == (36.0, False, True, "")
    assert got[EU2008, "90.4th"] == (60.0, False, True, "")
    # (EU) 2024/2881: 45 µg/m³ at most 18 times, in force from 2030: judged, marked
    assert got[EU2024, "days"] == (36.0, False, False, "")
    # WHO: the 99th percentile (rank round(361.35) = 361) is 60 > 45; the count is shown
    assert got[WHO, "99th"] == (60.0, False, True, "")
    assert got[WHO, "days"] == (36.0, None, True, "judged on its percentile")
    # IT-1: 150 µg/m³ with no number allowed: counted, not judged
    assert got[IT1, "days"][:3] == (0.0, None, True)
    assert "counted, not judged" in got[IT1, "days"][3]


def test_35_days_over_50_are_allowed() -> None:
    got = checks(days_2023(over=35))
    assert got[EU2008, "days"] == (35.0, True, True, "")
    # 330 days at 20: the 330th value is 20, at or under 50
    assert got[EU2008, "90.4th"] == (20.0, True, True, "")


def test_too_few_days_give_no_verdict_and_say_why() -> None:
    got = checks(days_2023(over=10, valid=300))
    value, meets, _, why = got[EU2008, "days"]
    assert (value, meets) == (None, None)
    assert why == "data capture 82.19 % (300 of 365 days) < required 90 %"


def test_the_judging_check_of_a_limit_is_the_one_a_city_share_counts() -> None:
    found = limit_checks(PM10_DAYS, PM10_DAYS.limits, {2023: days_2023(over=36)}, ZONE,
                         years=[2023], annual={})
    chosen = primary_checks(found)
    assert chosen[EU2008, 2023].what.startswith("days over")
    assert chosen[WHO, 2023].what.startswith("99th percentile")


class _Feed:
    def __init__(self, gateway: str, kpis: list[str], devices: list[str]) -> None:
        self.gateway, self.kpis, self.devices = gateway, kpis, devices


class _Site:
    def __init__(self, feeds: list[_Feed]) -> None:
        self.id, self.name, self.feeds = "s1", "Site 1", feeds
        self.station_type: str | None = None
        self.population: int | None = None


class _Section:
    name, timezone, population, tz = "Test", "Europe/Berlin", None, ZONE


class _City:
    def __init__(self, site: _Site) -> None:
        self.city, self.sites = _Section(), [site]
        self.targets: list[TargetLike] = []


def _window(src: str, day: int, value: float) -> dict[str, object]:
    start = datetime(2023, 1, day, tzinfo=ZONE)
    return {"kpi": "pm10_day", "src": src, "start": int(start.timestamp() * 1000),
            "end": int((start + timedelta(days=1)).timestamp() * 1000), "value": value,
            "valid": True, "n": 24, "expected": 24, "unit": "µg/m³"}


@pytest.mark.parametrize(("devices", "problem"), [
    ([], "2 sources feed pm10_day at this site (gw-1 pm10_day a.pm10, gw-1 pm10_day b.pm10): "
         "name the one device in the site's feed (devices)"),
    (["a"], ""),
    (["c"], "no pm10_day window of gateway gw-1 is stored for the period"),
])
def test_a_site_reads_one_source(tmp_path: Path, devices: list[str], problem: str) -> None:
    url = f"sqlite:///{tmp_path}/sink.db"
    windows = tuple(_window(src, day, 30.0 + day) for src in ("a.pm10", "b.pm10")
                    for day in (1, 2))
    with open_sink(url) as sink:
        sink.store(Batch("gw-1", 1, 1, 0, (), windows))
        sink.store(Batch("gw-1", 1, 1, 0, (), windows, store="again"))  # stored twice
    site = _Site([_Feed("gw-1", ["pm10_day"], devices)])
    with open_read_only(url) as select:
        reader = WindowReader(select)
        builder = Builder(_City(site), CATALOGUE, reader, date(2023, 1, 1), date(2023, 12, 31))
        series = builder.series(site, "pm10_day")
        assert series.problem == problem
        figure = builder.annual(CATALOGUE.by_id("pm10_annual_mean"), site, 2023)
    if problem:
        assert figure == Figure.invalid(problem)
    else:
        assert [r.value for r in series.records] == [31.0, 32.0]  # each window once
        assert reader.duplicates == 2
        assert figure.reason == "data capture 0.55 % (2 of 365 days) < required 90 %"
        assert figure.partial == pytest.approx(31.5)
