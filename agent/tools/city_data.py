"""Generated city data for trying ``ssc-agent report`` (README "Reports", the report tests and
benchmarks/report.py): air quality stations whose gateways' KPI windows (daily PM10 and PM2.5
means, hourly NO2 means, daily maximum 8-hour O3 means) are stored into a sink through its
own ingest path (``store_many`` of wire batches, as the receiver stores them), and a city
config naming the stations and a few targets.

    python -m agent.tools.city_data --sink sqlite:///city.db --city city.toml \\
        --stations 20 --from 2023-01-01 --to 2025-12-31

The values are a seeded pseudo-random walk around a seasonal curve that falls a little every
year, so that targets show a trend; about 3 % of the windows are missing and the last station
loses a third of the last year (that year's figures are not valid there). Windows follow the local
calendar of the city's zone: a day on which the clocks change has 23 or 25 hourly windows.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.kpi.calendar import Calendar
from agent.units import KpiDuration
from agent.wire import Batch

__all__ = ["KPIS", "REPLAY_KPIS", "REPLAY_POINTS", "CityData", "Gap", "Readings", "city_toml",
           "generate", "hourly_readings", "main", "replay_config", "station_windows",
           "write_readings"]

ZONE = "Europe/Berlin"
BATCH_WINDOWS = 2000
_HOUR, _DAY = KpiDuration(1, "h"), KpiDuration(1, "d")
# kpi → (window, source point, base level µg/m³, seasonal swing, noise)
KPIS: dict[str, tuple[KpiDuration, str, float, float, float]] = {
    "pm10_day": (_DAY, "pm.pm10", 24.0, 8.0, 9.0),
    "pm25_day": (_DAY, "pm.pm2_5", 13.0, 5.0, 5.0),
    "no2_1h": (_HOUR, "gas.no2", 22.0, 8.0, 20.0),
    "o3_max8h_day": (_DAY, "gas.o3", 70.0, -30.0, 15.0),
}


@dataclass(frozen=True)
class CityData:
    """What :func:`generate` wrote: the stations' gateway ids and the windows stored."""

    gateways: tuple[str, ...]
    windows: int


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def station_windows(station: int, stations: int, kpi: str, first: date, last: date, *,
                    zone: ZoneInfo, seed: int = 1) -> Iterator[dict[str, Any]]:
    """The aggregate maps of one station's KPI over the local dates ``first`` … ``last``."""
    window, src, base, swing, noise = KPIS[kpi]
    rng = random.Random(f"{seed}/{station}/{kpi}")
    calendar = Calendar(zone)
    start = calendar.window_at(_DAY, _ms(datetime.combine(first, time(12), tzinfo=zone)))[0]
    end = calendar.window_at(_DAY, _ms(datetime.combine(last, time(12), tzinfo=zone)))[1]
    offset = base * (0.7 + 0.6 * station / max(stations - 1, 1))
    lossy = station == stations - 1 and stations > 1  # loses a summer: the last year
    unit = "µg/m³"
    for w_start, w_end in calendar.windows(window, start, end):
        moment = datetime.fromtimestamp(w_start / 1000, zone)
        years = moment.year - first.year + moment.timetuple().tm_yday / 366
        season = math.cos(2 * math.pi * (moment.timetuple().tm_yday - 15) / 365.25)
        hour = math.sin(math.pi * moment.hour / 12) if window == _HOUR else 0.0
        value = offset * (1 - 0.06 * years) + swing * season + 6 * hour + rng.gauss(0, noise)
        value = round(max(value, 1.0), 2)
        missing = rng.random() < 0.03 or (
            lossy and moment.year == last.year and 5 <= moment.month <= 8)
        expected = 24 if window == _DAY else 60
        n = 0 if missing else expected
        yield {"kpi": kpi, "src": src, "start": w_start, "end": w_end,
               "value": None if missing else value, "valid": not missing, "n": n,
               "expected": expected, "unit": unit, "coverage": n / expected}


def _batches(gw: str, windows: Iterator[dict[str, Any]], seq: list[int], store: str
             ) -> Iterator[Batch]:
    chunk: list[dict[str, Any]] = []
    for window in windows:
        chunk.append(window)
        if len(chunk) == BATCH_WINDOWS:
            seq[0] += 1
            yield Batch(gw, 1, seq[0], chunk[-1]["end"], (), tuple(chunk), store=store)
            chunk = []
    if chunk:
        seq[0] += 1
        yield Batch(gw, 1, seq[0], chunk[-1]["end"], (), tuple(chunk), store=store)


