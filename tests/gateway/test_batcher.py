"""The batcher over a real SQLite store: flush/seal, recovery after a crash, and a full disk
(a real, tiny tmpfs) that stops writes without losing what was accepted."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.errors import StorageError
from agent.gateway.batcher import HELD_BATCHES, Batcher
from agent.gateway.store import BatchStore, DataDirLock
from agent.readings import Event, Quality, Reading
from agent.wire import BufferHealth, decode_batch, iter_readings


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def batcher_for(store: BatchStore, clock: Clock, max_readings: int = 1000) -> Batcher:
    return Batcher(store, gw="gw-t", boot=1, max_readings=max_readings, max_age=10.0, codec=1,
                   level=3, clock=clock, on_sealed=lambda: None)


def poll(t: int, n: int = 20, dev: str = "m1") -> list[Reading]:
    return [Reading(dev, f"p{i}", "W", t, float(t % 1000 + i), Quality.GOOD) for i in range(n)]


def stored_readings(store: BatchStore) -> list[Reading]:
    out: list[Reading] = []
    for payload in (b.payload for b in store.iter_batches()):
        out.extend(iter_readings(decode_batch(payload)))
    return out


def test_seals_by_age_and_by_size_and_keeps_every_reading(tmp_path: Path) -> None:
    clock = Clock()
    store = BatchStore.open(tmp_path / "b.db")
    batcher = batcher_for(store, clock, max_readings=100)
    sent: list[Reading] = []
    for k in range(30):
        readings = poll(k * 1000)
        sent += readings
        batcher.add(readings)
        batcher.add_event(Event(k * 1000, "device_down", "m1", "x")) if k == 3 else None
        clock.now += 1
        batcher.flush()
    batcher.close()
    assert sorted(stored_readings(store), key=lambda r: (r.t, r.point)) == sorted(
        sent, key=lambda r: (r.t, r.point))
    batches = [decode_batch(p) for p in (b.payload for b in store.iter_batches())]
    assert all(b.n_readings <= 100 for b in batches)  # sealed by size (5 polls of 20)
    assert sum(len(b.events) for b in batches) == 1


def test_recover_takes_back_committed_readings(tmp_path: Path) -> None:
    clock = Clock()
    store = BatchStore.open(tmp_path / "b.db")
    first = batcher_for(store, clock)
    first.add(poll(1000))
    first.flush()  # committed, not sealed
    first.add(poll(2000))  # accepted, not yet committed: what a crash may lose
    store.close()
    store = BatchStore.open(tmp_path / "b.db")
    second = batcher_for(store, clock)
    assert second.recover() == 20
    second.close()
    assert {r.t for r in stored_readings(store)} == {1000}


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> None:
    """Take every free byte of the filesystem (unbuffered, so nothing fails later)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            try:
                os.write(fd, b"\0" * 4096)
            except OSError:
                break
        while True:  # and the last few bytes
            try:
                os.write(fd, b"\0")
            except OSError:
                break
    finally:
        os.close(fd)


def test_disk_full_holds_readings_then_recovers_without_loss(tiny_fs: Path) -> None:
    clock = Clock()
    store = BatchStore.open(tiny_fs / "b.db")
    batcher = batcher_for(store, clock, max_readings=400)
    batcher.add(poll(0))
    batcher.flush()
    filler = tiny_fs / "filler"
    fill(filler)
    sent = poll(0)
    with capture_logs() as logs:
        for k in range(1, 40):
            readings = poll(k * 1000)
            sent += readings
            batcher.add(readings)
            clock.now += 1
            batcher.flush()  # must not raise
    failures = [e for e in logs if e["event"] == "buffer_write_failed"]
    assert len(failures) == 1, "a full disk is logged once, not per flush"
    assert "disk is full" in failures[0]["error"] or "full" in failures[0]["error"]
    assert batcher.stats.write_errors > 1
    filler.unlink()
    with capture_logs() as logs:
        clock.now += 1
        batcher.flush()
        batcher.close()
    assert any(e["event"] == "buffer_writable_again" for e in logs)
    assert sorted((r.t, r.point) for r in stored_readings(store)) == sorted(
        (r.t, r.point) for r in sent)
    assert store.stats().dropped_readings == 0


