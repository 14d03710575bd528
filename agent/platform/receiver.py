"""The platform side: subscribe to every gateway's batches and status, decode, store.

MQTT comes from :func:`agent.mqtt.subscribe` (the platform never imports the gateway package). It
acknowledges a message when the next one is asked for, so a batch is stored (and committed)
before the broker hears PUBACK; a receiver that dies mid-batch gets it again. A message that
cannot be decoded or stored is set aside in the sink and acknowledged, so it cannot block the
others; a failing sink is retried without acknowledging (``docs/wire-format.md`` §7).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import ssl
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiomqtt
import structlog

from agent.endpoints import BrokerAddress
from agent.errors import ConfigError, UplinkError, WireFormatError
from agent.mqtt import (
    MqttSettings,
    describe_mqtt_error,
    manual_acks,
    new_client,
    subscribe_groups,
)
from agent.password_file import PasswordFileProblem, read_password_file
from agent.platform.jetstream import DEFAULT_CONSUMER, JetStreamSource
from agent.platform.sink import SinkBase, SinkUnavailable, StoreOutcome, open_sink
from agent.wire import Batch, decode_batch, parse_topic

log = structlog.get_logger(__name__)

T = TypeVar("T")

STORE_RETRY_FIRST = 0.5
STORE_RETRY_MAX = 30.0
# Messages already waiting are stored together (one PostgreSQL transaction), at most this
# many, and at most this many readings a transaction.
MAX_GROUP = 100
MAX_GROUP_READINGS = 50_000
MAINTENANCE_SECONDS = 3600.0  # retention, partitions ahead


# The fields ReceiverSettings shares with MqttSettings, by the same names.
_CONNECTION_FIELDS = ("client_id", "username", "password_file", "ca_file", "cert_file",
                      "key_file")


@dataclass(frozen=True)
class ReceiverSettings:
    """Where to listen and where to store.

    When scaling out with ``shared_group``, give every instance its own ``client_id``: the
    broker disconnects a client when another one connects with the same id.
    """

    broker: BrokerAddress | None  # None: read from the NATS cluster ``nats_servers``
    sink_url: str
    topic_prefix: str = "ssc/v1"
    client_id: str = "ssc-receiver"
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    shared_group: str | None = None
    # ``--source``: the NATS servers; receivers of one ``shared_group`` share one durable
    # consumer named after it (docs/platform.md §3)
    nats_servers: tuple[str, ...] = ()
    sink_password_file: Path | None = None
    keep_readings_ms: int | None = None  # retention; None: keep for good
    keep_aggregates_ms: int | None = None

    def mqtt(self) -> MqttSettings:
        """The broker connection these settings name."""
        assert self.broker is not None, "settings for a NATS source have no MQTT broker"
        shared = {name: getattr(self, name) for name in _CONNECTION_FIELDS}
        return MqttSettings(address=self.broker, **shared)

    def jetstream(self) -> JetStreamSource:
        """The JetStream consumer these settings name (``nats_servers`` set)."""
        return JetStreamSource(
            servers=self.nats_servers, consumer=self.shared_group or DEFAULT_CONSUMER,
            topic_prefix=self.topic_prefix, username=self.username,
            password_file=self.password_file, ca_file=self.ca_file, cert_file=self.cert_file,
            key_file=self.key_file)

    @property
    def source_url(self) -> str:
        """Where messages come from, for logs and errors."""
        return self.broker.url if self.broker is not None else ",".join(self.nats_servers)


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


def subscription_topics(prefix: str, shared_group: str | None = None) -> list[str]:
    """The receiver's topic filters, as shared subscriptions when a group is given."""
    prefix = prefix.rstrip("/")
    topics = [f"{prefix}/+/batch", f"{prefix}/+/status"]
    if shared_group is None:
        return topics
    if not shared_group or any(c in shared_group for c in "/+#"):
        raise ValueError(f"shared_group {shared_group!r} must be a non-empty name without / + #")
    return [f"$share/{shared_group}/{t}" for t in topics]


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
            await self._set_aside(None, topic, "bad_topic", str(exc), payload)
            return None
        if kind == "status":
            await self._status(gw, topic, payload)
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


