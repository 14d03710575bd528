"""The platform side: subscribe to every gateway's batches and status, decode, store.

MQTT comes from :func:`agent.uplink.subscribe` (the only module that imports aiomqtt). It
acknowledges a message when the next one is asked for, so a batch is stored (and committed)
before the broker hears PUBACK; a receiver that dies mid-batch gets it again.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.endpoints import BrokerAddress
from agent.errors import WireFormatError
from agent.sink import SqliteSink, StoreOutcome
from agent.uplink import MqttSettings, subscribe
from agent.wire import Batch, decode_batch, parse_topic

log = structlog.get_logger(__name__)

STORE_RETRY_FIRST = 0.5
STORE_RETRY_MAX = 30.0


@dataclass(frozen=True)
class ReceiverSettings:
    """Where to listen and where to store.

    When scaling out with ``shared_group``, give every instance its own ``client_id``: the
    broker disconnects a client when another one connects with the same id.
    """

    broker: BrokerAddress
    sink_url: str
    topic_prefix: str = "ssc/v1"
    client_id: str = "ssc-receiver"
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    shared_group: str | None = None


@dataclass
class ReceiverStats:
    """Counters of one receiver run."""

    batches: int = 0
    readings: int = 0
    duplicates: int = 0
    rejected: int = 0
    gaps: int = 0
    gaps_filled: int = 0
    jumps: int = 0
    statuses: int = 0


def subscription_topics(prefix: str, shared_group: str | None = None) -> list[str]:
    """The receiver's topic filters, as shared subscriptions when a group is given."""
    prefix = prefix.rstrip("/")
    topics = [f"{prefix}/+/batch", f"{prefix}/+/status"]
    if shared_group is None:
        return topics
    if not shared_group or any(c in shared_group for c in "/+#"):
        raise ValueError(f"shared_group {shared_group!r} must be a non-empty name without / + #")
    return [f"$share/{shared_group}/{t}" for t in topics]


