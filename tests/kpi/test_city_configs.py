"""The example city-KPI configs of ``config/kpis/``: each loads; replay gives hand-computed values.

Every file in the folder is loaded and replayed over a synthetic three days (a new file is
tested automatically). The scenarios below feed series whose aggregates follow by hand from
the definitions in docs/kpis.md and the standards the files cite.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.config import AgentConfig, load_config
from tests.kpi.support import Row, by_kpi, run_replay

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config" / "kpis"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.toml"))
AIR_QUALITY = ["air-quality-eu2008.toml", "air-quality-eu2024.toml", "air-quality-who2021.toml"]
BERLIN = ZoneInfo("Europe/Berlin")
MINUTE = timedelta(minutes=1)
MIDNIGHT = "T00:00:00+01:00"  # a winter midnight in Berlin
DAY_SECONDS = 86_400
COUNTER_OPERATORS = frozenset({"counter_delta", "demand"})

# docs/kpis.md §5 ppb → µg/m³ (ppm → mg/m³ for CO) at 20 °C, 101.325 kPa.
NO2_SCALE, O3_SCALE, CO_SCALE = 1.912513, 1.995352, 1.164419

Value = Callable[[datetime], str]
Record = dict[str, Any]


def load(path: Path) -> AgentConfig:
    """A file the way ``kpi replay`` loads it."""
    return load_config(path, require_uplink=False, check_sources=False)


def config_file(name: str) -> Path:
    return CONFIG_DIR / name


def instants(first: str, count: int, step: timedelta = MINUTE) -> list[datetime]:
    """``count`` instants ``step`` apart in real time from ``first``, as Berlin local times."""
    base = datetime.fromisoformat(first).astimezone(UTC)
    return [(base + step * i).astimezone(BERLIN) for i in range(count)]


def series(device: str, point: str, times: Iterable[datetime], value: Value) -> list[Row]:
    return [(t.isoformat(), device, point, value(t)) for t in times]


def merged(*parts: Sequence[Row]) -> list[Row]:
    """Rows of several series in time order, as the replay input needs them."""
    rows = [row for part in parts for row in part]
    return sorted(rows, key=lambda row: datetime.fromisoformat(row[0]))


def replay_file(path: Path, rows: Iterable[Row]) -> list[Record]:
    return run_replay(load(path), rows)


def output(records: Iterable[Record], kpi: str, start: str) -> Record:
    """The one output of ``kpi`` whose window starts at ``start``."""
    found = [record for record in by_kpi(records, kpi) if record["start"] == start]
    assert len(found) == 1, f"{kpi} at {start}: {len(found)} outputs"
    return found[0]


def only(records: Iterable[Record], kpi: str) -> Record:
    found = by_kpi(records, kpi)
    assert len(found) == 1, f"{kpi}: {len(found)} outputs"
    return found[0]


def with_sample_interval(path: Path, tmp_path: Path, interval: str) -> AgentConfig:
    """``path`` with every ``sample_interval`` set to ``interval`` (a year of minutes is slow)."""
    text = re.sub(
        r'(?m)^sample_interval = "[^"]*"',
        f'sample_interval = "{interval}"',
        path.read_text(encoding="utf-8"),
    )
    copy = tmp_path / path.name
    copy.write_text(text, encoding="utf-8")
    return load(copy)


# --------------------------------------------------------------------------------------------
# Every file


def test_the_folder_holds_the_documented_files() -> None:
    names = {path.name for path in CONFIG_FILES}
    expected = {*AIR_QUALITY, "noise.toml", "energy.toml", "water.toml", "climate.toml"}
    assert expected <= names
    readme = (CONFIG_DIR / "README.md").read_text(encoding="utf-8")
    assert [name for name in sorted(names) if name not in readme] == []


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda path: path.name)
def test_file_loads_as_a_replay_config(path: Path) -> None:
    config = load(path)
    assert config.gateway.timezone == "Europe/Berlin"
    assert config.kpis, "a KPI config without [[kpis]]"


def _generic_rows(config: AgentConfig, first: str, days: int) -> list[Row]:
    """Plausible readings for every device source of ``config``, at its sample interval."""
    intervals: dict[tuple[str, str], int] = {}
    counters: dict[tuple[str, str], float] = {}
    for kpi in config.kpis:
        source, interval = kpi.source_device, kpi.sample_interval_duration
        if source is None or interval is None:
            continue
        intervals[source] = min(intervals.get(source, interval.seconds), interval.seconds)
        if kpi.operator in COUNTER_OPERATORS:
            # well inside max_delta, so no reading is taken for a reset
            step = 0.2 * kpi.max_delta if kpi.max_delta is not None else 1.0
            counters[source] = min(counters.get(source, step), step)
    parts = []
    for number, ((device, point), seconds) in enumerate(sorted(intervals.items())):
        times = instants(first, days * DAY_SECONDS // seconds, timedelta(seconds=seconds))
        if (device, point) in counters:
            step = counters[(device, point)]
            parts.append(
                [
                    (t.isoformat(), device, point, repr(round(100.0 + step * i, 6)))
                    for i, t in enumerate(times)
                ]
            )
        else:
            start = times[0]

            def level(t: datetime, number: int = number, start: datetime = start) -> str:
                hours = (t - start).total_seconds() / 3600
                return repr(round(20.0 + number + 10.0 * math.sin(2 * math.pi * hours / 24), 3))

            parts.append(series(device, point, times, level))
    return merged(*parts)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda path: path.name)
def test_every_kpi_of_the_file_emits_over_three_days(path: Path) -> None:
    config = load(path)
    # 2025-03-29 … 03-31: the spring DST day (23 h) in the middle
    records = replay_file(path, _generic_rows(config, "2025-03-29T00:00:00+01:00", 3))
    names = [kpi.name for kpi in config.kpis]
    assert {record["kpi"] for record in records} == set(names)
    for kpi in config.kpis:
        mine = by_kpi(records, kpi.name)
        assert all(
            record["src"] == kpi.source
            and record["unit"] == (kpi.unit or ("AQI" if kpi.operator == "aqi_us_pm25" else None))
            for record in mine
        )
        if kpi.step_duration.nominal_seconds <= DAY_SECONDS:
            # complete data: a day-or-shorter KPI must give valid numbers
            assert any(record["valid"] for record in mine), f"{kpi.name}: no valid output"


# --------------------------------------------------------------------------------------------
# Air quality


def _alternating(low: float, high: float) -> Value:
    """Even minutes ``low``, odd minutes ``high``: every hour's mean is (low + high) / 2."""
    return lambda t: repr(low if t.minute % 2 == 0 else high)


