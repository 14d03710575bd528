"""The per-gateway summary the fleet view reads (``gateways``), kept at ingest in the batch's
own transaction, and the per-batch figures (``batches.lag_ms``) its last-hour statistics are
computed from: the fleet view never reads ``readings``. The same SQL for both sinks.

``gateways`` holds one row per gateway: when its first and latest batches were stored
(receiver clock), the seq of its newest batch (``store``, ``last_seq``, ``last_created``: the
highest seq in line of its current store; a batch of another store takes over when its
``created`` is later, i.e. the gateway's store was replaced), and counters of the batches,
readings and KPI windows stored and of what its ``buffer_drop`` events reported dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.platform.sink.devices import record_devices
from agent.wire import Batch

if TYPE_CHECKING:
    from agent.platform.sink.schema import SqlCursor

# the words of a buffer_drop event's message (docs/wire-format.md §6) the summary counts; a
# count of more than 12 digits is no gateway's and is not counted (a forged one must not
# overflow the 64-bit counters and make the gateway's later batches fail to store)
_DROP_WORDS = re.compile(r"(?:^|\s)(batches|readings)=(\d{1,12})(?=\s|$)")

# A batch stored as a seq jump (not confirmed) passes NULLs: it moves neither the seq nor the
# store. The right-hand sides read the row as it was before this statement, in both databases.
_NEWER = ("excluded.last_seq IS NOT NULL AND (gateways.last_seq IS NULL"
          " OR (excluded.store = gateways.store AND excluded.last_seq > gateways.last_seq)"
          " OR (excluded.store <> gateways.store"
          " AND excluded.last_created > gateways.last_created))")
UPSERT_GATEWAY = (
    "INSERT INTO gateways (gw, first_seen, last_seen, store, last_seq, last_created, batches,"
    " readings, kpi_windows, dropped_batches, dropped_readings)"
    " VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)"
    " ON CONFLICT (gw) DO UPDATE SET"
    " first_seen = CASE WHEN excluded.first_seen < gateways.first_seen"
    " THEN excluded.first_seen ELSE gateways.first_seen END,"
    " last_seen = CASE WHEN excluded.last_seen > gateways.last_seen"
    " THEN excluded.last_seen ELSE gateways.last_seen END,"
    f" store = CASE WHEN {_NEWER} THEN excluded.store ELSE gateways.store END,"
    f" last_seq = CASE WHEN {_NEWER} THEN excluded.last_seq ELSE gateways.last_seq END,"
    f" last_created = CASE WHEN {_NEWER} THEN excluded.last_created"
    " ELSE gateways.last_created END,"
    " batches = gateways.batches + 1,"
    " readings = gateways.readings + excluded.readings,"
    " kpi_windows = gateways.kpi_windows + excluded.kpi_windows,"
    " dropped_batches = gateways.dropped_batches + excluded.dropped_batches,"
    " dropped_readings = gateways.dropped_readings + excluded.dropped_readings"
)


def drop_counts(msg: str) -> tuple[int, int]:
    """``(batches, readings)`` a ``buffer_drop`` message reports dropped (a word missing or
    not a count: 0)."""
    words = dict(_DROP_WORDS.findall(msg))
    return int(words.get("batches", 0)), int(words.get("readings", 0))


def batch_lag_ms(batch: Batch, received: int) -> int | None:
    """``received`` minus the median time of the batch's readings as the gateway sent them
    (before any clock-step correction; the fleet view subtracts ``clock_shift_ms``); None for
    a batch without readings."""
    times = []
    for s in batch.series:
        t = s.t0
        for delta in s.dt:
            t += delta
            times.append(t)
    if not times:
        return None
    times.sort()
    return received - times[(len(times) - 1) // 2]


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A batch this transaction stored (not a duplicate), for :func:`record_gateways`."""

    batch: Batch
    jump: bool
    received: int
    # what the clock steps of its boot stored before it moved its readings by
    shift_ms: int = 0


def _gateway_row(item: StoredBatch) -> tuple[Any, ...]:
    batch = item.batch
    dropped_batches = dropped_readings = 0
    for event in batch.events:
        if event["kind"] == "buffer_drop":
            b, r = drop_counts(event["msg"])
            dropped_batches += b
            dropped_readings += r
    newest: tuple[Any, ...] = ((None, None, None) if item.jump
                               else (batch.store or "", batch.seq, batch.created))
    return (batch.gw, item.received, item.received, *newest, batch.n_readings,
            len(batch.aggregates), dropped_batches, dropped_readings)


def record_gateways(cur: SqlCursor, stored: Iterable[StoredBatch]) -> None:
    """Count stored batches into their gateways' rows, at the end of the transaction that
    stored them, in gateway order (receivers sharing a database lock the rows in one order)."""
    stored = list(stored)
    rows = sorted((_gateway_row(item) for item in stored), key=lambda row: str(row[0]))
    if rows:
        cur.executemany(UPSERT_GATEWAY, rows)
    record_devices(cur, stored)  # the meter inventory's rows (agent.platform.sink.devices)


