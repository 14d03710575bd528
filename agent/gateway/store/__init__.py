"""The store-and-forward buffer: one SQLite file (WAL) in ``data_dir``.

Tables:
- ``meta``: the persisted ``boot`` counter and the next batch ``seq``.
- ``pending``: readings and events of the batch that is still open, one row per flush
  (every ``flush_interval``), so a SIGKILL or power cut loses at most that interval.
  Rows are zstd-compressed msgpack, column by column, floats as float 32 when exact (about
  2.8 bytes per reading): one small row per interval, one page write, spares SD cards.
  (``pending`` and ``kpi_journal`` use plain rowids, not AUTOINCREMENT, which would rewrite
  the ``sqlite_sequence`` page on every flush; rows are only ever deleted up to the newest,
  and a new rowid is always above every remaining one.)
- ``batches``: sealed wire-format payloads, deleted only after the broker's PUBACK.
- ``kpi_state`` / ``kpi_journal``: the KPI engine's open windows, checkpointed every minute,
  and what was fed to it since (one journal row per flush, written in the flush's
  transaction), so a restart resumes the windows exactly where the last flush left them.
- ``meta`` also keeps the store's elapsed clock (``elapsed_ms``, see "Ages" below).
- ``set_aside``: a pending row or KPI checkpoint that could not be loaded at start (unreadable,
  or beyond what a start may load into memory), kept raw with its reason; each one is also
  recorded in ``drops`` and so reported, and the agent starts without it.
- ``drops``: batches the bounds (``max_bytes``, ``max_age``) made us drop, each reported
  as a ``buffer_drop`` event inside the next sealed batch (its ``carrier``). When the bounds
  later drop the carrier itself, its reports are queued again for the next batch, so the
  platform hears of every drop at least once.

Every store gets a random identity when its file is created (``store_id`` in ``meta``, sent as
the batches' ``store`` key): a receiver dedups on ``(gw, store, seq)``, so a new store of a known
gateway (a replaced SD card, a wiped data_dir) starting again at seq 1 is stored, not dropped
as a reuse of the old store's seqs.

Next to the file, ``buffer.db.seq`` holds the ``boot``, the store identity and a ``seq``
ceiling reserved ahead of use (``SEQ_RESERVE`` at a time, written atomically before a seq past
it is committed). It
is what keeps ``seq`` from ever being reused when the store file itself is lost: a store torn
by a power cut, or deleted, restarts at the reserved ceiling with the next ``boot``; the
receiver sees the unused seqs below the ceiling as part of the reported gap. Such a store keeps
its identity, as its seqs continue.

Sealing a batch is one transaction: allocate ``seq``, take the unreported drop events into
it, insert the payload, delete the pending rows it was built from, enforce the bounds. So
every reading is either pending, in exactly one batch, or counted in exactly one drop.

Ages. ``max_age`` is measured on the store's elapsed clock, not on wall-clock differences: a
gateway without a real-time clock has its wall clock stepped by NTP, by months, and a backlog
15 s old must not look 180 days old. The elapsed clock advances with the monotonic clock while
the store is open and is saved in ``meta`` (``elapsed_ms``, with the wall time and the kernel's
NTP status at the save) at every seal (in the seal's transaction: no extra write) and at close;
every batch records it (``created_elapsed``). Time while the agent was not running counts only
when the kernel said the clock was NTP-synchronised both at the last save and at the next open,
and the wall clock did not go back in between; otherwise it counts as zero. So an age is never
overestimated, and data stays at most ``max_age`` plus the unaccounted downtime. Batches
without ``created_elapsed`` (salvaged, or stored by an earlier version) age from the open.

A store file that SQLite reports as damaged (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``, or a failed
quick check: a power cut on an SD card) is moved aside as ``buffer.db.corrupt-<time>``; what can
still be read from it is copied into a fresh store, and the damage is reported as a
``buffer_corrupt`` event. Any other failure to open is not damage and touches nothing: a store
locked by another process (waited for ``OPEN_BUSY_SECONDS``), a directory that cannot be
created or written, raise :class:`StorageError` saying so.

While the agent runs, :meth:`BatchStore.watch` (every flush) checks that the store file is
still the one it has open (same inode at the path) and that the data_dir is writable. When
the file was deleted (with or without its directory) or the directory became read-only, the
store says so once (``buffer_store_unavailable``) and refuses new writes (``BufferFull``), so
the batcher holds readings in memory within its bounds and counts what it drops, as on a full
disk; batches sealed before stay readable and the uplink keeps sending them. As soon as the
place is usable again it is repaired: a deleted store is written back whole from the open
connection (SQLite's backup: batches, pending rows, seq and identity continue exactly) and
the data_dir's lock retaken; a read-only directory that became writable needs nothing. The
platform hears of the episode once, as a ``buffer_unavailable`` event in the next batch, and,
while it lasts, from the gateway's retained status (``unavailable`` is what the batcher's
``health()`` tells the uplink).

One agent per data_dir: ``agent.lock`` in it is held with ``flock`` for the agent's life (the
kernel releases it when the process dies, SIGKILL included); a second agent is refused.
``buffer stats`` / ``export`` open the store read-only (:meth:`BatchStore.open_readonly`):
no lock, no writes, no salvage, so they work while the agent runs.

The parts, one module each:

- ``schema``: the tables, and bringing a file written by an earlier version up to them.
- ``connection``: opening the file (pragmas, lock waits), damage told from other failures.
- ``base``: what every part shares (the connection, transactions, the meta table).
- ``pending``: the open batch's pending rows, streamed back in bounded pieces after a restart.
- ``kpi_checkpoints``: the KPI engine's checkpoint and journal.
- ``drops``: the drop ledger and its counters.
- ``bounds``: ``max_bytes``, ``max_age`` and ``when_full``.
- ``elapsed``: the elapsed clock batch ages are measured on.
- ``seq_ledger``: ``buffer.db.seq``, ``boot`` and ``seq``.
- ``salvage``: a damaged file moved aside and what survived copied into a fresh store.
- ``place``: the data_dir, its lock, and the store file deleted or read-only while running.
- ``batch_store``: :class:`BatchStore`, which puts them together, seals, and serves the uplink.
"""

