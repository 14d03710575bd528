"""The devices each gateway's batches carried (``devices``), kept at ingest in the batch's own
transaction like ``gateways``, so that the fleet's meter inventory (docs/platform.md "Meter
inventory") never scans the readings. The same SQL for both sinks.

``devices`` holds one row per ``(gw, dev)`` that ever sent a reading: when the receiver first
and last stored a batch holding one of its readings (receiver clock), the time of its newest
reading and of its newest *good* reading (quality 0; the gateway's clock, moved by the clock
steps of its boot stored before the batch, as the readings are), and how many readings and good
readings were stored. A clock step that arrives after a batch moves that batch's readings but
not these times: they are at most that step off until the device's next batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.readings import Quality

if TYPE_CHECKING:
    from agent.platform.sink.schema import SqlCursor
    from agent.platform.sink.summary import StoredBatch
    from agent.wire import HealthSummary

_GOOD = int(Quality.GOOD)

# The right-hand sides read the row as it was before this statement, in both databases; a
# NULL (no good reading in this batch) never replaces a time.
UPSERT_DEVICE = (
    "INSERT INTO devices (gw, dev, first_seen, last_seen, last_t, last_good_t, readings,"
    " good_readings) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (gw, dev) DO UPDATE SET"
    " first_seen = CASE WHEN excluded.first_seen < devices.first_seen"
    " THEN excluded.first_seen ELSE devices.first_seen END,"
    " last_seen = CASE WHEN excluded.last_seen > devices.last_seen"
    " THEN excluded.last_seen ELSE devices.last_seen END,"
    " last_t = CASE WHEN devices.last_t IS NULL OR excluded.last_t > devices.last_t"
    " THEN excluded.last_t ELSE devices.last_t END,"
    " last_good_t = CASE WHEN devices.last_good_t IS NULL"
    " OR excluded.last_good_t > devices.last_good_t"
    " THEN COALESCE(excluded.last_good_t, devices.last_good_t) ELSE devices.last_good_t END,"
    " readings = devices.readings + excluded.readings,"
    " good_readings = devices.good_readings + excluded.good_readings"
)


def device_rows(stored: Iterable[StoredBatch]) -> list[tuple[Any, ...]]:
    """One row per ``(gw, dev)`` of the stored batches, summed over them, in key order
    (receivers sharing a database lock the rows in one order): gw, dev, first_seen,
    last_seen, last_t, last_good_t, readings, good_readings."""
    rows: dict[tuple[str, str], list[Any]] = {}
    for item in stored:
        batch = item.batch
        for s in batch.series:
            key = (batch.gw, s.dev)
            row = rows.get(key)
            if row is None:
                row = rows[key] = [batch.gw, s.dev, item.received, item.received, None, None,
                                   0, 0]
            row[2] = min(row[2], item.received)
            row[3] = max(row[3], item.received)
            # dt >= 0 (wire format §4): the last reading is the newest; sums and counts in C,
            # not a Python step per reading (this runs for every reading the receiver stores)
            last = s.t0 + item.shift_ms + sum(s.dt)
            row[4] = last if row[4] is None else max(row[4], last)
            row[6] += len(s.q)
            good = s.q.count(_GOOD)
            if good:
                newest = len(s.q) - 1 - s.q[::-1].index(_GOOD)
                t = last - sum(s.dt[newest + 1:])
                row[5] = t if row[5] is None else max(row[5], t)
                row[7] += good
    return [tuple(rows[key]) for key in sorted(rows)]


def record_devices(cur: SqlCursor, stored: Iterable[StoredBatch]) -> None:
    """Count the stored batches' readings into their devices' rows."""
    rows = device_rows(stored)
    if rows:
        cur.executemany(UPSERT_DEVICE, rows)


# ------------------------------------------------------------------------- migration

_BACKFILL = (
    "INSERT INTO devices (gw, dev, first_seen, last_seen, last_t, last_good_t, readings,"
    " good_readings)"
    " SELECT r.gw, r.dev, MIN(b.received), MAX(b.received), MAX(r.t),"
    f" MAX(CASE WHEN r.quality = {_GOOD} THEN r.t END), COUNT(*),"
    f" SUM(CASE WHEN r.quality = {_GOOD} THEN 1 ELSE 0 END)"
    " FROM readings r JOIN batches b ON b.gw = r.gw AND b.store = r.store AND b.seq = r.seq"
    " GROUP BY r.gw, r.dev"
)


def backfill_devices(cur: SqlCursor) -> None:
    """Fill ``devices`` from the readings a database stored before it had the table (once, in
    the migration that creates it: one pass over ``readings``). Readings retention already
    deleted are not counted."""
    cur.execute(_BACKFILL)


# ------------------------------------------------------------------------- reading it


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """What the database holds about one device of one gateway."""

    gw: str
    dev: str
    first_seen: int  # receiver clock, epoch ms
    last_seen: int
    last_t: int | None  # its newest reading's time (gateway clock, epoch ms)
    last_good_t: int | None  # its newest good reading's time; None: never a good one
    readings: int
    good_readings: int


def _opt(value: Any) -> int | None:
    return None if value is None else int(value)


def read_health(select: Any) -> dict[str, HealthSummary]:
    """The newest health summary stored of each gateway (the receiver stores what it
    subscribes to on ``{prefix}/+/health``, wire format §8.2), by gateway. A stored summary
    that no longer decodes (a future version's) is left out."""
    from agent.wire import decode_health

    out: dict[str, HealthSummary] = {}
    for gw, summary in select("SELECT gw, summary FROM health ORDER BY gw"):
        try:
            out[str(gw)] = decode_health(str(summary))
        except Exception:  # noqa: S112 - the inventory is whole without it
            continue
    return out


def read_devices(select: Any) -> list[DeviceRow]:
    """Every device that sent a reading, by gateway and name. ``select(sql, params)`` runs a
    read-only query; cost: the ``devices`` table."""
    return [DeviceRow(str(gw), str(dev), int(first), int(last), _opt(t), _opt(good), int(n),
                      int(n_good))
            for gw, dev, first, last, t, good, n, n_good in select(
                "SELECT gw, dev, first_seen, last_seen, last_t, last_good_t, readings,"
                " good_readings FROM devices ORDER BY gw, dev")]
