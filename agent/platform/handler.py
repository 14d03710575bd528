"""Storing what the receiver gets: :class:`MessageHandler` decodes each message, stores the
batches already waiting together in one transaction, sets aside what cannot be stored (and
acknowledges it), retries a failing sink without acknowledging, and logs a burst of bad
messages once. :class:`ReceiverStats` counts what happened. The receiver
(:mod:`agent.platform.receiver`) feeds it from MQTT or JetStream.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from agent.errors import WireFormatError
from agent.platform.sink import SinkBase, SinkUnavailable, StoreOutcome
from agent.wire import Batch, decode_batch, parse_topic
from agent.wire.config_push import is_config_topic

log = structlog.get_logger("agent.platform.receiver")

T = TypeVar("T")

STORE_RETRY_FIRST = 0.5
STORE_RETRY_MAX = 30.0
# Messages already waiting are stored together (one PostgreSQL transaction), at most this
# many, and at most this many readings a transaction.
MAX_GROUP = 100
MAX_GROUP_READINGS = 50_000


@dataclass
class ReceiverStats:
    """Counters of one receiver run."""

    batches: int = 0  # batches stored for the first time
    readings: int = 0  # readings in them
    duplicates: int = 0  # redelivered batches, acknowledged and not stored again
    rejected: int = 0  # messages set aside as undecodable or over the limits
    gaps: int = 0  # seq gaps opened (batches missing so far)
    gaps_filled: int = 0  # gaps a late batch closed
    jumps: int = 0  # seq jumps seen (a gap opens only once a next batch confirms one)
    statuses: int = 0  # status messages recorded
    health_summaries: int = 0  # health summaries recorded (the newest of each gateway kept)
    config_messages: int = 0  # remote-configuration messages passed over (config/set, state)


# SQLite primary result codes that blame the sink (disk full, locked, I/O error, a broken or
# read-only file), not the message: the message stays unacknowledged and is retried.
_SINK_FAULTS = frozenset({
    1,  # SQLITE_ERROR: e.g. a table missing from the file, not something a payload causes
    3, 4, 5, 6, 7, 8, 9, 10, 11,  # PERM ABORT BUSY LOCKED NOMEM READONLY INTERRUPT IOERR CORRUPT
    13, 14, 15, 26,  # FULL CANTOPEN PROTOCOL NOTADB
})
# A burst of set-aside messages of one gateway and kind is logged when it starts, then at most
# once per this many seconds (with a count), and once when a good message of it arrives.
SET_ASIDE_REPORT_SECONDS = 60.0
MAX_BURSTS = 1000


def is_sink_fault(exc: BaseException) -> bool:
    """True when ``exc`` says the sink cannot take anything now (retry, do not acknowledge);
    False when it is this message that cannot be stored (set it aside)."""
    if isinstance(exc, SinkUnavailable):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None:
            return isinstance(exc, sqlite3.OperationalError)
        return (code & 0xFF) in _SINK_FAULTS
    return isinstance(exc, OSError | MemoryError)


@dataclass
class _Burst:
    unreported: int  # set aside since the last line
    reported_at: float


class MessageHandler:
    """Decodes and stores one message at a time.

    :meth:`handle` returns once the message is stored or set aside (kept in the sink's
    ``rejected`` table with its reason), and only then is it acknowledged; while the sink
    itself fails (disk full, locked) it retries, so the message stays unacknowledged and a
    receiver stopped meanwhile gets it again. It raises nothing but cancellation.
    """

    def __init__(
        self,
        sink: SinkBase,
        prefix: str,
        stats: ReceiverStats,
        on_batch: Callable[[Batch, StoreOutcome], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._prefix = prefix
        self.stats = stats
        self._on_batch = on_batch
        self._clock = clock
        self._bursts: dict[tuple[str, str], _Burst] = {}

    async def handle(self, topic: str, payload: bytes) -> None:
        """Decode, store (or set aside) and log one message."""
        try:
            await self._handle(topic, payload)
        except Exception as exc:  # a bug: the message must still not block the others
            log.exception("message_handling_failed", topic=topic[:200], error=str(exc)[:300])
            await self._set_aside(None, topic, "internal_error",
                                  f"{type(exc).__name__}: {exc}", payload)

    async def handle_many(self, messages: list[tuple[str, bytes]]) -> None:
        """:meth:`handle` for messages that were waiting together: their batches go to the
        sink together (one transaction of a PostgreSQL sink, up to ``MAX_GROUP_READINGS``);
        when one of them cannot be stored, each is stored alone, so only that one is set
        aside. Returns once all are stored or set aside; raises nothing but cancellation."""
        try:
            await self._handle_many(messages)
        except Exception as exc:  # a bug: handle them one by one (a stored batch is a no-op)
            log.exception("message_handling_failed", messages=len(messages),
                          error=str(exc)[:300])
            for topic, payload in messages:
                await self.handle(topic, payload)

    async def _handle_many(self, messages: list[tuple[str, bytes]]) -> None:
        decoded: list[tuple[str, bytes, Batch]] = []
        for topic, payload in messages:
            try:
                batch = await self._decode(topic, payload)
            except Exception as exc:  # a bug: the message must still not block the others
                log.exception("message_handling_failed", topic=topic[:200], error=str(exc)[:300])
                await self._set_aside(None, topic, "internal_error",
                                      f"{type(exc).__name__}: {exc}", payload)
                continue
            if batch is not None:
                decoded.append((topic, payload, batch))
        for group in _by_readings(decoded, MAX_GROUP_READINGS):
            if len(group) > 1 and await self._store_together([b for _, _, b in group]):
                continue
            for topic, payload, batch in group:
                await self.handle_decoded(topic, payload, batch)

    async def _store_together(self, batches: list[Batch]) -> bool:
        """Store batches in one go; False (nothing stored) when one of them cannot be."""
        try:
            outcomes = await self._with_sink(None, lambda: self._sink.store_many(batches))
        except Exception as exc:
            log.info("batches_stored_one_by_one", batches=len(batches),
                     error=f"{type(exc).__name__}: {exc}"[:300],
                     hint="one of them cannot be stored; it is found and set aside")
            return False
        for batch, outcome in zip(batches, outcomes, strict=True):
            self._stored(batch, outcome)
        return True

    async def handle_decoded(self, topic: str, payload: bytes, batch: Batch) -> None:
        """Store (or set aside) one decoded batch."""
        try:
            outcome = await self._with_sink(batch.gw, lambda: self._sink.store(batch))
        except Exception as exc:  # this batch cannot be stored (too big a value, …)
            await self._set_aside(batch.gw, topic, "unstorable",
                                  f"{type(exc).__name__}: {exc}", payload)
            return
        self._stored(batch, outcome)

    async def _handle(self, topic: str, payload: bytes) -> None:
        batch = await self._decode(topic, payload)
        if batch is not None:
            await self.handle_decoded(topic, payload, batch)

    async def _decode(self, topic: str, payload: bytes) -> Batch | None:
        """The batch a message holds; None when it was something else (a status, stored
        here) or was set aside."""
        try:
            gw, kind = parse_topic(self._prefix, topic)
        except WireFormatError as exc:
            if is_config_topic(self._prefix, topic):
                self.stats.config_messages += 1  # not data: acknowledged and passed over
                return None
            await self._set_aside(None, topic, "bad_topic", str(exc), payload)
            return None
        if kind == "status":
            await self._status(gw, topic, payload)
            return None
        if kind == "health":
            await self._health(gw, topic, payload)
            return None
        try:
            batch = decode_batch(payload)
        except WireFormatError as exc:
            await self._set_aside(gw, topic, "undecodable", str(exc), payload)
            return None
        if batch.gw != gw:
            # Broker ACLs are per topic: a gateway must not write into another one's data.
            await self._set_aside(gw, topic, "wrong_gateway",
                                  f"topic names gateway {gw!r}, the batch {batch.gw!r}", payload)
            return None
        return batch

    def _stored(self, batch: Batch, outcome: StoreOutcome) -> None:
        self._good(batch.gw)
        self._log_outcome(batch, outcome)
        if self._on_batch is not None:
            try:
                self._on_batch(batch, outcome)
            except Exception as exc:  # a caller's hook must not stop the receiver
                log.exception("on_batch_failed", gw=batch.gw, seq=batch.seq, error=str(exc))

    async def _health(self, gw: str, topic: str, payload: bytes) -> None:
        """A retained health summary (every minute per gateway: stored, not logged)."""
        if not payload:
            return  # someone removed the retained message
        try:
            await self._with_sink(gw, lambda: self._sink.store_health(gw, payload))
        except Exception as exc:
            await self._set_aside(gw, topic, "bad_health", str(exc), payload)
            return
        self._good(gw)
        self.stats.health_summaries += 1

    async def _status(self, gw: str, topic: str, payload: bytes) -> None:
        if not payload:
            log.info("gateway_status_cleared", gw=gw)  # someone removed the retained message
            return
        try:
            status = await self._with_sink(gw, lambda: self._sink.store_status(gw, payload))
        except Exception as exc:
            await self._set_aside(gw, topic, "bad_status", str(exc), payload)
            return
        self._good(gw)
        self.stats.statuses += 1
        buffer = status.buffer
        log.info(
            "gateway_status", gw=gw, state=status.state, boot=status.boot, version=status.version,
            buffer=None if buffer is None else buffer.state,
            **({} if buffer is None or buffer.state == "ok" else {
                "buffer_reason": buffer.reason, "held_readings": buffer.held_readings,
                "dropped_readings": buffer.dropped_readings}),
        )

    async def _with_sink(self, gw: str | None, call: Callable[[], T]) -> T:
        """``call()`` until it succeeds or fails for a reason of its own (raised); while the
        sink is at fault, retry with backoff and keep the message unacknowledged."""
        delay = STORE_RETRY_FIRST
        failing = False
        while True:
            try:
                result = call()
            except Exception as exc:
                if not is_sink_fault(exc):
                    raise
                if not failing:
                    log.error("sink_unavailable", gw=gw, error=f"{type(exc).__name__}: {exc}",
                              hint="the message stays unacknowledged; retrying")
                    failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX)
                continue
            if failing:
                log.info("sink_restored", gw=gw)
            return result

    async def _set_aside(
        self, gw: str | None, topic: str, kind: str, reason: str, payload: bytes
    ) -> None:
        try:
            await self._with_sink(
                gw, lambda: self._sink.set_aside(gw, topic, kind, reason, payload)
            )
        except Exception as exc:
            log.exception("set_aside_failed", gw=gw, kind=kind, error=str(exc)[:300])
        self.stats.rejected += 1
        self._note_burst(gw, topic, kind, reason, len(payload))

    def _note_burst(self, gw: str | None, topic: str, kind: str, reason: str, size: int) -> None:
        key = (gw or "", kind)
        now = self._clock()
        burst = self._bursts.get(key)
        if burst is None:
            if len(self._bursts) >= MAX_BURSTS:
                del self._bursts[next(iter(self._bursts))]
            self._bursts[key] = _Burst(0, now)
            log.warning("message_set_aside", gw=gw, kind=kind, topic=topic[:200], size=size,
                        error=reason[:300],
                        hint="kept in the sink's rejected table and acknowledged; more of this "
                        "gateway and kind are counted, not logged one by one")
            return
        burst.unreported += 1
        if now - burst.reported_at >= SET_ASIDE_REPORT_SECONDS:
            log.warning("messages_set_aside", gw=gw, kind=kind, count=burst.unreported,
                        last_error=reason[:300])
            burst.unreported = 0
            burst.reported_at = now

    def _good(self, gw: str) -> None:
        """A message of ``gw`` was stored: its bursts of set-aside messages are over."""
        for key in [k for k in self._bursts if k[0] == gw]:
            burst = self._bursts.pop(key)
            log.info("messages_set_aside_ended", gw=gw, kind=key[1], unreported=burst.unreported)

    def _log_outcome(self, batch: Batch, outcome: StoreOutcome) -> None:
        batch_log = log.bind(gw=batch.gw, store=batch.store, seq=batch.seq)
        if outcome.duplicate:
            self.stats.duplicates += 1
            if outcome.conflict:
                batch_log.warning(
                    "seq_reused", boot=batch.boot,
                    hint="the same store sent a different batch under this seq; dropped")
            else:
                batch_log.info("batch_duplicate")
            return
        self.stats.batches += 1
        self.stats.readings += batch.n_readings
        batch_log.info(
            "batch_stored", readings=batch.n_readings, aggregates=len(batch.aggregates),
            # moved onto the clock after a step of its boot stored earlier (wire-format §7.1)
            **({"clock_shift_ms": outcome.clock_shift_ms} if outcome.clock_shift_ms else {}),
        )
        if outcome.jump is not None:
            self.stats.jumps += 1
            batch_log.warning(
                "seq_jump", highest_in_line=outcome.jump[0],
                hint="stored; no gap opened until a next batch confirms the jump")
        if outcome.jump_confirmed is not None:
            log.warning("seq_jump_confirmed", gw=batch.gw, store=batch.store,
                        seq=outcome.jump_confirmed)
        for first, last in outcome.new_gaps:
            self.stats.gaps += 1
            log.warning("seq_gap", gw=batch.gw, store=batch.store, first=first, last=last)
        for seq in outcome.filled:
            self.stats.gaps_filled += 1
            log.info("seq_gap_filled", gw=batch.gw, store=batch.store, seq=seq)
        for applied in outcome.clock_steps:
            log.info("clock_step_applied", gw=batch.gw, store=batch.store,
                     boot=applied.step.boot, from_seq=applied.step.from_seq,
                     before_seq=applied.step.before_seq,
                     step_ms=applied.step.step_ms, batches=applied.batches,
                     readings=applied.readings)
        if outcome.unreadable_clock_steps:
            log.warning("clock_step_unreadable", gw=batch.gw, store=batch.store, seq=batch.seq,
                        events=outcome.unreadable_clock_steps,
                        hint="stored as events; no time corrected")


def _by_readings(items: list[tuple[str, bytes, Batch]], most: int
                 ) -> list[list[tuple[str, bytes, Batch]]]:
    """``items`` in consecutive groups of at most ``most`` readings (a bigger batch alone)."""
    groups: list[list[tuple[str, bytes, Batch]]] = []
    total = 0
    for item in items:
        n = item[2].n_readings
        if not groups or total + n > most:  # a batch without readings opens a group too
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += n
    return groups
