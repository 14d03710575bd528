"""The agent's memory through a 400-day forward step of its clock, with two 1-min KPIs.

One simulated ``ssc-demo-meter`` polled every second by ``ssc-agent run`` with two 1-min KPIs,
its wall clock faked by libfaketime (``FAKETIME_DONT_FAKE_MONOTONIC=1``; the offset is re-read
from a file at every call, so rewriting it steps the running agent). The agent starts
``--step`` back (400 days), runs ``--before`` seconds on that clock (a few windows close), is
stepped to real time and runs ``--after`` seconds more. Its RSS is sampled with psutil every
0.1 s. No broker is needed: the agent seals and stores batches while it cannot connect.

Prints the peak RSS before and after the step, the batches stored, the pending rows left and
what the log says about encoding; then starts this checkout's agent on the store left behind
(real clock, ``--restart`` seconds) and prints its peak RSS: a start on a store with a huge
pending backlog. Asserts nothing. ``--checkout DIR`` runs the agent code of
another checkout of the repository (e.g. a ``git worktree`` of an older commit) with this
interpreter, for a before/after comparison. Needs libfaketime (``apt-get install faketime
libfaketime``).

    .venv/bin/python benchmarks/kpi_clock_step.py
    .venv/bin/python benchmarks/kpi_clock_step.py --checkout /tmp/old --after 60
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos.harness import MeterFleet, write_agent_config  # noqa: E402
from tests.conftest import free_port  # noqa: E402

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
KPIS = """
[[kpis]]
name = "voltage_1m"
source = "meter-1.voltage_l1"
operator = "mean"
window = "1 min"
sample_interval = "1 s"

[[kpis]]
name = "current_1m"
source = "meter-1.current_l1"
operator = "max"
window = "1 min"
sample_interval = "1 s"
"""
MIB = 1024 * 1024


def set_offset(clock_file: Path, offset: str) -> None:
    tmp = clock_file.with_name(clock_file.name + ".tmp")
    tmp.write_text(offset + "\n")
    tmp.replace(clock_file)


def sample_until(proc: psutil.Process, until: float) -> int:
    """Peak RSS (bytes) of ``proc`` until the monotonic time ``until`` (or until it exits)."""
    peak = 0
    while time.monotonic() < until:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    return peak


def store_figures(db: Path) -> tuple[int, int, int]:
    """(stored batches, their payload bytes, pending rows) of the agent's store."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        batches, size = conn.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM batches").fetchone()
        pending = conn.execute("SELECT count(*) FROM pending").fetchone()[0]
    finally:
        conn.close()
    return int(batches), int(size), int(pending)


def run(checkout: Path, step: str, before: float, after: float, workdir: Path,
        restart_for: float) -> None:
    with MeterFleet([1000]) as fleet:
        config = write_agent_config(workdir / "agent.toml", gw="gw-kpi-step",
                                    data_dir=workdir / "data",
                                    broker_url=f"mqtt://127.0.0.1:{free_port()}",
                                    devices=fleet.devices,
                                    gateway={"kpi_lateness": "2 s", "timezone": "UTC"})
        config.write_text(config.read_text() + KPIS)
        clock_file = workdir / "faketime"
        set_offset(clock_file, step)
        log = workdir / "agent.log"
        env = dict(os.environ, LD_PRELOAD=str(LIBFAKETIME), FAKETIME_DONT_FAKE_MONOTONIC="1",
                   FAKETIME_NO_CACHE="1", FAKETIME_TIMESTAMP_FILE=str(clock_file))
        with log.open("ab") as err:
            popen = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "--log-json", "run", "--config",
                 str(config)], cwd=checkout, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            proc = psutil.Process(popen.pid)
            peak_before = sample_until(proc, time.monotonic() + before)
            set_offset(clock_file, "+0")
            peak_after = sample_until(proc, time.monotonic() + after)
            alive = popen.poll() is None
            rss_end = proc.memory_info().rss if alive else 0
        finally:
            if popen.poll() is None:
                popen.kill()
            popen.wait()
        batches, size, pending = store_figures(workdir / "data" / "buffer.db")
        restart_peak, restart_pending, restart_batches, set_aside, restart_alive = restart(
            config, workdir, restart_for)
        events = []
        for line in log.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line).get("event"))
            except ValueError:
                continue
    failed = sum(1 for e in events if e == "batch_encode_failed")
    steps = sum(1 for e in events if e == "kpi_clock_step")
    print(f"checkout {checkout}")
    print(f"  peak RSS before the step ({before:.0f} s): {peak_before / MIB:.1f} MiB")
    print(f"  peak RSS after the step ({after:.0f} s):  {peak_after / MIB:.1f} MiB"
          f"{'' if alive else ' (the agent exited)'}")
    print(f"  RSS at the end: {rss_end / MIB:.1f} MiB")
    print(f"  stored batches {batches} ({size / MIB:.2f} MiB), pending rows {pending}, "
          f"batch_encode_failed {failed}, kpi_clock_step {steps}")
    print(f"  then this checkout's agent started on that store ({restart_for:.0f} s, real "
          f"clock): peak RSS {restart_peak / MIB:.1f} MiB, pending rows left {restart_pending}, "
          f"stored batches {restart_batches}, set aside {set_aside}"
          f"{'' if restart_alive else ', the agent exited'}", flush=True)


def restart(config: Path, workdir: Path, seconds: float,
            ) -> tuple[int, int, int, int, bool]:
    """Start this checkout's agent (real clock) on the store left behind: (peak RSS, pending
    rows and stored batches at the end, rows set aside, still running)."""
    with (workdir / "restart.log").open("ab") as err:
        popen = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--log-json", "run", "--config", str(config)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        peak = sample_until(psutil.Process(popen.pid), time.monotonic() + seconds)
        alive = popen.poll() is None
    finally:
        if popen.poll() is None:
            popen.terminate()
        popen.wait()
    batches, _, pending = store_figures(workdir / "data" / "buffer.db")
    set_aside = (workdir / "restart.log").read_text(errors="replace").count('"store_set_aside"')
    return peak, pending, batches, set_aside, alive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--step", default="-400d")
    parser.add_argument("--before", type=float, default=70.0)
    parser.add_argument("--after", type=float, default=45.0)
    parser.add_argument("--restart", type=float, default=20.0,
                        help="seconds this checkout's agent then runs on the store left")
    args = parser.parse_args()
    if not LIBFAKETIME.exists():
        sys.exit(f"libfaketime is not installed ({LIBFAKETIME}): "
                 "apt-get install faketime libfaketime")
    with tempfile.TemporaryDirectory(prefix="ssc-kpi-step-") as tmp:
        run(args.checkout.resolve(), args.step, args.before, args.after, Path(tmp),
            args.restart)


if __name__ == "__main__":
    main()