def _pm10_week() -> list[Row]:
    """2025-01-13 … 01-18: daily means 40, 55, 50, 47, 60.1, then a day of 17 valid hours."""
    days: list[tuple[str, Value]] = [
        ("2025-01-13", lambda t: "40.0"),
        ("2025-01-14", _alternating(50.0, 60.0)),
        ("2025-01-15", _alternating(45.0, 55.0)),  # exactly 50: not over 50
        ("2025-01-16", _alternating(44.0, 50.0)),
        ("2025-01-17", lambda t: "60.1"),
        ("2025-01-18", lambda t: "80.0" if t.hour < 17 else ""),  # 17 of 24 h: not valid
    ]
    rows: list[Row] = []
    for date, value in days:
        rows += series("aq-1", "pm10", instants(f"{date}T00:00:00+01:00", 1440), value)
    return rows


@pytest.mark.parametrize(
    ("name", "count_kpi", "over"),
    [
        ("air-quality-eu2008.toml", "pm10_days_over_50", 2),  # 55, 60.1
        ("air-quality-eu2024.toml", "pm10_days_over_45", 4),  # 55, 50, 47, 60.1
        ("air-quality-who2021.toml", "pm10_days_over_45", 4),
    ],
)
def test_pm10_days_over_the_limit(name: str, count_kpi: str, over: int) -> None:
    records = replay_file(config_file(name), _pm10_week())
    days = by_kpi(records, "pm10_day")
    assert [record["start"][:10] for record in days] == [
        "2025-01-13",
        "2025-01-14",
        "2025-01-15",
        "2025-01-16",
        "2025-01-17",
        "2025-01-18",
    ]
    assert [record["value"] for record in days[:5]] == pytest.approx([40.0, 55.0, 50.0, 47.0, 60.1])
    assert (days[5]["valid"], days[5]["value"], days[5]["n"], days[5]["expected"]) == (
        False,
        None,
        17,
        24,
    )
    year = only(records, count_kpi)
    assert (year["start"], year["end"]) == (f"2025-01-01{MIDNIGHT}", f"2026-01-01{MIDNIGHT}")
    # 5 valid days of 365 is far below min_coverage 0.9: the count is reported all the same
    assert (year["exceedances"], year["n"], year["expected"], year["valid"], year["value"]) == (
        over,
        5,
        365,
        False,
        None,
    )
    annual = only(records, "pm10_year")
    assert (annual["n"], annual["expected"], annual["value"]) == (5 * 24 + 17, 8760, None)