class MessageHandler:
    """Decodes and stores one message at a time; never raises for a bad payload."""

    def __init__(
        self,
        sink: SqliteSink,
        prefix: str,
        stats: ReceiverStats,
        on_batch: Callable[[Batch, StoreOutcome], None] | None = None,
    ) -> None:
        self._sink = sink
        self._prefix = prefix
        self.stats = stats
        self._on_batch = on_batch

    def _reject(self, event: str, topic: str, payload: bytes, error: str) -> None:
        self.stats.rejected += 1
        log.warning(event, topic=topic, size=len(payload), error=error)

    async def handle(self, topic: str, payload: bytes) -> None:
        """Decode, store and log one message."""
        try:
            gw, kind = parse_topic(self._prefix, topic)
        except WireFormatError as exc:
            self._reject("message_rejected", topic, payload, str(exc))
            return
        if kind == "status":
            self._status(gw, topic, payload)
            return
        try:
            batch = decode_batch(payload)
        except WireFormatError as exc:
            self._reject("batch_rejected", topic, payload, str(exc))
            return
        if batch.gw != gw:
            # Broker ACLs are per topic: a gateway must not write into another one's data.
            self._reject(
                "batch_rejected",
                topic,
                payload,
                f"topic names gateway {gw!r}, the batch {batch.gw!r}",
            )
            return
        outcome = await self._store(batch, topic, payload)
        if outcome is None:
            return
        self._log_outcome(batch, outcome)
        if self._on_batch is not None:
            try:
                self._on_batch(batch, outcome)
            except Exception as exc:  # a caller's hook must not stop the receiver
                log.exception("on_batch_failed", gw=batch.gw, seq=batch.seq, error=str(exc))

    def _status(self, gw: str, topic: str, payload: bytes) -> None:
        if not payload:
            log.info("gateway_status_cleared", gw=gw)  # someone removed the retained message
            return
        try:
            status = self._sink.store_status(gw, payload)
        except WireFormatError as exc:
            self._reject("status_rejected", topic, payload, str(exc))
            return
        self.stats.statuses += 1
        log.info(
            "gateway_status", gw=gw, state=status.state, boot=status.boot, version=status.version
        )

    async def _store(self, batch: Batch, topic: str, payload: bytes) -> StoreOutcome | None:
        # Disk full, database locked, I/O error: keep the batch unacknowledged and retry, so it
        # is not lost. Anything else cannot succeed on retry and must not wedge the receiver.
        delay = STORE_RETRY_FIRST
        failing = False
        while True:
            try:
                outcome = self._sink.store(batch)
            except sqlite3.OperationalError as exc:
                if not failing:
                    log.error("sink_unavailable", gw=batch.gw, seq=batch.seq, error=str(exc))
                    failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX)
                continue
            except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
                self._reject("batch_store_failed", topic, payload, f"{type(exc).__name__}: {exc}")
                return None
            if failing:
                log.info("sink_restored", gw=batch.gw, seq=batch.seq)
            return outcome

    def _log_outcome(self, batch: Batch, outcome: StoreOutcome) -> None:
        if outcome.duplicate:
            self.stats.duplicates += 1
            if outcome.conflict:
                log.warning(
                    "seq_reused",
                    gw=batch.gw,
                    store=batch.store,
                    seq=batch.seq,
                    boot=batch.boot,
                    hint="the same store sent a different batch under this seq; dropped",
                )
            else:
                log.info("batch_duplicate", gw=batch.gw, store=batch.store, seq=batch.seq)
            return
        self.stats.batches += 1
        self.stats.readings += batch.n_readings
        log.info(
            "batch_stored",
            gw=batch.gw,
            store=batch.store,
            seq=batch.seq,
            readings=batch.n_readings,
            aggregates=len(batch.aggregates),
        )
        if outcome.jump is not None:
            self.stats.jumps += 1
            log.warning(
                "seq_jump",
                gw=batch.gw,
                store=batch.store,
                seq=batch.seq,
                highest_in_line=outcome.jump[0],
                hint="stored; no gap opened until a next batch confirms the jump",
            )
        if outcome.jump_confirmed is not None:
            log.warning("seq_jump_confirmed", gw=batch.gw, store=batch.store,
                        seq=outcome.jump_confirmed)
        for first, last in outcome.new_gaps:
            self.stats.gaps += 1
            log.warning("seq_gap", gw=batch.gw, store=batch.store, first=first, last=last)
        for seq in outcome.filled:
            self.stats.gaps_filled += 1
            log.info("seq_gap_filled", gw=batch.gw, store=batch.store, seq=seq)


async def _consume(settings: ReceiverSettings, handler: MessageHandler) -> None:
    mqtt = MqttSettings(
        address=settings.broker,
        client_id=settings.client_id,
        username=settings.username,
        password_file=settings.password_file,
        ca_file=settings.ca_file,
    )
    topics = subscription_topics(settings.topic_prefix, settings.shared_group)
    # Persistent session: the broker queues batches for us while we are away.
    messages = subscribe(mqtt, topics, clean_session=False)
    try:
        async for topic, payload in messages:
            await handler.handle(topic, payload)
    finally:
        if isinstance(messages, AsyncGenerator):
            await messages.aclose()


async def run_receiver(
    settings: ReceiverSettings,
    *,
    stop: asyncio.Event | None = None,
    on_batch: Callable[[Batch, StoreOutcome], None] | None = None,
    stats: ReceiverStats | None = None,
) -> None:
    """Receive until ``stop`` is set (forever without one); ``on_batch`` sees every stored or
    duplicate batch, ``stats`` (if given) is kept up to date."""
    sink = SqliteSink.open(settings.sink_url)
    handler = MessageHandler(sink, settings.topic_prefix, stats or ReceiverStats(), on_batch)
    log.info(
        "receiver_started",
        broker=settings.broker.url,
        sink=str(sink.path),
        prefix=settings.topic_prefix,
        group=settings.shared_group,
    )
    try:
        if stop is None:
            await _consume(settings, handler)
            return
        async with asyncio.TaskGroup() as tg:
            consumer = tg.create_task(_consume(settings, handler), name="receiver-consume")
            await stop.wait()
            consumer.cancel()
    finally:
        sink.close()
        log.info(
            "receiver_stopped",
            batches=handler.stats.batches,
            rejected=handler.stats.rejected,
            duplicates=handler.stats.duplicates,
        )
