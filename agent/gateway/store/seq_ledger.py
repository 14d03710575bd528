"""The seq ledger: ``buffer.db.seq`` next to the store file, holding the ``boot``, the store's
identity and a ``seq`` ceiling reserved ahead of use, so that a seq is never reused even when
the store file itself is lost (see the package docstring)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import structlog

from agent.errors import BufferFull
from agent.gateway.durable_file import replace_durably
from agent.gateway.store.base import StoreBase

log = structlog.get_logger(__name__)

# Seqs reserved in ``buffer.db.seq`` at a time: one small atomic file write per SEQ_RESERVE
# batches (every ~17 min at 10-s batches); a lost store skips at most this many seqs.
SEQ_RESERVE = 100


def new_store_id() -> int:
    """A random store identity: 62 bits, never 0 (fits SQLite's signed 64-bit integers)."""
    return (int.from_bytes(os.urandom(8), "big") >> 2) or 1


def parse_store_id(text: str) -> int:
    store_id = int(text, 16)
    if not 0 < store_id < 2**63:
        raise ValueError(f"store {text[:20]!r} is out of range")
    return store_id


class Reservation(NamedTuple):
    """What the sidecar holds (``store_id`` None when one of an earlier version has none)."""

    boot: int
    seq_reserved: int
    store_id: int | None


class SeqLedger:
    """The sidecar file of one store."""

    def __init__(self, store_path: Path, *, sync_full: bool) -> None:
        self.path = store_path.with_name(f"{store_path.name}.seq")
        self._sync_full = sync_full  # fsync the directory after replacing the sidecar
        # seqs below this are (or may have been) used; kept ahead of next_seq in the sidecar
        self.reserved = 0

    def read(self) -> Reservation | None:
        """The sidecar's reservation, or None when absent or unreadable."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            boot, reserved = int(data["boot"]), int(data["seq_reserved"])
            store = data.get("store")
            store_id = None if store is None else parse_store_id(str(store))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("buffer_seq_file_unreadable", path=str(self.path), error=str(exc))
            return None
        return Reservation(boot, reserved, store_id)

    def write(self, boot: int, reserved: int, identity: str) -> None:
        """Replace the sidecar atomically (tmp file, fsync, rename, fsync of the directory)."""
        body = json.dumps({"boot": boot, "seq_reserved": reserved, "store": identity}).encode()
        try:
            replace_durably(self.path, body, sync_folder=self._sync_full)
        except OSError as exc:
            raise BufferFull(f"buffer {self.path}: cannot write: {exc}") from exc
        self.reserved = reserved


class SeqCounters(StoreBase):
    """``boot`` and ``seq`` in the store's meta table, kept in step with the sidecar."""

    def next_seq(self) -> int:
        """The seq the next sealed batch will get."""
        return self._meta("next_seq")

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

    def _continue_from_sidecar(self, *, lost: bool) -> bool:
        """Take boot and seq past the sidecar's when the store lost its own (``lost``: it was
        salvaged; or its boot is behind the sidecar's: the file was deleted or replaced).
        Returns whether they were taken from the sidecar."""
        side = self._seq.read()
        if side is None:
            return False
        self._seq.reserved = side.seq_reserved
        if not lost and self._meta("boot") >= side.boot:
            return False
        if not lost:
            log.warning("buffer_behind_seq_file", path=str(self.path), boot=self._meta("boot"),
                        seq_file_boot=side.boot, next_seq=side.seq_reserved)
        with self._txn():
            self._conn.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'boot'",
                               (side.boot,))
            self._conn.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'next_seq'",
                               (side.seq_reserved,))
            if side.store_id is not None:  # seq goes on from the reservation: the same store
                self._conn.execute("UPDATE meta SET value = ? WHERE key = 'store_id'",
                                   (side.store_id,))
        return True

    def _reserve(self, seq: int) -> None:
        """Make sure ``seq`` lies below the reserved ceiling before it is committed."""
        if seq >= self._seq.reserved:
            self._write_sidecar(self._meta("boot"), seq + SEQ_RESERVE)
