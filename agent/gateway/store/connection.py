"""Opening the store file: its pragmas, how long to wait for a lock, and telling damage (a
file SQLite says is not sound) from any other failure to open (locked, not writable)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from agent.errors import StorageError

# How long opening waits for another process's write lock on the store before it gives up
# (a `buffer` command, a backup tool; never long in practice).
OPEN_BUSY_SECONDS = 10.0
RUN_BUSY_MS = 5000

# SQLite's result codes for a file that is not (or no longer) a sound database
_DAMAGED = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})

# SQLite page size of a new store. Every commit writes each page it touches to the WAL whole;
# with 1 KiB pages a live agent writes about half the bytes it does with 4 KiB pages (measured
# by benchmarks/backlog.py: ~12 vs ~24 bytes per reading passed to write()). Fewer bytes
# written is what an SD card's wear is about. An existing store keeps the size it was made with.
PAGE_SIZE = 1024


class QuickCheckFailed(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found damage."""


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file is damaged (not busy, locked, read-only, missing, ...)."""
    if isinstance(exc, QuickCheckFailed):
        return True
    name = getattr(exc, "sqlite_errorname", None) or ""
    return name in _DAMAGED or name.startswith("SQLITE_CORRUPT_")


def open_failure(path: Path, exc: sqlite3.Error) -> StorageError:
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


def connect(path: Path) -> sqlite3.Connection:
    """A connection that opens transactions itself and waits OPEN_BUSY_SECONDS for a lock."""
    return sqlite3.connect(path, isolation_level=None, timeout=OPEN_BUSY_SECONDS)


def connect_readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                           isolation_level=None, timeout=OPEN_BUSY_SECONDS)


def set_durability(conn: sqlite3.Connection, *, sync_full: bool) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if sync_full else 'NORMAL'}")


def quick_check(conn: sqlite3.Connection) -> None:
    check = conn.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise QuickCheckFailed(f"quick_check: {check}")
