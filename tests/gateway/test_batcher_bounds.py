"""Bounds of sealing and of a start: no batch over what receivers accept, nothing that can never
be sent stays pending, and no pending backlog, KPI checkpoint or journal can make a start fail.
Real SQLite stores, a real tmpfs for the full disk."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard
from structlog.testing import capture_logs

import agent.gateway.batcher as batcher_module
import agent.gateway.store.kpi_checkpoints as kpi_checkpoints_module
import agent.kpi.live as live_module
from agent.config import AgentConfig, config_from_dict
from agent.gateway.batcher import BATCH_AGGREGATES_CAP, HELD_STEPS, Batcher
from agent.gateway.store import BatchStore
from agent.kpi.live import LiveKpis
from agent.readings import Event, Quality, Reading
from agent.wire import MAGIC, MAX_BODY_BYTES, decode_batch, iter_readings
from tests.gateway.test_batcher import Clock, batcher_for, fill, poll, tiny_fs

__all__ = ["tiny_fs"]  # the fixture, used by name


def aggregate(i: int, kpi: str = "k") -> dict[str, Any]:
    start = 1_700_000_000_000 + i * 60_000
    return {"kpi": kpi, "src": "m1.p0", "start": start, "end": start + 60_000, "value": 1.5,
            "valid": True, "n": 12, "expected": 12, "coverage": 1.0, "unit": None}


def decoded(store: BatchStore) -> list[Any]:
    return [decode_batch(b.payload) for b in store.iter_batches()]


def body_size(payload: bytes) -> int:
    return int(zstandard.frame_content_size(payload[len(MAGIC) + 1:]))


def test_a_large_open_batch_is_sealed_as_several_batches_under_the_body_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batcher_module, "BODY_TARGET_BYTES", 40_000)
    clock = Clock()
    store = BatchStore.open(tmp_path / "b.db")
    batcher = batcher_for(store, clock, max_readings=1_000_000)
    sent: list[Reading] = []
    for k in range(100):
        readings = poll(k * 1000, n=50)
        sent += readings
        batcher.add(readings)
    for i in range(30):
        batcher.add_event(Event(i, "device_down", "m1", f"no answer {i}"))
    batcher.flush()
    # held in the open batch, as closed KPI windows are until the next flush commits them
    batcher._batch.aggregates.extend(aggregate(i) for i in range(2 * BATCH_AGGREGATES_CAP + 7))
    batcher.flush()
    seq = batcher.seal()
    batches = decoded(store)
    assert seq is not None and len(batches) > 3
    assert [b.seq for b in batches] == list(range(1, len(batches) + 1))
    assert all(body_size(p) <= 40_000 for p in (b.payload for b in store.iter_batches()))
    got = [r for b in batches for r in iter_readings(b)]
    assert sorted((r.t, r.point) for r in got) == sorted((r.t, r.point) for r in sent)
    assert sum(len(b.aggregates) for b in batches) == 2 * BATCH_AGGREGATES_CAP + 7
    assert all(len(b.aggregates) <= BATCH_AGGREGATES_CAP for b in batches)
    assert sum(len(b.events) for b in batches) == 30
    assert store.stats().pending_rows == 0


def test_what_no_batch_can_carry_is_dropped_counted_and_reported(tmp_path: Path) -> None:
    clock = Clock()
    store = BatchStore.open(tmp_path / "b.db")
    batcher = batcher_for(store, clock)
    batcher.add(poll(1000))
    batcher.add_event(Event(1000, "", None, "an event no receiver accepts: empty kind"))
    batcher.add_event(Event(1000, "device_down", "m1", "fine"))
    with capture_logs() as logs:
        batcher.flush()
        assert batcher.seal() is not None
    assert [e["reason"] for e in logs if e["event"] == "buffer_drop"] == ["unencodable"]
    assert store.stats().pending_rows == 0  # never retried at every flush, forever
    assert store.stats().dropped_events == 1
    batcher.add(poll(2000))
    clock.now += 1
    batcher.flush()
    batcher.seal()
    batches = decoded(store)
    assert sum(b.n_readings for b in batches) == 40
    kinds = [e["kind"] for b in batches for e in b.events]
    assert kinds.count("device_down") == 1
    reports = [e["msg"] for b in batches for e in b.events if e["kind"] == "buffer_drop"]
    assert len(reports) == 1 and "reason=unencodable" in reports[0]
    assert "events=1" in reports[0]


def huge_pending_row(store_path: Path, aggregates: int, readings: int) -> None:
    """A pending row as a run before the jump fix could leave one: a flush that closed a year
    of 1-min windows (written with the store's own row format)."""
    store = BatchStore.open(store_path)
    rows = [Reading("m1", "p0", "W", 1_700_000_000_000 + i, float(i), Quality.GOOD)
            for i in range(readings)]
    store.append_pending(rows, [Event(1, "device_down", "m1", "x")],
                         [aggregate(i) for i in range(aggregates)])
    store.close()


def test_start_with_a_huge_pending_backlog_seals_it_in_bounded_batches(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    huge_pending_row(path, aggregates=60_000, readings=30_000)
    store = BatchStore.open(path)
    clock = Clock()
    batcher = batcher_for(store, clock, max_readings=10_000)
    assert batcher.recover() == 30_000
    batches = decoded(store)
    assert store.stats().pending_rows == 0
    assert len(batches) >= 12
    assert all(b.n_readings <= 10_000 and len(b.aggregates) <= BATCH_AGGREGATES_CAP
               for b in batches)
    assert sum(len(b.aggregates) for b in batches) == 60_000
    assert sum(b.n_readings for b in batches) == 30_000
    assert all(len(p) < MAX_BODY_BYTES for p in (b.payload for b in store.iter_batches()))


def test_start_with_an_unreadable_pending_row_sets_it_aside(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    store = BatchStore.open(path)
    store.append_pending(poll(1000), [])
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO pending (body) VALUES (?)", (b"\x28\xb5\x2f\xfdnot zstd",))
    store = BatchStore.open(path)
    clock = Clock()
    batcher = batcher_for(store, clock)
    assert batcher.recover() == 20
    assert store.stats().pending_rows == 0
    batcher.add(poll(2000))
    clock.now += 1
    batcher.flush()
    batcher.seal()
    events = [e for b in decoded(store) for e in b.events]
    assert [e["kind"] for e in events] == ["store_set_aside"]
    assert "what=pending" in events[0]["msg"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT what FROM set_aside").fetchall() == [("pending",)]


KPI_CONFIG: dict[str, Any] = {
    "gateway": {"id": "gw-t", "timezone": "UTC"},
    "kpis": [{"name": "x_1m", "source": "m1.p0", "operator": "mean", "window": "1 min",
              "sample_interval": "1 s"}],
}


def kpi_config() -> AgentConfig:
    return config_from_dict(KPI_CONFIG, require_uplink=False, check_sources=False)


@pytest.mark.parametrize("damage", ["garbage_checkpoint", "journal_too_long", "bad_journal"])
def test_start_with_an_unusable_kpi_checkpoint_sets_it_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    path = tmp_path / "b.db"
    clock = Clock()
    store = BatchStore.open(path)
    live = LiveKpis.resume(kpi_config(), store, clock, lateness_ms=0)
    batcher = Batcher(store, gw="gw-t", boot=1, max_readings=100, max_age=10.0, codec=1,
                      level=3, clock=clock, on_sealed=lambda: None, kpis=live)
    for _ in range(5):
        batcher.add(poll(int(clock.now * 1000), n=1))
        clock.now += 1
        batcher.flush()
    live.checkpoint()
    for _ in range(5):
        batcher.add(poll(int(clock.now * 1000), n=1))
        clock.now += 1
        batcher.flush()
    store.close()
    with sqlite3.connect(path) as conn:
        if damage == "garbage_checkpoint":
            conn.execute("UPDATE kpi_state SET body = ?", (b"garbage",))
        elif damage == "bad_journal":
            conn.execute("UPDATE kpi_journal SET body = ? WHERE id = (SELECT max(id) FROM "
                         "kpi_journal)", (zstandard.compress(msgpack.packb([{"now": 1}])),))
    if damage == "journal_too_long":
        monkeypatch.setattr(kpi_checkpoints_module, "MAX_KPI_JOURNAL_ROWS", 3)
    store = BatchStore.open(path)
    with capture_logs() as logs:
        live = LiveKpis.resume(kpi_config(), store, clock, lateness_ms=0)
    assert [e["event"] for e in logs if e["event"] == "kpi_checkpoint_unusable"]
    assert live.engine.now is None  # started afresh
    kinds = [e.kind for e in store.drop_events()]
    assert kinds == ["store_set_aside"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM kpi_journal").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM kpi_state").fetchone() == (0,)
    # and the agent goes on: the next start is clean
    store.close()
    store = BatchStore.open(path)
    with capture_logs() as logs:
        LiveKpis.resume(kpi_config(), store, clock, lateness_ms=0)
    assert not [e for e in logs if e["event"] == "kpi_checkpoint_unusable"]


def test_disk_full_with_kpis_holds_a_bounded_journal_and_counts_the_loss(
    tiny_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batcher_module, "HELD_AGGREGATES", 50)
    clock = Clock()
    store = BatchStore.open(tiny_fs / "b.db")
    live = LiveKpis.resume(kpi_config(), store, clock, lateness_ms=0)
    batcher = Batcher(store, gw="gw-t", boot=1, max_readings=100, max_age=10.0, codec=1,
                      level=3, clock=clock, on_sealed=lambda: None, kpis=live)
    batcher.add(poll(int(clock.now * 1000), n=1))
    batcher.flush()
    batcher.seal()
    filler = tiny_fs / "filler"
    fill(filler)
    with capture_logs() as logs:
        for _ in range(HELD_STEPS + 60 * 60):  # an hour of 1-s flushes, one reading each
            batcher.add(poll(int(clock.now * 1000), n=1))
            clock.now += 1
            batcher.flush()
            assert len(batcher._batch.steps) <= HELD_STEPS + 1
            assert batcher._batch.n_held_aggregates() <= 51
    assert batcher.stats.write_errors > 0
    assert batcher.stats.lost_aggregates >= 60 - 50
    assert len([e for e in logs if e["event"] == "kpi_journal_given_up"]) == 1
    filler.unlink()
    clock.now += 1
    batcher.flush()
    batcher.close()
    assert store.stats().dropped_aggregates == batcher.stats.lost_aggregates
    reports = [e for b in decoded(store) for e in b.events if e["kind"] == "buffer_drop"]
    assert any(f"aggregates={batcher.stats.lost_aggregates}" in e["msg"] for e in reports)
    # the checkpoint written with the first good flush replaces the given-up journal: a
    # restart resumes the engine exactly where it was
    engine_now = live.engine.now
    store.close()
    store = BatchStore.open(tiny_fs / "b.db")
    resumed = LiveKpis.resume(kpi_config(), store, clock, lateness_ms=0)
    assert resumed.engine.now == engine_now
    assert resumed.engine.snapshot()["kpis"] == live.engine.snapshot()["kpis"]


def test_live_kpis_report_a_clock_step_once_each_way_and_late_readings_per_episode(
    tmp_path: Path,
) -> None:
    clock = Clock()
    store = BatchStore.open(tmp_path / "b.db")
    live = LiveKpis.resume(kpi_config(), store, clock, lateness_ms=0)
    events: list[Event] = []

    def flush(seconds: int, *, with_reading: bool = True) -> None:
        for _ in range(seconds):
            now = int(clock.now * 1000)
            readings = poll(now, n=1) if with_reading else []
            events.extend(live.step(readings, now)[2])
            clock.now += 1

    flush(90)
    clock.now += 400 * 86_400  # NTP sets the clock 400 days forward
    with capture_logs() as logs:
        flush(90)
    [step] = [e for e in events if e.kind == "kpi_clock_step"]
    assert "size_s=3.456e+07" in step.message and "windows_closed=1" in step.message
    assert len([e for e in logs if e["event"] == "kpi_clock_step"]) == 1
    clock.now -= 3600  # and an hour back
    with capture_logs() as logs:
        flush(120)
    steps = [e for e in events if e.kind == "kpi_clock_step"]
    assert len(steps) == 2 and "size_s=-3" in steps[1].message
    # a 2-minute episode of late readings: logged once when it starts, not per flush
    assert [e["event"] for e in logs if e["event"].startswith("kpi_readings")] == [
        "kpi_readings_too_late"]
    late = [e for e in events if e.kind == "kpi_late_readings"]
    assert late and sum(int(e.message.split("dropped=")[1].split()[0]) for e in late) <= 120
    with capture_logs() as logs:
        flush(60, with_reading=False)  # 60 flushes without a late reading end the episode
    assert [e["event"] for e in logs] == ["kpi_readings_on_time_again"]
    assert live.engine.late_dropped["x_1m"] == 120
    assert sum(int(e.message.split("dropped=")[1].split()[0])
               for e in events if e.kind == "kpi_late_readings") == 120


def test_live_kpis_restart_the_windows_when_the_clock_stays_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_module, "BEHIND_STEPS", 30)
    clock = Clock()
    store = BatchStore.open(tmp_path / "b.db")
    live = LiveKpis.resume(kpi_config(), store, clock, lateness_ms=0)
    outputs: list[dict[str, Any]] = []
    events: list[Event] = []

    def flush(seconds: int) -> None:
        for _ in range(seconds):
            now = int(clock.now * 1000)
            closed, _, new_events = live.step(poll(now, n=1), now)
            outputs.extend(closed)
            events.extend(new_events)
            clock.now += 1

    flush(90)
    ahead = live.engine.now
    assert ahead is not None
    clock.now -= 2 * 86_400  # the clock was two days ahead; NTP sets it right, for good
    back = int(clock.now * 1000)
    flush(29)
    assert all(o["end"] <= ahead for o in outputs)  # held
    flush(1)  # the 30th flush behind: the engine gives up its time
    rebased = [o for o in outputs if o["end"] > ahead]
    assert [(o["kpi"], o["n"] > 0) for o in rebased] == [("x_1m", True)]
    flush(120)
    after = [o for o in outputs if o["end"] <= ahead - 86_400_000]
    assert after and after[0]["start"] <= back + 60_000 and all(o["n"] > 0 for o in after)
    steps = [e.message for e in events if e.kind == "kpi_clock_step"]
    assert len(steps) == 2 and "windows_closed=1" in steps[1] and "restarted" in steps[1]
