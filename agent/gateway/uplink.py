"""MQTT: the agent's uplink (store → broker).

What the receiver shares with it (settings, error lines, reconnect waits) lives in
``agent.mqtt``; the connection is the gateway's own MQTT 3.1.1 client
(``agent/gateway/mqtt_client.py``, docs/protocols.md §2):

- A client is never re-entered after a disconnect: every connection gets a new ``Client``
  (:func:`agent.gateway.mqtt_client.uplink_client`).
- ``publish(qos=1)`` returns on PUBACK; a timeout means "unknown", so the batch stays in the
  store and is sent again (the receiver drops duplicates by ``(gw, seq)``).
- A lost connection fails pending publishes and the watcher of incoming messages at once,
  which makes the task group cancel the rest and we reconnect.
- The publish timeout counts time queued behind the in-flight window, so concurrency is capped
  with a semaphore of the window size.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import structlog

from agent import __version__
from agent.damper import Damper, log_notices
from agent.endpoints import BrokerAddress
from agent.errors import BufferFull, UplinkError
from agent.gateway.mqtt_client import Client, MqttError, uplink_client
from agent.gateway.store import OutgoingBatch, StoreStats
from agent.mqtt import (
    RECONNECT_MAX,
    RECONNECT_MIN,
    MqttSettings,
    describe_mqtt_error,
    reconnect_delay,
)
from agent.mqtt_packets import Will
from agent.readings import Event
from agent.wire import BufferHealth, Status, encode_status

log = structlog.get_logger(__name__)

_FLAPPING_TICK_SECONDS = 10.0

async def _watch(client: Client, channel: UplinkChannel | None = None) -> None:
    """Iterate messages so a disconnect is noticed at once (raises MqttError); those of the
    channel's topics go to it."""
    async for message in client.incoming():
        if channel is not None:
            channel.received(message.topic, message.payload)


class UplinkChannel(Protocol):
    """Messages besides batches and the status, on the same connection (remote
    configuration, :mod:`agent.gateway.remote_config`): ``topics`` are subscribed (QoS 1) at
    every connect and what arrives on them is handed to ``received``; what ``outgoing`` holds
    is published retained (QoS 1) when ``due`` is set or at a connect, then ``sent``."""

    topics: tuple[str, ...]
    due: asyncio.Event

    def received(self, topic: str, payload: bytes) -> None: ...

    def outgoing(self) -> list[tuple[str, bytes]]: ...

    def sent(self, topic: str, payload: bytes) -> None: ...


# ---------------------------------------------------------------------------------------------
# Agent side


