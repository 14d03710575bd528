"""The worked examples E1–E9 of docs/kpis.md §6 through ``replay``: CSV in, exact JSON out."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.kpi.support import Row, hourly, make_config, rows_of, run_replay

BERLIN = "Europe/Berlin"


def out(kpi: str, src: str, start: str, end: str, **keys: Any) -> dict[str, Any]:
    """An expected record: the §1 keys with their usual defaults, then ``keys``."""
    record: dict[str, Any] = {"kpi": kpi, "src": src, "start": start, "end": end}
    record.update({"value": None, "valid": False, "unit": None})
    record.update(keys)
    return record


def day(date: str, pairs: list[tuple[str, str]], offset: str) -> list[tuple[str, str]]:
    return [(f"{date}T{clock}:00{offset}", value) for clock, value in pairs]


def rows(device: str, point: str, pairs: list[tuple[str, str]]) -> list[Row]:
    return [(t, device, point, value) for t, value in pairs]


E1 = pytest.param(
    BERLIN,
    [
        {
            "name": "e1",
            "source": "s.x",
            "operator": "mean",
            "window": "1 h",
            "sample_interval": "15 min",
        }
    ],
    rows(
        "s",
        "x",
        day(
            "2025-01-15",
            [
                ("08:00", "10"),
                ("08:15", "12"),
                ("08:30", ""),
                ("08:45", "14"),
                ("09:00", "20"),
                ("09:15", ""),
                ("09:30", ""),
                ("09:45", "22"),
            ],
            "+01:00",
        ),
    ),
    [
        out(
            "e1",
            "s.x",
            "2025-01-15T08:00:00+01:00",
            "2025-01-15T09:00:00+01:00",
            value=12.0,
            valid=True,
            n=3,
            expected=4,
            coverage=0.75,
        ),
        out(
            "e1",
            "s.x",
            "2025-01-15T09:00:00+01:00",
            "2025-01-15T10:00:00+01:00",
            n=2,
            expected=4,
            coverage=0.5,
        ),
    ],
    id="E1-mean",
)

E2 = pytest.param(
    BERLIN,
    [
        {
            "name": "e2",
            "source": "m.e",
            "operator": "counter_delta",
            "window": "1 h",
            "sample_interval": "15 min",
            "modulus": 1000.0,
            "max_delta": 50.0,
        }
    ],
    rows(
        "m",
        "e",
        day(
            "2025-01-15",
            [
                ("10:00", "990.0"),
                ("10:15", "995.5"),
                ("10:30", "3.0"),
                ("10:45", "8.0"),
                ("11:00", "12.0"),
                ("11:15", "500.0"),
                ("11:30", "505.0"),
            ],
            "+01:00",
        ),
    ),
    [
        out(
            "e2",
            "m.e",
            "2025-01-15T10:00:00+01:00",
            "2025-01-15T11:00:00+01:00",
            value=5.5 + 7.5 + 5.0 + 4.0,
            valid=True,
            n=4,
            expected=4,
            coverage=1.0,
            rollovers=1,
            resets=0,
        ),
        out(
            "e2",
            "m.e",
            "2025-01-15T11:00:00+01:00",
            "2025-01-15T12:00:00+01:00",
            n=1,
            expected=4,
            coverage=0.25,
            rollovers=0,
            resets=1,
        ),
    ],
    id="E2-counter",
)

E3_KPIS: list[dict[str, Any]] = [
    {
        "name": "e3",
        "source": "n.laeq",
        "operator": "energetic_mean",
        "window": "1 h",
        "sample_interval": "10 min",
    }
]
E3_ROWS = rows(
    "n",
    "laeq",
    day(
        "2025-01-15",
        [
            ("14:00", "50"),
            ("14:10", "50"),
            ("14:20", "50"),
            ("14:30", "60"),
            ("14:40", "60"),
            ("14:50", "60"),
        ],
        "+01:00",
    ),
)
E3 = pytest.param(
    BERLIN,
    E3_KPIS,
    E3_ROWS,
    [
        out(
            "e3",
            "n.laeq",
            "2025-01-15T14:00:00+01:00",
            "2025-01-15T15:00:00+01:00",
            value=10 * math.log10(550000),
            valid=True,
            n=6,
            expected=6,
            coverage=1.0,
        ),
    ],
    id="E3-energetic-mean",
)

E4_KPIS: list[dict[str, Any]] = [
    {
        "name": "e4",
        "source": "n.laeq",
        "operator": "lden",
        "window": "1 d",
        "sample_interval": "1 h",
    }
]
E4_ROWS = rows_of(
    "n", "laeq", hourly(BERLIN, "2025-10-26T00:00:00+02:00", ["60.0"] * 25), ["60.0"] * 25
)
E4 = pytest.param(
    BERLIN,
    E4_KPIS,
    E4_ROWS,
    [
        out(
            "e4",
            "n.laeq",
            "2025-10-26T00:00:00+02:00",
            "2025-10-27T00:00:00+01:00",
            value=10 * math.log10((12 * 10**6 + 4 * 10**6.5 + 9 * 10**7) / 25),
            valid=True,
            n=25,
            expected=25,
            coverage=1.0,
            lday=60.0,
            levening=60.0,
            lnight=60.0,
            hours_day=12.0,
            hours_evening=4.0,
            hours_night=9.0,
        ),
    ],
    id="E4-lden-25h-day",
)

_E5_VALUES = ["80", "84", "", "90", "96", "", "104", "110"]
_E5_N = [1, 2, 2, 3, 4, 4, 5, 6]
E5 = pytest.param(
    BERLIN,
    [
        {
            "name": "e5",
            "source": "a.o3",
            "operator": "running_mean",
            "window": "8 h",
            "base": "1 h",
            "sample_interval": "1 h",
        }
    ],
    rows_of("a", "o3", hourly(BERLIN, "2025-06-02T00:00:00+02:00", _E5_VALUES), _E5_VALUES),
    [
        *[
            out(
                "e5",
                "a.o3",
                f"2025-06-01T{17 + i}:00:00+02:00",
                f"2025-06-02T{i + 1:02d}:00:00+02:00",
                n=_E5_N[i],
                expected=8,
                coverage=_E5_N[i] / 8,
            )
            for i in range(7)
        ],
        out(
            "e5",
            "a.o3",
            "2025-06-02T00:00:00+02:00",
            "2025-06-02T08:00:00+02:00",
            value=94.0,
            valid=True,
            n=6,
            expected=8,
            coverage=0.75,
        ),
    ],
    id="E5-running-mean",
)

E6 = pytest.param(
    "America/Chicago",
    [
        {
            "name": "e6",
            "source": "a.pm25",
            "operator": "aqi_us_pm25",
            "window": "12 h",
            "base": "1 h",
            "sample_interval": "1 h",
        }
    ],
    rows(
        "a",
        "pm25",
        day("2025-06-02", [("06:00", "10"), ("07:00", "20"), ("08:00", "40")], "-05:00"),
    ),
    [
        out(
            "e6",
            "a.pm25",
            "2025-06-01T19:00:00-05:00",
            "2025-06-02T07:00:00-05:00",
            n=1,
            expected=12,
            coverage=1 / 12,
            unit="AQI",
            concentration=None,
            category=None,
            weight=None,
        ),
        out(
            "e6",
            "a.pm25",
            "2025-06-01T20:00:00-05:00",
            "2025-06-02T08:00:00-05:00",
            value=65,
            valid=True,
            n=2,
            expected=12,
            coverage=2 / 12,
            unit="AQI",
            concentration=16.6,
            category="moderate",
            weight=0.5,
        ),
        out(
            "e6",
            "a.pm25",
            "2025-06-01T21:00:00-05:00",
            "2025-06-02T09:00:00-05:00",
            value=90,
            valid=True,
            n=3,
            expected=12,
            coverage=3 / 12,
            unit="AQI",
            concentration=30.0,
            category="moderate",
            weight=0.5,
        ),
    ],
    id="E6-nowcast-aqi",
)

E7 = pytest.param(
    BERLIN,
    [
        {
            "name": "pm10_day",
            "source": "a.pm10",
            "operator": "mean",
            "window": "1 d",
            "sample_interval": "24 h",
        },
        {
            "name": "pm10_days_over_50",
            "source": "kpi:pm10_day",
            "operator": "exceedance_count",
            "window": "1 mo",
            "threshold": 50.0,
            "min_coverage": 0.0,
        },
    ],
    rows(
        "a",
        "pm10",
        [
            ("2025-05-05T00:00:00+02:00", "48.0"),
            ("2025-05-06T00:00:00+02:00", "50.0"),
            ("2025-05-07T00:00:00+02:00", "61.5"),
        ],
    ),
    [
        *[
            out(
                "pm10_day",
                "a.pm10",
                f"2025-05-0{d}T00:00:00+02:00",
                f"2025-05-0{d + 1}T00:00:00+02:00",
                value=v,
                valid=True,
                n=1,
                expected=1,
                coverage=1.0,
            )
            for d, v in ((5, 48.0), (6, 50.0), (7, 61.5))
        ],
        out(
            "pm10_days_over_50",
            "kpi:pm10_day",
            "2025-05-01T00:00:00+02:00",
            "2025-06-01T00:00:00+02:00",
            value=1,
            valid=True,
            n=3,
            expected=31,
            coverage=3 / 31,
            exceedances=1,
        ),
    ],
    id="E7-exceedance",
)

E8 = pytest.param(
    BERLIN,
    [
        {
            "name": "e8",
            "source": "m.e",
            "operator": "demand",
            "window": "30 min",
            "base": "15 min",
            "sample_interval": "5 min",
        }
    ],
    rows(
        "m",
        "e",
        day(
            "2025-01-15",
            [
                ("00:00", "100.0"),
                ("00:05", "100.5"),
                ("00:10", "101.0"),
                ("00:15", "101.5"),
                ("00:20", "102.5"),
                ("00:25", "103.5"),
                ("00:30", "104.5"),
            ],
            "+01:00",
        ),
    ),
    [
        out(
            "e8",
            "m.e",
            "2025-01-15T00:00:00+01:00",
            "2025-01-15T00:30:00+01:00",
            value=12.0,
            valid=True,
            n=2,
            expected=2,
            coverage=1.0,
            peak_start="2025-01-15T00:15:00+01:00",
            mean_power=9.0,
            load_factor=0.75,
        ),
        out(
            "e8",
            "m.e",
            "2025-01-15T00:30:00+01:00",
            "2025-01-15T01:00:00+01:00",
            n=0,
            expected=2,
            coverage=0.0,
            peak_start=None,
            mean_power=None,
            load_factor=None,
        ),
    ],
    id="E8-demand",
)

E9 = pytest.param(
    BERLIN,
    [
        {
            "name": "e9",
            "source": "t.temp",
            "operator": "time_weighted_mean",
            "window": "1 h",
            "sample_interval": "5 min",
            "max_hold": "15 min",
            "min_coverage": 0.5,
        }
    ],
    rows(
        "t",
        "temp",
        day("2025-01-15", [("12:00", "10.0"), ("12:20", "20.0"), ("12:50", "")], "+01:00"),
    ),
    [
        out(
            "e9",
            "t.temp",
            "2025-01-15T12:00:00+01:00",
            "2025-01-15T13:00:00+01:00",
            value=15.0,
            valid=True,
            n=2,
            expected=12,
            coverage=0.5,
            covered_seconds=1800.0,
        ),
    ],
    id="E9-time-weighted-mean",
)


@pytest.mark.parametrize(
    ("zone", "kpis", "csv_rows", "expected"), [E1, E2, E3, E4, E5, E6, E7, E8, E9]
)
def test_worked_example(
    tmp_path: Path,
    zone: str,
    kpis: list[dict[str, object]],
    csv_rows: list[Row],
    expected: list[dict[str, Any]],
) -> None:
    records = run_replay(make_config(tmp_path, zone, kpis), csv_rows)
    assert records == expected


def test_rounded_figures_of_the_contract(tmp_path: Path) -> None:
    """The decimals docs/kpis.md §6 prints: E3 57.4036, E4 66.6143 (66.3952 on a normal day)."""
    e3 = run_replay(make_config(tmp_path, BERLIN, E3_KPIS), E3_ROWS)
    e4 = run_replay(make_config(tmp_path, BERLIN, E4_KPIS), E4_ROWS)
    assert round(e3[0]["value"], 4) == 57.4036
    assert round(e4[0]["value"], 4) == 66.6143
    normal_times = hourly(BERLIN, "2025-10-20T00:00:00+02:00", ["60.0"] * 24)
    normal = run_replay(
        make_config(tmp_path, BERLIN, E4_KPIS),
        rows_of("n", "laeq", normal_times, ["60.0"] * 24),
    )
    assert round(normal[0]["value"], 4) == 66.3952
    assert normal[0]["hours_night"] == 8.0
