"""Messages the receiver set aside: kept bounded, counted for good."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from agent.platform.sink.schema import immediate

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


def set_aside(conn: sqlite3.Connection, gw: str | None, topic: str, kind: str, reason: str, *,
              payload: bytes, received: int) -> None:
    """Keep a message that cannot be stored (cut to ``REJECTED_KEEP_BYTES``) and count it;
    only the most recent ``REJECTED_KEEP_ROWS`` are kept, the counts for good."""
    with immediate(conn) as cur:
        cur.execute(
            "INSERT INTO rejected (gw, topic, received, kind, reason, size, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (gw, _cut(topic), received, kind, _cut(reason), len(payload),
             bytes(payload[:REJECTED_KEEP_BYTES])),
        )
        cur.execute(
            "DELETE FROM rejected WHERE id <= ?", ((cur.lastrowid or 0) - REJECTED_KEEP_ROWS,)
        )
        cur.execute(
            "INSERT INTO rejected_totals (gw, kind, n, bytes, last_received)"
            " VALUES (?, ?, 1, ?, ?) ON CONFLICT (gw, kind) DO UPDATE SET n = n + 1,"
            " bytes = bytes + excluded.bytes, last_received = excluded.last_received",
            (gw or "", kind, len(payload), received),
        )


def rejected_rows(conn: sqlite3.Connection, gw: str | None, limit: int) -> list[RejectedMessage]:
    """The most recent messages set aside (of one gateway, or all), newest first."""
    where, args = ("WHERE gw = ?", (gw,)) if gw is not None else ("", ())
    rows = conn.execute(
        "SELECT gw, topic, received, kind, reason, size, payload FROM rejected"
        f" {where} ORDER BY id DESC LIMIT ?",
        (*args, limit),
    )
    return [RejectedMessage(*row) for row in rows]


def rejected_totals(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """How many messages were set aside, per (gateway, kind); gateway '' when the topic
    named none."""
    rows = conn.execute("SELECT gw, kind, n FROM rejected_totals")
    return {(str(g), str(k)): int(n) for g, k, n in rows}
