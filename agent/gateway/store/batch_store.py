"""``BatchStore``: the store's parts (see the package docstring) put together, sealing, and the
uplink's side (stored batches oldest first, deleted after the broker's acknowledgement)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass
from pathlib import Path

import msgpack
import zstandard

from agent.damper import Repeats
from agent.errors import BufferFull, StorageError
from agent.gateway.clock import kernel_clock_synced
from agent.gateway.store import connection, drops, schema
from agent.gateway.store.bounds import Bounds, StoreBounds
from agent.gateway.store.connection import PAGE_SIZE, RUN_BUSY_MS
from agent.gateway.store.drops import COUNTERS, DropLedger, StoredCounts
from agent.gateway.store.elapsed import ElapsedClock
from agent.gateway.store.kpi_checkpoints import KpiCheckpoints
from agent.gateway.store.pending import PendingRows
from agent.gateway.store.place import StorePlace, ensure_data_dir, inode
from agent.gateway.store.salvage import Salvage, StoredBatch, move_aside
from agent.gateway.store.seq_ledger import SeqLedger
from agent.readings import Event


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
    dropped_batches: int
    dropped_readings: int
    dropped_events: int
    dropped_aggregates: int
    identity: str = ""
    # age of the oldest unsent batch on the store's elapsed clock ("Ages" in the package
    # docstring), None when there is none: unlike now - oldest_created, a wall-clock step does
    # not change it
    oldest_age_ms: int | None = None


class BatchStore(PendingRows, KpiCheckpoints, DropLedger, Bounds, Salvage, StorePlace):
    """Durable FIFO of batches plus the open batch's pending readings."""

    def __init__(self, conn: sqlite3.Connection, path: Path, bounds: StoreBounds,
                 clock: Callable[[], float], *, sync_full: bool = True) -> None:
        self._conn = conn
        self.path = path
        self.bounds = bounds
        self._clock = clock
        # KPI snapshots and journals only: it grows to what they need instead of holding
        # 256 KiB from the start (the stubs describe the pure-Python Packer, without buf_size).
        self._pack = msgpack.Packer(use_bin_type=True, buf_size=4096)  # type: ignore[call-arg]
        self._zc = zstandard.ZstdCompressor(level=1)
        self._zd = zstandard.ZstdDecompressor()
        self._in_flight = set()  # the uplink's publishes under way (``bounds``)
        self.recovered_from = None
        self._sync_full = sync_full
        self._seq = SeqLedger(path, sync_full=sync_full)
        self._elapsed = ElapsedClock(clock)
        self._drop_lines = Repeats(lambda: self._elapsed.now_ms() / 1000)
        self._inode = inode(path)  # the file this connection has open (watch compares)
        self.unavailable = None
        self._unavailable_since = 0.0
        self.lock = None  # retaken by watch when the data_dir came back

    @classmethod
    def open(cls, path: Path, *, sync: str = "full", bounds: StoreBounds | None = None,
             clock: Callable[[], float] = time.time,
             monotonic: Callable[[], float] = time.monotonic,
             clock_synced: Callable[[], bool | None] | None = None) -> BatchStore:
        """Open (create) the store; a damaged file is moved aside and salvaged (see the package
        docstring); any other failure raises StorageError and leaves the file alone.

        ``monotonic`` drives the elapsed clock that ages batches; ``clock_synced`` says whether
        the kernel has the wall clock NTP-synchronised (None: unknown), which decides whether
        the time the agent was not running counts (package docstring, "Ages")."""
        ensure_data_dir(path.parent)
        bounds = bounds or StoreBounds()
        try:
            store = cls._open_checked(path, sync, bounds, clock)
        except sqlite3.Error as exc:
            if not connection.is_damage(exc):
                raise connection.open_failure(path, exc) from exc
            try:
                aside = move_aside(path, clock, exc)
                store = cls._open_checked(path, sync, bounds, clock)
                store._take_over(aside, exc)
            except sqlite3.Error as again:
                raise connection.open_failure(path, again) from again
            except OSError as again:
                raise StorageError(f"buffer {path}: damaged, and cannot move it aside "
                                   f"({again.strerror or again})") from again
        else:
            store._continue_from_sidecar(lost=False)
        store._elapsed.start(store._meta_or, monotonic, clock_synced)
        return store

    @classmethod
    def open_readonly(cls, path: Path) -> BatchStore:
        """Open an existing store to read it: no writes, no salvage, no lock (``buffer`` while
        the agent runs). StorageError when it cannot be read."""
        try:
            conn = connection.connect_readonly(path)
            conn.execute("SELECT count(*) FROM meta").fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"buffer {path}: cannot read it ({exc})") from exc
        store = cls(conn, path, StoreBounds(), time.time)
        # ages for ``buffer stats``: the elapsed clock as the agent last saved it, plus the
        # time since when the kernel says the clock is synchronised (never overestimated)
        store._elapsed.start(store._meta_or, time.monotonic, kernel_clock_synced)
        return store

    @classmethod
    def _open_checked(cls, path: Path, sync: str, bounds: StoreBounds,
                      clock: Callable[[], float]) -> BatchStore:
        conn = connection.connect(path)
        try:
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only takes on a new file
            connection.set_durability(conn, sync_full=sync == "full")
            connection.quick_check(conn)
            schema.prepare(conn)
            # at run time a flush waits for a lock no longer than before (the event loop waits)
            conn.execute(f"PRAGMA busy_timeout={RUN_BUSY_MS}")
        except sqlite3.Error:
            conn.close()
            raise
        return cls(conn, path, bounds, clock, sync_full=sync == "full")

    def elapsed_ms(self) -> int:
        """The store's elapsed clock now (ms): what batch ages are measured on."""
        return self._elapsed.now_ms()

    def _save_elapsed(self) -> None:
        self._elapsed.save(self._conn)

    def close(self) -> None:
        tally = self._drop_lines.flush()  # drops added up since their last line: said now
        if tally is not None:
            drops.log_drop_tally(tally)
        if self._elapsed.saved:  # a store this run wrote to: keep the elapsed clock's last value
            with contextlib.suppress(BufferFull, sqlite3.Error), self._txn():
                self._save_elapsed()
        self._conn.close()

    # -- sealing -------------------------------------------------------------------------------

    def seal(self, build: Callable[[int, list[Event]], bytes], *, created: int,
             n_readings: int, pending_upto: int, n_events: int = 0,
             n_aggregates: int = 0) -> int | None:
        """Turn the open batch into a stored batch in one transaction; returns its ``seq``.

        ``build(seq, events)`` encodes the batch; ``events`` are the drop reports it must
        carry (besides its own ``n_events`` events and ``n_aggregates`` KPI windows, counted
        so a drop of the batch can say what it lost). Returns None when ``when_full =
        "drop_newest"`` dropped this very batch.
        """
        with self.sealing(pending_upto=pending_upto, created=created) as sealer:
            return sealer.add(build, n_readings=n_readings, n_events=n_events,
                              n_aggregates=n_aggregates)

    @contextlib.contextmanager
    def sealing(self, *, pending_upto: int, created: int) -> Iterator[Sealer]:
        """One transaction that seals the open batch as one or more stored batches
        (:meth:`Sealer.add` each), deletes the pending rows up to ``pending_upto`` and
        enforces the bounds; all or nothing."""
        with self._txn():
            sealer = Sealer(self, created)
            yield sealer
            self._conn.execute("DELETE FROM pending WHERE id <= ?", (pending_upto,))
            if sealer.seqs:
                self._enforce_bounds(keep=sealer.seqs[-1])

    # -- the uplink's side ---------------------------------------------------------------------

    def next_unsent(self, limit: int, exclude: Set[int], *, after: int = 0) -> list[OutgoingBatch]:
        """Oldest stored batches with ``seq > after``, not in ``exclude`` (the uplink's: in
        flight, or acknowledged and not yet deleted)."""
        if limit <= 0:
            return []
        rows = self._conn.execute(
            "SELECT seq, payload, n_readings FROM batches WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit + len(exclude)),
        ).fetchall()
        out = [OutgoingBatch(seq, payload, n) for seq, payload, n in rows if seq not in exclude]
        return out[:limit]

    def last_seq(self) -> int:
        """The newest stored batch's seq (0 when empty)."""
        return int(self._conn.execute("SELECT coalesce(max(seq), 0) FROM batches").fetchone()[0])

    def delete(self, seq: int) -> None:
        """Forget a batch the broker acknowledged (also while the place is unusable: the
        open store is what a repair copies)."""
        with self._txn(always=True):
            self._conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))

    def iter_batches(self) -> list[StoredBatch]:
        """Every stored batch, oldest first."""
        rows = self._conn.execute(
            "SELECT seq, created, n_readings, payload FROM batches ORDER BY seq"
        ).fetchall()
        return [StoredBatch(int(s), int(c), int(n), bytes(p)) for s, c, n, p in rows]

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
        dropped = [self._meta(key) for key in COUNTERS]
        return StoreStats(self.path, batches, readings, size, oldest, newest, pending,
                          file_bytes, self._meta("boot"), self._meta("next_seq"), dropped[0],
                          dropped[1], dropped[2], dropped[3],
                          self.identity if self._meta("store_id") else "",
                          self._oldest_age_ms() if batches else None)

    def _oldest_age_ms(self) -> int:
        """The oldest batch's age on the elapsed clock (one without ``created_elapsed``, salvaged
        or from an earlier version, ages from the open, as ``max_age`` counts it)."""
        row = self._conn.execute(
            "SELECT created_elapsed FROM batches ORDER BY seq LIMIT 1").fetchone()
        created = self._elapsed.opened if row is None or row[0] is None else int(row[0])
        return max(0, self.elapsed_ms() - created)