def generate(sink_url: str, stations: int, first: date, last: date, *,
             kpis: tuple[str, ...] = tuple(KPIS), seed: int = 1) -> CityData:
    """Store ``stations`` stations' windows of ``kpis`` into the sink at ``sink_url``."""
    from agent.platform.sink import open_sink

    zone = ZoneInfo(ZONE)
    gateways = tuple(f"gw-aq-{i + 1:03d}" for i in range(stations))
    total = 0
    # each run its own store id, so that its seq series is not taken for a resend of another's
    store = f"gen-{first}-{'-'.join(kpis)}"
    with open_sink(sink_url) as sink:
        for index, gw in enumerate(gateways):
            seq = [0]
            for kpi in kpis:
                batches = list(_batches(gw, station_windows(index, stations, kpi, first, last,
                                                            zone=zone, seed=seed), seq,
                                          store))
                sink.store_many(batches)
                total += sum(len(b.aggregates) for b in batches)
    return CityData(gateways, total)


def city_toml(gateways: tuple[str, ...], *, kpis: tuple[str, ...] = tuple(KPIS),
              name: str = "Lakeside", by: int = 2030,
              kpis_of: Callable[[int], tuple[str, ...]] | None = None) -> str:
    """A city config for the generated stations, with targets on PM2.5, NO2 and O3;
    ``kpis_of(index)``, when given, names the KPIs of each station instead of ``kpis``."""
    lines = [
        "# Generated by python -m agent.tools.city_data (docs/reports.md)",
        # a JSON string is a TOML basic string: quotes and backslashes escaped
        "[city]", f"name = {json.dumps(name, ensure_ascii=False)}", f'timezone = "{ZONE}"',
        "population = 182000", "",
    ]
    for index, gw in enumerate(gateways):
        kinds = ("traffic", "urban_background", "suburban_background")
        lines += [
            "[[sites]]", f'id = "station_{index + 1:03d}"',
            f'name = "Station {index + 1} ({kinds[index % 3].replace("_", " ")})"',
            f"location = {{ lat = {53.5 + index * 0.002:.4f}, lon = {9.9 + index * 0.003:.4f} }}",
            f'station_type = "{kinds[index % 3]}"', "", "[[sites.feeds]]", f'gateway = "{gw}"',
            "kpis = [" + ", ".join(f'"{k}"' for k in (kpis_of(index) if kpis_of else kpis))
            + "]", "",
        ]
    targets = {  # each only when its KPI is fed: a target must have sites to be judged on
        "pm25_day": [
            "[[targets]]", 'id = "pm25_every_station"', 'name = "PM2.5 at 10 µg/m³ everywhere"',
            'indicator = "pm25_annual_mean"', 'comparison = "<="', "value = 10.0",
            'unit = "µg/m³"', 'scope = "every_site"', f"by = {by}", ""],
        "no2_1h": [
            "[[targets]]", 'id = "no2_share"', 'name = "NO2 at 20 µg/m³ at four stations in five"',
            'indicator = "no2_annual_mean"', 'comparison = "<="', "value = 20.0",
            'unit = "µg/m³"', 'scope = "share_of_sites"', "share_percent = 80.0", f"by = {by}",
            ""],
        "o3_max8h_day": [
            "[[targets]]", 'id = "o3_days"', 'name = "Ozone: at most 18 days over 120 µg/m³"',
            'indicator = "o3_days_over"', 'comparison = "<="', "value = 18", 'unit = "d"',
            "threshold = 120.0", 'threshold_unit = "µg/m³"', "years_averaged = 3",
            f"by = {by}", ""],
    }
    fed = dict.fromkeys(k for i in range(len(gateways))
                        for k in (kpis_of(i) if kpis_of else kpis))
    for kpi in fed:
        lines += targets.get(kpi, [])
    lines += ["[report]",
              'limits = ["eu_2008_50", "eu_2024_2881", "who_aqg_2021/guideline_level"]']
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- readings for kpi replay
# A station's hourly readings, for the whole chain from the gateway's KPI engine on
# (benchmarks/report_replay.py, tests/platform/test_report_year.py).

REPLAY_KPIS = {  # KPI → its [[kpis]] entry in a gateway config (hourly readings of "aq-1")
    "pm10_day": ('source = "aq-1.pm10"', 'operator = "mean"', 'window = "1 d"'),
    "no2_1h": ('source = "aq-1.no2"', 'operator = "mean"', 'window = "1 h"'),
    "o3_max8h_day": ('source = "aq-1.o3"', 'operator = "daily_max_running_mean"',
                     'window = "1 d"', 'base = "1 h"', 'running_window = "8 h"'),
}
REPLAY_POINTS = {"pm10_day": "pm10", "no2_1h": "no2", "o3_max8h_day": "o3"}


