"""PostgreSQL sink ingest: readings/s, readings per CPU-second of the receiver, bytes per reading.

Starts a PostgreSQL 15 of its own (``initdb``/``pg_ctl`` in a temp dir, as the tests do, but
durable: ``fsync`` and ``synchronous_commit`` on, as a platform runs it), makes real wire-v1
batches (zstd, 200 readings each: 10 meters' series of 20 one-second readings, values that
round-trip through float32 as a meter's registers do), and stores them through ``PgSink``
as the receiver does: payload decoded (``decode_batch``), then ``store_many`` over groups of
waiting batches (one transaction each), for several group sizes. For each it prints
readings/s (wall), readings per CPU-second of this process (the receiver's work: decode,
rows, COPY) and of the PostgreSQL server processes, and at the end the bytes on disk per
reading (the readings partitions with their indexes; and the whole database).

Prints figures, asserts nothing.

    .venv/bin/python benchmarks/pg_ingest.py                  # 2,000 batches per group size
    .venv/bin/python benchmarks/pg_ingest.py --batches 500 --groups 1,100
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.platform.sink.pg import PgSink  # noqa: E402
from agent.wire import Batch, Series, decode_batch, encode_batch  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.platform.postgres import PgServer  # noqa: E402

READINGS_PER_BATCH = 200
SERIES = 10  # 10 series of 20 readings


def f32(x: float) -> float:
    """``x`` as a float32 register holds it."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def make_payloads(n: int, gateways: int, start_ms: int) -> list[bytes]:
    """``n`` encoded batches, round-robin over ``gateways``, each gateway's seqs in order."""
    rng = random.Random(13)
    per_series = READINGS_PER_BATCH // SERIES
    payloads = []
    for i in range(n):
        gw, seq = f"gw-{i % gateways:04d}", i // gateways + 1
        t0 = start_ms + seq * per_series * 1000
        series = tuple(
            Series(f"meter-{k:02d}", "power_w", "W", t0, (0,) + (1000,) * (per_series - 1),
                   tuple(f32(1000 + rng.gauss(0, 50)) for _ in range(per_series)),
                   (0,) * per_series)
            for k in range(SERIES))
        batch = Batch(gw=gw, boot=1, seq=seq, created=t0 + per_series * 1000, series=series,
                      aggregates=(), events=())
        payloads.append(encode_batch(batch))
    return payloads


def server_cpu(data_dir: Path) -> float:
    """CPU seconds used so far by the server's processes (postmaster and its children)."""
    pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    main = psutil.Process(pid)
    total = 0.0
    for proc in [main, *main.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def run(server: PgServer, db: str, payloads: list[bytes], group: int) -> None:
    with PgSink.open(server.url(db)) as sink:
        wall0, cpu0, srv0 = time.perf_counter(), time.process_time(), server_cpu(server.data)
        stored = 0
        for i in range(0, len(payloads), group):
            batches = [decode_batch(p) for p in payloads[i:i + group]]
            outcomes = sink.store_many(batches)
            stored += sum(b.n_readings for b, o in zip(batches, outcomes, strict=True)
                          if not o.duplicate)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        srv = server_cpu(server.data) - srv0
        assert sink.count_readings() == stored
    print(f"group {group:>4} batches/transaction: {stored:>9,} readings in {wall:6.2f} s"
          f" = {stored / wall:>9,.0f} readings/s; receiver {stored / cpu:>9,.0f} readings per"
          f" CPU-s ({cpu:.2f} s); server {stored / srv if srv else 0:>9,.0f} per CPU-s"
          f" ({srv:.2f} s)")


def sizes(server: PgServer, db: str) -> None:
    with server.admin(db) as conn:
        n = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        readings = conn.execute(
            "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
            " WHERE inhparent = 'readings'::regclass").fetchone()[0]
        heap = conn.execute(
            "SELECT sum(pg_relation_size(inhrelid)) FROM pg_inherits"
            " WHERE inhparent = 'readings'::regclass").fetchone()[0]
        whole = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    print(f"{n:,} readings: {int(readings) / n:.1f} bytes per reading in the readings partitions"
          f" with their two indexes ({int(heap) / n:.1f} in the rows alone);"
          f" {whole / n:.1f} bytes per reading for the whole database")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000, help="per group size")
    parser.add_argument("--gateways", type=int, default=100)
    parser.add_argument("--groups", default="1,10,100",
                        help="batches per transaction to measure, comma-separated")
    args = parser.parse_args()
    groups = [int(g) for g in args.groups.split(",")]
    start_ms = int(time.time() * 1000) - 3600_000  # within today's partition or yesterday's
    payloads = make_payloads(args.batches, args.gateways, start_ms)
    print(f"{len(payloads)} wire-v1 batches of {READINGS_PER_BATCH} readings (zstd,"
          f" {sum(map(len, payloads)) / len(payloads):.0f} bytes each) from {args.gateways}"
          " gateways")
    server = PgServer(free_port(), durable=True)
    try:
        server.start()
        db = ""
        for group in groups:
            db = server.new_database()  # each run stores every batch anew
            run(server, db, payloads, group)
        sizes(server, db)
    finally:
        server.remove()


if __name__ == "__main__":
    main()