class BatchSource(Protocol):
    """What the uplink needs of the store. The store keeps which batches are in flight (it
    never drops one under a publish); the uplink tells it when a publish starts and ends."""

    def next_unsent(self, limit: int, exclude: Set[int], *,
                    after: int = 0) -> list[OutgoingBatch]: ...

    def mark_in_flight(self, seq: int) -> None: ...

    def clear_in_flight(self, seq: int) -> None: ...

    def forget_in_flight(self) -> None: ...

    def in_flight(self) -> frozenset[int]: ...

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
    """The uplink since start."""

    published: int = 0  # batches handed to the broker
    acknowledged: int = 0  # batches the broker acknowledged (then deleted from the store)
    readings_acknowledged: int = 0  # readings in those batches
    connects: int = 0  # sessions established
    disconnects: int = 0  # sessions lost or closed
    connected: bool = False  # a session is up now
    last_ack_monotonic: float | None = None  # when the last PUBACK came (monotonic s)


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
        brokers: Sequence[BrokerAddress] = (),
        channel: UplinkChannel | None = None,
    ) -> None:
        # Brokers to try in turn (``[uplink] broker`` as a list): on a failed connect or a
        # lost connection the next one; the reconnect wait once per full round.
        self._brokers = tuple(brokers) or (settings.address,)
        self.channel = channel
        if any(b.tls != self._brokers[0].tls for b in self._brokers):
            raise ValueError("the broker URLs must all use TLS (mqtts://) or none (mqtt://)")
        self._settings = replace(settings, address=self._brokers[0])
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
        self._undeleted: set[int] = set()  # acknowledged, but the delete failed
        self.stats = UplinkStats()
        self._down_since: float | None = None
        # a broker that drops us every few seconds: bounded lines (agent.damper)
        self._damper = Damper(monotonic)
        self._idle = asyncio.Event()
        self._client: Client | None = None

    def _status(self, state: Literal["online", "offline"], *, will: bool = False) -> bytes:
        # The will is registered at connect time and cannot be kept current: it does not say
        # how the buffer is (wire format §8.1).
        health = None if will or self._buffer_health is None else self._buffer_health()
        return encode_status(Status(state, self._gw, self._boot, int(self._clock() * 1000),
                                    __version__, buffer=health))

    def take_over(self, old: Uplink) -> None:
        """Go on from ``old`` (a reload that changed [uplink] replaces the uplink): its
        counters, and an outage it saw, which ends with ``uplink_restored`` as usual."""
        self.stats = old.stats
        self._down_since = old._down_since
        self._damper = old._damper

    def status_changed(self) -> None:
        """The buffer's health changed: publish the status again (now, or at the next
        connect, which publishes it anyway)."""
        self._status_due.set()

    async def _status_updates(self, client: Client) -> None:
        while True:
            await self._status_due.wait()
            self._status_due.clear()
            payload = self._status("online")
            await client.publish(self._status_topic, payload, qos=1, retain=True,
                                 timeout=self._settings.timeout)
            log.debug("status_published", payload=payload.decode()[:300])

    async def _channel_updates(self, client: Client) -> None:
        channel = self.channel
        assert channel is not None
        for topic in channel.topics:
            granted = await client.subscribe(topic, qos=1, timeout=self._settings.timeout)
            # a broker ACL that denies it answers 0x80 (MQTT 3.1.1) or a failure reason code
            if any(getattr(g, "is_failure", g == 0x80) for g in granted or ()):
                log.warning("uplink_subscribe_refused", topic=topic,
                            hint="the broker's ACL must let this gateway read it")
        while True:
            channel.due.clear()
            for topic, payload in channel.outgoing():
                await client.publish(topic, payload, qos=1, retain=True,
                                     timeout=self._settings.timeout)
                channel.sent(topic, payload)
            await channel.due.wait()

    async def run(self) -> None:
        """Connect, send, reconnect with jittered exponential backoff; forever. With several
        brokers, a failed or lost connection moves on to the next one at once; the backoff
        wait comes after each full round of them."""
        failures = 0
        index = 0
        tried = 0  # brokers tried since the last connection or the last wait
        while True:
            self._settings = replace(self._settings, address=self._brokers[index])
            try:
                will = Will(self._status_topic, self._status("offline", will=True),
                            qos=1, retain=True)
                client = uplink_client(self._settings, will=will,
                                       max_inflight=self._max_inflight)
                async with client:
                    self._client = client
                    self.stats.connects += 1
                    self.stats.connected = True
                    if self._down_since is not None:
                        down = round(self._monotonic() - self._down_since, 1)
                        broker = self._settings.address.url
                        log_notices(log, "uplink", self._damper.change(True), functools.partial(
                            log.info, "uplink_restored", broker=broker, down_seconds=down),
                            broker=broker)
                        self._emit("uplink_up", f"connected again after {down} s")
                        self._down_since = None
                    else:
                        log.info("uplink_connected", broker=self._settings.address.url)
                    failures = 0
                    tried = 0
                    self._status_due.clear()  # this status says the buffer's health now
                    await client.publish(self._status_topic, self._status("online"), qos=1,
                                         retain=True)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(_watch(client, self.channel), name="uplink-watch")
                        if self.channel is not None:
                            tg.create_task(self._channel_updates(client), name="uplink-channel")
                        tg.create_task(self._status_updates(client), name="uplink-status")
                        tg.create_task(self._send(client), name="uplink-send")
                        tg.create_task(self._flapping_ticks(), name="uplink-flapping")
            except* (MqttError, UplinkError, OSError) as group:
                self._note_down(group.exceptions[0])
            finally:
                self._client = None
                self.stats.connected = False
                self._store.forget_in_flight()
            log_notices(log, "uplink", self._damper.tick(), broker=self._settings.address.url)
            index = (index + 1) % len(self._brokers)
            tried += 1
            if tried < len(self._brokers):
                continue  # the next broker of this round, now
            tried = 0
            delay = reconnect_delay(failures, *self._reconnect, random.random())
            failures += 1
            log.debug("uplink_retry_in", seconds=round(delay, 2), failures=failures)
            await asyncio.sleep(delay)

    def _note_down(self, exc: BaseException) -> None:
        self.stats.disconnects += 1
        if self._down_since is None:
            self._down_since = self._monotonic()
            error = describe_mqtt_error(exc, self._settings)
            broker = self._settings.address.url
            log_notices(log, "uplink", self._damper.change(False), lambda: log.warning(
                "uplink_down", broker=broker, error=error), broker=broker, error=error)
            self._emit("uplink_down", error)
        else:
            log.debug("uplink_retry_failed", broker=self._settings.address.url,
                      error=describe_mqtt_error(exc, self._settings))

    async def _flapping_ticks(self) -> None:
        """While connected after flapping: the summaries, and the line that it is stable."""
        while self._damper.flapping:
            await asyncio.sleep(_FLAPPING_TICK_SECONDS)
            log_notices(log, "uplink", self._damper.tick(), broker=self._settings.address.url)

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

    async def _send(self, client: Client) -> None:
        window = asyncio.Semaphore(self._max_inflight)
        # What was stored when we connected is the backlog: oldest first, paced. Batches
        # sealed since are live: with live_first they go out at once, between backlog ones.
        mark = self._store.last_seq()
        pacer = ReplayPacer(self._replay_rate, time.monotonic)
        if mark and not self._damper.flapping:  # not a line per reconnect of a flapping link
            backlog = self._store.stats()
            log.info("uplink_backlog", batches=backlog.batches, readings=backlog.readings,
                     order=self._replay_order, rate_per_second=self._replay_rate)
        async with asyncio.TaskGroup() as tg:
            while True:
                self._wake.clear()
                self._retry_deletes()
                in_flight = self._store.in_flight()
                free = self._max_inflight - len(in_flight)
                chosen, paced_out = (self._choose(free, mark, pacer) if free > 0
                                     else ([], False))
                if not chosen:
                    if not in_flight and not paced_out:
                        self._idle.set()
                    delay = pacer.wait_time() if paced_out else None
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                    continue
                self._idle.clear()
                for batch in chosen:
                    await window.acquire()
                    self._store.mark_in_flight(batch.seq)
                    tg.create_task(self._publish_one(client, batch, window),
                                   name=f"publish-{batch.seq}")

    def _choose(self, free: int, mark: int,
                pacer: ReplayPacer) -> tuple[list[OutgoingBatch], bool]:
        """Up to ``free`` batches to publish now, and whether backlog waits for the pacer."""
        busy = self._store.in_flight() | self._undeleted
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

    async def _publish_one(self, client: Client, batch: OutgoingBatch,
                           window: asyncio.Semaphore) -> None:
        try:
            self.stats.published += 1
            await client.publish(self._batch_topic, batch.payload, qos=1,
                                 timeout=self._settings.timeout)
            self.stats.acknowledged += 1
            self.stats.last_ack_monotonic = self._monotonic()
            try:
                self._store.delete(batch.seq)
            except BufferFull as exc:
                # Delivered but still stored (disk full): not sent again while we run; the
                # delete is retried, and after a restart the receiver drops the duplicate.
                self._undeleted.add(batch.seq)
                log.error("buffer_delete_failed", seq=batch.seq, error=str(exc))
            self.stats.readings_acknowledged += batch.n_readings
        finally:
            self._store.clear_in_flight(batch.seq)
            window.release()
            self._wake.set()

    async def drained(self) -> None:
        """Wait until the store has nothing left to send and nothing is in flight."""
        self._idle.clear()  # a stale "idle" from before the last seal must not count
        self._wake.set()
        await self._idle.wait()

    @property
    def broker_url(self) -> str:
        """The broker connected to now, or tried last."""
        return self._settings.address.url

    async def publish_retained(self, topic: str, payload: bytes) -> bool:
        """Publish ``payload`` retained (QoS 1) on the session up now; False when there is
        none or the publish failed (the caller tries again later; the session's own tasks
        notice a lost connection)."""
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(topic, payload, qos=1, retain=True,
                                 timeout=self._settings.timeout)
        except MqttError as exc:
            log.debug("uplink_retained_publish_failed", topic=topic, error=str(exc))
            return False
        return True

    async def say_offline(self) -> None:
        """On a clean shutdown, the retained status says offline (the will covers crashes)."""
        client = self._client
        if client is None:
            return  # not connected: the broker already published our will
        try:
            await client.publish(self._status_topic, self._status("offline"), qos=1,
                                 retain=True, timeout=2.0)
        except MqttError as exc:
            log.debug("uplink_offline_status_failed", error=str(exc))
