"""Wire format v1: golden bytes from the spec, round trips, and strict decoding."""

from __future__ import annotations

import math
import random
import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import wire
from agent.errors import WireFormatError
from agent.readings import Quality, Reading, Value
from agent.wire import (
    AGGREGATE_KEYS,
    INT64_MAX,
    INT64_MIN,
    MAX_BATCH_AGGREGATES,
    MAX_BATCH_EVENTS,
    MAX_BATCH_READINGS,
    MAX_BATCH_SERIES,
    MAX_BODY_BYTES,
    Batch,
    BufferHealth,
    Series,
    Status,
    build_series,
    decode_batch,
    decode_status,
    encode_batch,
    encode_status,
    event_from_map,
    event_to_map,
    iter_readings,
    parse_topic,
    topic_for,
)
from agent.wire import decode as wire_decode

# --------------------------------------------------------------------------- golden payload

GOLDEN_BATCH = Batch(
    gw="gw-1",
    boot=1,
    seq=7,
    created=1_700_000_002_000,
    series=(
        Series("m1", "v", "V", 1_700_000_000_000, (0, 1000), (230.5, 0.1), (0, 0)),
        Series("m1", "n", None, 1_700_000_000_000, (0, 1000), (7, None), (0, 2)),
    ),
    aggregates=(),
    events=({"t": 1_700_000_001_000, "kind": "up", "dev": "m1", "msg": ""},),
)

# Derived by hand from docs/wire-format.md ("Worked example"), one line per item.
GOLDEN_HEX = """
53 53 43 31 00                      magic SSC1, codec 0
87                                  map, 7 pairs
a2 67 77  a4 67 77 2d 31            "gw": "gw-1"
a4 62 6f 6f 74  01                  "boot": 1
a3 73 65 71  07                     "seq": 7
a7 63 72 65 61 74 65 64  cf 00 00 01 8b cf e5 6f d0     "created": 1700000002000
a6 73 65 72 69 65 73  92            "series": array of 2
87                                  series[0], map of 7
a3 64 65 76  a2 6d 31               "dev": "m1"
a2 70 74  a1 76                     "pt": "v"
a4 75 6e 69 74  a1 56               "unit": "V"
a2 74 30  cf 00 00 01 8b cf e5 68 00                    "t0": 1700000000000
a2 64 74  92 00 cd 03 e8            "dt": [0, 1000]
a1 76  92 ca 43 66 80 00 cb 3f b9 99 99 99 99 99 9a    "v": [230.5 (f32), 0.1 (f64)]
a1 71  92 00 00                     "q": [0, 0]
87                                  series[1], map of 7
a3 64 65 76  a2 6d 31               "dev": "m1"
a2 70 74  a1 6e                     "pt": "n"
a4 75 6e 69 74  c0                  "unit": nil
a2 74 30  cf 00 00 01 8b cf e5 68 00                    "t0": 1700000000000
a2 64 74  92 00 cd 03 e8            "dt": [0, 1000]
a1 76  92 07 c0                     "v": [7, nil]
a1 71  92 00 02                     "q": [0, 2 (comm error)]
aa 61 67 67 72 65 67 61 74 65 73  90                    "aggregates": []
a6 65 76 65 6e 74 73  91            "events": array of 1
84                                  events[0], map of 4
a1 74  cf 00 00 01 8b cf e5 6b e8   "t": 1700000001000
a4 6b 69 6e 64  a2 75 70            "kind": "up"
a3 64 65 76  a2 6d 31               "dev": "m1"
a3 6d 73 67  a0                     "msg": ""
"""


def _hex_bytes(annotated: str) -> bytes:
    out = bytearray()
    for line in annotated.strip().splitlines():
        for token in line.split():
            if len(token) != 2 or any(c not in "0123456789abcdef" for c in token):
                break  # the rest of the line is the comment
            out.append(int(token, 16))
    return bytes(out)


def test_golden_payload_matches_the_spec() -> None:
    assert encode_batch(GOLDEN_BATCH, codec=0) == _hex_bytes(GOLDEN_HEX)


def test_golden_payload_decodes() -> None:
    decoded = decode_batch(_hex_bytes(GOLDEN_HEX))
    assert decoded == GOLDEN_BATCH
    assert type(decoded.series[0].v[0]) is float
    assert type(decoded.series[1].v[0]) is int


def test_golden_example_is_the_one_in_the_docs() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "wire-format.md").read_text()
    compact = _hex_bytes(GOLDEN_HEX).hex(" ")
    assert compact in " ".join(doc.split()), "docs/wire-format.md must show the golden payload"


# --------------------------------------------------------------------------- float width


@pytest.mark.parametrize(
    ("value", "tag", "width"),
    [
        (230.0, 0xCA, 5),  # integral f32 register value: still a float on the wire
        (230.5, 0xCA, 5),
        (struct.unpack("f", struct.pack("f", 230.1))[0], 0xCA, 5),  # an f32 register's 230.1
        (230.1, 0xCB, 9),  # a Python 230.1 is not f32-exact
        (1e300, 0xCB, 9),  # beyond the f32 range
        (-0.0, 0xCA, 5),
        (5e-324, 0xCB, 9),  # subnormal f64
    ],
)
def test_float_width(value: float, tag: int, width: int) -> None:
    series = (Series("d", "p", None, 0, (0,), (value,), (0,)),)
    body = encode_batch(Batch("g", 1, 1, 0, series), codec=0)
    v_key = b"\xa1v\x91"
    at = body.index(v_key) + len(v_key)
    assert body[at] == tag
    assert len(body[at : body.index(b"\xa1q")]) == width
    decoded = decode_batch(body).series[0].v[0]
    assert type(decoded) is float
    assert decoded == value
    assert math.copysign(1, decoded) == math.copysign(1, value)


