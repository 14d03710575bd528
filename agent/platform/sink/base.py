"""What both sinks do the same way, written once: statuses, set-aside messages, read helpers.

A sink subclass gives one write transaction (:meth:`SinkBase._write`), read-only queries
(:meth:`SinkBase._select`), and the SQL that differs between the two databases (how rows are
ordered by arrival, how a value is read back).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from agent.errors import WireFormatError
from agent.platform.sink.ingest import ClockStep, StoreOutcome
from agent.platform.sink.rejected import RejectedMessage, record_set_aside
from agent.platform.sink.schema import SqlCursor
from agent.readings import Quality, Reading
from agent.wire import (
    AGGREGATE_KEYS,
    Batch,
    BufferHealth,
    HealthSummary,
    Status,
    decode_health,
    decode_status,
)


class SinkUnavailable(Exception):
    """The database cannot take anything now (down, unreachable, full): retry later; the
    message is not to blame. The text names the sink, never a secret."""


def stored_value(value: Any, exact: Any) -> Any:
    """A stored ``value`` as sent: ``exact`` is the int a gateway sent (the PostgreSQL sink's
    ``value_int``; NULL for a float, a nil, and always in SQLite, which keeps the type)."""
    return value if exact is None else int(exact)


class SinkBase:
    """Stores decoded batches and gateway status; dedups by ``(gw, store, seq)`` and tracks
    gaps per ``(gw, store)``. Subclasses: ``SqliteSink``, ``PgSink``."""

    # ``ORDER BY`` term that gives rows in the order they were stored
    _ARRIVAL = "rowid"
    _READING_ARRIVAL = "rowid"
    # the value columns as read back by :func:`stored_value`
    _VALUE = "value, NULL"

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock

    # ----------------------------------------------------------------------- the database

    def _write(self) -> contextlib.AbstractContextManager[SqlCursor]:
        """One write transaction, committed when the block ends, rolled back on an error."""
        raise NotImplementedError

    def _select(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        """The rows of a read-only query (``?`` placeholders)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the database."""
        raise NotImplementedError

    def store_many(self, batches: list[Batch]) -> list[StoreOutcome]:
        """Store batches (in as few transactions as the sink can), outcomes in their order;
        when it returns, all of them are committed."""
        raise NotImplementedError

    def maintain(self, *, keep_readings_ms: int | None = None,
                 keep_aggregates_ms: int | None = None) -> dict[str, int]:
        """The receiver's periodic housekeeping: retention (and, where the sink has them,
        partitions ahead); returns what went, by table."""
        return self.apply_retention(readings_ms=keep_readings_ms,
                                    aggregates_ms=keep_aggregates_ms)

    def apply_retention(self, *, readings_ms: int | None = None,
                        aggregates_ms: int | None = None) -> dict[str, int]:
        """Delete readings older than now minus ``readings_ms`` and aggregates that ended
        before now minus ``aggregates_ms``."""
        raise NotImplementedError

    @property
    def description(self) -> str:
        """What the sink is, for log lines (no secrets)."""
        raise NotImplementedError

    def store(self, batch: Batch) -> StoreOutcome:
        """Store a batch in one transaction; a duplicate ``(gw, store, seq)`` stores nothing."""
        return self.store_many([batch])[0]

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def select(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query with ``?`` placeholders (tools, tests)."""
        return self._select(sql, params)

    # ----------------------------------------------------------------------- status

    def store_status(self, gw: str, payload: bytes | str) -> Status:
        """Store a gateway's status JSON (the last one received wins); returns it parsed.

        No ordering by ``t``: the offline last will is prepared at connect time, so it is
        older than the online birth it follows, and it must still win.
        """
        status = decode_status(payload)
        if status.gw != gw:
            raise WireFormatError(f"status: topic names gateway {gw!r}, the payload {status.gw!r}")
        with self._write() as cur:
            cur.execute(
                "INSERT INTO status (gw, state, boot, t, version) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (gw) DO UPDATE SET state = excluded.state, boot = excluded.boot,"
                " t = excluded.t, version = excluded.version",
                (status.gw, status.state, status.boot, status.t, status.version),
            )
            b = status.buffer
            if b is not None:
                # A status that does not say (the last will, an older agent) leaves the last
                # buffer state said: a gateway that died with its SD card read-only stays so.
                cur.execute(
                    "UPDATE status SET buffer_state = ?, buffer_since = ?, buffer_reason = ?,"
                    " buffer_held_readings = ?, buffer_dropped_readings = ? WHERE gw = ?",
                    (b.state, b.since, b.reason, b.held_readings, b.dropped_readings, status.gw),
                )
        return status

    def store_health(self, gw: str, payload: bytes | str) -> HealthSummary:
        """Store a gateway's retained health summary (wire format §8.2; decoded within its
        bounds, kept as sent) unless the one stored is newer; returns it parsed."""
        health = decode_health(payload)
        if health.gw != gw:
            raise WireFormatError(f"health: topic names gateway {gw!r}, the payload {health.gw!r}")
        text = payload.decode() if isinstance(payload, bytes) else payload
        with self._write() as cur:
            cur.execute(
                "INSERT INTO health (gw, t, received, summary) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (gw) DO UPDATE SET t = excluded.t, received = excluded.received,"
                " summary = excluded.summary WHERE excluded.t >= health.t",
                (gw, health.t, self._now_ms(), text),
            )
        return health

    # ----------------------------------------------------------------------- set aside

    def set_aside(
        self, gw: str | None, topic: str, kind: str, reason: str, payload: bytes
    ) -> None:
        """Keep a message that cannot be stored (cut to ``REJECTED_KEEP_BYTES``) and count it;
        only the most recent ``REJECTED_KEEP_ROWS`` are kept, the counts for good."""
        with self._write() as cur:
            record_set_aside(cur, gw, topic, kind, reason, payload=payload,
                             received=self._now_ms())

    def rejected(self, gw: str | None = None, limit: int = 100) -> list[RejectedMessage]:
        """The most recent messages set aside (of one gateway, or all), newest first."""
        where, args = ("WHERE gw = ?", (gw,)) if gw is not None else ("", ())
        rows = self._select(
            "SELECT gw, topic, received, kind, reason, size, payload FROM rejected"
            f" {where} ORDER BY id DESC LIMIT ?",
            (*args, limit),
        )
        return [RejectedMessage(g, t, r, k, why, n, bytes(p)) for g, t, r, k, why, n, p in rows]

    def rejected_totals(self) -> dict[tuple[str, str], int]:
        """How many messages were set aside, per (gateway, kind); gateway '' when the topic
        named none."""
        rows = self._select("SELECT gw, kind, n FROM rejected_totals")
        return {(str(g), str(k)): int(n) for g, k, n in rows}

    # ----------------------------------------------------------------------- read helpers

    def count_readings(self, gw: str | None = None) -> int:
        """How many readings are stored, for one gateway or all."""
        if gw is None:
            rows = self._select("SELECT COUNT(*) FROM readings")
        else:
            rows = self._select("SELECT COUNT(*) FROM readings WHERE gw = ?", (gw,))
        return int(rows[0][0])

    def readings_for(self, gw: str) -> list[Reading]:
        """A gateway's readings ordered by device, point and time."""
        rows = self._select(
            f"SELECT dev, pt, unit, t, {self._VALUE}, quality FROM readings WHERE gw = ?"
            f" ORDER BY dev, pt, t, {self._READING_ARRIVAL}",
            (gw,),
        )
        return [Reading(d, p, u, int(t), stored_value(v, x), Quality(q))
                for d, p, u, t, v, x, q in rows]

    def seqs(self, gw: str, store: str | None = None) -> list[int]:
        """The batch seqs stored for a gateway (of one store, or of all), ascending."""
        rows = self._select(
            "SELECT seq FROM batches WHERE gw = ? AND (CAST(? AS TEXT) IS NULL OR store = ?)"
            " ORDER BY seq",
            (gw, store, store),
        )
        return [int(r[0]) for r in rows]

    def clock_synced(self, gw: str) -> list[tuple[int, bool | None]]:
        """``(seq, synced)`` per stored batch in arrival order: what its optional ``clock``
        key said (None: the key was absent)."""
        rows = self._select(
            f"SELECT seq, clock_synced FROM batches WHERE gw = ? ORDER BY {self._ARRIVAL}",
            (gw,))
        return [(int(seq), None if c is None else bool(c)) for seq, c in rows]

    def clock_shifts(self, gw: str) -> dict[tuple[str, int], int]:
        """``(store, seq) -> ms`` the clock-step correction added to a batch's reading and
        event times, for the batches it moved."""
        rows = self._select(
            "SELECT store, seq, clock_shift_ms FROM batches WHERE gw = ? AND clock_shift_ms <> 0",
            (gw,))
        return {(str(a), int(b)): int(c) for a, b, c in rows}

    def clock_steps(self, gw: str) -> list[tuple[str, ClockStep]]:
        """A gateway's recorded clock steps as ``(store, step)``, by store, boot and seq."""
        rows = self._select(
            "SELECT store, boot, before_seq, step_ms, t, from_seq FROM clock_steps WHERE gw = ?"
            " ORDER BY store, boot, before_seq, t", (gw,))
        return [(str(s), ClockStep(int(b), int(n), int(ms), int(t), int(f)))
                for s, b, n, ms, t, f in rows]

    def stores(self, gw: str) -> list[str]:
        """The store ids a gateway's batches came from (``''``: batches without one), in the
        order their first batch arrived."""
        rows = self._select(
            "SELECT store FROM batches WHERE gw = ? GROUP BY store ORDER BY min(received),"
            f" min({self._ARRIVAL})",
            (gw,),
        )
        return [str(r[0]) for r in rows]

    def gaps(self, gw: str, store: str | None = None) -> list[tuple[int, int]]:
        """A gateway's open seq gaps (of one store, or of all) as inclusive (first, last)
        ranges, ascending."""
        rows = self._select(
            'SELECT "first", "last" FROM seq_gaps WHERE gw = ?'
            ' AND (CAST(? AS TEXT) IS NULL OR store = ?) ORDER BY "first"',
            (gw, store, store),
        )
        return [(int(a), int(b)) for a, b in rows]

    def jumps(self, gw: str) -> list[tuple[str, int]]:
        """A gateway's batches stored as seq jumps (not confirmed), as (store, seq)."""
        rows = self._select(
            "SELECT store, seq FROM batches WHERE gw = ? AND jump = 1 ORDER BY store, seq", (gw,)
        )
        return [(str(a), int(b)) for a, b in rows]

    def aggregates_for(self, gw: str) -> list[dict[str, Any]]:
        """A gateway's aggregates as wire maps (extras merged back), ordered by kpi and start."""
        rows = self._select(
            f'SELECT kpi, src, "start", "end", {self._VALUE}, valid, n, expected, unit,'
            f' extras_json FROM aggregates WHERE gw = ? ORDER BY kpi, "start", {self._ARRIVAL}',
            (gw,),
        )
        out: list[dict[str, Any]] = []
        for kpi, src, start, end, value, exact, *rest, extras_json in rows:
            known = (kpi, src, int(start), int(end), stored_value(value, exact), *rest)
            item = dict(zip(AGGREGATE_KEYS, known, strict=True))
            item["valid"] = bool(item["valid"])
            item.update(json.loads(extras_json) if extras_json else {})
            out.append(item)
        return out

    def events_for(self, gw: str) -> list[dict[str, Any]]:
        """A gateway's events as wire maps, in arrival order."""
        rows = self._select(
            f"SELECT t, kind, dev, msg FROM events WHERE gw = ? ORDER BY {self._ARRIVAL}", (gw,)
        )
        return [{"t": int(t), "kind": k, "dev": d, "msg": m} for t, k, d, m in rows]

    def status_for(self, gw: str) -> Status | None:
        """The last status stored for a gateway, with the last ``buffer`` a status said (None:
        none did)."""
        rows = self._select(
            "SELECT state, gw, boot, t, version, buffer_state, buffer_since, buffer_reason,"
            " buffer_held_readings, buffer_dropped_readings FROM status WHERE gw = ?", (gw,)
        )
        if not rows:
            return None
        row = rows[0]
        buffer = None if row[5] is None else BufferHealth(*row[5:])
        state, gateway, boot, t, version = row[:5]
        return Status(state, gateway, int(boot), int(t), version, buffer=buffer)

