"""The receiver's sinks: dedup, gaps, type fidelity, one transaction per batch.

The ``sink`` fixture runs each test against SQLite and against PostgreSQL (a real server, see
``tests/platform/conftest.py``): the two must store alike. ``sqlite_sink`` is for what only
the SQLite file has (WAL, its query plans, files of earlier releases)."""

from __future__ import annotations

import dataclasses
import itertools
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError, WireFormatError
from agent.platform.sink import (
    MAX_SEQ_JUMP,
    PENDING_SHIFT,
    SHIFT_BATCHES,
    SHIFT_EVENTS,
    SHIFT_READINGS,
    ClockStep,
    SinkBase,
    SqliteSink,
    parse_clock_step,
    sink_path,
)
from agent.platform.sink.pg import PgSink
from agent.readings import Quality, Reading
from agent.wire import (
    INT64_MAX,
    Batch,
    BufferHealth,
    Series,
    Status,
    encode_status,
    iter_readings,
)

# one PostgreSQL server (session fixture) for every test that needs one: its tests share a worker
pytestmark = pytest.mark.xdist_group("postgresql")


def _batch(seq: int, gw: str = "gw-1", *, created: int = 0, boot: int = 1,
           store: str | None = None) -> Batch:
    return Batch(
        store=store,
        gw=gw,
        boot=boot,
        seq=seq,
        created=created or 1_700_000_000_000 + seq,
        series=(
            Series("m1", "voltage", "V", 1000 * seq, (0, 500), (230.0, 230.5), (0, 0)),
            Series("m1", "count", None, 1000 * seq, (0, 500), (7, None), (0, 2)),
        ),
        aggregates=(
            {
                "kpi": "v_avg",
                "src": "m1.voltage",
                "start": 0,
                "end": 900_000,
                "value": 230.25,
                "valid": True,
                "n": 2,
                "expected": 2,
                "unit": "V",
                "p95": 230.5,
            },
        ),
        events=({"t": 1000 * seq, "kind": "device_up", "dev": "m1", "msg": "back"},),
    )


@pytest.fixture
def sqlite_sink(tmp_path: Path) -> Iterator[SqliteSink]:
    with SqliteSink.open(f"sqlite:///{tmp_path}/sink.db", clock=lambda: 1234.5) as s:
        yield s


@pytest.fixture(params=["sqlite", "postgresql"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SinkBase]:
    """A sink of each kind (same clock); PostgreSQL in a fresh database."""
    opened: SinkBase
    if request.param == "sqlite":
        opened = SqliteSink.open(f"sqlite:///{tmp_path}/sink.db", clock=lambda: 1234.5)
    else:
        opened = PgSink.open(request.getfixturevalue("pg_url"), clock=lambda: 1234.5)
    with opened as s:
        yield s


def _count(sink: SinkBase, table: str) -> int:
    return int(sink.select(f"SELECT COUNT(*) FROM {table}")[0][0])


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:////tmp/x.db", Path("/tmp/x.db")),
        ("sqlite:///x.db", Path("x.db")),
        ("sqlite:///data/x.db", Path("data/x.db")),
        ("x.db", Path("x.db")),
        ("/abs/x.db", Path("/abs/x.db")),
        (Path("p.db"), Path("p.db")),
    ],
)
def test_sink_path(url: str | Path, path: Path) -> None:
    assert sink_path(url) == path


@pytest.mark.parametrize("url", ["", "sqlite:///", "sqlite://x.db", "postgres://db/x", "file:///x"])
def test_sink_path_refuses(url: str) -> None:
    with pytest.raises(ConfigError, match=re.escape("sqlite:///relative/file.db")):
        sink_path(url)


