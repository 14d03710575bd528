"""Start-up under systemd: seconds from starting ``ssc-agent run`` to its ``READY=1``.

The benchmark binds a notify socket as systemd does, starts the agent with ``NOTIFY_SOCKET``
set, and times the datagram that carries ``READY=1`` (the buffer is open and the pollers, the
flush loop and the uplink run; the broker need not be reachable). The devices are simulated
``ssc-demo-meter`` meters served by this process (the chaos suite's ``MeterFleet``). Prints
one line per run and the median; asserts nothing.

    .venv/bin/python benchmarks/ready.py                  # 7 runs, 1 device
    .venv/bin/python benchmarks/ready.py --runs 3 --devices 100
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.logs import configure_logging  # noqa: E402
from tests.chaos.harness import MeterFleet, write_agent_config  # noqa: E402
from tests.conftest import free_port  # noqa: E402


def one_run(config: Path, run: int) -> float:
    """Seconds from the agent's start to its READY=1."""
    name = f"ssc-ready-bench-{os.getpid()}-{run}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(120)
    try:
        started = time.monotonic()
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(config)], cwd=ROOT,
            env=dict(os.environ, NOTIFY_SOCKET="@" + name), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while b"READY=1" not in sock.recv(4096).split(b"\n"):
                pass
            return time.monotonic() - started
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
    finally:
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()
    configure_logging("warning")  # the simulated meters' own lines
    with tempfile.TemporaryDirectory() as tmp, MeterFleet([1000] * args.devices) as fleet:
        config = write_agent_config(
            Path(tmp) / "agent.toml", gw="gw-ready", data_dir=Path(tmp) / "data",
            broker_url=f"mqtt://127.0.0.1:{free_port()}", devices=fleet.devices)
        times = []
        for run in range(args.runs):
            seconds = one_run(config, run)
            times.append(seconds)
            print(f"run {run + 1}: READY=1 after {seconds:.2f} s", flush=True)
    print(f"devices {args.devices}: median {statistics.median(times):.2f} s, "
          f"min {min(times):.2f} s, max {max(times):.2f} s")


if __name__ == "__main__":
    main()
