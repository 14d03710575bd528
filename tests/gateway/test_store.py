"""The SQLite buffer: pending rows, sealing in one transaction, boot/seq persistence."""

from __future__ import annotations

import math
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.errors import StorageError
from agent.gateway.store import BatchStore, DataDirLock, StoreBounds
from agent.readings import Event, Quality, Reading


def readings(n: int, t0: int = 1_000) -> list[Reading]:
    return [Reading("m1", f"p{i % 3}", "W", t0 + i, float(i) if i % 4 else None,
                    Quality.GOOD if i % 4 else Quality.COMM_ERROR) for i in range(n)]


def test_boot_and_seq_persist_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    store = BatchStore.open(path)
    assert store.start_boot() == 1
    seqs = [store.seal(lambda s, ev: b"x%d" % s, created=1, n_readings=0, pending_upto=0)
            for _ in range(3)]
    store.close()
    store = BatchStore.open(path)
    assert store.start_boot() == 2
    assert store.seal(lambda s, ev: b"y", created=2, n_readings=0, pending_upto=0) == 4
    assert seqs == [1, 2, 3]


def test_pending_readings_round_trip_exactly(tmp_path: Path) -> None:
    store = BatchStore.open(tmp_path / "b.db")
    first, second = readings(10), readings(5, t0=9_000)
    store.append_pending(first, [Event(1, "device_down", "m1", "no answer")])
    last = store.append_pending(second, [])
    got, events, upto, _ = store.load_pending()
    assert got == first + second
    assert events == [Event(1, "device_down", "m1", "no answer")]
    assert upto == last


def test_seal_moves_pending_into_one_batch_atomically(tmp_path: Path) -> None:
    store = BatchStore.open(tmp_path / "b.db")
    upto = store.append_pending(readings(4), [])
    seq = store.seal(lambda s, ev: f"batch-{s}".encode(), created=5, n_readings=4,
                     pending_upto=upto)
    assert seq is not None
    assert store.load_pending() == ([], [], 0, [])
    assert [(b.seq, b.payload, b.n_readings) for b in store.next_unsent(10, set())] == [
        (seq, b"batch-1", 4)]

    # A failing build leaves everything as it was: readings stay pending, seq is not used.
    upto = store.append_pending(readings(2), [])

    def broken(seq: int, events: list[Event]) -> bytes:
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError):
        store.seal(broken, created=6, n_readings=2, pending_upto=upto)
    assert len(store.load_pending().readings) == 2
    assert store.seal(lambda s, ev: b"ok", created=7, n_readings=2, pending_upto=upto) == seq + 1


def test_next_unsent_is_oldest_first_and_skips_in_flight(tmp_path: Path) -> None:
    store = BatchStore.open(tmp_path / "b.db")
    for _ in range(6):
        store.seal(lambda s, ev: bytes([s]), created=s_created(), n_readings=1, pending_upto=0)
    assert [b.seq for b in store.next_unsent(3, set())] == [1, 2, 3]
    assert [b.seq for b in store.next_unsent(3, {1, 2})] == [3, 4, 5]
    store.delete(3)
    assert [b.seq for b in store.next_unsent(10, {1})] == [2, 4, 5, 6]
    stats = store.stats()
    assert (stats.batches, stats.readings, stats.next_seq) == (5, 5, 7)


_counter = iter(range(10**6))


def s_created() -> int:
    return next(_counter)