def test_who_pm10_year_chain_at_hourly_resolution(tmp_path: Path) -> None:
    """A whole year (hourly readings): annual mean, days over 45 and the 99th percentile."""
    config = with_sample_interval(config_file("air-quality-who2021.toml"), tmp_path, "1 h")
    times = instants("2025-01-01T00:00:00+01:00", 8760, timedelta(hours=1))
    start = datetime(2025, 1, 1, tzinfo=BERLIN).date()

    def daily_level(t: datetime) -> str:
        # day d of the year is 10 + k/10 with k = 37·d mod 365, a permutation of 0…364
        k = (t.date() - start).days * 37 % 365
        return repr(10.0 + k / 10)

    records = run_replay(config, series("aq-1", "pm10", times, daily_level))
    assert len(by_kpi(records, "pm10_day")) == 365
    count = only(records, "pm10_days_over_45")
    # values 45.1 … 46.4 are over 45: 14 days
    assert (count["value"], count["n"], count["expected"], count["valid"]) == (14, 365, 365, True)
    p99 = only(records, "pm10_day_p99")
    # nearest rank r = ceil(0.99·365) = 362: the 362nd smallest of 10.0, 10.1, … is 46.1
    assert (p99["rank"], p99["valid"]) == (362, True)
    assert p99["value"] == pytest.approx(46.1)
    annual = only(records, "pm10_year")
    # the mean of 8760 hourly means: days weigh by their hours, and 2025-03-30 (23 h, k = 336,
    # 43.6) and 2025-10-26 (25 h, k = 76, 17.6) shift the plain mean of days, 28.2
    assert (annual["n"], annual["expected"], annual["valid"]) == (8760, 8760, True)
    assert annual["value"] == pytest.approx(28.2 - (43.6 - 17.6) / 8760, rel=1e-12)


def _no2_day() -> list[Row]:
    """2025-01-15 in ppb: 20, but hours 08-10 110, 11 104, 12 105, 17 110 on 40 minutes only."""
    special = {8: "110", 9: "110", 10: "110", 11: "104", 12: "105"}

    def ppb(t: datetime) -> str:
        if t.hour == 17:
            return "110" if t.minute < 40 else ""
        return special.get(t.hour, "20")

    return series("aq-1", "no2", instants("2025-01-15T00:00:00+01:00", 1440), ppb)


@pytest.mark.parametrize("name", AIR_QUALITY)
def test_no2_hours_over_200_after_the_ppb_scale(name: str) -> None:
    records = replay_file(config_file(name), _no2_day())
    eight = output(records, "no2_1h", "2025-01-15T08:00:00+01:00")
    assert (eight["value"], eight["unit"]) == (pytest.approx(110 * NO2_SCALE), "µg/m³")
    assert output(records, "no2_1h", "2025-01-15T11:00:00+01:00")["value"] == pytest.approx(
        198.901352  # 104 ppb: below 200
    )
    seventeen = output(records, "no2_1h", "2025-01-15T17:00:00+01:00")
    assert (seventeen["n"], seventeen["valid"]) == (40, False)  # 40 of 60 minutes < 45
    # 110 ppb = 210.38 at 08, 09, 10 and 105 ppb = 200.81 at 12; 17:00 is not valid
    hours = only(records, "no2_hours_over_200")
    assert (hours["exceedances"], hours["n"], hours["expected"]) == (4, 23, 8760)
    day = only(records, "no2_day")
    # 23 valid hourly means: 18 × 20 + 3 × 110 + 104 + 105 = 899 ppb
    assert (day["n"], day["valid"]) == (23, True)
    assert day["value"] == pytest.approx(899 / 23 * NO2_SCALE)


def _o3_days() -> list[Row]:
    """2025-06-09 … 06-11, 30 ppb O3; on 06-10 65 ppb 12-20 h, on 06-11 55 ppb 10-18 h. CO 2 ppm."""

    def ppb(t: datetime) -> str:
        if t.day == 10 and 12 <= t.hour < 20:
            return "65"
        if t.day == 11 and 10 <= t.hour < 18:
            return "55"
        return "30"

    times = instants("2025-06-09T00:00:00+02:00", 3 * 1440)
    return merged(series("aq-1", "o3", times, ppb), series("aq-1", "co", times, lambda t: "2.0"))


