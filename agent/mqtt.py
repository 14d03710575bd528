"""MQTT connections the gateway's uplink and the platform's receiver share: the settings, a
fresh client per connection (login, TLS), one-line connection errors, reconnect waits, and the
receiver's subscription with its manual acknowledgement.

The settings, password, TLS context, error lines and reconnect waits serve both sides; the
clients here are aiomqtt's, for the platform side only: the gateway's uplink speaks through its
own client (``agent/gateway/mqtt_client.py``), so aiomqtt is imported only when a function
below that needs it runs, never by ``ssc-agent run``. Facts these rely on, verified against
aiomqtt 2.5 / paho 2.2 (docs/protocols.md §2):

- A client is never re-entered after a disconnect: every connection gets a new ``Client``.
- aiomqtt has no manual acknowledgement; paho 2.x has (``manual_ack_set``, ``ack(mid, qos)``).
  :func:`manual_acks` is the one place that reaches paho through aiomqtt's private client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent.endpoints import BrokerAddress
from agent.errors import UplinkError
from agent.password_file import PasswordFileProblem, read_password_file

if TYPE_CHECKING:
    import aiomqtt

log = structlog.get_logger(__name__)

# Reconnect waits (``[uplink] reconnect_min`` / ``reconnect_max``): each wait is drawn
# uniformly between the minimum and a ceiling that doubles from it up to the maximum, so a
# gateway tries again at most RECONNECT_MAX after the broker is back, and a fleet that lost the
# broker together spreads its reconnects over [min, max] instead of arriving in lockstep.
RECONNECT_MIN = 0.5
RECONNECT_MAX = 5.0


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the broker; secrets stay in files until a connection needs them."""

    address: BrokerAddress
    client_id: str
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: float = 30.0
    timeout: float = 20.0


