"""The SQLite buffer: pending rows, sealing in one transaction, boot/seq persistence."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.readings import Event, Quality, Reading
from agent.store import BatchStore


def readings(n: int, t0: int = 1_000) -> list[Reading]:
    return [Reading("m1", f"p{i % 3}", "W", t0 + i, float(i) if i % 4 else None,
                    Quality.GOOD if i % 4 else Quality.COMM_ERROR) for i in range(n)]


def test_boot_and_seq_persist_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    store = BatchStore.open(path)
    assert store.start_boot() == 1
    seqs = [store.seal(lambda s: b"x%d" % s, created=1, n_readings=0, pending_upto=0)
            for _ in range(3)]
    store.close()
    store = BatchStore.open(path)
    assert store.start_boot() == 2
    assert store.seal(lambda s: b"y", created=2, n_readings=0, pending_upto=0) == 4
    assert seqs == [1, 2, 3]


def test_pending_readings_round_trip_exactly(tmp_path: Path) -> None:
    store = BatchStore.open(tmp_path / "b.db")
    first, second = readings(10), readings(5, t0=9_000)
    store.append_pending(first, [Event(1, "device_down", "m1", "no answer")])
    last = store.append_pending(second, [])
    got, events, upto = store.load_pending()
    assert got == first + second
    assert events == [Event(1, "device_down", "m1", "no answer")]
    assert upto == last


def test_seal_moves_pending_into_one_batch_atomically(tmp_path: Path) -> None:
    store = BatchStore.open(tmp_path / "b.db")
    upto = store.append_pending(readings(4), [])
    seq = store.seal(lambda s: f"batch-{s}".encode(), created=5, n_readings=4, pending_upto=upto)
    assert store.load_pending() == ([], [], 0)
    assert [(b.seq, b.payload, b.n_readings) for b in store.next_unsent(10, set())] == [
        (seq, b"batch-1", 4)]

    # A failing build leaves everything as it was: readings stay pending, seq is not used.
    upto = store.append_pending(readings(2), [])

    def broken(seq: int) -> bytes:
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError):
        store.seal(broken, created=6, n_readings=2, pending_upto=upto)
    assert len(store.load_pending()[0]) == 2
    assert store.seal(lambda s: b"ok", created=7, n_readings=2, pending_upto=upto) == seq + 1


def test_next_unsent_is_oldest_first_and_skips_in_flight(tmp_path: Path) -> None:
    store = BatchStore.open(tmp_path / "b.db")
    for _ in range(6):
        store.seal(lambda s: bytes([s]), created=s_created(), n_readings=1, pending_upto=0)
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
from agent.store import BatchStore
from agent.readings import Reading, Quality
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
    got, _, _ = store.load_pending()
    assert len(got) == 20 * 50
    assert sorted(r.t for r in got) == sorted(k * 1000 + i for k in range(20) for i in range(50))
    # and the file is a healthy SQLite database
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)