@pytest.mark.parametrize(
    ("name", "count_kpi", "over"),
    [
        ("air-quality-eu2008.toml", "o3_days_over_120", 1),  # 129.70 on 06-10
        ("air-quality-eu2024.toml", "o3_days_over_120", 1),
        ("air-quality-who2021.toml", "o3_days_over_100", 2),  # and 109.74 on 06-11
    ],
)
def test_o3_max_daily_8h_mean_and_days_over(name: str, count_kpi: str, over: int) -> None:
    records = replay_file(config_file(name), _o3_days())
    peak = output(records, "o3_max8h_day", "2025-06-10T00:00:00+02:00")
    assert peak["value"] == pytest.approx(65 * O3_SCALE)
    assert (peak["max_start"], peak["max_end"]) == (
        "2025-06-10T12:00:00+02:00",
        "2025-06-10T20:00:00+02:00",
    )
    assert output(records, "o3_max8h_day", "2025-06-11T00:00:00+02:00")["value"] == (
        pytest.approx(55 * O3_SCALE)
    )
    first = output(records, "o3_max8h_day", "2025-06-09T00:00:00+02:00")
    # the running means ending 01:00 … 05:00 lack the hours before the data: 19 of 24 valid
    assert (first["n"], first["expected"], first["valid"]) == (19, 24, True)
    count = only(records, count_kpi)
    assert (count["exceedances"], count["n"]) == (over, 3)
    co = output(records, "co_max8h_day", "2025-06-10T00:00:00+02:00")
    assert (co["value"], co["unit"]) == (pytest.approx(2.0 * CO_SCALE), "mg/m³")


def test_us_aqi_of_a_constant_pm25_day() -> None:
    """12.0 µg/m³ all day: I = (100 − 51)/(35.4 − 9.1)·(12.0 − 9.1) + 51 = 56.40 → AQI 56."""
    times = instants("2025-01-15T00:00:00+01:00", 1440)
    records = replay_file(
        config_file("air-quality-eu2008.toml"), series("aq-1", "pm2_5", times, lambda t: "12.0")
    )
    daily = only(records, "aqi_pm25_daily")
    assert (daily["value"], daily["concentration"], daily["category"], daily["unit"]) == (
        56,
        pytest.approx(12.0),
        "moderate",
        "AQI",
    )
    nowcast = by_kpi(records, "aqi_pm25_nowcast")
    noon = [r for r in nowcast if r["end"] == "2025-01-15T12:00:00+01:00"]
    assert [(r["value"], r["weight"], r["n"]) for r in noon] == [(56, 1.0, 12)]


# --------------------------------------------------------------------------------------------
# Noise

# Lden of a constant level L on a normal day: L + 10·log10((12 + 4·10^0.5 + 8·10)/24)
LDEN_OFFSET = 6.395243  # 60 dB → 66.3952 (docs/kpis.md §6 E4, normal day)


def test_noise_lden_laeq_and_days_over_53() -> None:
    def level(t: datetime) -> str:
        if t.day == 15:
            return "60.0"
        if t.day == 16:
            return "45.0"
        return "50.0" if t.minute < 30 else "60.0"  # 01-17: every hour half 50, half 60 dB

    times = instants("2025-01-15T00:00:00+01:00", 3 * 1440)
    records = replay_file(config_file("noise.toml"), series("noise-1", "laeq", times, level))
    loud = output(records, "lden_day", "2025-01-15T00:00:00+01:00")
    assert loud["value"] == pytest.approx(66.3952, abs=5e-5)
    assert (loud["lday"], loud["levening"], loud["lnight"]) == pytest.approx((60.0, 60.0, 60.0))
    assert (loud["hours_day"], loud["hours_evening"], loud["hours_night"]) == (12.0, 4.0, 8.0)
    quiet = output(records, "lden_day", "2025-01-16T00:00:00+01:00")
    assert quiet["value"] == pytest.approx(45.0 + LDEN_OFFSET, abs=1e-5)  # 51.40: under 53
    assert quiet["lnight"] == pytest.approx(45.0)
    # 10·log10((10^5 + 10^6)/2) = 10·log10(550000) = 57.4036 in every hour of 01-17
    hour = output(records, "laeq_1h", "2025-01-17T13:00:00+01:00")
    assert hour["value"] == pytest.approx(57.403627, abs=1e-6)
    assert (hour["n"], hour["unit"]) == (60, "dB(A)")
    mixed = output(records, "lden_day", "2025-01-17T00:00:00+01:00")
    assert mixed["value"] == pytest.approx(57.403627 + LDEN_OFFSET, abs=1e-5)
    over = only(records, "lden_days_over_53")
    assert (over["exceedances"], over["n"], over["expected"]) == (2, 3, 365)
    year = only(records, "lden_year")
    # the year's real period hours: the hour lost in March and the one gained in October are
    # both at night, so 365 × 8 − 1 + 1
    hours = (year["hours_day"], year["hours_evening"], year["hours_night"])
    assert hours == (4380.0, 1460.0, 2920.0)
    assert (year["n"], year["expected"], year["valid"], year["lnight"]) == (72, 8760, False, None)


