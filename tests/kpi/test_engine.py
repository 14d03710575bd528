"""The KPI engine on cases computed by hand from the standards, and its streaming properties."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import AgentConfig, config_from_dict
from agent.kpi.engine import Engine, KpiOutput
from agent.readings import Quality, Reading
from tests.kpi.support import by_kpi, hourly, make_config, ms, rows_of, run_replay

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


def agent_config(zone: str, kpis: Sequence[Mapping[str, Any]]) -> AgentConfig:
    data = {"gateway": {"id": "gw-test", "timezone": zone}, "kpis": kpis}
    return config_from_dict(data, require_uplink=False, check_sources=False)


# --------------------------------------------------------------------------------------------
# DST days


@pytest.mark.parametrize(
    ("zone", "first", "hours", "repeated"),
    [
        (BERLIN, "2025-03-30T00:00:00+01:00", 23, None),
        (BERLIN, "2025-10-26T00:00:00+02:00", 25, "2025-10-26T02:00"),
        (NEW_YORK, "2025-03-09T00:00:00-05:00", 23, None),
        (NEW_YORK, "2025-11-02T00:00:00-04:00", 25, "2025-11-02T01:00"),
    ],
)
def test_dst_day_hourly_and_daily(
    tmp_path: Path, zone: str, first: str, hours: int, repeated: str | None
) -> None:
    kpis: list[dict[str, Any]] = [
        {
            "name": "hourly",
            "source": "aq.no2",
            "operator": "mean",
            "window": "1 h",
            "sample_interval": "15 min",
        },
        {
            "name": "daily",
            "source": "aq.no2",
            "operator": "mean",
            "window": "1 d",
            "base": "1 h",
            "sample_interval": "15 min",
        },
        {
            "name": "daily_raw",
            "source": "aq.no2",
            "operator": "count",
            "window": "1 d",
            "sample_interval": "1 h",
        },
        {"name": "daily_of_hours", "source": "kpi:hourly", "operator": "mean", "window": "1 d"},
    ]
    values = [str(i % 7) for i in range(hours * 4)]
    times = hourly(zone, first, values, step_minutes=15)
    records = run_replay(make_config(tmp_path, zone, kpis), rows_of("aq", "no2", times, values))
    hourly_out = by_kpi(records, "hourly")
    assert len(hourly_out) == hours
    assert all(r["n"] == 4 and r["expected"] == 4 and r["valid"] for r in hourly_out)
    assert [r["start"] for r in hourly_out] == times[::4]
    if repeated is not None:
        twice = [r["start"] for r in hourly_out if r["start"].startswith(repeated)]
        assert len(twice) == 2 and twice[0] != twice[1]
    daily = by_kpi(records, "daily")
    assert len(daily) == 1
    assert (daily[0]["n"], daily[0]["expected"], daily[0]["valid"]) == (hours, hours, True)
    assert daily[0]["value"] == pytest.approx(sum(float(v) for v in values) / len(values))
    assert by_kpi(records, "daily_raw")[0]["expected"] == hours
    assert by_kpi(records, "daily_raw")[0]["value"] == hours * 4
    assert by_kpi(records, "daily_of_hours")[0]["expected"] == hours
    assert by_kpi(records, "daily_of_hours")[0]["value"] == daily[0]["value"]


@pytest.mark.parametrize(
    ("first", "length", "present", "valid"),
    [
        ("2025-10-26T00:00:00+02:00", 25, 19, True),  # 0.75 × 25 = 18.75
        ("2025-10-26T00:00:00+02:00", 25, 18, False),
        ("2025-03-30T00:00:00+01:00", 23, 18, True),  # 0.75 × 23 = 17.25
        ("2025-03-30T00:00:00+01:00", 23, 17, False),
        ("2025-01-15T00:00:00+01:00", 24, 18, True),
        ("2025-01-15T00:00:00+01:00", 24, 17, False),
    ],
)
def test_daily_mean_needs_three_quarters_of_its_real_hours(
    tmp_path: Path, first: str, length: int, present: int, valid: bool
) -> None:
    kpis: list[dict[str, Any]] = [
        {
            "name": "pm10_day",
            "source": "aq.pm10",
            "operator": "mean",
            "window": "1 d",
            "base": "1 h",
            "sample_interval": "1 h",
        }
    ]
    values = [f"{10 + i}.0" if i < present else "" for i in range(length)]
    times = hourly(BERLIN, first, values)
    [day] = run_replay(make_config(tmp_path, BERLIN, kpis), rows_of("aq", "pm10", times, values))
    assert (day["n"], day["expected"], day["valid"]) == (present, length, valid)
    assert day["value"] == (
        pytest.approx(sum(10 + i for i in range(present)) / present) if valid else None
    )


@pytest.mark.parametrize(("present", "valid"), [(45, True), (44, False)])
def test_hour_of_minutes_needs_45(tmp_path: Path, present: int, valid: bool) -> None:
    kpis: list[dict[str, Any]] = [
        {
            "name": "h",
            "source": "aq.no2",
            "operator": "mean",
            "window": "1 h",
            "sample_interval": "1 min",
        }
    ]
    values = ["2.0" if i < present else "" for i in range(60)]
    times = hourly(BERLIN, "2025-01-15T08:00:00+01:00", values, step_minutes=1)
    [hour] = run_replay(make_config(tmp_path, BERLIN, kpis), rows_of("aq", "no2", times, values))
    assert (hour["n"], hour["expected"], hour["valid"], hour["coverage"]) == (
        present,
        60,
        valid,
        present / 60,
    )
    assert hour["value"] == (2.0 if valid else None)


def test_scale_converts_ppb(tmp_path: Path) -> None:
    kpis: list[dict[str, Any]] = [
        {
            "name": "no2_1h",
            "source": "aq.no2",
            "operator": "mean",
            "window": "1 h",
            "sample_interval": "15 min",
            "scale": 1.912513,
            "unit": "µg/m³",
        }
    ]
    times = hourly(BERLIN, "2025-01-15T08:00:00+01:00", ["100"] * 4, step_minutes=15)
    [hour] = run_replay(
        make_config(tmp_path, BERLIN, kpis), rows_of("aq", "no2", times, ["100"] * 4)
    )
    assert hour["value"] == pytest.approx(191.2513)
    assert hour["unit"] == "µg/m³"


# --------------------------------------------------------------------------------------------
# counters


def test_counter_bridges_bad_readings_and_detects_a_reset(tmp_path: Path) -> None:
    kpis: list[dict[str, Any]] = [
        {
            "name": "water_1h",
            "source": "w.volume",
            "operator": "counter_delta",
            "window": "1 h",
            "sample_interval": "15 min",
            "max_delta": 10.0,
            "min_coverage": 0.5,
        }
    ]
    values = ["100", "105", "", "", "125", "3", "8", "13", "18"]
    times = hourly(BERLIN, "2025-01-15T10:00:00+01:00", values, step_minutes=15)
    records = run_replay(make_config(tmp_path, BERLIN, kpis), rows_of("w", "volume", times, values))
    assert [(r["value"], r["n"], r["rollovers"], r["resets"], r["valid"]) for r in records] == [
        # 10:15 +5; 11:00 +20 over three intervals (limit 30), on the boundary: closes 10–11
        (25.0, 2, 0, 0, True),
        # 11:15 falls to 3 without a modulus: reset; then three deltas of 5 up to 12:00
        (15.0, 3, 0, 1, True),
        # [12:00, 13:00) holds T_last: emitted, empty
        (None, 0, 0, 0, False),
    ]


def test_counter_rolls_over_at_its_modulus(tmp_path: Path) -> None:
    kpis: list[dict[str, Any]] = [
        {
            "name": "kwh_1h",
            "source": "m.energy",
            "operator": "counter_delta",
            "window": "1 h",
            "sample_interval": "15 min",
            "modulus": 100000.0,
            "max_delta": 100.0,
        }
    ]
    values = ["99960.0", "99980.0", "99995.5", "4.5", "24.5"]
    times = hourly(BERLIN, "2025-01-15T10:00:00+01:00", values, step_minutes=15)
    first, _ = run_replay(
        make_config(tmp_path, BERLIN, kpis), rows_of("m", "energy", times, values)
    )
    assert (first["value"], first["n"], first["rollovers"], first["resets"]) == (
        pytest.approx(64.5),
        4,
        1,
        0,
    )


# --------------------------------------------------------------------------------------------
# lden


def test_lden_on_a_normal_day(tmp_path: Path) -> None:
    kpis: list[dict[str, Any]] = [
        {
            "name": "lden",
            "source": "n.laeq",
            "operator": "lden",
            "window": "1 d",
            "base": "1 h",
            "sample_interval": "15 min",
        }
    ]
    levels = ["60.0" if 7 <= h < 19 else "55.0" if 19 <= h < 23 else "50.0" for h in range(24)]
    values = [level for level in levels for _ in range(4)]
    times = hourly(BERLIN, "2025-01-15T00:00:00+01:00", values, step_minutes=15)
    [day] = run_replay(make_config(tmp_path, BERLIN, kpis), rows_of("n", "laeq", times, values))
    # day 60, evening 55 + 5, night 50 + 10: each period weighs 60 dB, so Lden = 60
    assert day["value"] == pytest.approx(60.0)
    assert (day["lday"], day["levening"], day["lnight"]) == pytest.approx((60.0, 55.0, 50.0))
    assert (day["hours_day"], day["hours_evening"], day["hours_night"]) == (12.0, 4.0, 8.0)
    assert (day["n"], day["expected"]) == (24, 24)


@pytest.mark.parametrize(("missing_night_hours", "valid"), [(0, True), (1, True), (2, False)])
def test_lden_on_the_23_hour_day(tmp_path: Path, missing_night_hours: int, valid: bool) -> None:
    kpis: list[dict[str, Any]] = [
        {
            "name": "lden",
            "source": "n.laeq",
            "operator": "lden",
            "window": "1 d",
            "sample_interval": "1 h",
        }
    ]
    values = ["60.0"] * 23
    for i in range(missing_night_hours):
        values[i] = ""  # 00:00, 01:00: night hours
    times = hourly(BERLIN, "2025-03-30T00:00:00+01:00", values)
    [day] = run_replay(make_config(tmp_path, BERLIN, kpis), rows_of("n", "laeq", times, values))
    # night = 00–07 without the skipped 02:00 (6 h) + 23–24: 7 h; 5 of 7 < 0.75
    assert (day["hours_day"], day["hours_evening"], day["hours_night"]) == (12.0, 4.0, 7.0)
    assert (day["n"], day["expected"], day["valid"]) == (23 - missing_night_hours, 23, valid)
    if valid:
        assert day["value"] == pytest.approx(
            10 * math.log10((12 * 10**6 + 4 * 10**6.5 + 7 * 10**7) / 23)
        )
    else:
        assert day["value"] is None and day["lnight"] is None


# --------------------------------------------------------------------------------------------
# hierarchy and kpi: sources


def test_hourly_to_daily_to_yearly(tmp_path: Path) -> None:
    kpis: list[dict[str, Any]] = [
        {
            "name": "pm10_1h",
            "source": "aq.pm10",
            "operator": "mean",
            "window": "1 h",
            "sample_interval": "15 min",
        },
        {"name": "pm10_day", "source": "kpi:pm10_1h", "operator": "mean", "window": "1 d"},
        {
            "name": "pm10_year",
            "source": "kpi:pm10_day",
            "operator": "mean",
            "window": "1 y",
            "min_coverage": 0.9,
        },
        {
            "name": "pm10_days_over_50",
            "source": "kpi:pm10_day",
            "operator": "exceedance_count",
            "window": "1 y",
            "threshold": 50.0,
            "min_coverage": 0.9,
        },
        {
            "name": "pm10_max_day",
            "source": "kpi:pm10_day",
            "operator": "max",
            "window": "1 y",
            "min_coverage": 0.0,
        },
    ]
    values = ["40.0"] * 96 + ["60.0"] * 96
    for i in range(20, 23):
        values[i] = ""  # 05:00–06:00 of day one: 1 of 4 → that hour is missing
    times = hourly(BERLIN, "2024-03-01T00:00:00+01:00", values, step_minutes=15)
    records = run_replay(make_config(tmp_path, BERLIN, kpis), rows_of("aq", "pm10", times, values))
    days = by_kpi(records, "pm10_day")
    assert [(d["value"], d["n"], d["expected"]) for d in days] == [(40.0, 23, 24), (60.0, 24, 24)]
    [year] = by_kpi(records, "pm10_year")
    assert (year["start"], year["end"]) == (
        "2024-01-01T00:00:00+01:00",
        "2025-01-01T00:00:00+01:00",
    )
    assert (year["n"], year["expected"], year["valid"], year["value"]) == (2, 366, False, None)
    [over] = by_kpi(records, "pm10_days_over_50")
    assert (over["value"], over["exceedances"], over["n"]) == (None, 1, 2)
    [peak] = by_kpi(records, "pm10_max_day")
    assert (peak["value"], peak["at"]) == (60.0, "2024-03-02T00:00:00+01:00")
    # the yearly outputs close last, in name order
    assert [r["kpi"] for r in records[-3:]] == ["pm10_days_over_50", "pm10_max_day", "pm10_year"]


def test_exceedance_count_of_hourly_means(tmp_path: Path) -> None:
    kpis: list[dict[str, Any]] = [
        {
            "name": "no2_1h",
            "source": "aq.no2",
            "operator": "mean",
            "window": "1 h",
            "sample_interval": "30 min",
        },
        {
            "name": "no2_hours_over_200",
            "source": "kpi:no2_1h",
            "operator": "exceedance_count",
            "window": "1 d",
            "threshold": 200.0,
            "min_coverage": 0.0,
        },
    ]
    values = ["150", "250", "200", "200", "199", "202", "", "500"]  # means 200, 200, 200.5, —
    times = hourly(BERLIN, "2025-01-15T00:00:00+01:00", values, step_minutes=30)
    records = run_replay(make_config(tmp_path, BERLIN, kpis), rows_of("aq", "no2", times, values))
    [day] = by_kpi(records, "no2_hours_over_200")
    # 200.0 is not above 200 (strictly greater); the hour with one of two readings is valid
    # only at 0.75 × 2 = 1.5 → needs 2: missing
    assert (day["value"], day["n"], day["expected"], day["exceedances"]) == (1, 3, 24, 1)


def test_min_night_flow_on_dst_days(tmp_path: Path) -> None:
    kpis: list[dict[str, Any]] = [
        {
            "name": "night_flow",
            "source": "w.flow",
            "operator": "min_night_flow",
            "window": "1 d",
            "base": "1 h",
            "sample_interval": "15 min",
        },
        {
            "name": "water_1h",
            "source": "w.volume",
            "operator": "counter_delta",
            "window": "1 h",
            "sample_interval": "15 min",
        },
        {
            "name": "night_use",
            "source": "kpi:water_1h",
            "operator": "min_night_flow",
            "window": "1 d",
        },
    ]
    autumn = hourly(BERLIN, "2025-10-26T00:00:00+02:00", ["x"] * 100, step_minutes=15)
    flows = ["5.0"] * 100
    for i in range(12, 16):  # the second 02:00 hour (+01:00)
        flows[i] = "1.0"
    volumes = [str(1000 + 2 * i) for i in range(100)]
    rows = rows_of("w", "flow", autumn, flows) + rows_of("w", "volume", autumn, volumes)
    rows.sort(key=lambda row: ms(row[0]))
    records = run_replay(make_config(tmp_path, BERLIN, kpis), rows)
    [night] = by_kpi(records, "night_flow")
    assert (night["value"], night["at"], night["n"], night["expected"]) == (
        1.0,
        "2025-10-26T02:00:00+01:00",
        3,
        3,
    )
    [use] = by_kpi(records, "night_use")
    # 02:00 (+02:00), 02:00 (+01:00), 03:00; the first hour has no delta for 00:00 (baseline)
    assert (use["value"], use["n"], use["expected"]) == (8.0, 3, 3)

    spring = hourly(BERLIN, "2025-03-30T00:00:00+01:00", ["x"] * 92, step_minutes=15)
    rows = rows_of("w", "flow", spring, ["5.0"] * 92)
    [night] = by_kpi(run_replay(make_config(tmp_path, BERLIN, kpis), rows), "night_flow")
    assert (night["n"], night["expected"], night["at"]) == (1, 1, "2025-03-30T03:00:00+02:00")


def test_daily_max_running_mean(tmp_path: Path) -> None:
    kpis: list[dict[str, Any]] = [
        {
            "name": "o3_max8h",
            "source": "aq.o3",
            "operator": "daily_max_running_mean",
            "window": "1 d",
            "base": "1 h",
            "running_window": "8 h",
            "sample_interval": "1 h",
            "scale": 1.0,
        }
    ]
    values = [f"{h}.0" for h in range(24)]
    times = hourly(BERLIN, "2025-01-15T00:00:00+01:00", values)
    [day] = run_replay(make_config(tmp_path, BERLIN, kpis), rows_of("aq", "o3", times, values))
    # bases 00–04 have 1–5 of 8 hours (before the span = missing); from 05:00 on 6+ of 8
    assert (day["n"], day["expected"], day["valid"]) == (19, 24, True)
    assert day["value"] == (16 + 23) / 2
    assert (day["max_start"], day["max_end"]) == (
        "2025-01-15T16:00:00+01:00",
        "2025-01-16T00:00:00+01:00",
    )


@pytest.mark.parametrize(
    ("hours", "aqi", "valid"), [(24, 56, True), (18, 56, True), (17, None, False)]
)
def test_daily_aqi(tmp_path: Path, hours: int, aqi: int | None, valid: bool) -> None:
    kpis: list[dict[str, Any]] = [
        {
            "name": "aqi",
            "source": "aq.pm25",
            "operator": "aqi_us_pm25",
            "window": "1 d",
            "base": "1 h",
            "sample_interval": "1 h",
            "averaging": "daily",
        }
    ]
    values = ["12.0" if h < hours else "" for h in range(24)]
    times = hourly("America/Chicago", "2025-06-02T00:00:00-05:00", values)
    [day] = run_replay(
        make_config(tmp_path, "America/Chicago", kpis), rows_of("aq", "pm25", times, values)
    )
    assert (day["value"], day["valid"], day["unit"]) == (aqi, valid, "AQI")
    assert day["concentration"] == (12.0 if valid else None)
    assert day["category"] == ("moderate" if valid else None)


def test_percentile_max_ties_and_count(tmp_path: Path) -> None:
    kpis: list[dict[str, Any]] = [
        {
            "name": "p90",
            "source": "s.x",
            "operator": "percentile",
            "q": 90.0,
            "window": "1 h",
            "sample_interval": "1 min",
        },
        {
            "name": "peak",
            "source": "s.x",
            "operator": "max",
            "window": "1 h",
            "sample_interval": "1 min",
        },
        {
            "name": "low",
            "source": "s.x",
            "operator": "min",
            "window": "1 h",
            "base": "15 min",
            "sample_interval": "1 min",
        },
        {
            "name": "seen",
            "source": "s.x",
            "operator": "count",
            "window": "1 h",
            "sample_interval": "1 min",
        },
    ]
    values = [str(61 - i) for i in range(1, 61)]  # 60 … 1
    values[30] = "60"  # a second 60 at 08:30: the first (08:00) is the "at"
    values += ["", "7"]  # the next hour: one bad, one good reading
    times = hourly(BERLIN, "2025-01-15T08:00:00+01:00", values, step_minutes=1)
    records = run_replay(make_config(tmp_path, BERLIN, kpis), rows_of("s", "x", times, values))
    p90 = by_kpi(records, "p90")[0]
    ordered = sorted(float(v) for v in values[:60])
    assert (p90["value"], p90["rank"]) == (ordered[54 - 1], 54)  # ceil(0.9 × 60) = 54
    assert by_kpi(records, "peak")[0]["at"] == "2025-01-15T08:00:00+01:00"
    low = by_kpi(records, "low")[0]  # base means of 15 min; the lowest is the last quarter
    assert low["at"] == "2025-01-15T08:45:00+01:00"
    assert low["value"] == pytest.approx(sum(float(v) for v in values[45:60]) / 15)
    seen = by_kpi(records, "seen")
    assert [(s["value"], s["valid"], s["n"]) for s in seen] == [(60, True, 60), (1, True, 1)]


def test_time_weighted_holds_cross_windows(tmp_path: Path) -> None:
    kpis: list[dict[str, Any]] = [
        {
            "name": "twm",
            "source": "t.x",
            "operator": "time_weighted_mean",
            "window": "1 h",
            "sample_interval": "10 min",
            "max_hold": "30 min",
            "min_coverage": 0.0,
        }
    ]
    rows = [
        ("2025-01-15T12:50:00+01:00", "t", "x", "10.0"),
        ("2025-01-15T13:10:00+01:00", "t", "x", "20.0"),
    ]
    first, second = run_replay(make_config(tmp_path, BERLIN, kpis), rows)
    assert (first["value"], first["covered_seconds"], first["n"]) == (10.0, 600.0, 1)
    # 13:00–13:10 still 10; 13:10–13:40 20 (max_hold), then nothing
    assert (second["value"], second["covered_seconds"], second["n"]) == (17.5, 2400.0, 1)
    assert second["coverage"] == 2400 / 3600


def test_bad_reading_ends_a_hold() -> None:
    config = agent_config(
        BERLIN,
        [
            {
                "name": "twm",
                "source": "t.x",
                "operator": "time_weighted_mean",
                "window": "1 h",
                "sample_interval": "10 min",
                "max_hold": "30 min",
                "min_coverage": 0.0,
            }
        ],
    )
    engine = Engine.from_config(config)
    t0 = ms("2025-01-15T12:00:00+01:00")
    engine.feed(Reading("t", "x", None, t0, 10.0, Quality.GOOD))
    engine.feed(Reading("t", "x", None, t0 + 300_000, 99.0, Quality.COMM_ERROR))
    [out] = engine.finish(t0)
    assert (out.value, out.extras["covered_seconds"], out.n) == (10.0, 300.0, 1)


# --------------------------------------------------------------------------------------------
# live engine: advance, lateness, checkpoints

HOUR_MEAN: dict[str, Any] = {
    "name": "h",
    "source": "a.x",
    "operator": "mean",
    "window": "1 h",
    "sample_interval": "15 min",
}
HOUR_COUNTER: dict[str, Any] = {
    "name": "c",
    "source": "a.c",
    "operator": "counter_delta",
    "window": "1 h",
    "sample_interval": "15 min",
}
T10 = ms("2025-01-15T10:00:00+01:00")
MIN = 60_000


def test_advance_closes_windows_without_readings() -> None:
    engine = Engine.from_config(
        agent_config(BERLIN, [HOUR_MEAN, HOUR_COUNTER]), lateness_ms=5 * MIN
    )
    engine.feed_value("a", "x", T10 + 5 * MIN, 1.0)
    engine.feed_value("a", "c", T10 + 5 * MIN, 100.0)
    assert engine.advance(T10 + 64 * MIN) == []
    closed = engine.advance(T10 + 65 * MIN)  # now − lateness reaches 11:00
    assert [(o.kpi, o.start, o.n) for o in closed] == [("h", T10, 1)]
    # the counter window (10:00, 11:00] holds a reading at 11:00: it waits until 11:00 passed
    closed = engine.advance(T10 + 65 * MIN + 1)
    assert [(o.kpi, o.start) for o in closed] == [("c", T10)]
    assert engine.advance(T10 + 3 * 60 * MIN + 5 * MIN) != []


def test_late_readings_are_counted_not_placed() -> None:
    kpis = [dict(HOUR_MEAN, min_coverage=0.5)]
    engine = Engine.from_config(agent_config(BERLIN, kpis), lateness_ms=2 * MIN)
    engine.feed_value("a", "x", T10 + 10 * MIN, 1.0)
    engine.feed_value("a", "x", T10 + 9 * MIN, 2.0)  # within lateness: placed
    engine.feed_value("a", "x", T10 + 7 * MIN, 3.0)  # 3 min late: dropped, counted
    engine.feed_value("a", "x", T10 + 10 * MIN, 9.0)  # duplicate time: ignored
    engine.feed_value("b", "y", T10 + 11 * MIN, 1.0)  # a source no KPI reads
    [out] = engine.finish()
    assert (out.n, out.value) == (2, 1.5)
    assert engine.late_dropped == {"h": 1}
    assert engine.duplicates == 1


def test_output_order_is_end_then_name() -> None:
    kpis: list[dict[str, Any]] = [
        dict(HOUR_MEAN, name="zeta"),
        dict(HOUR_MEAN, name="alpha"),
        dict(HOUR_MEAN, name="mid", window="15 min"),
    ]
    engine = Engine.from_config(agent_config(BERLIN, kpis))
    engine.feed_value("a", "x", T10, 1.0)
    outputs = engine.finish(T10 + 59 * MIN)
    assert [(o.kpi, o.end - T10) for o in outputs] == [
        ("mid", 15 * MIN),
        ("mid", 30 * MIN),
        ("mid", 45 * MIN),
        ("alpha", 60 * MIN),
        ("mid", 60 * MIN),
        ("zeta", 60 * MIN),
    ]


def test_restore_discards_a_changed_kpi() -> None:
    engine = Engine.from_config(agent_config(BERLIN, [HOUR_MEAN, HOUR_COUNTER]))
    engine.feed_value("a", "x", T10, 4.0)
    engine.feed_value("a", "c", T10, 1.0)
    changed = agent_config(BERLIN, [dict(HOUR_MEAN, min_coverage=0.5), HOUR_COUNTER])
    restored = Engine.restore(changed, json.loads(json.dumps(engine.snapshot())))
    assert restored.discarded == ["h"]
    restored.feed_value("a", "x", T10 + 15 * MIN, 6.0)
    restored.feed_value("a", "c", T10 + 15 * MIN, 2.0)
    by_name = {o.kpi: o for o in restored.finish()}
    assert by_name["h"].n == 1  # started afresh: the 10:00 reading is gone
    assert by_name["c"].n == 1  # kept its baseline


# KPIs that exercise every kind of state: reading windows, bases, counters, holds, sliding
# windows, a daily accumulator and a kpi: source; crossing the autumn DST change.
PROPERTY_KPIS: list[dict[str, Any]] = [
    {
        "name": "m15",
        "source": "a.x",
        "operator": "mean",
        "window": "15 min",
        "sample_interval": "1 min",
    },
    {
        "name": "p90",
        "source": "a.x",
        "operator": "percentile",
        "q": 90.0,
        "window": "1 h",
        "base": "5 min",
        "sample_interval": "1 min",
        "base_min_coverage": 0.5,
    },
    {
        "name": "twm",
        "source": "a.x",
        "operator": "time_weighted_mean",
        "window": "30 min",
        "sample_interval": "1 min",
        "max_hold": "3 min",
        "min_coverage": 0.3,
    },
    {
        "name": "run",
        "source": "a.x",
        "operator": "running_mean",
        "window": "1 h",
        "base": "15 min",
        "sample_interval": "1 min",
        "base_min_coverage": 0.3,
    },
    {
        "name": "lden",
        "source": "a.x",
        "operator": "lden",
        "window": "1 d",
        "base": "15 min",
        "sample_interval": "1 min",
        "min_coverage": 0.0,
        "base_min_coverage": 0.2,
    },
    {
        "name": "m15_max",
        "source": "kpi:m15",
        "operator": "max",
        "window": "1 h",
        "min_coverage": 0.25,
    },
    {
        "name": "energy",
        "source": "a.c",
        "operator": "counter_delta",
        "window": "30 min",
        "sample_interval": "1 min",
        "modulus": 1000.0,
        "max_delta": 15.0,
        "min_coverage": 0.3,
    },
    {
        "name": "demand",
        "source": "a.c",
        "operator": "demand",
        "window": "1 h",
        "base": "15 min",
        "sample_interval": "1 min",
        "base_min_coverage": 0.3,
    },
]
PROPERTY_START = ms("2025-10-26T01:40:00+02:00")
LATENESS = 4 * MIN

Feed = tuple[str, int, float | None]  # point, t, value


@st.composite
def streams(draw: st.DrawFn) -> list[Feed]:
    """Readings of a.x (level) and a.c (counter), each in time order, on a shared clock."""
    feeds: list[Feed] = []
    for point in ("x", "c"):
        t = PROPERTY_START + draw(st.integers(0, 120_000))
        total = draw(st.floats(900, 999))
        for _ in range(draw(st.integers(0, 90))):
            t += draw(st.integers(20_000, 150_000))
            if point == "c":
                total = (total + draw(st.floats(0, 20))) % 1000.0
                value: float | None = total
            else:
                value = draw(st.floats(30, 90))
            if draw(st.integers(0, 9)) == 0:
                value = None
            feeds.append((point, t, value))
    feeds.sort(key=lambda feed: feed[1])
    return feeds


def run_in_order(feeds: list[Feed]) -> list[dict[str, Any]]:
    engine = Engine.from_config(agent_config(BERLIN, PROPERTY_KPIS))
    outputs: list[KpiOutput] = []
    for point, t, value in feeds:
        outputs += engine.feed_value("a", point, t, value)
    outputs += engine.finish()
    return [o.as_dict() for o in sorted(outputs, key=lambda o: (o.end, o.kpi))]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feeds=streams(), data=st.data())
def test_any_order_within_lateness_gives_the_same_outputs(
    feeds: list[Feed], data: st.DataObject
) -> None:
    # A reading delayed by at most the lateness arrives at t + delay: when it arrives, no
    # reading seen before it is more than the lateness ahead of it.
    delays = [data.draw(st.integers(0, LATENESS)) for _ in feeds]
    arrival = sorted(range(len(feeds)), key=lambda i: (feeds[i][1] + delays[i], i))
    ticks = set(data.draw(st.lists(st.integers(0, max(len(feeds) - 1, 0)), max_size=10)))
    engine = Engine.from_config(agent_config(BERLIN, PROPERTY_KPIS), lateness_ms=LATENESS)
    outputs: list[KpiOutput] = []
    for step, i in enumerate(arrival):
        point, t, value = feeds[i]
        outputs += engine.feed_value("a", point, t, value)
        if step in ticks and engine.now is not None:
            outputs += engine.advance(engine.now)  # live ticks close windows on the clock
    outputs += engine.finish()
    assert engine.late_dropped == dict.fromkeys(engine.late_dropped, 0)
    got = [o.as_dict() for o in sorted(outputs, key=lambda o: (o.end, o.kpi))]
    assert got == run_in_order(feeds)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feeds=streams(), data=st.data())
def test_restart_anywhere_gives_the_same_outputs(feeds: list[Feed], data: st.DataObject) -> None:
    lateness = data.draw(st.sampled_from([0, LATENESS]))
    cut = data.draw(st.integers(0, len(feeds)))
    use_msgpack = data.draw(st.booleans())
    config = agent_config(BERLIN, PROPERTY_KPIS)
    engine = Engine.from_config(config, lateness_ms=lateness)
    outputs: list[KpiOutput] = []
    for point, t, value in feeds[:cut]:
        outputs += engine.feed_value("a", point, t, value)
    snapshot = engine.snapshot()
    if use_msgpack:
        saved = msgpack.unpackb(msgpack.packb(snapshot), strict_map_key=False)
    else:
        saved = json.loads(json.dumps(snapshot, allow_nan=False))
    engine = Engine.restore(config, saved)
    assert engine.discarded == []
    for point, t, value in feeds[cut:]:
        outputs += engine.feed_value("a", point, t, value)
    outputs += engine.finish()
    got = [o.as_dict() for o in sorted(outputs, key=lambda o: (o.end, o.kpi))]
    assert got == run_in_order(feeds)


def test_out_of_range_values_are_invalid_not_a_crash() -> None:
    kpis = [
        {
            "name": "leq",
            "source": "n.l",
            "operator": "energetic_mean",
            "window": "1 h",
            "sample_interval": "30 min",
            "min_coverage": 0.5,
        },
        {
            "name": "big",
            "source": "n.l",
            "operator": "mean",
            "window": "1 h",
            "sample_interval": "30 min",
            "scale": 1e10,
            "min_coverage": 0.5,
        },
    ]
    engine = Engine.from_config(agent_config(BERLIN, kpis))
    engine.feed_value("n", "l", T10, 65535.0)  # a register glitch: 10^6553.5 overflows
    engine.feed_value("n", "l", T10 + 30 * MIN, 1e300)  # finite, but × 1e10 is not
    engine.feed_value("n", "l", T10 + 40 * MIN, 50.0)
    by_name = {o.kpi: o for o in engine.finish()}
    # both glitches overflow 10^(L/10): only the 50 dB reading counts
    assert (by_name["leq"].n, by_name["leq"].value) == (1, 50.0)
    assert by_name["big"].n == 2  # 65535e10 and 50e10; 1e310 is out of range
