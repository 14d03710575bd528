"""MQTT 3.1.1 packets as bytes and back: the gateway's own client (``agent/gateway/mqtt_client.py``)
speaks through this, with no I/O here (docs/protocols.md §2).

Only what a publishing client needs: CONNECT, CONNACK, PUBLISH (QoS 0 and 1), PUBACK,
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT. The decoder takes a stream in any slices and
refuses a packet whose remaining length is over its bound before buffering it, so a broker (or
anything else on the port) that sends a huge or malformed packet costs an error line, never
unbounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

PROTOCOL_LEVEL = 4  # MQTT 3.1.1
MAX_REMAINING_LENGTH = 268_435_455  # four bytes of variable length, the protocol's limit
SUBACK_FAILURE = 0x80

# CONNACK return codes worded for the people who read the log (MQTT 3.1.1 §3.2.2.3)
CONNACK_REFUSALS = {
    1: "the broker does not speak MQTT 3.1.1 (unacceptable protocol version)",
    2: "the broker rejected the client id (identifier rejected)",
    3: "the broker is unavailable (server unavailable)",
    4: "bad username or password",
    5: "not authorised",
}

PINGREQ_BYTES = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"
DISCONNECT_BYTES = b"\xe0\x00"


class PacketError(ValueError):
    """Bytes that are not a well-formed MQTT 3.1.1 packet (or one over the size bound)."""


@dataclass(frozen=True)
class Connect:
    client_id: str
    clean_session: bool
    keepalive: int
    username: str | None = None
    password: bytes | None = None
    will: Publish | None = None  # what the broker publishes for us if we vanish


@dataclass(frozen=True)
class ConnAck:
    session_present: bool
    return_code: int


@dataclass(frozen=True)
class Publish:
    """A message either way; ``packet_id`` with QoS 1 only."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None


# A last will is a message: the broker publishes it when our connection ends without DISCONNECT.
Will = Publish


@dataclass(frozen=True)
class PubAck:
    packet_id: int


@dataclass(frozen=True)
class Subscribe:
    packet_id: int
    filters: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class SubAck:
    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True)
class Empty:
    """PINGREQ, PINGRESP or DISCONNECT: a type and nothing else."""

    kind: int


Packet = Connect | ConnAck | Publish | PubAck | Subscribe | SubAck | Empty


# --- encoding --------------------------------------------------------------------------------


def encode_length(n: int) -> bytes:
    """The remaining length as MQTT's variable byte integer (§2.2.3)."""
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise PacketError(f"a packet of {n} bytes is over MQTT's limit")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str, what: str) -> bytes:
    check_text(text, what)
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _blob(data: bytes, what: str) -> bytes:
    if len(data) > 0xFFFF:
        raise PacketError(f"{what} is {len(data)} bytes, MQTT allows 65535")
    return len(data).to_bytes(2, "big") + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_length(len(body)) + body


def _packet_id(packet_id: int) -> bytes:
    if not 1 <= packet_id <= 0xFFFF:
        raise PacketError(f"packet id {packet_id} is not in 1..65535")
    return packet_id.to_bytes(2, "big")


def check_text(text: str, what: str) -> None:
    """MQTT strings: UTF-8 of at most 65535 bytes, no U+0000 (§1.5.3)."""
    if "\x00" in text:
        raise PacketError(f"{what} contains U+0000")
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        raise PacketError(f"{what} is not valid UTF-8 (a lone surrogate)") from None
    if size > 0xFFFF:
        raise PacketError(f"{what} is {size} bytes, MQTT allows 65535")


def check_topic(topic: str) -> None:
    """A topic to publish to: not empty, no wildcards (§4.7)."""
    check_text(topic, "topic")
    if not topic or "+" in topic or "#" in topic:
        raise PacketError(f"topic {topic[:80]!r} is empty or has a wildcard")


