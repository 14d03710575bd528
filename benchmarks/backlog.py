"""Backlog after a long outage: drain rate, time to drain, store size, SD-card writes.

1. Fill a store as a 1-hour outage at 1,000 readings/s leaves it: 50 simulated
   ``ssc-demo-meter`` meters × 20 points polled every second (values from the simulator, so
   quantized as a real meter's are), fed through the real ``Batcher`` into the real
   ``BatchStore`` with a fake clock: 10-s batches, committed every second as the agent does.
2. Start the agent's real ``Uplink`` on (a copy of) that store against a local mosquitto, with
   a counting subscriber (``mosquitto_sub`` in its own process), and time the drain until every
   batch is acknowledged, deleted and received: once at the default
   ``replay_rate_per_second`` (50 batches/s) and once effectively unpaced.
3. Run ``ssc-agent run`` polling 50 simulated meters × 20 points at 1 s, connected, and read
   ``write_bytes`` (bytes sent to the block layer) and ``wchar`` (bytes passed to write()) from
   ``/proc/<pid>/io`` over a window: bytes written to disk per reading while live, at the
   default ``flush_interval`` of 1 s and at 5 s (the power-cut window traded for SD wear).

Prints figures, asserts nothing.

    .venv/bin/python benchmarks/backlog.py                 # the full hour, ~1-2 min
    .venv/bin/python benchmarks/backlog.py --minutes 5 --live 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.endpoints import parse_broker_url
from agent.gateway.batcher import Batcher
from agent.gateway.store import BatchStore
from agent.gateway.uplink import Uplink
from agent.logs import configure_logging
from agent.mqtt import MqttSettings
from agent.profiles import load_profile
from agent.readings import Quality, Reading
from agent.tools.demo import free_ports, local_broker
from drivers.modbus.simulated_meter import SimulatedMeter
from drivers.modbus.simulator import SimulatorServer, serve

if TYPE_CHECKING:
    from pymodbus.pdu import ModbusPDU

ROOT = Path(__file__).resolve().parent.parent
GW = "gw-bench"
PROFILE = "ssc-demo-meter"
MIB = 1024 * 1024


class FakeClock:
    """Wall time as the batcher sees it while we fill the store."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def file_bytes(path: Path) -> int:
    """The store file plus its WAL and shared-memory index."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
               if p.exists())


def fill_store(path: Path, *, meters: int, seconds: int) -> tuple[int, int, float]:
    """Write an outage of ``seconds`` into a new store; (readings, batches, seconds taken)."""
    profile = load_profile(PROFILE)
    units = {str(p["name"]): p.get("unit") for p in profile.points}
    start = math.floor(time.time()) - seconds
    sims = [SimulatedMeter(profile, f"bench/{i}", t0=start - 86400.0) for i in range(meters)]
    clock = FakeClock(start)
    store = BatchStore.open(path, clock=clock)
    batcher = Batcher(store, gw=GW, boot=store.start_boot(), max_readings=20000, max_age=10.0,
                      codec=1, level=3, clock=clock, on_sealed=lambda: None)
    began = time.perf_counter()
    readings = 0
    for second in range(seconds):
        t = start + second
        t_ms = t * 1000
        for i, sim in enumerate(sims):
            dev = f"meter-{i + 1:02d}"
            batch = [Reading(dev, name, None if units[name] is None else str(units[name]),
                             t_ms, value, Quality.GOOD)
                     for name, value in sim.values_at(t).items()]
            batcher.add(batch)
            readings += len(batch)
        clock.now = t + 0.999  # the poll's flush, just before the next slot
        batcher.flush()
    clock.now = start + seconds
    batcher.close()
    taken = time.perf_counter() - began
    batches = store.stats().batches
    store.close()
    return readings, batches, taken


async def count_messages(port: int, topic: str, counter: list[int],
                         ready: asyncio.Event) -> None:
    """Count QoS 1 messages on ``topic`` with mosquitto_sub (one line per message)."""
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic,
        "-F", "%l", "-i", "backlog-bench-counter",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        await asyncio.sleep(0.3)  # subscribed by then on loopback
        ready.set()
        while line := await proc.stdout.readline():
            if line.strip():
                counter[0] += 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()


async def drain(path: Path, broker_url: str, batches: int,
                replay_rate: float) -> tuple[float, float]:
    """Send the whole store at ``replay_rate`` batches/s; (seconds until the store is empty,
    until all were received)."""
    store = BatchStore.open(path)
    address = parse_broker_url(broker_url)
    counter = [0]
    ready = asyncio.Event()
    sub = asyncio.create_task(count_messages(address.port, f"ssc/v1/{GW}/batch", counter, ready))
    await ready.wait()
    uplink = Uplink(MqttSettings(address, GW), store, gw=GW, boot=store.start_boot(),
                    topic_prefix="ssc/v1", max_inflight=8, wake=asyncio.Event(),
                    clock=time.time, replay_rate=replay_rate)
    began = time.perf_counter()
    task = asyncio.create_task(uplink.run())
    emptied = received = math.nan
    while math.isnan(received) or math.isnan(emptied):
        await asyncio.sleep(0.005)
        now = time.perf_counter() - began
        # a LIMIT 1 query: stats() would sum every payload and stall the loop it measures
        if math.isnan(emptied) and not store.next_unsent(1, set()):
            emptied = now
        if counter[0] >= batches:
            received = now
        if now > 600:
            break
    task.cancel()
    sub.cancel()
    for t in (task, sub):
        with contextlib.suppress(asyncio.CancelledError):
            await t
    store.close()
    return emptied, received


def read_io(pid: int) -> dict[str, int]:
    """The counters of ``/proc/<pid>/io``."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = int(value)
    return out