# ------------------------------------------------------------------------- migration

_BACKFILL_COUNTS = (
    "INSERT INTO gateways (gw, first_seen, last_seen, batches, readings, kpi_windows,"
    " dropped_batches, dropped_readings)"
    " SELECT gw, MIN(received), MAX(received), COUNT(*), SUM(n_readings), SUM(n_aggregates),"
    " 0, 0 FROM batches GROUP BY gw"
)
_BACKFILL_NEWEST = (
    "UPDATE gateways SET (store, last_seq, last_created) = (SELECT b.store, b.seq, b.created"
    " FROM batches b WHERE b.gw = gateways.gw AND b.jump = 0"
    " ORDER BY b.created DESC, b.seq DESC LIMIT 1)"
)


def backfill_gateways(cur: SqlCursor) -> None:
    """Fill ``gateways`` from what a database stored before it had the table (once, in the
    migration that creates it): one pass over ``batches`` and the ``buffer_drop`` events.
    Batches stored before have no ``lag_ms``: the last hour's lag fills in as batches come."""
    cur.execute(_BACKFILL_COUNTS)
    cur.execute(_BACKFILL_NEWEST)
    drops: dict[str, tuple[int, int]] = {}
    for gw, msg in list(cur.execute("SELECT gw, msg FROM events WHERE kind = 'buffer_drop'")):
        b, r = drop_counts(str(msg))
        have = drops.get(str(gw), (0, 0))
        drops[str(gw)] = (have[0] + b, have[1] + r)
    cur.executemany(
        "UPDATE gateways SET dropped_batches = ?, dropped_readings = ? WHERE gw = ?",
        [(b, r, gw) for gw, (b, r) in sorted(drops.items())])


# ------------------------------------------------------------------------- reading it


@dataclass(frozen=True, slots=True)
class GatewayRow:
    """What the database holds about one gateway, as the fleet view reads it."""

    gw: str
    state: str | None  # the status topic's last word: online / offline; None: never said
    status_t: int | None  # that status's time (the gateway's clock)
    first_seen: int | None  # receiver clock, epoch ms; None: no batch stored
    last_seen: int | None
    store: str | None
    last_seq: int | None
    batches: int
    readings: int
    kpi_windows: int
    dropped_batches: int
    dropped_readings: int
    gaps: int  # open seq gaps
    missing: int  # seqs in them
    # the batches stored since the window's start: (lag_ms or None, n_readings, skew_ms)
    recent: tuple[tuple[int | None, int, int], ...]


def _opt(value: Any) -> int | None:
    return None if value is None else int(value)


def read_fleet(select: Any, since_ms: int) -> list[GatewayRow]:
    """Every gateway that sent a batch or a status, by id; ``recent`` holds its batches
    stored at or after ``since_ms``. ``select(sql, params)`` runs a read-only query.
    Cost: the ``gateways``, ``status`` and ``seq_gaps`` tables, and the index range of the
    batches received since ``since_ms``."""
    summary = {str(r[0]): r[1:] for r in select(
        "SELECT gw, first_seen, last_seen, store, last_seq, batches, readings, kpi_windows,"
        " dropped_batches, dropped_readings FROM gateways")}
    status = {str(r[0]): (str(r[1]), int(r[2])) for r in select("SELECT gw, state, t FROM status")}
    gaps = {str(r[0]): (int(r[1]), int(r[2])) for r in select(
        'SELECT gw, COUNT(*), SUM("last" - "first" + 1) FROM seq_gaps GROUP BY gw')}
    recent: dict[str, list[tuple[int | None, int, int]]] = {}
    for gw, lag, n, skew in select(
            "SELECT gw, lag_ms - clock_shift_ms, n_readings, created - received FROM batches"
            " WHERE received >= ?", (since_ms,)):
        recent.setdefault(str(gw), []).append(
            (None if lag is None else int(lag), int(n), int(skew)))
    rows = []
    for gw in sorted(summary.keys() | status.keys()):
        first, last, store, seq, *counts = summary.get(gw, (None, None, None, None, 0, 0, 0, 0, 0))
        batches, readings, kpi_windows, dropped_batches, dropped_readings = map(int, counts)
        state, status_t = status.get(gw, (None, None))
        n_gaps, missing = gaps.get(gw, (0, 0))
        rows.append(GatewayRow(
            gw, state, status_t, _opt(first), _opt(last), None if store is None else str(store),
            _opt(seq), batches, readings, kpi_windows, dropped_batches, dropped_readings,
            n_gaps, missing, tuple(recent.get(gw, ()))))
    return rows
