"""The store-and-forward buffer: one SQLite file (WAL) in ``data_dir``.

Tables:
- ``meta``: the persisted ``boot`` counter and the next batch ``seq``.
- ``pending``: readings and events of the batch that is still open, one row per flush
  (every ``flush_interval``), so a SIGKILL or power cut loses at most that interval.
  Rows are zstd-compressed msgpack: one small write per interval spares SD cards.
- ``batches``: sealed wire-format payloads, deleted only after the broker's PUBACK.

Sealing a batch is one transaction: allocate ``seq``, insert the payload, delete the pending
rows it was built from. So every reading is either pending or in exactly one batch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import structlog
import zstandard

from agent.errors import BufferFull
from agent.readings import Event, Quality, Reading

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    created INTEGER NOT NULL,
    n_readings INTEGER NOT NULL,
    payload BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class OutgoingBatch:
    """A stored batch on its way to the broker."""

    seq: int
    payload: bytes
    n_readings: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What ``buffer stats`` shows."""

    path: Path
    batches: int
    readings: int
    payload_bytes: int
    oldest_created: int | None
    newest_created: int | None
    pending_rows: int
    file_bytes: int
    boot: int
    next_seq: int


class BatchStore:
    """Durable FIFO of batches plus the open batch's pending readings."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._pack = msgpack.Packer(use_bin_type=True)
        self._zc = zstandard.ZstdCompressor(level=1)
        self._zd = zstandard.ZstdDecompressor()

    @classmethod
    def open(cls, path: Path, *, sync: str = "normal") -> BatchStore:
        """Open (create) the store; ``sync="full"`` fsyncs each commit, ``"normal"`` checkpoints."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        conn.executescript(SCHEMA)
        store = cls(conn, path)
        with store._txn():
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('boot', 0), ('next_seq', 1)")
        return store

    def close(self) -> None:
        self._conn.close()

    def _txn(self) -> _Txn:
        # isolation_level=None: we open transactions ourselves, IMMEDIATE so a write never
        # fails half-way on a lock.
        self._conn.execute("BEGIN IMMEDIATE")
        return _Txn(self._conn)

    def _meta(self, key: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    def start_boot(self) -> int:
        """Count this start of the agent and return its ``boot`` number."""
        with self._txn():
            self._conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'boot'")
        return self._meta("boot")

    # -- the open batch ------------------------------------------------------------------------

    def append_pending(self, readings: Sequence[Reading], events: Sequence[Event]) -> int:
        """Commit readings and events of the open batch in one transaction; returns the row id."""
        body = {
            "r": [[r.device, r.point, r.unit, r.t, r.value, int(r.quality)] for r in readings],
            "e": [[e.t, e.kind, e.device, e.message] for e in events],
        }
        blob = self._zc.compress(self._pack.pack(body))
        try:
            with self._txn():
                cur = self._conn.execute("INSERT INTO pending (body) VALUES (?)", (blob,))
        except sqlite3.OperationalError as exc:
            raise BufferFull(f"buffer {self.path}: cannot write: {exc}") from exc
        return int(cur.lastrowid or 0)

    def load_pending(self) -> tuple[list[Reading], list[Event], int]:
        """Readings and events committed but not yet sealed (after a restart), and the last id."""
        readings: list[Reading] = []
        events: list[Event] = []
        last_id = 0
        for row_id, blob in self._conn.execute("SELECT id, body FROM pending ORDER BY id"):
            body: dict[str, Any] = msgpack.unpackb(self._zd.decompress(blob), raw=False)
            readings.extend(
                Reading(dev, pt, unit, t, v, Quality(q)) for dev, pt, unit, t, v, q in body["r"]
            )
            events.extend(Event(t, kind, dev, msg) for t, kind, dev, msg in body["e"])
            last_id = row_id
        return readings, events, last_id

    def seal(self, build: Callable[[int], bytes], *, created: int, n_readings: int,
             pending_upto: int) -> int:
        """Turn the open batch into a stored batch: one transaction; returns its ``seq``."""
        try:
            with self._txn():
                seq = self._meta("next_seq")
                payload = build(seq)
                self._conn.execute(
                    "INSERT INTO batches (seq, created, n_readings, payload) VALUES (?, ?, ?, ?)",
                    (seq, created, n_readings, payload),
                )
                self._conn.execute("DELETE FROM pending WHERE id <= ?", (pending_upto,))
                self._conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
        except sqlite3.OperationalError as exc:
            raise BufferFull(f"buffer {self.path}: cannot seal a batch: {exc}") from exc
        return seq

    # -- the uplink's side ---------------------------------------------------------------------

    def next_unsent(self, limit: int, exclude: set[int]) -> list[OutgoingBatch]:
        """Oldest stored batches not in flight."""
        if limit <= 0:
            return []
        rows = self._conn.execute(
            "SELECT seq, payload, n_readings FROM batches ORDER BY seq LIMIT ?",
            (limit + len(exclude),),
        ).fetchall()
        out = [OutgoingBatch(seq, payload, n) for seq, payload, n in rows if seq not in exclude]
        return out[:limit]

    def delete(self, seq: int) -> None:
        """Forget a batch the broker acknowledged."""
        with self._txn():
            self._conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))

    def iter_batches(self) -> list[tuple[int, int, int, bytes]]:
        """Every stored batch as ``(seq, created, n_readings, payload)``, oldest first."""
        rows = self._conn.execute(
            "SELECT seq, created, n_readings, payload FROM batches ORDER BY seq"
        ).fetchall()
        return [(int(s), int(c), int(n), bytes(p)) for s, c, n, p in rows]

    def stats(self) -> StoreStats:
        batches, readings, size, oldest, newest = self._conn.execute(
            "SELECT count(*), coalesce(sum(n_readings), 0), coalesce(sum(length(payload)), 0),"
            " min(created), max(created) FROM batches"
        ).fetchone()
        pending = self._conn.execute("SELECT count(*) FROM pending").fetchone()[0]
        file_bytes = sum(
            p.stat().st_size
            for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
            if p.exists()
        )
        return StoreStats(self.path, batches, readings, size, oldest, newest, pending,
                          file_bytes, self._meta("boot"), self._meta("next_seq"))


class _Txn:
    """Commit on success, roll back on error (the transaction was begun by ``_txn``)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")
