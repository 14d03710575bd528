"""The KPI engine's checkpoints: ``kpi_state`` (its open windows, saved every minute) and
``kpi_journal`` (what was fed to it since, one row per flush, written in the flush's
transaction), so a restart resumes the windows exactly where the last flush left them. What
cannot be loaded, or is beyond what a start may load into memory, is set aside and reported."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import msgpack
import structlog
import zstandard

from agent.gateway.store.base import DECODE_ERRORS, StoreBase
from agent.gateway.store.drops import report, set_aside

log = structlog.get_logger(__name__)

MAX_KPI_STATE_BYTES = 32 * 1024 * 1024  # decompressed checkpoint
MAX_KPI_JOURNAL_ROWS = 100_000  # a day of 1-s flushes without a checkpoint, with margin
MAX_KPI_JOURNAL_ROW_BYTES = 32 * 1024 * 1024  # decompressed


class KpiStateUnusable(Exception):
    """The KPI checkpoint or journal cannot be loaded; it was set aside."""


class KpiResume(NamedTuple):
    """The last checkpoint (None: none) and the journal entries written after it, read one at
    a time."""

    snapshot: dict[str, Any] | None
    journal: Iterator[Any]


class KpiCheckpoints(StoreBase):
    def save_kpi_state(self, snapshot: dict[str, Any], t: int) -> None:
        """Checkpoint the KPI engine and forget the journal it now contains."""
        blob = self._zc.compress(self._pack.pack(snapshot))
        with self._txn():
            self._conn.execute("INSERT OR REPLACE INTO kpi_state (id, t, body) VALUES (1, ?, ?)",
                               (t, blob))
            self._conn.execute("DELETE FROM kpi_journal")

    def load_kpi_state(self) -> KpiResume:
        """The last KPI checkpoint and the journal after it. Raises :class:`KpiStateUnusable`
        after setting aside a checkpoint or journal that cannot be read or is beyond the
        ``MAX_KPI_*`` bounds."""
        rows, longest = self._conn.execute(
            "SELECT count(*), coalesce(max(length(body)), 0) FROM kpi_journal").fetchone()
        row = self._conn.execute("SELECT body FROM kpi_state WHERE id = 1").fetchone()
        try:
            if rows > MAX_KPI_JOURNAL_ROWS:
                raise ValueError(f"journal of {rows} rows, over {MAX_KPI_JOURNAL_ROWS}")
            if longest > MAX_KPI_JOURNAL_ROW_BYTES:
                raise ValueError(f"a journal row of {longest} bytes, over "
                                 f"{MAX_KPI_JOURNAL_ROW_BYTES}")
            snapshot = None if row is None else self._unpack_bounded(row[0],
                                                                     MAX_KPI_STATE_BYTES)
        except DECODE_ERRORS as exc:
            self.set_aside_kpi_state(f"checkpoint unusable: {str(exc)[:200]}")
            raise KpiStateUnusable(str(exc)[:200]) from exc
        return KpiResume(snapshot, self._iter_journal())

    def _iter_journal(self) -> Iterator[Any]:
        last = 0
        while True:
            got = self._conn.execute("SELECT id, body FROM kpi_journal WHERE id > ? ORDER BY id"
                                     " LIMIT 1", (last,)).fetchone()
            if got is None:
                return
            last = int(got[0])
            yield self._unpack_bounded(got[1], MAX_KPI_JOURNAL_ROW_BYTES)

    def _unpack_bounded(self, blob: bytes, limit: int) -> Any:
        size = zstandard.frame_content_size(blob)
        if size < 0 or size > limit:
            raise ValueError(f"declares {size} bytes, over {limit}")
        return msgpack.unpackb(self._zd.decompress(blob, max_output_size=limit), raw=False)

    def set_aside_kpi_state(self, reason: str) -> None:
        """Move the KPI checkpoint aside (kept raw), forget its journal, report it; the KPI
        windows start afresh."""
        with self._txn():
            journal = int(self._conn.execute("SELECT count(*) FROM kpi_journal").fetchone()[0])
            self._conn.execute("DELETE FROM kpi_journal")
            if self._conn.execute("SELECT 1 FROM kpi_state WHERE id = 1").fetchone():
                set_aside(self._conn, self._now_ms(), "kpi_state", 1,
                          f"{reason}; journal_rows={journal}")
            else:
                report(self._conn, self._now_ms(), "store_set_aside",
                       f"what=kpi_journal {reason}; journal_rows={journal}", reason="kpi_state")
                log.error("store_set_aside", what="kpi_journal", reason=reason)