def read_password(path: Path) -> str:
    try:
        return read_password_file(path)
    except PasswordFileProblem as problem:
        if problem.kind == "unreadable":
            raise UplinkError(f"cannot read password_file {path}: {problem.strerror}") from None
        raise UplinkError(f"password_file {path} {problem.reason}") from None


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    if not settings.address.tls:
        return None
    try:
        context = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise UplinkError(
            f"ca_file {settings.ca_file}: cannot load CA certificates: {exc}"
        ) from None
    if settings.cert_file is not None:
        try:
            context.load_cert_chain(
                str(settings.cert_file), str(settings.key_file) if settings.key_file else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise UplinkError(
                f"cert_file {settings.cert_file} / key_file {settings.key_file}: "
                f"cannot load the client certificate: {exc}"
            ) from None
    return context


class TransportErrors(logging.Handler):
    """paho's last error line of a connection attempt.

    A broker that rejects our client certificate does so after the TLS handshake looks done to
    us; paho then fails on the socket and logs why, but aiomqtt keeps waiting for a CONNACK and
    reports only a timeout. This handler keeps what paho said, so the error can name the cause.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: str | None = None
        # not registered with logging's manager (one per uplink, freed with it), no parents
        self.logger = logging.Logger("ssc.mqtt", logging.ERROR)
        self.logger.propagate = False
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


def new_client(settings: MqttSettings, *, will: aiomqtt.Will | None = None,
                  clean_session: bool | None = None, max_inflight: int | None = None,
               errors: TransportErrors | None = None) -> aiomqtt.Client:
    """A client for one connection (never re-entered after a disconnect); the password is read
    from its file now, so a rotated password is used at the next connection."""
    import aiomqtt  # the platform side's client: not loaded by `ssc-agent run`

    password = read_password(settings.password_file) if settings.password_file else None
    if errors is not None:
        errors.last = None
    client = aiomqtt.Client(
        settings.address.host,
        settings.address.port,
        username=settings.username,
        password=password,
        identifier=settings.client_id,
        will=will,
        clean_session=clean_session,
        keepalive=max(1, round(settings.keepalive)),
        timeout=settings.timeout,
        max_inflight_messages=max_inflight,
        tls_context=tls_context(settings),
        logger=errors.logger if errors is not None else None,
    )
    if max_inflight is not None:
        # paho warns once per publish above this threshold; our window is deliberate.
        client.pending_calls_threshold = max_inflight + 1
    return client


def describe_mqtt_error(exc: BaseException, settings: MqttSettings,
                        transport: str | None = None) -> str:
    """One line for a connection failure, naming the file when TLS is the cause; no secrets.
    ``transport`` is what paho logged of the attempt (see :class:`TransportErrors`)."""
    text = str(exc) if transport is None else f"{exc} ({transport})"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"TLS: the broker's certificate is not trusted by ca_file {settings.ca_file} "
                f"({text})")
    if "CERTIFICATE_REQUIRED" in text:
        return ("TLS: the broker requires a client certificate: set cert_file and key_file "
                f"({text})")
    if any(alert in text for alert in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN",
                                       "CERTIFICATE_EXPIRED", "CERTIFICATE_REVOKED")):
        return (f"TLS: the broker refused the client certificate cert_file {settings.cert_file} "
                f"({text})")
    refused = getattr(exc, "return_code", None) in (4, 5)  # the gateway client's refusal
    if refused or "Not authorized" in text or "code:135" in text or "code:5" in text:
        return f"broker refused the login of user {settings.username!r}: check password_file"
    return f"{type(exc).__name__}: {text}"


def reconnect_delay(failures: int, low: float, high: float, draw: float) -> float:
    """Seconds to wait before the next connection attempt, after ``failures`` failed ones in a
    row (0: the connection was just lost): uniform between ``low`` and a ceiling doubling from
    ``low`` to ``high``; ``draw`` is uniform in [0, 1). Never more than ``high``."""
    ceiling = min(high, low * 2.0 ** min(failures, 64))
    return low + (max(ceiling, low) - low) * draw


def manual_acks(client: aiomqtt.Client) -> Callable[[aiomqtt.Message], None]:
    """Make ``client`` acknowledge a received message only when told, and return what tells it.

    Call it before the client connects: until then paho acknowledges each message as it hands
    it over. A message never acknowledged is delivered again to the same persistent session
    after a reconnect; QoS 0 messages have nothing to acknowledge.
    """
    paho = client._client  # aiomqtt 2.5 has no API for it: the one reach into its internals
    paho.manual_ack_set(True)

    def acknowledge(message: aiomqtt.Message) -> None:
        if message.qos > 0:
            paho.ack(message.mid, message.qos)

    return acknowledge


async def subscribe(
    settings: MqttSettings,
    topics: Sequence[str],
    *,
    clean_session: bool = False,
    reconnect_min: float = RECONNECT_MIN,
    reconnect_max: float = RECONNECT_MAX,
) -> AsyncIterator[tuple[str, bytes]]:
    """Yield ``(topic, payload)`` forever, reconnecting with backoff; QoS 1 subscriptions.

    Messages are acknowledged to the broker only when the consumer asks for the next one, so a
    receiver that dies while storing a batch gets it again (persistent session).
    """
    groups = subscribe_groups(settings, topics, max_group=1, clean_session=clean_session,
                              reconnect_min=reconnect_min, reconnect_max=reconnect_max)
    try:
        async for group in groups:
            yield group[0]
    finally:  # closing this closes the connection at once
        await groups.aclose()


async def subscribe_groups(
    settings: MqttSettings,
    topics: Sequence[str],
    *,
    max_group: int,
    clean_session: bool = False,
    reconnect_min: float = RECONNECT_MIN,
    reconnect_max: float = RECONNECT_MAX,
) -> AsyncGenerator[list[tuple[str, bytes]], None]:
    """:func:`subscribe`, yielding the messages already waiting (at least one, at most
    ``max_group``) as one list: all of a list are acknowledged, in the order they arrived,
    when the consumer asks for the next list, so it can store them in one transaction."""
    import aiomqtt
    failures = 0
    errors = TransportErrors()
    down = False  # logged once per outage: the retries go to debug until subscribed again
    while True:
        try:
            client = new_client(settings, clean_session=clean_session, errors=errors)
            acknowledge = manual_acks(client)
            async with client:
                for topic in topics:
                    await client.subscribe(topic, qos=1)
                log.info("mqtt_subscribed", broker=settings.address.url, topics=list(topics))
                failures = 0
                down = False
                waiting = client.messages
                try:
                    async for first in waiting:
                        group = [first]
                        while len(group) < max_group and len(waiting) > 0:
                            group.append(await anext(waiting))
                        yield [(str(m.topic), _payload_bytes(m.payload)) for m in group]
                        for message in group:
                            acknowledge(message)
                except (GeneratorExit, asyncio.CancelledError):  # the consumer stops
                    await _settle_acks(client)
                    raise
        except aiomqtt.MqttError as exc:
            delay = reconnect_delay(failures, reconnect_min, reconnect_max, random.random())
            error = describe_mqtt_error(exc, settings, errors.last)
            if down:
                log.debug("mqtt_retry_failed", broker=settings.address.url, error=error,
                          retry_in=round(delay, 1))
            else:
                log.warning("mqtt_disconnected", broker=settings.address.url, error=error,
                            retry_in=round(delay, 1))
            down = True
        except UplinkError as exc:
            delay = reconnect_delay(failures, reconnect_min, reconnect_max, random.random())
            log.error("mqtt_settings_invalid", error=str(exc))
        await asyncio.sleep(delay)
        failures += 1


# Never subscribed: unsubscribing it is a round trip that changes nothing in the session.
_SETTLE_FILTER = "ssc-receiver/settle"
SETTLE_TIMEOUT = 2.0


async def _settle_acks(client: aiomqtt.Client) -> None:
    """Before a consumer leaves: wait until the broker has read our last acknowledgements.

    Closing a socket with unread data in it (messages the broker kept sending) makes the
    kernel reset the connection, and the broker then drops what it had not read yet: the
    PUBACKs of batches already stored, delivered again to the next receiver. The broker
    handles a connection's packets in order, so its UNSUBACK means it read them.
    """
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            await client.unsubscribe(_SETTLE_FILTER)
    except Exception as exc:
        log.debug("mqtt_acks_not_settled", error=f"{type(exc).__name__}: {exc}"[:200])


def _payload_bytes(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else str(payload).encode()


async def publish_once(settings: MqttSettings, topic: str, payload: bytes, *,
                       retain: bool) -> None:
    """Connect, publish one QoS 1 message, wait for its PUBACK, disconnect; UplinkError with
    one line (:func:`describe_mqtt_error`) when the broker cannot be reached or refuses."""
    import aiomqtt
    errors = TransportErrors()
    try:
        async with new_client(settings, clean_session=True, errors=errors) as client:
            await client.publish(topic, payload, qos=1, retain=retain, timeout=settings.timeout)
    except (aiomqtt.MqttError, OSError) as exc:
        raise UplinkError(describe_mqtt_error(exc, settings, errors.last)) from None


async def read_retained(settings: MqttSettings, topic_filter: str, *, quiet: float,
                        limit: float) -> list[tuple[str, bytes]]:
    """The retained messages of ``topic_filter``: what arrives after subscribing until none
    came for ``quiet`` seconds, at most ``limit`` seconds in all (a broker sends retained
    messages right after the SUBACK). Empty payloads (cleared topics) are left out.
    UplinkError as :func:`publish_once`."""
    import aiomqtt
    out: dict[str, bytes] = {}
    errors = TransportErrors()
    try:
        async with new_client(settings, clean_session=True, errors=errors) as client:
            await client.subscribe(topic_filter, qos=1)
            messages = aiter(client.messages)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit):
                    while True:
                        try:
                            async with asyncio.timeout(quiet):
                                message = await anext(messages)
                        except TimeoutError:
                            break
                        payload = _payload_bytes(message.payload)
                        if payload:
                            out[str(message.topic)] = payload
                        else:
                            out.pop(str(message.topic), None)
    except (aiomqtt.MqttError, OSError) as exc:
        raise UplinkError(describe_mqtt_error(exc, settings, errors.last)) from None
    return sorted(out.items())