def test_a_killed_writer_loses_nothing_it_committed(tmp_path: Path) -> None:
    """A child process commits pending rows, then is SIGKILLed; all its rows are there."""
    path = tmp_path / "b.db"
    code = f"""
import os, signal
from agent.errors import StorageError
from agent.gateway.store import BatchStore, DataDirLock, StoreBounds
from agent.readings import Reading, Quality
from collections.abc import Callable
from pathlib import Path
s = BatchStore.open(Path({str(path)!r}), sync="full")
for k in range(20):
    rows = [Reading("m", "p", None, k * 1000 + i, i, Quality.GOOD) for i in range(50)]
    s.append_pending(rows, [])
print("committed", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert proc.returncode == -9, proc.stderr
    assert "committed" in proc.stdout
    store = BatchStore.open(path)
    got, _, _, _ = store.load_pending()
    assert len(got) == 20 * 50
    assert sorted(r.t for r in got) == sorted(k * 1000 + i for k in range(20) for i in range(50))
    # and the file is a healthy SQLite database
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


# --------------------------------------------------------------------------- bounds and drops


def payload_of(size: int) -> Callable[[int, list[Event]], bytes]:
    def build(seq: int, events: list[Event]) -> bytes:
        return bytes(size)

    return build


def test_drop_oldest_keeps_within_max_bytes_counts_and_reports_once(tmp_path: Path) -> None:
    store = BatchStore.open(tmp_path / "b.db", bounds=StoreBounds(max_bytes=3500))
    for _ in range(5):
        store.seal(payload_of(1000), created=1, n_readings=10, pending_upto=0)
    # 5 × 1000 > 3500: seqs 1 and 2 went, oldest first
    assert [b.seq for b in store.next_unsent(10, set())] == [3, 4, 5]
    stats = store.stats()
    assert (stats.dropped_batches, stats.dropped_readings) == (2, 20)
    drops = store.drop_events()
    # seq 1 went while seq 4 was sealed, so seq 5 carries its report; seq 2 went while seq 5
    # was sealed, so its report waits for the next batch.
    assert [(d.kind, d.batches, d.readings, d.reported) for d in drops] == [
        ("buffer_drop", 1, 10, True), ("buffer_drop", 1, 10, False)]
    assert "seq=1-1 reason=max_bytes max_bytes=3500 policy=drop_oldest" in drops[0].message
    # The next batch carries the waiting report; the one after carries none.
    carried: list[list[Event]] = []

    def keep(seq: int, events: list[Event]) -> bytes:
        carried.append(events)
        return b"x"

    store.seal(keep, created=2, n_readings=1, pending_upto=0)
    store.seal(keep, created=3, n_readings=1, pending_upto=0)
    assert [len(c) for c in carried] == [1, 0]
    assert all(e.kind == "buffer_drop" and e.device is None for e in carried[0])
    assert all(d.reported for d in store.drop_events())


def test_a_batch_in_flight_is_never_dropped(tmp_path: Path) -> None:
    store = BatchStore.open(tmp_path / "b.db", bounds=StoreBounds(max_bytes=2500))
    store.seal(payload_of(1000), created=1, n_readings=1, pending_upto=0)
    store.mark_in_flight(1)
    store.seal(payload_of(1000), created=1, n_readings=1, pending_upto=0)
    store.seal(payload_of(1000), created=1, n_readings=1, pending_upto=0)
    assert [b.seq for b in store.next_unsent(10, set())] == [1, 3]


def test_a_batch_whose_publish_ended_is_bounded_again(tmp_path: Path) -> None:
    """The store keeps the in-flight set; the uplink only tells it when a publish starts and
    ends, and what it is handed is a copy."""
    store = BatchStore.open(tmp_path / "b.db", bounds=StoreBounds(max_bytes=2500))
    store.seal(payload_of(1000), created=1, n_readings=1, pending_upto=0)
    store.mark_in_flight(1)
    seen = store.in_flight()
    assert seen == {1}
    store.seal(payload_of(1000), created=1, n_readings=1, pending_upto=0)
    store.seal(payload_of(1000), created=1, n_readings=1, pending_upto=0)
    assert [b.seq for b in store.next_unsent(10, set())] == [1, 3]
    store.clear_in_flight(1)
    assert store.in_flight() == frozenset() and seen == {1}
    store.seal(payload_of(1000), created=1, n_readings=1, pending_upto=0)
    assert [b.seq for b in store.next_unsent(10, set())] == [3, 4]
    store.mark_in_flight(3)
    store.mark_in_flight(4)
    store.forget_in_flight()  # the connection is gone
    assert store.in_flight() == frozenset()


def test_drop_newest_refuses_the_new_batch(tmp_path: Path) -> None:
    store = BatchStore.open(tmp_path / "b.db",
                            bounds=StoreBounds(max_bytes=2500, when_full="drop_newest"))
    upto = store.append_pending(readings(3), [])
    assert store.seal(payload_of(1000), created=1, n_readings=3, pending_upto=upto) == 1
    assert store.seal(payload_of(1000), created=1, n_readings=3, pending_upto=0) == 2
    upto = store.append_pending(readings(3), [])
    assert store.seal(payload_of(1000), created=1, n_readings=3, pending_upto=upto) is None
    assert store.load_pending().readings == []  # the dropped batch's readings are not resurrected
    assert [b.seq for b in store.next_unsent(10, set())] == [1, 2]
    assert store.stats().dropped_readings == 3
    # seq 3 was used and is reported as dropped, so the receiver's gap is explained
    assert "seq=3-3 reason=max_bytes" in store.drop_events()[0].message
    assert store.stats().next_seq == 4


class Clocks:
    """A wall clock and a monotonic clock, moved by the test (a step moves only the wall)."""

    def __init__(self, wall: float = 1_000.0, mono: float = 50.0) -> None:
        self.wall_now = wall
        self.mono_now = mono

    def wall(self) -> float:
        return self.wall_now

    def mono(self) -> float:
        return self.mono_now

    def advance(self, seconds: float) -> None:
        self.wall_now += seconds
        self.mono_now += seconds


def aged_store(path: Path, clocks: Clocks, synced: bool | None = None) -> BatchStore:
    return BatchStore.open(path, bounds=StoreBounds(max_age_ms=60_000), clock=clocks.wall,
                           monotonic=clocks.mono, clock_synced=lambda: synced)


def test_max_age_expires_old_batches(tmp_path: Path) -> None:
    clocks = Clocks()
    store = aged_store(tmp_path / "b.db", clocks)
    store.seal(payload_of(10), created=1_000_000, n_readings=4, pending_upto=0)
    clocks.advance(30)
    store.seal(payload_of(10), created=1_030_000, n_readings=4, pending_upto=0)
    clocks.advance(45)
    store.expire()
    assert [b.seq for b in store.next_unsent(10, set())] == [2]
    assert "reason=max_age" in store.drop_events()[0].message


@pytest.mark.parametrize("step", [180 * 86_400.0, 400 * 86_400.0, -3_600.0, -180 * 86_400.0])
def test_a_wall_clock_step_does_not_age_the_backlog(tmp_path: Path, step: float) -> None:
    """An NTP step by months, with the broker down: 15-s-old batches are 15 s old."""
    clocks = Clocks(wall=1_700_000_000.0 - 180 * 86_400)
    store = aged_store(tmp_path / "b.db", clocks)
    for _ in range(3):
        store.seal(payload_of(10), created=int(clocks.wall() * 1000), n_readings=4,
                   pending_upto=0)
        clocks.advance(5)
    clocks.wall_now += step
    store.expire()
    store.seal(payload_of(10), created=int(clocks.wall() * 1000), n_readings=4, pending_upto=0)
    assert [b.seq for b in store.next_unsent(10, set())] == [1, 2, 3, 4]
    assert store.drop_events() == [] and store.stats().dropped_batches == 0
    assert store.stats().oldest_age_ms == 15_000  # what buffer stats and /metrics show
    # … and they still age by elapsed time after the step
    clocks.advance(46)
    store.expire()
    assert [b.seq for b in store.next_unsent(10, set())] == [2, 3, 4]
    assert store.stats().oldest_age_ms == 56_000


def test_a_read_only_view_ages_from_the_elapsed_clock_the_agent_saved(tmp_path: Path) -> None:
    clocks = Clocks(wall=1_700_000_000.0)
    store = aged_store(tmp_path / "b.db", clocks)
    store.seal(payload_of(10), created=int(clocks.wall() * 1000), n_readings=4, pending_upto=0)
    clocks.advance(20)
    store.seal(payload_of(10), created=int(clocks.wall() * 1000), n_readings=4, pending_upto=0)
    clocks.wall_now -= 180 * 86_400  # an NTP step back: the wall-clock age would be negative
    view = BatchStore.open_readonly(tmp_path / "b.db")
    try:
        # as of the agent's last save (its last seal); this kernel's NTP status decides
        # whether time since then counts, so at least that much, and never the step
        age = view.stats().oldest_age_ms
        assert age is not None and 20_000 <= age < 20_000 + 60_000, age
    finally:
        view.close()
    assert aged_store(tmp_path / "empty.db", clocks).stats().oldest_age_ms is None


@pytest.mark.parametrize(("synced_before", "synced_after", "downtime", "dropped"), [
    (True, True, 50.0, [1]),      # both ends synchronised: the 50 s off count
    (True, True, -3600.0, []),    # the wall clock went back while off: downtime unknown, 0
    (False, True, 50.0, []),      # the last save was on an unsynchronised clock: 0
    (True, False, 50.0, []),      # not synchronised now: 0
    (None, None, 50.0, []),       # the kernel cannot say: 0
])
def test_downtime_counts_only_between_synchronised_clocks(
        tmp_path: Path, synced_before: bool | None, synced_after: bool | None,
        downtime: float, dropped: list[int]) -> None:
    clocks = Clocks()
    store = aged_store(tmp_path / "b.db", clocks, synced_before)
    store.seal(payload_of(10), created=1_000_000, n_readings=4, pending_upto=0)
    clocks.advance(20)
    store.close()  # saves the elapsed clock at 20 s
    # the machine reboots: the monotonic clock starts again near 0
    clocks.wall_now += downtime
    clocks.mono_now = 3.0
    store = aged_store(tmp_path / "b.db", clocks, synced_after)
    store.expire()
    assert [s for s in (1,) if s not in [b.seq for b in store.next_unsent(10, set())]] == dropped
    # elapsed time runs on from the saved value either way
    clocks.advance(41)
    store.expire()
    assert store.next_unsent(10, set()) == []


def test_batches_of_an_earlier_version_age_from_the_open(tmp_path: Path) -> None:
    clocks = Clocks()
    store = aged_store(tmp_path / "b.db", clocks)
    store.seal(payload_of(10), created=1_000_000, n_readings=4, pending_upto=0)
    store._conn.execute("UPDATE batches SET created_elapsed = NULL")  # as an old store has it
    store.close()
    clocks.wall_now += 10 * 86_400  # its created is days old on the wall clock
    store = aged_store(tmp_path / "b.db", clocks)
    store.expire()
    assert [b.seq for b in store.next_unsent(10, set())] == [1]
    clocks.advance(61)
    store.expire()
    assert store.next_unsent(10, set()) == []


def test_corrupt_file_is_moved_aside_and_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    path.write_bytes(b"this is not an sqlite database, the SD card lost power" * 100)
    store = BatchStore.open(path)
    assert store.recovered_from is not None and store.recovered_from.exists()
    assert store.recovered_from.name.startswith("buffer.db.corrupt-")
    [drop] = store.drop_events()
    kind, message, reported = drop.kind, drop.message, drop.reported
    assert kind == "buffer_corrupt" and not reported
    assert "moved to buffer.db.corrupt-" in message
    assert store.start_boot() == 1
    # it works as a store again
    assert store.seal(payload_of(5), created=1, n_readings=1, pending_upto=0) == 1


def test_torn_store_keeps_what_is_readable(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    store = BatchStore.open(path)
    store.start_boot()
    for i in range(40):
        store.seal(payload_of(3000 + i), created=i, n_readings=7, pending_upto=0)
    store.close()
    raw = bytearray(path.read_bytes())
    # Damage the last pages (as a torn write would), keep the header and the first pages.
    for i in range(len(raw) - 3 * 4096, len(raw)):
        raw[i] = 0xA5
    path.write_bytes(bytes(raw))
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = BatchStore.open(path)
    assert store.recovered_from is not None
    survived = store.next_unsent(100, set())
    assert 0 < len(survived) <= 40
    assert store.stats().next_seq > max(b.seq for b in survived)  # seq is never reused
    assert store.drop_events()[-1].kind == "buffer_corrupt"


# ------------------------------------------------ locked is not damaged; one agent per dir


def test_a_locked_store_is_an_error_not_damage(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.gateway.store import connection

    monkeypatch.setattr(connection, "OPEN_BUSY_SECONDS", 0.3)
    path = tmp_path / "buffer.db"
    store = BatchStore.open(path)
    store.start_boot()
    store.seal(payload_of(5), created=1, n_readings=1, pending_upto=0)
    store.close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageError, match=r"locked by another process for more than 0.3 s"):
            BatchStore.open(path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert sorted(p.name for p in tmp_path.iterdir() if "corrupt" in p.name) == []
    store = BatchStore.open(path)  # the lock is gone: the same store, nothing lost
    assert store.recovered_from is None
    assert [b.seq for b in store.next_unsent(10, set())] == [1]


def test_a_readonly_open_reads_under_a_writer_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    store = BatchStore.open(path)
    store.start_boot()
    store.seal(payload_of(5), created=1, n_readings=3, pending_upto=0)
    store._conn.execute("BEGIN IMMEDIATE")  # the running agent in the middle of a flush
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    reader = BatchStore.open_readonly(path)
    stats = reader.stats()
    assert (stats.batches, stats.readings, stats.next_seq) == (1, 3, 2)
    assert stats.identity == store.identity
    assert [b.seq for b in reader.iter_batches()] == [1]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader._conn.execute("DELETE FROM batches")
    reader.close()
    store._conn.execute("ROLLBACK")
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_a_readonly_open_never_salvages(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StorageError, match=r"buffer .*buffer.db: cannot read it"):
        BatchStore.open_readonly(path)
    assert [p.name for p in tmp_path.iterdir()] == ["buffer.db"]


def test_a_data_dir_that_cannot_be_created_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match=r"data_dir .*file/data: cannot create it"):
        BatchStore.open(tmp_path / "file" / "data" / "buffer.db")
    with pytest.raises(StorageError, match=r"data_dir .*file/data: cannot create it"):
        DataDirLock.acquire(tmp_path / "file" / "data")


def test_the_data_dir_lock_admits_one_agent(tmp_path: Path) -> None:
    lock = DataDirLock.acquire(tmp_path)
    with pytest.raises(StorageError, match=rf"data_dir {tmp_path} is in use by another agent "
                       rf"\(pid {os.getpid()}\)"):
        DataDirLock.acquire(tmp_path)
    lock.release()
    DataDirLock.acquire(tmp_path).release()


def test_the_data_dir_lock_dies_with_its_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from agent.gateway.store import DataDirLock; "
         "lock = DataDirLock.acquire(Path(sys.argv[1])); "
         "print('held', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(StorageError, match=rf"in use by another agent \(pid {holder.pid}\)"):
            DataDirLock.acquire(tmp_path)
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs
        holder.wait()
    DataDirLock.acquire(tmp_path).release()


# ------------------------------------------------------ drop reports survive their carrier


def events_kept(carried: dict[int, list[Event]]) -> Callable[[int, list[Event]], bytes]:
    def build(seq: int, events: list[Event]) -> bytes:
        carried[seq] = events
        return bytes(1000)

    return build


def test_a_report_whose_carrier_is_dropped_is_queued_again(tmp_path: Path) -> None:
    # Room for two batches: every seal drops the oldest, so each carrier of a drop report is
    # itself dropped two seals later. Whatever is kept at the end must tell of every drop.
    store = BatchStore.open(tmp_path / "b.db", bounds=StoreBounds(max_bytes=2500))
    carried: dict[int, list[Event]] = {}
    for _ in range(12):
        store.seal(events_kept(carried), created=1, n_readings=10, pending_upto=0)
    kept = [b.seq for b in store.next_unsent(10, set())]
    assert kept == [11, 12]
    # one last seal carries whatever is still unreported
    store.bounds = StoreBounds()
    store.seal(events_kept(carried), created=1, n_readings=10, pending_upto=0)
    told = [e.message for s in (*kept, 13) for e in carried[s]]
    dropped_seqs = set()
    for message in told:
        first, last = message.split("seq=")[1].split()[0].split("-")
        dropped_seqs |= set(range(int(first), int(last) + 1))
    assert dropped_seqs == set(range(1, 11))
    assert len(told) == 10  # each drop told once by the batches that survive
    assert all(d.reported for d in store.drop_events())


def test_a_delivered_carrier_keeps_its_reports_reported(tmp_path: Path) -> None:
    store = BatchStore.open(tmp_path / "b.db", bounds=StoreBounds(max_bytes=2500))
    carried: dict[int, list[Event]] = {}
    for _ in range(4):  # seals 3 and 4 drop seqs 1 and 2; seq 4 carries seq 1's report
        store.seal(events_kept(carried), created=1, n_readings=10, pending_upto=0)
    assert [len(carried[s]) for s in (3, 4)] == [0, 1]
    store.delete(4)  # acknowledged by the broker
    for _ in range(2):  # seq 3 is dropped now, seq 4 is gone: its report is not re-sent
        store.seal(events_kept(carried), created=1, n_readings=10, pending_upto=0)
    again = [e.message for s in (5, 6) for e in carried[s]]
    assert not any("seq=1-1 " in m for m in again), again
    assert any("seq=2-2 " in m for m in again), again


def older_store(path: Path, script: str) -> Path:
    """A store file as an earlier version wrote it (the tables ``script`` makes)."""
    conn = sqlite3.connect(path)
    conn.executescript(script)
    conn.close()
    return path


def test_an_older_store_gains_the_carrier_column(tmp_path: Path) -> None:
    path = older_store(
        tmp_path / "b.db",
        "CREATE TABLE drops (id INTEGER PRIMARY KEY AUTOINCREMENT, t INTEGER NOT NULL,"
        " kind TEXT NOT NULL, message TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',"
        " batches INTEGER NOT NULL, readings INTEGER NOT NULL,"
        " reported INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO drops (t, kind, message, batches, readings) VALUES (1, 'buffer_drop',"
        " 'batches=1 readings=5 seq=1-1 reason=max_bytes', 1, 5);")
    store = BatchStore.open(path)
    carried: dict[int, list[Event]] = {}
    store.seal(events_kept(carried), created=1, n_readings=1, pending_upto=0)
    assert [e.message for e in carried[1]] == ["batches=1 readings=5 seq=1-1 reason=max_bytes"]


# ---------------------------------------------------------- seq is never reused (sidecar)


def seq_file(path: Path) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads(path.with_name(f"{path.name}.seq").read_text())
    return data


def test_the_seq_reservation_stays_ahead_of_every_committed_seq(tmp_path: Path) -> None:
    from agent.gateway.store import SEQ_RESERVE

    path = tmp_path / "buffer.db"
    store = BatchStore.open(path)
    assert store.start_boot() == 1
    assert seq_file(path) == {"boot": 1, "seq_reserved": 1 + SEQ_RESERVE,
                              "store": store.identity}
    for _ in range(2 * SEQ_RESERVE + 5):
        seq = store.seal(payload_of(1), created=1, n_readings=1, pending_upto=0)
        assert seq is not None and seq < seq_file(path)["seq_reserved"]
    store.close()
    # a normal restart continues exactly (no seqs skipped)
    store = BatchStore.open(path)
    assert store.start_boot() == 2
    assert store.seal(payload_of(1), created=1, n_readings=1, pending_upto=0) == \
        2 * SEQ_RESERVE + 6


def tear(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def test_a_torn_store_resumes_boot_and_seq_past_the_reservation(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    store = BatchStore.open(path)
    store.start_boot()
    store.start_boot()
    for i in range(60):
        store.seal(payload_of(3000 + i), created=i, n_readings=7, pending_upto=0)
    reserved = seq_file(path)["seq_reserved"]
    store.close()
    tear(path)
    store = BatchStore.open(path)
    assert store.recovered_from is not None
    assert store.start_boot() == 3
    seq = store.seal(payload_of(5), created=99, n_readings=1, pending_upto=0)
    assert seq is not None and seq >= max(61, reserved)
    message = store.drop_events()[-1].message
    assert f"seq continues at {reserved} after boot 2 (from buffer.db.seq)" in message


def test_a_deleted_store_resumes_from_the_reservation(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    store = BatchStore.open(path)
    store.start_boot()
    for _ in range(3):
        store.seal(payload_of(1), created=1, n_readings=1, pending_upto=0)
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = BatchStore.open(path)
    assert store.start_boot() == 2
    seq = store.seal(payload_of(1), created=1, n_readings=1, pending_upto=0)
    assert seq is not None and seq > 3


def test_a_new_store_has_its_own_identity_and_keeps_it(tmp_path: Path) -> None:
    first = BatchStore.open(tmp_path / "a" / "buffer.db")
    other = BatchStore.open(tmp_path / "b" / "buffer.db")
    assert re.fullmatch(r"[0-9a-f]{16}", first.identity)
    assert first.identity != other.identity
    identity = first.identity
    first.close()
    assert BatchStore.open(tmp_path / "a" / "buffer.db").identity == identity


def test_a_lost_store_file_keeps_its_identity_from_the_seq_file(tmp_path: Path) -> None:
    """Deleted or torn, the store continues its seqs past the reservation: the same store."""
    path = tmp_path / "buffer.db"
    store = BatchStore.open(path)
    store.start_boot()
    identity = store.identity
    store.seal(payload_of(1), created=1, n_readings=1, pending_upto=0)
    store.close()
    tear(path)
    store = BatchStore.open(path)
    assert store.recovered_from is not None and store.identity == identity
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    assert BatchStore.open(path).identity == identity


def test_a_new_data_dir_is_a_new_store(tmp_path: Path) -> None:
    """A replaced SD card: store file and seq file gone, seq starts at 1 under a new id."""
    path = tmp_path / "buffer.db"
    store = BatchStore.open(path)
    store.start_boot()
    identity = store.identity
    store.close()
    for suffix in ("", "-wal", "-shm", ".seq"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = BatchStore.open(path)
    store.start_boot()
    assert store.identity != identity
    assert store.seal(payload_of(1), created=1, n_readings=1, pending_upto=0) == 1


def test_a_seq_file_of_an_earlier_version_without_a_store_is_read(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    path.with_name("buffer.db.seq").write_text('{"boot": 4, "seq_reserved": 250}')
    store = BatchStore.open(path)
    assert store.start_boot() == 5
    assert store.seal(payload_of(1), created=1, n_readings=1, pending_upto=0) == 250
    assert seq_file(path)["store"] == store.identity


@pytest.mark.parametrize("garbage", [b"", b"{", b"[1, 2]", b'{"boot": "x"}', b"\xff\xfe"])
def test_a_garbage_seq_file_is_ignored_with_a_warning(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "buffer.db"
    path.with_name("buffer.db.seq").write_bytes(garbage)
    store = BatchStore.open(path)
    assert store.start_boot() == 1
    assert store.seal(payload_of(1), created=1, n_readings=1, pending_upto=0) == 1
    assert seq_file(path)["boot"] == 1  # rewritten whole


def test_a_drop_counts_the_events_and_kpi_windows_it_lost(tmp_path: Path) -> None:
    store = BatchStore.open(tmp_path / "b.db", bounds=StoreBounds(max_bytes=2500))
    for events, aggregates in ((2, 1), (3, 0), (0, 4)):
        store.seal(payload_of(1000), created=1, n_readings=10, pending_upto=0,
                   n_events=events, n_aggregates=aggregates)
    [drop] = store.drop_events()
    kind, message, batches, readings = drop.kind, drop.message, drop.batches, drop.readings
    assert (kind, batches, readings) == ("buffer_drop", 1, 10)
    assert "readings=10 events=2 aggregates=1 seq=1-1" in message
    stats = store.stats()
    assert (stats.dropped_events, stats.dropped_aggregates) == (2, 1)
    # drop_newest counts the refused batch's events too
    newest = BatchStore.open(tmp_path / "n.db",
                             bounds=StoreBounds(max_bytes=1500, when_full="drop_newest"))
    newest.seal(payload_of(1000), created=1, n_readings=1, pending_upto=0)
    assert newest.seal(payload_of(1000), created=1, n_readings=5, pending_upto=0,
                       n_events=7, n_aggregates=2) is None
    assert (newest.stats().dropped_events, newest.stats().dropped_aggregates) == (7, 2)


def test_an_older_store_gains_the_count_columns(tmp_path: Path) -> None:
    path = older_store(
        tmp_path / "b.db",
        "CREATE TABLE batches (seq INTEGER PRIMARY KEY, created INTEGER NOT NULL,"
        " n_readings INTEGER NOT NULL, payload BLOB NOT NULL);"
        "INSERT INTO batches VALUES (1, 5, 3, x'00');")
    store = BatchStore.open(path, bounds=StoreBounds(max_bytes=1))
    store.seal(payload_of(1), created=6, n_readings=1, pending_upto=0, n_events=1)
    assert "readings=3 events=0 aggregates=0 seq=1-1" in store.drop_events()[0].message


# ------------------------------------------------------------------- pending row encoding

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False), st.floats(width=32, allow_nan=False),
)


@given(st.lists(st.tuples(st.sampled_from(["m1", "meter-02", "ü"]), st.text(max_size=8),
                          st.one_of(st.none(), st.sampled_from(["W", "kWh", "µg/m³"])),
                          st.integers(min_value=0, max_value=2**53), VALUES,
                          st.sampled_from(list(Quality))), max_size=40))
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_pending_rows_round_trip_every_value_exactly(
        tmp_path: Path, rows: list[tuple[str, str, str | None, int, Any, Quality]]) -> None:
    path = tmp_path / f"p{len(list(tmp_path.iterdir()))}.db"
    store = BatchStore.open(path)
    given_readings = [Reading(*row) for row in rows]
    store.append_pending(given_readings, [])
    got = store.load_pending().readings
    assert [(r, type(r.value)) for r in got] == [(r, type(r.value)) for r in given_readings]
    store.close()


def test_pending_nan_and_infinity_survive(tmp_path: Path) -> None:
    store = BatchStore.open(tmp_path / "b.db")
    store.append_pending([Reading("m", "p", None, 1, math.nan, Quality.GOOD),
                          Reading("m", "p", None, 2, -math.inf, Quality.GOOD)], [])
    got = store.load_pending().readings
    assert math.isnan(float(got[0].value or 0)) and got[1].value == -math.inf


def test_pending_rows_of_an_earlier_version_still_load(tmp_path: Path) -> None:
    import msgpack
    import zstandard

    path = tmp_path / "b.db"
    BatchStore.open(path).close()
    legacy = {"r": [["m1", "p0", "W", 5, 1.5, 0], ["m1", "p1", None, 6, None, 2]],
              "e": [[5, "device_up", "m1", ""]], "a": []}
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO pending (body) VALUES (?)",
                 (zstandard.ZstdCompressor().compress(msgpack.packb(legacy)),))
    conn.commit()
    conn.close()
    got, events, _, _ = BatchStore.open(path).load_pending()
    assert got == [Reading("m1", "p0", "W", 5, 1.5, Quality(0)),
                   Reading("m1", "p1", None, 6, None, Quality(2))]
    assert events == [Event(5, "device_up", "m1", "")]


def test_a_new_store_uses_small_pages(tmp_path: Path) -> None:
    from agent.gateway.store import PAGE_SIZE

    path = tmp_path / "b.db"
    BatchStore.open(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 1024
    conn.close()


# ------------------------------------------------ the schema's recorded version (user_version)

# A store file as the agent wrote it before the schema version was recorded (user_version 0):
# the tables of that code, verbatim, and rows of each kind.
UNVERSIONED_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE pending (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE batches (
    seq INTEGER PRIMARY KEY,
    created INTEGER NOT NULL,
    n_readings INTEGER NOT NULL,
    payload BLOB NOT NULL,
    n_events INTEGER NOT NULL DEFAULT 0,
    n_aggregates INTEGER NOT NULL DEFAULT 0,
    created_elapsed INTEGER
);
CREATE TABLE kpi_state (id INTEGER PRIMARY KEY CHECK (id = 1), t INTEGER NOT NULL,
                        body BLOB NOT NULL);
CREATE TABLE kpi_journal (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE set_aside (id INTEGER PRIMARY KEY, t INTEGER NOT NULL,
                        what TEXT NOT NULL, reason TEXT NOT NULL, body BLOB);
CREATE TABLE drops (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    t INTEGER NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    batches INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0,
    carrier INTEGER
);
INSERT INTO meta VALUES ('boot', 3), ('next_seq', 8), ('dropped_batches', 1),
    ('dropped_readings', 5), ('dropped_events', 0), ('dropped_aggregates', 0),
    ('store_id', 81985529216486895);
INSERT INTO batches (seq, created, n_readings, payload) VALUES (6, 1000, 5, X'0102'),
    (7, 2000, 4, X'0304');
INSERT INTO drops (t, kind, message, reason, batches, readings)
    VALUES (900, 'buffer_drop', 'batches=1 readings=5 seq=5-5 reason=max_bytes', 'max_bytes',
            1, 5);
"""

