"""The batcher: collects readings and events, commits them every ``flush_interval``, seals a
batch by size or age, and wakes the uplink.

It is the only writer of the store's open batch, and runs in the event loop's thread, so the
in-memory open batch and the store's pending rows never disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import zstandard

from agent.errors import BufferFull, WireFormatError
from agent.gateway.clock import ClockStep, ClockWatch
from agent.gateway.open_batch import OpenBatch
from agent.gateway.store import BatchStore, Sealer
from agent.readings import Event, Reading
from agent.wire import (
    MAGIC,
    MAX_BATCH_AGGREGATES,
    MAX_BATCH_EVENTS,
    MAX_BATCH_READINGS,
    MAX_BODY_BYTES,
    MAX_BUFFER_REASON_LEN,
    Batch,
    BufferHealth,
    build_series,
    encode_batch,
    event_to_map,
)

if TYPE_CHECKING:
    from agent.kpi.live import LiveKpis

log = structlog.get_logger(__name__)


@dataclass
class BatcherStats:
    """What the batcher did since start (``/metrics``, the final log line)."""

    readings: int = 0  # taken from the scheduler into the open batch
    flushes: int = 0  # open batches committed to the store as pending rows
    batches_sealed: int = 0  # batches the store holds for the uplink
    write_errors: int = 0  # store writes that failed (disk full, unwritable data_dir)
    lost_in_memory: int = 0  # readings dropped from memory while the store was unwritable
    lost_aggregates: int = 0  # KPI windows dropped likewise
    lost_events: int = 0  # events dropped likewise
    unencodable: int = 0  # items no batch could carry (over the receivers' limits)
    rounds: int = 0  # flush-loop rounds run (the systemd watchdog watches it move)


# While the store cannot be written (disk full), readings wait in memory up to this many
# batches' worth; beyond it the oldest are dropped, counted, and reported once writes work.
HELD_BATCHES = 10
# The same for closed KPI windows and events; the KPI journal held meanwhile is given up
# beyond HELD_STEPS flushes: the first write that works then checkpoints the engine instead.
HELD_AGGREGATES = 5_000
HELD_EVENTS = 5_000
HELD_STEPS = 600

# What one sealed batch holds at most (well under the receivers' per-batch limits, wire.MAX_*),
# besides batch_max_readings; a body is also kept under half of what receivers accept
# (wire.MAX_BODY_BYTES), by halving a part that encodes larger.
BATCH_READINGS_CAP = MAX_BATCH_READINGS // 2
BATCH_AGGREGATES_CAP = MAX_BATCH_AGGREGATES // 4
BATCH_EVENTS_CAP = MAX_BATCH_EVENTS // 4
BODY_TARGET_BYTES = MAX_BODY_BYTES // 2


class _TooLarge(WireFormatError):
    """A part encodes to more than BODY_TARGET_BYTES: split it."""


def _reason(exc: BufferFull) -> str:
    """Why a write failed, in SQLite's words when it said (no path: the status is public)."""
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        text = cause.strerror
    else:
        text = str(cause) if cause is not None else str(exc)
    return text[:MAX_BUFFER_REASON_LEN] or type(exc).__name__


