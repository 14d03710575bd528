"""The SQLite sink the receiver writes through: open, store, read back."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from agent.errors import ConfigError
from agent.platform.sink.base import SinkBase
from agent.platform.sink.ingest import StoreOutcome, store_batch
from agent.platform.sink.rejected import REJECTED_SCHEMA
from agent.platform.sink.schema import SqlCursor, _migrate, immediate, sink_path
from agent.wire import Batch


class SqliteSink(SinkBase):
    """The sink in one SQLite file (WAL), one transaction per batch."""

    def __init__(self, conn: sqlite3.Connection, path: Path, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, url_or_path: str | Path, *, clock: Callable[[], float] = time.time) -> Self:
        """Open (creating if needed) the sink database; ``clock`` stamps ``received``."""
        path = sink_path(url_or_path)
        try:
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE … COMMIT) below.
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL, not NORMAL: the broker gets its PUBACK once store() returns, so a commit
            # must survive a power cut, not only a crash of this process.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")  # several receivers may share a file
            _migrate(conn)
            conn.executescript(REJECTED_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"sink {path}: cannot open the SQLite database: {exc}") from exc
        return cls(conn, path, clock)

    @property
    def description(self) -> str:
        """What the sink is, for log lines."""
        return str(self.path)

    def close(self) -> None:
        """Close the database."""
        self._conn.close()

    def _write(self) -> contextlib.AbstractContextManager[SqlCursor]:
        return immediate(self._conn)

    def _select(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._conn.execute(sql, params)]

    def store_many(self, batches: list[Batch]) -> list[StoreOutcome]:
        """Store batches, one transaction each (a SQLite commit is cheap; holding the write
        lock over many would stall the other receivers sharing the file)."""
        return [store_batch(self._conn, batch, self._now_ms()) for batch in batches]

    def apply_retention(self, *, readings_ms: int | None = None,
                        aggregates_ms: int | None = None) -> dict[str, int]:
        """Delete readings (by ``t``) and aggregates (by ``end``) older than now minus these
        many ms; returns how many rows of each went."""
        gone: dict[str, int] = {}
        now = self._now_ms()
        for table, column, keep in (("readings", "t", readings_ms),
                                    ("aggregates", '"end"', aggregates_ms)):
            if keep is not None:
                with immediate(self._conn) as cur:
                    cur.execute(f"DELETE FROM {table} WHERE {column} < ?", (now - keep,))
                    gone[table] = cur.rowcount
        return gone
