"""Receivers at city scale: simulated gateways publish real wire-v1 batches over MQTT QoS 1,
``ssc-agent receive`` processes store them; readings/s, CPU, lag and bytes per reading.

For each configuration (broker x sink x receivers x mode) the benchmark starts what it needs on
127.0.0.1: a mosquitto (``--broker mosquitto``; the receivers share it with ``--group``) or
one 3-node NATS cluster with MQTT + JetStream (``--broker nats``; the receivers read
``--source nats://…`` through one durable consumer), and for ``postgresql`` one durable
PostgreSQL 15 (``fsync`` on, as a platform runs it; a new database per configuration). The
receivers are real subprocesses (``python -m agent.cli receive``), with the session or
consumer created first (``--create-session``), as at deploy time. SQLite: one file per
receiver.

The load: ``--gateways`` simulated gateways (default 1,000), each sealing a batch of 200
readings (20 meters x 10 one-second readings) every 10 s. ``paced`` publishes each gateway's
batch on its own 10 s schedule (1,000 gateways: 20,000 readings/s) for ``--duration``,
encoding it when it is due with ``created`` = that moment; ``burst`` publishes
``--burst-rounds`` pre-encoded batches per gateway (default 5: 1,000,000 readings; each
gateway's last 50 s, a backlog as after a receiver outage) as fast as it can (cut at
``--duration``). Several publisher
connections, many QoS 1 publishes in flight on each. Then the run waits (at most ``--drain``)
for the receivers to store everything.

Printed per configuration:
- readings/s stored: all readings / (last batch stored - first publish), per receiver process
- readings per CPU-second of the receiver processes (psutil, user + system, from the first
  publish to the end), and of the PostgreSQL server's processes and the broker's (mosquitto,
  or the three NATS nodes together)
- lag p50/p99: the sink's ``batches.received`` (stamped when the receiver stores the batch)
  minus the batch's ``created`` (the generator's publish time) in ``paced``; in ``burst``
  minus the first publish, so there it is the time the burst took to drain up to that batch
- bytes per reading: what the database grew by (SQLite files with their WAL; PostgreSQL
  ``pg_database_size``) / readings stored
- what the generator reached (readings/s the broker acknowledged, its CPU-seconds while
  publishing; burst's encoding beforehand is not in them)

Prints figures, asserts nothing about speed.

    .venv/bin/python benchmarks/receiver.py                                # the whole matrix
    .venv/bin/python benchmarks/receiver.py --brokers nats --sinks postgresql --modes burst
    .venv/bin/python benchmarks/receiver.py --gateways 5 --duration 3 --brokers mosquitto \\
        --sinks sqlite --receivers 1 --modes paced                         # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import random
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.wire import Batch, Series, encode_batch  # noqa: E402
from tests.conftest import Mosquitto, free_port  # noqa: E402
from tests.nats_cluster import NatsCluster  # noqa: E402
from tests.platform.postgres import PgServer  # noqa: E402

BATCH_SECONDS = 10
METERS = 20  # 20 meters x 10 one-second readings = 200 readings a batch
READINGS_PER_BATCH = METERS * BATCH_SECONDS
IN_FLIGHT = 50  # QoS 1 publishes awaiting their PUBACK, per publisher connection
READY_TIMEOUT = 30.0
# aiomqtt warns about more than 10 publishes awaiting their PUBACK: here that is the point
QUIET = logging.getLogger("benchmark.publisher")
QUIET.setLevel(logging.ERROR)


def f32(x: float) -> float:
    """``x`` as a float32 register holds it."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


class Gateways:
    """The simulated gateways' batches: fixed values per meter (encoding, not the values, is
    what costs), times and ``created`` from the moment a batch is due."""

    def __init__(self, count: int) -> None:
        rng = random.Random(13)
        self.names = [f"gw-{i:05d}" for i in range(count)]
        self._values = [tuple(f32(1000 + rng.gauss(0, 50)) for _ in range(BATCH_SECONDS))
                        for _ in range(METERS)]

    def encode(self, gw: str, seq: int, created_ms: int) -> bytes:
        t0 = created_ms - BATCH_SECONDS * 1000
        series = tuple(
            Series(f"meter-{k:02d}", "power_w", "W", t0, (0,) + (1000,) * (BATCH_SECONDS - 1),
                   values, (0,) * BATCH_SECONDS)
            for k, values in enumerate(self._values))
        return encode_batch(Batch(gw=gw, boot=1, seq=seq, created=created_ms, series=series,
                                  aggregates=(), events=()))


