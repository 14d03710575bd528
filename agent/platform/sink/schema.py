"""The sink's tables, how an older sink file is brought up to them, and its transactions."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, Self

from agent.errors import ConfigError
from agent.platform.sink.devices import backfill_devices
from agent.platform.sink.summary import backfill_gateways

SCHEME = "sqlite:///"

# `value` columns have no declared type on purpose: with no type affinity SQLite stores an int
# as INTEGER and a float as REAL, so 230.0 stays a float and 7 stays an int (REAL or NUMERIC
# affinity would convert one into the other).
SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    gw TEXT NOT NULL,
    store TEXT NOT NULL DEFAULT '',
    seq INTEGER NOT NULL,
    boot INTEGER NOT NULL,
    created INTEGER NOT NULL,
    received INTEGER NOT NULL,
    n_readings INTEGER NOT NULL,
    n_aggregates INTEGER NOT NULL,
    jump INTEGER NOT NULL DEFAULT 0,
    clock_synced INTEGER,
    clock_shift_ms INTEGER NOT NULL DEFAULT 0,
    lag_ms INTEGER,
    PRIMARY KEY (gw, store, seq)
);
CREATE TABLE IF NOT EXISTS readings (
    gw TEXT NOT NULL,
    dev TEXT NOT NULL,
    pt TEXT NOT NULL,
    t INTEGER NOT NULL,
    value,
    quality INTEGER NOT NULL,
    unit TEXT,
    seq INTEGER NOT NULL,
    store TEXT NOT NULL DEFAULT ''
);
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
    seq INTEGER NOT NULL,
    store TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS events (
    gw TEXT NOT NULL,
    t INTEGER NOT NULL,
    kind TEXT NOT NULL,
    dev TEXT,
    msg TEXT NOT NULL,
    seq INTEGER NOT NULL,
    store TEXT NOT NULL DEFAULT ''
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
    store TEXT NOT NULL DEFAULT '',
    "first" INTEGER NOT NULL,
    "last" INTEGER NOT NULL,
    PRIMARY KEY (gw, store, "first")
);
CREATE TABLE IF NOT EXISTS clock_steps (
    gw TEXT NOT NULL,
    store TEXT NOT NULL,
    boot INTEGER NOT NULL,
    before_seq INTEGER NOT NULL,
    step_ms INTEGER NOT NULL,
    t INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    from_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (gw, store, boot, before_seq, t, step_ms)
);
CREATE TABLE IF NOT EXISTS gateways (
    gw TEXT PRIMARY KEY,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    store TEXT,
    last_seq INTEGER,
    last_created INTEGER,
    batches INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    kpi_windows INTEGER NOT NULL,
    dropped_batches INTEGER NOT NULL,
    dropped_readings INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    gw TEXT NOT NULL,
    dev TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    last_t INTEGER,
    last_good_t INTEGER,
    readings INTEGER NOT NULL,
    good_readings INTEGER NOT NULL,
    PRIMARY KEY (gw, dev)
);
CREATE TABLE IF NOT EXISTS health (
    gw TEXT PRIMARY KEY,
    t INTEGER NOT NULL,
    received INTEGER NOT NULL,
    summary TEXT NOT NULL
);
"""
# after _migrate: an older file's tables gain their columns first
INDEXES = """
CREATE INDEX IF NOT EXISTS readings_by_point ON readings (gw, dev, pt, t);
CREATE INDEX IF NOT EXISTS aggregates_by_kpi ON aggregates (gw, kpi, "start");
-- the clock-step correction's lookups; ``store`` is left out of the readings' key (it would
-- add ~17 bytes a reading): only a replaced store's batches share a gateway's seqs
CREATE INDEX IF NOT EXISTS readings_by_batch ON readings (gw, seq);
CREATE INDEX IF NOT EXISTS events_by_batch ON events (gw, seq);
CREATE INDEX IF NOT EXISTS batches_by_boot ON batches (gw, store, boot, seq);
-- the fleet view's last hour
CREATE INDEX IF NOT EXISTS batches_by_received ON batches (received);
"""

