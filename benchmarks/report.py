"""``ssc-agent report``: time and peak memory to build the report of a city of 100 stations
with one year of hourly windows each (docs/reports.md §8).

Stores the stations' generated KPI windows into a SQLite sink through its ingest path
(``python -m agent.tools.city_data``: hourly NO2 and daily PM10, PM2.5 and O3 for the year,
~985,000 windows for 100 stations; kept in ``--work`` between runs, as its storing is not what
is measured), then runs ``ssc-agent report`` as a child process for each format and prints its
wall time, CPU time, peak RSS (the child's ``ru_maxrss``) and output size.

Prints figures, asserts nothing.

    .venv/bin/python benchmarks/report.py                            # 100 stations, 2025
    .venv/bin/python benchmarks/report.py --stations 20 --formats html
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=100)
    parser.add_argument("--year", type=int, default=2025)
    parser.add_argument("--formats", default="html,json,csv")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ssc-report-bench"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    db = args.work / f"city-{args.stations}-{args.year}.db"
    city = args.work / f"city-{args.stations}.toml"
    first, last = f"{args.year}-01-01", f"{args.year}-12-31"
    if not db.exists() or not city.exists():
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "agent.tools.city_data", "--sink",
                        f"sqlite:///{db}", "--city", str(city), "--stations",
                        str(args.stations), "--from", first, "--to", last], check=True,
                       cwd=ROOT)
        print(f"stored in {time.monotonic() - started:.1f} s; sink {db.stat().st_size / 1e6:.0f}"
              " MB")
    for fmt in args.formats.split(","):
        out = args.work / f"report.{fmt}"
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, "-m", "agent.cli", "report", "--sink",
                                  f"sqlite:///{db}", "--city", str(city), "--from", first,
                                  "--to", last, "--format", fmt, "--out", str(out)], cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own usage and peak RSS
        wall = time.monotonic() - started
        cpu = usage.ru_utime + usage.ru_stime
        print(f"{args.stations} stations x 1 year, --format {fmt}: exit {status >> 8}, "
              f"wall {wall:.1f} s, CPU {cpu:.1f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MiB, "
              f"output {out.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
