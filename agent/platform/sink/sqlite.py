"""The sink object the receiver writes through: open, store, read back."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agent.errors import ConfigError, WireFormatError
from agent.platform.sink.ingest import ClockStep, StoreOutcome, store_batch
from agent.platform.sink.rejected import (
    REJECTED_SCHEMA,
    RejectedMessage,
    rejected_rows,
    rejected_totals,
    set_aside,
)
from agent.platform.sink.schema import _migrate, sink_path
from agent.readings import Quality, Reading
from agent.wire import AGGREGATE_KEYS, Batch, BufferHealth, Status, decode_status


class SqliteSink:
    """Stores decoded batches and gateway status; dedups by ``(gw, store, seq)`` and tracks
    gaps per ``(gw, store)``."""

    def __init__(self, conn: sqlite3.Connection, path: Path, clock: Callable[[], float]) -> None:
        self._conn = conn
        self.path = path
        self._clock = clock

    @classmethod
    def open(cls, url_or_path: str | Path, *, clock: Callable[[], float] = time.time) -> Self:
        """Open (creating if needed) the sink database; ``clock`` stamps ``received``."""
        path = sink_path(url_or_path)
        try:
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE … COMMIT) below.
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL, not NORMAL: the broker gets its PUBACK once store() returns, so a commit
            # must survive a power cut, not only a crash of this process.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")  # several receivers may share a file
            _migrate(conn)
            conn.executescript(REJECTED_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"sink {path}: cannot open the SQLite database: {exc}") from exc
        return cls(conn, path, clock)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the database."""
        self._conn.close()

    def store(self, batch: Batch) -> StoreOutcome:
        """Store a batch in one transaction; a duplicate ``(gw, store, seq)`` stores nothing."""
        return store_batch(self._conn, batch, int(self._clock() * 1000))

    def store_status(self, gw: str, payload: bytes | str) -> Status:
        """Store a gateway's status JSON (the last one received wins); returns it parsed.

        No ordering by ``t``: the offline last will is prepared at connect time, so it is
        older than the online birth it follows, and it must still win.
        """
        status = decode_status(payload)
        if status.gw != gw:
            raise WireFormatError(f"status: topic names gateway {gw!r}, the payload {status.gw!r}")
        self._conn.execute(
            "INSERT INTO status (gw, state, boot, t, version) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (gw) DO UPDATE SET state = excluded.state, boot = excluded.boot,"
            " t = excluded.t, version = excluded.version",
            (status.gw, status.state, status.boot, status.t, status.version),
        )
        b = status.buffer
        if b is not None:
            # A status that does not say (the last will, an older agent) leaves the last
            # buffer state said: a gateway that died with its SD card read-only stays shown so.
            self._conn.execute(
                "UPDATE status SET buffer_state = ?, buffer_since = ?, buffer_reason = ?,"
                " buffer_held_readings = ?, buffer_dropped_readings = ? WHERE gw = ?",
                (b.state, b.since, b.reason, b.held_readings, b.dropped_readings, status.gw),
            )
        return status

    # ----------------------------------------------------------------------- read helpers

    def count_readings(self, gw: str | None = None) -> int:
        """How many readings are stored, for one gateway or all."""
        if gw is None:
            row = self._conn.execute("SELECT COUNT(*) FROM readings").fetchone()
        else:
            row = self._conn.execute("SELECT COUNT(*) FROM readings WHERE gw = ?", (gw,)).fetchone()
        return int(row[0])

    def readings_for(self, gw: str) -> list[Reading]:
        """A gateway's readings ordered by device, point and time."""
        rows = self._conn.execute(
            "SELECT dev, pt, unit, t, value, quality FROM readings WHERE gw = ?"
            " ORDER BY dev, pt, t, rowid",
            (gw,),
        )
        return [Reading(d, p, u, t, v, Quality(q)) for d, p, u, t, v, q in rows]

    def seqs(self, gw: str, store: str | None = None) -> list[int]:
        """The batch seqs stored for a gateway (of one store, or of all), ascending."""
        rows = self._conn.execute(
            "SELECT seq FROM batches WHERE gw = ? AND (? IS NULL OR store = ?) ORDER BY seq",
            (gw, store, store),
        )
        return [int(r[0]) for r in rows]

    def clock_synced(self, gw: str) -> list[tuple[int, bool | None]]:
        """``(seq, synced)`` per stored batch in arrival order: what its optional ``clock``
        key said (None: the key was absent)."""
        rows = self._conn.execute(
            "SELECT seq, clock_synced FROM batches WHERE gw = ? ORDER BY rowid", (gw,))
        return [(int(seq), None if c is None else bool(c)) for seq, c in rows]

    def clock_shifts(self, gw: str) -> dict[tuple[str, int], int]:
        """``(store, seq) -> ms`` the clock-step correction added to a batch's reading and
        event times, for the batches it moved."""
        rows = self._conn.execute(
            "SELECT store, seq, clock_shift_ms FROM batches WHERE gw = ? AND clock_shift_ms <> 0",
            (gw,))
        return {(str(a), int(b)): int(c) for a, b, c in rows}

    def clock_steps(self, gw: str) -> list[tuple[str, ClockStep]]:
        """A gateway's recorded clock steps as ``(store, step)``, by store, boot and seq."""
        rows = self._conn.execute(
            "SELECT store, boot, before_seq, step_ms, t, from_seq FROM clock_steps WHERE gw = ?"
            " ORDER BY store, boot, before_seq, t", (gw,))
        return [(str(s), ClockStep(int(b), int(n), int(ms), int(t), int(f)))
                for s, b, n, ms, t, f in rows]

    def stores(self, gw: str) -> list[str]:
        """The store ids a gateway's batches came from (``''``: batches without one), in the
        order their first batch arrived."""
        rows = self._conn.execute(
            "SELECT store FROM batches WHERE gw = ? GROUP BY store ORDER BY min(received),"
            " min(rowid)",
            (gw,),
        )
        return [str(r[0]) for r in rows]

    def gaps(self, gw: str, store: str | None = None) -> list[tuple[int, int]]:
        """A gateway's open seq gaps (of one store, or of all) as inclusive (first, last)
        ranges, ascending."""
        rows = self._conn.execute(
            'SELECT "first", "last" FROM seq_gaps WHERE gw = ? AND (? IS NULL OR store = ?)'
            ' ORDER BY "first"',
            (gw, store, store),
        )
        return [(int(a), int(b)) for a, b in rows]

    def jumps(self, gw: str) -> list[tuple[str, int]]:
        """A gateway's batches stored as seq jumps (not confirmed), as (store, seq)."""
        rows = self._conn.execute(
            "SELECT store, seq FROM batches WHERE gw = ? AND jump = 1 ORDER BY store, seq", (gw,)
        )
        return [(str(a), int(b)) for a, b in rows]

    def aggregates_for(self, gw: str) -> list[dict[str, Any]]:
        """A gateway's aggregates as wire maps (extras merged back), ordered by kpi and start."""
        rows = self._conn.execute(
            'SELECT kpi, src, "start", "end", value, valid, n, expected, unit, extras_json'
            ' FROM aggregates WHERE gw = ? ORDER BY kpi, "start", rowid',
            (gw,),
        )
        out: list[dict[str, Any]] = []
        for *known, extras_json in rows:
            item = dict(zip(AGGREGATE_KEYS, known, strict=True))
            item["valid"] = bool(item["valid"])
            item.update(json.loads(extras_json) if extras_json else {})
            out.append(item)
        return out

    def events_for(self, gw: str) -> list[dict[str, Any]]:
        """A gateway's events as wire maps, in arrival order."""
        rows = self._conn.execute(
            "SELECT t, kind, dev, msg FROM events WHERE gw = ? ORDER BY rowid", (gw,)
        )
        return [{"t": t, "kind": k, "dev": d, "msg": m} for t, k, d, m in rows]

    def status_for(self, gw: str) -> Status | None:
        """The last status stored for a gateway, with the last ``buffer`` a status said (None:
        none did)."""
        row = self._conn.execute(
            "SELECT state, gw, boot, t, version, buffer_state, buffer_since, buffer_reason,"
            " buffer_held_readings, buffer_dropped_readings FROM status WHERE gw = ?", (gw,)
        ).fetchone()
        if row is None:
            return None
        buffer = None if row[5] is None else BufferHealth(*row[5:])
        state, gateway, boot, t, version = row[:5]
        return Status(state, gateway, boot, t, version, buffer=buffer)

    # ----------------------------------------------------------------------- set aside

    def set_aside(
        self, gw: str | None, topic: str, kind: str, reason: str, payload: bytes
    ) -> None:
        """Keep a message that cannot be stored (cut to ``REJECTED_KEEP_BYTES``) and count it;
        only the most recent ``REJECTED_KEEP_ROWS`` are kept, the counts for good."""
        set_aside(self._conn, gw, topic, kind, reason, payload=payload,
                  received=int(self._clock() * 1000))

    def rejected(self, gw: str | None = None, limit: int = 100) -> list[RejectedMessage]:
        """The most recent messages set aside (of one gateway, or all), newest first."""
        return rejected_rows(self._conn, gw, limit)

    def rejected_totals(self) -> dict[tuple[str, str], int]:
        """How many messages were set aside, per (gateway, kind); gateway '' when the topic
        named none."""
        return rejected_totals(self._conn)