# Messages set aside (``set_aside``): a poison message is kept, bounded, and acknowledged, so it
# cannot block the others. ``rejected`` keeps the most recent ones with the start of their

# Columns added since the first release (ALTER TABLE ADD COLUMN is a schema-only change in
# SQLite, no matter how many rows the table holds).
_ADDED_COLUMNS = {
    # the optional body key ``clock``: NULL when a batch did not say
    "batches": [("clock_synced", "INTEGER"),
                # what the clock-step correction added to the batch's reading and event times
                ("clock_shift_ms", "INTEGER NOT NULL DEFAULT 0"),
                # received minus the median reading time (agent.platform.sink.summary)
                ("lag_ms", "INTEGER")],
    "readings": [("store", "TEXT NOT NULL DEFAULT ''")],
    "aggregates": [("store", "TEXT NOT NULL DEFAULT ''")],
    "events": [("store", "TEXT NOT NULL DEFAULT ''")],
    "clock_steps": [("from_seq", "INTEGER NOT NULL DEFAULT 0")],
    # the status's optional ``buffer`` map: NULL when the last status did not say
    "status": [("buffer_state", "TEXT"), ("buffer_since", "INTEGER"), ("buffer_reason", "TEXT"),
               ("buffer_held_readings", "INTEGER"), ("buffer_dropped_readings", "INTEGER")],
}
# Tables whose primary key gained ``store``: rebuilt once, rows copied with store ''.
_REKEYED = {
    "batches": "gw, '', seq, boot, created, received, n_readings, n_aggregates, 0, NULL, 0,"
               " NULL",
    "seq_gaps": 'gw, \'\', "first", "last"',
}


class SqlCursor(Protocol):
    """What the logic both sinks share writes through: an ``sqlite3.Cursor``, or the
    PostgreSQL sink's cursor, which takes the same SQL (``?`` and ``:name`` placeholders)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Any = (), /) -> Self: ...

    def executemany(self, sql: str, params: Iterable[Any], /) -> Self: ...

    def fetchone(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Cursor]:
    """One write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``), rolled back on any exception;
    the body may end it early with ``ROLLBACK``."""
    cur = conn.cursor()
    cur.execute("BEGIN IMMEDIATE")
    try:
        yield cur
        if conn.in_transaction:
            cur.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            cur.execute("ROLLBACK")
        raise


def sink_path(url_or_path: str | Path) -> Path:
    """The file a sink URL (``sqlite:///PATH``) or plain path names."""
    if isinstance(url_or_path, Path):
        return url_or_path
    if url_or_path.startswith(SCHEME):
        rest = url_or_path[len(SCHEME) :]
        if rest:
            return Path(rest)
    elif "://" not in url_or_path and url_or_path:
        return Path(url_or_path)
    raise ConfigError(
        f"sink {url_or_path!r}: write sqlite:///relative/file.db or sqlite:////absolute/file.db"
    )


# Steps that move data, not only tables and columns: each runs once, in the migration's
# transaction, and the file records the last one it ran in ``PRAGMA user_version``.
VERSIONED_STEPS: tuple[tuple[int, Callable[[SqlCursor], None]], ...] = (
    (1, backfill_gateways),
    (2, backfill_devices),
    (3, lambda cur: None),  # the health table: nothing to fill, the version says it is there
)


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the tables, and bring a sink file written by an earlier release up to them."""
    statements = [x for x in SCHEMA.split(";") if x.strip()]
    with immediate(conn):
        renamed = []
        for table in _REKEYED:
            have = _columns(conn, table)
            if have and "store" not in have:
                conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v0")
                renamed.append(table)
        for statement in statements:
            conn.execute(statement)
        for table in renamed:
            conn.execute(f"INSERT INTO {table} SELECT {_REKEYED[table]} FROM {table}_v0")
            conn.execute(f"DROP TABLE {table}_v0")
        for table, wanted in _ADDED_COLUMNS.items():
            have = _columns(conn, table)
            for name, decl in wanted:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for number, step in VERSIONED_STEPS:
            if number > version:
                step(conn.cursor())
                conn.execute(f"PRAGMA user_version = {number}")
    conn.executescript(INDEXES)
