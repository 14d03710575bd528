"""MQTT: the agent's uplink (store → broker) and the receiver's subscription.

This is the only module that imports aiomqtt (docs/architecture.md). Facts it relies on, verified
against aiomqtt 2.5 / paho 2.2 (docs/protocols.md §2):

- A client is never re-entered after a disconnect: every connection gets a new ``Client``.
- ``publish(qos=1)`` returns on PUBACK; a timeout means "unknown", so the batch stays in the
  store and is sent again (the receiver drops duplicates by ``(gw, seq)``).
- A publish pending at disconnect is not woken; a sibling task iterating ``client.messages``
  raises at once, which makes the task group cancel the rest and we reconnect.
- The publish timeout counts time queued behind the in-flight window, so concurrency is capped
  with a semaphore of the window size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import aiomqtt
import structlog

from agent import __version__
from agent.endpoints import BrokerAddress
from agent.errors import BufferFull, UplinkError
from agent.gateway.store import OutgoingBatch, StoreStats
from agent.readings import Event
from agent.wire import BufferHealth, Status, encode_status

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


def _read_password(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UplinkError(f"cannot read password_file {path}: {exc.strerror}") from None
    return text.rstrip("\r\n")


def _tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
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


def _client(settings: MqttSettings, *, will: aiomqtt.Will | None = None,
            clean_session: bool | None = None, max_inflight: int | None = None,
            errors: TransportErrors | None = None) -> aiomqtt.Client:
    password = _read_password(settings.password_file) if settings.password_file else None
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
        tls_context=_tls_context(settings),
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
    if "Not authorized" in text or "code:135" in text or "code:5" in text:
        return f"broker refused the login of user {settings.username!r}: check password_file"
    return f"{type(exc).__name__}: {text}"


async def _watch(client: aiomqtt.Client) -> None:
    """Iterate messages so a disconnect is noticed at once (raises MqttError)."""
    async for _ in client.messages:
        pass


def reconnect_delay(failures: int, low: float, high: float, draw: float) -> float:
    """Seconds to wait before the next connection attempt, after ``failures`` failed ones in a
    row (0: the connection was just lost): uniform between ``low`` and a ceiling doubling from
    ``low`` to ``high``; ``draw`` is uniform in [0, 1). Never more than ``high``."""
    ceiling = min(high, low * 2.0 ** min(failures, 64))
    return low + (max(ceiling, low) - low) * draw


# ---------------------------------------------------------------------------------------------
# Receiver side


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
    failures = 0
    errors = TransportErrors()
    while True:
        try:
            client = _client(settings, clean_session=clean_session, errors=errors)
            client._client.manual_ack_set(True)  # aiomqtt exposes no manual ack
            async with client:
                for topic in topics:
                    await client.subscribe(topic, qos=1)
                log.info("mqtt_subscribed", broker=settings.address.url, topics=list(topics))
                failures = 0
                async for message in client.messages:
                    payload = message.payload
                    data = payload if isinstance(payload, bytes) else str(payload).encode()
                    yield str(message.topic), data
                    if message.qos > 0:
                        client._client.ack(message.mid, message.qos)
        except aiomqtt.MqttError as exc:
            delay = reconnect_delay(failures, reconnect_min, reconnect_max, random.random())
            log.warning("mqtt_disconnected", broker=settings.address.url,
                        error=describe_mqtt_error(exc, settings, errors.last),
                        retry_in=round(delay, 1))
        except UplinkError as exc:
            delay = reconnect_delay(failures, reconnect_min, reconnect_max, random.random())
            log.error("mqtt_settings_invalid", error=str(exc))
        await asyncio.sleep(delay)
        failures += 1


# ---------------------------------------------------------------------------------------------
# Agent side


class BatchSource(Protocol):
    """What the uplink needs of the store (``in_flight``: seqs being published now)."""

    in_flight: set[int]

    def next_unsent(self, limit: int, exclude: set[int], *,
                    after: int = 0) -> list[OutgoingBatch]: ...

    def last_seq(self) -> int: ...

    def stats(self) -> StoreStats: ...

    def delete(self, seq: int) -> None: ...


class ReplayPacer:
    """Token bucket for backlog batches: ``rate`` per second, bursts of at most one second."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._clock = clock
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now

    def take(self) -> bool:
        """Spend a token if there is one."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until the next token."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self._rate)


@dataclass
class UplinkStats:
    published: int = 0
    acknowledged: int = 0
    readings_acknowledged: int = 0
    connects: int = 0
    disconnects: int = 0
    connected: bool = False


class Uplink:
    """Sends stored batches oldest first over QoS 1; deletes each only after its PUBACK."""

    def __init__(
        self,
        settings: MqttSettings,
        store: BatchSource,
        *,
        gw: str,
        boot: int,
        topic_prefix: str,
        max_inflight: int,
        wake: asyncio.Event,
        clock: Callable[[], float],
        event: Callable[[Event], None] | None = None,
        replay_rate: float = 50.0,
        replay_order: str = "live_first",
        reconnect_min: float = RECONNECT_MIN,
        reconnect_max: float = RECONNECT_MAX,
        monotonic: Callable[[], float] = time.monotonic,
        buffer_health: Callable[[], BufferHealth] | None = None,
    ) -> None:
        self._settings = settings
        self._buffer_health = buffer_health
        # set when the buffer's health changed: the status is published again (§8.1)
        self._status_due = asyncio.Event()
        self._reconnect = (reconnect_min, reconnect_max)
        self._monotonic = monotonic
        self._replay_rate = replay_rate
        self._replay_order = replay_order
        self._event = event
        self._store = store
        self._gw = gw
        self._boot = boot
        self._batch_topic = f"{topic_prefix}/{gw}/batch"
        self._status_topic = f"{topic_prefix}/{gw}/status"
        self._max_inflight = max_inflight
        self._wake = wake
        self._clock = clock
        self._inflight = store.in_flight  # shared: the store never drops a batch in flight
        self._undeleted: set[int] = set()  # acknowledged, but the delete failed
        self._transport = TransportErrors()
        self.stats = UplinkStats()
        self._down_since: float | None = None
        self._idle = asyncio.Event()
        self._client: aiomqtt.Client | None = None

    def _status(self, state: Literal["online", "offline"], *, will: bool = False) -> bytes:
        # The will is registered at connect time and cannot be kept current: it does not say
        # how the buffer is (wire format §8.1).
        health = None if will or self._buffer_health is None else self._buffer_health()
        return encode_status(Status(state, self._gw, self._boot, int(self._clock() * 1000),
                                    __version__, buffer=health))

    def status_changed(self) -> None:
        """The buffer's health changed: publish the status again (now, or at the next
        connect, which publishes it anyway)."""
        self._status_due.set()

    async def _status_updates(self, client: aiomqtt.Client) -> None:
        while True:
            await self._status_due.wait()
            self._status_due.clear()
            payload = self._status("online")
            await client.publish(self._status_topic, payload, qos=1, retain=True,
                                 timeout=self._settings.timeout)
            log.debug("status_published", payload=payload.decode()[:300])

    async def run(self) -> None:
        """Connect, send, reconnect with jittered exponential backoff; forever."""
        failures = 0
        while True:
            try:
                will = aiomqtt.Will(self._status_topic, self._status("offline", will=True),
                                    qos=1, retain=True)
                client = _client(self._settings, will=will, clean_session=True,
                                 max_inflight=self._max_inflight, errors=self._transport)
                async with client:
                    self._client = client
                    self.stats.connects += 1
                    self.stats.connected = True
                    if self._down_since is not None:
                        down = round(self._monotonic() - self._down_since, 1)
                        log.info("uplink_restored", broker=self._settings.address.url,
                                 down_seconds=down)
                        self._emit("uplink_up", f"connected again after {down} s")
                        self._down_since = None
                    else:
                        log.info("uplink_connected", broker=self._settings.address.url)
                    failures = 0
                    self._status_due.clear()  # this status says the buffer's health now
                    await client.publish(self._status_topic, self._status("online"), qos=1,
                                         retain=True)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(_watch(client), name="uplink-watch")
                        tg.create_task(self._status_updates(client), name="uplink-status")
                        tg.create_task(self._send(client), name="uplink-send")
            except* (aiomqtt.MqttError, UplinkError, OSError) as group:
                self._note_down(group.exceptions[0])
            finally:
                self._client = None
                self.stats.connected = False
                self._inflight.clear()
            delay = reconnect_delay(failures, *self._reconnect, random.random())
            failures += 1
            log.debug("uplink_retry_in", seconds=round(delay, 2), failures=failures)
            await asyncio.sleep(delay)

    def _note_down(self, exc: BaseException) -> None:
        self.stats.disconnects += 1
        if self._down_since is None:
            self._down_since = self._monotonic()
            error = describe_mqtt_error(exc, self._settings, self._transport.last)
            log.warning("uplink_down", broker=self._settings.address.url, error=error)
            self._emit("uplink_down", error)
        else:
            log.debug("uplink_retry_failed",
                      error=describe_mqtt_error(exc, self._settings, self._transport.last))

    def _retry_deletes(self) -> None:
        for seq in sorted(self._undeleted):
            try:
                self._store.delete(seq)
            except BufferFull:
                return
            self._undeleted.discard(seq)

    def _emit(self, kind: str, message: str) -> None:
        if self._event is not None:
            self._event(Event(int(self._clock() * 1000), kind, None, message))

    async def _send(self, client: aiomqtt.Client) -> None:
        window = asyncio.Semaphore(self._max_inflight)
        # What was stored when we connected is the backlog: oldest first, paced. Batches
        # sealed since are live: with live_first they go out at once, between backlog ones.
        mark = self._store.last_seq()
        pacer = ReplayPacer(self._replay_rate, time.monotonic)
        if mark:
            backlog = self._store.stats()
            log.info("uplink_backlog", batches=backlog.batches, readings=backlog.readings,
                     order=self._replay_order, rate_per_second=self._replay_rate)
        async with asyncio.TaskGroup() as tg:
            while True:
                self._wake.clear()
                self._retry_deletes()
                free = self._max_inflight - len(self._inflight)
                chosen, paced_out = (self._choose(free, mark, pacer) if free > 0
                                     else ([], False))
                if not chosen:
                    if not self._inflight and not paced_out:
                        self._idle.set()
                    delay = pacer.wait_time() if paced_out else None
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                    continue
                self._idle.clear()
                for batch in chosen:
                    await window.acquire()
                    self._inflight.add(batch.seq)
                    tg.create_task(self._publish_one(client, batch, window),
                                   name=f"publish-{batch.seq}")

    def _choose(self, free: int, mark: int,
                pacer: ReplayPacer) -> tuple[list[OutgoingBatch], bool]:
        """Up to ``free`` batches to publish now, and whether backlog waits for the pacer."""
        busy = self._inflight | self._undeleted
        chosen: list[OutgoingBatch] = []
        if self._replay_order == "live_first":
            chosen = self._store.next_unsent(free, busy, after=mark)
            busy = busy | {b.seq for b in chosen}
        for batch in self._store.next_unsent(free - len(chosen), busy):
            if batch.seq > mark:
                if self._replay_order == "live_first":
                    break  # live ones were taken above
                chosen.append(batch)
            elif pacer.take():
                chosen.append(batch)
            else:
                return chosen, True
        return chosen, False

    async def _publish_one(self, client: aiomqtt.Client, batch: OutgoingBatch,
                           window: asyncio.Semaphore) -> None:
        try:
            self.stats.published += 1
            await client.publish(self._batch_topic, batch.payload, qos=1,
                                 timeout=self._settings.timeout)
            self.stats.acknowledged += 1
            try:
                self._store.delete(batch.seq)
            except BufferFull as exc:
                # Delivered but still stored (disk full): not sent again while we run; the
                # delete is retried, and after a restart the receiver drops the duplicate.
                self._undeleted.add(batch.seq)
                log.error("buffer_delete_failed", seq=batch.seq, error=str(exc))
            self.stats.readings_acknowledged += batch.n_readings
        finally:
            self._inflight.discard(batch.seq)
            window.release()
            self._wake.set()

    async def drained(self) -> None:
        """Wait until the store has nothing left to send and nothing is in flight."""
        self._idle.clear()  # a stale "idle" from before the last seal must not count
        self._wake.set()
        await self._idle.wait()

    async def say_offline(self) -> None:
        """On a clean shutdown, the retained status says offline (the will covers crashes)."""
        client = self._client
        if client is None:
            return  # not connected: the broker already published our will
        try:
            await client.publish(self._status_topic, self._status("offline"), qos=1,
                                 retain=True, timeout=2.0)
        except aiomqtt.MqttError as exc:
            log.debug("uplink_offline_status_failed", error=str(exc))