def encode(packet: Packet) -> bytes:
    """The bytes of ``packet``; PacketError when a field is out of the protocol's range."""
    if isinstance(packet, Publish):
        return _encode_publish(packet)
    if isinstance(packet, PubAck):
        return _packet(PUBACK << 4, _packet_id(packet.packet_id))
    if isinstance(packet, Connect):
        return _encode_connect(packet)
    if isinstance(packet, Subscribe):
        body = _packet_id(packet.packet_id)
        for topic_filter, qos in packet.filters:
            if not topic_filter or qos not in (0, 1, 2):
                raise PacketError(f"bad subscription {topic_filter[:80]!r} (QoS {qos})")
            body += _utf8(topic_filter, "topic filter") + bytes((qos,))
        if not packet.filters:
            raise PacketError("a SUBSCRIBE needs at least one topic filter")
        return _packet(SUBSCRIBE << 4 | 0x02, body)
    if isinstance(packet, SubAck):
        return _packet(SUBACK << 4, _packet_id(packet.packet_id) + bytes(packet.return_codes))
    if isinstance(packet, ConnAck):
        return _packet(CONNACK << 4, bytes((int(packet.session_present), packet.return_code)))
    if packet.kind not in (PINGREQ, PINGRESP, DISCONNECT):
        raise PacketError(f"packet type {packet.kind} has a body")
    return bytes((packet.kind << 4, 0))


def _encode_publish(packet: Publish) -> bytes:
    check_topic(packet.topic)
    if packet.qos not in (0, 1):
        raise PacketError(f"QoS {packet.qos}: this client publishes QoS 0 and 1 only")
    body = _utf8(packet.topic, "topic")
    if packet.qos:
        if packet.packet_id is None:
            raise PacketError("a QoS 1 PUBLISH needs a packet id")
        body += _packet_id(packet.packet_id)
    elif packet.dup:
        raise PacketError("a QoS 0 PUBLISH cannot be a duplicate")
    first = PUBLISH << 4 | packet.dup << 3 | packet.qos << 1 | packet.retain
    return _packet(first, body + packet.payload)


def _encode_connect(packet: Connect) -> bytes:
    if not 0 <= packet.keepalive <= 0xFFFF:
        raise PacketError(f"keepalive {packet.keepalive} s is not in 0..65535")
    if packet.password is not None and packet.username is None:
        raise PacketError("MQTT 3.1.1 sends a password only with a username")
    flags = int(packet.clean_session) << 1
    payload = _utf8(packet.client_id, "client id")
    will = packet.will
    if will is not None:
        if will.qos not in (0, 1, 2):
            raise PacketError(f"will QoS {will.qos}")
        check_topic(will.topic)
        flags |= 0x04 | will.qos << 3 | int(will.retain) << 5
        payload += _utf8(will.topic, "will topic") + _blob(will.payload, "will payload")
    if packet.username is not None:
        flags |= 0x80
        payload += _utf8(packet.username, "username")
    if packet.password is not None:
        flags |= 0x40
        payload += _blob(packet.password, "password")
    header = _utf8("MQTT", "protocol") + bytes((PROTOCOL_LEVEL, flags))
    return _packet(CONNECT << 4, header + packet.keepalive.to_bytes(2, "big") + payload)


# --- decoding --------------------------------------------------------------------------------


class Decoder:
    """Packets from a byte stream fed in any slices. A packet whose remaining length is over
    ``max_remaining`` is refused as soon as its length is read, before its body arrives."""

    def __init__(self, max_remaining: int = MAX_REMAINING_LENGTH) -> None:
        self.max_remaining = max_remaining
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Packet]:
        """The packets completed by ``data``; PacketError on the first malformed one (the
        stream cannot be trusted after it)."""
        return list(self.packets(data))

    def packets(self, data: bytes) -> Iterator[Packet]:
        """:meth:`feed`, one packet at a time: those before a malformed one are had first."""
        self._buffer += data
        while True:
            header = _header(self._buffer, self.max_remaining)
            if header is None:
                return
            first, start, length = header
            if len(self._buffer) < start + length:
                return
            body = bytes(self._buffer[start:start + length])
            del self._buffer[:start + length]
            yield decode_body(first, body)


def _header(buffer: bytearray, bound: int) -> tuple[int, int, int] | None:
    """(first byte, where the body starts, its length), or None until enough arrived."""
    length = 0
    for i in range(1, 5):
        if len(buffer) <= i:
            return None
        digit = buffer[i]
        length += (digit & 0x7F) << 7 * (i - 1)
        if not digit & 0x80:
            if length > bound:
                raise PacketError(f"packet type {buffer[0] >> 4} announces {length} bytes, "
                                  f"more than the {bound} accepted")
            return buffer[0], i + 1, length
    raise PacketError("remaining length longer than four bytes")


