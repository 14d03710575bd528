"""agent/mqtt_packets.py: MQTT 3.1.1 packets, bytes worked out by hand from the spec's layouts
(§2.2 fixed header, §3.1 CONNECT, §3.2 CONNACK, §3.3 PUBLISH, §3.4 PUBACK, §3.8 SUBSCRIBE,
§3.9 SUBACK, §3.12–3.14), round trips and garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.mqtt_packets import (
    CONNACK_REFUSALS,
    DISCONNECT,
    PINGREQ,
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
    encode_length,
)

MQTT = "00 04 4d 51 54 54 04"  # protocol name "MQTT", level 4

TABLE: list[tuple[Packet, str]] = [
    # clean session, keepalive 30, client id "gw"
    (Connect("gw", True, 30), f"10 0e {MQTT} 02 00 1e 00 02 67 77"),
    # a persistent session, keepalive 0, empty client id
    (Connect("", False, 0), f"10 0c {MQTT} 00 00 00 00 00"),
    # username 0x80 | password 0x40 | will retain 0x20 | will QoS 1 0x08 | will 0x04 | clean
    (Connect("c", True, 60, "u", b"p", Will("t", b"x", 1, True)),
     f"10 19 {MQTT} ee 00 3c 00 01 63 00 01 74 00 01 78 00 01 75 00 01 70"),
    (Connect("c", True, 60, "u"), f"10 10 {MQTT} 82 00 3c 00 01 63 00 01 75"),
    (ConnAck(False, 0), "20 02 00 00"),
    (ConnAck(True, 0), "20 02 01 00"),
    (ConnAck(False, 5), "20 02 00 05"),
    (Publish("a/b", b"hi", 1, True, packet_id=10), "33 09 00 03 61 2f 62 00 0a 68 69"),
    (Publish("a/b", b"hi", 1, False, True, 10), "3a 09 00 03 61 2f 62 00 0a 68 69"),
    (Publish("a", b""), "30 03 00 01 61"),
    (Publish("é", b"\x00", 0, True), "31 05 00 02 c3 a9 00"),
    (PubAck(0x1234), "40 02 12 34"),
    (Subscribe(1, (("c/set", 1),)), "82 0a 00 01 00 05 63 2f 73 65 74 01"),
    (Subscribe(2, (("#", 0), ("a/+", 1))), "82 0c 00 02 00 01 23 00 00 03 61 2f 2b 01"),
    (SubAck(1, (0x80,)), "90 03 00 01 80"),
    (SubAck(7, (1, 0)), "90 04 00 07 01 00"),
    (Empty(PINGREQ), "c0 00"),
    (Empty(PINGRESP), "d0 00"),
    (Empty(DISCONNECT), "e0 00"),
]


@pytest.mark.parametrize(("packet", "wire"), TABLE)
def test_packets_encode_and_decode_as_the_spec_lays_them_out(packet: Packet, wire: str) -> None:
    data = bytes.fromhex(wire)
    assert encode(packet) == data
    assert Decoder().feed(data) == [packet]


@pytest.mark.parametrize(("length", "wire"), [
    (0, "00"), (127, "7f"), (128, "80 01"), (16_383, "ff 7f"), (16_384, "80 80 01"),
    (2_097_151, "ff ff 7f"), (2_097_152, "80 80 80 01"), (268_435_455, "ff ff ff 7f"),
])
def test_remaining_length_bytes_are_the_specs_examples(length: int, wire: str) -> None:
    assert encode_length(length) == bytes.fromhex(wire)
    header = b"\x30" + bytes.fromhex(wire)
    if length:  # a header alone waits for the body; one byte less is over the bound
        assert Decoder().feed(header) == []
        with pytest.raises(PacketError, match=f"announces {length} bytes"):
            Decoder(max_remaining=length - 1).feed(header)


def test_connack_refusals_are_worded_for_people() -> None:
    assert CONNACK_REFUSALS[4] == "bad username or password"
    assert CONNACK_REFUSALS[5] == "not authorised"
    assert "identifier rejected" in CONNACK_REFUSALS[2]
    assert "unavailable" in CONNACK_REFUSALS[3]


@pytest.mark.parametrize(("packet", "problem"), [
    (Publish("a/+", b""), "wildcard"),
    (Publish("", b""), "empty"),
    (Publish("a\x00b", b""), r"U\+0000"),
    (Publish("\ud800", b""), "UTF-8"),
    (Publish("x" * 70_000, b""), "65535"),
    (Publish("a", b"", 1), "packet id"),
    (Publish("a", b"", 1, packet_id=0), "packet id"),
    (Publish("a", b"", 2, packet_id=1), "QoS 2"),
    (Publish("a", b"", 0, dup=True), "duplicate"),
    (Connect("c", True, 70_000), "keepalive"),
    (Connect("c", True, 1, None, b"p"), "username"),
    (Subscribe(1, ()), "at least one"),
    (PubAck(65_536), "packet id"),
])
def test_what_mqtt_cannot_carry_is_refused_when_encoding(packet: Packet, problem: str) -> None:
    with pytest.raises(PacketError, match=problem):
        encode(packet)


@pytest.mark.parametrize(("wire", "problem"), [
    ("30 ff ff ff ff 01", "longer than four bytes"),
    ("31 04 00 02 c3 28", "not valid UTF-8"),  # a broken two-byte sequence
    ("32 03 00 01 61", "ends early"),  # QoS 1 without its packet id
    ("32 05 00 01 61 00 00", "packet id 0"),
    ("36 03 00 01 61", "QoS 3"),
    ("20 03 00 00 00", "too many"),
    ("20 02 02 00", "CONNACK flags"),
    ("21 02 00 00", "flags"),
    ("90 02 00 01", "return codes"),
    ("90 03 00 01 03", "return codes"),
    ("f0 00", "type 15"),
    ("00 00", "type 0"),
    ("31 03 00 01 00", r"U\+0000"),
])
def test_malformed_packets_are_refused_with_what_is_wrong(wire: str, problem: str) -> None:
    with pytest.raises(PacketError, match=problem):
        Decoder().feed(bytes.fromhex(wire))


def test_a_packet_over_the_bound_is_refused_before_its_body_arrives() -> None:
    decoder = Decoder(max_remaining=1000)
    with pytest.raises(PacketError, match="announces 1001 bytes, more than the 1000 accepted"):
        decoder.feed(bytes.fromhex("30 e9 07"))  # 1001, and no body at all
    assert Decoder(1000).feed(encode(Publish("t", b"x" * 995))) == [Publish("t", b"x" * 995)]


# --- properties ----------------------------------------------------------------------------

topics = st.text(st.characters(blacklist_characters="\x00+#", blacklist_categories=["Cs"]),
                 min_size=1, max_size=40)
texts = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
                max_size=40)
packet_ids = st.integers(1, 0xFFFF)

publishes = st.one_of(
    st.builds(Publish, topics, st.binary(max_size=300), st.just(0), st.booleans()),
    st.builds(Publish, topics, st.binary(max_size=300), st.just(1), st.booleans(), st.booleans(),
              packet_ids),
)
connects = st.builds(
    Connect, texts, st.booleans(), st.integers(0, 0xFFFF), st.none() | texts,
    st.none(), st.none() | st.builds(Will, topics, st.binary(max_size=50), st.integers(0, 2),
                                     st.booleans()),
).map(lambda c: c if c.username is None else Connect(c.client_id, c.clean_session, c.keepalive,
                                                      c.username, b"secret", c.will))
packets: st.SearchStrategy[Packet] = st.one_of(
    publishes, connects,
    st.builds(ConnAck, st.booleans(), st.integers(0, 255)),
    st.builds(PubAck, packet_ids),
    st.builds(Subscribe, packet_ids,
              st.lists(st.tuples(texts.filter(bool), st.integers(0, 2)), min_size=1,
                       max_size=4).map(tuple)),
    st.builds(SubAck, packet_ids,
              st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=4).map(tuple)),
    st.sampled_from([Empty(PINGREQ), Empty(PINGRESP), Empty(DISCONNECT)]),
)


@given(st.lists(packets, max_size=6), st.data())
def test_any_packets_come_back_from_a_stream_cut_anywhere(sent: list[Packet],
                                                         data: st.DataObject) -> None:
    stream = b"".join(encode(p) for p in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = Decoder()
    got: list[Packet] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += decoder.feed(stream[start:end])
    assert got == sent


@given(st.binary(max_size=400), st.integers(0, 300))
def test_garbage_decodes_or_is_refused_and_never_buffers_past_the_bound(
        garbage: bytes, bound: int) -> None:
    decoder = Decoder(max_remaining=bound)
    problem = ""
    try:
        for i in range(0, len(garbage), 7):
            decoder.feed(garbage[i:i + 7])
    except PacketError as exc:
        problem = str(exc)
    # refused with a reason, or waiting for the rest of at most one packet within the bound
    assert problem or len(decoder._buffer) <= bound + 5
