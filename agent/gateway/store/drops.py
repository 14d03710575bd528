"""The drop ledger: the ``drops`` table and the ``dropped_*`` counters in ``meta``.

Every loss the store knows of is a row: batches the bounds (``max_bytes``, ``max_age``)
dropped, content no batch could carry, readings lost before they reached the store, rows set
aside at start, a damaged or unusable store file. Each row is reported once as an event inside
the next sealed batch (its ``carrier``); when the bounds later drop the carrier itself, its
reports are queued again, so the platform hears of every drop at least once.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, NamedTuple

import structlog

from agent.damper import Repeats
from agent.gateway.store.base import StoreBase

if TYPE_CHECKING:
    from agent.damper import Tally
    from agent.gateway.store.bounds import StoreBounds

log = structlog.get_logger(__name__)

COUNTERS = ("dropped_batches", "dropped_readings", "dropped_events", "dropped_aggregates")


class DropRecord(NamedTuple):
    """One row of the drop ledger, as ``drop_events`` lists it."""

    t: int
    kind: str
    message: str
    batches: int
    readings: int
    reported: bool


class DropCount(NamedTuple):
    batches: int
    readings: int


class StoredCounts(NamedTuple):
    """What a stored batch holds, as a drop counts it."""

    seq: int
    readings: int
    events: int
    aggregates: int


class UnreportedDrop(NamedTuple):
    id: int
    t: int
    kind: str
    message: str


def report(conn: sqlite3.Connection, t: int, kind: str, message: str, *, reason: str = "",
           batches: int = 0, readings: int = 0) -> None:
    """Record a drop (or another loss event) to report in the next sealed batch."""
    conn.execute("INSERT INTO drops (t, kind, message, reason, batches, readings)"
                 " VALUES (?, ?, ?, ?, ?, ?)", (t, kind, message, reason, batches, readings))


def count(conn: sqlite3.Connection, **counts: int) -> None:
    """Add to the ``dropped_*`` counters (``readings=3`` adds to ``dropped_readings``)."""
    for name, n in counts.items():
        conn.execute("UPDATE meta SET value = value + ? WHERE key = ?", (n, f"dropped_{name}"))


def set_aside(conn: sqlite3.Connection, t: int, what: str, row_id: int, reason: str) -> None:
    """Keep a row that cannot be loaded raw in ``set_aside``, and report it (in a
    transaction)."""
    source = {"pending": "pending", "kpi_state": "kpi_state"}[what]
    conn.execute(f"INSERT INTO set_aside (t, what, reason, body) SELECT ?, ?, ?, body"
                 f" FROM {source} WHERE id = ?", (t, what, reason, row_id))
    conn.execute(f"DELETE FROM {source} WHERE id = ?", (row_id,))
    report(conn, t, "store_set_aside", f"what={what} {reason}", reason=what)
    log.error("store_set_aside", what=what, reason=reason)


def record_drop(conn: sqlite3.Connection, t: int, bounds: StoreBounds, reason: str,
                victims: list[StoredCounts], *, lines: Repeats) -> None:
    """Delete ``victims``, count and queue a report of them; log it as ``lines`` lets
    through (a drop at every seal of a long outage: one line, then a tally per period)."""
    seqs = [v.seq for v in victims]
    readings = sum(v.readings for v in victims)
    events = sum(v.events for v in victims)
    aggregates = sum(v.aggregates for v in victims)
    conn.executemany("DELETE FROM batches WHERE seq = ?", [(s,) for s in seqs])
    # reports those batches carried never reached the platform: queue them again
    conn.executemany("UPDATE drops SET reported = 0, carrier = NULL WHERE carrier = ?",
                     [(s,) for s in seqs])
    limit = (f"max_bytes={bounds.max_bytes}" if reason == "max_bytes"
             else f"max_age_ms={bounds.max_age_ms}")
    message = (f"batches={len(seqs)} readings={readings} events={events} "
               f"aggregates={aggregates} seq={seqs[0]}-{seqs[-1]} "
               f"reason={reason} {limit} policy={bounds.when_full}")
    report(conn, t, "buffer_drop", message, reason=reason, batches=len(seqs), readings=readings)
    count(conn, batches=len(seqs), readings=readings, events=events, aggregates=aggregates)
    said = lines.occurred(batches=len(seqs), readings=readings, events=events,
                          aggregates=aggregates)
    if said == "log":
        log.warning("buffer_drop", batches=len(seqs), readings=readings, events=events,
                    aggregates=aggregates, first_seq=seqs[0], last_seq=seqs[-1],
                    reason=reason, policy=bounds.when_full)
    elif said is not None:
        log_drop_tally(said)


def log_drop_tally(tally: Tally) -> None:
    """The drops since the last ``buffer_drop`` line, added up (every one of them is in the
    ledger and reported to the platform on its own)."""
    log.warning("buffer_drop_summary", drops=tally.occurrences, **tally.totals,
                period_seconds=round(tally.seconds))


def unencodable(conn: sqlite3.Connection, t: int, *, n_readings: int, n_events: int,
                n_aggregates: int, error: str) -> None:
    """Count and report content that no batch can carry (it would never be sent)."""
    message = (f"batches=0 readings={n_readings} events={n_events} "
               f"aggregates={n_aggregates} reason=unencodable error={error[:200]}")
    report(conn, t, "buffer_drop", message, reason="unencodable", readings=n_readings)
    count(conn, readings=n_readings, events=n_events, aggregates=n_aggregates)
    log.error("buffer_drop", readings=n_readings, events=n_events,
              aggregates=n_aggregates, reason="unencodable", error=error[:200])


def unreported(conn: sqlite3.Connection) -> list[UnreportedDrop]:
    return [UnreportedDrop(*row) for row in conn.execute(
        "SELECT id, t, kind, message FROM drops WHERE reported = 0 ORDER BY id")]


def carried_by(conn: sqlite3.Connection, seq: int, reports: list[UnreportedDrop]) -> None:
    """``reports`` went out inside batch ``seq``."""
    conn.execute(f"UPDATE drops SET reported = 1, carrier = ? WHERE id IN "
                 f"({','.join('?' * len(reports))})", [seq, *(r.id for r in reports)])


class DropLedger(StoreBase):
    """The drop ledger's side of the store's API."""

    def note_lost(self, readings: int, reason: str, *, events: int = 0,
                  aggregates: int = 0) -> None:
        """Record readings (and events, KPI windows) lost before they reached the store (disk
        full for too long)."""
        extra = "".join(f" {key}={n}" for key, n in (("events", events),
                                                     ("aggregates", aggregates)) if n)
        with self._txn():
            report(self._conn, self._now_ms(), "buffer_drop",
                   f"batches=0 readings={readings}{extra} reason={reason}", reason=reason,
                   readings=readings)
            count(self._conn, readings=readings, events=events, aggregates=aggregates)

    def drop_totals(self) -> dict[str, DropCount]:
        """Dropped ``(batches, readings)`` by reason, since the store was created."""
        return {str(r): DropCount(int(b), int(n)) for r, b, n in self._conn.execute(
            "SELECT reason, sum(batches), sum(readings) FROM drops WHERE kind = 'buffer_drop'"
            " GROUP BY reason")}

    def drop_events(self) -> list[DropRecord]:
        """Every recorded drop, oldest first."""
        return [DropRecord(int(t), str(k), str(m), int(b), int(r), bool(rep))
                for t, k, m, b, r, rep in self._conn.execute(
                    "SELECT t, kind, message, batches, readings, reported FROM drops ORDER BY id")]

    def _set_aside(self, what: str, row_id: int, reason: str) -> None:
        set_aside(self._conn, self._now_ms(), what, row_id, reason)

    def _record_drop(self, reason: str, victims: list[StoredCounts]) -> None:
        record_drop(self._conn, self._now_ms(), self.bounds, reason, victims,
                    lines=self._drop_lines)
