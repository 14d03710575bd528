"""A city's year through the whole chain, then its report (docs/reports.md): hourly PM10 and
NO2 readings of 20 stations for 2025, each station's run through ``ssc-agent kpi replay``
(the gateway's KPI engine: daily PM10 means valid with 18 of 24 hours, hourly NO2; readings
made by ``agent.tools.city_data.hourly_readings``, as tests/platform/test_report_year.py's), its
windows published as wire batches to a mosquitto on a free loopback port, stored by
``ssc-agent receive`` into a SQLite sink, and ``ssc-agent report`` run on it.

Prints the time of each stage, and how many stations' PM10 annual mean and NO2 hours over
200 µg/m³ in the report equal the ones worked out here from the replay's own output. Asserts
nothing.

    .venv/bin/python benchmarks/report_replay.py                 # 20 stations, 2025
    .venv/bin/python benchmarks/report_replay.py --stations 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.tools.city_data import (  # noqa: E402
    Readings,
    city_toml,
    hourly_readings,
    replay_config,
    write_readings,
)
from agent.wire import Batch, encode_batch  # noqa: E402
from tests.conftest import Mosquitto, free_port  # noqa: E402

WINDOWS_PER_BATCH = 500
KPIS = ("pm10_day", "no2_1h")


def replayed(path: Path) -> list[dict[str, Any]]:
    windows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        window = json.loads(line)
        for key in ("start", "end"):
            window[key] = int(datetime.fromisoformat(window[key]).timestamp() * 1000)
        windows.append(window)
    return windows


async def publish(port: int, batches: list[Batch]) -> None:
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-gateways") as client:
        for batch in batches:
            await client.publish(f"ssc/v1/{batch.gw}/batch", encode_batch(batch), qos=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=20)
    parser.add_argument("--year", type=int, default=2025)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ssc-report-replay-"))
    gateways = tuple(f"gw-aq-{i + 1:03d}" for i in range(args.stations))
    try:
        started = time.monotonic()
        by_gw: dict[str, list[dict[str, Any]]] = {}
        rows = 0
        for index, gw in enumerate(gateways):
            csv_path, config = work / f"{gw}.csv", work / f"{gw}.toml"
            # the stations' levels spread over the city, about 3 % of the hours missing
            spec = Readings(index, level=index / max(args.stations - 1, 1), spikes=0.0003 * index)
            rows += write_readings(csv_path, hourly_readings(spec, args.year))
            config.write_text(replay_config(gw, KPIS), encoding="utf-8")
            subprocess.run([sys.executable, "-m", "agent.cli", "kpi", "replay", "--config",
                            str(config), "--input", str(csv_path), "--output",
                            str(work / f"{gw}.jsonl")], check=True, cwd=ROOT,
                           stderr=subprocess.DEVNULL)
            by_gw[gw] = replayed(work / f"{gw}.jsonl")
        total = sum(len(w) for w in by_gw.values())
        print(f"kpi replay: {rows} readings of {args.stations} stations → {total} windows in "
              f"{time.monotonic() - started:.1f} s")
        broker = Mosquitto(work, free_port())
        broker.start()
        sink = work / "received.db"
        log = work / "receiver.log"
        with log.open("ab") as err:
            receiver = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "--log-json", "receive", "--broker",
                 broker.url, "--sink", f"sqlite:///{sink}", "--client-id", "bench"],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        try:
            while "mqtt_subscribed" not in log.read_text():
                time.sleep(0.05)
            started = time.monotonic()
            batches = [
                Batch(gw, 1, seq + 1, windows[min(i + WINDOWS_PER_BATCH, len(windows)) - 1]["end"],
                      (), tuple(windows[i:i + WINDOWS_PER_BATCH]))
                for gw, windows in by_gw.items()
                for seq, i in enumerate(range(0, len(windows), WINDOWS_PER_BATCH))]
            asyncio.run(publish(broker.port, batches))

            def stored() -> int:
                if not sink.exists():
                    return 0
                with sqlite3.connect(sink) as conn:
                    return int(conn.execute("SELECT count(*) FROM aggregates").fetchone()[0])

            while stored() < total:
                time.sleep(0.2)
            print(f"published and received: {len(batches)} batches, {total} windows stored in "
                  f"{time.monotonic() - started:.1f} s")
        finally:
            receiver.terminate()
            receiver.wait(30)
            broker.terminate()
        city = work / "city.toml"
        city.write_text(city_toml(gateways, kpis=KPIS), encoding="utf-8")
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", "report", "--sink", f"sqlite:///{sink}",
             "--city", str(city), "--from", f"{args.year}-01-01", "--to", f"{args.year}-12-31",
             "--format", "json"], check=True, cwd=ROOT, capture_output=True, text=True)
        print(f"report: {time.monotonic() - started:.1f} s")
        doc = json.loads(done.stdout)
        sections = {s["id"]: {st["id"]: st for st in s["stations"]} for s in doc["indicators"]}
        agree_mean = agree_hours = 0
        for index, gw in enumerate(gateways):
            site = f"station_{index + 1:03d}"
            days = [w["value"] for w in by_gw[gw] if w["kpi"] == "pm10_day" and w["valid"]]
            hours = [w["value"] for w in by_gw[gw] if w["kpi"] == "no2_1h" and w["valid"]]
            mean = sections["pm10_annual_mean"][site]["years"][0]["figure"]
            if mean["valid"] and math.isclose(mean["value"], math.fsum(days) / len(days)):
                agree_mean += 1
            check = next(c for c in sections["no2_hours_over"][site]["years"][0]["checks"]
                         if c["limit"].startswith("eu_2008_50") and c["what"].startswith("hours"))
            if check["figure"]["value"] == sum(1 for v in hours if v > 200):
                agree_hours += 1
        print(f"PM10 annual mean equal to the replay's: {agree_mean} of {args.stations} "
              f"stations; NO2 hours over 200 equal: {agree_hours} of {args.stations}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
