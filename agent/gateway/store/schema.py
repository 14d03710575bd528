"""The store's tables, and bringing a file written by an earlier version up to them."""

from __future__ import annotations

import sqlite3

from agent.gateway.store.seq_ledger import new_store_id

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


def prepare(conn: sqlite3.Connection) -> None:
    """Create the tables (or bring them up to this schema) and the meta counters a new store
    starts with."""
    conn.executescript(SCHEMA)
    _add_missing_columns(conn)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('boot', 0), ('next_seq', 1),"
                 " ('dropped_batches', 0), ('dropped_readings', 0),"
                 " ('dropped_events', 0), ('dropped_aggregates', 0), ('store_id', ?)",
                 (new_store_id(),))
    conn.execute(NEXT_SEQ_ABOVE_BATCHES)
    conn.execute("COMMIT")