def test_open_uses_wal(sqlite_sink: SqliteSink) -> None:
    with sqlite3.connect(sqlite_sink.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_retention_deletes_rows(tmp_path: Path) -> None:
    now = [1_000.0]
    with SqliteSink.open(tmp_path / "r.db", clock=lambda: now[0]) as sink:
        for seq in (1, 2, 3):
            sink.store(_batch(seq))  # readings at 1000*seq (+500) ms, windows end at 900 s
        assert sink.maintain() == {}  # no retention asked: nothing goes
        gone = sink.maintain(keep_readings_ms=998_000, keep_aggregates_ms=1_000_000)
        assert gone == {"readings": 4 * 1, "aggregates": 0}  # seq 1's four: t < 2,000
        assert {r.t for r in sink.readings_for("gw-1")} == {2000, 2500, 3000, 3500}
        now[0] = 2_000.0
        assert sink.maintain(keep_aggregates_ms=1_000_000)["aggregates"] == 3
        assert sink.seqs("gw-1") == [1, 2, 3]  # batches stay: they keep the dedup


def test_open_unwritable_place(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open the SQLite database"):
        SqliteSink.open(tmp_path / "missing-dir" / "x.db")


def test_store_keeps_readings_and_their_types(sink: SinkBase) -> None:
    batch = _batch(1)
    outcome = sink.store(batch)
    assert not outcome.duplicate
    assert sink.readings_for("gw-1") == sorted(
        iter_readings(batch), key=lambda r: (r.device, r.point, r.t)
    )
    by_value = {(r.point, r.t): r.value for r in sink.readings_for("gw-1")}
    assert type(by_value[("voltage", 1000)]) is float  # 230.0 stays a float
    assert type(by_value[("count", 1000)]) is int
    assert by_value[("count", 1500)] is None
    if isinstance(sink, SqliteSink):
        types = dict(sink.select("SELECT pt || t, typeof(value) FROM readings"))
    else:  # a double precision value, and the int as the gateway sent it beside it
        types = dict(sink.select(
            "SELECT pt || t, CASE WHEN value_int IS NOT NULL THEN 'integer' WHEN value IS NOT"
            " NULL THEN 'real' ELSE 'null' END FROM readings"))
    assert types == {
        "voltage1000": "real",
        "voltage1500": "real",
        "count1000": "integer",
        "count1500": "null",
    }


def test_store_batch_row_aggregates_events(sink: SinkBase) -> None:
    sink.store(_batch(3))
    (row,) = sink.select(
        "SELECT gw, seq, boot, created, received, n_readings, n_aggregates FROM batches")
    assert row == ("gw-1", 3, 1, 1_700_000_000_003, 1_234_500, 4, 1)
    assert sink.aggregates_for("gw-1") == list(_batch(3).aggregates)
    assert sink.events_for("gw-1") == list(_batch(3).events)


def test_same_batch_twice_is_stored_once(sink: SinkBase) -> None:
    first = sink.store(_batch(1))
    second = sink.store(_batch(1))
    assert (first.duplicate, second.duplicate) == (False, True)
    assert not second.conflict
    assert sink.count_readings() == 4
    for table, n in [("batches", 1), ("readings", 4), ("aggregates", 1), ("events", 1)]:
        assert _count(sink, table) == n, table


def test_dedup_survives_a_reopen(tmp_path: Path) -> None:
    with SqliteSink.open(tmp_path / "s.db") as sink:
        sink.store(_batch(1))
    with SqliteSink.open(tmp_path / "s.db") as sink:
        assert sink.store(_batch(1)).duplicate
        assert sink.count_readings("gw-1") == 4


def test_reused_seq_is_a_flagged_duplicate(sink: SinkBase) -> None:
    sink.store(_batch(1, created=5))
    outcome = sink.store(_batch(1, created=99, boot=1))  # data_dir wiped: seq restarted
    assert outcome.duplicate
    assert outcome.conflict
    assert sink.count_readings() == 4


# Each step: seq stored -> (new gaps, filled), and the open gaps after it.
Gaps = list[tuple[int, int]]
GAP_SCENARIOS: dict[str, list[tuple[int, Gaps, list[int], Gaps]]] = {
    "in order": [(1, [], [], []), (2, [], [], []), (3, [], [], [])],
    "baseline above 1": [(5, [], [], []), (6, [], [], [])],
    "gap then fill": [
        (1, [], [], []),
        (4, [(2, 3)], [], [(2, 3)]),
        (3, [], [3], [(2, 2)]),
        (2, [], [2], []),
    ],
    "split": [
        (1, [], [], []),
        (10, [(2, 9)], [], [(2, 9)]),
        (5, [], [5], [(2, 4), (6, 9)]),
        (9, [], [9], [(2, 4), (6, 8)]),
        (2, [], [2], [(3, 4), (6, 8)]),
    ],
    "two gaps": [(1, [], [], []), (3, [(2, 2)], [], [(2, 2)]), (6, [(4, 5)], [], [(2, 2), (4, 5)])],
    "older than the baseline": [(5, [], [], []), (3, [], [], []), (6, [], [], [])],
    "duplicate inside nothing": [
        (1, [], [], []),
        (3, [(2, 2)], [], [(2, 2)]),
        (3, [], [], [(2, 2)]),
    ],
}


@pytest.mark.parametrize("name", GAP_SCENARIOS)
def test_gap_tracking(sink: SinkBase, name: str) -> None:
    for seq, new_gaps, filled, open_gaps in GAP_SCENARIOS[name]:
        outcome = sink.store(_batch(seq))
        assert (outcome.new_gaps, outcome.filled) == (new_gaps, filled), f"seq {seq}"
        assert sink.gaps("gw-1") == open_gaps, f"after seq {seq}"


def test_gaps_are_per_gateway(sink: SinkBase) -> None:
    sink.store(_batch(1, "gw-a"))
    sink.store(_batch(7, "gw-b"))  # baseline of gw-b: no gap
    sink.store(_batch(3, "gw-a"))
    assert sink.gaps("gw-a") == [(2, 2)]
    assert sink.gaps("gw-b") == []


_db_counter = itertools.count()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrivals=st.lists(st.integers(1, 30), min_size=1, max_size=40))
def test_gaps_are_exactly_the_missing_seqs(sink: SinkBase, arrivals: list[int]) -> None:
    # Whatever order (and however often) batches arrive, the open gaps are the seqs between
    # the first one seen and the highest one seen that never arrived. (A gateway per example:
    # the sink is the test's.)
    gw = f"gw-{next(_db_counter)}"
    for seq in arrivals:
        sink.store(_batch(seq, gw))
    baseline, top = arrivals[0], max(arrivals)
    missing = set(range(baseline + 1, top + 1)) - set(arrivals)
    in_gaps = {s for a, b in sink.gaps(gw) for s in range(a, b + 1)}
    assert in_gaps == missing
    assert sink.seqs(gw) == sorted(set(arrivals))
    assert sink.count_readings(gw) == 4 * len(set(arrivals))


def test_a_failing_insert_leaves_nothing(sink: SinkBase) -> None:
    sink.store(_batch(1))
    good = _batch(3)
    # The second series fails (no integer beyond 64 bits in either database) after the batch
    # row, the gap and the first series' rows went in: all of it must roll back.
    bad = Batch(
        good.gw,
        good.boot,
        good.seq,
        good.created,
        (good.series[0], Series("m1", "big", None, 0, (0,), (2**70,), (0,))),
        good.aggregates,
        good.events,
    )
    with pytest.raises(OverflowError):
        sink.store(bad)
    assert sink.seqs("gw-1") == [1]
    assert sink.count_readings() == 4
    assert sink.gaps("gw-1") == []
    assert len(sink.events_for("gw-1")) == 1
    # Not remembered as stored: the resend goes in whole.
    outcome = sink.store(good)
    assert not outcome.duplicate
    assert outcome.new_gaps == [(2, 2)]
    assert sink.count_readings() == 8


def test_a_failing_aggregate_leaves_nothing(sink: SinkBase) -> None:
    batch = _batch(1)
    bad = Batch(
        batch.gw,
        batch.boot,
        batch.seq,
        batch.created,
        batch.series,
        ({**batch.aggregates[0], "extra": {1, 2}},),
        batch.events,
    )
    with pytest.raises(TypeError):
        sink.store(bad)  # a set is not JSON
    assert sink.seqs("gw-1") == []
    assert sink.count_readings() == 0


def test_status_last_one_wins(sink: SinkBase) -> None:
    online = Status("online", "gw-1", 2, 2000, "0.1.0")
    will = Status("offline", "gw-1", 2, 1000, "0.1.0")  # registered at connect: older t
    assert sink.store_status("gw-1", encode_status(online)) == online
    sink.store_status("gw-1", encode_status(will).decode())
    assert sink.status_for("gw-1") == will
    assert sink.status_for("gw-2") is None


def test_status_buffer_is_stored_and_kept_through_a_status_that_does_not_say(
        sink: SinkBase) -> None:
    assert sink.store_status("gw-1", encode_status(Status("online", "gw-1", 1, 500, "0.1.0")))
    assert sink.status_for("gw-1") == Status("online", "gw-1", 1, 500, "0.1.0")
    unwritable = BufferHealth("unwritable", since=1_000, reason="disk full", held_readings=7,
                              dropped_readings=2)
    online = Status("online", "gw-1", 1, 1_000, "x", buffer=unwritable)
    assert sink.store_status("gw-1", encode_status(online)) == online
    assert sink.status_for("gw-1") == online
    # the last will does not say: the gateway died with its buffer unwritable, as last said
    will = Status("offline", "gw-1", 1, 900, "x")
    sink.store_status("gw-1", encode_status(will))
    assert sink.status_for("gw-1") == Status("offline", "gw-1", 1, 900, "x", buffer=unwritable)
    ok = Status("online", "gw-1", 2, 2_000, "x", buffer=BufferHealth("ok"))
    sink.store_status("gw-1", encode_status(ok))
    assert sink.status_for("gw-1") == ok


def test_status_for_another_gateway_is_refused(sink: SinkBase) -> None:
    with pytest.raises(WireFormatError, match="topic names gateway 'gw-2'"):
        sink.store_status("gw-2", encode_status(Status("online", "gw-1", 1, 1, "x")))
    assert sink.status_for("gw-2") is None


def test_readings_for_other_gateways_are_apart(sink: SinkBase) -> None:
    sink.store(_batch(1, "gw-a"))
    sink.store(_batch(1, "gw-b"))
    assert sink.count_readings() == 8
    assert sink.count_readings("gw-a") == 4
    assert {r.device for r in sink.readings_for("gw-b")} == {"m1"}
    assert sink.readings_for("gw-c") == []
    assert Reading("m1", "count", None, 1500, None, Quality.COMM_ERROR) in sink.readings_for("gw-a")


# ------------------------------------------------------------------ store identity (``store``)


def test_a_new_store_of_a_known_gateway_is_stored_not_dropped(sink: SinkBase) -> None:
    """A replaced SD card: the gateway starts again at seq 1 under a new store id."""
    for seq in (1, 2, 3):
        assert not sink.store(_batch(seq, store="old0000000000001")).duplicate
    for seq in (1, 2):
        outcome = sink.store(_batch(seq, created=99 + seq, store="new0000000000002"))
        assert not outcome.duplicate and not outcome.conflict, seq
    assert sink.count_readings("gw-1") == 4 * 5
    assert sink.stores("gw-1") == ["old0000000000001", "new0000000000002"]
    assert sink.seqs("gw-1", "new0000000000002") == [1, 2]
    assert sink.gaps("gw-1") == []  # the new store's first batch is its baseline


def test_a_redelivered_batch_of_a_store_is_still_a_duplicate(sink: SinkBase) -> None:
    sink.store(_batch(1, store="s1"))
    again = sink.store(_batch(1, store="s1"))
    assert again.duplicate and not again.conflict
    reused = sink.store(_batch(1, created=77, store="s1"))
    assert reused.duplicate and reused.conflict
    assert sink.count_readings() == 4


def test_batches_without_a_store_keep_their_own_series(sink: SinkBase) -> None:
    sink.store(_batch(1))
    sink.store(_batch(1, store="s1"))  # not a duplicate of the store-less seq 1
    assert sink.store(_batch(1)).duplicate
    assert sink.stores("gw-1") == ["", "s1"]
    assert sink.count_readings() == 8


def test_gaps_are_per_store(sink: SinkBase) -> None:
    sink.store(_batch(5, store="a"))
    sink.store(_batch(1, store="b"))
    sink.store(_batch(8, store="a"))
    sink.store(_batch(3, store="b"))
    assert sink.gaps("gw-1", "a") == [(6, 7)]
    assert sink.gaps("gw-1", "b") == [(2, 2)]
    assert sink.gaps("gw-1") == [(2, 2), (6, 7)]


OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    gw TEXT NOT NULL,
    seq INTEGER NOT NULL,
    boot INTEGER NOT NULL,
    created INTEGER NOT NULL,
    received INTEGER NOT NULL,
    n_readings INTEGER NOT NULL,
    n_aggregates INTEGER NOT NULL,
    PRIMARY KEY (gw, seq)
);
CREATE TABLE IF NOT EXISTS readings (
    gw TEXT NOT NULL,
    dev TEXT NOT NULL,
    pt TEXT NOT NULL,
    t INTEGER NOT NULL,
    value,
    quality INTEGER NOT NULL,
    unit TEXT,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_by_point ON readings (gw, dev, pt, t);
CREATE TABLE IF NOT EXISTS aggregates (
    gw TEXT NOT NULL,
    kpi TEXT NOT NULL,
    src TEXT NOT NULL,
    "start" INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    value,
    valid INTEGER NOT NULL,
    n INTEGER NOT NULL,
    expected INTEGER NOT NULL,
    unit TEXT,
    extras_json TEXT,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS aggregates_by_kpi ON aggregates (gw, kpi, "start");
CREATE TABLE IF NOT EXISTS events (
    gw TEXT NOT NULL,
    t INTEGER NOT NULL,
    kind TEXT NOT NULL,
    dev TEXT,
    msg TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS status (
    gw TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    boot INTEGER NOT NULL,
    t INTEGER NOT NULL,
    version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seq_gaps (
    gw TEXT NOT NULL,
    "first" INTEGER NOT NULL,
    "last" INTEGER NOT NULL,
    PRIMARY KEY (gw, "first")
);
"""


def test_a_sink_file_of_an_earlier_release_opens_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
        conn.execute("INSERT INTO batches VALUES ('gw-1', 1, 1, 5, 6, 1, 0)")
        conn.execute("INSERT INTO batches VALUES ('gw-1', 4, 1, 8, 9, 1, 0)")
        conn.execute("INSERT INTO readings VALUES ('gw-1', 'm1', 'v', 1000, 230.5, 0, 'V', 1)")
        conn.execute("INSERT INTO events VALUES ('gw-1', 1000, 'device_up', 'm1', '', 1)")
        conn.execute("INSERT INTO seq_gaps VALUES ('gw-1', 2, 3)")
    conn.close()
    with SqliteSink.open(path) as sink:
        assert sink.seqs("gw-1") == [1, 4]
        assert sink.gaps("gw-1") == [(2, 3)]
        assert sink.readings_for("gw-1") == [Reading("m1", "v", "V", 1000, 230.5, Quality.GOOD)]
        assert sink.store(_batch(4, created=8)).duplicate  # dedup of the old rows holds
        assert sink.store(_batch(3)).filled == [3]
        assert not sink.store(_batch(4, store="s1")).duplicate
        assert sink.stores("gw-1") == ["", "s1"]
        status = Status("online", "gw-1", 2, 10, "x", buffer=BufferHealth("ok"))
        sink.store_status("gw-1", encode_status(status))
        assert sink.status_for("gw-1") == status
        # the old rows are tied to their batch's boot: a clock step of boot 1 moves them
        applied = sink.store(_stepped(5, (1, 5, 60_000))).clock_steps
        assert [(a.batches, a.readings) for a in applied] == [(3, 5)]
        assert Reading("m1", "v", "V", 61_000, 230.5, Quality.GOOD) in sink.readings_for("gw-1")
        assert sink.events_for("gw-1")[0] == {"t": 61_000, "kind": "device_up", "dev": "m1",
                                              "msg": ""}
        assert sink.clock_shifts("gw-1") == {("", 1): 60_000, ("", 3): 60_000,
                                             ("", 4): 60_000}
    with SqliteSink.open(path) as sink:  # and it opens again as it is now
        assert sink.seqs("gw-1", "") == [1, 3, 4, 5]
    with sqlite3.connect(path) as conn:
        indexes = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"readings_by_batch", "events_by_batch", "batches_by_boot", "clock_steps"} <= indexes


# --------------------------------------------------------------------------- seq jumps

def _at(seq: int, store: str | None = None) -> Batch:
    """A batch whose times stay in range whatever its seq."""
    return dataclasses.replace(_batch(1), seq=seq, store=store)


JUMP_SCENARIOS: dict[str, list[tuple[int, Gaps, bool]]] = {
    # seq stored -> (new gaps, flagged as a jump)
    "forged 2^63-1 then real batches": [
        (1, [], False), (2, [], False), (INT64_MAX, [], True), (3, [], False), (5, [(4, 4)], False),
    ],
    "a jump of millions": [(1, [], False), (5_000_000, [], True), (2, [], False)],
    "a jump confirmed by its next batch": [
        (1, [], False), (MAX_SEQ_JUMP + 10, [], True),
        (MAX_SEQ_JUMP + 11, [(2, MAX_SEQ_JUMP + 9)], False), (MAX_SEQ_JUMP + 12, [], False),
    ],
    "a confirmed jump with a hole in its run": [
        (1, [], False), (MAX_SEQ_JUMP + 10, [], True),
        (MAX_SEQ_JUMP + 13, [(2, MAX_SEQ_JUMP + 9), (MAX_SEQ_JUMP + 11, MAX_SEQ_JUMP + 12)], False),
    ],
    "two jumps, the second confirmed, keep the first": [
        (1, [], False), (MAX_SEQ_JUMP + 41, [], True), (2 * MAX_SEQ_JUMP + 42, [], True),
        (2 * MAX_SEQ_JUMP + 43, [(2, MAX_SEQ_JUMP + 40),
                                 (MAX_SEQ_JUMP + 42, 2 * MAX_SEQ_JUMP + 41)], False),
    ],
    "just below the limit is a gap": [
        (1, [], False), (MAX_SEQ_JUMP + 1, [(2, MAX_SEQ_JUMP)], False),
    ],
    "the line catches up with a flagged batch": [
        (1, [], False), (MAX_SEQ_JUMP + 3, [], True),
        (MAX_SEQ_JUMP, [(2, MAX_SEQ_JUMP - 1)], False),
        (MAX_SEQ_JUMP + 4, [(MAX_SEQ_JUMP + 1, MAX_SEQ_JUMP + 2)], False),
    ],
}


@pytest.mark.parametrize("name", JUMP_SCENARIOS)
def test_seq_jumps(sink: SinkBase, name: str) -> None:
    for seq, new_gaps, jump in JUMP_SCENARIOS[name]:
        outcome = sink.store(_at(seq, "s"))
        assert not outcome.duplicate, seq
        assert outcome.new_gaps == new_gaps, seq
        assert (outcome.jump is not None) == jump, seq


def test_a_forged_top_seq_leaves_later_batches_tracked(sink: SinkBase) -> None:
    for seq in (1, 2):
        sink.store(_at(seq))
    assert sink.store(_at(INT64_MAX)).jump == (2, INT64_MAX)
    assert sink.jumps("gw-1") == [("", INT64_MAX)]
    for seq in range(3, 40):
        outcome = sink.store(_at(seq))
        assert not outcome.duplicate and outcome.new_gaps == [] and outcome.filled == [], seq
    assert sink.gaps("gw-1") == []
    assert sink.store(_at(42)).new_gaps == [(40, 41)]  # a real gap is still seen


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrivals=st.lists(
    st.one_of(st.integers(1, 40), st.integers(MAX_SEQ_JUMP + 41, INT64_MAX)), min_size=1,
    max_size=40))
def test_gap_rows_stay_bounded_whatever_seqs_arrive(sink: SinkBase, arrivals: list[int]) -> None:
    """Gaps never exceed one row per stored batch, and no new batch is a duplicate."""
    store = f"s{next(_db_counter)}"  # a store per example: the sink is the test's
    seen: set[int] = set()
    for seq in arrivals:
        assert sink.store(_at(seq, store)).duplicate == (seq in seen)
        seen.add(seq)
    gaps = sink.gaps("gw-1", store)
    assert len(gaps) <= len(seen)
    # a gap never holds a stored batch, and every small seq missing after a small
    # baseline is in one (a confirmed jump may also open a gap up to itself)
    assert not any(a <= seq <= b for seq in seen for a, b in gaps)
    in_line = [s for s in seen if s <= 40]
    if arrivals[0] <= 40:
        missing = set(range(arrivals[0] + 1, max(in_line) + 1)) - seen
        assert all(any(a <= m <= b for a, b in gaps) for m in missing)


def test_the_clock_key_is_stored_per_batch(tmp_path: Path) -> None:
    import dataclasses

    path = tmp_path / "sink.db"
    # a sink made by an earlier version, without the column
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE batches (gw TEXT NOT NULL, seq INTEGER NOT NULL, boot INTEGER"
                     " NOT NULL, created INTEGER NOT NULL, received INTEGER NOT NULL, n_readings"
                     " INTEGER NOT NULL, n_aggregates INTEGER NOT NULL, PRIMARY KEY (gw, seq))")
    with SqliteSink.open(path) as sink:
        sink.store(_batch(1))
        sink.store(dataclasses.replace(_batch(2), clock={"synced": False}))
        sink.store(dataclasses.replace(_batch(3), clock={"synced": True}))
        assert sink.clock_synced("gw-1") == [(1, None), (2, False), (3, True)]


# --------------------------------------------------------------------------- clock steps

def _stepped(seq: int, *steps: tuple[int, ...], boot: int = 1, store: str | None = None,
             gw: str = "gw-1") -> Batch:
    """``_batch(seq)`` carrying a ``clock_step`` event per ``(boot, before_seq, step_ms)`` or
    ``(boot, before_seq, step_ms, from_seq)``."""
    batch = _batch(seq, gw, boot=boot, store=store)
    events = batch.events + tuple(
        {"t": 1000 * n + 1, "kind": "clock_step", "dev": None,
         "msg": f"step_ms={ms} boot={b} {''.join(f'from_seq={m} ' for m in rest)}"
                f"before_seq={n} synced=true"}
        for b, n, ms, *rest in steps)
    return dataclasses.replace(batch, events=events)


def _times(sink: SinkBase, table: str) -> dict[tuple[str, int], list[int]]:
    """(store, seq) -> the stored times of that batch's rows in ``table``, sorted."""
    out: dict[tuple[str, int], list[int]] = {}
    for store, seq, t in sink.select(f"SELECT store, seq, t FROM {table} WHERE gw = 'gw-1'"):
        out.setdefault((store, int(seq)), []).append(int(t))
    return {k: sorted(v) for k, v in out.items()}


S1, S2 = 15_552_000_000, -90_000  # NTP sets a clock 180 days ahead, then an operator 90 s back

# arrivals (seq, boot, store, the steps it carries) -> expected shift per (store, seq)
STEP_SCENARIOS: dict[str, tuple[list[tuple[int, int, str, tuple[tuple[int, ...], ...]]],
                                dict[tuple[str, int], int]]] = {
    "step stored after the earlier batches": (
        [(1, 1, "", ()), (2, 1, "", ()), (3, 1, "", ((1, 3, S1),)), (4, 1, "", ())],
        {("", 1): S1, ("", 2): S1, ("", 3): 0, ("", 4): 0}),
    "step stored before the earlier batches (backlog replayed live-first)": (
        [(3, 1, "", ((1, 3, S1),)), (4, 1, "", ()), (1, 1, "", ()), (2, 1, "", ())],
        {("", 1): S1, ("", 2): S1, ("", 3): 0, ("", 4): 0}),
    "two steps in one boot add up": (
        [(5, 1, "", ((1, 5, S2),)), (1, 1, "", ()), (3, 1, "", ((1, 3, S1),)), (6, 1, "", ()),
         (2, 1, "", ()), (4, 1, "", ())],
        {("", 1): S1 + S2, ("", 2): S1 + S2, ("", 3): S2, ("", 4): S2, ("", 5): 0,
         ("", 6): 0}),
    "two steps before the next seal (one batch carries both)": (
        [(1, 1, "", ()), (2, 1, "", ((1, 2, S1), (1, 2, S2))), (3, 1, "", ())],
        {("", 1): S1 + S2, ("", 2): 0, ("", 3): 0}),
    "a redelivered step batch applies nothing twice": (
        [(1, 1, "", ()), (2, 1, "", ((1, 2, S1),)), (2, 1, "", ((1, 2, S1),)), (1, 1, "", ()),
         (2, 1, "", ((1, 2, S1),))],
        {("", 1): S1, ("", 2): 0}),
    "the same event again in a later batch applies nothing twice": (
        [(1, 1, "", ()), (2, 1, "", ((1, 2, S1),)), (3, 1, "", ((1, 2, S1),))],
        {("", 1): S1, ("", 2): 0, ("", 3): 0}),
    "another boot is unaffected": (
        [(1, 1, "", ()), (2, 1, "", ()), (3, 2, "", ()), (4, 2, "", ((2, 5, S1),)),
         (6, 1, "", ())],
        {("", 1): 0, ("", 2): 0, ("", 3): S1, ("", 4): S1, ("", 6): 0}),
    "what the boot recovered from a previous run (below from_seq) is not moved": (
        [(1, 1, "", ()), (2, 2, "", ()), (3, 2, "", ()), (6, 2, "", ((2, 5, S1, 3),)),
         (4, 2, "", ()), (5, 2, "", ())],
        {("", 1): 0, ("", 2): 0, ("", 3): S1, ("", 4): S1, ("", 5): 0, ("", 6): 0}),
    "another store is unaffected": (
        [(1, 1, "a", ()), (2, 1, "a", ()), (1, 1, "b", ()), (3, 1, "b", ((1, 3, S1),)),
         (2, 1, "b", ())],
        {("a", 1): 0, ("a", 2): 0, ("b", 1): S1, ("b", 2): S1, ("b", 3): 0}),
}


@pytest.mark.parametrize("name", STEP_SCENARIOS)
def test_clock_steps_correct_the_batches_sealed_before_them(sink: SinkBase, name: str) -> None:
    arrivals, shifts = STEP_SCENARIOS[name]
    sent: dict[tuple[str, int], Batch] = {}
    for seq, boot, store, steps in arrivals:
        batch = _stepped(seq, *steps, boot=boot, store=store or None)
        sink.store(batch)
        sent.setdefault((store, seq), batch)
    # every reading and event of a batch moved by exactly its shift, and nothing else moved
    assert _times(sink, "readings") == {
        key: sorted(r.t + shifts[key] for r in iter_readings(b)) for key, b in sent.items()}
    assert _times(sink, "events") == {
        key: sorted(e["t"] + shifts[key] for e in b.events) for key, b in sent.items()}
    assert sink.clock_shifts("gw-1") == {k: v for k, v in shifts.items() if v}
    # the aggregates stay on the grid the agent computed them on
    assert {a["start"] for a in sink.aggregates_for("gw-1")} == {0}
    assert sink.count_readings() == 4 * len(sent)
    distinct = {(s, st) for s, st in sink.clock_steps("gw-1")}
    assert len(sink.clock_steps("gw-1")) == len(distinct)


def test_a_step_reports_what_it_moved_once(sink: SinkBase) -> None:
    for seq in (1, 2):
        assert sink.store(_batch(seq)).clock_shift_ms == 0
    outcome = sink.store(_stepped(3, (1, 3, S1)))
    assert [(a.step.step_ms, a.batches, a.readings) for a in outcome.clock_steps] == [(S1, 2, 8)]
    assert sink.store(_stepped(3, (1, 3, S1))).duplicate
    late = sink.store(_stepped(4, (1, 3, S1)))  # the event again, in another batch
    assert late.clock_steps == [] and late.clock_shift_ms == 0
    # a batch of the boot sealed before the step, arriving after it
    assert sink.store(dataclasses.replace(_batch(5), seq=0)).clock_shift_ms == S1
    assert sink.clock_steps("gw-1") == [("", ClockStep(1, 3, S1, 3001))]


@pytest.mark.parametrize(("msg", "step"), [
    ("step_ms=120000 boot=3 before_seq=17 synced=true", ClockStep(3, 17, 120_000, 5)),
    ("step_ms=-90000 boot=0 before_seq=1 synced=unknown", ClockStep(0, 1, -90_000, 5)),
    ("before_seq=17 boot=3 step_ms=1", ClockStep(3, 17, 1, 5)),
    ("step_ms=5 boot=3 from_seq=9 before_seq=17 synced=true", ClockStep(3, 17, 5, 5, 9)),
    ("step_ms=5 boot=3 from_seq=-9 before_seq=17", None),
    ("step_ms=5 boot=3 from_seq=9 from_seq=9 before_seq=17", None),
    ("step_ms=1.5 boot=3 before_seq=17", None),
    ("step_ms=1 boot=3", None),
    ("step_ms=1 boot=3 before_seq=17 step_ms=2", None),
    ("step_ms=1 boot=-3 before_seq=17", None),
    (f"step_ms={10**14 + 1} boot=3 before_seq=17", None),
    (f"step_ms=1 boot=3 before_seq={2**63}", None),
    ("xstep_ms=1 boot=3 before_seq=17", None),
    ("", None),
])
def test_parse_clock_step(msg: str, step: ClockStep | None) -> None:
    assert parse_clock_step(5, msg) == step


def test_an_unreadable_clock_step_is_stored_and_moves_nothing(sink: SinkBase) -> None:
    sink.store(_batch(1))
    batch = _batch(2)
    bad = {"t": 1, "kind": "clock_step", "dev": None, "msg": "step_ms=lots boot=1 before_seq=2"}
    outcome = sink.store(dataclasses.replace(batch, events=(*batch.events, bad)))
    assert outcome.unreadable_clock_steps == 1 and outcome.clock_steps == []
    assert bad in sink.events_for("gw-1")
    assert sink.clock_shifts("gw-1") == {} and sink.clock_steps("gw-1") == []


@pytest.mark.parametrize(("sql", "lookups"), [
    (SHIFT_READINGS, ["readings USING INDEX readings_by_batch (gw=? AND seq=?)",
                      "batches USING COVERING INDEX batches_by_boot (gw=? AND store=? AND"
                      " boot=? AND seq>? AND seq<?)"]),
    (SHIFT_EVENTS, ["events USING INDEX events_by_batch (gw=? AND seq=?)",
                    "batches USING COVERING INDEX batches_by_boot"]),
    (SHIFT_BATCHES, ["batches USING INDEX batches_by_boot (gw=? AND store=? AND boot=? AND"
                     " seq>? AND seq<?)"]),
    (PENDING_SHIFT, ["clock_steps USING INDEX sqlite_autoindex_clock_steps_1 (gw=? AND"
                     " store=? AND boot=? AND before_seq>?)"]),
])
def test_the_clock_step_correction_uses_indexes(
    sqlite_sink: SqliteSink, sql: str, lookups: list[str],
) -> None:
    """Each statement finds its rows by the batch they belong to: a step costs the rows it
    moves, not a pass over the gateway's readings."""
    args: Any = ({"gw": "g", "store": "", "boot": 1, "from_seq": 1, "before_seq": 3,
                  "step_ms": 1} if ":" in sql else ("g", "", 1, 3, 3))
    with sqlite3.connect(sqlite_sink.path) as conn:
        plan = [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
    searches = [step for step in plan if step.startswith(("SCAN", "SEARCH"))]
    assert len(searches) == len(lookups), plan
    for lookup in lookups:
        assert any(step.startswith(f"SEARCH {lookup}") for step in searches), (lookup, plan)
