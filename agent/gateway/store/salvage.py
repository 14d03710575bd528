"""Salvage of a damaged store file (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``, or a failed quick
check: a power cut on an SD card): it is moved aside as ``buffer.db.corrupt-<time>``, what can
still be read from it is copied into a fresh store, and the damage is reported as a
``buffer_corrupt`` event. The seq ledger decides where ``boot`` and ``seq`` continue."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import structlog

from agent.gateway.store.drops import COUNTERS, report
from agent.gateway.store.schema import NEXT_SEQ_ABOVE_BATCHES
from agent.gateway.store.seq_ledger import SeqCounters

log = structlog.get_logger(__name__)

# meta keys taken over from a damaged store file
_SALVAGED_META = ("boot", "next_seq", "store_id", *COUNTERS)


class StoredBatch(NamedTuple):
    seq: int
    created: int
    n_readings: int
    payload: bytes


class Survivors(NamedTuple):
    """Rows that could still be read from a damaged store."""

    meta: dict[str, int]
    batches: list[StoredBatch]
    pending: list[bytes]


def move_aside(path: Path, clock: Callable[[], float], error: sqlite3.Error) -> Path:
    """Move the damaged file (and its WAL) aside; returns where it went."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(clock()))
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.replace(Path(f"{aside}{suffix}"))
    log.error("buffer_corrupt", path=str(path), moved_to=str(aside), error=str(error))
    return aside


def read_what_survived(path: Path) -> Survivors:
    """Rows that can still be read from a damaged store, table by table, row by row."""
    survivors = Survivors({}, [], [])
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return survivors
    try:
        with contextlib.suppress(sqlite3.DatabaseError):
            for key, value in conn.execute("SELECT key, value FROM meta"):
                survivors.meta[str(key)] = int(value)
        with contextlib.suppress(sqlite3.DatabaseError):
            for seq, created, n, payload in conn.execute(
                    "SELECT seq, created, n_readings, payload FROM batches ORDER BY seq"):
                survivors.batches.append(StoredBatch(int(seq), int(created), int(n),
                                                     bytes(payload)))
        with contextlib.suppress(sqlite3.DatabaseError):
            for (body,) in conn.execute("SELECT body FROM pending ORDER BY id"):
                survivors.pending.append(bytes(body))
    finally:
        conn.close()
    return survivors


class Salvage(SeqCounters):
    recovered_from: Path | None

    def _take_over(self, aside: Path, error: sqlite3.Error) -> None:
        """Copy what survived in ``aside`` into this (fresh) store and report the damage."""
        self.recovered_from = aside
        meta, batches, pending = read_what_survived(aside)
        with self._txn():
            for key in _SALVAGED_META:
                if key in meta:
                    self._conn.execute("UPDATE meta SET value = ? WHERE key = ?",
                                       (meta[key], key))
            self._conn.executemany(
                "INSERT OR IGNORE INTO batches (seq, created, n_readings, payload)"
                " VALUES (?, ?, ?, ?)", batches)
            self._conn.execute(NEXT_SEQ_ABOVE_BATCHES)
            self._conn.executemany("INSERT INTO pending (body) VALUES (?)",
                                   [(b,) for b in pending])
        resumed = self._continue_from_sidecar(lost=True)
        boot, next_seq = self._meta("boot"), self._meta("next_seq")
        message = (f"store file was damaged ({error}); moved to {aside.name}; salvaged "
                   f"batches={len(batches)} pending_rows={len(pending)}; readings that could "
                   f"not be read are lost; seq continues at {next_seq} after boot {boot}"
                   f"{' (from buffer.db.seq)' if resumed else ''}")
        with self._txn():
            report(self._conn, self._now_ms(), "buffer_corrupt", message)
        log.warning("buffer_salvaged", batches=len(batches), pending_rows=len(pending),
                    moved_to=str(aside), boot=boot, next_seq=next_seq,
                    from_reservation=resumed)
