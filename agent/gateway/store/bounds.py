"""The buffer's bounds (``[buffer]``): ``max_bytes`` and ``max_age`` (on the elapsed clock),
and what to do when full. Batches over them are dropped oldest first, counted and reported
through the drop ledger; a batch in flight is never dropped (its PUBACK may still come)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.gateway.store.base import StoreBase
from agent.gateway.store.drops import StoredCounts, log_drop_tally, record_drop


@dataclass(frozen=True, slots=True)
class StoreBounds:
    """When the buffer is full and what to do then (``[buffer]``)."""

    max_bytes: int | None = None
    max_age_ms: int | None = None
    when_full: str = "drop_oldest"


class Bounds(StoreBase):
    # Batches the uplink is publishing right now: never dropped under them (their PUBACK may
    # still come, and then they were delivered, not lost). The store holds the set; the uplink
    # tells it when a publish starts and ends, and asks what is in flight.
    _in_flight: set[int]

    def mark_in_flight(self, seq: int) -> None:
        self._in_flight.add(seq)

    def clear_in_flight(self, seq: int) -> None:
        """The publish of ``seq`` ended (acknowledged, timed out or cancelled)."""
        self._in_flight.discard(seq)

    def forget_in_flight(self) -> None:
        """The connection is gone: nothing is in flight any more."""
        self._in_flight.clear()

    def in_flight(self) -> frozenset[int]:
        return frozenset(self._in_flight)

    def expire(self) -> None:
        """Apply ``max_age`` now (the batcher calls it every flush, sealed or not), and log the
        tally of drops not logged one by one once it is due."""
        tally = self._drop_lines.tick()
        if tally is not None:
            log_drop_tally(tally)
        if self.bounds.max_age_ms is None:
            return
        with self._txn():
            self._enforce_bounds(keep=-1)

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
            cutoff = self._elapsed.now_ms() - b.max_age_ms
            old = [StoredCounts(s, n, e, a) for s, n, e, a in self._conn.execute(
                "SELECT seq, n_readings, n_events, n_aggregates FROM batches"
                " WHERE coalesce(created_elapsed, ?) < ? ORDER BY seq",
                (self._elapsed.opened, cutoff))
                if s not in self._in_flight and s != keep]
            if old:
                record_drop(self._conn, self._now_ms(), b, "max_age", old,
                            lines=self._drop_lines)
        if b.max_bytes is None or b.when_full != "drop_oldest":
            return
        excess = self._stored_bytes() - b.max_bytes
        if excess <= 0:
            return
        victims: list[StoredCounts] = []
        for s, n, e, a, size in self._conn.execute(
                "SELECT seq, n_readings, n_events, n_aggregates, length(payload) FROM batches"
                " ORDER BY seq"):
            if excess <= 0:
                break
            if s in self._in_flight or s == keep:
                continue
            victims.append(StoredCounts(s, n, e, a))
            excess -= size
        if victims:
            record_drop(self._conn, self._now_ms(), b, "max_bytes", victims,
                        lines=self._drop_lines)