def replay_config(gw: str, kpis: Iterable[str]) -> str:
    """A gateway config for ``kpi replay`` of ``kpis`` (of :data:`REPLAY_KPIS`): the engine's
    default validity, 75 % (a day 18 of 24 hours; 18 of 23, 19 of 25 on DST days)."""
    lines = ["[gateway]", f'id = "{gw}"', f'timezone = "{ZONE}"', ""]
    for kpi in kpis:
        lines += ["[[kpis]]", f'name = "{kpi}"', *REPLAY_KPIS[kpi], 'sample_interval = "1 h"',
                  'unit = "µg/m³"', ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Gap:
    """``hours`` hours lost in a block from the local hour ``first`` (of ``point``, or of
    every point when '')."""

    first: datetime
    hours: int
    point: str = ""


@dataclass(frozen=True)
class Readings:
    """How one station's hourly readings of a year are made: ``level`` moves its
    concentrations (0 … 1 across the city), ``missing`` is the share of hours lost at
    random, ``gaps`` blocks lost, ``keep_hours`` local dates of which only the first N hours
    are kept (and none lost at random), ``spikes`` the share of NO2 hours with a traffic
    peak over 200 µg/m³."""

    station: int
    points: tuple[str, ...] = ("pm10", "no2")
    level: float = 0.5
    missing: float = 0.03
    gaps: tuple[Gap, ...] = ()
    keep_hours: Mapping[date, int] = field(default_factory=dict)
    spikes: float = 0.0


def hourly_readings(spec: Readings, year: int, *, seed: int = 1
                    ) -> Iterator[tuple[datetime, str, float]]:
    """``(UTC hour, point, value)`` of the station's local calendar year, values to 0.01."""
    zone = ZoneInfo(ZONE)
    rng = random.Random(f"{seed}/{spec.station}/readings")
    moment = datetime(year, 1, 1, tzinfo=zone).astimezone(UTC)
    end = datetime(year + 1, 1, 1, tzinfo=zone).astimezone(UTC)
    gaps = [(g.first.astimezone(UTC), g.first.astimezone(UTC) + timedelta(hours=g.hours),
             g.point) for g in spec.gaps]
    day_shift: dict[date, tuple[float, float]] = {}
    hour_of_day: dict[date, int] = {}
    while moment < end:
        local = moment.astimezone(zone)
        today = local.date()
        if today not in day_shift:  # a day's weather moves all its hours (episodes)
            day_shift[today] = (rng.gauss(0, 11), rng.gauss(0, 14))
        index = hour_of_day[today] = hour_of_day.get(today, -1) + 1
        lost = rng.random() < spec.missing
        if today in spec.keep_hours:
            lost = index >= spec.keep_hours[today]
        season = math.cos(2 * math.pi * (local.timetuple().tm_yday - 15) / 365.25)
        sun = max(0.0, math.sin(math.pi * (local.hour - 6) / 12))
        pm_day, o3_day = day_shift[today]
        values = {
            "pm10": 17 + 22 * spec.level + 7 * season + pm_day + rng.gauss(0, 6),
            "no2": (12 + 20 * spec.level + 8 * season + 10 * sun + rng.gauss(0, 7)
                    + (190 + 40 * rng.random() if rng.random() < spec.spikes else 0.0)),
            "o3": 64 - 20 * spec.level - 28 * season + 30 * sun + o3_day + rng.gauss(0, 6),
        }
        for point in spec.points:
            if lost or any(a <= moment < b and p in ("", point) for a, b, p in gaps):
                continue
            yield moment, point, round(max(values[point], 1.0), 2)
        moment += timedelta(hours=1)


def write_readings(path: Path, readings: Iterable[tuple[datetime, str, float]]) -> int:
    """The readings as ``kpi replay``'s CSV input (device "aq-1"); how many were written."""
    rows = 0
    with path.open("w", encoding="utf-8") as out:
        out.write("time,device,point,value\n")
        for moment, point, value in readings:
            out.write(f"{moment.isoformat()},aq-1,{point},{value}\n")
            rows += 1
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.tools.city_data",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sink", required=True, help="sqlite:///file.db or postgresql://…")
    parser.add_argument("--city", required=True, type=Path, help="the city config to write")
    parser.add_argument("--stations", type=int, default=20)
    parser.add_argument("--from", dest="first", type=date.fromisoformat, default="2023-01-01")
    parser.add_argument("--to", dest="last", type=date.fromisoformat, default="2025-12-31")
    parser.add_argument("--kpis", default=",".join(KPIS),
                        help="comma-separated, of " + ", ".join(KPIS))
    args = parser.parse_args(argv)
    kpis = tuple(k for k in args.kpis.split(",") if k)
    unknown = [k for k in kpis if k not in KPIS]
    if unknown:
        parser.error(f"unknown KPI {unknown[0]!r}; known: {', '.join(KPIS)}")
    data = generate(args.sink, args.stations, args.first, args.last, kpis=kpis)
    args.city.write_text(city_toml(data.gateways, kpis=kpis), encoding="utf-8")
    print(f"{data.windows} KPI windows of {len(data.gateways)} stations stored in {args.sink}; "
          f"city config {args.city}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