def test_disk_full_for_too_long_drops_oldest_in_memory_and_reports_it(tiny_fs: Path) -> None:
    clock = Clock()
    store = BatchStore.open(tiny_fs / "b.db")
    batcher = batcher_for(store, clock, max_readings=20)  # holds 10 batches × 20 readings
    told: list[BufferHealth] = []
    batcher.on_health_change = lambda: told.append(batcher.health())
    batcher.add(poll(0))
    batcher.flush()
    batcher.seal()
    assert batcher.health() == BufferHealth("ok") and told == []
    filler = tiny_fs / "filler"
    fill(filler)
    # The slack of the WAL file's last block may take a flush or two more (a small commit
    # fits where a seal does not): the polls from the first failed flush on are held in memory.
    k, flushes = 0, batcher.stats.flushes
    while batcher.stats.flushes > flushes or k == 0:
        flushes = batcher.stats.flushes
        k += 1
        assert k < 10, "the filled file system kept accepting writes"
        batcher.add(poll(k * 1000))
        clock.now += 1
        batcher.flush()
    first_failed, polls = k, 30
    failed_at = int(clock.now * 1000)
    for k in range(first_failed + 1, first_failed + polls):
        batcher.add(poll(k * 1000))
        clock.now += 1
        batcher.flush()
    lost = polls * 20 - HELD_BATCHES * 20
    assert batcher.stats.lost_in_memory == lost
    # the status is told once when a write (a seal, or the commit of held readings) first
    # fails, once when dropping begins: not per flush
    assert [(h.state, h.reason, h.dropped_readings) for h in told] == [
        ("unwritable", "database or disk is full", 0),
        ("unwritable", "database or disk is full", 20)]
    assert told[0].since == told[1].since and told[0].since is not None
    assert told[0].since <= failed_at
    assert told[1].held_readings == HELD_BATCHES * 20
    assert batcher.health().dropped_readings == lost
    filler.unlink()
    clock.now += 1
    batcher.flush()
    assert told[2:] == [BufferHealth("ok")]
    batcher.close()
    kept = {r.t for r in stored_readings(store)}
    # the newest are kept, the oldest went: exactly the counted ones
    last = first_failed + polls - 1
    assert kept == {k * 1000 for k in range(first_failed)} | {
        k * 1000 for k in range(last - HELD_BATCHES + 1, last + 1)}
    assert store.stats().dropped_readings == lost
    reports = [e for p in (b.payload for b in store.iter_batches()) for e in decode_batch(p).events
               if e["kind"] == "buffer_drop"]
    assert len(reports) == 1 and f"readings={lost}" in reports[0]["msg"]


@pytest.mark.parametrize("poll_offset", [0.0, 0.3, 0.7])
def test_a_batch_is_sealed_before_it_is_max_age_old(tmp_path: Path, poll_offset: float) -> None:
    """Polls every 1 s, flushes every 1 s, batch_max_age 5 s: a batch every 5 polls, not 6.

    Sealing at the first flush *after* max_age took in the poll between that flush and the one
    before, so batches came every 6 s with batch_max_age = "5 s" (the demo's banner).
    """
    clock = Clock()
    store = BatchStore.open(tmp_path / "b.db")
    batcher = Batcher(store, gw="gw-t", boot=1, max_readings=1000, max_age=5.0, codec=1,
                      level=3, clock=clock, on_sealed=lambda: None, flush_interval=1.0)
    start = clock.now
    for k in range(40):
        clock.now = start + k + poll_offset
        batcher.add(poll(round(clock.now * 1000), n=2))
        clock.now = start + k + 1
        batcher.flush()
    batches = [decode_batch(p) for p in (b.payload for b in store.iter_batches())]
    assert len(batches) == 8
    assert [b.n_readings for b in batches] == [5 * 2] * 8
    assert {b2.created - b1.created for b1, b2 in itertools.pairwise(batches)} == {5000}
    for b in batches:  # no reading waited longer than max_age in the open batch
        assert b.created - min(r.t for r in iter_readings(b)) <= 5000


# ------------------------------------------------------------------------------ clock steps


class TwoClocks:
    def __init__(self) -> None:
        self.wall_now = 1_700_000_000.0
        self.mono_now = 50.0

    def wall(self) -> float:
        return self.wall_now

    def mono(self) -> float:
        return self.mono_now

    def advance(self, seconds: float) -> None:
        self.wall_now += seconds
        self.mono_now += seconds


@pytest.mark.parametrize(("step", "synced"), [(-90.0, False), (180 * 86400.0, True),
                                              (-3600.0, None)])