class _Reader:
    def __init__(self, body: bytes, kind: int) -> None:
        self.body, self.at, self.kind = body, 0, kind

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.body):
            raise PacketError(f"packet type {self.kind} ends early")
        out = self.body[self.at:self.at + n]
        self.at += n
        return out

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def blob(self) -> bytes:
        return self.take(self.u16())

    def text(self, what: str) -> str:
        try:
            text = self.blob().decode()
        except UnicodeDecodeError:
            raise PacketError(f"{what} is not valid UTF-8") from None
        check_text(text, what)
        return text

    def packet_id(self) -> int:
        packet_id = self.u16()
        if packet_id == 0:
            raise PacketError(f"packet type {self.kind} has packet id 0")
        return packet_id

    def rest(self) -> bytes:
        out = self.body[self.at:]
        self.at = len(self.body)
        return out

    def done(self) -> None:
        if self.at != len(self.body):
            raise PacketError(f"packet type {self.kind} has {len(self.body) - self.at} "
                              "bytes too many")


_FIXED_FLAGS = {CONNECT: 0, CONNACK: 0, PUBACK: 0, SUBSCRIBE: 2, SUBACK: 0, PINGREQ: 0,
                PINGRESP: 0, DISCONNECT: 0}


def decode_body(first: int, body: bytes) -> Packet:
    """One packet from its first byte and its body (after the remaining length)."""
    kind, flags = first >> 4, first & 0x0F
    if kind != PUBLISH and _FIXED_FLAGS.get(kind) != flags:
        raise PacketError(f"packet type {kind} with flags {flags:#x} is not MQTT 3.1.1 "
                          "or not one this client knows")
    r = _Reader(body, kind)
    packet: Packet
    if kind == PUBLISH:
        qos = flags >> 1 & 3
        if qos == 3:
            raise PacketError("PUBLISH with QoS 3")
        topic = r.text("topic")
        packet_id = r.packet_id() if qos else None
        packet = Publish(topic, r.rest(), qos, bool(flags & 1), bool(flags & 8), packet_id)
    elif kind == CONNACK:
        ack, code = r.take(1)[0], r.take(1)[0]
        if ack & 0xFE:
            raise PacketError(f"CONNACK flags {ack:#x}")
        packet = ConnAck(bool(ack & 1), code)
    elif kind == PUBACK:
        packet = PubAck(r.packet_id())
    elif kind == SUBACK:
        packet_id = r.packet_id()
        codes = tuple(r.rest())
        if not codes or any(c not in (0, 1, 2, SUBACK_FAILURE) for c in codes):
            raise PacketError(f"SUBACK return codes {codes[:8]!r}")
        packet = SubAck(packet_id, codes)
    elif kind == SUBSCRIBE:
        packet_id = r.packet_id()
        filters = []
        while r.at < len(body):
            filters.append((r.text("topic filter"), r.take(1)[0]))
        if not filters or any(q > 2 for _, q in filters):
            raise PacketError("SUBSCRIBE without filters or with QoS over 2")
        packet = Subscribe(packet_id, tuple(filters))
    elif kind == CONNECT:
        packet = _decode_connect(r)
    else:
        packet = Empty(kind)
    r.done()
    return packet


def _decode_connect(r: _Reader) -> Connect:
    if r.text("protocol") != "MQTT" or r.take(1)[0] != PROTOCOL_LEVEL:
        raise PacketError("CONNECT is not MQTT 3.1.1")
    flags = r.take(1)[0]
    if flags & 0x01 or (not flags & 0x04 and flags & 0x38) or flags >> 3 & 3 == 3:
        raise PacketError(f"CONNECT flags {flags:#x}")
    keepalive = r.u16()
    client_id = r.text("client id")
    will = None
    if flags & 0x04:
        will = Publish(r.text("will topic"), r.blob(), flags >> 3 & 3, bool(flags & 0x20))
    username = r.text("username") if flags & 0x80 else None
    password = r.blob() if flags & 0x40 else None
    return Connect(client_id, bool(flags & 0x02), keepalive, username, password, will)
