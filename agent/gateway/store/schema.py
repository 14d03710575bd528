"""The store's tables, and bringing a file written by an earlier version up to them.

The schema's version is SQLite's ``PRAGMA user_version``: the number of :data:`MIGRATIONS`
applied to the file. A store opened for writing gets the ones it lacks, in order, in one
transaction with the new version number (a crash in between leaves the old version, and the
next open applies them again). Stores written before versions were recorded have version 0
and may have gained some of the later columns already: the first migrations are no-ops where
their work is done. A store of a newer version (a downgraded agent) is left as it is.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import NamedTuple

import structlog

from agent.gateway.store.seq_ledger import new_store_id

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    created INTEGER NOT NULL,
    n_readings INTEGER NOT NULL,
    payload BLOB NOT NULL,
    n_events INTEGER NOT NULL DEFAULT 0,
    n_aggregates INTEGER NOT NULL DEFAULT 0,
    created_elapsed INTEGER
);
CREATE TABLE IF NOT EXISTS kpi_state (id INTEGER PRIMARY KEY CHECK (id = 1), t INTEGER NOT NULL,
                                      body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS kpi_journal (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS set_aside (id INTEGER PRIMARY KEY, t INTEGER NOT NULL,
                                      what TEXT NOT NULL, reason TEXT NOT NULL, body BLOB);
CREATE TABLE IF NOT EXISTS drops (
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
"""

# next_seq is never at or below a stored batch (a meta row lost, or older than the batches)
NEXT_SEQ_ABOVE_BATCHES = ("UPDATE meta SET value = max(value, (SELECT coalesce(max(seq), 0)"
                          " + 1 FROM batches)) WHERE key = 'next_seq'")


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a store written by an earlier version up to this schema."""
    added = {"drops": [("carrier", "INTEGER")],
             "batches": [("n_events", "INTEGER NOT NULL DEFAULT 0"),
                         ("n_aggregates", "INTEGER NOT NULL DEFAULT 0"),
                         ("created_elapsed", "INTEGER")]}
    for table, wanted in added.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, decl in wanted:
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def _create_tables(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


class Migration(NamedTuple):
    what: str
    apply: Callable[[sqlite3.Connection], None]


# Append only: a migration's number is its place in this list (1-based), recorded in the file.
MIGRATIONS: tuple[Migration, ...] = (
    Migration("the tables", _create_tables),
    Migration("columns added before versions were recorded (drops.carrier, batches.n_events, "
              "n_aggregates, created_elapsed)", _add_missing_columns),
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply the migrations the file lacks, in one transaction; returns their numbers."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        log.warning("buffer_schema_newer", version=version, known=SCHEMA_VERSION,
                    hint="written by a newer agent; used as it is")
    if version >= SCHEMA_VERSION:
        return []
    existing = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                            ).fetchone()[0]
    conn.execute("BEGIN IMMEDIATE")
    try:
        for migration in MIGRATIONS[version:]:
            migration.apply(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if existing:
        log.info("buffer_schema_migrated", from_version=version, to_version=SCHEMA_VERSION)
    return list(range(version + 1, SCHEMA_VERSION + 1))


def prepare(conn: sqlite3.Connection) -> None:
    """Bring the file up to this schema and set the meta counters a new store starts with."""
    migrate(conn)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('boot', 0), ('next_seq', 1),"
                 " ('dropped_batches', 0), ('dropped_readings', 0),"
                 " ('dropped_events', 0), ('dropped_aggregates', 0), ('store_id', ?)",
                 (new_store_id(),))
    conn.execute(NEXT_SEQ_ABOVE_BATCHES)
    conn.execute("COMMIT")