def test_a_clock_step_corrects_what_is_open_and_is_sent_once(
        tmp_path: Path, step: float, synced: bool | None) -> None:
    from agent.gateway.clock import ClockWatch

    clocks = TwoClocks()
    watch = ClockWatch(clocks.wall, clocks.mono, synced=lambda: synced)
    store = BatchStore.open(tmp_path / "b.db")
    batcher = Batcher(store, gw="gw-t", boot=4, max_readings=1000, max_age=5.0, codec=1,
                      level=3, clock=clocks.wall, on_sealed=lambda: None, watch=watch)
    taken: list[tuple[float, int]] = []  # (true wall time of the poll, stamp)
    for _ in range(12):  # a poll a second; sealed by age after 5 s
        t = round(clocks.wall() * 1000)
        batcher.add(poll(t, n=2))
        taken.append((clocks.wall(), t))
        clocks.advance(1)
        watch.check()
        batcher.flush()
    sealed_before = store.last_seq()
    assert sealed_before == 2
    open_stamps = [t for _, t in taken[10:]]
    clocks.wall_now += step
    with capture_logs() as logs:
        watch.check()
    # sealed at once: the batch with the event holds the open readings, moved by the step
    assert store.last_seq() == sealed_before + 1
    batches = [decode_batch(p) for p in (b.payload for b in store.iter_batches())]
    last = batches[-1]
    assert sorted({r.t for r in iter_readings(last)}) == [t + round(step * 1000)
                                                          for t in open_stamps]
    steps = [e for b in batches for e in b.events if e["kind"] == "clock_step"]
    assert len(steps) == 1 and steps[0]["dev"] is None
    words = dict(w.split("=") for w in steps[0]["msg"].split())
    assert words == {"step_ms": str(round(step * 1000)), "boot": "4", "from_seq": "1",
                     "before_seq": str(sealed_before + 1),
                     "synced": {False: "false", True: "true", None: "unknown"}[synced]}
    assert steps[0]["t"] == round(clocks.wall() * 1000)
    # batches sealed before the step keep their stamps (the event names them)
    assert sorted(r.t for b in batches[:-1] for r in iter_readings(b)) == sorted(
        t for _, t in taken[:10] for _ in range(2))
    assert [e["event"] for e in logs].count("clock_step") == 1
    # the body says whether the kernel had the clock synchronised
    assert all(b.clock == ({"synced": False} if synced is False else None) for b in batches)
    # a step does not age or hold the open batch: it seals 5 s of elapsed time later
    for _ in range(4):
        batcher.add(poll(round(clocks.wall() * 1000), n=2))
        clocks.advance(1)
        batcher.flush()
    assert store.last_seq() == sealed_before + 1
    clocks.advance(1)
    batcher.flush()
    assert store.last_seq() == sealed_before + 2


def test_a_clock_step_names_the_batches_of_its_boot_after_what_was_recovered(
        tmp_path: Path) -> None:
    """Readings a previous run left pending were stamped in that run: sealed at the start of
    this boot, they lie below the step's ``from_seq`` and the platform does not move them."""
    from agent.gateway.clock import ClockWatch

    clocks = TwoClocks()
    store = BatchStore.open(tmp_path / "b.db")
    first = Batcher(store, gw="gw-t", boot=1, max_readings=10, max_age=60.0, codec=1,
                    level=3, clock=clocks.wall, on_sealed=lambda: None)
    for _ in range(5):  # committed, not sealed: what a power cut leaves pending
        first.add(poll(round(clocks.wall() * 1000), n=1))
        clocks.advance(1)
        first.flush()
    assert store.last_seq() == 0
    store.close()
    store = BatchStore.open(tmp_path / "b.db")
    watch = ClockWatch(clocks.wall, clocks.mono, synced=lambda: True)
    second = Batcher(store, gw="gw-t", boot=2, max_readings=10, max_age=60.0, codec=1,
                     level=3, clock=clocks.wall, on_sealed=lambda: None, watch=watch)
    assert second.recover() == 5
    recovered = store.last_seq()
    for _ in range(12):  # this boot's first batch sealed by size, 2 readings open
        second.add(poll(round(clocks.wall() * 1000), n=1))
        clocks.advance(1)
        second.flush()
    assert store.last_seq() == recovered + 1
    clocks.wall_now += 3600
    watch.check()
    [step] = [e for p in (b.payload for b in store.iter_batches()) for e in decode_batch(p).events
              if e["kind"] == "clock_step"]
    words = dict(w.split("=") for w in step["msg"].split())
    assert (words["boot"], words["from_seq"], words["before_seq"]) == (
        "2", str(recovered + 1), str(recovered + 2))


# ------------------------------------------- the store file deleted / data_dir read-only


def unavailable_events(store: BatchStore) -> list[dict[str, object]]:
    return [e for p in (b.payload for b in store.iter_batches()) for e in decode_batch(p).events
            if e["kind"] == "buffer_unavailable"]


