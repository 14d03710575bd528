"""The receiver's SQLite sink: dedup, gaps, type fidelity, one transaction per batch."""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError, WireFormatError
from agent.readings import Quality, Reading
from agent.sink import SqliteSink, sink_path
from agent.wire import Batch, Series, Status, encode_status, iter_readings


def _batch(seq: int, gw: str = "gw-1", *, created: int = 0, boot: int = 1) -> Batch:
    return Batch(
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
def sink(tmp_path: Path) -> Iterator[SqliteSink]:
    with SqliteSink.open(f"sqlite:///{tmp_path}/sink.db", clock=lambda: 1234.5) as s:
        yield s


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


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


def test_open_uses_wal(sink: SqliteSink) -> None:
    with sqlite3.connect(sink.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_open_unwritable_place(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open the SQLite database"):
        SqliteSink.open(tmp_path / "missing-dir" / "x.db")


def test_store_keeps_readings_and_their_types(sink: SqliteSink) -> None:
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
    with sqlite3.connect(sink.path) as conn:
        types = dict(conn.execute("SELECT pt || t, typeof(value) FROM readings"))
    assert types == {
        "voltage1000": "real",
        "voltage1500": "real",
        "count1000": "integer",
        "count1500": "null",
    }


def test_store_batch_row_aggregates_events(sink: SqliteSink) -> None:
    sink.store(_batch(3))
    with sqlite3.connect(sink.path) as conn:
        row = conn.execute(
            "SELECT gw, seq, boot, created, received, n_readings, n_aggregates FROM batches"
        ).fetchone()
    assert row == ("gw-1", 3, 1, 1_700_000_000_003, 1_234_500, 4, 1)
    assert sink.aggregates_for("gw-1") == list(_batch(3).aggregates)
    assert sink.events_for("gw-1") == list(_batch(3).events)


def test_same_batch_twice_is_stored_once(sink: SqliteSink) -> None:
    first = sink.store(_batch(1))
    second = sink.store(_batch(1))
    assert (first.duplicate, second.duplicate) == (False, True)
    assert not second.conflict
    assert sink.count_readings() == 4
    for table, n in [("batches", 1), ("readings", 4), ("aggregates", 1), ("events", 1)]:
        assert _count(sink.path, table) == n, table


def test_dedup_survives_a_reopen(tmp_path: Path) -> None:
    with SqliteSink.open(tmp_path / "s.db") as sink:
        sink.store(_batch(1))
    with SqliteSink.open(tmp_path / "s.db") as sink:
        assert sink.store(_batch(1)).duplicate
        assert sink.count_readings("gw-1") == 4


def test_reused_seq_is_a_flagged_duplicate(sink: SqliteSink) -> None:
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
def test_gap_tracking(sink: SqliteSink, name: str) -> None:
    for seq, new_gaps, filled, open_gaps in GAP_SCENARIOS[name]:
        outcome = sink.store(_batch(seq))
        assert (outcome.new_gaps, outcome.filled) == (new_gaps, filled), f"seq {seq}"
        assert sink.gaps("gw-1") == open_gaps, f"after seq {seq}"


def test_gaps_are_per_gateway(sink: SqliteSink) -> None:
    sink.store(_batch(1, "gw-a"))
    sink.store(_batch(7, "gw-b"))  # baseline of gw-b: no gap
    sink.store(_batch(3, "gw-a"))
    assert sink.gaps("gw-a") == [(2, 2)]
    assert sink.gaps("gw-b") == []


_db_counter = itertools.count()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrivals=st.lists(st.integers(1, 30), min_size=1, max_size=40))
def test_gaps_are_exactly_the_missing_seqs(tmp_path: Path, arrivals: list[int]) -> None:
    # Whatever order (and however often) batches arrive, the open gaps are the seqs between
    # the first one seen and the highest one seen that never arrived.
    with SqliteSink.open(tmp_path / f"p{next(_db_counter)}.db") as sink:
        for seq in arrivals:
            sink.store(_batch(seq))
        baseline, top = arrivals[0], max(arrivals)
        missing = set(range(baseline + 1, top + 1)) - set(arrivals)
        in_gaps = {s for a, b in sink.gaps("gw-1") for s in range(a, b + 1)}
        assert in_gaps == missing
        assert sink.seqs("gw-1") == sorted(set(arrivals))
        assert sink.count_readings() == 4 * len(set(arrivals))


def test_a_failing_insert_leaves_nothing(sink: SqliteSink) -> None:
    sink.store(_batch(1))
    good = _batch(3)
    # The second series fails (SQLite has no integer beyond 64 bits) after the batch row, the
    # gap and the first series' rows went in: all of it must roll back.
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


def test_a_failing_aggregate_leaves_nothing(sink: SqliteSink) -> None:
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


def test_status_last_one_wins(sink: SqliteSink) -> None:
    online = Status("online", "gw-1", 2, 2000, "0.1.0")
    will = Status("offline", "gw-1", 2, 1000, "0.1.0")  # registered at connect: older t
    assert sink.store_status("gw-1", encode_status(online)) == online
    sink.store_status("gw-1", encode_status(will).decode())
    assert sink.status_for("gw-1") == will
    assert sink.status_for("gw-2") is None


def test_status_for_another_gateway_is_refused(sink: SqliteSink) -> None:
    with pytest.raises(WireFormatError, match="topic names gateway 'gw-2'"):
        sink.store_status("gw-2", encode_status(Status("online", "gw-1", 1, 1, "x")))
    assert sink.status_for("gw-2") is None


def test_readings_for_other_gateways_are_apart(sink: SqliteSink) -> None:
    sink.store(_batch(1, "gw-a"))
    sink.store(_batch(1, "gw-b"))
    assert sink.count_readings() == 8
    assert sink.count_readings("gw-a") == 4
    assert {r.device for r in sink.readings_for("gw-b")} == {"m1"}
    assert sink.readings_for("gw-c") == []
    assert Reading("m1", "count", None, 1500, None, Quality.COMM_ERROR) in sink.readings_for("gw-a")