@dataclass
class Published:
    batches: int = 0
    start: float = 0.0  # epoch seconds of the first publish
    end: float = 0.0
    cpu: float = 0.0  # CPU-seconds of this process while publishing


async def _publisher(host: str, port: int, ident: str,
                     queue: asyncio.Queue[tuple[str, bytes] | None], done: Published) -> None:
    async with aiomqtt.Client(host, port, identifier=ident, max_inflight_messages=IN_FLIGHT,
                              logger=QUIET) as client:
        async def worker() -> None:
            while (item := await queue.get()) is not None:
                await client.publish(item[0], item[1], qos=1)
                done.batches += 1
            await queue.put(None)  # the next worker stops too

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))


async def publish(ports: list[int], prefix: str, gateways: Gateways, mode: str,
                  duration: float, publishers: int, burst_rounds: int) -> Published:
    """Publish until ``duration`` is up; returns when the broker acknowledged every batch."""
    done = Published()
    queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(maxsize=IN_FLIGHT * 4)
    tasks = [asyncio.create_task(_publisher("127.0.0.1", ports[i % len(ports)],
                                            f"bench-pub-{i}", queue, done))
             for i in range(publishers)]
    n = len(gateways.names)
    if mode == "burst":
        # a backlog, as after an outage: each gateway's batches of the last rounds x 10 s
        now = int(time.time() * 1000)
        payloads = [(f"{prefix}/{gw}/batch",
                     gateways.encode(gw, seq, now - (burst_rounds - seq) * BATCH_SECONDS * 1000))
                    for seq in range(1, burst_rounds + 1) for gw in gateways.names]
    await asyncio.sleep(0.5)  # the publishers' connections are up
    cpu0 = time.process_time()
    done.start = time.time()
    deadline = time.monotonic() + duration
    if mode == "burst":
        for topic, payload in payloads:
            if time.monotonic() >= deadline:
                break
            await queue.put((topic, payload))
    else:
        t0 = time.monotonic()
        for i in itertools.count():
            seq, slot = divmod(i, n)
            due = t0 + seq * BATCH_SECONDS + slot * BATCH_SECONDS / n
            if due >= deadline:
                break
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            gw = gateways.names[slot]
            await queue.put((f"{prefix}/{gw}/batch",
                             gateways.encode(gw, seq + 1, int(time.time() * 1000))))
    await queue.put(None)
    await asyncio.gather(*tasks)
    done.end = time.time()
    done.cpu = time.process_time() - cpu0
    return done


@dataclass
class Config:
    broker: str
    sink: str
    receivers: int
    mode: str

    def __str__(self) -> str:
        return f"{self.broker:9} {self.sink:10} {self.receivers} rx {self.mode:5}"


@dataclass
class Servers:
    workdir: Path
    pg: PgServer | None = None
    nats: NatsCluster | None = None
    mosquittos: list[Mosquitto] = field(default_factory=list)