# The same from an earlier release still: before the columns "add missing columns" added.
OLDEST_SCHEMA = (UNVERSIONED_SCHEMA
                 .replace(",\n    n_events INTEGER NOT NULL DEFAULT 0,\n"
                          "    n_aggregates INTEGER NOT NULL DEFAULT 0,\n"
                          "    created_elapsed INTEGER\n", "\n")
                 .replace(",\n    carrier INTEGER\n", "\n"))


def columns(conn: sqlite3.Connection) -> dict[str, list[str]]:
    tables = [t for (t,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name")]
    return {t: [row[1] for row in conn.execute(f"PRAGMA table_info({t})")] for t in tables}


def contents(path: Path) -> tuple[object, ...]:
    conn = sqlite3.connect(path)
    try:
        return (conn.execute("PRAGMA user_version").fetchone()[0],
                conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall(),
                conn.execute("SELECT * FROM meta WHERE key NOT LIKE 'elapsed%' ORDER BY key"
                             ).fetchall(),
                conn.execute("SELECT * FROM batches ORDER BY seq").fetchall(),
                conn.execute("SELECT * FROM drops ORDER BY id").fetchall())
    finally:
        conn.close()


@pytest.mark.parametrize("old_schema", [UNVERSIONED_SCHEMA, OLDEST_SCHEMA],
                         ids=["unversioned", "before_added_columns"])
def test_a_store_of_an_earlier_version_is_brought_to_the_current_schema(
        tmp_path: Path, old_schema: str) -> None:
    from agent.gateway.store.schema import SCHEMA_VERSION

    path = tmp_path / "buffer.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(old_schema)
        assert conn.execute("PRAGMA user_version").fetchone() == (0,)
    conn.close()
    store = BatchStore.open(path)
    # data intact
    assert [(b.seq, b.created, b.n_readings, b.payload) for b in store.iter_batches()] == [
        (6, 1000, 5, b"\x01\x02"), (7, 2000, 4, b"\x03\x04")]
    [drop] = store.drop_events()
    assert (drop.kind, drop.batches, drop.readings, drop.reported) == (
        "buffer_drop", 1, 5, False)
    stats = store.stats()
    assert (stats.boot, stats.next_seq, stats.dropped_batches, stats.dropped_readings) == (
        3, 8, 1, 5)
    assert store.identity == f"{81985529216486895:016x}"
    # and it works as a current store: a new batch carries the drop report
    assert store.seal(payload_of(10), created=3000, n_readings=2, pending_upto=0) == 8
    assert store.drop_events()[0].reported
    store.close()
    fresh = tmp_path / "fresh.db"
    BatchStore.open(fresh).close()
    with sqlite3.connect(path) as migrated, sqlite3.connect(fresh) as new:
        assert migrated.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert columns(migrated) == columns(new)
        assert new.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    migrated.close()
    new.close()
    # opened twice: nothing to do
    before = contents(path)
    BatchStore.open(path).close()
    assert contents(path) == before


def test_migrations_are_applied_once_and_recorded(tmp_path: Path) -> None:
    from agent.gateway.store.schema import SCHEMA_VERSION, migrate

    conn = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    conn.executescript(OLDEST_SCHEMA)
    assert migrate(conn) == list(range(1, SCHEMA_VERSION + 1))
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert "carrier" in columns(conn)["drops"]
    assert migrate(conn) == []
    conn.close()


def test_a_store_of_a_newer_version_is_used_as_it_is(tmp_path: Path) -> None:
    from agent.gateway.store.schema import SCHEMA_VERSION

    path = tmp_path / "b.db"
    BatchStore.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    store = BatchStore.open(path)
    assert store.seal(payload_of(10), created=1, n_readings=1, pending_upto=0) == 1
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
    conn.close()


def test_a_rollback_keeps_a_buffer_a_newer_agent_migrated(tmp_path: Path) -> None:
    """An upgrade that migrated the buffer, then a rollback to this version (docs/install.md):
    what a newer version adds the way migrations add things (a table, a column with a default)
    does not stop this one from sending what is stored, storing more, and leaving the newer
    schema for the next upgrade."""
    from agent.gateway.store.schema import SCHEMA_VERSION

    path = tmp_path / "b.db"
    store = BatchStore.open(path)
    assert store.seal(payload_of(10), created=1, n_readings=1, pending_upto=0) == 1
    store.close()
    with sqlite3.connect(path) as conn:  # what the newer version's migration did
        conn.execute("CREATE TABLE newer_things (id INTEGER PRIMARY KEY, body BLOB)")
        conn.execute("ALTER TABLE batches ADD COLUMN newer_flag INTEGER NOT NULL DEFAULT 0")
        conn.execute("INSERT INTO newer_things VALUES (1, x'01')")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    store = BatchStore.open(path)
    assert [b.seq for b in store.next_unsent(10, set())] == [1]  # the backlog goes out
    store.delete(1)
    assert store.seal(payload_of(10), created=2, n_readings=1, pending_upto=0) == 2
    assert store.stats().batches == 1
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
        assert conn.execute("SELECT body FROM newer_things").fetchall() == [(b"\x01",)]
        assert conn.execute("SELECT seq, newer_flag FROM batches").fetchall() == [(2, 0)]
    conn.close()


def test_a_backup_restored_under_a_raised_seq_file_boot_reuses_no_seq(tmp_path: Path) -> None:
    """docs/install.md's backup and restore: a backup taken while the agent runs (SQLite's
    online backup), put back later; raising the boot in ``buffer.db.seq`` by one tells the
    agent its store is behind, so numbering goes on above every seq reserved since."""
    import json

    path = tmp_path / "buffer.db"
    store = BatchStore.open(path)
    store.start_boot()
    for created in (1, 2):
        store.seal(payload_of(10), created=created, n_readings=1, pending_upto=0)
    backup = tmp_path / "backup.db"
    with sqlite3.connect(path) as live, sqlite3.connect(backup) as copy:
        live.backup(copy)
    live.close()
    copy.close()
    for created in (3, 4):  # sealed and delivered after the backup
        seq = store.seal(payload_of(10), created=created, n_readings=1, pending_upto=0)
    assert seq == 4
    for sent in (1, 2, 3, 4):
        store.delete(sent)
    store.close()
    for name in ("buffer.db", "buffer.db-wal", "buffer.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    backup.rename(path)
    seq_file = tmp_path / "buffer.db.seq"
    ledger = json.loads(seq_file.read_text())
    ledger["boot"] += 1
    seq_file.write_text(json.dumps(ledger))
    store = BatchStore.open(path)
    store.start_boot()
    assert [b.seq for b in store.next_unsent(10, set())] == [1, 2]  # sent again: duplicates
    after = store.seal(payload_of(10), created=5, n_readings=1, pending_upto=0)
    assert after is not None and after > 4
    store.close()


def test_a_drop_at_every_seal_of_a_long_outage_logs_a_line_per_period(tmp_path: Path) -> None:
    """A dead uplink for 3 hours, a batch a minute, max_age 1 min: a batch dropped at every
    seal. Before, a buffer_drop line each (180); now one, then a buffer_drop_summary per 15
    minutes adding them up. The ledger still holds every drop, reported to the platform."""
    clocks = Clocks()
    store = aged_store(tmp_path / "buffer.db", clocks)
    with capture_logs() as logs:
        for _ in range(180):
            store.seal(payload_of(100), created=1, n_readings=3, pending_upto=0)
            clocks.advance(61.0)
            store.expire()
    lines = [e for e in logs if e["event"].startswith("buffer_drop")]
    assert [e["event"] for e in lines] == ["buffer_drop"] + ["buffer_drop_summary"] * 11
    assert all(e["period_seconds"] >= 900 for e in lines[1:])
    dropped = len(store.drop_events())
    assert dropped >= 178
    assert lines[0]["batches"] + sum(e["batches"] for e in lines[1:]) <= dropped
    assert lines[0]["batches"] + sum(e["batches"] for e in lines[1:]) >= dropped - 15
    assert sum(e["readings"] for e in lines[1:]) == 3 * sum(e["batches"] for e in lines[1:])
    # closing says what was added up since the last line: the lines then sum to the ledger
    with capture_logs() as logs:
        store.close()
    last = [e for e in logs if e["event"].startswith("buffer_drop")]
    assert [e["event"] for e in last] == ["buffer_drop_summary"], last
    said = lines + last
    assert sum(e["batches"] for e in said) == dropped
    assert sum(e["readings"] for e in said) == 3 * dropped
