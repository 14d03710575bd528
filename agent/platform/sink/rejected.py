"""Messages the receiver set aside: kept bounded, counted for good."""

from __future__ import annotations

from dataclasses import dataclass

from agent.platform.sink.schema import SqlCursor

REJECTED_SCHEMA = """
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY,
    gw TEXT,
    topic TEXT NOT NULL,
    received INTEGER NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_by_gw ON rejected (gw, received);
CREATE TABLE IF NOT EXISTS rejected_totals (
    gw TEXT NOT NULL,
    kind TEXT NOT NULL,
    n INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    last_received INTEGER NOT NULL,
    PRIMARY KEY (gw, kind)
);
"""
# 64 KiB holds a whole batch of the default 20,000 readings (about 55 kB with zstd level 3).
REJECTED_KEEP_BYTES = 64 * 1024
REJECTED_KEEP_ROWS = 1000  # so at most ~64 MiB of payloads, however many are refused
REJECTED_TEXT_CHARS = 500  # reason and topic are cut to this


@dataclass(frozen=True, slots=True)
class RejectedMessage:
    """A message the receiver set aside: where it came from, why, and its first bytes."""

    gw: str | None
    topic: str
    received: int
    kind: str
    reason: str
    size: int
    payload: bytes


def _cut(text: str) -> str:
    return text if len(text) <= REJECTED_TEXT_CHARS else text[: REJECTED_TEXT_CHARS - 1] + "…"


def record_set_aside(cur: SqlCursor, gw: str | None, topic: str, kind: str, reason: str, *,
                     payload: bytes, received: int) -> None:
    """Keep a message that cannot be stored (cut to ``REJECTED_KEEP_BYTES``) and count it,
    in the caller's transaction; only the most recent ``REJECTED_KEEP_ROWS`` are kept, the
    counts for good."""
    (row_id,) = cur.execute(
        "INSERT INTO rejected (gw, topic, received, kind, reason, size, payload)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (gw, _cut(topic), received, kind, _cut(reason), len(payload),
         bytes(payload[:REJECTED_KEEP_BYTES])),
    ).fetchone()
    cur.execute("DELETE FROM rejected WHERE id <= ?", (int(row_id) - REJECTED_KEEP_ROWS,))
    cur.execute(
        "INSERT INTO rejected_totals (gw, kind, n, bytes, last_received)"
        " VALUES (?, ?, 1, ?, ?) ON CONFLICT (gw, kind) DO UPDATE SET"
        " n = rejected_totals.n + 1, bytes = rejected_totals.bytes + excluded.bytes,"
        " last_received = excluded.last_received",
        (gw or "", kind, len(payload), received),
    )
