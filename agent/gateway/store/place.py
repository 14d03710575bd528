"""The store's place: the data_dir, its ``agent.lock`` (one agent per data_dir), and watching
that the store file is still there and writable while the agent runs; a deleted store is
written back whole from the open connection."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from pathlib import Path

import structlog

from agent.errors import BufferFull, StorageError
from agent.gateway.store.base import StoreBase
from agent.gateway.store.connection import RUN_BUSY_MS, connect, quick_check, set_durability
from agent.gateway.store.drops import report
from agent.gateway.store.seq_ledger import SEQ_RESERVE

log = structlog.get_logger(__name__)

LOCK_FILE = "agent.lock"


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


def inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class StorePlace(StoreBase):
    """Store file deleted or data_dir read-only while running."""

    def _place_problem(self) -> str | None:
        """Why new writes would not be durable here (None when they would)."""
        directory = self.path.parent
        current = inode(self.path)
        if current is None:
            return "deleted" if directory.is_dir() else "data_dir deleted"
        if current != self._inode:
            return "replaced by another file"
        if os.statvfs(directory).f_flag & os.ST_RDONLY or not os.access(directory, os.W_OK):
            return "data_dir read-only"
        return None

    def watch(self) -> None:
        """Check the store's place (see the package docstring); the batcher calls it every
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
            fresh = connect(self.path)
        except (OSError, StorageError, sqlite3.Error) as exc:
            log.debug("buffer_recreate_failed", error=str(exc))
            return
        try:
            self._conn.backup(fresh)
            set_durability(fresh, sync_full=self._sync_full)
            fresh.execute(f"PRAGMA busy_timeout={RUN_BUSY_MS}")
            quick_check(fresh)
        except sqlite3.Error as exc:
            fresh.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
            log.debug("buffer_recreate_failed", error=str(exc))
            return
        orphan, self._conn = self._conn, fresh
        orphan.close()
        self._inode = inode(self.path)
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
                report(self._conn, self._now_ms(), "buffer_unavailable",
                       f"store {self.path.name} was unusable ({problem}) for {seconds:.0f} s"
                       f"{'; recreated from the open store' if recreated else ''}; new "
                       f"readings were held in memory meanwhile (any lost: buffer_drop "
                       f"reason=store_unwritable); seq continues at {next_seq}")
        except BufferFull as exc:
            self.unavailable = problem  # not yet: try again next flush
            log.debug("buffer_still_unwritable", error=str(exc))
            return
        log.info("buffer_store_available", path=str(self.path), was=problem,
                 seconds=round(seconds, 1), recreated=recreated, next_seq=next_seq)
