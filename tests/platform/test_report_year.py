"""A city's leap year through the whole chain (docs/reports.md §9): hourly PM10, NO2 and (at
four stations, BLOCK one of them) O3 readings of 20 stations for 2024 made by
``agent.tools.city_data``, each station's run through ``ssc-agent kpi replay`` (the
gateway's engine), the windows published to a real mosquitto and stored by
``ssc-agent receive`` into a SQLite sink, then ``ssc-agent report --format json``. Every
figure the report gives for those stations is checked against values worked out here from
the readings with plain code and the cited rules (docs/indicators.md §7, docs/kpis.md §3.3),
not with the report's or statistics.py's functions.

Stations made to fall short on purpose:

- BLOCK loses 880 hours in a block (10 % of the year) and, for O3, May and most of June;
- LEAP loses 884 hours from a local midnight: 7900 of 8784 hours and 329 of 366 days, enough
  in a year of 8760 hours or 365 days, not in a leap year;
- DST_SHORT keeps 17 of the 23 hours of 2024-03-31 and 18 of the 25 of 2024-10-27 (neither
  day valid), DST_EDGE 18 of 23 and 19 of 25 (both valid);
- OZONE_ONE_SHORT loses 4 days of O3 in June (26 of 30: one summer month short, still valid),
  OZONE_TWO_SHORT in June and July (two months short, not valid);
- EDGE has a day whose PM10 mean is exactly 50 and NO2 hours at exactly 200 µg/m³, which are
  not over those limits.

A second city config of the stations that have every figure valid gives valid city-wide
shares and target figures.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import subprocess
import sys
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.tools.city_data import (
    REPLAY_POINTS,
    Gap,
    Readings,
    city_toml,
    hourly_readings,
    replay_config,
    write_readings,
)
from agent.wire import Batch, encode_batch
from tests.chaos.harness import read_events
from tests.conftest import Mosquitto, _require_mosquitto, free_port
from tests.waiting import wait_until

pytestmark = [pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
ZONE = ZoneInfo("Europe/Berlin")
YEAR = 2024  # a leap year: 366 days, 8784 hours; DST on 03-31 (23 h) and 10-27 (25 h)
STATIONS = 20
O3_AT = (0, 8, 19, 17)
BLOCK, LEAP, DST_SHORT, DST_EDGE = 17, 18, 16, 15
SPRING, AUTUMN = date(YEAR, 3, 31), date(YEAR, 10, 27)
OZONE_ONE_SHORT, OZONE_TWO_SHORT = 8, 19  # O3 loses 4 days of June (and of July)
EDGE, EDGE_DAY = 12, date(YEAR, 2, 14)  # values exactly at the limits (see _planted)
VALID_CITY = tuple(range(17))  # the stations whose every yearly figure is valid
WINDOWS_PER_BATCH = 500
EXTRA_TARGETS = """
[[targets]]
id = "pm10_five"
indicator = "pm10_annual_mean"
comparison = "<="
value = 30.0
unit = "µg/m³"
scope = "sites"
sites = ["station_001", "station_002", "station_003", "station_004", "station_005"]
by = 2030

