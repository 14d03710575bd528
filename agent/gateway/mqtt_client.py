"""The uplink's MQTT 3.1.1 client: one connection on asyncio streams (TCP or TLS), the packets
of ``agent/mqtt_packets.py``. It replaces aiomqtt and paho on the gateway (2.6 MiB of peak RSS,
docs/architecture.md "Footprint"); the platform side keeps aiomqtt.

What the uplink relies on (docs/protocols.md §2):

- one :class:`Client` per connection, never re-entered; ``async with`` connects (CONNACK
  within ``timeout``) and leaves with a DISCONNECT, so the broker keeps the will for a crash;
- ``publish(qos=1)`` returns on the PUBACK; its timeout counts the wait for a free place in
  the window of ``max_inflight`` unacknowledged publishes; a timeout raises :class:`MqttError`
  and means "unknown" (the batch stays stored and is sent again);
- a lost connection fails every pending publish and subscription and the message iterator at
  once with :class:`MqttError`; so does a keepalive without an answer: a PINGREQ after
  ``keepalive`` seconds without traffic either way, and no PINGRESP within ``keepalive`` more.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable

from agent.mqtt import MqttSettings, read_password, tls_context
from agent.mqtt_packets import (
    CONNACK_REFUSALS,
    DISCONNECT_BYTES,
    PINGREQ_BYTES,
    PINGRESP,
    ConnAck,
    Connect,
    Decoder,
    Empty,
    Packet,
    PacketError,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Will,
    encode,
)

# What a broker may send us in one packet: the channel's pushes (remote configuration) are
# kilobytes; anything larger is refused rather than buffered.
MAX_INCOMING = 1 << 20
_CLOSE_SECONDS = 1.0
TLS_VERDICT_SECONDS = 0.5


class MqttError(Exception):
    """The connection failed or was lost, or an operation timed out."""


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a refusal; ``return_code`` as in MQTT 3.1.1."""

    def __init__(self, return_code: int) -> None:
        self.return_code = return_code
        reason = CONNACK_REFUSALS.get(return_code, "refused")
        super().__init__(f"the broker refused the connection: {reason} (CONNACK {return_code})")


