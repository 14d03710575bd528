"""The open batch's pending rows: one row per flush, so a SIGKILL or power cut loses at most a
flush interval. Rows are zstd-compressed msgpack, column by column (about 2.8 bytes per
reading); after a restart they are read back as a stream, in bounded pieces."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, NamedTuple, cast

import msgpack

from agent.gateway.store.base import DECODE_ERRORS, StoreBase
from agent.gateway.store.drops import set_aside
from agent.readings import Event, Quality, Reading
from agent.wire import pack_values

# What one start may load into memory from the store. A pending row streams out in pieces of
# PENDING_PIECE events or KPI windows, whatever its size; its readings (one flush's) are one
# object, and no single object may take more than MAX_PENDING_OBJECT_BYTES.
PENDING_PIECE = 5_000
MAX_PENDING_OBJECT_BYTES = 64 * 1024 * 1024  # msgpack bytes


@dataclass(frozen=True, slots=True)
class PendingPiece:
    """Part of a pending row (after a restart): its readings, events and closed KPI windows."""

    row_id: int
    readings: list[Reading]
    events: list[Event]
    aggregates: list[dict[str, Any]]


class PendingContent(NamedTuple):
    """Everything committed but not yet sealed, and the newest pending row id."""

    readings: list[Reading]
    events: list[Event]
    last_id: int
    aggregates: list[dict[str, Any]]


def pack_pending(readings: Sequence[Reading], events: Sequence[Event],
                 aggregates: Sequence[dict[str, Any]]) -> bytes:
    """One pending row's body: ``{"c": [devices, points, units, times, values, qualities],
    "e": events, "a": aggregates}``; columns compress far better than rows."""
    p = msgpack.Packer(use_bin_type=True, autoreset=True)
    return b"".join([
        p.pack_map_header(3), p.pack("c"), p.pack_array_header(6),
        p.pack([r.device for r in readings]), p.pack([r.point for r in readings]),
        p.pack([r.unit for r in readings]), p.pack([r.t for r in readings]),
        pack_values([r.value for r in readings], p),
        p.pack([int(r.quality) for r in readings]),
        p.pack("e"), p.pack([[e.t, e.kind, e.device, e.message] for e in events]),
        p.pack("a"), p.pack(list(aggregates)),
    ])


def _piece(row_id: int, key: str, items: list[Any]) -> PendingPiece:
    if key == "e":
        return PendingPiece(row_id, [], [Event(t, kind, dev, msg) for t, kind, dev, msg in items],
                            [])
    if key == "a":
        return PendingPiece(row_id, [], [], items)
    # "r": rows written by an earlier version, one list per reading
    return PendingPiece(row_id, [Reading(dev, pt, unit, t, v, Quality(q))
                                 for dev, pt, unit, t, v, q in items], [], [])


class PendingRows(StoreBase):
    """The store's side of the open batch."""

    def append_pending(self, readings: Sequence[Reading], events: Sequence[Event],
                       aggregates: Sequence[dict[str, Any]] = (), *,
                       journal: Any = None, snapshot: dict[str, Any] | None = None,
                       snapshot_t: int = 0) -> int:
        """Commit readings, events and closed KPI windows of the open batch in one transaction
        (and the KPI engine's journal entry for them, if any, or a checkpoint that replaces
        the journal: ``snapshot``); returns the pending row id."""
        blob = self._zc.compress(pack_pending(readings, events, aggregates))
        state = None if snapshot is None else self._zc.compress(self._pack.pack(snapshot))
        with self._txn():
            cur = self._conn.execute("INSERT INTO pending (body) VALUES (?)", (blob,))
            if journal is not None:
                self._conn.execute("INSERT INTO kpi_journal (body) VALUES (?)",
                                   (self._zc.compress(self._pack.pack(journal)),))
            if state is not None:
                self._conn.execute("INSERT OR REPLACE INTO kpi_state (id, t, body)"
                                   " VALUES (1, ?, ?)", (snapshot_t, state))
                self._conn.execute("DELETE FROM kpi_journal")
        return int(cur.lastrowid or 0)

    def pending_upto(self) -> int:
        """The newest pending row id (0 when none)."""
        return int(self._conn.execute("SELECT coalesce(max(id), 0) FROM pending").fetchone()[0])

    def iter_pending(self, upto: int, piece: int = PENDING_PIECE) -> Iterator[PendingPiece]:
        """The pending rows up to ``upto``, in order, in pieces of at most ``piece`` events and
        ``piece`` KPI windows (a row's readings, one flush's, come whole), read from the row
        as a stream: memory stays bounded whatever the rows hold. A row that cannot be read
        (or holds an object over ``MAX_PENDING_OBJECT_BYTES``) is set aside and reported;
        what was read of it before is kept. Call it in a transaction (``sealing``)."""
        ids = [int(i) for (i,) in self._conn.execute(
            "SELECT id FROM pending WHERE id <= ? ORDER BY id", (upto,))]
        for row_id in ids:
            try:
                yield from self._stream_pending(row_id, piece)
            except DECODE_ERRORS as exc:
                set_aside(self._conn, self._now_ms(), "pending", row_id,
                          f"pending row {row_id} unreadable: {str(exc)[:200]}")

    def _stream_pending(self, row_id: int, piece: int) -> Iterator[PendingPiece]:
        with self._conn.blobopen("pending", "body", row_id, readonly=True) as blob:
            reader = self._zd.stream_reader(cast(IO[bytes], blob))
            unpacker = msgpack.Unpacker(reader, raw=False, read_size=64 * 1024,
                                        max_buffer_size=MAX_PENDING_OBJECT_BYTES)
            for _ in range(unpacker.read_map_header()):
                key = unpacker.unpack()
                if key == "c":
                    columns = unpacker.unpack()
                    yield PendingPiece(row_id, [Reading(dev, pt, unit, t, v, Quality(q))
                                                for dev, pt, unit, t, v, q
                                                in zip(*columns, strict=True)], [], [])
                    continue
                if key not in ("r", "e", "a"):
                    unpacker.skip()
                    continue
                chunk: list[Any] = []
                for _ in range(unpacker.read_array_header()):
                    chunk.append(unpacker.unpack())
                    if len(chunk) >= piece:
                        yield _piece(row_id, key, chunk)
                        chunk = []
                if chunk:
                    yield _piece(row_id, key, chunk)

    def load_pending(self) -> PendingContent:
        """What was committed but not yet sealed (after a restart)."""
        readings: list[Reading] = []
        events: list[Event] = []
        aggregates: list[dict[str, Any]] = []
        last_id = 0
        for row_id, blob in self._conn.execute("SELECT id, body FROM pending ORDER BY id"):
            body: dict[str, Any] = msgpack.unpackb(self._zd.decompress(blob), raw=False)
            if "c" in body:
                readings.extend(Reading(dev, pt, unit, t, v, Quality(q))
                                for dev, pt, unit, t, v, q in zip(*body["c"], strict=True))
            else:  # rows written by an earlier version, one list per reading
                readings.extend(Reading(dev, pt, unit, t, v, Quality(q))
                                for dev, pt, unit, t, v, q in body["r"])
            events.extend(Event(t, kind, dev, msg) for t, kind, dev, msg in body["e"])
            aggregates.extend(body.get("a", []))
            last_id = row_id
        return PendingContent(readings, events, last_id, aggregates)
