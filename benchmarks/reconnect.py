"""Reconnect after a broker outage: seconds from the broker's return to flowing readings.

For 1 and for 10 simulated ``ssc-demo-meter`` meters polled every second: a real mosquitto
(with persistence, as a platform runs it), ``ssc-agent receive`` into a SQLite sink and
``ssc-agent run`` as subprocesses, with the agent's default ``[uplink]`` settings. Once
readings flow, the broker is SIGKILLed, kept down for ``--outage`` seconds (long enough for a
backoff to grow), and started again. Measured from the moment the restarted broker logs that
it runs:

- ``first``: the first reading stored at the receiver after the return (the backlog or live);
- ``live``: the first reading stored whose slot time is after the return (polled after it);
- ``agent``: when the agent logged ``uplink_restored``.

Prints one line per trial and the median per device count; asserts nothing.

    .venv/bin/python benchmarks/reconnect.py                    # 3 trials each, ~10 min
    .venv/bin/python benchmarks/reconnect.py --trials 1 --outage 20 --devices 1
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos.harness import (  # noqa: E402  # the chaos suite's real processes
    AgentProcess,
    MeterFleet,
    ReceiverProcess,
    persistent_broker_config,
    write_agent_config,
)
from tests.conftest import Mosquitto, free_port  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

GW = "gw-reconnect"


def _first_stored_after(sink: Path, received_after: int, slot_after_ms: int | None,
                        ) -> bool:
    """Whether the sink holds a reading beyond ``received_after`` rows (and, with
    ``slot_after_ms``, one whose slot is after it)."""
    try:
        conn = sqlite3.connect(f"file:{sink}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return False
    try:
        if slot_after_ms is None:
            n = conn.execute("SELECT count(*) FROM readings WHERE gw = ?", (GW,)).fetchone()[0]
            return int(n) > received_after
        row = conn.execute("SELECT 1 FROM readings WHERE gw = ? AND t > ? LIMIT 1",
                           (GW, slot_after_ms)).fetchone()
        return row is not None
    except sqlite3.Error:
        return False
    finally:
        conn.close()


def trial(n_devices: int, outage: float, workdir: Path) -> tuple[float, float, float]:
    """One outage; returns seconds to (first, live, agent) after the broker's return."""
    broker = Mosquitto(workdir, free_port(), persistent_broker_config(workdir / "broker-db"))
    broker.start()
    rx = ReceiverProcess(broker.url, workdir / "received.db", workdir / "receiver.log")
    agent: AgentProcess | None = None
    try:
        offset = len(broker.log_text())
        rx.start()
        assert wait_until(lambda: "Saving in-memory database" in broker.log_text()[offset:], 10)
        with MeterFleet([1000] * n_devices) as fleet:
            config = write_agent_config(
                workdir / "agent.toml", gw=GW, data_dir=workdir / "data",
                broker_url=broker.url, devices=fleet.devices,
                # the agent's defaults, not the chaos suite's short ones
                uplink={"batch_max_age": "10 s", "publish_timeout": "20 s",
                        "keepalive": "30 s"})
            agent = AgentProcess(config, workdir / "agent.log")
            agent.start()
            agent.wait_started(1)
            assert wait_until(lambda: rx.count(GW) > 0, 60), agent.log_text()[-2000:]
            broker.kill()
            time.sleep(outage)
            broker.start()
            back = time.time()
            stored = rx.count(GW)
            first = live = restored = float("nan")
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and (live != live or first != first):
                now = time.time()
                if first != first and _first_stored_after(rx.sink, stored, None):
                    first = now - back
                if live != live and _first_stored_after(rx.sink, 0, int(back * 1000)):
                    live = now - back
                time.sleep(0.05)
            for event in agent.events("uplink_restored"):
                at = datetime.fromisoformat(event["timestamp"]).timestamp()
                if at >= back - 1:
                    restored = at - back
                    break
            agent.terminate()
    finally:
        if agent is not None and agent.alive:
            agent.kill()
        if rx.alive:
            rx.terminate()
        broker.terminate()
    return first, live, restored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--outage", type=float, default=30.0,
                        help="seconds the broker stays down (default 30)")
    args = parser.parse_args()
    for n in args.devices:
        results = []
        for i in range(args.trials):
            with tempfile.TemporaryDirectory(prefix="ssc-reconnect-") as tmp:
                first, live, agent = trial(n, args.outage, Path(tmp))
            results.append((first, live, agent))
            print(f"devices={n} trial={i + 1} outage={args.outage:.0f}s: first reading "
                  f"{first:.1f} s, first live reading {live:.1f} s, agent reconnected "
                  f"{agent:.1f} s after the broker's return", flush=True)
        print(f"devices={n} median: first reading "
              f"{statistics.median(r[0] for r in results):.1f} s, first live reading "
              f"{statistics.median(r[1] for r in results):.1f} s, agent reconnected "
              f"{statistics.median(r[2] for r in results):.1f} s", flush=True)


if __name__ == "__main__":
    main()