class Sealer:
    """Adds stored batches inside :meth:`BatchStore.sealing`'s transaction."""

    def __init__(self, store: BatchStore, created: int) -> None:
        self._store = store
        self._conn = store._conn
        self.created = created
        self.seqs: list[int] = []
        self._reports: list[drops.UnreportedDrop] | None = None

    def add(self, build: Callable[[int, list[Event]], bytes], *, n_readings: int,
            n_events: int = 0, n_aggregates: int = 0) -> int | None:
        """Store the batch ``build(seq, reports)`` encodes; the first batch stored carries the
        unreported drop reports. If ``build`` raises, nothing was stored and no seq used.
        Returns the seq, or None when ``when_full = "drop_newest"`` dropped it."""
        store, conn = self._store, self._conn
        seq = store.next_seq()
        store._reserve(seq)
        if self._reports is None:
            self._reports = drops.unreported(conn)
        reports = self._reports
        payload = build(seq, [Event(r.t, r.kind, None, r.message) for r in reports])
        conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
        if store._drop_newest_instead(len(payload)):
            store._record_drop("max_bytes", [StoredCounts(seq, n_readings, n_events,
                                                          n_aggregates)])
            return None
        conn.execute(
            "INSERT INTO batches (seq, created, n_readings, payload, n_events, n_aggregates,"
            " created_elapsed) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, self.created, n_readings, payload, n_events, n_aggregates,
             store.elapsed_ms()),
        )
        store._save_elapsed()
        if reports:
            drops.carried_by(conn, seq, reports)
            self._reports = []
        self.seqs.append(seq)
        return seq

    def unencodable(self, *, n_readings: int, n_events: int, n_aggregates: int,
                    error: str) -> None:
        """Count and report content that no batch can carry (it would never be sent)."""
        drops.unencodable(self._conn, self.created, n_readings=n_readings, n_events=n_events,
                          n_aggregates=n_aggregates, error=error)
