"""What every part of the store shares: the open connection, its transactions, the meta table."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgpack
import zstandard

from agent.errors import BufferFull

if TYPE_CHECKING:
    from agent.damper import Repeats
    from agent.gateway.store.bounds import StoreBounds
    from agent.gateway.store.elapsed import ElapsedClock
    from agent.gateway.store.place import DataDirLock
    from agent.gateway.store.seq_ledger import SeqLedger

# What reading a stored body (pending row, KPI checkpoint or journal) may raise when it is
# damaged or not what this version wrote.
DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, zstandard.ZstdError,
                  msgpack.UnpackException, sqlite3.DatabaseError)


def format_store_id(store_id: int) -> str:
    return f"{store_id:016x}"


class StoreBase:
    """The state the store's parts (pending rows, KPI checkpoints, drop ledger, bounds, place)
    work on; :class:`agent.gateway.store.BatchStore` sets it up."""

    _conn: sqlite3.Connection
    path: Path
    bounds: StoreBounds
    _clock: Callable[[], float]
    _pack: msgpack.Packer
    _zc: zstandard.ZstdCompressor
    _zd: zstandard.ZstdDecompressor
    _sync_full: bool
    _seq: SeqLedger
    _elapsed: ElapsedClock
    _drop_lines: Repeats  # buffer_drop lines: one, then a tally per period (a long outage)
    # why the store cannot be written right now (``watch``), and since when
    unavailable: str | None
    _unavailable_since: float
    _inode: tuple[int, int] | None
    lock: DataDirLock | None

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _txn(self, *, always: bool = False) -> Txn:
        # isolation_level=None: we open transactions ourselves, IMMEDIATE so a write never
        # fails half-way on a lock.
        if self.unavailable is not None and not always:
            raise BufferFull(f"buffer {self.path}: {self.unavailable}; not written")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise BufferFull(f"buffer {self.path}: cannot write: {exc}") from exc
        return Txn(self._conn, self.path)

    def _meta(self, key: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return 0 if row is None else int(row[0])  # a key an older (read-only) store lacks

    def _meta_or(self, key: str, default: int) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    @property
    def identity(self) -> str:
        """This store's identity, the batches' ``store`` key (16 hex digits)."""
        return format_store_id(self._meta("store_id"))

    def _write_sidecar(self, boot: int, reserved: int) -> None:
        """Reserve seqs below ``reserved`` in the sidecar (see ``seq_ledger``)."""
        self._seq.write(boot, reserved, self.identity)


class Txn:
    """Commit on success, roll back on error (the transaction was begun by ``_txn``).

    SQLite's "database or disk is full" (and any other write failure) comes out as
    :class:`BufferFull` naming the file, with the transaction rolled back.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path

    def __enter__(self) -> sqlite3.Connection:
        return self._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as failed:
                self._rollback()
                raise BufferFull(f"buffer {self._path}: cannot write: {failed}") from failed
            return
        self._rollback()
        if isinstance(exc, sqlite3.OperationalError):
            raise BufferFull(f"buffer {self._path}: cannot write: {exc}") from exc

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.OperationalError):
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