async def _consume(settings: ReceiverSettings, handler: MessageHandler) -> None:
    if settings.broker is None:
        from agent.platform.jetstream import consume

        await consume(settings.jetstream(), handler)
        return
    topics = subscription_topics(settings.topic_prefix, settings.shared_group)
    # Persistent session: the broker queues batches for us while we are away. A group is
    # acknowledged when the next one is asked for: after handle_many stored it.
    groups = subscribe_groups(settings.mqtt(), topics, max_group=MAX_GROUP, clean_session=False)
    try:
        async for messages in groups:
            await handler.handle_many(messages)
    finally:
        if isinstance(groups, AsyncGenerator):
            await groups.aclose()


async def _maintain(settings: ReceiverSettings, sink: SinkBase) -> None:
    """Retention and partitions ahead, at start and every ``MAINTENANCE_SECONDS``; a
    failure (the database away) is logged and tried again at the next round."""
    while True:
        try:
            done = sink.maintain(keep_readings_ms=settings.keep_readings_ms,
                                 keep_aggregates_ms=settings.keep_aggregates_ms)
        except Exception as exc:
            log.warning("sink_maintenance_failed", error=f"{type(exc).__name__}: {exc}"[:300],
                        retry_in=MAINTENANCE_SECONDS)
        else:
            if any(done.values()):
                log.info("sink_maintained", **done)
        await asyncio.sleep(MAINTENANCE_SECONDS)


async def create_session(settings: ReceiverSettings) -> list[str]:
    """Subscribe once under the receiver's client id with a persistent session, then leave.

    Run at deploy time, before any gateway publishes: from then on the broker queues every
    batch for that session, so batches published before a receiver first runs are kept for it
    (a broker keeps nothing for a subscription that does not exist yet); on NATS, the durable
    consumer. Returns the topic filters (the consumer's subject); raises UplinkError (one
    line) when the broker cannot be reached.
    """
    if settings.broker is None:
        from agent.platform.jetstream import create_consumer

        return [await create_consumer(settings.jetstream())]
    topics = subscription_topics(settings.topic_prefix, settings.shared_group)
    try:
        async with new_client(settings.mqtt(), clean_session=False) as client:
            for topic in topics:
                await client.subscribe(topic, qos=1)
    except aiomqtt.MqttError as exc:
        raise UplinkError(f"--broker {settings.broker.url}: "
                          f"{describe_mqtt_error(exc, settings.mqtt())}") from None
    log.info("receiver_session_created", broker=settings.source_url,
             client_id=settings.client_id, topics=topics)
    return topics


RETIRE_IDLE = 2.0  # seconds without a message after which a retiring session is drained


async def retire_session(settings: ReceiverSettings, *, idle: float = RETIRE_IDLE) -> int:
    """Take this receiver (its ``client_id``) out of its group for good, losing nothing.

    A stopped member of a shared subscription keeps its persistent session, and mosquitto
    still hands it its share of the group's messages, queued until it returns (measured:
    with one of two members away, each got 5 of 10). Deleting the session would drop that
    queue, although the gateways were acknowledged. So: connect with the session, unsubscribe
    (nothing new is handed to it), store and acknowledge what was queued until ``idle``
    seconds pass without a message, then connect once with a clean session, which makes the
    broker forget it. Returns the number of messages drained; UplinkError (one line) when the
    broker cannot be reached.
    """
    topics = subscription_topics(settings.topic_prefix, settings.shared_group)
    sink = open_sink(settings.sink_url, password_file=settings.sink_password_file)
    handler = MessageHandler(sink, settings.topic_prefix, ReceiverStats())
    drained = 0
    try:
        client = new_client(settings.mqtt(), clean_session=False)
        acknowledge = manual_acks(client)
        async with client:
            await client.unsubscribe(topics)
            messages = aiter(client.messages)
            while True:
                try:
                    async with asyncio.timeout(idle):
                        message = await anext(messages)
                except TimeoutError:
                    break
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                await handler.handle(str(message.topic), data)
                acknowledge(message)
                drained += 1
        async with new_client(settings.mqtt(), clean_session=True):
            pass
    except aiomqtt.MqttError as exc:
        raise UplinkError(f"--broker {settings.source_url}: "
                          f"{describe_mqtt_error(exc, settings.mqtt())}") from None
    finally:
        sink.close()
    log.info("receiver_session_retired", broker=settings.source_url,
             client_id=settings.client_id, drained=drained)
    return drained


