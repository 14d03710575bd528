"""Footprint of the agent at 1,000 readings/s: peak RSS, CPU % of one core, bytes per reading.

Runs ``ssc-agent run`` as a subprocess against 50 simulated Modbus TCP meters × 20 points
polled every second (in a second subprocess, so their CPU is not counted) and a local
mosquitto, subscribes to the batches itself, and prints the figures.

    .venv/bin/python benchmarks/footprint.py --duration 60

``--sweep 100,500,1000`` runs it once per device count (each device its own TCP connection)
and prints RSS, RSS per 100 devices and open file descriptors for each: what sizes
``MemoryMax=`` and ``LimitNOFILE=`` in deploy/ssc-agent.service (deploy/README.md).

    .venv/bin/python benchmarks/footprint.py --sweep 100,500,1000 --interval "10 s"

The figures that matter are those of a base install (no test/dev extras: ``rich``, which the
``demo`` extra brings, is imported by structlog when present). ``--agent`` runs the agent of
another environment while this one (with psutil) measures::

    python3 -m venv /tmp/base && /tmp/base/bin/pip install .
    .venv/bin/python benchmarks/footprint.py --agent /tmp/base/bin/ssc-agent
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.endpoints import parse_broker_url
from agent.mqtt import MqttSettings, subscribe
from agent.tools.demo import free_port, free_ports
from agent.wire import decode_batch

ROOT = Path(__file__).resolve().parent.parent


def start_mosquitto(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    conf = workdir / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"{user}listener {port} 127.0.0.1\nallow_anonymous true\n"
                    "persistence false\nmax_queued_messages 0\n")
    logpath = workdir / "mosquitto.log"
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                            stdout=logpath.open("ab"), stderr=subprocess.STDOUT)
    for _ in range(250):
        if " running" in logpath.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise SystemExit(f"mosquitto did not start: {logpath.read_text(errors='replace')}")


async def serve_meters(ports: list[int]) -> None:
    from agent.fdlimit import raise_open_files_limit
    from agent.logs import configure_logging
    from agent.profiles import load_profile
    from drivers.modbus.simulator import serve_many

    configure_logging("warning")
    raise_open_files_limit()  # a listening and an accepted socket per meter

    fleet = await serve_many({1: load_profile("ssc-demo-meter")}, "127.0.0.1", ports)
    print("serving", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fleet.stop()


def config_text(data_dir: Path, broker_port: int, ports: list[int], interval: str) -> str:
    devices = "".join(
        f'\n[[devices]]\nname = "meter-{i:02d}"\ndriver = "modbus"\n'
        f'endpoint = "tcp://127.0.0.1:{p}"\nprofile = "ssc-demo-meter"\n'
        f'interval = "{interval}"\n'
        for i, p in enumerate(ports)
    )
    return (f'[gateway]\nid = "gw-bench"\ndata_dir = "{data_dir}"\nlog_level = "warning"\n\n'
            f'[uplink]\nbroker = "mqtt://127.0.0.1:{broker_port}"\nbatch_max_age = "10 s"\n'
            f"{devices}")


@dataclass
class Figures:
    devices: int
    peak_rss: int
    rss_end: int
    uss: int
    fds: int
    connected: int


async def measure(args: argparse.Namespace, devices: int) -> Figures:
    workdir = Path(tempfile.mkdtemp(prefix="ssc-footprint-"))
    broker_port = free_port()
    ports = free_ports(devices)
    broker = start_mosquitto(workdir, broker_port)
    meters = subprocess.Popen([sys.executable, __file__, "--serve", ",".join(map(str, ports))],
                              stdout=subprocess.PIPE, cwd=ROOT)
    assert meters.stdout is not None
    if meters.stdout.readline().strip() != b"serving":
        raise SystemExit("the simulated meters did not start")
    config = workdir / "agent.toml"
    config.write_text(config_text(workdir / "data", broker_port, ports, args.interval))
    payload_bytes = 0
    readings = 0
    bad = 0
    batches = 0

    async def receive() -> None:
        nonlocal payload_bytes, readings, batches, bad
        settings = MqttSettings(parse_broker_url(f"mqtt://127.0.0.1:{broker_port}"),
                                client_id="footprint-bench")
        async for _topic, payload in subscribe(settings, ["ssc/v1/+/batch"], clean_session=True):
            batch = decode_batch(payload)
            batches += 1
            payload_bytes += len(payload)
            for s in batch.series:
                readings += len(s.v)
                bad += sum(1 for q in s.q if q != 0)

    receiver = asyncio.create_task(receive())
    await asyncio.sleep(0.5)
    agent_log = (workdir / "agent.log").open("wb")
    agent = subprocess.Popen([args.agent, "run", "--config", str(config)], stderr=agent_log,
                             cwd=ROOT)
    proc = psutil.Process(agent.pid)
    peak = 0
    # Start-up, sampled apart from the measured window: what the agent holds 1 s after its
    # launch (imports, config, store, pollers) and its peak while warming up.
    startup: list[tuple[float, int]] = []
    launched = time.monotonic()
    while (since := time.monotonic() - launched) < args.warmup:
        startup.append((since, proc.memory_info().rss))
        await asyncio.sleep(0.25)
    at_1s = next((rss for since, rss in startup if since >= 1.0), 0)
    warmup_peak = max((rss for _, rss in startup), default=0)
    cpu0 = proc.cpu_times()
    t0 = time.monotonic()
    base_readings, base_bytes = readings, payload_bytes
    while time.monotonic() - t0 < args.duration:
        peak = max(peak, proc.memory_info().rss)
        await asyncio.sleep(0.25)
    cpu1 = proc.cpu_times()
    elapsed = time.monotonic() - t0
    window_readings = readings - base_readings
    window_bytes = payload_bytes - base_bytes
    rss_end = proc.memory_info().rss
    uss = proc.memory_full_info().uss
    fds = proc.num_fds()
    connected = sum(1 for c in proc.net_connections("tcp")
                    if c.raddr and c.raddr.port in set(ports) and c.status == "ESTABLISHED")
    agent.send_signal(signal.SIGTERM)
    agent.wait(30)
    await asyncio.sleep(1.0)
    receiver.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await receiver
    meters.terminate()
    broker.terminate()
    meters.wait(5)
    broker.wait(5)
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / elapsed * 100
    mib = 1024 * 1024
    print(f"devices × points:        {devices} × 20 at {args.interval}")
    print(f"measured for:            {elapsed:.1f} s after {args.warmup:.0f} s warm-up")
    print(f"readings received:       {window_readings} ({window_readings / elapsed:.0f}/s), "
          f"{bad} of all {readings} with a bad quality code")
    print(f"agent peak RSS:          {peak / mib:.1f} MiB (end {rss_end / mib:.1f} MiB, "
          f"USS {uss / mib:.1f} MiB)")
    print(f"agent RSS at start-up:   {at_1s / mib:.1f} MiB 1 s after launch, "
          f"{warmup_peak / mib:.1f} MiB peak in the warm-up")
    print(f"agent CPU:               {cpu:.1f} % of one core")
    print(f"open file descriptors:   {fds} ({connected} device connections established)")
    if window_readings:
        print(f"bytes per reading:       {window_bytes / window_readings:.2f} "
              f"(wire payload, {batches} batches in all)")
    shutil.rmtree(workdir, ignore_errors=True)
    return Figures(devices, peak, rss_end, uss, fds, connected)


async def sweep(args: argparse.Namespace, counts: list[int]) -> None:
    results = []
    for count in counts:
        print(f"--- {count} devices", flush=True)
        results.append(await measure(args, count))
    mib = 1024 * 1024
    print(f"\nsweep ({args.interval} polls, 20 points per device, {args.duration:.0f} s each):")
    print(f"{'devices':>8} {'peak RSS':>10} {'USS':>9} {'RSS/100 dev':>12} {'fds':>6} "
          f"{'connected':>10}")
    for r in results:
        print(f"{r.devices:>8} {r.peak_rss / mib:>6.1f} MiB {r.uss / mib:>5.1f} MiB "
              f"{r.peak_rss / mib / r.devices * 100:>8.1f} MiB {r.fds:>6} {r.connected:>10}")
    if len(results) >= 2:
        first, last = results[0], results[-1]
        slope = (last.peak_rss - first.peak_rss) / (last.devices - first.devices) * 100 / mib
        print(f"marginal RSS per 100 devices ({first.devices} → {last.devices}): {slope:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before measuring")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--interval", default="1 s", help="poll interval of every device")
    parser.add_argument("--sweep", metavar="N,N,…",
                        help="device counts to measure one after the other, e.g. 100,500,1000")
    parser.add_argument("--agent", default=str(Path(sys.executable).parent / "ssc-agent"),
                        help="the ssc-agent to measure (default: this environment's)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve_meters([int(p) for p in args.serve.split(",")]))
        return
    if args.sweep:
        asyncio.run(sweep(args, [int(n) for n in args.sweep.split(",")]))
        return
    asyncio.run(measure(args, args.devices))


if __name__ == "__main__":
    main()