async def _tls_verdict(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Wait for the broker's verdict on our certificate before sending CONNECT.

    With TLS 1.3 the handshake is done for us before the broker checked our certificate; a
    broker that refuses it sends an alert and closes, and a CONNECT already sent then makes its
    kernel reset the connection, which discards the alert: the error would read "connection
    reset" instead of naming the certificate. An accepted client gets session tickets within
    a round trip; a refused one the alert. Neither within TLS_VERDICT_SECONDS: go on.
    """
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None or ssl_object.version() != "TLSv1.3":
        return  # TLS 1.2 checks the client certificate inside the handshake
    deadline = time.monotonic() + TLS_VERDICT_SECONDS
    while time.monotonic() < deadline:
        session = ssl_object.session
        if session is not None and session.has_ticket:
            return
        error = reader.exception()
        if error is not None:
            raise error
        if reader.at_eof():
            return
        await asyncio.sleep(0.005)


async def _first_packets(reader: asyncio.StreamReader, decoder: Decoder) -> list[Packet]:
    while True:
        data = await reader.read(4096)
        if not data:
            raise MqttError("the broker closed the connection before its CONNACK")
        packets = decoder.feed(data)
        if packets:
            return packets


class Client:
    """One MQTT 3.1.1 connection; see the module's doc for what it guarantees."""

    def __init__(self, host: str, port: int, *, client_id: str, clean_session: bool = True,
                 keepalive: int = 60, timeout: float = 20.0, username: str | None = None,
                 password: str | None = None, will: Will | None = None,
                 max_inflight: int = 20, tls_context: ssl.SSLContext | None = None) -> None:
        self._host, self._port, self._tls = host, port, tls_context
        self._connect = Connect(client_id, clean_session, keepalive, username,
                                None if password is None else password.encode(), will)
        self._keepalive = keepalive
        self.timeout = timeout
        self._window = asyncio.Semaphore(max(1, max_inflight))
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[int, asyncio.Future[Packet]] = {}
        self._next_id = 0
        self._incoming: asyncio.Queue[Publish | MqttError] = asyncio.Queue()
        self._error: MqttError | None = None
        self._last_in = self._last_out = 0.0
        self._ping_sent: float | None = None

    # --- the connection -----------------------------------------------------------------

    async def __aenter__(self) -> Client:
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._tls,
                    server_hostname=self._host if self._tls else None)
                self._writer = writer
                if self._tls is not None:
                    await _tls_verdict(reader, writer)
                decoder = Decoder(MAX_INCOMING)
                writer.write(encode(self._connect))
                await writer.drain()
                packets = await _first_packets(reader, decoder)
        except TimeoutError:
            self._abort()
            raise MqttError(f"no CONNACK within {self.timeout:g} s") from None
        except PacketError as exc:
            self._abort()
            raise MqttError(f"the broker sent a malformed packet: {exc}") from None
        except OSError as exc:
            self._abort()
            raise MqttError(str(exc) or type(exc).__name__) from None
        except BaseException:
            self._abort()
            raise
        first = packets[0]
        if not isinstance(first, ConnAck):
            self._abort()
            raise MqttError(f"the broker answered CONNECT with {type(first).__name__}, "
                            "not a CONNACK")
        if first.return_code != 0:
            self._abort()
            raise ConnectRefused(first.return_code)
        self._last_in = self._last_out = time.monotonic()
        for packet in packets[1:]:
            self._handle(packet)
        self._tasks = [asyncio.create_task(self._read(reader, decoder), name="mqtt-read"),
                       asyncio.create_task(self._pings(), name="mqtt-keepalive")]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        writer = self._writer
        if writer is not None and self._error is None and not writer.is_closing():
            writer.write(DISCONNECT_BYTES)
            writer.close()
            try:
                async with asyncio.timeout(_CLOSE_SECONDS):
                    await writer.wait_closed()
            except (TimeoutError, OSError):
                pass
        self._lose(MqttError("the connection was closed"))
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()

    def _lose(self, error: MqttError) -> None:
        """The connection is over: everything waiting on it fails with ``error``."""
        if self._error is not None:
            return
        self._error = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._incoming.put_nowait(error)
        self._abort()

    def _write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        assert self._writer is not None, "not connected"
        self._writer.write(data)
        self._last_out = time.monotonic()

    async def _drain(self) -> None:
        assert self._writer is not None
        try:
            await self._writer.drain()
        except OSError as exc:
            self._lose(MqttError(str(exc) or type(exc).__name__))
            raise self._error from None  # type: ignore[misc]

    async def _read(self, reader: asyncio.StreamReader, decoder: Decoder) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    self._lose(MqttError("the broker closed the connection"))
                    return
                self._last_in = time.monotonic()
                for packet in decoder.packets(data):
                    self._handle(packet)
        except PacketError as exc:
            self._lose(MqttError(f"the broker sent a malformed packet: {exc}"))
        except OSError as exc:
            self._lose(MqttError(str(exc) or type(exc).__name__))

    def _handle(self, packet: Packet) -> None:
        if isinstance(packet, Publish):
            self._incoming.put_nowait(packet)
            if packet.qos == 1 and packet.packet_id is not None:
                self._write(encode(PubAck(packet.packet_id)))
        elif isinstance(packet, PubAck | SubAck):
            future = self._pending.get(packet.packet_id)
            if future is not None and not future.done():
                future.set_result(packet)
        elif isinstance(packet, Empty) and packet.kind == PINGRESP:
            self._ping_sent = None
        else:
            raise PacketError(f"a broker does not send {type(packet).__name__} "
                              f"(type {getattr(packet, 'kind', '')}) to a client")

    async def _pings(self) -> None:
        keepalive = self._keepalive
        if keepalive <= 0:
            return
        while self._error is None:
            now = time.monotonic()
            if self._ping_sent is not None:
                if now - self._ping_sent >= keepalive:
                    self._lose(MqttError(f"no PINGRESP within the keepalive of {keepalive} s"))
                    return
                wait = self._ping_sent + keepalive - now
            else:
                idle = now - min(self._last_in, self._last_out)
                if idle >= keepalive:
                    self._ping_sent = now
                    self._write(PINGREQ_BYTES)
                    continue
                wait = keepalive - idle
            await asyncio.sleep(max(wait, 0.05))

    def _new_id(self) -> int:
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._pending:
                return self._next_id
        raise MqttError("no free packet id")  # unreachable with a window under 65535

    # --- what the uplink calls --------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      timeout: float | None = None) -> None:  # noqa: ASYNC109 (aiomqtt's)
        """Publish; with QoS 1 return when the broker's PUBACK arrived."""
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                if qos == 0:
                    self._write(encode(Publish(topic, payload, 0, retain)))
                    await self._drain()
                    return
                async with self._window:
                    await self._exchange(lambda pid: Publish(topic, payload, 1, retain,
                                                             packet_id=pid))
        except TimeoutError:
            raise MqttError(f"no PUBACK within {limit:g} s") from None

    async def subscribe(self, topic_filter: str, *, qos: int = 1,
                        timeout: float | None = None) -> tuple[int, ...]:  # noqa: ASYNC109
        """Subscribe; the broker's return codes (0x80: refused)."""
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                ack = await self._exchange(lambda pid: Subscribe(pid, ((topic_filter, qos),)))
        except TimeoutError:
            raise MqttError(f"no SUBACK within {limit:g} s") from None
        assert isinstance(ack, SubAck)
        return ack.return_codes

    async def _exchange(self, make: Callable[[int], Publish | Subscribe]) -> Packet:
        packet_id = self._new_id()
        future: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
        self._pending[packet_id] = future
        try:
            self._write(encode(make(packet_id)))
            await self._drain()
            return await future
        finally:
            del self._pending[packet_id]
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: no "never retrieved" noise after a loss

    async def incoming(self) -> AsyncIterator[Publish]:
        """The messages of our subscriptions as they arrive (QoS 1 ones already acknowledged);
        raises :class:`MqttError` when the connection is lost."""
        while True:
            item = await self._incoming.get()
            if isinstance(item, MqttError):
                self._incoming.put_nowait(item)  # a second reader fails too
                raise item
            yield item


def uplink_client(settings: MqttSettings, *, will: Will, max_inflight: int) -> Client:
    """The uplink's client for one connection: clean session, QoS 1 will, the client id,
    login and TLS of ``settings``; the password is read from its file now, so a rotated
    password is used at the next connection (UplinkError when the files are unusable)."""
    password = read_password(settings.password_file) if settings.password_file else None
    return Client(settings.address.host, settings.address.port, client_id=settings.client_id,
                  clean_session=True, keepalive=max(1, round(settings.keepalive)),
                  timeout=settings.timeout, username=settings.username, password=password,
                  will=will, max_inflight=max_inflight, tls_context=tls_context(settings))