def check_settings(settings: ReceiverSettings) -> None:
    """Raise ConfigError (one line per problem, naming the option) for files that cannot be
    read or loaded: such settings never start working, so retrying them would hide them."""
    problems: list[str] = []
    if settings.password_file is not None:
        path = settings.password_file
        try:
            read_password_file(path)
        except PasswordFileProblem as problem:
            reason = {"unreadable": f"cannot read it: {problem.strerror}",
                      "not_utf8": "is not UTF-8 text", "empty": "is empty"}[problem.kind]
            problems.append(f"--password-file {path}: {reason}")
        if settings.username is None:
            problems.append("--password-file: needs --username")
    if settings.ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(settings.ca_file))
        except (OSError, ssl.SSLError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(f"--ca-file {settings.ca_file}: cannot load CA certificates: {why}")
    if settings.key_file is not None and settings.cert_file is None:
        problems.append("--key-file: needs --cert-file")
    if settings.cert_file is not None:
        try:
            ssl.create_default_context().load_cert_chain(
                str(settings.cert_file), str(settings.key_file) if settings.key_file else None
            )
        except (OSError, ssl.SSLError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(f"--cert-file {settings.cert_file}: cannot load the client "
                            f"certificate (and --key-file {settings.key_file}): {why}")
    if (settings.ca_file or settings.cert_file) and settings.broker is not None and not (
            settings.broker.tls):
        problems.append(f"--broker {settings.broker.url}: TLS files given, but the URL is "
                        "mqtt:// (plain TCP); write mqtts://")
    if problems:
        raise ConfigError(problems)


async def run_receiver(
    settings: ReceiverSettings,
    *,
    stop: asyncio.Event | None = None,
    on_batch: Callable[[Batch, StoreOutcome], None] | None = None,
    stats: ReceiverStats | None = None,
) -> None:
    """Receive until ``stop`` is set (forever without one); ``on_batch`` sees every stored or
    duplicate batch, ``stats`` (if given) is kept up to date."""
    sink = open_sink(settings.sink_url, password_file=settings.sink_password_file)
    handler = MessageHandler(sink, settings.topic_prefix, stats or ReceiverStats(), on_batch)
    log.info(
        "receiver_started",
        broker=settings.source_url,
        sink=sink.description,
        prefix=settings.topic_prefix,
        group=settings.shared_group,
    )
    try:
        async with asyncio.TaskGroup() as tg:
            maintainer = tg.create_task(_maintain(settings, sink), name="receiver-maintain")
            consumer = tg.create_task(_consume(settings, handler), name="receiver-consume")
            if stop is None:
                await consumer
            else:
                await stop.wait()
                consumer.cancel()
            maintainer.cancel()
    finally:
        sink.close()
        log.info(
            "receiver_stopped",
            batches=handler.stats.batches,
            rejected=handler.stats.rejected,
            duplicates=handler.stats.duplicates,
        )


async def run_until_signalled(settings: ReceiverSettings) -> None:
    """Run the receiver until SIGTERM or SIGINT, then stop cleanly: a store in progress is
    finished (it does not wait on anything) or, while the sink is failing, abandoned
    unacknowledged, so the broker delivers that message again; ``receiver_stopped`` is logged."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            log.info("receiver_stopping", signal=sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await run_receiver(settings, stop=stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
