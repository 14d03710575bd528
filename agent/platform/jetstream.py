"""Receiving from a NATS cluster (``receive --source nats://…``): the gateways publish over MQTT
to any node, the receivers read through one durable JetStream pull consumer, as a work queue.

Which stream, and why (docs/platform.md §3.2): NATS's MQTT side writes every QoS 1 PUBLISH into
its own stream ``$MQTT_msgs`` (subject ``$MQTT.msgs.<subject>``, MQTT ``/`` → NATS ``.``) and
sends the PUBACK only once JetStream has stored it, replicated by the stream's quorum. A stream
of our own on ``ssc.v1.*.batch`` is fed by a plain NATS publish after that and is not waited
for: while its leader is being re-elected after a node loss, batches the gateways saw
acknowledged never reach it (measured: 450 of 600). So the receivers' consumer is on
``$MQTT_msgs``. That stream keeps a message while a consumer is interested in it: the durable
consumer must exist before gateways publish (``--create-session`` at deploy time).

A message is acknowledged after the sink stored it (or set it aside); one not acknowledged
within ``ACK_WAIT`` is delivered again, to any receiver of the consumer, and the sink drops the
duplicate by ``(gw, seq)``.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from agent.endpoints import MAX_HOST_CHARS
from agent.errors import UplinkError
from agent.password_file import PasswordFileProblem, read_password_file

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from agent.platform.handler import MessageHandler

log = structlog.get_logger(__name__)

STREAM = "$MQTT_msgs"
SUBJECT_HEAD = "$MQTT.msgs."
DEFAULT_CONSUMER = "ssc-receiver"
ACK_WAIT = 30.0  # seconds a delivered message may stay unacknowledged before redelivery
FETCH_BATCH = 64
# How long a fetch waits for its batch to fill: nats-py keeps waiting after the first message
# until FETCH_BATCH have come or this ends, so it bounds the lag a quiet stream adds (with 2 s,
# two receivers on a paced stream had a p99 lag of 1.1-1.9 s; 0.25 s: 260-330 ms).
FETCH_WAIT = 0.25
RETRY_FIRST = 0.5
RETRY_MAX = 5.0
SCHEMES = ("nats", "tls")


def parse_source(text: str) -> tuple[str, ...]:
    """``nats://h:p[,nats://h2:p2…]`` → the server URLs; ValueError naming the bad element.
    All must agree on TLS (``tls://``) or not; credentials belong in files, not URLs."""
    urls = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not url for url in urls):
        raise ValueError(f"{text[:200]!r}: write nats://HOST:PORT[,nats://HOST:PORT…]")
    for index, url in enumerate(urls, 1):
        where = f"element {index} ({url[:100]!r})"
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ValueError(f"{where}: a source URL starts with nats:// or tls://")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"{where}: put no credentials in the URL: use --username and "
                             "--password-file")
        if not parts.hostname or len(parts.hostname) > MAX_HOST_CHARS:
            raise ValueError(f"{where}: names no valid host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{where}: a source URL has only a host and a port")
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise ValueError(f"{where}: the port must be a number from 1 to 65535")
    if len({urlsplit(url).scheme for url in urls}) > 1:
        raise ValueError(f"{text[:200]!r}: mixes nats:// and tls://; all servers must agree")
    return tuple(urls)


async def _quiet(exc: Exception) -> None:
    log.debug("nats_client_error", error=f"{type(exc).__name__}: {exc}"[:300])


def client_missing() -> str | None:
    """Why ``--source`` cannot work in this installation (nats-py absent), or None."""
    try:
        import nats  # noqa: F401  # the receiver imports it when it connects
    except ImportError:
        return ("needs the NATS client: pip install 'ssc-edge-agent[platform]' (nats-py), "
                "or use --broker")
    return None


def consumer_subject(prefix: str) -> str:
    """The consumer's filter: every topic under ``prefix``, as ``$MQTT_msgs`` names it."""
    return SUBJECT_HEAD + prefix.strip("/").replace("/", ".") + ".>"


def topic_of(subject: str) -> str:
    """The MQTT topic a ``$MQTT.msgs.…`` subject was published on."""
    return subject.removeprefix(SUBJECT_HEAD).replace(".", "/")