from agent.gateway.store.base import DECODE_ERRORS
from agent.gateway.store.batch_store import BatchStore, OutgoingBatch, Sealer, StoreStats
from agent.gateway.store.bounds import StoreBounds
from agent.gateway.store.connection import OPEN_BUSY_SECONDS, PAGE_SIZE, RUN_BUSY_MS
from agent.gateway.store.drops import COUNTERS, DropCount, DropRecord
from agent.gateway.store.kpi_checkpoints import (
    MAX_KPI_JOURNAL_ROW_BYTES,
    MAX_KPI_JOURNAL_ROWS,
    MAX_KPI_STATE_BYTES,
    KpiResume,
    KpiStateUnusable,
)
from agent.gateway.store.pending import (
    MAX_PENDING_OBJECT_BYTES,
    PENDING_PIECE,
    PendingContent,
    PendingPiece,
)
from agent.gateway.store.place import LOCK_FILE, DataDirLock, ensure_data_dir
from agent.gateway.store.salvage import StoredBatch
from agent.gateway.store.seq_ledger import SEQ_RESERVE

__all__ = [
    "COUNTERS",
    "DECODE_ERRORS",
    "LOCK_FILE",
    "MAX_KPI_JOURNAL_ROWS",
    "MAX_KPI_JOURNAL_ROW_BYTES",
    "MAX_KPI_STATE_BYTES",
    "MAX_PENDING_OBJECT_BYTES",
    "OPEN_BUSY_SECONDS",
    "PAGE_SIZE",
    "PENDING_PIECE",
    "RUN_BUSY_MS",
    "SEQ_RESERVE",
    "BatchStore",
    "DataDirLock",
    "DropCount",
    "DropRecord",
    "KpiResume",
    "KpiStateUnusable",
    "OutgoingBatch",
    "PendingContent",
    "PendingPiece",
    "Sealer",
    "StoreBounds",
    "StoreStats",
    "StoredBatch",
    "ensure_data_dir",
]
