"""The store's elapsed clock, what batch ages (``max_age``) are measured on (see "Ages" in the
package docstring): it advances with the monotonic clock while the store is open, and time
while the agent was not running counts only when the kernel vouched for the wall clock."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable


class ElapsedClock:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._monotonic: Callable[[], float] = time.monotonic
        self._synced: Callable[[], bool | None] = lambda: None
        self._base = 0
        self._mono_base = self._monotonic()
        self.opened = 0  # the elapsed clock at the open: where batches without an age start
        self.saved = False  # saved by this run (so also at close)

    def start(self, meta: Callable[[str, int], int], monotonic: Callable[[], float],
              clock_synced: Callable[[], bool | None] | None) -> None:
        """Continue where the last run saved it (reads only: ``buffer stats`` opens a store it
        must not write); ``meta(key, default)`` reads the store's meta table."""
        self._monotonic = monotonic
        self._synced = clock_synced or (lambda: None)
        elapsed = meta("elapsed_ms", 0)
        saved_wall = meta("elapsed_wall_ms", 0)
        saved_synced = meta("elapsed_synced", 0) == 1
        wall = int(self._clock() * 1000)
        downtime = 0
        if saved_synced and saved_wall and wall >= saved_wall and self._synced() is True:
            downtime = wall - saved_wall
        self._base = elapsed + downtime
        self._mono_base = monotonic()
        self.opened = self._base

    def now_ms(self) -> int:
        return self._base + round((self._monotonic() - self._mono_base) * 1000)

    def save(self, conn: sqlite3.Connection) -> None:
        """Save the elapsed clock, the wall time and the NTP status (inside a transaction)."""
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [
            ("elapsed_ms", self.now_ms()), ("elapsed_wall_ms", int(self._clock() * 1000)),
            ("elapsed_synced", 1 if self._synced() is True else 0)])
        self.saved = True