class Receivers:
    """``ssc-agent receive`` subprocesses of one configuration."""

    def __init__(self, config: Config, servers: Servers, prefix: str, index: int) -> None:
        self.config = config
        self.servers = servers
        self.prefix = prefix
        self.workdir = servers.workdir / f"c{index}"
        self.workdir.mkdir()
        self.group = f"bench{index}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pg_db = ""
        if config.sink == "postgresql":
            assert servers.pg is not None
            self.pg_db = servers.pg.new_database()
        if config.broker == "mosquitto":
            broker = Mosquitto(self.workdir, free_port())
            servers.mosquittos.append(broker)
            broker.start()
            self.source = ["--broker", broker.url]
            self.mqtt_ports = [broker.port]
            self.broker_pids = [broker.proc.pid] if broker.proc else []
        else:
            assert servers.nats is not None
            self.source = ["--source", servers.nats.urls]
            self.mqtt_ports = [node.mqtt_port for node in servers.nats.nodes]
            self.broker_pids = [node.proc.pid for node in servers.nats.nodes if node.proc]

    def sink_url(self, i: int) -> str:
        if self.config.sink == "sqlite":
            return f"sqlite:///{self.workdir}/rx{i}.db"
        assert self.servers.pg is not None
        return self.servers.pg.url(self.pg_db)

    def argv(self, i: int, *extra: str) -> list[str]:
        return [sys.executable, "-m", "agent.cli", "receive", *self.source,
                "--sink", self.sink_url(i), "--topic-prefix", self.prefix,
                "--client-id", f"{self.group}-rx{i}", "--group", self.group, *extra]

    def start(self) -> None:
        # as at deploy time: the session (consumer) exists before any batch is published
        subprocess.run(self.argv(0, "--create-session"), cwd=ROOT, check=True,
                       capture_output=True, timeout=60)
        for i in range(self.config.receivers):
            log = (self.workdir / f"rx{i}.log").open("wb")
            self.procs.append(subprocess.Popen(self.argv(i), cwd=ROOT, stdout=log,
                                               stderr=subprocess.STDOUT))
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.sinks_ready():
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"receiver exited with {proc.returncode}: "
                                       f"{(self.workdir / 'rx0.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("receivers did not create their sinks")
            time.sleep(0.1)

    def sinks_ready(self) -> bool:
        if self.config.sink == "sqlite":
            return all(self._sqlite(i, "SELECT count(*) FROM sqlite_master"
                                       " WHERE name = 'batches'") == [(1,)]
                       for i in range(self.config.receivers))
        return bool(self._pg("SELECT to_regclass('batches') IS NOT NULL")[0][0])

    def _sqlite(self, i: int, query: str) -> list[tuple[int, ...]]:
        path = self.workdir / f"rx{i}.db"
        if not path.exists():
            return []
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                return db.execute(query).fetchall()
        except sqlite3.OperationalError:
            return []  # schema not there yet, or locked for a moment

    def _pg(self, query: str) -> list[tuple[int, ...]]:
        assert self.servers.pg is not None
        with self.servers.pg.admin(self.pg_db) as conn:
            rows: list[tuple[int, ...]] = conn.execute(query).fetchall()
            return rows

    def rows(self, query: str) -> list[tuple[int, ...]]:
        if self.config.sink == "sqlite":
            return [row for i in range(self.config.receivers) for row in self._sqlite(i, query)]
        return self._pg(query)

    def stored_readings(self) -> int:
        return sum(int(r[0] or 0) for r in self.rows("SELECT sum(n_readings) FROM batches"))

    def db_bytes(self) -> int:
        if self.config.sink == "sqlite":
            return sum(p.stat().st_size for p in self.workdir.glob("rx*.db*"))
        return int(self._pg("SELECT pg_database_size(current_database())")[0][0])

    def cpu(self) -> float:
        return cpu_of(proc.pid for proc in self.procs)

    def broker_cpu(self) -> float:
        return cpu_of(self.broker_pids)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cpu_of(pids: Iterable[int]) -> float:
    """CPU-seconds (user + system) used so far by these processes and their children."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            main = psutil.Process(pid)
            for proc in [main, *main.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = proc.cpu_times()
                    total += times.user + times.system
    return total


def server_cpu(pg: PgServer | None) -> float:
    """CPU-seconds used so far by the PostgreSQL server's processes (0 without one)."""
    if pg is None:
        return 0.0
    return cpu_of([int((pg.data / "postmaster.pid").read_text().split()[0])])