# --------------------------------------------------------------------------------------------
# Energy

MODULUS_TENTHS = 1_000_000  # the files' modulus = 100000.0 kWh, in 0.1 kWh


def _energy_rows() -> list[Row]:
    """2025-01-14 00:00 … 01-16 00:00, one reading a minute, the register in 0.1 kWh.

    0.1 kWh a minute (6 kW), but 0.5 kWh a minute in the block 18:00-18:15 of 01-14 (30 kW);
    the register starts at 99 990.0 and wraps after 100 minutes; on 01-15 at 12:00 the meter
    is replaced by a new one showing 0.0.
    """
    times = instants("2025-01-14T00:00:00+01:00", 2 * 1440 + 1)
    replaced = datetime(2025, 1, 15, 12, 0, tzinfo=BERLIN)
    rows: list[Row] = []
    tenths = 999_900
    for i, t in enumerate(times):
        if i:
            in_peak = t.day == 14 and (18, 0) < (t.hour, t.minute) <= (18, 15)
            tenths += 5 if in_peak else 1
        if t == replaced:
            tenths = 0
        kwh = f"{tenths % MODULUS_TENTHS / 10:.1f}"
        rows.append((t.isoformat(), "meter-1", "energy_import", kwh))
    return rows


def test_energy_day_month_and_peak_demand() -> None:
    records = replay_file(config_file("energy.toml"), _energy_rows())
    first = output(records, "energy_day", "2025-01-14T00:00:00+01:00")
    # 1425 minutes × 0.1 + 15 × 0.5; the midnight reading of 01-15 closes 01-14
    assert (first["value"], first["n"], first["rollovers"], first["resets"]) == (
        pytest.approx(150.0),
        1440,
        1,
        0,
    )
    second = output(records, "energy_day", "2025-01-15T00:00:00+01:00")
    # the replacement's delta is discarded as a reset: 1439 × 0.1
    assert (second["value"], second["n"], second["rollovers"], second["resets"]) == (
        pytest.approx(143.9),
        1439,
        0,
        1,
    )
    month = output(records, "energy_month", "2025-01-01T00:00:00+01:00")
    assert (month["n"], month["expected"], month["value"]) == (2879, 31 * 1440, None)
    assert (month["rollovers"], month["resets"]) == (1, 1)

    peak = output(records, "peak_demand_day", "2025-01-14T00:00:00+01:00")
    # 7.5 kWh in 0.25 h; mean power 150 kWh / 24 h = 6.25 kW
    assert (peak["value"], peak["peak_start"], peak["n"], peak["expected"]) == (
        pytest.approx(30.0),
        "2025-01-14T18:00:00+01:00",
        96,
        96,
    )
    assert (peak["mean_power"], peak["load_factor"]) == pytest.approx((6.25, 6.25 / 30.0))
    calm = output(records, "peak_demand_day", "2025-01-15T00:00:00+01:00")
    # every block 6 kW but 11:45-12:00 (14 of 15 deltas, still valid: 5.6 kW); ties: earliest
    assert (calm["value"], calm["peak_start"], calm["n"]) == (
        pytest.approx(6.0),
        "2025-01-15T00:00:00+01:00",
        96,
    )
    assert calm["load_factor"] == pytest.approx(143.9 / 24 / 6.0)
    monthly = output(records, "peak_demand_month", "2025-01-01T00:00:00+01:00")
    assert (monthly["n"], monthly["expected"], monthly["value"]) == (192, 31 * 96, None)


# --------------------------------------------------------------------------------------------
# Water

WRAP_LITRES = 4_294_967_296  # the files' modulus, 4294967.296 m³