@pytest.mark.parametrize("remove", ["file", "data_dir"])
def test_a_deleted_store_is_reported_once_and_written_back_whole(tmp_path: Path,
                                                                 remove: str) -> None:
    clock = Clock()
    data = tmp_path / "data"
    store = BatchStore.open(data / "buffer.db")
    store.lock = DataDirLock.acquire(data)
    store.start_boot()
    identity = store.identity
    batcher = batcher_for(store, clock, max_readings=100)
    sent: list[Reading] = []
    for k in range(8):  # a sealed batch (unsent) and pending rows
        sent += poll(k * 1000)
        batcher.add(poll(k * 1000))
        clock.now += 1
        batcher.flush()
    assert store.stats().batches == 1 and store.stats().pending_rows > 0
    if remove == "file":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{data / 'buffer.db'}{suffix}").unlink()
    else:
        shutil.rmtree(data)
    with capture_logs() as logs:
        for k in range(8, 30):
            sent += poll(k * 1000)
            batcher.add(poll(k * 1000))
            clock.now += 1
            batcher.flush()
        batcher.close()
    assert [e["reason"] for e in logs if e["event"] == "buffer_store_unavailable"] == [
        "deleted" if remove == "file" else "data_dir deleted"]
    assert [e["recreated"] for e in logs if e["event"] == "buffer_store_available"] == [True]
    # the file at the path is the store, with everything: nothing lost, seq and id continue
    again = BatchStore.open(data / "buffer.db")
    assert again.identity == identity
    assert sorted((r.t, r.point) for r in stored_readings(again)) == sorted(
        (r.t, r.point) for r in sent)
    assert [b.seq for b in again.iter_batches()] == [1, 2, 3, 4, 5, 6]  # 30 polls of 20
    assert len(unavailable_events(again)) == 1
    assert json.loads((data / "buffer.db.seq").read_text())["store"] == identity
    with pytest.raises(StorageError, match="in use by another agent"):  # the lock is back
        DataDirLock.acquire(data)


def test_a_read_only_data_dir_holds_within_bounds_keeps_sending_and_recovers(
        tmp_path: Path, read_only: Callable[[Path], Callable[[], None]]) -> None:
    clock = Clock()
    data = tmp_path / "data"
    store = BatchStore.open(data / "buffer.db")
    store.start_boot()
    batcher = batcher_for(store, clock, max_readings=20)  # holds 10 batches × 20 readings
    told: list[BufferHealth] = []
    batcher.on_health_change = lambda: told.append(batcher.health())
    for k in range(3):
        batcher.add(poll(k * 1000))
        clock.now += 1
        batcher.flush()
        batcher.seal()
    undo = read_only(data)
    polls = 30
    with capture_logs() as logs:
        for k in range(3, 3 + polls):
            batcher.add(poll(k * 1000))
            clock.now += 1
            batcher.flush()
        # what was sealed before still goes out, and is forgotten after its PUBACK
        sendable = store.next_unsent(10, set())
        assert [b.seq for b in sendable] == [1, 2, 3]
        store.delete(1)
    assert [e["reason"] for e in logs if e["event"] == "buffer_store_unavailable"] == [
        "data_dir read-only"]
    assert len([e for e in logs if e["event"] == "buffer_write_failed"]) == 1
    assert len([e for e in logs if e["event"] == "readings_dropped_in_memory"]) == 1
    lost = polls * 20 - HELD_BATCHES * 20
    assert batcher.stats.lost_in_memory == lost
    assert [(h.state, h.reason, h.since, h.dropped_readings) for h in told] == [
        ("unwritable", "data_dir read-only", 1_700_000_004_000, 0),
        ("unwritable", "data_dir read-only", 1_700_000_004_000, 20)]
    undo()
    with capture_logs() as logs:
        clock.now += 1
        batcher.flush()
        batcher.close()
    assert told[2:] == [BufferHealth("ok")]
    assert [e["recreated"] for e in logs if e["event"] == "buffer_store_available"] == [False]
    assert [e["dropped"] for e in logs if e["event"] == "buffer_writable_again"] == [lost]
    kept = {r.t for r in stored_readings(store)}
    last = 3 + polls - 1
    assert kept == {1000, 2000} | {k * 1000 for k in range(last - HELD_BATCHES + 1, last + 1)}
    assert store.stats().dropped_readings == lost
    events = [e for p in (b.payload for b in store.iter_batches()) for e in decode_batch(p).events]
    assert [e["kind"] for e in events].count("buffer_unavailable") == 1
    assert [e["msg"] for e in events if e["kind"] == "buffer_drop"] == [
        f"batches=0 readings={lost} reason=store_unwritable"]


def test_a_stop_while_the_store_is_unusable_says_what_memory_held(
        tmp_path: Path, read_only: Callable[[Path], Callable[[], None]]) -> None:
    clock = Clock()
    data = tmp_path / "data"
    store = BatchStore.open(data / "buffer.db")
    batcher = batcher_for(store, clock, max_readings=20)
    undo = read_only(data)
    with capture_logs() as logs:
        for k in range(12):
            batcher.add(poll(k * 1000))
            clock.now += 1
            batcher.flush()
        batcher.close()
    undo()
    [lost] = [e for e in logs if e["event"] == "readings_lost_at_stop"]
    assert (lost["held"], lost["dropped_unreported"]) == (HELD_BATCHES * 20, 2 * 20)
