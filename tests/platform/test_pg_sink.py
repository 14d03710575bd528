"""What only the PostgreSQL sink has: its URL and password, versioned migrations, exactly-once
storage under two racing receivers, day partitions and retention. (What it shares with the
SQLite sink runs against both in test_sink.py.)"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.platform.sink import SinkUnavailable
from agent.platform.sink.pg import PgSink, connect, migrate, schema_version
from agent.platform.sink.pg_schema import DAY_MS, MIGRATIONS, is_pg_url, parse_pg_url
from tests.platform.postgres import PgServer
from tests.platform.test_sink import _batch

# one PostgreSQL server (session fixture) for every test that needs one: its tests share a worker
pytestmark = pytest.mark.xdist_group("postgresql")

NOW = 1_796_000_000.0  # 2026-11-30 UTC, a clock for the partitions
WHERE_ROWS_ARE = ("SELECT CAST(CAST(tableoid AS regclass) AS text), count(*) FROM readings"
                  " GROUP BY 1")


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://ssc@db.example:6543/city", "postgresql://ssc@db.example:6543/city"),
    ("postgres://ssc@db/city", "postgresql://ssc@db:5432/city"),
    ("postgresql://ssc@db/city?sslmode=verify-full&sslrootcert=system",
     "postgresql://ssc@db:5432/city?sslmode=verify-full&sslrootcert=system"),
])
def test_url(url: str, expected: str) -> None:
    assert is_pg_url(url)
    assert parse_pg_url(url).url == expected


@pytest.mark.parametrize(("url", "message"), [
    ("postgresql://ssc:s3cret@db/city", "holds a password"),
    ("postgresql://db/city", "write postgresql://USER@HOST:PORT/DATABASE"),
    ("postgresql://ssc@db/", "write postgresql://USER@HOST:PORT/DATABASE"),
    ("postgresql://ssc@db:99999/city", "port"),
    ("postgresql://ssc@db/city?password=x", "unknown URL parameter 'password'"),
    ("postgresql://ssc@db/city?sslmode=maybe", "sslmode='maybe'"),
    ("postgresql://ssc@db/city?sslrootcert=/nonexistent/ca.pem", "sslrootcert=/nonexistent"),
])
def test_url_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_pg_url(url)
    assert "s3cret" not in str(caught.value)


def test_password_file_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"--sink-password-file file .*missing.*cannot be read"):
        parse_pg_url("postgresql://ssc@db/city", tmp_path / "missing")
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"PGPASSFILE .*nope: cannot be read"):
        parse_pg_url("postgresql://ssc@db/city")


def test_password_from_file_and_refused_without(pg_server: PgServer, tmp_path: Path) -> None:
    pg_server.new_role("pw_user", "correct horse")
    url = pg_server.url(pg_server.new_database(owner="pw_user"), user="pw_user")
    wrong = tmp_path / "wrong"
    wrong.write_text("battery staple\n")
    with pytest.raises(ConfigError, match=r"cannot connect: .*password") as caught:
        PgSink.open(url, password_file=wrong)
    assert "battery" not in str(caught.value)
    right = tmp_path / "right"
    right.write_text("correct horse\n")
    with PgSink.open(url, password_file=right) as sink:
        assert not sink.store(_batch(1)).duplicate
        # the password is rotated and the server drops the session: the next connection
        # reads the file anew
        with pg_server.admin() as admin:
            admin.execute("ALTER ROLE pw_user PASSWORD 'new horse'")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE usename = 'pw_user'")
        right.write_text("new horse\n")
        with pytest.raises(SinkUnavailable, match="terminating connection") as dropped:
            sink.store(_batch(2))
        assert "horse" not in str(dropped.value)
        assert not sink.store(_batch(2)).duplicate
        assert sink.seqs("gw-1") == [1, 2]


def test_unreachable_database_at_start_is_one_line(pg_server: PgServer) -> None:
    from tests.conftest import free_port

    with pytest.raises(ConfigError) as caught:
        PgSink.open(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    assert len(str(caught.value).splitlines()) == 1
    assert "cannot connect" in str(caught.value)


def test_migration_from_an_older_version_keeps_the_data(pg_server: PgServer) -> None:
    url = pg_server.url(pg_server.new_database())
    conn = connect(parse_pg_url(url))
    assert migrate(conn, upto=1) == [1]  # a database set up by the first release
    conn.execute("INSERT INTO batches (gw, seq, boot, created, received, n_readings,"
                 " n_aggregates) VALUES ('gw-1', 1, 1, 1, 1, 4, 1)")
    assert conn.execute("SELECT to_regclass('rejected')").fetchone() == (None,)
    with PgSink.open(url) as sink:
        assert sink.store(_batch(1)).duplicate  # the old row still counts
        sink.set_aside("gw-1", "t", "undecodable", "why", b"x")
        assert sink.rejected_totals() == {("gw-1", "undecodable"): 1}
    latest = MIGRATIONS[-1][0]
    assert schema_version(conn) == latest
    rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, latest + 1))
    with PgSink.open(url):  # opening again applies nothing
        assert migrate(conn) == []
    conn.close()


def test_two_receivers_racing_on_one_batch_store_it_once(pg_url: str) -> None:
    """The second transaction waits on the first; once that commits it stores nothing."""
    with PgSink.open(pg_url) as first, PgSink.open(pg_url) as second:
        batch = _batch(7)
        results = []
        with first._transaction() as cur:
            assert not first.store_in(cur, [batch])[0].duplicate
            racer = threading.Thread(target=lambda: results.append(second.store(batch)))
            racer.start()
            deadline = time.monotonic() + 10
            while not first.select("SELECT 1 FROM pg_locks WHERE NOT granted"):
                assert time.monotonic() < deadline, "the second receiver never waited"
                time.sleep(0.01)
            assert results == []  # still waiting while the first holds its transaction
        racer.join(10)
        assert [r.duplicate for r in results] == [True]
        assert first.count_readings() == 4
        assert first.seqs("gw-1") == [7]


def test_a_racer_whose_rival_rolls_back_stores_the_batch(pg_url: str) -> None:
    with PgSink.open(pg_url) as first, PgSink.open(pg_url) as second:
        results = []
        racer = threading.Thread(target=lambda: results.append(second.store(_batch(7))))
        def die_before_the_commit() -> None:
            with first._transaction() as cur:
                first.store_in(cur, [_batch(7)])
                racer.start()
                while not first.select("SELECT 1 FROM pg_locks WHERE NOT granted"):
                    time.sleep(0.01)
                raise RuntimeError("the first receiver dies before its commit")

        with pytest.raises(RuntimeError):
            die_before_the_commit()
        racer.join(10)
        assert [r.duplicate for r in results] == [False]
        assert first.count_readings() == 4


def test_many_batches_in_one_transaction_track_gaps_as_one_by_one(pg_url: str) -> None:
    with PgSink.open(pg_url) as sink:
        batches = [_batch(1, "b"), _batch(1), _batch(3), _batch(1), _batch(2, "b"),
                   _batch(2), _batch(5, "b")]
        outcomes = sink.store_many(batches)
        assert [o.duplicate for o in outcomes] == [False] * 3 + [True] + [False] * 3
        assert outcomes[2].new_gaps == [(2, 2)] and outcomes[5].filled == [2]
        assert sink.gaps("gw-1") == [] and sink.gaps("b") == [(3, 4)]
        assert sink.count_readings() == 4 * 6


def test_partitions_are_made_ahead_and_readings_find_theirs(pg_server: PgServer) -> None:
    now = [NOW]
    url = pg_server.url(pg_server.new_database())
    with PgSink.open(url, clock=lambda: now[0]) as sink:
        days = sorted(sink.partitions().values())
        today = int(NOW * 1000) // DAY_MS * DAY_MS
        assert days == [today, today + DAY_MS, today + 2 * DAY_MS]
        far = dataclasses.replace(_batch(1), series=tuple(
            dataclasses.replace(s, t0=today + 10 * DAY_MS) for s in _batch(1).series))
        sink.store(far)  # a clock far ahead: kept in the default partition
        sink.store(dataclasses.replace(_batch(2), series=tuple(
            dataclasses.replace(s, t0=today + 3600_000) for s in _batch(2).series)))
        where = dict(sink.select(WHERE_ROWS_ARE))
        assert where == {"readings_default": 4, sink.partition_name_of(today): 4}
        now[0] = NOW + 10 * 86400  # ten days on: that day's partition takes its rows over
        sink.create_partitions()
        where = dict(sink.select(WHERE_ROWS_ARE))
        assert where == {sink.partition_name_of(today + 10 * DAY_MS): 4,
                         sink.partition_name_of(today): 4}
        assert sink.count_readings() == 8


def test_retention_drops_whole_days_and_old_aggregates(pg_server: PgServer) -> None:
    now = [NOW]
    url = pg_server.url(pg_server.new_database())
    with PgSink.open(url, clock=lambda: now[0]) as sink:
        today = int(NOW * 1000) // DAY_MS * DAY_MS
        for seq, day in ((1, 0), (2, 1), (3, 2)):
            sink.store(dataclasses.replace(_batch(seq), series=tuple(
                dataclasses.replace(s, t0=today + day * DAY_MS + 1000)
                for s in _batch(seq).series)))
        old = dataclasses.replace(_batch(4), series=tuple(
            dataclasses.replace(s, t0=today - 30 * DAY_MS) for s in _batch(4).series))
        sink.store(old)  # before the first partition: in the default one
        now[0] = NOW + 2 * 86400 + 3600  # two days and an hour later, keep one day
        gone = sink.apply_retention(readings_ms=DAY_MS, aggregates_ms=DAY_MS)
        assert gone["partitions"] == 1 and gone["readings_default"] == 4
        assert sorted(int(t) // DAY_MS * DAY_MS - today for (t,) in
                      sink.select("SELECT DISTINCT t FROM readings")) == [DAY_MS] * 2 + [
                          2 * DAY_MS] * 2
        # the aggregates of _batch end at 900,000 ms (1970): all older than a day
        assert gone["aggregates"] == 4 and sink.aggregates_for("gw-1") == []
        assert sink.seqs("gw-1") == [1, 2, 3, 4]  # batches stay: they keep the dedup