def _body_size(payload: bytes) -> int:
    """The decompressed body size of an encoded batch (header: magic and codec byte)."""
    header = len(MAGIC) + 1
    if payload[len(MAGIC)] == 0:
        return len(payload) - header
    return int(zstandard.frame_content_size(payload[header:]))


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
        self._batch = OpenBatch()
        self._opened_at: float | None = None
        self._pending_upto = 0
        self._unreported_loss = 0
        self._unreported_events = 0
        self._unreported_aggregates = 0
        self._journal_lost = False  # held steps given up: checkpoint at the next write
        self._failing = False
        self._recover_upto = 0  # pending rows of a previous run still to seal
        # The first seq that can hold readings taken in this boot: what a previous run left
        # pending is sealed below it, stamped in that run, and a clock step of this boot does
        # not correct it (the clock_step event's ``from_seq``).
        self._first_live_seq = store.next_seq()
        # The buffer's health as the status tells it (wire format §8.1): why the last write
        # failed (None: it worked), since when (epoch ms), and what was last told, so that
        # on_health_change is called once per change, not once per flush.
        self._write_error: str | None = None
        self._unwritable_since: int | None = None
        self._health_told: tuple[str, bool] = ("ok", False)
        self.on_health_change: Callable[[], None] | None = None
        self._retuned = asyncio.Event()  # retune(): the flush loop's wait ends
        self.stats = BatcherStats()

    def recover(self) -> int:
        """Seal what a previous run committed but did not seal (pending rows) into batches
        of their own, streamed from the store in bounded pieces; returns the readings. If
        the store cannot be written now, every flush tries again before anything is sealed."""
        self._recover_upto = self._store.pending_upto()
        return self._recover()

    def _recover(self) -> int:
        if not self._recover_upto:
            return 0
        created = int(self._clock() * 1000)
        total = 0
        readings: list[Reading] = []
        events: list[Event] = []
        aggregates: list[dict[str, Any]] = []
        try:
            with self._store.sealing(pending_upto=self._recover_upto,
                                     created=created) as sealer:
                for piece in self._store.iter_pending(self._recover_upto):
                    readings.extend(piece.readings)
                    events.extend(piece.events)
                    aggregates.extend(piece.aggregates)
                    total += len(piece.readings)
                    if (len(readings) >= self._readings_cap or len(events) >= BATCH_EVENTS_CAP
                            or len(aggregates) >= BATCH_AGGREGATES_CAP):
                        self._seal_parts(sealer, readings, events, aggregates)
                        readings, events, aggregates = [], [], []
                if readings or events or aggregates:
                    self._seal_parts(sealer, readings, events, aggregates)
        except BufferFull as exc:
            self.stats.write_errors += 1
            self._note_write_error(exc)
            if not self._failing:
                self._failing = True
                log.error("buffer_write_failed", error=str(exc), held=0)
            return 0
        self._write_error = None
        self._recover_upto = 0
        self._first_live_seq = self._store.next_seq()
        if total:
            log.info("pending_recovered", readings=total)
        return total

    @property
    def _readings_cap(self) -> int:
        return min(self._max_readings, BATCH_READINGS_CAP)

    def add(self, readings: list[Reading]) -> None:
        """Accept readings of one poll."""
        if not readings:
            return
        if self._opened_at is None:
            self._opened_at = self._watch.monotonic()
        self._batch.readings.extend(readings)
        self.stats.readings += len(readings)

    def add_event(self, event: Event) -> None:
        if self._opened_at is None:
            self._opened_at = self._watch.monotonic()
        self._batch.events.append(event)

    def _kpi_step(self) -> None:
        """Run the readings not yet given to the KPI engine through it (once each)."""
        if self._kpis is None:
            return
        batch = self._batch
        aggregates, step, events = self._kpis.step(batch.unfed_readings(),
                                                   int(self._clock() * 1000))
        batch.kpi_fed = len(batch.readings)
        if not self._journal_lost:
            batch.steps.append(step)
        if aggregates:
            if self._opened_at is None:
                self._opened_at = self._watch.monotonic()
            batch.aggregates.extend(aggregates)
        for event in events:
            self.add_event(event)

    def flush(self) -> None:
        """Commit what arrived since the last flush; seal the batch when it is full or old."""
        try:
            self._flush()
        finally:
            self._check_health()

    def _flush(self) -> None:
        self._store.watch()  # store file deleted or data_dir read-only: writes refused, held
        self._kpi_step()
        if self._recover_upto:
            self._recover()
            if self._recover_upto:  # the store still cannot be written
                self._write_failed(None)
                return
        batch = self._batch
        if batch.holds_content() or batch.steps or self._journal_lost:
            try:
                dropped = self._unreported_loss
                if dropped or self._unreported_events or self._unreported_aggregates:
                    self._store.note_lost(dropped, "store_unwritable",
                                          events=self._unreported_events,
                                          aggregates=self._unreported_aggregates)
                    self._unreported_loss = 0
                    self._unreported_events = 0
                    self._unreported_aggregates = 0
                snapshot = None
                if self._journal_lost and self._kpis is not None:
                    snapshot = self._kpis.engine.snapshot()
                self._pending_upto = self._store.append_pending(
                    batch.held_readings(), batch.held_events(), batch.held_aggregates(),
                    journal=None if snapshot is not None else (batch.steps or None),
                    snapshot=snapshot, snapshot_t=int(self._clock() * 1000),
                )
            except BufferFull as exc:
                self._write_failed(exc)
                return
            self._write_error = None
            if self._journal_lost and self._kpis is not None:
                self._kpis.checkpointed()
            self._journal_lost = False
            if self._failing:
                self._failing = False
                log.info("buffer_writable_again", held=batch.n_held_readings(),
                         dropped=dropped)
            batch.committed()
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

    def _write_failed(self, exc: BufferFull | None) -> None:
        """Keep readings, events, KPI windows and journal in memory (bounded) and retry next
        interval; log once per episode."""
        if exc is not None:
            self.stats.write_errors += 1
            self._note_write_error(exc)
        if not self._failing and exc is not None:
            self._failing = True
            log.error("buffer_write_failed", error=str(exc),
                      held=self._batch.n_held_readings())
        self._bound_held_kpi_and_events()
        limit = HELD_BATCHES * self._max_readings
        excess = self._batch.n_held_readings() - limit
        if excess > 0:
            self._batch.drop_held_readings(excess)
            if not self._unreported_loss:  # once per episode; the total comes with the end
                log.error("readings_dropped_in_memory", readings=excess,
                          reason="store_unwritable",
                          hint="the oldest held readings go until writes work again")
            self._unreported_loss += excess
            self.stats.lost_in_memory += excess

    def _bound_held_kpi_and_events(self) -> None:
        batch = self._batch
        excess = batch.n_held_aggregates() - HELD_AGGREGATES
        if excess > 0:
            batch.drop_held_aggregates(excess)
            if not self._unreported_aggregates:  # once per episode; the total is reported
                log.error("aggregates_dropped_in_memory", reason="store_unwritable",
                          held=HELD_AGGREGATES)
            self._unreported_aggregates += excess
            self.stats.lost_aggregates += excess
        excess = batch.n_held_events() - HELD_EVENTS
        if excess > 0:
            batch.drop_held_events(excess)
            if not self._unreported_events:
                log.error("events_dropped_in_memory", reason="store_unwritable",
                          held=HELD_EVENTS)
            self._unreported_events += excess
            self.stats.lost_events += excess
        if len(batch.steps) > HELD_STEPS:
            # The engine in memory holds what the steps would rebuild after a crash; the
            # first write that works checkpoints it, in the same transaction.
            batch.steps = []
            if not self._journal_lost:
                self._journal_lost = True
                log.warning("kpi_journal_given_up", reason="store_unwritable",
                            steps=HELD_STEPS)

    def health(self) -> BufferHealth:
        """The buffer's health for the gateway's status (wire format §8.1)."""
        reason = self._store.unavailable or self._write_error
        if reason is None:
            return BufferHealth("ok")
        return BufferHealth("unwritable", since=self._unwritable_since,
                            reason=reason[:MAX_BUFFER_REASON_LEN],
                            held_readings=self._batch.n_held_readings(),
                            dropped_readings=self._unreported_loss)

    def _note_write_error(self, exc: BufferFull) -> None:
        # a store whose place is unusable refuses every write: its reason is the one to tell
        self._write_error = None if self._store.unavailable else _reason(exc)

    def _check_health(self) -> None:
        """Call on_health_change when the buffer became unwritable or usable again, or began
        dropping held readings: once per change, so the status is not re-sent every flush."""
        unwritable = (self._store.unavailable or self._write_error) is not None
        if not unwritable:
            self._unwritable_since = None
        elif self._unwritable_since is None:
            self._unwritable_since = int(self._clock() * 1000)
        told = ("unwritable" if unwritable else "ok", unwritable and self._unreported_loss > 0)
        if told == self._health_told:
            return
        self._health_told = told
        if self.on_health_change is not None:
            self.on_health_change()

    def _due(self) -> bool:
        if self._opened_at is None:
            return False
        # Sealed at the last flush before the batch is max_age old: sealing at the first
        # flush after it would keep readings up to a flush interval longer, and, with polls
        # between flushes, take one poll more into every batch (6 s apart instead of 5).
        if len(self._batch) >= self._max_readings:
            return True
        age = self._watch.monotonic() - self._opened_at
        if self._flush_interval <= 0:
            return age >= self._max_age
        return age + self._flush_interval > self._max_age

    def seal(self) -> int | None:
        """Seal the open batch (its readings must all be flushed) as one stored batch, or
        several when it holds more than one may (the caps, BODY_TARGET_BYTES); returns the
        last seq."""
        try:
            return self._seal()
        finally:
            self._check_health()

    def _seal(self) -> int | None:
        batch = self._batch
        if self._recover_upto or batch.holds_content() or batch.is_empty():
            return None
        created = int(self._clock() * 1000)
        readings, events, aggregates = batch.readings, batch.events, batch.aggregates
        try:
            with self._store.sealing(pending_upto=self._pending_upto,
                                     created=created) as sealer:
                self._seal_parts(sealer, readings, events, aggregates)
        except BufferFull as exc:
            self.stats.write_errors += 1
            self._note_write_error(exc)
            log.error("buffer_seal_failed", error=str(exc), readings=len(readings))
            return None
        self._write_error = None
        batch.sealed()
        self._opened_at = None
        if not sealer.seqs:
            return None  # when_full = "drop_newest" dropped it (counted, reported) or no part
        self.stats.batches_sealed += len(sealer.seqs)
        log.debug("batch_sealed", seq=sealer.seqs[-1], batches=len(sealer.seqs),
                  readings=len(readings), events=len(events))
        self._on_sealed()
        return sealer.seqs[-1]

    def _seal_parts(self, sealer: Sealer, readings: list[Reading], events: list[Event],
                    aggregates: list[dict[str, Any]]) -> None:
        """Store readings, events and KPI windows as batches within the caps."""
        cap_r = self._readings_cap
        parts = max(-(-len(readings) // cap_r), -(-len(events) // BATCH_EVENTS_CAP),
                    -(-len(aggregates) // BATCH_AGGREGATES_CAP), 1)
        for i in range(parts):
            self._seal_part(sealer, readings[i * cap_r:(i + 1) * cap_r],
                            events[i * BATCH_EVENTS_CAP:(i + 1) * BATCH_EVENTS_CAP],
                            aggregates[i * BATCH_AGGREGATES_CAP:(i + 1) * BATCH_AGGREGATES_CAP])

    def _seal_part(self, sealer: Sealer, readings: list[Reading], events: list[Event],
                   aggregates: list[dict[str, Any]]) -> None:
        """One batch; halved while it encodes over BODY_TARGET_BYTES or is refused by the
        encoder; what cannot be encoded even alone is dropped, counted and reported."""
        created = sealer.created
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
            payload = encode_batch(batch, codec=self._codec, level=self._level)
            size = _body_size(payload)
            if size > BODY_TARGET_BYTES:
                raise _TooLarge(f"body is {size} bytes, over the {BODY_TARGET_BYTES} a batch "
                                "may hold")
            return payload

        try:
            sealer.add(build, n_readings=len(readings), n_events=len(events),
                       n_aggregates=len(aggregates))
        except WireFormatError as exc:
            items = len(readings) + len(events) + len(aggregates)
            if items > 1:
                if not isinstance(exc, _TooLarge):
                    log.debug("batch_split", error=str(exc)[:200], items=items)
                # halve the items taken in order (readings, events, windows): both halves
                # are smaller, down to a single item
                cut_r = min(len(readings), items // 2)
                cut_e = min(len(events), items // 2 - cut_r)
                cut_a = items // 2 - cut_r - cut_e
                self._seal_part(sealer, readings[:cut_r], events[:cut_e], aggregates[:cut_a])
                self._seal_part(sealer, readings[cut_r:], events[cut_e:], aggregates[cut_a:])
                return
            self.stats.unencodable += 1
            sealer.unencodable(n_readings=len(readings), n_events=len(events),
                               n_aggregates=len(aggregates), error=str(exc))

    def close(self) -> None:
        """Flush, checkpoint the KPI windows, and seal whatever is open (shutdown)."""
        self.flush()
        if self._kpis is not None and not self._batch.steps:
            self._checkpoint()
        self.seal()
        held = self._batch.n_held_readings()
        if held or self._unreported_loss:
            # the store could not be written up to the end: what memory held dies with us
            log.error("readings_lost_at_stop", held=held,
                      dropped_unreported=self._unreported_loss, reason="store_unwritable")

    @property
    def kpis(self) -> LiveKpis | None:
        """The live KPI engine, if KPIs are configured."""
        return self._kpis

    def replace_kpis(self, kpis: LiveKpis | None) -> None:
        """Run the KPI engine ``kpis`` from now on (a reload). The journal of the old engine
        cannot be replayed into the new one: the next flush saves a checkpoint instead."""
        self._kpis = kpis
        self._batch.steps.clear()
        self._journal_lost = kpis is not None

    def retune(self, *, max_readings: int, max_age: float, codec: int, level: int,
               flush_interval: float) -> None:
        """Take over new batching settings (a reload); the open batch goes on."""
        self._max_readings = max_readings
        self._max_age = max_age
        self._codec = codec
        self._level = level
        self._flush_interval = flush_interval
        self._retuned.set()

    @property
    def flush_interval(self) -> float:
        """Seconds between flushes (the loop's, once it runs)."""
        return self._flush_interval

    def _clock_stepped(self, step: ClockStep) -> None:
        """The wall clock stepped by ``step``: what is still open was stamped in this boot on
        the clock before it, so it is wrong by exactly the step. Move those readings and events
        by it, tell the platform (``clock_step``), and seal at once, so that every batch is
        wholly on one clock: those sealed before the step (seq below ``before_seq``) on the old
        one, this one and all later on the new one."""
        ms = step.ms
        self._batch.shift(ms)
        synced = self._watch.synced()
        self.add_event(Event(
            round(step.wall * 1000), "clock_step", None,
            f"step_ms={ms} boot={self._boot} from_seq={self._first_live_seq} "
            f"before_seq={self._store.next_seq()} "
            f"synced={'unknown' if synced is None else str(synced).lower()}"))
        self.flush()
        self.seal()

    async def run(self, flush_interval: float) -> None:
        """Flush every ``flush_interval`` seconds, forever (looking at the clock first, so a
        step is seen even when no device is polled for a while)."""
        self._flush_interval = flush_interval
        while True:
            # a reload may change the interval (retune): the wait in progress ends then
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_interval):
                    await self._retuned.wait()
            self._retuned.clear()
            self._watch.check()
            self.flush()
            self.stats.rounds += 1
