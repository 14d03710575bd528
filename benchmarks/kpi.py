"""KPI engine benchmarks: (1) readings/s for 1,000 series × 5 operators, (2) a year of replay.

Run: ``.venv/bin/python benchmarks/kpi.py [--series 1000] [--minutes 240] [--days 365]``.
(1) generates readings in-process and times the engine only; (2) writes one year of 1-minute
data from one sensor (525,600 rows) to a temporary CSV and times ``replay`` on it.
"""

from __future__ import annotations

import argparse
import io
import math
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from agent.config import AgentConfig, config_from_dict
from agent.kpi.calendar import to_epoch_ms
from agent.kpi.engine import Engine
from agent.kpi.replay import replay

ZONE = "Europe/Berlin"
MINUTE_MS = 60_000


def _config(kpis: list[dict[str, object]]) -> AgentConfig:
    data = {"gateway": {"id": "bench", "timezone": ZONE}, "kpis": kpis}
    return config_from_dict(data, require_uplink=False, check_sources=False)


def engine_throughput(series: int, minutes: int) -> None:
    kpis: list[dict[str, object]] = []
    for i in range(series):
        source = f"dev{i}.p"
        common = {"source": source, "sample_interval": "1 min"}
        kpis += [
            {"name": f"s{i}_mean15", "operator": "mean", "window": "15 min", **common},
            {"name": f"s{i}_max1h", "operator": "max", "window": "1 h", **common},
            {"name": f"s{i}_leq1h", "operator": "energetic_mean", "window": "1 h", **common},
            {"name": f"s{i}_twm1h", "operator": "time_weighted_mean", "window": "1 h", **common},
            {
                "name": f"s{i}_run8h",
                "operator": "running_mean",
                "window": "8 h",
                "base": "1 h",
                **common,
            },
        ]
    engine = Engine.from_config(_config(kpis))
    start = to_epoch_ms(datetime(2025, 1, 15, tzinfo=ZoneInfo(ZONE)))
    devices = [f"dev{i}" for i in range(series)]
    readings = [
        (device, start + m * MINUTE_MS, 40.0 + 10.0 * math.sin(m / 30.0 + d))
        for m in range(minutes)
        for d, device in enumerate(devices)
    ]
    feed = engine.feed_value
    outputs = 0
    began = time.perf_counter()
    for device, t, value in readings:
        outputs += len(feed(device, "p", t, value))
    outputs += len(engine.finish())
    elapsed = time.perf_counter() - began
    print(
        f"engine: {series} series x 5 operators ({len(kpis)} KPIs), {len(readings):,} readings "
        f"in {elapsed:.2f} s = {len(readings) / elapsed:,.0f} readings/s "
        f"({len(readings) * 5 / elapsed:,.0f} operator updates/s), {outputs:,} outputs"
    )


def replay_year(days: int) -> None:
    config = _config(
        [
            {
                "name": "pm10_1h",
                "source": "aq.pm10",
                "operator": "mean",
                "window": "1 h",
                "sample_interval": "1 min",
            },
            {
                "name": "pm10_day",
                "source": "aq.pm10",
                "operator": "mean",
                "window": "1 d",
                "base": "1 h",
                "sample_interval": "1 min",
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
                "name": "pm10_max8h",
                "source": "aq.pm10",
                "operator": "daily_max_running_mean",
                "window": "1 d",
                "base": "1 h",
                "running_window": "8 h",
                "sample_interval": "1 min",
            },
        ]
    )
    tz = ZoneInfo(ZONE)
    first = datetime(2025, 1, 1, tzinfo=tz).astimezone(UTC)
    rows = days * 1440
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "year.csv"
        with path.open("w", encoding="utf-8", newline="") as out:
            out.write("time,device,point,value\n")
            for m in range(rows):
                moment = (first + timedelta(minutes=m)).astimezone(tz).isoformat()
                value = "" if m % 97 == 0 else f"{35.0 + 20.0 * math.sin(m / 700.0):.2f}"
                out.write(f"{moment},aq,pm10,{value}\n")
        size = path.stat().st_size
        sink = io.StringIO()
        began = time.perf_counter()
        with path.open(encoding="utf-8", newline="") as source:
            code = replay(config, source, sink, progress=False)
        elapsed = time.perf_counter() - began
    lines = sink.getvalue().count("\n")
    print(
        f"replay: {rows:,} rows ({size / 1e6:.1f} MB CSV), 4 KPIs, exit {code}, {lines:,} outputs "
        f"in {elapsed:.2f} s = {rows / elapsed:,.0f} rows/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=240, help="1-minute readings per series")
    parser.add_argument("--days", type=int, default=365, help="days of 1-minute replay data")
    args = parser.parse_args()
    engine_throughput(args.series, args.minutes)
    replay_year(args.days)


if __name__ == "__main__":
    main()
