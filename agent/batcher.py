"""The batcher: collects readings and events, commits them every ``flush_interval``, seals a
batch by size or age, and wakes the uplink.

It is the only writer of the store's open batch, and runs in the event loop's thread, so the
in-memory open batch and the store's pending rows never disagree.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from agent.clock import ClockStep, ClockWatch
from agent.errors import BufferFull, WireFormatError
from agent.readings import Event, Reading
from agent.store import BatchStore
from agent.wire import Batch, build_series, encode_batch, event_to_map

if TYPE_CHECKING:
    from agent.kpi.live import LiveKpis, Step

log = structlog.get_logger(__name__)


@dataclass
class BatcherStats:
    readings: int = 0
    flushes: int = 0
    batches_sealed: int = 0
    write_errors: int = 0
    lost_in_memory: int = 0


# While the store cannot be written (disk full), readings wait in memory up to this many
# batches' worth; beyond it the oldest are dropped, counted, and reported once writes work.
HELD_BATCHES = 10


class Batcher:
    """Open batch in memory, mirrored durably in the store's pending rows."""

    def __init__(
        self,
        store: BatchStore,
        *,
        gw: str,
        boot: int,
        max_readings: int,
        max_age: float,
        codec: int,
        level: int,
        clock: Callable[[], float],
        on_sealed: Callable[[], None],
        kpis: LiveKpis | None = None,
        flush_interval: float = 0.0,
        watch: ClockWatch | None = None,
    ) -> None:
        self._store = store
        self._gw = gw
        self._boot = boot
        self._max_readings = max_readings
        self._max_age = max_age
        self._flush_interval = flush_interval
        self._codec = codec
        self._level = level
        self._clock = clock
        # Batch age is elapsed time: a wall-clock step must neither hold a batch open nor seal
        # it early. Without a watch (tests) the wall clock is taken as one that never steps.
        self._watch = watch or ClockWatch(clock, clock, synced=lambda: None)
        self._watch.on_step(self._clock_stepped)
        self._on_sealed = on_sealed
        self._kpis = kpis
        self._open_aggregates: list[dict[str, Any]] = []
        self._unflushed_aggregates: list[dict[str, Any]] = []
        self._unflushed_steps: list[Step] = []
        self._open: list[Reading] = []
        self._open_events: list[Event] = []
        self._unflushed: list[Reading] = []
        self._unflushed_events: list[Event] = []
        self._opened_at: float | None = None
        self._pending_upto = 0
        self._kpi_fed = 0  # how many of _unflushed the KPI engine has seen
        self._unreported_loss = 0
        self._failing = False
        self.stats = BatcherStats()

    def recover(self) -> int:
        """Take back readings committed before a crash into the open batch; returns how many."""
        readings, events, last_id, aggregates = self._store.load_pending()
        if readings or events or aggregates:
            self._open.extend(readings)
            self._open_events.extend(events)
            self._open_aggregates.extend(aggregates)
            self._pending_upto = last_id
            self._opened_at = self._watch.monotonic()
        return len(readings)

    def add(self, readings: list[Reading]) -> None:
        """Accept readings of one poll."""
        if not readings:
            return
        if self._opened_at is None:
            self._opened_at = self._watch.monotonic()
        self._open.extend(readings)
        self._unflushed.extend(readings)
        self.stats.readings += len(readings)

    def add_event(self, event: Event) -> None:
        if self._opened_at is None:
            self._opened_at = self._watch.monotonic()
        self._open_events.append(event)
        self._unflushed_events.append(event)

    def _kpi_step(self) -> None:
        """Run the readings not yet given to the KPI engine through it (once each)."""
        if self._kpis is None:
            return
        fresh = self._unflushed[self._kpi_fed:]
        aggregates, step, events = self._kpis.step(fresh, int(self._clock() * 1000))
        self._kpi_fed = len(self._unflushed)
        self._unflushed_steps.append(step)
        if aggregates:
            if self._opened_at is None:
                self._opened_at = self._watch.monotonic()
            self._open_aggregates.extend(aggregates)
            self._unflushed_aggregates.extend(aggregates)
        for event in events:
            self.add_event(event)

    def flush(self) -> None:
        """Commit what arrived since the last flush; seal the batch when it is full or old."""
        self._store.watch()  # store file deleted or data_dir read-only: writes refused, held
        self._kpi_step()
        if self._unflushed or self._unflushed_events or self._unflushed_aggregates \
                or self._unflushed_steps:
            try:
                dropped = self._unreported_loss
                if dropped:
                    self._store.note_lost(dropped, "store_unwritable")
                    self._unreported_loss = 0
                self._pending_upto = self._store.append_pending(
                    self._unflushed, self._unflushed_events, self._unflushed_aggregates,
                    journal=self._unflushed_steps or None,
                )
            except BufferFull as exc:
                self._write_failed(exc)
                return
            if self._failing:
                self._failing = False
                log.info("buffer_writable_again", held=len(self._unflushed), dropped=dropped)
            self._unflushed = []
            self._kpi_fed = 0
            self._unflushed_events = []
            self._unflushed_aggregates = []
            self._unflushed_steps = []
            self.stats.flushes += 1
            if self._kpis is not None and self._kpis.checkpoint_due():
                self._checkpoint()
        try:
            self._store.expire()
        except BufferFull as exc:
            self._write_failed(exc)
            return
        if self._due():
            self.seal()

    def _checkpoint(self) -> None:
        assert self._kpis is not None
        try:
            self._kpis.checkpoint()
        except BufferFull as exc:
            self._write_failed(exc)  # the journal keeps the steps; try again next minute

    def _write_failed(self, exc: BufferFull) -> None:
        """Keep readings in memory (bounded) and retry next interval; log once per episode."""
        self.stats.write_errors += 1
        if not self._failing:
            self._failing = True
            log.error("buffer_write_failed", error=str(exc), held=len(self._unflushed))
        limit = HELD_BATCHES * self._max_readings
        excess = len(self._unflushed) - limit
        if excess > 0:
            lost = set(map(id, self._unflushed[:excess]))
            self._unflushed = self._unflushed[excess:]
            self._kpi_fed = max(0, self._kpi_fed - excess)
            self._open = [r for r in self._open if id(r) not in lost]
            if not self._unreported_loss:  # once per episode; the total comes with the end
                log.error("readings_dropped_in_memory", readings=excess,
                          reason="store_unwritable",
                          hint="the oldest held readings go until writes work again")
            self._unreported_loss += excess
            self.stats.lost_in_memory += excess

    def _due(self) -> bool:
        if self._opened_at is None:
            return False
        # Sealed at the last flush before the batch is max_age old: sealing at the first
        # flush after it would keep readings up to a flush interval longer, and, with polls
        # between flushes, take one poll more into every batch (6 s apart instead of 5).
        if len(self._open) >= self._max_readings:
            return True
        age = self._watch.monotonic() - self._opened_at
        if self._flush_interval <= 0:
            return age >= self._max_age
        return age + self._flush_interval > self._max_age

    def seal(self) -> int | None:
        """Seal the open batch (its readings must all be flushed); returns its seq."""
        if self._unflushed or self._unflushed_events or self._unflushed_aggregates or not (
                self._open or self._open_events or self._open_aggregates):
            return None
        created = int(self._clock() * 1000)
        readings, events, aggregates = self._open, self._open_events, self._open_aggregates
        # Said only when the kernel says the clock is not synchronised (absent otherwise, so
        # receivers that predate the key keep working with synchronised gateways).
        clock = {"synced": False} if self._watch.synced() is False else None

        def build(seq: int, reports: list[Event]) -> bytes:
            batch = Batch(
                gw=self._gw,
                boot=self._boot,
                seq=seq,
                created=created,
                series=build_series(readings),
                aggregates=tuple(aggregates),
                events=tuple(event_to_map(e) for e in [*reports, *events]),
                store=self._store.identity,
                clock=clock,
            )
            return encode_batch(batch, codec=self._codec, level=self._level)

        try:
            seq = self._store.seal(build, created=created, n_readings=len(readings),
                                   pending_upto=self._pending_upto, n_events=len(events),
                                   n_aggregates=len(aggregates))
        except BufferFull as exc:
            self.stats.write_errors += 1
            log.error("buffer_seal_failed", error=str(exc), readings=len(readings))
            return None
        except WireFormatError as exc:
            # A bug, not bad input (build_series sanitizes values): keep the batch open and
            # its readings pending rather than lose them; the next flush tries again.
            self.stats.write_errors += 1
            log.error("batch_encode_failed", error=str(exc), readings=len(readings))
            return None
        self._open = []
        self._open_events = []
        self._open_aggregates = []
        self._opened_at = None
        if seq is None:
            return None  # when_full = "drop_newest": the store dropped it, counted and reported
        self.stats.batches_sealed += 1
        log.debug("batch_sealed", seq=seq, readings=len(readings), events=len(events))
        self._on_sealed()
        return seq

    def close(self) -> None:
        """Flush, checkpoint the KPI windows, and seal whatever is open (shutdown)."""
        self.flush()
        if self._kpis is not None and not self._unflushed_steps:
            self._checkpoint()
        self.seal()
        if self._unflushed or self._unreported_loss:
            # the store could not be written up to the end: what memory held dies with us
            log.error("readings_lost_at_stop", held=len(self._unflushed),
                      dropped_unreported=self._unreported_loss, reason="store_unwritable")

    def _clock_stepped(self, step: ClockStep) -> None:
        """The wall clock stepped by ``step``: what is still open was stamped in this boot on
        the clock before it, so it is wrong by exactly the step. Move those readings and events
        by it, tell the platform (``clock_step``), and seal at once, so that every batch is
        wholly on one clock: those sealed before the step (seq below ``before_seq``) on the old
        one, this one and all later on the new one."""
        ms = step.ms
        held, held_events = len(self._unflushed), len(self._unflushed_events)
        self._open = [dataclasses.replace(r, t=r.t + ms) for r in self._open]
        self._unflushed = self._open[len(self._open) - held:] if held else []
        self._open_events = [dataclasses.replace(e, t=e.t + ms) for e in self._open_events]
        self._unflushed_events = (self._open_events[len(self._open_events) - held_events:]
                                  if held_events else [])
        synced = self._watch.synced()
        self.add_event(Event(
            round(step.wall * 1000), "clock_step", None,
            f"step_ms={ms} boot={self._boot} before_seq={self._store.next_seq()} "
            f"synced={'unknown' if synced is None else str(synced).lower()}"))
        self.flush()
        self.seal()

    async def run(self, flush_interval: float) -> None:
        """Flush every ``flush_interval`` seconds, forever (looking at the clock first, so a
        step is seen even when no device is polled for a while)."""
        self._flush_interval = flush_interval
        while True:
            await asyncio.sleep(flush_interval)
            self._watch.check()
            self.flush()