@dataclass(frozen=True)
class JetStreamSource:
    """Where the receivers' consumer is and how to log in."""

    servers: tuple[str, ...]
    consumer: str = DEFAULT_CONSUMER
    topic_prefix: str = "ssc/v1"
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def connect_options(self) -> dict[str, Any]:
        """nats-py connect options; the password is read from its file now."""
        options: dict[str, Any] = {
            "servers": list(self.servers), "name": self.consumer,
            "max_reconnect_attempts": -1, "reconnect_time_wait": 0.5,
            "connect_timeout": 5, "allow_reconnect": True,
            # nats-py logs a traceback per failed attempt otherwise; ours log one line
            "error_cb": _quiet,
        }
        if self.username is not None:
            options["user"] = self.username
        if self.password_file is not None:
            try:
                options["password"] = read_password_file(self.password_file)
            except PasswordFileProblem as problem:
                raise UplinkError(f"--password-file {self.password_file}: "
                                  f"{problem.reason}") from None
        if self.servers[0].startswith("tls://") or self.ca_file is not None:
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file else None)
            if self.cert_file is not None:
                context.load_cert_chain(str(self.cert_file),
                                        str(self.key_file) if self.key_file else None)
            options["tls"] = context
        return options


async def ensure_consumer(js: JetStreamContext, source: JetStreamSource) -> None:
    """Create the durable consumer if it is absent (idempotent: every receiver calls it)."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    try:
        await js.consumer_info(STREAM, source.consumer)
        return
    except NotFoundError:
        pass
    await js.add_consumer(STREAM, ConsumerConfig(
        durable_name=source.consumer,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=consumer_subject(source.topic_prefix),
        max_ack_pending=10_000,
    ))
    log.info("jetstream_consumer_created", stream=STREAM, consumer=source.consumer,
             subject=consumer_subject(source.topic_prefix))


async def create_consumer(source: JetStreamSource) -> str:
    """``--create-session`` on NATS: make the durable consumer now and leave; raises
    UplinkError (one line) when the cluster or its MQTT stream is not there."""
    import nats
    from nats.js.errors import NotFoundError

    try:
        # one more round over the servers, then give up (0 would mean forever in nats-py)
        nc = await nats.connect(**{**source.connect_options(), "max_reconnect_attempts": 1,
                                   "reconnect_time_wait": 0.2})
    except (OSError, nats.errors.Error) as exc:
        raise UplinkError(f"--source {','.join(source.servers)}: cannot connect: "
                          f"{type(exc).__name__}: {exc}") from None
    try:
        await ensure_consumer(nc.jetstream(), source)
    except NotFoundError:
        raise UplinkError(f"--source: stream {STREAM} does not exist yet: NATS creates it at "
                          "the first MQTT connection; connect any MQTT client once (e.g. "
                          "mosquitto_sub -C 1 -W 1 -t x), then run this again") from None
    except (OSError, nats.errors.Error) as exc:
        raise UplinkError(f"--source: cannot create consumer {source.consumer!r}: "
                          f"{type(exc).__name__}: {exc}") from None
    finally:
        await nc.close()
    return consumer_subject(source.topic_prefix)


async def consume(source: JetStreamSource, handler: MessageHandler) -> None:
    """Fetch, store, acknowledge; forever. Node losses and elections are waited out: a
    condition is logged when it starts and when it ends."""
    import nats

    task = asyncio.current_task()

    def stop_if_cancelled() -> None:
        # nats-py's fetch can swallow a cancellation that lands in its own wait (seen as a
        # receiver that did not stop); the task still counts the request, so honour it here.
        if task is not None and task.cancelling():
            raise asyncio.CancelledError

    nc = await _connect(source)
    js = nc.jetstream()
    failing: str | None = None
    delay = RETRY_FIRST
    try:
        while True:
            try:
                await ensure_consumer(js, source)
                puller = await js.pull_subscribe_bind(source.consumer, stream=STREAM)
                log.info("jetstream_subscribed", stream=STREAM, consumer=source.consumer)
                while True:
                    stop_if_cancelled()
                    try:
                        messages = await puller.fetch(FETCH_BATCH, timeout=FETCH_WAIT)
                    except nats.errors.TimeoutError:
                        messages = []
                    # not handled: delivered again after ACK_WAIT, to any receiver
                    stop_if_cancelled()
                    if failing is not None:
                        log.info("jetstream_restored", consumer=source.consumer)
                        failing, delay = None, RETRY_FIRST
                    if not messages:
                        continue
                    # fetched together, stored together (one transaction of a PostgreSQL sink)
                    await handler.handle_many([(topic_of(m.subject), m.data) for m in messages])
                    for message in messages:
                        # after the commit: a lost ack only means a duplicate, dropped by seq
                        await message.ack()
            except (nats.errors.Error, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
                stop_if_cancelled()
                if failing is None:
                    log.warning("jetstream_unavailable", consumer=source.consumer, error=error,
                                hint="unacknowledged messages are delivered again; retrying")
                    failing = error
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
    finally:
        await nc.close()


async def _connect(source: JetStreamSource) -> Any:
    """Connected to one of the servers; nats-py tries them in turn until one answers (and
    reconnects to the others after a node loss)."""
    import nats

    return await nats.connect(**source.connect_options())