def percentile(values: list[int], q: float) -> float:
    if len(values) < 2:
        return float(values[0]) if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_config(config: Config, servers: Servers, index: int, args: argparse.Namespace) -> None:
    prefix = f"bench/c{index}"
    rx = Receivers(config, servers, prefix, index)
    try:
        rx.start()
        pg = servers.pg if config.sink == "postgresql" else None
        bytes0, cpu0, srv0, brk0 = rx.db_bytes(), rx.cpu(), server_cpu(pg), rx.broker_cpu()
        pub = asyncio.run(publish(rx.mqtt_ports, prefix, Gateways(args.gateways), config.mode,
                                  args.duration, args.publishers, args.burst_rounds))
        expected = pub.batches * READINGS_PER_BATCH
        deadline = time.monotonic() + args.drain
        while (stored := rx.stored_readings()) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        cpu, srv, brk = rx.cpu() - cpu0, server_cpu(pg) - srv0, rx.broker_cpu() - brk0
        # burst: from the first publish (the batches were encoded before it, all at once)
        lag_from = "created" if config.mode == "paced" else str(int(pub.start * 1000))
        lags = sorted(int(r[0]) for r in rx.rows(f"SELECT received - {lag_from} FROM batches"))
        last = max(int(r[0] or 0) for r in rx.rows("SELECT max(received) FROM batches")) / 1000
        grown = rx.db_bytes() - bytes0
    finally:
        rx.stop()
    window = max(last - pub.start, 1e-3)
    rate = stored / window
    missing = "" if stored >= expected else f"  NOT DRAINED: {expected - stored:,} missing"
    server = f", database {stored / srv:>8,.0f}/CPU-s" if srv else ""
    server += f", broker {stored / brk:>9,.0f}/CPU-s" if brk else ""
    print(f"{config}: {stored:>9,} readings in {window:5.1f} s = {rate:>8,.0f}/s,"
          f" {rate / config.receivers:>8,.0f}/s per receiver;"
          f" {stored / cpu if cpu else 0:>8,.0f} per receiver CPU-s ({cpu:.1f} s){server};"
          f" lag p50 {percentile(lags, 50):,.0f} ms p99 {percentile(lags, 99):,.0f} ms;"
          f" {grown / stored if stored else 0:.1f} B/reading;"
          f" generator {pub.batches * READINGS_PER_BATCH / max(pub.end - pub.start, 1e-3):,.0f}"
          f"/s ({pub.cpu:.1f} CPU-s){missing}", flush=True)


def configs(args: argparse.Namespace) -> Iterator[Config]:
    for broker in args.brokers.split(","):
        for sink in args.sinks.split(","):
            for receivers in (int(r) for r in args.receivers.split(",")):
                for mode in args.modes.split(","):
                    yield Config(broker, sink, receivers, mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of publishing per configuration (default 10)")
    parser.add_argument("--drain", type=float, default=60.0,
                        help="at most this long to wait for the receivers afterwards")
    parser.add_argument("--burst-rounds", type=int, default=5,
                        help="burst: batches per gateway, published at once (default 5)")
    parser.add_argument("--publishers", type=int, default=4, help="MQTT connections")
    parser.add_argument("--brokers", default="mosquitto,nats", help="mosquitto,nats")
    parser.add_argument("--sinks", default="sqlite,postgresql", help="sqlite,postgresql")
    parser.add_argument("--receivers", default="1,2", help="receiver processes, e.g. 1,2")
    parser.add_argument("--modes", default="paced,burst", help="paced,burst")
    args = parser.parse_args()
    matrix = list(configs(args))
    print(f"{args.gateways:,} gateways, a {READINGS_PER_BATCH}-reading batch each every"
          f" {BATCH_SECONDS} s (paced: {args.gateways * READINGS_PER_BATCH / BATCH_SECONDS:,.0f}"
          f" readings/s); {args.duration:g} s of publishing per configuration;"
          f" {os.cpu_count()} CPUs, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
          flush=True)
    servers = Servers(Path(tempfile.mkdtemp(prefix="ssc-bench-rx-")))
    try:
        if any(c.sink == "postgresql" for c in matrix):
            servers.pg = PgServer(free_port(), durable=True)
            servers.pg.start()
        if any(c.broker == "nats" for c in matrix):
            servers.nats = NatsCluster(servers.workdir / "nats")
            servers.nats.start()
            asyncio.run(_first_mqtt_connection(servers.nats.nodes[0].mqtt_port))
        for index, config in enumerate(matrix):
            run_config(config, servers, index, args)
    finally:
        for broker in servers.mosquittos:
            broker.terminate()
        if servers.nats is not None:
            servers.nats.stop()
        if servers.pg is not None:
            servers.pg.remove()
        subprocess.run(["rm", "-rf", str(servers.workdir)], check=False)
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


async def _first_mqtt_connection(port: int) -> None:
    # NATS creates its MQTT streams on the first MQTT connection; the consumer needs them
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-first"):
        pass


if __name__ == "__main__":
    main()