def counting_tracer(counter: list[int]) -> Callable[[bool, ModbusPDU], ModbusPDU]:
    """A pymodbus ``trace_pdu`` hook counting requests received."""

    def trace(sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            counter[0] += 1
        return pdu

    return trace


async def live_writes(workdir: Path, broker_url: str, meters: int,
                      seconds: float, flush_interval: str) -> dict[str, float]:
    """Bytes the agent writes per reading while live and connected."""
    profile = load_profile(PROFILE)
    ports = free_ports(meters)
    requests = [0]
    servers: list[SimulatorServer] = []
    for i, port in enumerate(ports):
        servers.append(await serve({1: profile}, "127.0.0.1", port, seed=f"live/{i}",
                                   trace_pdu=counting_tracer(requests)))
    data = workdir / f"live-data-{flush_interval.replace(' ', '')}"
    devices = "".join(
        f'[[devices]]\nname = "meter-{i + 1:02d}"\ndriver = "modbus"\n'
        f'endpoint = "tcp://127.0.0.1:{port}"\nprofile = "{PROFILE}"\ninterval = "1 s"\n\n'
        for i, port in enumerate(ports))
    config = workdir / "live.toml"
    config.write_text(f'[gateway]\nid = "{GW}-live"\ndata_dir = "{data}"\n\n'
                      f'[uplink]\nbroker = "{broker_url}"\nbatch_max_age = "10 s"\n'
                      f'flush_interval = "{flush_interval}"\n\n{devices}')
    log = workdir / "live-agent.log"
    with log.open("wb") as err:
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "--log-json", "run", "--config", str(config),
            cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=err)
    try:
        await asyncio.sleep(6.0)  # start-up, first connections, first batch sealed
        store = data / "buffer.db"
        io0, req0, size0, t0 = read_io(agent.pid), requests[0], file_bytes(store), time.time()
        await asyncio.sleep(seconds)
        io1, req1, size1, t1 = read_io(agent.pid), requests[0], file_bytes(store), time.time()
    finally:
        agent.send_signal(signal.SIGTERM)
        await agent.wait()
        for server in servers:
            await server.stop()
    per_poll = 2  # ssc-demo-meter is read in two requests (see its profile)
    readings = (req1 - req0) / per_poll * len(profile.points)
    if not any(json.loads(line).get("event") == "uplink_connected"
               for line in log.read_text().splitlines() if line.startswith("{")):
        print("warning: the live agent never connected to the broker", file=sys.stderr)
    return {
        "seconds": t1 - t0,
        "readings": readings,
        "write_bytes": io1["write_bytes"] - io0["write_bytes"],
        "wchar": io1["wchar"] - io0["wchar"],
        "growth": size1 - size0,
    }


async def main_async(args: argparse.Namespace) -> None:
    configure_logging("warning")
    workdir = Path(tempfile.mkdtemp(prefix="ssc-backlog-"))
    store = workdir / "buffer.db"
    seconds = int(args.minutes * 60)
    print(f"filling: {args.meters} meters × 20 points at 1 s for {seconds} s of outage …",
          flush=True)
    readings, batches, fill_s = fill_store(store, meters=args.meters, seconds=seconds)
    size = file_bytes(store)
    s = BatchStore.open(store)
    payload = s.stats().payload_bytes
    s.close()
    print(f"backlog:                 {readings:,} readings in {batches} batches "
          f"(filled in {fill_s:.1f} s)")
    print(f"store size on disk:      {size / MIB:.1f} MiB = {size / readings:.2f} bytes/reading "
          f"(payloads {payload / readings:.2f} bytes/reading)")
    async with local_broker(workdir) as broker_url:
        for label, rate in (("default replay_rate_per_second", args.replay_rate),
                            ("unpaced (replay_rate 1e6)", 1e6)):
            copy = workdir / f"drain-{rate:g}.db"
            shutil.copyfile(store, copy)  # the store is closed: no WAL to copy along
            emptied, received = await drain(copy, broker_url, batches, rate)
            print(f"drain, {label} = {rate:g}:")
            print(f"  time to drain:         {emptied:.2f} s until the store was empty, "
                  f"{received:.2f} s until the subscriber had all {batches}")
            print(f"  drain rate:            {readings / emptied:,.0f} readings/s, "
                  f"{batches / emptied:.1f} batches/s (max_inflight 8, QoS 1, loopback)")
        for flush_interval in ("1 s", "5 s"):
            live = await live_writes(workdir, broker_url, args.meters, args.live,
                                     flush_interval)
            n = live["readings"]
            print(f"live, connected, flush_interval {flush_interval}"
                  f"{' (default)' if flush_interval == '1 s' else ''}: {n:,.0f} readings "
                  f"polled in {live['seconds']:.1f} s")
            print(f"  disk writes per reading: {live['write_bytes'] / n:.1f} bytes "
                  f"(write_bytes, to the block layer), {live['wchar'] / n:.1f} bytes passed "
                  f"to write() (wchar); store files grew {live['growth'] / n:.2f} bytes/reading")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="outage length")
    parser.add_argument("--meters", type=int, default=50, help="meters of 20 points at 1 s")
    parser.add_argument("--live", type=float, default=30.0, help="seconds of live measuring")
    parser.add_argument("--replay-rate", type=float, default=50.0,
                        help="replay_rate_per_second of the first drain (the config default)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