# --------------------------------------------------------------------------- hypothesis round trips

names = st.text(min_size=1, max_size=12)  # any unicode, not only ASCII
gw_ids = st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True)
ints64 = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
values: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    ints64,
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.floats(allow_nan=False, allow_infinity=False),
)


@st.composite
def series_st(draw: st.DrawFn) -> Series:
    n = draw(st.integers(min_value=1, max_value=12))
    dt = (0, *draw(st.lists(st.integers(0, 10**7), min_size=n - 1, max_size=n - 1)))
    return Series(
        dev=draw(names),
        pt=draw(names),
        unit=draw(st.none() | names),
        t0=draw(st.integers(0, 2**45)),
        dt=dt,
        v=tuple(draw(st.lists(values, min_size=n, max_size=n))),
        q=tuple(draw(st.lists(st.sampled_from([int(q) for q in Quality]), min_size=n, max_size=n))),
    )


json_like = st.recursive(
    st.none()
    | st.booleans()
    | ints64
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def aggregate_st(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(st.integers(0, 2**45))
    valid = draw(st.booleans())
    item: dict[str, Any] = {
        "kpi": draw(names),
        "src": draw(names),
        "start": start,
        "end": start + draw(st.integers(1, 10**8)),
        "value": draw(values) if valid else None,
        "valid": valid,
        "n": draw(st.integers(0, 10**6)),
        "expected": draw(st.integers(0, 10**6)),
        "unit": draw(st.none() | names),
    }
    extras = draw(
        st.dictionaries(names.filter(lambda k: k not in AGGREGATE_KEYS), json_like, max_size=3)
    )
    item.update(extras)
    return item


events_st = st.fixed_dictionaries(
    {
        "t": st.integers(0, 2**45),
        "kind": names,
        "dev": st.none() | names,
        "msg": st.text(max_size=20),
    }
)

batches = st.builds(
    Batch,
    gw=gw_ids,
    boot=st.integers(0, 2**31),
    seq=st.integers(1, 2**40),
    created=st.integers(0, 2**45),
    series=st.lists(series_st(), max_size=4).map(tuple),
    aggregates=st.lists(aggregate_st(), max_size=3).map(tuple),
    events=st.lists(events_st, max_size=3).map(tuple),
)


def _same_types(a: object, b: object) -> bool:
    """Equal and of the same types all the way down (1 == 1.0 == True would hide a bug)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_types(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_types(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches, codec=st.sampled_from([0, 1]))
def test_round_trip(batch: Batch, codec: int) -> None:
    decoded = decode_batch(encode_batch(batch, codec=codec))
    assert decoded == batch
    for got, sent in zip(decoded.series, batch.series, strict=True):
        assert _same_types(got.v, sent.v)
    assert _same_types(decoded.aggregates, batch.aggregates)
    assert _same_types(decoded.events, batch.events)


readings_st = st.lists(
    st.builds(
        Reading,
        device=st.sampled_from(["meter-1", "meter-2", "zähler"]),
        point=st.sampled_from(["voltage", "power"]),
        unit=st.sampled_from(["V", "W"]),
        t=st.integers(0, 10**6),
        value=values,
        quality=st.sampled_from(list(Quality)),
    ),
    max_size=40,
)


@settings(max_examples=100)
@given(readings=readings_st, codec=st.sampled_from([0, 1]))
def test_readings_round_trip_through_the_wire(readings: list[Reading], codec: int) -> None:
    batch = Batch("gw-1", 1, 1, 0, build_series(readings))
    out = list(iter_readings(decode_batch(encode_batch(batch, codec=codec))))
    # Expected: grouped by (device, point) in first-seen order, stable by time inside a group;
    # the unit of a series is its last reading's.
    first_seen: dict[tuple[str, str], int] = {}
    for r in readings:
        first_seen.setdefault((r.device, r.point), len(first_seen))
    ordered = sorted(readings, key=lambda r: (first_seen[(r.device, r.point)], r.t))
    last_unit = {(r.device, r.point): r.unit for r in sorted(readings, key=lambda r: r.t)}
    expected = [
        Reading(r.device, r.point, last_unit[(r.device, r.point)], r.t, r.value, r.quality)
        for r in ordered
    ]
    assert out == expected
    assert all(type(a.value) is type(b.value) for a, b in zip(out, expected, strict=True))


# --------------------------------------------------------------------------- build_series


def test_build_series_groups_sorts_and_deltas() -> None:
    g, c = Quality.GOOD, Quality.COMM_ERROR
    readings = [
        Reading("m1", "v", "V", 2000, 231.0, g),
        Reading("m2", "p", "W", 1000, 5, g),
        Reading("m1", "v", "V", 1000, 230.0, g),
        Reading("m1", "v", "V", 1000, None, c),  # same t: keeps its arrival order
        Reading("m1", "v", "mV", 4000, 229.0, g),  # unit changed: the last one wins
    ]
    assert build_series(readings) == (
        Series(
            "m1", "v", "mV", 1000, (0, 0, 1000, 2000), (230.0, None, 231.0, 229.0), (0, 2, 0, 0)
        ),
        Series("m2", "p", "W", 1000, (0,), (5,), (0,)),
    )


@pytest.mark.parametrize(
    ("value", "quality", "wire_value", "wire_quality"),
    [
        (math.nan, Quality.GOOD, None, Quality.OUT_OF_RANGE),
        (math.inf, Quality.GOOD, None, Quality.OUT_OF_RANGE),
        (-math.inf, Quality.STALE, None, Quality.STALE),  # a bad quality is kept
        (math.nan, Quality.COMM_ERROR, None, Quality.COMM_ERROR),
        (2**64, Quality.GOOD, None, Quality.OUT_OF_RANGE),
        (True, Quality.GOOD, 1, Quality.GOOD),
        (False, Quality.GOOD, 0, Quality.GOOD),
        (INT64_MIN, Quality.GOOD, INT64_MIN, Quality.GOOD),
        (1.5, Quality.GOOD, 1.5, Quality.GOOD),
    ],
)
def test_build_series_values_that_cannot_be_sent(
    value: Value, quality: Quality, wire_value: Value, wire_quality: Quality
) -> None:
    (s,) = build_series([Reading("d", "p", None, 0, value, quality)])
    assert s.v == (wire_value,)
    assert type(s.v[0]) is type(wire_value)
    assert s.q == (int(wire_quality),)
    encode_batch(Batch("g", 1, 1, 0, (s,)))  # and it can be sent


def test_event_maps() -> None:
    from agent.readings import Event

    event = Event(t=5, kind="device_down", device="m1", message="no answer")
    assert event_to_map(event) == {"t": 5, "kind": "device_down", "dev": "m1", "msg": "no answer"}
    assert event_from_map(event_to_map(event)) == event


# --------------------------------------------------------------------------- strict decoding


def _body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "gw": "gw-1",
        "boot": 1,
        "seq": 1,
        "created": 0,
        "series": [
            {"dev": "m", "pt": "p", "unit": "V", "t0": 0, "dt": [0, 10], "v": [1.5, 2], "q": [0, 0]}
        ],
        "aggregates": [
            {
                "kpi": "k",
                "src": "m.p",
                "start": 0,
                "end": 10,
                "value": 1.0,
                "valid": True,
                "n": 1,
                "expected": 1,
                "unit": "V",
            }
        ],
        "events": [{"t": 0, "kind": "up", "dev": None, "msg": ""}],
    }
    body.update(changes)
    return body


def _plain(obj: object) -> bytes:
    return b"SSC1\x00" + msgpack.packb(obj, use_bin_type=True)


def _series(**changes: Any) -> list[dict[str, Any]]:
    s = dict(_body()["series"][0])
    s.update(changes)
    return [s]


def _aggregate(**changes: Any) -> list[dict[str, Any]]:
    a = dict(_body()["aggregates"][0])
    a.update(changes)
    return [{k: v for k, v in a.items() if v is not _DROP}]


_DROP = object()


def test_the_optional_store_key_round_trips() -> None:
    assert decode_batch(_plain(_body())).store is None
    assert decode_batch(_plain(_body(store="0123abcd0123abcd"))).store == "0123abcd0123abcd"
    batch = Batch("g", 1, 1, 0, (), store="00ff00ff00ff00ff")
    for codec in (0, 1):
        assert decode_batch(encode_batch(batch, codec=codec)) == batch
    # without it, the bytes are those of a batch of an earlier release
    plain = Batch("g", 1, 1, 0, ())
    assert msgpack.unpackb(encode_batch(plain, codec=0)[5:])  == {
        "gw": "g", "boot": 1, "seq": 1, "created": 0, "series": [], "aggregates": [],
        "events": []}


def test_valid_reference_body_decodes() -> None:
    batch = decode_batch(_plain(_body()))
    assert batch.n_readings == 2
    assert batch.series[0].v == (1.5, 2)


BAD_BODIES: list[tuple[str, object, str]] = [
    ("not a map", [1, 2], "body: must be a map, got list"),
    ("missing key", {k: v for k, v in _body().items() if k != "seq"}, "body: missing key 'seq'"),
    ("extra key", _body(extra=1), "body: unknown key 'extra'"),
    ("store empty", _body(store=""), "store: must not be empty"),
    ("store not str", _body(store=7), "store: must be a str, got int"),
    ("store pattern", _body(store="a b"), "store: 'a b' is not a store id"),
    ("store too long", _body(store="a" * 65), "store: '" + "a" * 40 + "' is not"),
    ("gw pattern", _body(gw="gw/1"), "gw: 'gw/1' is not a gateway id"),
    ("gw empty", _body(gw=""), "gw: must not be empty"),
    ("gw not str", _body(gw=5), "gw: must be a str, got int"),
    ("seq bool", _body(seq=True), "seq: must be an int, got bool"),
    ("seq zero", _body(seq=0), "seq: must be ≥ 1, got 0"),
    ("boot float", _body(boot=1.0), "boot: must be an int, got float"),
    (
        "uint64",
        _body(created=2**64 - 1),
        "created: 18446744073709551615 does not fit a signed 64-bit int",
    ),
    ("series not list", _body(series={}), "series: must be a list of series maps, got map"),
    ("series item", _body(series=[3]), "series[0]: must be a map, got int"),
    ("series extra key", _body(series=_series(x=1)), "series[0]: unknown key 'x'"),
    ("series missing", _body(series=[{"dev": "m"}]), "series[0]: missing key 'pt'"),
    ("dt not list", _body(series=_series(dt=5)), "series[0].dt: must be a list of int, got int"),
    ("dt float", _body(series=_series(dt=[0, 1.0])), "series[0].dt: must be a list of int"),
    ("dt bool", _body(series=_series(dt=[0, True])), "series[0].dt: must be a list of int"),
    (
        "dt negative",
        _body(series=_series(dt=[0, -5])),
        "series[0].dt[1]: must not be negative, got -5",
    ),
    ("dt first", _body(series=_series(dt=[3, 5])), "series[0].dt[0]: must be 0"),
    (
        "lengths",
        _body(series=_series(q=[0])),
        "series[0]: dt, v and q must have the same length (2, 2, 1)",
    ),
    ("empty series", _body(series=_series(dt=[], v=[], q=[])), "series[0]: holds no readings"),
    (
        "v bool",
        _body(series=_series(v=[True, 1])),
        "series[0].v[0]: must be an int, a float or nil, got bool",
    ),
    (
        "v str",
        _body(series=_series(v=["1", 1])),
        "series[0].v[0]: must be an int, a float or nil, got str",
    ),
    ("v nan", _body(series=_series(v=[math.nan, 1])), "series[0].v[0]: nan is not allowed"),
    ("v inf", _body(series=_series(v=[1, -math.inf])), "series[0].v[1]: -inf is not allowed"),
    ("q unknown", _body(series=_series(q=[0, 9])), "series[0].q[1]: must be a quality code 0-4"),
    ("q bool", _body(series=_series(q=[False, 0])), "series[0].q[0]: must be a quality code 0-4"),
    ("dev empty", _body(series=_series(dev="")), "series[0].dev: must not be empty"),
    ("unit int", _body(series=_series(unit=1)), "series[0].unit: must be a str or nil, got int"),
    (
        "t overflow",
        _body(series=_series(t0=INT64_MAX)),
        "series[0]: the last timestamp does not fit",
    ),
    (
        "agg missing",
        _body(aggregates=_aggregate(expected=_DROP)),
        "aggregates[0]: missing key 'expected'",
    ),
    (
        "agg valid int",
        _body(aggregates=_aggregate(valid=1)),
        "aggregates[0].valid: must be a bool, got int",
    ),
    (
        "agg invalid value",
        _body(aggregates=_aggregate(valid=False)),
        "aggregates[0].value: must be nil when valid",
    ),
    (
        "agg window",
        _body(aggregates=_aggregate(end=0)),
        "aggregates[0]: end (0) must be after start (0)",
    ),
    ("agg n negative", _body(aggregates=_aggregate(n=-1)), "aggregates[0].n: must be ≥ 0"),
    (
        "agg extra bin",
        _body(aggregates=_aggregate(extra=[1, {"x": math.nan}])),
        "aggregates[0].extra[1].x: nan",
    ),
    ("event not map", _body(events=["up"]), "events[0]: must be a map, got str"),
    (
        "event extra key",
        _body(events=[{"t": 0, "kind": "up", "dev": None, "msg": "", "x": 1}]),
        "events[0]: unknown key 'x'",
    ),
    (
        "event missing",
        _body(events=[{"t": 0, "kind": "up", "dev": None}]),
        "events[0]: missing key 'msg'",
    ),
    (
        "event msg nil",
        _body(events=[{"t": 0, "kind": "up", "dev": None, "msg": None}]),
        "events[0].msg: must be a str",
    ),
]


@pytest.mark.parametrize(("case", "body", "message"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_bodies_name_what_and_where(case: str, body: object, message: str) -> None:
    with pytest.raises(WireFormatError) as caught:
        decode_batch(_plain(body))
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_aggregate_extras_are_kept() -> None:
    batch = decode_batch(_plain(_body(aggregates=_aggregate(p95=3.5, tz="Europe/Berlin"))))
    assert batch.aggregates[0]["p95"] == 3.5
    assert batch.aggregates[0]["tz"] == "Europe/Berlin"


def test_repeated_map_key() -> None:
    # msgpack would let the second "seq" win silently; v1 maps never repeat a key.
    packer = msgpack.Packer()
    body = _body()
    raw = packer.pack_map_header(len(body) + 1) + b"".join(
        packer.pack(k) + packer.pack(v) for k, v in body.items()
    )
    raw += packer.pack("seq") + packer.pack(2)
    with pytest.raises(WireFormatError, match="repeats the key 'seq'"):
        decode_batch(b"SSC1\x00" + raw)


def _zstd(body: bytes, *, content_size: bool = True) -> bytes:
    return b"SSC1\x01" + zstandard.ZstdCompressor(write_content_size=content_size).compress(body)


BAD_PAYLOADS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "payload too short: 0 bytes"),
    ("short", b"SSC1", "payload too short: 4 bytes"),
    ("magic", b"SSC2\x00\x80", "wrong magic 53 53 43 32"),
    ("json", b'{"gw": 1}', "wrong magic 7b 22 67 77"),
    ("codec", b"SSC1\x02\x80", "unknown codec 0x02"),
    ("plain trailing", _plain(_body()) + b"\x00", "msgpack body: trailing bytes"),
    ("plain empty body", b"SSC1\x00", "msgpack body:"),
    ("bin value", b"SSC1\x00" + msgpack.packb({"gw": b"x"}, use_bin_type=True), "msgpack body:"),
    ("zstd garbage", b"SSC1\x01not a zstd frame", "zstd frame header:"),
    ("zstd truncated", _zstd(msgpack.packb(_body()))[:-4], "zstd"),
    ("zstd trailing", _zstd(msgpack.packb(_body())) + b"x", "zstd"),
    (
        "zstd no size trailing",
        _zstd(msgpack.packb(_body()), content_size=False) + b"xy",
        "2 bytes after the zstd frame",
    ),
    ("zstd no size truncated", _zstd(msgpack.packb(_body()), content_size=False)[:-3], "zstd"),
    ("zstd bad body", _zstd(b"\x93\x01\x02\x03"), "body: must be a map, got list"),
]


@pytest.mark.parametrize(
    ("case", "payload", "message"), BAD_PAYLOADS, ids=[c[0] for c in BAD_PAYLOADS]
)
def test_bad_payloads(case: str, payload: bytes, message: str) -> None:
    with pytest.raises(WireFormatError) as caught:
        decode_batch(payload)
    assert str(caught.value).startswith(message), str(caught.value)


def test_zstd_without_content_size_decodes() -> None:
    body = msgpack.packb(_body())
    assert decode_batch(_zstd(body, content_size=False)) == decode_batch(_plain(_body()))


@pytest.mark.parametrize("content_size", [True, False])
def test_zip_bomb_is_refused(content_size: bool) -> None:
    # 4 MiB of zeros: a few hundred bytes compressed, refused by a 1 MiB body limit.
    bomb = _zstd(b"\x00" * (4 * 1024 * 1024), content_size=content_size)
    assert len(bomb) < 1000
    with pytest.raises(WireFormatError, match="body limit"):
        decode_batch(bomb, max_body_bytes=1024 * 1024)


def test_plain_body_over_the_limit() -> None:
    with pytest.raises(WireFormatError, match="over the 10-byte limit"):
        decode_batch(_plain(_body()), max_body_bytes=10)


def _only_wire_errors(payload: bytes) -> None:
    try:
        decode_batch(payload)
    except WireFormatError as exc:
        message = str(exc)
    else:
        return
    assert "internal error" not in message, f"a check has a hole: {message}"


@pytest.mark.parametrize("codec", [0, 1])
def test_every_truncation_is_refused(codec: int) -> None:
    payload = encode_batch(GOLDEN_BATCH, codec=codec)
    for n in range(len(payload)):
        with pytest.raises(WireFormatError):
            decode_batch(payload[:n])


@pytest.mark.parametrize("codec", [0, 1])
def test_bit_flips_give_only_wire_errors(codec: int) -> None:
    payload = encode_batch(GOLDEN_BATCH, codec=codec)
    holes: list[str] = []
    refused = 0
    for bit in range(len(payload) * 8):
        flipped = bytearray(payload)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            decode_batch(bytes(flipped))
        except WireFormatError as exc:
            refused += 1
            if "internal error" in str(exc):
                holes.append(f"bit {bit}: {exc}")
    assert holes == []
    assert refused > len(payload)  # most flips break something (a flipped value may not)


@settings(max_examples=300)
@given(garbage=st.binary(max_size=200), header=st.sampled_from([b"", b"SSC1\x00", b"SSC1\x01"]))
def test_random_garbage_gives_only_wire_errors(garbage: bytes, header: bytes) -> None:
    _only_wire_errors(header + garbage)


msgpack_objects = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats()
    | st.text(max_size=6)
    | st.binary(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["gw", "seq", "dt", "v", "q", "t", "x"]), inner, max_size=7
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300)
@given(obj=msgpack_objects)
def test_structured_garbage_gives_only_wire_errors(obj: object) -> None:
    # Well-formed msgpack of the wrong shape exercises the body checks, not the parser.
    try:
        raw = msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError):
        return
    _only_wire_errors(b"SSC1\x00" + raw)


@settings(max_examples=200)
@given(
    body=st.builds(_body),
    key=st.sampled_from(["series", "aggregates", "events"]),
    junk=msgpack_objects,
)
def test_junk_inside_a_valid_body(body: dict[str, Any], key: str, junk: object) -> None:
    body[key] = [*body[key], junk]
    try:
        raw = msgpack.packb(body, use_bin_type=True)
    except (OverflowError, ValueError):
        return
    _only_wire_errors(b"SSC1\x00" + raw)


# --------------------------------------------------------------------------- the encoder refuses


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (Batch("gw 1", 1, 1, 0, ()), "gw: 'gw 1' is not a gateway id"),
        (Batch("g", 1, 0, 0, ()), "seq: must be ≥ 1"),
        (
            Batch("g", 1, 1, 0, (Series("d", "p", None, 0, (0,), (math.nan,), (0,)),)),
            "series[0].v[0]: nan",
        ),
        (
            Batch("g", 1, 1, 0, (Series("d", "p", None, 0, (0,), (True,), (0,)),)),
            "series[0].v[0]: must be",
        ),
        (
            Batch("g", 1, 1, 0, (Series("d", "p", None, 0, (0, -1), (1, 2), (0, 0)),)),
            "series[0].dt[1]",
        ),
        (Batch("g", 1, 1, 0, (), events=({"t": 0, "kind": "up"},)), "events[0]: missing key 'dev'"),
    ],
)
def test_encoder_refuses_what_a_receiver_would(batch: Batch, message: str) -> None:
    with pytest.raises(WireFormatError) as caught:
        encode_batch(batch)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(("codec", "level"), [(2, 3), (1, 0), (1, 20)])
def test_encoder_arguments(codec: int, level: int) -> None:
    with pytest.raises(ValueError, match=r"codec|level"):
        encode_batch(GOLDEN_BATCH, codec=codec, level=level)


# --------------------------------------------------------------------------- size on the wire


def _meter_batch() -> Batch:
    """1000 series × 10 readings, 1 s apart, values quantized like real f32 meter registers."""
    rng = random.Random(7)

    def f32(x: float) -> float:
        return float(struct.unpack("f", struct.pack("f", x))[0])

    readings = []
    for i in range(1000):
        dev, kind = f"meter-{i // 10:03d}", i % 3
        x = [0.0, float(rng.randint(200, 5000)), rng.uniform(1000, 90000)][kind]
        for j in range(10):
            if kind == 0:  # voltage, 0.1 V steps around 230 V
                v, pt, unit = f32(round(230 + rng.randint(-25, 25) / 10, 1)), f"voltage_{i}", "V"
            elif kind == 1:  # power, 1 W steps
                x = max(0.0, x + rng.randint(-20, 20))
                v, pt, unit = f32(x), f"power_{i}", "W"
            else:  # energy counter, slowly increasing
                x += rng.choice([0, 0, 0.01, 0.01, 0.02])
                v, pt, unit = f32(round(x, 2)), f"energy_{i}", "kWh"
            readings.append(Reading(dev, pt, unit, 1_700_000_000_000 + j * 1000, v, Quality.GOOD))
    return Batch("gw-017", 3, 42, 1_700_000_010_000, build_series(readings))


def test_bytes_per_reading_target() -> None:
    batch = _meter_batch()
    payload = encode_batch(batch, codec=1, level=3)
    assert decode_batch(payload) == batch
    per_reading = len(payload) / batch.n_readings
    assert per_reading < 4.0, f"{per_reading:.2f} bytes/reading on the wire"


# --------------------------------------------------------------------------- status and topics


def test_status_round_trip() -> None:
    status = Status(state="offline", gw="gw-1", boot=3, t=1_700_000_000_000, version="0.1.0")
    payload = encode_status(status)
    assert (
        payload == b'{"state":"offline","gw":"gw-1","boot":3,"t":1700000000000,"version":"0.1.0"}'
    )
    assert decode_status(payload) == status


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "status: not JSON"),
        (b"[1]", "status: must be a map"),
        (b'{"state":"online","gw":"g","boot":1,"t":1}', "status: missing key 'version'"),
        (b'{"state":"up","gw":"g","boot":1,"t":1,"version":"x"}', "status.state: must be 'online'"),
        (b'{"state":"online","gw":"g/1","boot":1,"t":1,"version":"x"}', "status.gw:"),
        (
            b'{"state":"online","gw":"g","boot":true,"t":1,"version":"x"}',
            "status.boot: must be an int",
        ),
        (b"\xff\xfe", "status: not JSON"),
        (b"[" * 100_000, "status: not JSON"),
    ],
)
def test_status_errors(payload: bytes, message: str) -> None:
    with pytest.raises(WireFormatError) as caught:
        decode_status(payload)
    assert str(caught.value).startswith(message)


def test_status_ignores_unknown_keys() -> None:
    status = decode_status(
        b'{"state":"online","gw":"g","boot":1,"t":2,"version":"x","ip":"10.0.0.2"}'
    )
    assert status == Status("online", "g", 1, 2, "x")


UNWRITABLE = BufferHealth("unwritable", since=1_700_000_000_000, reason="data_dir read-only",
                          held_readings=40, dropped_readings=0)


@pytest.mark.parametrize(
    ("health", "buffer_json"),
    [
        (BufferHealth("ok"), b'{"state":"ok"}'),
        (UNWRITABLE, b'{"state":"unwritable","since":1700000000000,"reason":"data_dir read-only",'
                     b'"held_readings":40,"dropped_readings":0}'),
    ],
)
def test_status_buffer_round_trip(health: BufferHealth, buffer_json: bytes) -> None:
    status = Status("online", "gw-1", 3, 5, "0.2.0", buffer=health)
    payload = encode_status(status)
    assert payload == (b'{"state":"online","gw":"gw-1","boot":3,"t":5,"version":"0.2.0",'
                       b'"buffer":' + buffer_json + b"}")
    assert decode_status(payload) == status


def test_status_without_buffer_decodes_as_not_said() -> None:
    # what 0.1.0 agents and every last will send
    status = decode_status(b'{"state":"offline","gw":"g","boot":1,"t":2,"version":"0.1.0"}')
    assert status.buffer is None


def test_status_buffer_unknown_state_and_keys_are_kept_or_ignored() -> None:
    # a later agent may say more: an unknown state is kept as sent, unknown keys are ignored
    status = decode_status(b'{"state":"online","gw":"g","boot":1,"t":2,"version":"9",'
                           b'"buffer":{"state":"slow","fsync_ms":900,"held_readings":3}}')
    assert status.buffer == BufferHealth("slow", held_readings=3)


@pytest.mark.parametrize(
    ("buffer_json", "message"),
    [
        (b'"ok"', "status.buffer: must be a map"),
        (b"{}", "status.buffer: missing key 'state'"),
        (b'{"state":""}', "status.buffer.state: must not be empty"),
        (b'{"state":1}', "status.buffer.state: must be a str"),
        (b'{"state":"unwritable","since":"yesterday"}', "status.buffer.since: must be an int"),
        (b'{"state":"unwritable","held_readings":-1}', "status.buffer.held_readings: must be"),
        (b'{"state":"unwritable","dropped_readings":true}',
         "status.buffer.dropped_readings: must be an int"),
        (b'{"state":"unwritable","reason":"' + b"x" * 201 + b'"}',
         "status.buffer.reason: longer than 200"),
    ],
)
def test_status_buffer_errors(buffer_json: bytes, message: str) -> None:
    payload = b'{"state":"online","gw":"g","boot":1,"t":2,"version":"x","buffer":' \
        + buffer_json + b"}"
    with pytest.raises(WireFormatError) as caught:
        decode_status(payload)
    assert str(caught.value).startswith(message)
    assert len(str(caught.value)) < 200


def test_status_buffer_refused_at_encoding_too() -> None:
    with pytest.raises(WireFormatError, match=r"status\.buffer\.held_readings"):
        encode_status(Status("online", "g", 1, 2, "x",
                             buffer=BufferHealth("unwritable", held_readings=-5)))


@given(
    state=st.sampled_from(["ok", "unwritable"]),
    since=st.none() | st.integers(-(2**63), 2**63 - 1),
    reason=st.none() | st.text(min_size=1, max_size=200),
    held=st.none() | st.integers(0, 2**63 - 1),
    dropped=st.none() | st.integers(0, 2**63 - 1),
)
def test_status_buffer_round_trip_property(state: str, since: int | None, reason: str | None,
                                           held: int | None, dropped: int | None) -> None:
    status = Status("online", "g", 1, 2, "x",
                    buffer=BufferHealth(state, since, reason, held, dropped))
    assert decode_status(encode_status(status)) == status


@pytest.mark.parametrize(
    ("prefix", "gw", "kind", "topic"),
    [
        ("ssc/v1", "gw-017", "batch", "ssc/v1/gw-017/batch"),
        ("ssc/v1/", "gw-017", "status", "ssc/v1/gw-017/status"),
        ("city", "A_b-9", "batch", "city/A_b-9/batch"),
        ("ssc/v1", "gw-017", "health", "ssc/v1/gw-017/health"),
    ],
)
def test_topics(prefix: str, gw: str, kind: Any, topic: str) -> None:
    assert topic_for(prefix, gw, kind) == topic
    assert parse_topic(prefix, topic) == (gw, kind)


@pytest.mark.parametrize(
    "topic",
    [
        "ssc/v1/gw/other",
        "ssc/v2/gw/batch",
        "ssc/v1/a/b/batch",
        "ssc/v1//batch",
        "ssc/v1/g w/batch",
        "ssc/v1",
    ],
)
def test_parse_topic_refuses(topic: str) -> None:
    with pytest.raises(WireFormatError, match="is not ssc/v1/GATEWAY/batch"):
        parse_topic("ssc/v1", topic)


def test_topic_for_refuses_bad_gateway_ids() -> None:
    with pytest.raises(ValueError, match="not a gateway id"):
        topic_for("ssc/v1", "a/b", "batch")


# --------------------------------------------------------------------------- bounded decoding


def _array32(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)


def _raw_batch(series: bytes, *, aggregates: bytes = b"\x90", events: bytes = b"\x90") -> bytes:
    """A plain v1 payload around raw msgpack for the series, aggregates and events arrays."""
    p = msgpack.Packer(use_bin_type=True)
    head = b"".join(p.pack(x) for x in ("gw", "gw-1", "boot", 1, "seq", 1, "created", 0))
    return (b"SSC1\x00" + p.pack_map_header(7) + head + p.pack("series") + series
            + p.pack("aggregates") + aggregates + p.pack("events") + events)


def _one_series(n: int, dt: bytes = b"\x00", v: bytes = b"\xc0", q: bytes = b"\x00") -> bytes:
    p = msgpack.Packer(use_bin_type=True)
    return (p.pack_map_header(7) + b"".join(p.pack(x) for x in ("dev", "d", "pt", "p", "unit",
                                                                 None, "t0", 0))
            + p.pack("dt") + _array32(n) + dt * n + p.pack("v") + _array32(n) + v * n
            + p.pack("q") + _array32(n) + q * n)


def test_a_batch_at_the_readings_limit_decodes() -> None:
    payload = _raw_batch(b"\x91" + _one_series(MAX_BATCH_READINGS, v=b"\x01"))
    batch = decode_batch(payload)
    assert batch.n_readings == MAX_BATCH_READINGS
    assert batch.series[0].v[-1] == 1


HOSTILE_BODIES: list[tuple[str, bytes, str]] = [
    # A few KiB of zstd inflate to these: millions of containers, each a Python object.
    ("millions of empty arrays", b"SSC1\x00" + _array32(4_000_000) + b"\x90" * 4_000_000,
     "body: an array of 4000000 items, over the limit of 200000"),
    ("millions of empty maps", b"SSC1\x00" + _array32(4_000_000) + b"\x80" * 4_000_000,
     "body: an array of 4000000 items"),
    ("readings over the limit in one series",
     _raw_batch(b"\x91" + _one_series(MAX_BATCH_READINGS + 1)),
     f"series[0].dt: the batch holds more than {MAX_BATCH_READINGS} readings"),
    ("readings over the limit over two series",
     _raw_batch(b"\x92" + _one_series(MAX_BATCH_READINGS // 2 + 1) * 2),
     f"series[1].dt: the batch holds more than {MAX_BATCH_READINGS} readings"),
    ("series over the limit", _raw_batch(_array32(MAX_BATCH_SERIES + 1) + b"\x80" * 10),
     f"series: {MAX_BATCH_SERIES + 1} items, over the limit of {MAX_BATCH_SERIES} series"),
    ("aggregates over the limit",
     _raw_batch(b"\x90", aggregates=_array32(MAX_BATCH_AGGREGATES + 1)),
     f"aggregates: {MAX_BATCH_AGGREGATES + 1} items, over the limit"),
    ("events over the limit", _raw_batch(b"\x90", events=_array32(MAX_BATCH_EVENTS + 1)),
     f"events: {MAX_BATCH_EVENTS + 1} items, over the limit"),
    ("empty arrays inside values",
     _raw_batch(b"\x91" + _one_series(MAX_BATCH_READINGS, v=b"\x90")),
     "series[0].v[0]: must be an int, a float or nil, got list"),
    ("deep nesting", b"SSC1\x00" + b"\x91" * 5000 + b"\xc0", "body[0]"),
    ("huge map header", b"SSC1\x00\xdf\xff\xff\xff\xff", "body: a map of 4294967295 keys"),
    ("huge array header", b"SSC1\x00\xdd\xff\xff\xff\xff", "body: an array of 4294967295"),
    ("truncated array header", b"SSC1\x00\xdd\x00", "body: truncated array header"),
    ("non-str key", b"SSC1\x00\x81\x01\x01", "body: keys must be str"),
]


@pytest.mark.parametrize(
    ("case", "payload", "message"), HOSTILE_BODIES, ids=[c[0] for c in HOSTILE_BODIES]
)
def test_hostile_bodies_are_refused_before_they_are_built(
    case: str, payload: bytes, message: str
) -> None:
    with pytest.raises(WireFormatError) as caught:
        decode_batch(payload)
    assert str(caught.value).startswith(message), str(caught.value)


def test_hostile_zstd_is_refused_by_its_declared_size() -> None:
    # 64 MiB of empty arrays: about 2 KB of zstd, 4.7 GiB of Python lists if built.
    body = _array32(64 * 1024 * 1024 - 5) + b"\x90" * (64 * 1024 * 1024 - 5)
    payload = _zstd(body)
    assert len(payload) < 4096
    with pytest.raises(WireFormatError, match=f"over the {MAX_BODY_BYTES}-byte body limit"):
        decode_batch(payload)


def test_the_object_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire_decode, "MAX_BODY_OBJECTS", 1000)
    nested = _array32(100) + (b"\x9a" + b"\x90" * 10) * 100  # 1,101 objects
    with pytest.raises(WireFormatError, match="more than 1000 msgpack objects"):
        decode_batch(b"SSC1\x00" + nested)
    assert decode_batch(_plain(_body())).n_readings == 2


def test_the_container_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire_decode, "MAX_BODY_CONTAINERS", 50)
    nested = _array32(100) + b"\x90" * 100  # 101 arrays, 100 objects
    with pytest.raises(WireFormatError, match=r"body\[49\]: the body holds more than 50 arrays"):
        decode_batch(b"SSC1\x00" + nested)
    assert decode_batch(_plain(_body())).n_readings == 2


def test_encoder_refuses_batches_over_the_limits() -> None:
    n = MAX_BATCH_READINGS + 1
    big = Batch("g", 1, 1, 0, (Series("d", "p", None, 0, (0,) * n, (1,) * n, (0,) * n),))
    with pytest.raises(WireFormatError, match="over the limit of 200000 per batch"):
        encode_batch(big)
    events = tuple({"t": 0, "kind": "up", "dev": None, "msg": ""}
                   for _ in range(MAX_BATCH_EVENTS + 1))
    with pytest.raises(WireFormatError, match="events: 20001 items"):
        encode_batch(Batch("g", 1, 1, 0, (), events=events))


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    """msgpack built to be cheap in bytes and dear in objects: chains and fans of containers
    holding runs of one item (empty array or map, nil, a 2-char string, a float 64)."""
    item = draw(st.sampled_from([b"\x90", b"\x80", b"\xc0", b"\xa2ab", b"\xcb" + bytes(8),
                                 b"\x91\x90"]))
    shape = draw(st.sampled_from(["chain", "fan"]))
    levels = draw(st.integers(1, 40))
    run = draw(st.integers(0, 3000))
    if shape == "chain":  # [item × run, [item × run, [...]]]: every level open at once
        out = b"".join(_array32(run + 1) + item * run for _ in range(levels)) + b"\x90"
    else:  # [[item × run] × levels]
        out = _array32(levels) + (_array32(run) + item * run) * levels
    return out + draw(st.binary(max_size=3))  # sometimes truncated junk, sometimes trailing


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=hostile_bodies())
def test_hostile_bodies_cost_bounded_memory(body: bytes) -> None:
    # With budgets of 2,000 objects and arrays of 500 items, no body may make the decoder hold
    # more than those objects (~100 bytes each) plus copies of the body, whatever its size.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wire_decode, "MAX_BODY_OBJECTS", 2000)
        mp.setattr(wire_decode, "MAX_ARRAY_LEN", 500)
        tracemalloc.start()
        try:
            with pytest.raises(WireFormatError):
                decode_batch(b"SSC1\x00" + body)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak <= 3 * len(body) + 2000 * 100 + 64 * 1024, (len(body), peak)


# --------------------------------------------------------------------- optional body keys (§3)


def _plain_batch(**extra: object) -> Batch:
    return Batch(gw="gw-1", boot=1, seq=7, created=1_700_000_002_000, series=(), **extra)  # type: ignore[arg-type]


def test_the_optional_clock_key_round_trips_and_is_absent_by_default() -> None:
    plain = encode_batch(_plain_batch(), codec=0)
    assert b"clock" not in plain and decode_batch(plain).clock is None
    unsynced = encode_batch(_plain_batch(clock={"synced": False}), codec=0)
    assert decode_batch(unsynced).clock == {"synced": False}
    assert decode_batch(encode_batch(_plain_batch(clock={"synced": True}))).clock == {
        "synced": True}


@pytest.mark.parametrize(("clock", "error"), [
    ({"synced": 0}, "clock.synced: must be a bool, got int"),
    ({}, "clock: missing key 'synced'"),
    ({"synced": False, "tz": "UTC"}, "clock: unknown key 'tz'"),
    ("unsynced", "clock: must be a map, got str"),
])
def test_a_bad_clock_key_is_refused(clock: object, error: str) -> None:
    body = msgpack.packb({"gw": "gw-1", "boot": 1, "seq": 1, "created": 0, "series": [],
                          "aggregates": [], "events": [], "clock": clock})
    with pytest.raises(WireFormatError, match=error.replace("'", ".")):
        decode_batch(b"SSC1\x00" + body)


def test_an_unknown_body_key_names_the_optional_ones() -> None:
    body = msgpack.packb({"gw": "gw-1", "boot": 1, "seq": 1, "created": 0, "series": [],
                          "aggregates": [], "events": [], "colour": 1})
    with pytest.raises(WireFormatError, match=r"unknown key 'colour'.*store, clock\)"):
        decode_batch(b"SSC1\x00" + body)


def test_encoding_many_series_holds_little_besides_the_body() -> None:
    """1,000 devices × 20 points in one batch: 20,000 series of one reading each.

    The encoder held every packed piece and a checked copy of the whole body: a 44 MiB peak
    for a 1.2 MB body, over what a gateway unit allows the agent. Now a few times the body.
    """
    readings = [Reading(f"meter-{d:04d}", f"p{p}", "W", 1_700_000_000_000, 230.5 + p,
                        Quality.GOOD) for d in range(1000) for p in range(20)]
    batch = wire.Batch(gw="gw-1", boot=1, seq=1, created=1_700_000_000_000,
                       series=wire.build_series(readings), aggregates=(), events=())
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        payload = wire.encode_batch(batch, codec=wire.CODEC_PLAIN)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(payload) > 1_000_000
    assert peak < 3 * len(payload), f"peak {peak:,} bytes for a {len(payload):,}-byte body"
    assert wire.decode_batch(payload) == batch
