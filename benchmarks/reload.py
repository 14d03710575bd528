"""Start-up and reload: time to the first reading at the broker, reload time, polls missed.

A real mosquitto, simulated ``ssc-demo-meter`` meters (``tests.chaos.harness.MeterFleet``),
``ssc-agent receive`` into a SQLite sink and ``ssc-agent run`` as subprocesses:

1. **start**: from spawning ``ssc-agent run`` to the first batch on ``{prefix}/{gw}/batch``
   (a ``mosquitto_sub`` started before the agent stamps its arrival), with the agent's
   ``agent_started`` line on the way; the devices poll every second, batches are sealed after
   ``batch_max_age`` = 1 s.
2. **reload**: ``--reloads`` SIGHUPs, each to a config that changes one device's interval, and
   removes or adds another, while device ``meter-1`` (polled every ``--interval-ms``) stays the
   same. Reload time is from the SIGHUP to the ``config_reloaded`` line (log timestamps), and
   the ``seconds`` the agent measured itself (from the file read to the new config running).
3. **missed**: polls of ``meter-1`` missing at the receiver between its first and last
   reading (its grid is epoch-aligned: every slot in between is expected). Must be 0.

Prints figures, asserts nothing.

    .venv/bin/python benchmarks/reload.py                  # ~1 min
    .venv/bin/python benchmarks/reload.py --reloads 10 --interval-ms 100
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos.harness import (  # noqa: E402  # the chaos suite's real processes
    AgentProcess,
    Device,
    MeterFleet,
    ReceiverProcess,
    last_sealed_seq,
    write_agent_config,
)
from tests.conftest import Mosquitto, free_port  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

GW = "gw-reload-bench"
POINT = "power_total"


def _epoch(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def _slots(sink: Path, device: str) -> list[int]:
    conn = sqlite3.connect(f"file:{sink}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT t FROM readings WHERE gw = ? AND dev = ? AND pt = ? "
                            "ORDER BY t", (GW, device, POINT)).fetchall()
    finally:
        conn.close()
    return [int(t) for (t,) in rows]


def _wait_reloaded(agent: AgentProcess, count: int) -> dict[str, object]:
    assert wait_until(lambda: len(agent.events("config_reloaded")) >= count, 30)
    return agent.events("config_reloaded")[count - 1]


def _config(path: Path, workdir: Path, broker: str, devices: list[Device]) -> None:
    write_agent_config(path, gw=GW, data_dir=workdir / "data", broker_url=broker,
                       devices=devices,
                       uplink={"batch_max_age": "1 s", "flush_interval": "200 ms"})


def run(reloads: int, interval_ms: int, workdir: Path) -> None:
    broker = Mosquitto(workdir, free_port())
    broker.start()
    sink = workdir / "sink.db"
    rx = ReceiverProcess(broker.url, sink, workdir / "receiver.log", client_id="reload-bench")
    agent: AgentProcess | None = None
    try:
        rx.start()
        with MeterFleet([interval_ms, 1000, 1000, 1000]) as fleet:
            a, b, c, d = fleet.devices
            config = workdir / "agent.toml"
            _config(config, workdir, broker.url, [a, b, c])
            sub = subprocess.Popen(
                ["mosquitto_sub", "-p", str(broker.port), "-h", "127.0.0.1", "-C", "1",
                 "-t", f"ssc/v1/{GW}/batch", "-F", "%U"],
                stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)  # the subscriber connects before the agent starts
            agent = AgentProcess(config, workdir / "agent.log")
            spawned = time.time()
            agent.start()
            out, _ = sub.communicate(timeout=60)
            first_batch = float(out.split()[0])
            started = _epoch(agent.wait_started(1))
            print(f"start: agent_started {started - spawned:.2f} s after spawn, first batch "
                  f"at the broker {first_batch - spawned:.2f} s after spawn")

            assert wait_until(lambda: len(_slots(sink, a.name)) >= 5, 30)
            took: list[float] = []
            inside: list[float] = []
            for i in range(reloads):
                # B alternates 1 s / 2 s; C and D take turns
                b_now = Device(b.name, b.port, 2000 if i % 2 == 0 else 1000)
                _config(config, workdir, broker.url, [a, b_now, d if i % 2 == 0 else c])
                assert agent.proc is not None
                sent = time.time()
                os.kill(agent.proc.pid, signal.SIGHUP)
                event = _wait_reloaded(agent, i + 1)
                took.append(_epoch(event) - sent)
                inside.append(float(str(event["seconds"])))
                time.sleep(1.5)  # polls between reloads: the quiet time is the input
            agent.terminate()
            rx.wait_for_seq(GW, last_sealed_seq(workdir / "data"))
            slots = _slots(sink, a.name)
            expected = range(slots[0], slots[-1] + 1, interval_ms)
            missed = len(set(expected) - set(slots))
            rejected = len(agent.events("config_rejected"))
            print(f"reload: {reloads} SIGHUPs ({rejected} rejected); SIGHUP→config_reloaded "
                  f"median {statistics.median(took) * 1000:.0f} ms, max {max(took) * 1000:.0f} "
                  f"ms; agent's own figure median {statistics.median(inside) * 1000:.1f} ms, "
                  f"max {max(inside) * 1000:.1f} ms")
            print(f"missed: {missed} of {len(expected)} polls of {a.name} (every "
                  f"{interval_ms} ms, unchanged) over {len(expected) * interval_ms / 1000:.0f} "
                  f"s with {reloads} reloads")
    finally:
        if agent is not None and agent.alive:
            agent.terminate()
        if rx.alive:
            rx.terminate()
        broker.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--interval-ms", type=int, default=200,
                        help="poll interval of the unchanged device (default 200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ssc-reload-bench-") as tmp:
        run(args.reloads, args.interval_ms, Path(tmp))


if __name__ == "__main__":
    main()
