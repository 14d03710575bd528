"""``ssc-agent report`` end to end: generated KPI windows of three stations stored through the
sink's ingest path (three years of daily PM and O3 windows, one year of hourly NO2), the
command run for HTML, JSON and CSV, its figures checked against values computed here straight
from the database, and the HTML loaded in headless Chromium to check the figures it shows.
The same data in PostgreSQL, read by a role that may only SELECT, gives the same figures."""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.tools.city_data import city_toml, generate
from agent.wire import Batch, encode_batch
from tests.chaos.harness import read_events
from tests.conftest import Mosquitto, require_chromium
from tests.waiting import wait_until

pytestmark = [pytest.mark.timeout(180)]

ZONE = ZoneInfo("Europe/Berlin")
FIRST, LAST = date(2022, 1, 1), date(2024, 12, 31)
DAILY = ("pm10_day", "pm25_day", "o3_max8h_day")
STATIONS = 3
HOSTILE_NAME = 'Lake<script>alert("x")</script>side & <b>co</b>'


def _fill(url: str) -> tuple[str, ...]:
    gateways = generate(url, STATIONS, FIRST, LAST, kpis=DAILY).gateways
    generate(url, STATIONS, date(2024, 1, 1), LAST, kpis=("no2_1h",))
    return gateways


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The SQLite sink and the city config."""
    folder = tmp_path_factory.mktemp("report")
    gateways = _fill(f"sqlite:///{folder}/city.db")
    (folder / "city.toml").write_text(city_toml(gateways, name=HOSTILE_NAME), encoding="utf-8")
    return folder / "city.db", folder / "city.toml"


def report(sink: str, city_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "report", "--sink", sink, "--city", str(city_file),
         "--from", FIRST.isoformat(), "--to", LAST.isoformat(), *extra],
        capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def outputs(city: tuple[Path, Path]) -> dict[str, str]:
    db, city_file = city
    result: dict[str, str] = {}
    for fmt in ("html", "json", "csv"):
        out = db.parent / f"report.{fmt}"
        done = report(f"sqlite:///{db}", city_file, "--format", fmt, "--out", str(out))
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
        result[fmt] = out.read_text(encoding="utf-8")
    return result


# ---------------------------------------------------------------- figures straight from SQL


def _year_ms(year: int) -> tuple[int, int]:
    return (int(datetime(year, 1, 1, tzinfo=ZONE).timestamp() * 1000),
            int(datetime(year + 1, 1, 1, tzinfo=ZONE).timestamp() * 1000))


def _values(db: Path, gw: str, kpi: str, year: int) -> list[float]:
    start, end = _year_ms(year)
    with sqlite3.connect(db) as conn:
        rows = conn.execute('SELECT value FROM aggregates WHERE gw = ? AND kpi = ? AND valid = 1 '
                            'AND "start" >= ? AND "start" < ?', (gw, kpi, start, end))
        return [float(v) for (v,) in rows]


def _station(doc: dict[str, Any], indicator: str, station: str) -> dict[str, Any]:
    section = next(s for s in doc["indicators"] if s["id"] == indicator)
    return next(s for s in section["stations"] if s["id"] == station)


def _year(doc: dict[str, Any], indicator: str, station: str, year: int) -> dict[str, Any]:
    return next(y for y in _station(doc, indicator, station)["years"] if y["year"] == year)


def _check(doc: dict[str, Any], indicator: str, station: str, year: int, limit: str,
           what: str) -> dict[str, Any]:
    return next(c for c in _year(doc, indicator, station, year)["checks"]
                if c["limit"] == limit and c["what"].startswith(what))


def expected(db: Path) -> dict[str, str]:
    """data-fig key → the text the HTML must show, each worked out here from the database."""
    shown: dict[str, str] = {}
    means: dict[tuple[str, int], float] = {}
    for i in range(1, STATIONS + 1):
        gw, site = f"gw-aq-{i:03d}", f"station_{i:03d}"
        for year in (2022, 2023, 2024):
            pm25 = _values(db, gw, "pm25_day", year)
            days = 366 if year == 2024 else 365
            if len(pm25) >= 0.9 * days:
                means[site, year] = math.fsum(pm25) / len(pm25)
                shown[f"pm25_annual_mean/{site}/{year}"] = f"{means[site, year]:.1f} µg/m³"
            else:
                shown[f"pm25_annual_mean/{site}/{year}"] = "not valid: data capture"
            pm10 = _values(db, gw, "pm10_day", year)
            over = sum(1 for v in pm10 if v > 50)
            key = f"pm10_days_over/{site}/{year}/eu_2008_50/limit_value/1 d/50"
            if len(pm10) >= 0.9 * days:
                shown[f"{key}/days over 50 µg/m³"] = f"{over} d"
                ranked = sorted(pm10)
                k = math.floor(0.904 * len(ranked) + 0.5)  # 97/101/EC: nearest rank, half up
                shown[f"{key}/90.4th percentile of daily values"] = f"{ranked[k - 1]:.1f} µg/m³"
        no2 = _values(db, gw, "no2_1h", 2024)
        shown[f"no2_annual_mean/{site}/2024"] = (
            f"{math.fsum(no2) / len(no2):.1f} µg/m³" if len(no2) >= 0.9 * 8784
            else "not valid: data capture")
        shown[f"no2_annual_mean/{site}/2022"] = "not valid: data capture 0 %"
        with sqlite3.connect(db) as conn:
            (valid,) = conn.execute("SELECT count(*) FROM aggregates WHERE gw = ? AND kpi = ? "
                                    "AND valid = 1", (gw, "no2_1h")).fetchone()
        # 2022, 2023 and the leap year 2024: 8760 + 8760 + 8784 hours
        shown[f"capture/{site}/no2_1h"] = f"{100 * valid / 26304:.1f} %"
    for year in (2022, 2023):
        meeting = sum(1 for i in range(1, STATIONS + 1) if means[f"station_{i:03d}", year] <= 25)
        shown[f"pm25_annual_mean/city/{year}/eu_2008_50/limit_value/1 y/25"] = (
            f"{100 * meeting / STATIONS:.1f} %")
    worst = {year: max(means[f"station_{i:03d}", year] for i in range(1, STATIONS + 1))
             for year in (2022, 2023)}
    slope = worst[2023] - worst[2022]  # a line through two points
    shown["target/pm25_every_station/2022"] = f"{worst[2022]:.1f} µg/m³"
    for (site, year), mean in means.items():  # each site's, folded under the target
        verdict = "met" if mean <= 10 else "not met"
        shown[f"target/pm25_every_station/{site}/{year}"] = f"{mean:.1f} µg/m³ {verdict}"
    shown["target/pm25_every_station/slope"] = f"{slope:+.2f} µg/m³ a year"
    shown["target/pm25_every_station/projection"] = f"{worst[2023] + 7 * slope:.1f} µg/m³"
    return shown


# ---------------------------------------------------------------- the tests


def test_json_figures_match_the_database(city: tuple[Path, Path],
                                         outputs: dict[str, str]) -> None:
    db, _ = city
    doc = json.loads(outputs["json"])
    assert doc["city"] == HOSTILE_NAME
    assert doc["years"] == [2022, 2023, 2024]
    assert doc["notes"] == []  # whole years
    for i in range(1, STATIONS + 1):
        gw, site = f"gw-aq-{i:03d}", f"station_{i:03d}"
        values = _values(db, gw, "pm25_day", 2023)
        figure = _year(doc, "pm25_annual_mean", site, 2023)["figure"]
        assert figure["valid"] and figure["value"] == pytest.approx(math.fsum(values) /
                                                                    len(values))
        assert (figure["n"], figure["expected"]) == (len(values), 365)
        pm10 = _values(db, gw, "pm10_day", 2024)
        count = _check(doc, "pm10_days_over", site, 2024, "eu_2008_50/limit_value/1 d/50",
                       "days over")
        if i < STATIONS:
            assert count["figure"]["value"] == sum(1 for v in pm10 if v > 50)
            assert count["meets"] is (count["figure"]["value"] <= 35)
            assert count["figure"]["expected"] == 366  # 2024 is a leap year
    # the last station lost the summer of 2024: every 2024 figure there says why it is missing
    lossy = _year(doc, "pm25_annual_mean", f"station_{STATIONS:03d}", 2024)["figure"]
    assert not lossy["valid"] and lossy["value"] is None
    assert lossy["reason"].startswith("data capture ") and "< required 90 %" in lossy["reason"]
    assert lossy["partial"] == pytest.approx(math.fsum(
        v := _values(db, f"gw-aq-{STATIONS:03d}", "pm25_day", 2024)) / len(v))
    # NO2 has only 2024: the years before are not valid, and the report says so
    no2_2022 = _year(doc, "no2_annual_mean", "station_001", 2022)["figure"]
    assert not no2_2022["valid"] and no2_2022["reason"].startswith("data capture 0 % (0 of 8760")
    target = next(t for t in doc["targets"] if t["id"] == "pm25_every_station")
    assert [y["figure"]["valid"] for y in target["years"]] == [True, True, False]
    assert "station_003" in target["years"][2]["figure"]["reason"]
    assert target["slope"]["valid"] and target["projection"]["valid"]
    ozone = next(t for t in doc["targets"] if t["id"] == "o3_days")
    assert ozone["years"][0]["figure"]["expected"] == 3  # the three-year mean's years


def test_csv_carries_every_json_figure(outputs: dict[str, str]) -> None:
    rows = {r["key"]: r for r in csv.DictReader(io.StringIO(outputs["csv"]))}
    doc = json.loads(outputs["json"])
    for section in doc["indicators"]:
        for station in section["stations"]:
            for year in station["years"]:
                for check in year["checks"]:
                    key = f"{section['id']}/{station['id']}/{year['year']}/{check['limit']}/" \
                          f"{check['what']}"
                    row = rows[key]
                    assert row["valid"] == str(int(check["figure"]["valid"]))
                    assert row["reason"] == check["figure"]["reason"]
                    if check["figure"]["value"] is not None:
                        assert float(row["value"]) == check["figure"]["value"]
    for target in doc["targets"]:
        for site, years in target["sites"]:
            for year in years:
                row = rows[f"target/{target['id']}/{site}/{year['year']}"]
                assert row["valid"] == str(int(year["figure"]["valid"]))
                if year["figure"]["value"] is not None:
                    assert float(row["value"]) == year["figure"]["value"]
    for item in doc["capture"]:
        assert rows[f"capture/{item['site']}/{item['kpi']}"]["valid"] == str(
            int(item["figure"]["valid"]))


class _Figures(HTMLParser):
    """The text of every element carrying ``data-fig``, and what a page must not load."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, str] = {}
        self.external: list[str] = []
        self.scripts = 0
        self._open: list[tuple[str, str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            self.scripts += 1
        for name in ("src", "href"):
            value = attributes.get(name) or ""
            if value and not value.startswith("#"):
                self.external.append(value)
        if tag == "link":
            self.external.append(str(attributes))
        key = attributes.get("data-fig")
        for _, _, parts in self._open:
            parts.append("")
        if key is not None:
            self._open.append((tag, key, []))

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == tag:
            _, key, parts = self._open.pop()
            self.figures[key] = " ".join("".join(parts).split())

    def handle_data(self, data: str) -> None:
        for _, _, parts in self._open:
            parts.append(data)


def _shown(page: str) -> _Figures:
    parser = _Figures()
    parser.feed(page)
    return parser


def _assert_shows(figures: dict[str, str], wanted: dict[str, str]) -> None:
    for key, text in wanted.items():
        assert key in figures, f"no figure {key}"
        if text.startswith("not valid"):
            assert figures[key].startswith(text), (key, figures[key])
        elif "/days over" in key or "/90.4th" in key:
            assert f"= {text}" in figures[key], (key, figures[key])
        else:
            assert figures[key] == text, (key, figures[key], text)


def test_html_shows_the_database_figures(city: tuple[Path, Path],
                                         outputs: dict[str, str]) -> None:
    db, _ = city
    page = _shown(outputs["html"])
    _assert_shows(page.figures, expected(db))
    assert page.scripts == 0 and page.external == []
    assert "&lt;script&gt;" in outputs["html"] and "<script" not in outputs["html"]
    assert outputs["html"].count("<svg") >= 3 + 1 + STATIONS * 3  # progress, capture, calendars


def test_chromium_renders_the_figures(city: tuple[Path, Path], outputs: dict[str, str]) -> None:
    chromium = require_chromium()
    db, _ = city
    page = db.parent / "report.html"
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
         page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = _shown(done.stdout)
    _assert_shows(dom.figures, expected(db))
    assert dom.scripts == 0  # the city's name came through as text, not as a script
    assert "Lake&lt;script&gt;" in done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "2024-13-01"], "--from '2024-13-01': write a date as YYYY-MM-DD"),
    (["--from", "2024-02-01", "--to", "2024-01-01"], "--to 2024-01-01 is before --from"),
    (["--sink", "sqlite:////nonexistent/x.db"], "no such database"),
])
def test_bad_options_exit_2_with_one_line(city: tuple[Path, Path], args: list[str],
                                          message: str) -> None:
    db, city_file = city
    base = {"--sink": f"sqlite:///{db}", "--city": str(city_file), "--from": "2024-01-01",
            "--to": "2024-12-31"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    done = subprocess.run([sys.executable, "-m", "agent.cli", "report",
                           *[x for kv in base.items() for x in kv]],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


@pytest.fixture
def pg_city(pg_url: str, city: tuple[Path, Path]) -> tuple[str, Path]:
    _fill(pg_url)
    return pg_url, city[1]


@pytest.mark.timeout(300)
@pytest.mark.xdist_group("postgresql")
def test_postgresql_sink_gives_the_same_figures(
        request: pytest.FixtureRequest, pg_city: tuple[str, Path], tmp_path: Path,
        outputs: dict[str, str]) -> None:
    url, city_file = pg_city
    db = url.rsplit("/", 1)[1]
    with request.getfixturevalue("pg_server").admin(db) as admin:
        admin.execute(f"CREATE ROLE reporter_{db} LOGIN PASSWORD 'reads only'")
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO reporter_{db}")
    (tmp_path / "pw").write_text("reads only\n")
    done = report(url.replace("postgres@", f"reporter_{db}@"), city_file, "--format", "json",
                  "--sink-password-file", str(tmp_path / "pw"))
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    from_pg, from_sqlite = json.loads(done.stdout), json.loads(outputs["json"])
    from_pg.pop("generated")
    from_sqlite.pop("generated")
    assert from_pg == from_sqlite


# ---------------------------------------------------------------- kpi replay → receiver → report

REPLAY_CONFIG = Path(__file__).resolve().parents[2] / "config" / "kpis" / "air-quality-eu2008.toml"


def _minutes(first: date, days: int) -> Iterator[tuple[datetime, float]]:
    """A PM10 sensor's minute readings over ``days`` local days from ``first``; hour 5 of
    2024-04-02 has only 40 minutes (an hour short of 45 is not valid)."""
    start = datetime(first.year, first.month, first.day, tzinfo=ZONE).astimezone(UTC)
    end = datetime.combine(first + timedelta(days=days), datetime.min.time(), tzinfo=ZONE)
    moment, index = start, 0
    while moment < end:
        local = moment.astimezone(ZONE)
        if not (local.date() == date(2024, 4, 2) and local.hour == 5 and local.minute >= 40):
            yield moment, round(18 + 0.25 * (index % 101) + 3 * local.hour / 23, 3)
        moment += timedelta(minutes=1)
        index += 1


def test_windows_from_kpi_replay_through_the_receiver(mosquitto: Mosquitto,
                                                      tmp_path: Path) -> None:
    """Minute readings → ``kpi replay`` (the gateway's engine) → wire batches → mosquitto →
    ``ssc-agent receive`` → ``ssc-agent report``: each day's value is the mean of its hourly
    means worked out here from the readings, the DST day (2024-03-31) on its 23 hours."""
    first, days = date(2024, 3, 29), 6
    readings = list(_minutes(first, days))
    (tmp_path / "readings.csv").write_text(
        "time,device,point,value\n"
        + "".join(f"{t.isoformat()},aq-1,pm10,{v}\n" for t, v in readings), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "agent.cli", "kpi", "replay", "--config",
                           str(REPLAY_CONFIG), "--input", str(tmp_path / "readings.csv"),
                           "--output", str(tmp_path / "windows.jsonl")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    windows = []
    for line in (tmp_path / "windows.jsonl").read_text().splitlines():
        window = json.loads(line)
        if window["kpi"] == "pm10_day":
            for key in ("start", "end"):
                window[key] = int(datetime.fromisoformat(window[key]).timestamp() * 1000)
            windows.append(window)
    assert len(windows) == days
    sink = tmp_path / "received.db"
    log = tmp_path / "receiver.log"
    with log.open("ab") as err:
        receiver = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--log-json", "receive", "--broker",
             mosquitto.url, "--sink", f"sqlite:///{sink}", "--client-id", "report-test"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert wait_until(lambda: any(e.get("event") == "mqtt_subscribed"
                                      for e in read_events(log)), 30), log.read_text()
        for seq, window in enumerate(windows, start=1):
            payload = tmp_path / f"batch-{seq}.bin"
            payload.write_bytes(encode_batch(Batch("gw-aq-001", 1, seq, window["end"], (),
                                                   (window,))))
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mosquitto.port),
                            "-t", "ssc/v1/gw-aq-001/batch", "-q", "1", "-f", str(payload)],
                           check=True, timeout=30)

        def stored() -> int:
            with sqlite3.connect(sink) as conn:
                return int(conn.execute("SELECT count(*) FROM aggregates").fetchone()[0])

        assert wait_until(lambda: sink.exists() and stored() == days, 30)
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(30)
    city_file = tmp_path / "city.toml"
    city_file.write_text(city_toml(("gw-aq-001",), kpis=("pm10_day",)), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "report", "--sink", f"sqlite:///{sink}", "--city",
         str(city_file), "--from", first.isoformat(),
         "--to", (first + timedelta(days=days - 1)).isoformat(), "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    station = _station(json.loads(done.stdout), "pm10_annual_mean", "station_001")
    # worked out from the readings: hourly means (45 of 60 minutes), then the day's mean
    hours: dict[tuple[date, datetime], list[float]] = {}
    for moment, value in readings:
        local = moment.astimezone(ZONE)
        hours.setdefault((local.date(), moment.replace(minute=0)), []).append(value)
    by_day: dict[date, list[float]] = {}
    for (day, _), values in hours.items():
        if len(values) >= 45:
            by_day.setdefault(day, []).append(sum(values) / len(values))
    assert len(by_day[date(2024, 3, 31)]) == 23  # the clocks went forward
    assert len(by_day[date(2024, 4, 2)]) == 23  # its hour 5 had 40 minutes
    daily = dict(station["daily"])
    assert sorted(daily) == [(first + timedelta(days=i)).isoformat() for i in range(days)]
    for day, means in by_day.items():
        assert daily[day.isoformat()] == pytest.approx(sum(means) / len(means), rel=1e-9)
    assert json.loads(done.stdout)["notes"] == [
        "The period covers only part of 2024: that year's figures rest on the days read, and "
        "a yearly figure needs 90 % of its year, so they are not valid."]
    year = station["years"][0]["figure"]
    assert not year["valid"] and year["reason"] == (
        f"data capture 1.64 % ({days} of 366 days) < required 90 %")
    assert year["partial"] == pytest.approx(sum(daily.values()) / days)