def _water_rows(date: str) -> list[Row]:
    """A local day every 5 min: 1.2 m³/h, but 0.24 in the hour from 02:00 and 0.18 from 03:00.

    The register (litres) starts 7296 L below its u32 wrap, so it wraps during the day; the
    reading at the next midnight closes the day.
    """
    litres_per_hour = {2: 240, 3: 180}
    start = datetime.fromisoformat(date).replace(tzinfo=BERLIN)
    end = start + timedelta(days=1)  # same tzinfo: wall-clock arithmetic, the next midnight
    real = end.astimezone(UTC) - start.astimezone(UTC)
    times = instants(start.isoformat(), real // timedelta(minutes=5) + 1, timedelta(minutes=5))
    rows: list[Row] = []
    litres = WRAP_LITRES - 7296
    for i, t in enumerate(times):
        if i:
            # the delta at t is the volume of the 5 minutes before it (in real time: an
            # aware datetime minus a timedelta is wall-clock arithmetic)
            hour = (t.astimezone(UTC) - timedelta(minutes=5)).astimezone(BERLIN).hour
            litres += litres_per_hour.get(hour, 1200) // 12
        value = f"{litres % WRAP_LITRES / 1000:.3f}"
        rows.append((t.isoformat(), "water-1", "volume_total", value))
    return rows


@pytest.mark.parametrize(
    ("date", "at", "night_hours", "total"),
    [
        # 22 hours × 1.2 + 0.24 + 0.18
        ("2025-01-14", "2025-01-14T03:00:00+01:00", 2, 26.82),
        # spring DST: 02:00 does not exist, the night has one hour; 22 × 1.2 + 0.18
        ("2025-03-30", "2025-03-30T03:00:00+02:00", 1, 26.58),
    ],
)
def test_water_consumption_and_minimum_night_flow(
    date: str, at: str, night_hours: int, total: float
) -> None:
    records = replay_file(config_file("water.toml"), _water_rows(date))
    first = f"{date}T00:00:00+01:00"
    night = output(records, "min_night_flow", first)
    assert (night["value"], night["at"], night["n"], night["expected"], night["valid"]) == (
        pytest.approx(0.18),
        at,
        night_hours,
        night_hours,
        True,
    )
    day = output(records, "water_day", first)
    assert (day["value"], day["rollovers"], day["resets"], day["valid"]) == (
        pytest.approx(total),
        1,
        0,
        True,
    )
    hours = [record for record in by_kpi(records, "water_1h") if record["start"].startswith(date)]
    assert len(hours) == 22 + night_hours
    assert sum(record["value"] for record in hours) == pytest.approx(total)


# --------------------------------------------------------------------------------------------
# Climate


def test_climate_daily_extremes_mean_and_hot_days() -> None:
    spikes = {
        (1, 5, 13): "9.0",
        (1, 15, 7): "31.5",
        (2, 14, 0): "30.0",  # exactly 30: not a hot day
        (3, 16, 20): "30.1",
    }

    def celsius(t: datetime) -> str:
        if t.day == 3 and t.hour == 3:
            return ""  # an hour without data on 07-03
        return spikes.get((t.day, t.hour, t.minute), "18.0")

    times = instants("2025-07-01T00:00:00+02:00", 3 * 1440)
    records = replay_file(
        config_file("climate.toml"), series("weather-1", "air_temperature", times, celsius)
    )
    low = output(records, "temp_min_day", "2025-07-01T00:00:00+02:00")
    high = output(records, "temp_max_day", "2025-07-01T00:00:00+02:00")
    assert (low["value"], low["at"]) == (9.0, "2025-07-01T05:13:00+02:00")
    assert (high["value"], high["at"], high["unit"]) == (31.5, "2025-07-01T15:07:00+02:00", "°C")
    tie = output(records, "temp_min_day", "2025-07-02T00:00:00+02:00")
    assert (tie["value"], tie["at"]) == (18.0, "2025-07-02T00:00:00+02:00")  # earliest wins
    means = [record["value"] for record in by_kpi(records, "temp_mean_day")]
    # hour 05 holds one 9.0 and hour 15 one 31.5 among 18.0s: 18 + (−9 + 13.5) / 60 / 24;
    # 07-03 has 23 valid hours, one of them with 30.1
    assert means == pytest.approx(
        [18.0 + 4.5 / 1440, 18.0 + 12.0 / 1440, 18.0 + 12.1 / 60 / 23], rel=1e-12
    )
    gap = output(records, "temp_max_day", "2025-07-03T00:00:00+02:00")
    assert (gap["value"], gap["n"], gap["expected"], gap["valid"]) == (30.1, 1380, 1440, True)
    hot = only(records, "hot_days_year")
    assert (hot["exceedances"], hot["n"], hot["expected"]) == (2, 3, 365)
