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
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import msgpack
import structlog
import zstandard

from agent.errors import BufferFull, StorageError
from agent.gateway.clock import kernel_clock_synced
from agent.readings import Event, Quality, Reading
from agent.wire import pack_values

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    created INTEGER NOT NULL,
    n_readings INTEGER NOT NULL,
    payload BLOB NOT NULL,
    n_events INTEGER NOT NULL DEFAULT 0,
    n_aggregates INTEGER NOT NULL DEFAULT 0,
    created_elapsed INTEGER
);
CREATE TABLE IF NOT EXISTS kpi_state (id INTEGER PRIMARY KEY CHECK (id = 1), t INTEGER NOT NULL,
                                      body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS kpi_journal (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS set_aside (id INTEGER PRIMARY KEY, t INTEGER NOT NULL,
                                      what TEXT NOT NULL, reason TEXT NOT NULL, body BLOB);
CREATE TABLE IF NOT EXISTS drops (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    t INTEGER NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    batches INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0,
    carrier INTEGER
);
"""

# Seqs reserved in ``buffer.db.seq`` at a time: one small atomic file write per SEQ_RESERVE
# batches (every ~17 min at 10-s batches); a lost store skips at most this many seqs.
SEQ_RESERVE = 100

# How long opening waits for another process's write lock on the store before it gives up
# (a `buffer` command, a backup tool; never long in practice).
OPEN_BUSY_SECONDS = 10.0
RUN_BUSY_MS = 5000

LOCK_FILE = "agent.lock"

# SQLite's result codes for a file that is not (or no longer) a sound database
_DAMAGED = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})

# SQLite page size of a new store. Every commit writes each page it touches to the WAL whole;
# with 1 KiB pages a live agent writes about half the bytes it does with 4 KiB pages (measured
# by benchmarks/backlog.py: ~12 vs ~24 bytes per reading passed to write()). Fewer bytes
# written is what an SD card's wear is about. An existing store keeps the size it was made with.
PAGE_SIZE = 1024

COUNTERS = ("dropped_batches", "dropped_readings", "dropped_events", "dropped_aggregates")

# meta keys taken over from a damaged store file
_SALVAGED_META = ("boot", "next_seq", "store_id", *COUNTERS)

# next_seq is never at or below a stored batch (a meta row lost, or older than the batches)
_NEXT_SEQ_ABOVE_BATCHES = ("UPDATE meta SET value = max(value, (SELECT coalesce(max(seq), 0)"
                           " + 1 FROM batches)) WHERE key = 'next_seq'")


# What one start may load into memory from the store. A pending row streams out in pieces of
# PENDING_PIECE events or KPI windows, whatever its size; its readings (one flush's) are one
# object, and no single object may take more than MAX_PENDING_OBJECT_BYTES.
PENDING_PIECE = 5_000
MAX_PENDING_OBJECT_BYTES = 64 * 1024 * 1024  # msgpack bytes
MAX_KPI_STATE_BYTES = 32 * 1024 * 1024  # decompressed checkpoint
MAX_KPI_JOURNAL_ROWS = 100_000  # a day of 1-s flushes without a checkpoint, with margin
MAX_KPI_JOURNAL_ROW_BYTES = 32 * 1024 * 1024  # decompressed
DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, zstandard.ZstdError,
                  msgpack.UnpackException, sqlite3.DatabaseError)


@dataclass(frozen=True, slots=True)
class PendingPiece:
    """Part of a pending row (after a restart): its readings, events and closed KPI windows."""

    row_id: int
    readings: list[Reading]
    events: list[Event]
    aggregates: list[dict[str, Any]]


class KpiStateUnusable(Exception):
    """The KPI checkpoint or journal cannot be loaded; it was set aside."""


@dataclass(frozen=True, slots=True)
class OutgoingBatch:
    """A stored batch on its way to the broker."""

    seq: int
    payload: bytes
    n_readings: int


class _QuickCheckFailed(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found damage."""


def _is_damage(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file is damaged (not busy, locked, read-only, missing, ...)."""
    if isinstance(exc, _QuickCheckFailed):
        return True
    name = getattr(exc, "sqlite_errorname", None) or ""
    return name in _DAMAGED or name.startswith("SQLITE_CORRUPT_")


def _open_failure(path: Path, exc: sqlite3.Error) -> StorageError:
    """The one-line error for a store that cannot be opened and is not damaged."""
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StorageError(
            f"buffer {path}: locked by another process for more than {OPEN_BUSY_SECONDS:g} s "
            f"({exc}); not touched. Is another program writing it?")
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")) or \
            not os.access(path.parent, os.W_OK):
        return StorageError(f"buffer {path}: cannot open it for writing ({exc}); is "
                            f"{path.parent} writable?")
    return StorageError(f"buffer {path}: cannot open it ({name}: {exc}); not touched")


class DataDirLock:
    """``agent.lock`` in the data_dir, held with ``flock`` while the agent runs."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Create the data_dir if needed and take its lock, or raise StorageError."""
        ensure_data_dir(data_dir)
        path = data_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"data_dir {data_dir}: cannot write {LOCK_FILE} there "
                               f"({exc.strerror or exc}); the agent needs a writable data_dir"
                               ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise StorageError(
                f"data_dir {data_dir} is in use by another agent (pid {holder or '?'}); stop "
                "it, or give this one its own data_dir") from exc
        with contextlib.suppress(OSError):  # the pid is for humans; the lock is what counts
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def retake(self) -> None:
        """Take the lock again when its file was deleted (the data_dir was removed and has
        been recreated): the old one, on a deleted file, keeps no other agent out."""
        if self._fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                return
        except FileNotFoundError:
            pass
        again = DataDirLock.acquire(self.path.parent)
        self.release()
        self._fd, again._fd = again._fd, None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


def ensure_data_dir(data_dir: Path) -> None:
    """Create the data_dir (and its parents), or raise StorageError naming why not."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"data_dir {data_dir}: cannot create it ({exc.strerror or exc})"
                           ) from exc
    if not data_dir.is_dir():
        raise StorageError(f"data_dir {data_dir}: exists and is not a directory")


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
    # age of the oldest unsent batch on the store's elapsed clock ("Ages" above), None when
    # there is none: unlike now - oldest_created, a wall-clock step does not change it
    oldest_age_ms: int | None = None


@dataclass(frozen=True, slots=True)
class StoreBounds:
    """When the buffer is full and what to do then (``[buffer]``)."""

    max_bytes: int | None = None
    max_age_ms: int | None = None
    when_full: str = "drop_oldest"


class BatchStore:
    """Durable FIFO of batches plus the open batch's pending readings."""

    def __init__(self, conn: sqlite3.Connection, path: Path, bounds: StoreBounds,
                 clock: Callable[[], float], *, sync_full: bool = True) -> None:
        self._conn = conn
        self.path = path
        self.bounds = bounds
        self._clock = clock
        self._pack = msgpack.Packer(use_bin_type=True)
        self._zc = zstandard.ZstdCompressor(level=1)
        self._zd = zstandard.ZstdDecompressor()
        # Batches the uplink is publishing right now: never dropped under them (their PUBACK
        # may still come, and then they were delivered, not lost).
        self.in_flight: set[int] = set()
        self.recovered_from: Path | None = None
        self._sync_full = sync_full  # fsync the directory after replacing the sidecar
        # seqs below this are (or may have been) used; kept ahead of next_seq in the sidecar
        self._reserved = 0
        # the elapsed clock (module docstring, "Ages"); set up by _start_elapsed
        self._monotonic: Callable[[], float] = time.monotonic
        self._clock_synced: Callable[[], bool | None] = lambda: None
        self._elapsed_base = 0
        self._mono_base = self._monotonic()
        self._opened_elapsed = 0
        self._elapsed_saved = False
        self._inode = _inode(path)  # the file this connection has open (watch compares)
        # why the store cannot be written right now (``watch``), and since when
        self.unavailable: str | None = None
        self._unavailable_since = 0.0
        self.lock: DataDirLock | None = None  # retaken by watch when the data_dir came back

    @classmethod
    def open(cls, path: Path, *, sync: str = "full", bounds: StoreBounds | None = None,
             clock: Callable[[], float] = time.time,
             monotonic: Callable[[], float] = time.monotonic,
             clock_synced: Callable[[], bool | None] | None = None) -> BatchStore:
        """Open (create) the store; a damaged file is moved aside and salvaged (see above);
        any other failure raises StorageError and leaves the file alone.

        ``monotonic`` drives the elapsed clock that ages batches; ``clock_synced`` says whether
        the kernel has the wall clock NTP-synchronised (None: unknown), which decides whether
        the time the agent was not running counts (module docstring, "Ages")."""
        ensure_data_dir(path.parent)
        bounds = bounds or StoreBounds()
        try:
            store = cls._open_checked(path, sync, bounds, clock)
        except sqlite3.Error as exc:
            if not _is_damage(exc):
                raise _open_failure(path, exc) from exc
            try:
                store = cls._salvage(path, sync, bounds, clock, exc)
            except sqlite3.Error as again:
                raise _open_failure(path, again) from again
            except OSError as again:
                raise StorageError(f"buffer {path}: damaged, and cannot move it aside "
                                   f"({again.strerror or again})") from again
        else:
            store._continue_from_sidecar(lost=False)
        store._start_elapsed(monotonic, clock_synced)
        return store

    # -- the elapsed clock ---------------------------------------------------------------------

    def _meta_or(self, key: str, default: int) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def _start_elapsed(self, monotonic: Callable[[], float],
                       clock_synced: Callable[[], bool | None] | None) -> None:
        """Continue the elapsed clock where the last run saved it (reads only: ``buffer
        stats`` opens a store it must not write)."""
        self._monotonic = monotonic
        self._clock_synced = clock_synced or (lambda: None)
        elapsed = self._meta_or("elapsed_ms", 0)
        saved_wall = self._meta_or("elapsed_wall_ms", 0)
        saved_synced = self._meta_or("elapsed_synced", 0) == 1
        wall = int(self._clock() * 1000)
        downtime = 0
        if saved_synced and saved_wall and wall >= saved_wall and self._clock_synced() is True:
            downtime = wall - saved_wall
        self._elapsed_base = elapsed + downtime
        self._mono_base = monotonic()
        self._opened_elapsed = self._elapsed_base

    def elapsed_ms(self) -> int:
        """The store's elapsed clock now (ms): what batch ages are measured on."""
        return self._elapsed_base + round((self._monotonic() - self._mono_base) * 1000)

    def _save_elapsed(self) -> None:
        """Save the elapsed clock, the wall time and the NTP status (inside a transaction)."""
        self._conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [
            ("elapsed_ms", self.elapsed_ms()), ("elapsed_wall_ms", int(self._clock() * 1000)),
            ("elapsed_synced", 1 if self._clock_synced() is True else 0)])
        self._elapsed_saved = True

    def next_seq(self) -> int:
        """The seq the next sealed batch will get."""
        return self._meta("next_seq")

    @classmethod
    def open_readonly(cls, path: Path) -> BatchStore:
        """Open an existing store to read it: no writes, no salvage, no lock (``buffer`` while
        the agent runs). StorageError when it cannot be read."""
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                   isolation_level=None, timeout=OPEN_BUSY_SECONDS)
            conn.execute("SELECT count(*) FROM meta").fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"buffer {path}: cannot read it ({exc})") from exc
        store = cls(conn, path, StoreBounds(), time.time)
        # ages for ``buffer stats``: the elapsed clock as the agent last saved it, plus the
        # time since when the kernel says the clock is synchronised (never overestimated)
        store._start_elapsed(time.monotonic, kernel_clock_synced)
        return store

    @classmethod
    def _open_checked(cls, path: Path, sync: str, bounds: StoreBounds,
                      clock: Callable[[], float]) -> BatchStore:
        conn = sqlite3.connect(path, isolation_level=None, timeout=OPEN_BUSY_SECONDS)
        try:
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only takes on a new file
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            _quick_check(conn)
            conn.executescript(SCHEMA)
            _add_missing_columns(conn)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('boot', 0), ('next_seq', 1),"
                         " ('dropped_batches', 0), ('dropped_readings', 0),"
                         " ('dropped_events', 0), ('dropped_aggregates', 0), ('store_id', ?)",
                         (_new_store_id(),))
            conn.execute(_NEXT_SEQ_ABOVE_BATCHES)
            conn.execute("COMMIT")
            # at run time a flush waits for a lock no longer than before (the event loop waits)
            conn.execute(f"PRAGMA busy_timeout={RUN_BUSY_MS}")
        except sqlite3.Error:
            conn.close()
            raise
        return cls(conn, path, bounds, clock, sync_full=sync == "full")

    @classmethod
    def _salvage(cls, path: Path, sync: str, bounds: StoreBounds, clock: Callable[[], float],
                 error: sqlite3.Error) -> BatchStore:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(clock()))
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{path}{suffix}")
            if src.exists():
                src.replace(Path(f"{aside}{suffix}"))
        log.error("buffer_corrupt", path=str(path), moved_to=str(aside), error=str(error))
        store = cls._open_checked(path, sync, bounds, clock)
        store.recovered_from = aside
        meta, batches, pending = _read_what_survived(aside)
        with store._txn():
            for key in _SALVAGED_META:
                if key in meta:
                    store._conn.execute("UPDATE meta SET value = ? WHERE key = ?",
                                        (meta[key], key))
            store._conn.executemany(
                "INSERT OR IGNORE INTO batches (seq, created, n_readings, payload)"
                " VALUES (?, ?, ?, ?)", batches)
            store._conn.execute(_NEXT_SEQ_ABOVE_BATCHES)
            store._conn.executemany("INSERT INTO pending (body) VALUES (?)",
                                    [(b,) for b in pending])
        resumed = store._continue_from_sidecar(lost=True)
        boot, next_seq = store._meta("boot"), store._meta("next_seq")
        with store._txn():
            store._conn.execute(
                "INSERT INTO drops (t, kind, message, batches, readings) VALUES (?, ?, ?, 0, 0)",
                (int(clock() * 1000), "buffer_corrupt",
                 f"store file was damaged ({error}); moved to {aside.name}; salvaged "
                 f"batches={len(batches)} pending_rows={len(pending)}; readings that could not "
                 f"be read are lost; seq continues at {next_seq} after boot {boot}"
                 f"{' (from buffer.db.seq)' if resumed else ''}"),
            )
        log.warning("buffer_salvaged", batches=len(batches), pending_rows=len(pending),
                    moved_to=str(aside), boot=boot, next_seq=next_seq,
                    from_reservation=resumed)
        return store

    # -- seq reservation (the sidecar file) ----------------------------------------------------

    @property
    def _sidecar(self) -> Path:
        return self.path.with_name(f"{self.path.name}.seq")

    def _read_sidecar(self) -> tuple[int, int, int | None] | None:
        """``(boot, seq_reserved, store_id)`` from the sidecar (``store_id`` None when a
        sidecar of an earlier version has none), or None when absent or unreadable."""
        try:
            data = json.loads(self._sidecar.read_text(encoding="utf-8"))
            boot, reserved = int(data["boot"]), int(data["seq_reserved"])
            store = data.get("store")
            store_id = None if store is None else _parse_store_id(str(store))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("buffer_seq_file_unreadable", path=str(self._sidecar), error=str(exc))
            return None
        return boot, reserved, store_id

    @property
    def identity(self) -> str:
        """This store's identity, the batches' ``store`` key (16 hex digits)."""
        return _format_store_id(self._meta("store_id"))

    def _write_sidecar(self, boot: int, reserved: int) -> None:
        """Replace the sidecar atomically (tmp file, fsync, rename, fsync of the directory)."""
        tmp = self._sidecar.with_name(f"{self._sidecar.name}.tmp")
        body = json.dumps({"boot": boot, "seq_reserved": reserved,
                           "store": self.identity}).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._sidecar)
            if self._sync_full:
                dfd = os.open(self._sidecar.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            raise BufferFull(f"buffer {self._sidecar}: cannot write: {exc}") from exc
        self._reserved = reserved

    def _continue_from_sidecar(self, *, lost: bool) -> bool:
        """Take boot and seq past the sidecar's when the store lost its own (``lost``: it was
        salvaged; or its boot is behind the sidecar's: the file was deleted or replaced).
        Returns whether they were taken from the sidecar."""
        side = self._read_sidecar()
        if side is None:
            return False
        boot, reserved, store_id = side
        self._reserved = reserved
        if not lost and self._meta("boot") >= boot:
            return False
        if not lost:
            log.warning("buffer_behind_seq_file", path=str(self.path), boot=self._meta("boot"),
                        seq_file_boot=boot, next_seq=reserved)
        with self._txn():
            self._conn.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'boot'",
                               (boot,))
            self._conn.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'next_seq'",
                               (reserved,))
            if store_id is not None:  # seq goes on from the reservation: the same store
                self._conn.execute("UPDATE meta SET value = ? WHERE key = 'store_id'",
                                   (store_id,))
        return True

    def _reserve(self, seq: int) -> None:
        """Make sure ``seq`` lies below the reserved ceiling before it is committed."""
        if seq >= self._reserved:
            self._write_sidecar(self._meta("boot"), seq + SEQ_RESERVE)

    def close(self) -> None:
        if self._elapsed_saved:  # a store this run wrote to: keep the elapsed clock's last value
            with contextlib.suppress(BufferFull, sqlite3.Error), self._txn():
                self._save_elapsed()
        self._conn.close()

    # -- the place: store file deleted or data_dir read-only while running ---------------------

    def _place_problem(self) -> str | None:
        """Why new writes would not be durable here (None when they would)."""
        directory = self.path.parent
        current = _inode(self.path)
        if current is None:
            return "deleted" if directory.is_dir() else "data_dir deleted"
        if current != self._inode:
            return "replaced by another file"
        if os.statvfs(directory).f_flag & os.ST_RDONLY or not os.access(directory, os.W_OK):
            return "data_dir read-only"
        return None

    def watch(self) -> None:
        """Check the store's place (see the module docstring); the batcher calls it every
        flush. Never raises: while the place is unusable, writes raise BufferFull."""
        try:
            problem = self._place_problem()
        except OSError as exc:
            problem = f"data_dir unreadable ({exc.strerror or exc})"
        if problem is None:
            if self.unavailable is not None:
                self._available_again(recreated=False)
            return
        if self.unavailable is None:
            self.unavailable = problem
            self._unavailable_since = self._clock()
            log.error("buffer_store_unavailable", path=str(self.path), reason=problem,
                      hint="holding new readings in memory; sealed batches still go out")
        if problem != "data_dir read-only":
            self._recreate()

    def _recreate(self) -> None:
        """Write the store back at its path from the open connection (deleted or replaced)."""
        directory = self.path.parent
        try:
            ensure_data_dir(directory)
            if os.statvfs(directory).f_flag & os.ST_RDONLY or not os.access(directory,
                                                                              os.W_OK):
                return
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock()))
            if self.path.exists():  # someone else's file: keep it, beside ours
                self.path.replace(self.path.with_name(f"{self.path.name}.replaced-{stamp}"))
            for suffix in ("-wal", "-shm"):  # our own, of the deleted file: never reuse them
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            fresh = sqlite3.connect(self.path, isolation_level=None, timeout=OPEN_BUSY_SECONDS)
        except (OSError, StorageError, sqlite3.Error) as exc:
            log.debug("buffer_recreate_failed", error=str(exc))
            return
        try:
            self._conn.backup(fresh)
            fresh.execute("PRAGMA journal_mode=WAL")
            fresh.execute(f"PRAGMA synchronous={'FULL' if self._sync_full else 'NORMAL'}")
            fresh.execute(f"PRAGMA busy_timeout={RUN_BUSY_MS}")
            _quick_check(fresh)
        except sqlite3.Error as exc:
            fresh.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
            log.debug("buffer_recreate_failed", error=str(exc))
            return
        orphan, self._conn = self._conn, fresh
        orphan.close()
        self._inode = _inode(self.path)
        if self.lock is not None:
            try:
                self.lock.retake()
            except StorageError as exc:
                log.error("data_dir_lock_lost", error=str(exc))
        self._available_again(recreated=True)

    def _available_again(self, *, recreated: bool) -> None:
        problem, self.unavailable = self.unavailable, None
        seconds = self._clock() - self._unavailable_since
        next_seq = self._meta("next_seq")
        try:
            self._write_sidecar(self._meta("boot"), next_seq + SEQ_RESERVE)
            with self._txn():
                self._conn.execute(
                    "INSERT INTO drops (t, kind, message, batches, readings)"
                    " VALUES (?, ?, ?, 0, 0)",
                    (int(self._clock() * 1000), "buffer_unavailable",
                     f"store {self.path.name} was unusable ({problem}) for {seconds:.0f} s"
                     f"{'; recreated from the open store' if recreated else ''}; new "
                     f"readings were held in memory meanwhile (any lost: buffer_drop "
                     f"reason=store_unwritable); seq continues at {next_seq}"))
        except BufferFull as exc:
            self.unavailable = problem  # not yet: try again next flush
            log.debug("buffer_still_unwritable", error=str(exc))
            return
        log.info("buffer_store_available", path=str(self.path), was=problem,
                 seconds=round(seconds, 1), recreated=recreated, next_seq=next_seq)

    def _txn(self, *, always: bool = False) -> _Txn:
        # isolation_level=None: we open transactions ourselves, IMMEDIATE so a write never
        # fails half-way on a lock.
        if self.unavailable is not None and not always:
            raise BufferFull(f"buffer {self.path}: {self.unavailable}; not written")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise BufferFull(f"buffer {self.path}: cannot write: {exc}") from exc
        return _Txn(self._conn, self.path)

    def _meta(self, key: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return 0 if row is None else int(row[0])  # a key an older (read-only) store lacks

    def start_boot(self) -> int:
        """Count this start of the agent and return its ``boot`` number."""
        with self._txn():
            self._conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'boot'")
        boot = self._meta("boot")
        try:
            self._write_sidecar(boot, self._meta("next_seq") + SEQ_RESERVE)
        except BufferFull as exc:  # sealing retries it; the disk-full path reports the rest
            log.warning("buffer_seq_file_write_failed", error=str(exc))
        return boot

    # -- the open batch ------------------------------------------------------------------------

    def append_pending(self, readings: Sequence[Reading], events: Sequence[Event],
                       aggregates: Sequence[dict[str, Any]] = (), *,
                       journal: Any = None, snapshot: dict[str, Any] | None = None,
                       snapshot_t: int = 0) -> int:
        """Commit readings, events and closed KPI windows of the open batch in one transaction
        (and the KPI engine's journal entry for them, if any, or a checkpoint that replaces
        the journal: ``snapshot``); returns the pending row id."""
        blob = self._zc.compress(_pack_pending(readings, events, aggregates))
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
                self._set_aside("pending", row_id, f"pending row {row_id} unreadable: "
                                f"{str(exc)[:200]}")

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

    def _set_aside(self, what: str, row_id: int, reason: str) -> None:
        """Keep a row that cannot be loaded raw in ``set_aside``, and report it (in a
        transaction)."""
        source = {"pending": "pending", "kpi_state": "kpi_state"}[what]
        self._conn.execute(f"INSERT INTO set_aside (t, what, reason, body) SELECT ?, ?, ?, body"
                           f" FROM {source} WHERE id = ?",
                           (int(self._clock() * 1000), what, reason, row_id))
        self._conn.execute(f"DELETE FROM {source} WHERE id = ?", (row_id,))
        self._conn.execute(
            "INSERT INTO drops (t, kind, message, reason, batches, readings)"
            " VALUES (?, ?, ?, ?, 0, 0)",
            (int(self._clock() * 1000), "store_set_aside", f"what={what} {reason}", what))
        log.error("store_set_aside", what=what, reason=reason)

    def load_pending(self) -> tuple[list[Reading], list[Event], int, list[dict[str, Any]]]:
        """What was committed but not yet sealed (after a restart): readings, events, the last
        pending id, and closed KPI windows."""
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
        return readings, events, last_id, aggregates

    # -- KPI checkpoints -----------------------------------------------------------------------

    def save_kpi_state(self, snapshot: dict[str, Any], t: int) -> None:
        """Checkpoint the KPI engine and forget the journal it now contains."""
        blob = self._zc.compress(self._pack.pack(snapshot))
        with self._txn():
            self._conn.execute("INSERT OR REPLACE INTO kpi_state (id, t, body) VALUES (1, ?, ?)",
                               (t, blob))
            self._conn.execute("DELETE FROM kpi_journal")

    def load_kpi_state(self) -> tuple[dict[str, Any] | None, Iterator[Any]]:
        """The last KPI checkpoint (or None) and the journal entries written after it, read
        one at a time. Raises :class:`KpiStateUnusable` after setting aside a checkpoint or
        journal that cannot be read or is beyond the ``MAX_KPI_*`` bounds."""
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
        return snapshot, self._iter_journal()

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
                self._set_aside("kpi_state", 1, f"{reason}; journal_rows={journal}")
            else:
                self._conn.execute(
                    "INSERT INTO drops (t, kind, message, reason, batches, readings)"
                    " VALUES (?, ?, ?, ?, 0, 0)",
                    (int(self._clock() * 1000), "store_set_aside",
                     f"what=kpi_journal {reason}; journal_rows={journal}", "kpi_state"))
                log.error("store_set_aside", what="kpi_journal", reason=reason)

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

    # -- bounds --------------------------------------------------------------------------------

    def _stored_bytes(self) -> int:
        return int(self._conn.execute(
            "SELECT coalesce(sum(length(payload)), 0) FROM batches").fetchone()[0])

    def _drop_newest_instead(self, size: int) -> bool:
        b = self.bounds
        return (b.when_full == "drop_newest" and b.max_bytes is not None
                and self._stored_bytes() + size > b.max_bytes)

    def _enforce_bounds(self, keep: int) -> None:
        """Drop the oldest batches (never ``keep`` or one in flight) over the bounds."""
        b = self.bounds
        if b.max_age_ms is not None:
            cutoff = self.elapsed_ms() - b.max_age_ms
            old = [(s, n, e, a) for s, n, e, a in self._conn.execute(
                "SELECT seq, n_readings, n_events, n_aggregates FROM batches"
                " WHERE coalesce(created_elapsed, ?) < ? ORDER BY seq",
                (self._opened_elapsed, cutoff))
                if s not in self.in_flight and s != keep]
            if old:
                self._record_drop("max_age", old)
        if b.max_bytes is None or b.when_full != "drop_oldest":
            return
        excess = self._stored_bytes() - b.max_bytes
        if excess <= 0:
            return
        victims: list[tuple[int, int, int, int]] = []
        for s, n, e, a, size in self._conn.execute(
                "SELECT seq, n_readings, n_events, n_aggregates, length(payload) FROM batches"
                " ORDER BY seq"):
            if excess <= 0:
                break
            if s in self.in_flight or s == keep:
                continue
            victims.append((s, n, e, a))
            excess -= size
        if victims:
            self._record_drop("max_bytes", victims)

    def _record_drop(self, reason: str, victims: list[tuple[int, int, int, int]]) -> None:
        """Delete ``victims`` ``(seq, readings, events, aggregates)``, count and queue a
        report of them."""
        seqs = [v[0] for v in victims]
        readings = sum(v[1] for v in victims)
        events = sum(v[2] for v in victims)
        aggregates = sum(v[3] for v in victims)
        self._conn.executemany("DELETE FROM batches WHERE seq = ?", [(s,) for s in seqs])
        # reports those batches carried never reached the platform: queue them again
        self._conn.executemany(
            "UPDATE drops SET reported = 0, carrier = NULL WHERE carrier = ?",
            [(s,) for s in seqs])
        limit = (f"max_bytes={self.bounds.max_bytes}" if reason == "max_bytes"
                 else f"max_age_ms={self.bounds.max_age_ms}")
        message = (f"batches={len(seqs)} readings={readings} events={events} "
                   f"aggregates={aggregates} seq={seqs[0]}-{seqs[-1]} "
                   f"reason={reason} {limit} policy={self.bounds.when_full}")
        self._conn.execute(
            "INSERT INTO drops (t, kind, message, reason, batches, readings)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (int(self._clock() * 1000), "buffer_drop", message, reason, len(seqs), readings))
        for key, value in zip(COUNTERS, (len(seqs), readings, events, aggregates), strict=True):
            self._conn.execute("UPDATE meta SET value = value + ? WHERE key = ?", (value, key))
        log.warning("buffer_drop", batches=len(seqs), readings=readings, events=events,
                    aggregates=aggregates, first_seq=seqs[0], last_seq=seqs[-1],
                    reason=reason, policy=self.bounds.when_full)

    def note_lost(self, readings: int, reason: str, *, events: int = 0,
                  aggregates: int = 0) -> None:
        """Record readings (and events, KPI windows) lost before they reached the store (disk
        full for too long)."""
        extra = "".join(f" {key}={n}" for key, n in (("events", events),
                                                     ("aggregates", aggregates)) if n)
        with self._txn():
            self._conn.execute(
                "INSERT INTO drops (t, kind, message, reason, batches, readings)"
                " VALUES (?, ?, ?, ?, 0, ?)",
                (int(self._clock() * 1000), "buffer_drop",
                 f"batches=0 readings={readings}{extra} reason={reason}", reason, readings))
            for key, n in (("dropped_readings", readings), ("dropped_events", events),
                           ("dropped_aggregates", aggregates)):
                self._conn.execute("UPDATE meta SET value = value + ? WHERE key = ?", (n, key))

    def drop_totals(self) -> dict[str, tuple[int, int]]:
        """Dropped ``(batches, readings)`` by reason, since the store was created."""
        return {str(r): (int(b), int(n)) for r, b, n in self._conn.execute(
            "SELECT reason, sum(batches), sum(readings) FROM drops WHERE kind = 'buffer_drop'"
            " GROUP BY reason")}

    def expire(self) -> None:
        """Apply ``max_age`` now (the batcher calls it every flush, sealed or not)."""
        if self.bounds.max_age_ms is None:
            return
        with self._txn():
            self._enforce_bounds(keep=-1)

    def drop_events(self) -> list[tuple[int, str, str, int, int, bool]]:
        """Every recorded drop ``(t, kind, message, batches, readings, reported)``."""
        return [(int(t), str(k), str(m), int(b), int(r), bool(rep)) for t, k, m, b, r, rep in
                self._conn.execute("SELECT t, kind, message, batches, readings, reported "
                                   "FROM drops ORDER BY id")]

    # -- the uplink's side ---------------------------------------------------------------------

    def next_unsent(self, limit: int, exclude: set[int], *, after: int = 0) -> list[OutgoingBatch]:
        """Oldest stored batches with ``seq > after``, not in ``exclude`` (in flight)."""
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
        created = self._opened_elapsed if row is None or row[0] is None else int(row[0])
        return max(0, self.elapsed_ms() - created)


class Sealer:
    """Adds stored batches inside :meth:`BatchStore.sealing`'s transaction."""

    def __init__(self, store: BatchStore, created: int) -> None:
        self._store = store
        self._conn = store._conn
        self.created = created
        self.seqs: list[int] = []
        self._reports: list[tuple[int, int, str, str]] | None = None

    def add(self, build: Callable[[int, list[Event]], bytes], *, n_readings: int,
            n_events: int = 0, n_aggregates: int = 0) -> int | None:
        """Store the batch ``build(seq, reports)`` encodes; the first batch stored carries the
        unreported drop reports. If ``build`` raises, nothing was stored and no seq used.
        Returns the seq, or None when ``when_full = "drop_newest"`` dropped it."""
        store, conn = self._store, self._conn
        seq = store._meta("next_seq")
        store._reserve(seq)
        if self._reports is None:
            self._reports = conn.execute(
                "SELECT id, t, kind, message FROM drops WHERE reported = 0 ORDER BY id"
            ).fetchall()
        reports = self._reports
        payload = build(seq, [Event(t, kind, None, msg) for _, t, kind, msg in reports])
        conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
        if store._drop_newest_instead(len(payload)):
            store._record_drop("max_bytes", [(seq, n_readings, n_events, n_aggregates)])
            return None
        conn.execute(
            "INSERT INTO batches (seq, created, n_readings, payload, n_events, n_aggregates,"
            " created_elapsed) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, self.created, n_readings, payload, n_events, n_aggregates,
             store.elapsed_ms()),
        )
        store._save_elapsed()
        if reports:
            conn.execute(
                f"UPDATE drops SET reported = 1, carrier = ? WHERE id IN "
                f"({','.join('?' * len(reports))})", [seq, *(r[0] for r in reports)])
            self._reports = []
        self.seqs.append(seq)
        return seq

    def unencodable(self, *, n_readings: int, n_events: int, n_aggregates: int,
                    error: str) -> None:
        """Count and report content that no batch can carry (it would never be sent)."""
        message = (f"batches=0 readings={n_readings} events={n_events} "
                   f"aggregates={n_aggregates} reason=unencodable error={error[:200]}")
        self._conn.execute(
            "INSERT INTO drops (t, kind, message, reason, batches, readings)"
            " VALUES (?, ?, ?, ?, 0, ?)",
            (self.created, "buffer_drop", message, "unencodable", n_readings))
        for key, value in zip(COUNTERS[1:], (n_readings, n_events, n_aggregates), strict=True):
            self._conn.execute("UPDATE meta SET value = value + ? WHERE key = ?", (value, key))
        log.error("buffer_drop", readings=n_readings, events=n_events,
                  aggregates=n_aggregates, reason="unencodable", error=error[:200])


class _Txn:
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


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _new_store_id() -> int:
    """A random store identity: 62 bits, never 0 (fits SQLite's signed 64-bit integers)."""
    return (int.from_bytes(os.urandom(8), "big") >> 2) or 1


def _format_store_id(store_id: int) -> str:
    return f"{store_id:016x}"


def _parse_store_id(text: str) -> int:
    store_id = int(text, 16)
    if not 0 < store_id < 2**63:
        raise ValueError(f"store {text[:20]!r} is out of range")
    return store_id


def _pack_pending(readings: Sequence[Reading], events: Sequence[Event],
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


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a store written by an earlier version up to this schema."""
    added = {"drops": [("carrier", "INTEGER")],
             "batches": [("n_events", "INTEGER NOT NULL DEFAULT 0"),
                         ("n_aggregates", "INTEGER NOT NULL DEFAULT 0"),
                         ("created_elapsed", "INTEGER")]}
    for table, wanted in added.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, decl in wanted:
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def _quick_check(conn: sqlite3.Connection) -> None:
    check = conn.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise _QuickCheckFailed(f"quick_check: {check}")


def _read_what_survived(
    path: Path,
) -> tuple[dict[str, int], list[tuple[int, int, int, bytes]], list[bytes]]:
    """Rows that can still be read from a damaged store, table by table, row by row."""
    meta: dict[str, int] = {}
    batches: list[tuple[int, int, int, bytes]] = []
    pending: list[bytes] = []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return meta, batches, pending
    try:
        with contextlib.suppress(sqlite3.DatabaseError):
            for key, value in conn.execute("SELECT key, value FROM meta"):
                meta[str(key)] = int(value)
        with contextlib.suppress(sqlite3.DatabaseError):
            for seq, created, n, payload in conn.execute(
                    "SELECT seq, created, n_readings, payload FROM batches ORDER BY seq"):
                batches.append((int(seq), int(created), int(n), bytes(payload)))
        with contextlib.suppress(sqlite3.DatabaseError):
            for (body,) in conn.execute("SELECT body FROM pending ORDER BY id"):
                pending.append(bytes(body))
    finally:
        conn.close()
    return meta, batches, pending


def _piece(row_id: int, key: str, items: list[Any]) -> PendingPiece:
    if key == "e":
        return PendingPiece(row_id, [], [Event(t, kind, dev, msg) for t, kind, dev, msg in items],
                            [])
    if key == "a":
        return PendingPiece(row_id, [], [], items)
    # "r": rows written by an earlier version, one list per reading
    return PendingPiece(row_id, [Reading(dev, pt, unit, t, v, Quality(q))
                                 for dev, pt, unit, t, v, q in items], [], [])
