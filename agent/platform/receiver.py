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
import ssl
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import structlog

from agent.endpoints import BrokerAddress
from agent.errors import ConfigError, UplinkError
from agent.mqtt import (
    MqttSettings,
    describe_mqtt_error,
    manual_acks,
    new_client,
    subscribe_groups,
)
from agent.password_file import PasswordFileProblem, read_password_file
from agent.platform.handler import (
    MAX_GROUP,
    MessageHandler,
    ReceiverStats,
    _by_readings,
    is_sink_fault,
)
from agent.platform.jetstream import DEFAULT_CONSUMER, JetStreamSource
from agent.platform.sink import SinkBase, StoreOutcome, open_sink
from agent.wire import Batch

log = structlog.get_logger(__name__)

# What the receiver's callers and tests reach through this module.
__all__ = [
    "MessageHandler",
    "ReceiverSettings",
    "ReceiverStats",
    "_by_readings",
    "check_settings",
    "create_session",
    "is_sink_fault",
    "retire_session",
    "run_receiver",
    "run_until_signalled",
    "subscription_topics",
]

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


def subscription_topics(prefix: str, shared_group: str | None = None) -> list[str]:
    """The receiver's topic filters, as shared subscriptions when a group is given."""
    prefix = prefix.rstrip("/")
    topics = [f"{prefix}/+/batch", f"{prefix}/+/status", f"{prefix}/+/health"]
    if shared_group is None:
        return topics
    if not shared_group or any(c in shared_group for c in "/+#"):
        raise ValueError(f"shared_group {shared_group!r} must be a non-empty name without / + #")
    return [f"$share/{shared_group}/{t}" for t in topics]


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