[[targets]]
id = "pm10_city"
indicator = "pm10_annual_mean"
comparison = "<="
value = 25.0
unit = "µg/m³"
scope = "city"
by = 2030
"""


def _spec(i: int) -> Readings:
    gaps: tuple[Gap, ...] = ()
    keep: dict[date, int] = {}
    missing = 0.03
    if i == BLOCK:
        gaps = (Gap(datetime(YEAR, 9, 2, tzinfo=ZONE), 880),
                Gap(datetime(YEAR, 5, 1, tzinfo=ZONE), 1200, "o3"))
    elif i == LEAP:
        missing, gaps = 0.0, (Gap(datetime(YEAR, 6, 3, tzinfo=ZONE), 884),)
    elif i == OZONE_ONE_SHORT:
        gaps = (Gap(datetime(YEAR, 6, 10, tzinfo=ZONE), 96, "o3"),)
    elif i == OZONE_TWO_SHORT:
        gaps = (Gap(datetime(YEAR, 6, 10, tzinfo=ZONE), 96, "o3"),
                Gap(datetime(YEAR, 7, 10, tzinfo=ZONE), 96, "o3"))
    elif i == DST_SHORT:
        keep = {SPRING: 17, AUTUMN: 18}
    elif i == DST_EDGE:
        keep = {SPRING: 18, AUTUMN: 19}
    points = ("pm10", "no2", "o3") if i in O3_AT else ("pm10", "no2")
    return Readings(i, points=points, level=i / (STATIONS - 1), missing=missing, gaps=gaps,
                    keep_hours=keep, spikes=0.00025 * i)


def _kpis(i: int) -> tuple[str, ...]:
    return tuple(k for k, p in REPLAY_POINTS.items() if p in _spec(i).points)


def _gw(i: int) -> str:
    return f"gw-aq-{i + 1:03d}"


def _site(i: int) -> str:
    return f"station_{i + 1:03d}"


# ---------------------------------------------------------------- the chain


@dataclass
class Chain:
    readings: dict[int, dict[str, dict[datetime, float]]]  # station → point → UTC hour → value
    reports: dict[str, dict[str, Any]]  # "all" / "valid" → the JSON report
    series: dict[tuple[int, str], Series] = field(default_factory=dict)  # worked out once


def _planted(i: int, readings: list[tuple[datetime, str, float]]
             ) -> list[tuple[datetime, str, float]]:
    """At EDGE, values exactly at a limit, which is not over it (">"): every PM10 hour of
    EDGE_DAY at 50 (the day's mean 50), and NO2 at 200 in the day's first hours."""
    if i != EDGE:
        return readings
    result = []
    for moment, point, value in readings:
        local = moment.astimezone(ZONE)
        at_limit = {"pm10": 50.0, "no2": 200.0} if local.date() == EDGE_DAY else {}
        if point in at_limit and (point == "pm10" or local.hour < 3):
            result.append((moment, point, at_limit[point]))
        else:
            result.append((moment, point, value))
    return result


def _replay(work: Path, i: int) -> tuple[list[dict[str, Any]], dict[str, dict[datetime, float]]]:
    by_point: dict[str, dict[datetime, float]] = defaultdict(dict)
    readings = _planted(i, list(hourly_readings(_spec(i), YEAR)))
    for moment, point, value in readings:
        by_point[point][moment] = value
    csv_path, config, out = (work / f"{_gw(i)}.csv", work / f"{_gw(i)}.toml",
                             work / f"{_gw(i)}.jsonl")
    write_readings(csv_path, readings)
    config.write_text(replay_config(_gw(i), _kpis(i)), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "agent.cli", "kpi", "replay", "--config",
                           str(config), "--input", str(csv_path), "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    windows = []
    for line in out.read_text(encoding="utf-8").splitlines():
        window = json.loads(line)
        for key in ("start", "end"):
            window[key] = int(datetime.fromisoformat(window[key]).timestamp() * 1000)
        windows.append(window)
    return windows, dict(by_point)


async def _publish(port: int, batches: list[Batch]) -> None:
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier="year-gateways") as client:
        for batch in batches:
            await client.publish(f"ssc/v1/{batch.gw}/batch", encode_batch(batch), qos=1)


def _report(sink: Path, city: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "report", "--sink", f"sqlite:///{sink}", "--city",
         str(city), "--from", f"{YEAR}-01-01", "--to", f"{YEAR}-12-31", "--format", "json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def _run_chain(work: Path) -> Chain:
    with ThreadPoolExecutor(2) as pool:  # two replays at a time: the CI worker's share
        replayed = list(pool.map(lambda i: _replay(work, i), range(STATIONS)))
    broker = Mosquitto(work, free_port())
    broker.start()
    sink, log = work / "received.db", work / "receiver.log"
    total = sum(len(windows) for windows, _ in replayed)
    with log.open("ab") as err:
        receiver = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--log-json", "receive", "--broker", broker.url,
             "--sink", f"sqlite:///{sink}", "--client-id", "year-test"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert wait_until(lambda: any(e.get("event") == "mqtt_subscribed"
                                      for e in read_events(log)), 30), log.read_text()
        batches = [
            Batch(_gw(i), 1, seq + 1, windows[min(k + WINDOWS_PER_BATCH, len(windows)) - 1]["end"],
                  (), tuple(windows[k:k + WINDOWS_PER_BATCH]))
            for i, (windows, _) in enumerate(replayed)
            for seq, k in enumerate(range(0, len(windows), WINDOWS_PER_BATCH))]
        asyncio.run(_publish(broker.port, batches))

        def stored() -> int:
            with sqlite3.connect(sink) as conn:
                return int(conn.execute("SELECT count(*) FROM aggregates").fetchone()[0])

        assert wait_until(lambda: sink.exists() and stored() == total, 60), log.read_text()
    finally:
        receiver.terminate()
        receiver.wait(30)
        broker.terminate()
    reports = {}
    for name, stations in (("all", range(STATIONS)), ("valid", VALID_CITY)):
        city = work / f"city-{name}.toml"
        picked = tuple(stations)
        def kpis_of(k: int, picked: tuple[int, ...] = picked) -> tuple[str, ...]:
            return _kpis(picked[k])

        text = city_toml(tuple(_gw(i) for i in picked), kpis_of=kpis_of)
        # without its [report] section: every limit of each indicator, as by default
        city.write_text(text.split("[report]")[0] + EXTRA_TARGETS, encoding="utf-8")
        reports[name] = _report(sink, city)
    return Chain({i: points for i, (_, points) in enumerate(replayed)}, reports)


# ---------------------------------------------------------------- worked out from the readings


def _days() -> list[tuple[date, datetime, datetime]]:
    """The year's local dates with their UTC bounds."""
    days = []
    day = date(YEAR, 1, 1)
    while day.year == YEAR:
        following = day + timedelta(days=1)
        days.append((day, datetime(day.year, day.month, day.day, tzinfo=ZONE).astimezone(UTC),
                     datetime(following.year, following.month, following.day,
                              tzinfo=ZONE).astimezone(UTC)))
        day = following
    return days


DAYS = _days()
HOURS_IN_YEAR = sum(int((end - start).total_seconds()) // 3600 for _, start, end in DAYS)


def _hours(start: datetime, end: datetime) -> Iterator[datetime]:
    while start < end:
        yield start
        start += timedelta(hours=1)


def _day_valid(n: int, hours: int) -> bool:
    return n >= 1 and 4 * n >= 3 * hours  # 75 % of the day's real hours


def _daily_means(hourly: dict[datetime, float]) -> dict[date, float | None]:
    """Each local date's mean of its hours, valid with 75 % of them (the engine's daily
    window and the report's daily means of hourly windows follow the same rule)."""
    result: dict[date, float | None] = {}
    for day, start, end in DAYS:
        values = [hourly[h] for h in _hours(start, end) if h in hourly]
        hours = int((end - start).total_seconds()) // 3600
        result[day] = math.fsum(values) / len(values) if _day_valid(len(values), hours) else None
    return result


_MAX8H: dict[int, dict[date, float | None]] = {}


def _max8h(hourly: dict[datetime, float]) -> dict[date, float | None]:
    if id(hourly) not in _MAX8H:  # the readings live as long as the module's chain
        _MAX8H[id(hourly)] = _max8h_of(hourly)
    return _MAX8H[id(hourly)]


def _max8h_of(hourly: dict[datetime, float]) -> dict[date, float | None]:
    """Each local date's highest 8-hour running mean (each of 6 of its 8 hours), over the
    running means ending with the date's hours, valid with 75 % of them (docs/kpis.md §4)."""
    result: dict[date, float | None] = {}
    for day, start, end in DAYS:
        means = []
        for hour in _hours(start, end):
            values = [hourly[hour - timedelta(hours=k)] for k in range(8)
                      if hour - timedelta(hours=k) in hourly]
            if len(values) >= 6:
                means.append(math.fsum(values) / len(values))
        hours = int((end - start).total_seconds()) // 3600
        result[day] = max(means) if _day_valid(len(means), hours) else None
    return result


@dataclass(frozen=True)
class Series:
    """A station's valid values of one KPI in the year and how many the year holds."""

    values: list[float]
    expected: int
    unit: str

    @property
    def capture_ok(self) -> bool:
        return 10 * len(self.values) >= 9 * self.expected  # 90 % (Annex I A)

    def reason(self) -> str:
        share = f"{100 * len(self.values) / self.expected:.2f}".rstrip("0").rstrip(".")
        return (f"data capture {share} % ({len(self.values)} of {self.expected} {self.unit}) "
                "< required 90 %")


def _series(chain: Chain, i: int, kpi: str) -> Series:
    if (i, kpi) not in chain.series:
        chain.series[i, kpi] = _series_of(chain, i, kpi)
    return chain.series[i, kpi]


def _series_of(chain: Chain, i: int, kpi: str) -> Series:
    points = chain.readings[i]
    if kpi == "pm10_day":
        days = _daily_means(points["pm10"])
        return Series([v for v in days.values() if v is not None], len(DAYS), "days")
    if kpi == "o3_max8h_day":
        days = _max8h(points["o3"])
        return Series([v for v in days.values() if v is not None], len(DAYS), "days")
    return Series(list(points["no2"].values()), HOURS_IN_YEAR, "hours")


def _percentile(values: list[float], q: float) -> float:
    """Council Decision 97/101/EC: the k-th of the ascending values, k = q/100 × N rounded
    half up."""
    ordered = sorted(values)
    k = (round(q * 10) * len(ordered) + 500) // 1000
    return ordered[min(max(k, 1), len(ordered)) - 1]


def _ozone_months_ok(chain: Chain, i: int) -> tuple[bool, list[str]]:
    """Annex VII A.2: five of the six summer months with 90 % of their daily max 8-h means."""
    days = _max8h(chain.readings[i]["o3"])
    short = []
    for month in range(4, 10):
        in_month = [v for d, v in days.items() if d.month == month]
        n = sum(1 for v in in_month if v is not None)
        if 10 * n < 9 * len(in_month):
            short.append(f"{date(YEAR, month, 1):%B} {n} of {len(in_month)}")
    return len(short) <= 1, short


LIMITS = {ind["id"]: ind for ind in tomllib.loads(
    (ROOT / "config" / "indicators" / "air.toml").read_text(encoding="utf-8"))["indicators"]}


def _key(limit: dict[str, Any]) -> str:
    return (f"{limit['source']}/{limit.get('level') or limit['kind']}/{limit['averaging']}/"
            f"{limit['value']:g}")


@dataclass(frozen=True)
class Expected:
    """One check as the rules give it: value None when not valid, with ``partial`` what the
    data present gives; meets None when not judged; ``n`` of ``expected`` it rests on."""

    value: float | None
    meets: bool | None
    partial: float | None
    n: int
    expected: int


def _expected_checks(chain: Chain, i: int, indicator: str) -> dict[tuple[str, str], Expected]:
    entry = LIMITS[indicator]
    kpi = entry["computation"]["kpi"]
    series = _series(chain, i, kpi)
    values, n, expected = series.values, len(series.values), series.expected
    ozone = kpi == "o3_max8h_day"
    count_ok = _ozone_months_ok(chain, i)[0] if ozone else series.capture_ok
    result: dict[tuple[str, str], Expected] = {}
    for limit in entry["limits"]:
        key, bound = _key(limit), limit["value"]
        if entry["computation"]["statistic"] == "mean":
            mean = math.fsum(values) / n
            ok = series.capture_ok
            result[key, "mean"] = Expected(mean if ok else None, not mean > bound if ok else None,
                                           None if ok else mean, n, expected)
            continue
        count = float(sum(1 for v in values if v > bound))
        allowed = limit.get("exceedances_allowed")
        meets = None if allowed is None or not count_ok else count <= allowed
        span = limit.get("years_averaged") or 1
        if span > 1:  # the mean of the valid years among the last three: 2024 alone here
            result[key, "count"] = Expected(count if count_ok else None, meets, None,
                                            int(count_ok), span)
        else:
            result[key, "count"] = Expected(count if count_ok else None, meets,
                                            None if count_ok else count, n, expected)
        q = limit.get("percentile", {}).get("value")
        if q is not None:
            pct = _percentile(values, q)
            ok = series.capture_ok
            result[key, "pct"] = Expected(pct if ok else None, not pct > bound if ok else None,
                                          None if ok else pct, n, expected)
    return result


def _section(doc: dict[str, Any], indicator: str) -> dict[str, Any]:
    return next(s for s in doc["indicators"] if s["id"] == indicator)


def _stations(doc: dict[str, Any], indicator: str) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in _section(doc, indicator)["stations"]}


INDICATORS = ("pm10_annual_mean", "pm10_days_over", "no2_annual_mean", "no2_hours_over",
              "o3_days_over")


def _fed(indicator: str) -> tuple[int, ...]:
    kpi = LIMITS[indicator]["computation"]["kpi"]
    return tuple(i for i in range(STATIONS) if kpi in _kpis(i))


# ---------------------------------------------------------------- the checks


def _check_the_year_is_made_as_the_stations_need(chain: Chain) -> None:
    """The generated year holds the cases the other tests rely on."""
    hours = {d: int((e - s).total_seconds()) // 3600 for d, s, e in DAYS}
    for doc in chain.reports.values():  # the whole year read, no window stored twice
        assert doc["notes"] == [] and doc["years"] == [YEAR]
    assert (len(DAYS), HOURS_IN_YEAR, hours[SPRING], hours[AUTUMN]) == (366, 8784, 23, 25)
    leap = _series(chain, LEAP, "pm10_day"), _series(chain, LEAP, "no2_1h")
    assert [len(s.values) for s in leap] == [329, 7900]  # 90 % of 365 and 8760, not of 366, 8784
    assert 10 * 329 >= 9 * 365 and 10 * 7900 >= 9 * 8760
    assert not _series(chain, BLOCK, "no2_1h").capture_ok
    assert _daily_means(chain.readings[EDGE]["pm10"])[EDGE_DAY] == 50.0
    assert sum(1 for v in chain.readings[EDGE]["no2"].values() if v == 200.0) >= 3
    assert _ozone_months_ok(chain, BLOCK) == (False, ["May 0 of 31", "June 11 of 30",
                                                      "September 1 of 30"])
    assert _ozone_months_ok(chain, OZONE_ONE_SHORT) == (True, ["June 26 of 30"])
    assert _ozone_months_ok(chain, OZONE_TWO_SHORT) == (False, ["June 26 of 30",
                                                                "July 27 of 31"])
    assert _ozone_months_ok(chain, 0) == (True, [])
    # every judged limit is met at some stations and missed at others
    for indicator in INDICATORS:
        checks = [_expected_checks(chain, i, indicator) for i in _fed(indicator)]
        assert any({c[key].meets for c in checks} - {None} == {True, False} for key in checks[0]), (
            indicator)


def _check_each_station_figure_and_check(chain: Chain, indicator: str) -> None:
    stations = _stations(chain.reports["all"], indicator)
    assert sorted(stations) == [_site(i) for i in _fed(indicator)]
    for i in _fed(indicator):
        (year,) = stations[_site(i)]["years"]
        expected = _expected_checks(chain, i, indicator)
        got = {}
        for check in year["checks"]:
            kind = ("mean" if LIMITS[indicator]["computation"]["statistic"] == "mean" else
                    "pct" if "percentile" in check["what"] else "count")
            got[check["limit"], kind] = check
        assert sorted(got) == sorted(expected), (_site(i), indicator)
        for key, want in expected.items():
            check = got[key]
            figure = check["figure"]
            where = (_site(i), indicator, key)
            applies = next(lim for lim in LIMITS[indicator]["limits"] if _key(lim) == key[0]
                           ).get("applies_from", "0000")
            assert check["in_force"] is (int(applies[:4]) <= YEAR), where
            assert (figure["n"], figure["expected"]) == (want.n, want.expected), where
            assert check["meets"] is want.meets, where
            if want.value is None:  # never a silent number
                assert (figure["valid"], figure["value"]) == (False, None), where
                assert figure["reason"], where
                if want.partial is None:
                    assert figure["partial"] is None, where
                else:
                    assert figure["partial"] == pytest.approx(want.partial, rel=1e-9), where
                continue
            assert figure["valid"], (where, figure["reason"])
            assert figure["value"] == pytest.approx(want.value, rel=1e-9, abs=1e-9), where
        if LIMITS[indicator]["computation"]["statistic"] == "mean":
            series = _series(chain, i, LIMITS[indicator]["computation"]["kpi"])
            own = year["figure"]
            assert own["n"] == len(series.values) and own["expected"] == series.expected
            if series.capture_ok:
                assert own["value"] == pytest.approx(math.fsum(series.values)
                                                     / len(series.values), rel=1e-9)
            else:
                assert (own["valid"], own["value"], own["reason"]) == (False, None,
                                                                        series.reason())
                assert own["partial"] == pytest.approx(math.fsum(series.values)
                                                       / len(series.values), rel=1e-9)


def _check_leap_year_shortfalls_say_why(chain: Chain) -> None:
    """Worked out by hand: 329 of 366 days is 89.89 %, 7900 of 8784 hours 89.94 %."""
    pm10 = _stations(chain.reports["all"], "pm10_annual_mean")[_site(LEAP)]["years"][0]
    no2 = _stations(chain.reports["all"], "no2_annual_mean")[_site(LEAP)]["years"][0]
    assert pm10["figure"]["reason"] == "data capture 89.89 % (329 of 366 days) < required 90 %"
    assert no2["figure"]["reason"] == (
        "data capture 89.94 % (7900 of 8784 hours) < required 90 %")
    o3 = _stations(chain.reports["all"], "o3_days_over")[_site(BLOCK)]["years"][0]
    counted = [c for c in o3["checks"] if "percentile" not in c["what"]
               and c["limit"] == "eu_2008_50/long_term_objective/8 h/120"]
    assert counted[0]["figure"]["reason"] == (
        "3 of the 6 summer months hold 90 % of their days, 5 required (May 0 of 31, "
        "June 11 of 30, September 1 of 30 days)")
    o3 = _stations(chain.reports["all"], "o3_days_over")[_site(OZONE_TWO_SHORT)]["years"][0]
    assert {c["figure"]["reason"] for c in o3["checks"]
            if c["limit"] == "eu_2008_50/long_term_objective/8 h/120"} == {
        "4 of the 6 summer months hold 90 % of their days, 5 required (June 26 of 30, "
        "July 27 of 31 days)"}


def _check_daily_series_and_calendars_on_dst_days(chain: Chain) -> None:
    """The daily values shown (the engine's daily PM10 windows, the report's daily means of
    hourly NO2) and the exceedance calendars, every day of every station."""
    doc = chain.reports["all"]
    pm10, no2 = _stations(doc, "pm10_annual_mean"), _stations(doc, "no2_annual_mean")
    pm10_cal, no2_cal = _stations(doc, "pm10_days_over"), _stations(doc, "no2_hours_over")
    for i in range(STATIONS):
        for shown, hourly in ((pm10[_site(i)]["daily"], chain.readings[i]["pm10"]),
                              (no2[_site(i)]["daily"], chain.readings[i]["no2"])):
            got = dict(shown)
            for day, want in _daily_means(hourly).items():
                value = got.get(day.isoformat())
                if want is None:
                    assert value is None, (_site(i), day)
                else:
                    assert value == pytest.approx(want, rel=1e-9), (_site(i), day)
        calendar = dict(pm10_cal[_site(i)]["calendar"])
        for day, value in _daily_means(chain.readings[i]["pm10"]).items():
            assert calendar.get(day.isoformat()) == (None if value is None else int(value > 50))
        means = _daily_means(chain.readings[i]["no2"])
        over: dict[date, int] = defaultdict(int)
        for hour, value in chain.readings[i]["no2"].items():
            if value > 200:
                over[hour.astimezone(ZONE).date()] += 1
        assert dict(no2_cal[_site(i)]["calendar"]) == {
            d.isoformat(): None if v is None else over[d] for d, v in means.items()}
    for i, valid in ((DST_SHORT, False), (DST_EDGE, True)):  # 17/23, 18/25 vs 18/23, 19/25
        for station in (pm10, no2):
            daily = dict(station[_site(i)]["daily"])
            assert [daily.get(d.isoformat()) is not None for d in (SPRING, AUTUMN)] == [valid] * 2


def _share(verdicts: list[bool | None]) -> tuple[float | None, float | None]:
    """(the valid share, the share from the data present) in percent."""
    assessed = [v for v in verdicts if v is not None]
    share = 100.0 * sum(assessed) / len(assessed) if assessed else None
    return (share if len(assessed) == len(verdicts) else None), share


def _check_city_share_meeting_each_limit(chain: Chain, city: str, indicator: str) -> None:
    """Per limit: the stations meeting it (judged on the allowed count, else on the
    percentile) of the stations fed; valid only when every station is assessed."""
    picked = [i for i in _fed(indicator) if city == "all" or i in VALID_CITY]
    shares = {c["limit"]: c["share"] for c in _section(chain.reports[city], indicator)[
        "city_limits"] if c["year"] == YEAR}
    expected = {}
    for limit in LIMITS[indicator]["limits"]:
        key = _key(limit)
        statistic = LIMITS[indicator]["computation"]["statistic"]
        if statistic == "exceedances":
            if limit.get("exceedances_allowed") is not None:
                kind = "count"
            elif limit.get("percentile") is not None:
                kind = "pct"
            else:
                continue  # counted, not judged: no share
        else:
            kind = "mean"
        expected[key] = _share([_expected_checks(chain, i, indicator)[key, kind].meets
                                for i in picked])
    assert sorted(shares) == sorted(expected), (city, indicator)
    for key, (valid_share, partial) in expected.items():
        share = shares[key]
        where = (city, indicator, key)
        if valid_share is None:
            assert (share["valid"], share["value"]) == (False, None), where
            assert share["partial"] == pytest.approx(partial), where
            assert "stations have no valid figure" in share["reason"], where
        else:
            assert share["valid"] and share["value"] == pytest.approx(valid_share), where
        assert share["expected"] == len(picked), where
    if city == "valid":
        assert all(share["valid"] for share in shares.values())


def _check_data_capture_per_station(chain: Chain) -> None:
    captures = {(c["site"], c["kpi"]): c for c in chain.reports["all"]["capture"]}
    assert sorted(captures) == sorted((_site(i), k) for i in range(STATIONS) for k in _kpis(i))
    for (site, kpi), capture in captures.items():
        series = _series(chain, int(site[-3:]) - 1, kpi)
        figure = capture["figure"]
        assert (figure["n"], figure["expected"]) == (len(series.values), series.expected)
        assert figure["value"] == pytest.approx(100.0 * len(series.values) / series.expected)
        assert bool(capture["short"]) is not series.capture_ok, (site, kpi)


def _target_site_figure(chain: Chain, i: int, target: str) -> float | None:
    if target in ("no2_share",):
        series = _series(chain, i, "no2_1h")
    elif target == "o3_days":  # days over 120, ozone's month rule, 3 years' mean of 2024 alone
        if not _ozone_months_ok(chain, i)[0]:
            return None
        return float(sum(1 for v in _series(chain, i, "o3_max8h_day").values if v > 120))
    else:
        series = _series(chain, i, "pm10_day")
    return math.fsum(series.values) / len(series.values) if series.capture_ok else None


def _check_targets_yearly_figure(chain: Chain, city: str) -> None:
    targets = {t["id"]: t for t in chain.reports[city]["targets"]}
    stations = list(range(STATIONS)) if city == "all" else list(VALID_CITY)
    scoped = {"no2_share": stations, "pm10_city": stations, "pm10_five": [0, 1, 2, 3, 4],
              "o3_days": [i for i in stations if i in O3_AT]}
    assert sorted(targets) == sorted(scoped), city
    goals = {"no2_share": 20.0, "pm10_city": 25.0, "pm10_five": 30.0, "o3_days": 18.0}
    for target, sites in scoped.items():
        (year,) = targets[target]["years"]
        figures = [_target_site_figure(chain, i, target) for i in sites]
        verdicts = [None if f is None else f <= goals[target] for f in figures]
        if target == "no2_share":
            want, partial = _share(verdicts)
            meets = None if want is None else want >= 80.0
        elif None in figures:
            want, partial, meets = None, None, None
        elif target == "pm10_city":
            want = math.fsum(f for f in figures if f is not None) / len(figures)
            partial, meets = None, want <= goals[target]
        else:  # every_site, sites: the worst site's
            want, partial = max(f for f in figures if f is not None), None
            meets = all(verdicts)
        if target != "pm10_city":  # judged per site: each site's own figure
            per_site = {site: ys[0] for site, ys in targets[target]["sites"]}
            assert sorted(per_site) == [_site(i) for i in sites]
            for i, want_site, verdict in zip(sites, figures, verdicts, strict=True):
                shown = per_site[_site(i)]
                if want_site is None:
                    assert (shown["figure"]["valid"], shown["meets"]) == (False, None)
                else:
                    assert shown["figure"]["value"] == pytest.approx(want_site, rel=1e-9)
                    assert shown["meets"] is verdict
        figure = year["figure"]
        if want is None:
            assert (figure["valid"], figure["value"], year["meets"]) == (False, None, None)
            assert figure["reason"], (city, target)
            if partial is not None:
                assert figure["partial"] == pytest.approx(partial)
        else:
            assert figure["valid"], (city, target)
            assert figure["value"] == pytest.approx(want, rel=1e-9), (city, target)
            assert year["meets"] is meets, (city, target)
    if city == "valid":
        assert all(t["years"][0]["figure"]["valid"] for t in targets.values())
    for target in targets.values():  # one year: a trend needs two
        assert not target["slope"]["valid"] and not target["projection"]["valid"]
        assert target["slope"]["reason"].startswith(
            "a trend needs valid figures of 2 years at least, "), target["id"]


def test_a_leap_year_through_the_chain(tmp_path: Path) -> None:
    """One test, so that the chain (about 25 s) runs once, on one worker, however the tests
    are spread over workers; each check's message names the station, indicator and limit."""
    _require_mosquitto()
    chain = _run_chain(tmp_path)
    _check_the_year_is_made_as_the_stations_need(chain)
    _check_leap_year_shortfalls_say_why(chain)
    _check_daily_series_and_calendars_on_dst_days(chain)
    _check_data_capture_per_station(chain)
    for indicator in INDICATORS:
        _check_each_station_figure_and_check(chain, indicator)
    for city in ("all", "valid"):
        for indicator in INDICATORS:
            _check_city_share_meeting_each_limit(chain, city, indicator)
        _check_targets_yearly_figure(chain, city)
