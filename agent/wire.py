"""Wire format v1: batches as ``SSC1`` + codec byte + msgpack body (zstd when codec is 1).

Pure: no I/O, no clock. ``docs/wire-format.md`` is the spec; this module and that document
must agree (``tests/agent/test_wire.py`` holds a golden payload derived from the spec by hand).

Decisions recorded here and in the spec:
- Non-finite floats (NaN, ±inf) and ints outside the signed 64-bit range are never sent.
  ``build_series`` turns them into ``None`` with quality ``OUT_OF_RANGE`` (a bad quality already
  on the reading is kept); the encoder and the decoder refuse them anywhere in a batch.
- ``build_series`` sends a bool value as the int 0 or 1 (msgpack bools are not values here).
- Top-level, series and event maps are exact in v1 (a missing or unknown key is an error),
  except the optional body keys of ``OPTIONAL_BODY_KEYS`` (spec §3 and §9): a receiver of an
  older release refuses them, so receivers are upgraded before gateways.
  Aggregate maps must hold the required keys and may carry operator extras, which are kept.
- The encoder runs the same checks as the decoder, so the agent never stores a batch that a
  receiver would refuse.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgpack
import zstandard

from agent.errors import WireFormatError
from agent.readings import Event, Quality, Reading, Value

__all__ = [
    "AGGREGATE_KEYS",
    "CLOCK_KEYS",
    "CODEC_PLAIN",
    "CODEC_ZSTD",
    "EVENT_KEYS",
    "MAGIC",
    "MAX_BATCH_AGGREGATES",
    "MAX_BATCH_EVENTS",
    "MAX_BATCH_READINGS",
    "MAX_BATCH_SERIES",
    "MAX_BODY_BYTES",
    "OPTIONAL_BODY_KEYS",
    "Batch",
    "BufferHealth",
    "Series",
    "Status",
    "build_series",
    "decode_batch",
    "decode_status",
    "encode_batch",
    "encode_status",
    "event_from_map",
    "event_to_map",
    "iter_readings",
    "parse_topic",
    "topic_for",
]

MAGIC: Final = b"SSC1"
CODEC_PLAIN: Final = 0x00
CODEC_ZSTD: Final = 0x01
HEADER_LEN: Final = len(MAGIC) + 1
# Per-batch limits (docs/wire-format.md §11): what one batch may hold. A receiver checks them
# while decoding, before the items are built; the encoder refuses batches over them.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
MAX_BATCH_READINGS: Final = 200_000
MAX_BATCH_SERIES: Final = 50_000
MAX_BATCH_AGGREGATES: Final = 20_000
MAX_BATCH_EVENTS: Final = 20_000
# No v1 array is longer than a batch's readings, no v1 map has more keys than this (aggregate
# maps with their operator extras included), and the whole body holds at most this many
# msgpack objects (counted from container headers, before the items are built).
MAX_ARRAY_LEN: Final = MAX_BATCH_READINGS
MAX_MAP_LEN: Final = 64
MAX_BODY_OBJECTS: Final = 2_000_000
# Arrays and maps among them: each costs a Python object of 56+ bytes and, read item by item,
# far more time than a number; a v1 batch has about four per series.
MAX_BODY_CONTAINERS: Final = 300_000
# For frames without a content size (decoded as a stream): the largest window zstd levels 1-19
# use (level 19: window log 23). A bigger one means --long / ultra settings, and the receiver
# would hold that much memory per frame. Sized frames decode into their (capped) output.
MAX_ZSTD_WINDOW: Final = 8 * 1024 * 1024
MAX_STR_LEN: Final = 1024 * 1024
MAX_EXTRA_DEPTH: Final = 32
# body → aggregates → aggregate map → extra value (depth 0 of MAX_EXTRA_DEPTH) → …
MAX_BODY_DEPTH: Final = MAX_EXTRA_DEPTH + 4
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

BODY_KEYS: Final = ("gw", "boot", "seq", "created", "series", "aggregates", "events")
# Body keys a batch may carry besides BODY_KEYS (spec §3.1): ``store``, the identity of the
# gateway's store file, so a receiver tells a new store of a known gateway from a resend;
# ``clock``, whether the gateway's clock was NTP-synchronised.
OPTIONAL_BODY_KEYS: Final = ("store", "clock")
MAX_STORE_ID_LEN: Final = 64
CLOCK_KEYS: Final = ("synced",)
SERIES_KEYS: Final = ("dev", "pt", "unit", "t0", "dt", "v", "q")
AGGREGATE_KEYS: Final = ("kpi", "src", "start", "end", "value", "valid", "n", "expected", "unit")
EVENT_KEYS: Final = ("t", "kind", "dev", "msg")
STATUS_STATES: Final = ("online", "offline")
# The status's optional ``buffer`` map (§8): the states the reference agent sends.
BUFFER_STATES: Final = ("ok", "unwritable")
MAX_BUFFER_REASON_LEN: Final = 200
TOPIC_KINDS: Final = ("batch", "status")

_GATEWAY_ID = re.compile(r"[A-Za-z0-9_-]+")
_QUALITY_CODES: Final = frozenset(int(q) for q in Quality)
_F32 = struct.Struct(">f")
_F32_TAGGED = struct.Struct(">Bf")
_F64_TAGGED = struct.Struct(">Bd")
_NIL: Final = b"\xc0"

TopicKind = Literal["batch", "status"]


@dataclass(frozen=True, slots=True)
class Series:
    """The readings of one device point in one batch, columnar: ``t = t0 + cumsum(dt)``."""

    dev: str
    pt: str
    unit: str | None
    t0: int
    dt: tuple[int, ...]
    v: tuple[Value, ...]
    q: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    """One wire format v1 batch: what a gateway publishes on ``{prefix}/{gw}/batch``."""

    gw: str
    boot: int
    seq: int
    created: int
    series: tuple[Series, ...]
    aggregates: tuple[dict[str, Any], ...] = ()
    events: tuple[dict[str, Any], ...] = ()
    # the optional ``store`` key: None for a batch without it (older gateways)
    store: str | None = None
    # Optional ``clock`` map (spec §3.1): ``{"synced": False}`` when the gateway's kernel said
    # its clock was not NTP-synchronised when the batch was sealed; None: not sent.
    clock: dict[str, Any] | None = None

    @property
    def n_readings(self) -> int:
        """How many readings the batch carries, over all series."""
        return sum(len(s.dt) for s in self.series)


@dataclass(frozen=True, slots=True)
class Status:
    """The retained JSON a gateway publishes on ``{prefix}/{gw}/status``."""

    state: Literal["online", "offline"]
    gw: str
    boot: int
    t: int
    version: str
    # the optional ``buffer`` map; None: not said (older agents, the last will)
    buffer: BufferHealth | None = None


@dataclass(frozen=True, slots=True)
class BufferHealth:
    """Whether the gateway's store-and-forward buffer takes new data (status ``buffer``).

    ``state`` is ``"ok"`` or ``"unwritable"`` (a receiver keeps any other string as sent:
    later agents may say more); the other fields are None when not sent (``"ok"``)."""

    state: str
    since: int | None = None  # epoch ms when the gateway found the buffer unwritable
    reason: str | None = None
    held_readings: int | None = None  # readings waiting in memory for the buffer
    dropped_readings: int | None = None  # of them, dropped (oldest first) in this episode


# --------------------------------------------------------------------------- readings <-> series


def _wire_value(value: Value, quality: Quality) -> tuple[Value, Quality]:
    if isinstance(value, bool):
        return int(value), quality
    unsendable = (isinstance(value, float) and not math.isfinite(value)) or (
        isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX
    )
    if unsendable:
        # NaN/inf and ints beyond 64 bits never go on the wire (the encoder refuses them, and
        # one such value must not make a whole batch unsendable): a bad value, not a value.
        return None, Quality.OUT_OF_RANGE if quality == Quality.GOOD else quality
    return value, quality


def build_series(readings: Iterable[Reading]) -> tuple[Series, ...]:
    """Group readings by (device, point) in first-seen order, each series sorted by time."""
    groups: dict[tuple[str, str], list[Reading]] = {}
    for reading in readings:
        groups.setdefault((reading.device, reading.point), []).append(reading)
    out: list[Series] = []
    for (dev, pt), group in groups.items():
        group.sort(key=lambda r: r.t)  # stable: equal timestamps keep their arrival order
        values: list[Value] = []
        qualities: list[int] = []
        for r in group:
            value, quality = _wire_value(r.value, r.quality)
            values.append(value)
            qualities.append(int(quality))
        t0 = group[0].t
        deltas = tuple(b.t - a.t for a, b in itertools.pairwise(group))
        # One unit per series on the wire. Readings of one point share it in practice; if a
        # profile changed mid-batch, the last reading's unit wins for the whole series.
        unit = group[-1].unit
        out.append(Series(dev, pt, unit, t0, (0, *deltas), tuple(values), tuple(qualities)))
    return tuple(out)


def iter_readings(batch: Batch) -> Iterator[Reading]:
    """Yield the batch's readings, series by series, in time order within each series."""
    for s in batch.series:
        t = s.t0
        for delta, value, quality in zip(s.dt, s.v, s.q, strict=True):
            t += delta
            yield Reading(s.dev, s.pt, s.unit, t, value, Quality(quality))


def event_to_map(event: Event) -> dict[str, Any]:
    """The wire map ``{t, kind, dev, msg}`` of an event."""
    return {"t": event.t, "kind": event.kind, "dev": event.device, "msg": event.message}


def event_from_map(item: Mapping[str, Any]) -> Event:
    """The event of a (validated) wire event map."""
    return Event(t=item["t"], kind=item["kind"], device=item["dev"], message=item["msg"])


# --------------------------------------------------------------------------- validation


def _kind(obj: object) -> str:
    names = {bool: "bool", int: "int", float: "float", str: "str", bytes: "bin", list: "list"}
    if obj is None:
        return "nil"
    if isinstance(obj, dict):
        return "map"
    return names.get(type(obj), type(obj).__name__)


def _is_int(obj: object) -> bool:
    # msgpack has real booleans; True is not an int on the wire.
    return type(obj) is int and INT64_MIN <= obj <= INT64_MAX


def _need_int(obj: object, path: str, *, minimum: int | None = None) -> int:
    if type(obj) is not int:
        raise WireFormatError(f"{path}: must be an int, got {_kind(obj)}")
    if not INT64_MIN <= obj <= INT64_MAX:
        raise WireFormatError(f"{path}: {obj} does not fit a signed 64-bit int")
    if minimum is not None and obj < minimum:
        raise WireFormatError(f"{path}: must be ≥ {minimum}, got {obj}")
    return obj


def _need_str(obj: object, path: str) -> str:
    if type(obj) is not str:
        raise WireFormatError(f"{path}: must be a str, got {_kind(obj)}")
    if not obj:
        raise WireFormatError(f"{path}: must not be empty")
    return obj


def _opt_str(obj: object, path: str) -> str | None:
    if obj is None:
        return None
    if type(obj) is not str:
        raise WireFormatError(f"{path}: must be a str or nil, got {_kind(obj)}")
    return obj


def _need_number(obj: object, path: str) -> Value:
    if obj is None:
        return None
    if type(obj) is int:
        if not INT64_MIN <= obj <= INT64_MAX:
            raise WireFormatError(f"{path}: {obj} does not fit a signed 64-bit int")
        return obj
    if type(obj) is float:
        if not math.isfinite(obj):
            raise WireFormatError(f"{path}: {obj} is not allowed; send nil with a quality code")
        return obj
    raise WireFormatError(f"{path}: must be an int, a float or nil, got {_kind(obj)}")


def _need_map(obj: object, path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise WireFormatError(f"{path}: must be a map, got {_kind(obj)}")
    for key in obj:
        if type(key) is not str:
            raise WireFormatError(f"{path}: keys must be str, got a {_kind(key)} key")
    return obj


def _check_keys(
    obj: dict[str, Any], keys: tuple[str, ...], path: str, *, exact: bool = True
) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise WireFormatError(f"{path}: missing key {missing[0]!r} (needs {', '.join(keys)})")
    if exact:
        extra = sorted(k for k in obj if k not in keys)
        if extra:
            raise WireFormatError(
                f"{path}: unknown key {extra[0]!r} (v1 allows only {', '.join(keys)})"
            )


def _need_list(obj: object, path: str, what: str) -> list[Any] | tuple[Any, ...]:
    # Tuples only come from encode_batch (msgpack decodes arrays to lists).
    if not isinstance(obj, list | tuple):
        raise WireFormatError(f"{path}: must be a list of {what}, got {_kind(obj)}")
    return obj


def _check_series(item: object, path: str) -> Series:
    m = _need_map(item, path)
    _check_keys(m, SERIES_KEYS, path)
    dev = _need_str(m["dev"], f"{path}.dev")
    pt = _need_str(m["pt"], f"{path}.pt")
    unit = _opt_str(m["unit"], f"{path}.unit")
    t0 = _need_int(m["t0"], f"{path}.t0")
    dt = _need_list(m["dt"], f"{path}.dt", "int")
    v = _need_list(m["v"], f"{path}.v", "int, float or nil")
    q = _need_list(m["q"], f"{path}.q", "int")
    if not len(dt) == len(v) == len(q):
        raise WireFormatError(
            f"{path}: dt, v and q must have the same length ({len(dt)}, {len(v)}, {len(q)})"
        )
    if not dt:
        raise WireFormatError(f"{path}: holds no readings; leave the series out instead")
    if not all(_is_int(d) for d in dt):
        bad = next(i for i, d in enumerate(dt) if not _is_int(d))
        raise WireFormatError(
            f"{path}.dt: must be a list of int ({path}.dt[{bad}] is {_kind(dt[bad])})"
        )
    if dt[0] != 0:
        raise WireFormatError(f"{path}.dt[0]: must be 0 (t0 is the first timestamp), got {dt[0]}")
    if min(dt) < 0:
        bad = next(i for i, d in enumerate(dt) if d < 0)
        raise WireFormatError(f"{path}.dt[{bad}]: must not be negative, got {dt[bad]}")
    if t0 + sum(dt) > INT64_MAX:
        raise WireFormatError(f"{path}: the last timestamp does not fit a signed 64-bit int")
    for i, x in enumerate(v):
        # Fast path first: building a path string per value would double the decode time.
        kind = type(x)
        if x is None or (kind is float and math.isfinite(x)):
            continue
        if kind is not int or not INT64_MIN <= x <= INT64_MAX:
            _need_number(x, f"{path}.v[{i}]")  # raises, naming the value
    if not all(type(x) is int and x in _QUALITY_CODES for x in q):
        bad = next(i for i, x in enumerate(q) if not (type(x) is int and x in _QUALITY_CODES))
        raise WireFormatError(
            f"{path}.q[{bad}]: must be a quality code 0-4, got {q[bad]!r} ({_kind(q[bad])})"
        )
    return Series(dev, pt, unit, t0, tuple(dt), tuple(v), tuple(q))


def _check_extra(obj: object, path: str, depth: int = 0) -> None:
    if depth > MAX_EXTRA_DEPTH:
        raise WireFormatError(f"{path}: nested deeper than {MAX_EXTRA_DEPTH} levels")
    if obj is None or type(obj) in (bool, str):
        return
    if type(obj) in (int, float):
        _need_number(obj, path)
        return
    if isinstance(obj, list | tuple):
        for i, x in enumerate(obj):
            _check_extra(x, f"{path}[{i}]", depth + 1)
        return
    if isinstance(obj, dict):
        for k, x in _need_map(obj, path).items():
            _check_extra(x, f"{path}.{k}", depth + 1)
        return
    raise WireFormatError(
        f"{path}: extras may hold str, int, float, bool, nil, lists and maps, not {_kind(obj)}"
    )


def _check_aggregate(item: object, path: str) -> dict[str, Any]:
    m = _need_map(item, path)
    _check_keys(m, AGGREGATE_KEYS, path, exact=False)
    _need_str(m["kpi"], f"{path}.kpi")
    _need_str(m["src"], f"{path}.src")
    start = _need_int(m["start"], f"{path}.start")
    end = _need_int(m["end"], f"{path}.end")
    if end <= start:
        raise WireFormatError(f"{path}: end ({end}) must be after start ({start})")
    value = _need_number(m["value"], f"{path}.value")
    if type(m["valid"]) is not bool:
        raise WireFormatError(f"{path}.valid: must be a bool, got {_kind(m['valid'])}")
    if not m["valid"] and value is not None:
        raise WireFormatError(f"{path}.value: must be nil when valid is false")
    _need_int(m["n"], f"{path}.n", minimum=0)
    _need_int(m["expected"], f"{path}.expected", minimum=0)
    _opt_str(m["unit"], f"{path}.unit")
    for key, extra in m.items():
        if key not in AGGREGATE_KEYS:
            _check_extra(extra, f"{path}.{key}")
    return dict(m)


def _check_event(item: object, path: str) -> dict[str, Any]:
    m = _need_map(item, path)
    _check_keys(m, EVENT_KEYS, path)
    _need_int(m["t"], f"{path}.t")
    _need_str(m["kind"], f"{path}.kind")
    _opt_str(m["dev"], f"{path}.dev")
    msg = m["msg"]
    if type(msg) is not str:
        raise WireFormatError(f"{path}.msg: must be a str, got {_kind(msg)}")
    return dict(m)


def _check_gateway(obj: object, path: str) -> str:
    gw = _need_str(obj, path)
    if not _GATEWAY_ID.fullmatch(gw):
        raise WireFormatError(f"{path}: {gw!r} is not a gateway id ([A-Za-z0-9_-]+)")
    return gw


def _check_store_id(obj: object, path: str) -> str:
    store = _need_str(obj, path)
    if len(store) > MAX_STORE_ID_LEN or not _GATEWAY_ID.fullmatch(store):
        raise WireFormatError(
            f"{path}: {store[:40]!r} is not a store id (1-{MAX_STORE_ID_LEN} of A-Za-z0-9_-)"
        )
    return store


def _check_clock(obj: object, path: str) -> dict[str, Any]:
    m = _need_map(obj, path)
    _check_keys(m, CLOCK_KEYS, path)
    if type(m["synced"]) is not bool:
        raise WireFormatError(f"{path}.synced: must be a bool, got {_kind(m['synced'])}")
    return dict(m)


def _check_body(body: object) -> Batch:
    m = _need_map(body, "body")
    _check_keys(m, BODY_KEYS, "body", exact=False)
    extra = sorted(k for k in m if k not in BODY_KEYS and k not in OPTIONAL_BODY_KEYS)
    if extra:
        allowed = ", ".join((*BODY_KEYS, *OPTIONAL_BODY_KEYS))
        raise WireFormatError(f"body: unknown key {extra[0]!r} (v1 allows only {allowed})")
    store = _check_store_id(m["store"], "store") if "store" in m else None
    clock = _check_clock(m["clock"], "clock") if "clock" in m else None
    gw = _check_gateway(m["gw"], "gw")
    boot = _need_int(m["boot"], "boot", minimum=0)
    seq = _need_int(m["seq"], "seq", minimum=1)
    created = _need_int(m["created"], "created")
    series = _need_list(m["series"], "series", "series maps")
    aggregates = _need_list(m["aggregates"], "aggregates", "aggregate maps")
    events = _need_list(m["events"], "events", "event maps")
    # The decoder enforces these while reading; here for the encoder (a batch over them would
    # be refused by every receiver).
    for name, items, limit in (
        ("series", series, MAX_BATCH_SERIES),
        ("aggregates", aggregates, MAX_BATCH_AGGREGATES),
        ("events", events, MAX_BATCH_EVENTS),
    ):
        if len(items) > limit:
            raise WireFormatError(f"{name}: {len(items)} items, over the limit of {limit}"
                                  f" {name} per batch")
    readings = sum(len(s["dt"]) for s in series if isinstance(s, dict)
                   and isinstance(s.get("dt"), list | tuple))
    if readings > MAX_BATCH_READINGS:
        raise WireFormatError(f"series: the batch holds {readings} readings, over the limit of"
                              f" {MAX_BATCH_READINGS} per batch")
    return Batch(
        gw=gw,
        boot=boot,
        seq=seq,
        created=created,
        series=tuple(_check_series(s, f"series[{i}]") for i, s in enumerate(series)),
        aggregates=tuple(_check_aggregate(a, f"aggregates[{i}]") for i, a in enumerate(aggregates)),
        events=tuple(_check_event(e, f"events[{i}]") for i, e in enumerate(events)),
        store=store,
        clock=clock,
    )


# --------------------------------------------------------------------------- encode


def _pack_value(x: Value, packer: msgpack.Packer) -> bytes:
    if x is None:
        return _NIL
    if type(x) is float:
        try:
            exact = _F32.unpack(_F32.pack(x))[0] == x
        except OverflowError:  # beyond the float32 range
            exact = False
        return _F32_TAGGED.pack(0xCA, x) if exact else _F64_TAGGED.pack(0xCB, x)
    return packer.pack(x)


def pack_values(values: Sequence[Value], packer: msgpack.Packer) -> bytes:
    """A msgpack array of reading values, each float as float 32 when that is exact (else
    float 64): lossless, and about half the size for values read from float32 registers.
    ``packer`` must be made with ``autoreset=True``."""
    return packer.pack_array_header(len(values)) + b"".join(_pack_value(x, packer)
                                                            for x in values)


def _pack_body(batch: Batch) -> bytes:
    # autoreset: every call returns its own bytes. use_bin_type keeps str and bin apart.
    p = msgpack.Packer(use_bin_type=True, autoreset=True)
    # One growing buffer: a list of every packed piece (15 per series) held 300,000 small
    # bytes objects for a 20,000-series batch, a 37 MiB peak for a 1.2 MB body.
    out = bytearray(p.pack_map_header(len(BODY_KEYS) + (batch.store is not None)
                                      + (batch.clock is not None)))
    for key, value in (("gw", batch.gw), ("boot", batch.boot), ("seq", batch.seq),
                       ("created", batch.created)):
        out += p.pack(key)
        out += p.pack(value)
    out += p.pack("series")
    out += p.pack_array_header(len(batch.series))
    series_header = p.pack_map_header(len(SERIES_KEYS))
    keys = {key: p.pack(key) for key in SERIES_KEYS}
    for s in batch.series:
        out += series_header
        out += keys["dev"]
        out += p.pack(s.dev)
        out += keys["pt"]
        out += p.pack(s.pt)
        out += keys["unit"]
        out += p.pack(s.unit)
        out += keys["t0"]
        out += p.pack(s.t0)
        out += keys["dt"]
        out += p.pack(list(s.dt))
        out += keys["v"]
        # The Packer's float width is global; values pick theirs one by one (float32 when
        # exact), and concatenated msgpack objects are still one valid array.
        out += pack_values(s.v, p)
        out += keys["q"]
        out += p.pack(list(s.q))
    out += p.pack("aggregates")
    out += p.pack([dict(a) for a in batch.aggregates])
    out += p.pack("events")
    out += p.pack([dict(e) for e in batch.events])
    if batch.store is not None:
        out += p.pack("store")
        out += p.pack(batch.store)
    if batch.clock is not None:
        out += p.pack("clock")
        out += p.pack(dict(batch.clock))
    return bytes(out)


def _as_body_map(batch: Batch) -> dict[str, Any]:
    series = [
        {"dev": s.dev, "pt": s.pt, "unit": s.unit, "t0": s.t0, "dt": s.dt, "v": s.v, "q": s.q}
        for s in batch.series
    ]
    body: dict[str, Any] = {
        "gw": batch.gw,
        "boot": batch.boot,
        "seq": batch.seq,
        "created": batch.created,
        "series": series,
        "aggregates": list(batch.aggregates),
        "events": list(batch.events),
    }
    if batch.store is not None:
        body["store"] = batch.store
    if batch.clock is not None:
        body["clock"] = batch.clock
    return body


def _check_encodable(batch: Batch) -> None:
    """What :func:`_check_body` checks, one series at a time.

    The whole body as maps (and a checked copy of it) made a 37 MiB peak for a batch of
    20,000 one-reading series (1,000 devices × 20 points): over the unit's memory limit.
    """
    _check_body(_as_body_map(dataclasses.replace(batch, series=())))
    if len(batch.series) > MAX_BATCH_SERIES:
        raise WireFormatError(f"series: {len(batch.series)} items, over the limit of "
                              f"{MAX_BATCH_SERIES} series per batch")
    readings = sum(len(s.dt) for s in batch.series)
    if readings > MAX_BATCH_READINGS:
        raise WireFormatError(f"series: the batch holds {readings} readings, over the limit of"
                              f" {MAX_BATCH_READINGS} per batch")
    for i, s in enumerate(batch.series):
        _check_series({"dev": s.dev, "pt": s.pt, "unit": s.unit, "t0": s.t0, "dt": s.dt,
                       "v": s.v, "q": s.q}, f"series[{i}]")


def encode_batch(batch: Batch, *, codec: int = CODEC_ZSTD, level: int = 3) -> bytes:
    """Encode a batch; raises WireFormatError (naming where) if it would not decode."""
    if codec not in (CODEC_PLAIN, CODEC_ZSTD):
        raise ValueError(f"codec must be 0 (plain) or 1 (zstd), got {codec}")
    if not 1 <= level <= 19:
        # 20-22 ("ultra") need windows beyond what receivers accept (MAX_ZSTD_WINDOW).
        raise ValueError(f"zstd level must be 1-19, got {level}")
    # Same checks as the receiver runs: a batch it would refuse must fail here, before the
    # agent stores it, not after it has been sent and acknowledged.
    _check_encodable(batch)
    body = _pack_body(batch)
    if len(body) > MAX_BODY_BYTES:
        raise WireFormatError(
            f"body is {len(body)} bytes, over the {MAX_BODY_BYTES} receivers accept: "
            "seal batches earlier (batch_max_readings)"
        )
    if codec == CODEC_PLAIN:
        return MAGIC + bytes([CODEC_PLAIN]) + body
    compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return MAGIC + bytes([CODEC_ZSTD]) + compressor.compress(body)


# --------------------------------------------------------------------------- decode


def _decompress(frame: bytes, limit: int) -> bytes:
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise WireFormatError(f"zstd frame header: {exc}") from exc
    if declared > limit:
        raise WireFormatError(
            f"zstd frame declares {declared} bytes, over the {limit}-byte body limit"
        )
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW)
    try:
        if declared >= 0:
            # Known size: zstd allocates exactly that (checked above) and checks the frame
            # produces exactly that many bytes.
            return dctx.decompress(frame, allow_extra_data=False)
        # Unknown size: feed small slices and stop at the cap, so a bomb cannot run away.
        dobj = dctx.decompressobj()
        out = bytearray()
        for start in range(0, len(frame), 256):
            out += dobj.decompress(frame[start : start + 256])
            if len(out) > limit:
                raise WireFormatError(f"zstd frame inflates past the {limit}-byte body limit")
            if dobj.eof:
                rest = frame[start + 256 :]
                if dobj.unused_data or rest:
                    extra = len(dobj.unused_data) + len(rest)
                    raise WireFormatError(f"{extra} bytes after the zstd frame")
                return bytes(out)
    except zstandard.ZstdError as exc:
        raise WireFormatError(f"zstd: {exc}") from exc
    raise WireFormatError("zstd frame is truncated (no end of frame)")


_MAP_HEADS: Final = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
_ARRAY_HEADS: Final = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])
_STR_HEADS: Final = frozenset([*range(0xA0, 0xC0), 0xD9, 0xDA, 0xDB])
_CONTAINER_HEADS: Final = _MAP_HEADS | _ARRAY_HEADS
# Below this many items an array is read item by item; above, in one call (see _scalars).
_FAST_ARRAY_MIN: Final = 8
# The longest msgpack encoding of a number or nil (a float 64 or a 64-bit int: tag + 8 bytes).
_MAX_SCALAR_BYTES: Final = 9
_SECTION_LIMITS: Final = {
    "series": MAX_BATCH_SERIES,
    "aggregates": MAX_BATCH_AGGREGATES,
    "events": MAX_BATCH_EVENTS,
}


class _NestedContainer(Exception):
    """An array read in one call held a container: read it again item by item."""


def _short(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "…"


class _BoundedReader:
    """Reads a msgpack body with bounded work: every container's item count is read from
    its header and charged to budgets (objects in the body, items of each section, readings)
    *before* its items are built, and nesting is capped.

    ``msgpack.unpackb`` builds every object before anyone can look at it: a few KiB of zstd
    inflate to millions of empty arrays (56 bytes each as Python lists), gigabytes, which no
    byte limit catches. Here an attacker's body costs at most the budgets' worth of objects.
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._unpacker = self._new_unpacker(max(len(body), 1))
        self._unpacker.feed(body)
        self._objects = 0
        self._containers = 0
        self._readings = 0

    @staticmethod
    def _new_unpacker(size: int, max_str_len: int = MAX_STR_LEN, **hooks: Any) -> msgpack.Unpacker:
        return msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_buffer_size=size,
            max_str_len=max_str_len,
            max_bin_len=0,  # v1 has no binary fields
            max_ext_len=0,
            max_array_len=MAX_ARRAY_LEN,
            max_map_len=MAX_MAP_LEN,
            **hooks,
        )

    def read_body(self) -> object:
        self._charge(1, "body")
        body = self._read(0, "body", "")
        if self._unpacker.tell() != len(self._body):
            raise WireFormatError("msgpack body: trailing bytes after the body map")
        return body

    def _charge(self, n: int, path: str) -> None:
        self._objects += n
        if self._objects > MAX_BODY_OBJECTS:
            raise WireFormatError(
                f"{path}: the body holds more than {MAX_BODY_OBJECTS} msgpack objects"
            )

    def _head(self) -> int:
        pos = self._unpacker.tell()
        if pos >= len(self._body):
            raise WireFormatError("msgpack body: truncated")
        return self._body[pos]

    def _read(self, depth: int, path: str, section: str) -> object:
        head = self._head()
        if head in _CONTAINER_HEADS:
            return self._container(head, depth, path, section)
        return self._unpacker.unpack()  # a scalar: bounded by its own bytes and max_str_len

    def _container(self, head: int, depth: int, path: str, section: str) -> object:
        if depth >= MAX_BODY_DEPTH:
            raise WireFormatError(f"{path}: nested deeper than {MAX_BODY_DEPTH} levels")
        self._containers += 1
        if self._containers > MAX_BODY_CONTAINERS:
            raise WireFormatError(
                f"{path}: the body holds more than {MAX_BODY_CONTAINERS} arrays and maps"
            )
        if head in _MAP_HEADS:
            return self._map(depth, path, section)
        return self._array(depth, path, section)

    def _map(self, depth: int, path: str, section: str) -> dict[str, Any]:
        unpacker = self._unpacker
        n = unpacker.read_map_header()
        if n > MAX_MAP_LEN:
            raise WireFormatError(f"{path}: a map of {n} keys, over the limit of {MAX_MAP_LEN}")
        self._charge(2 * n, path)
        out: dict[str, Any] = {}
        for _ in range(n):
            if self._head() not in _STR_HEADS:
                raise WireFormatError(f"{path}: keys must be str")
            key = unpacker.unpack()
            if key in out:
                # A repeated key would let a later value silently win; v1 maps never repeat one.
                raise WireFormatError(f"{path}: the map repeats the key {_short(key)}")
            head = self._head()
            if head in _CONTAINER_HEADS:
                # Paths are built for containers only (numbers and strings need none).
                if depth == 0:
                    out[key] = self._container(head, 1, key, key)
                else:
                    child = f"{path}.{_short(key)[1:-1]}"
                    out[key] = self._container(head, depth + 1, child, section)
            else:
                out[key] = unpacker.unpack()
        return out

    def _array_len(self, path: str) -> int:
        pos = self._unpacker.tell()
        head = self._body[pos]
        if head == 0xDC:
            width = 2
        elif head == 0xDD:
            width = 4
        else:
            return head & 0x0F
        raw = self._body[pos + 1 : pos + 1 + width]
        if len(raw) < width:
            raise WireFormatError(f"{path}: truncated array header")
        return int.from_bytes(raw, "big")

    def _array(self, depth: int, path: str, section: str) -> list[Any]:
        n = self._array_len(path)
        limit = MAX_ARRAY_LEN
        if depth == 1 and section in _SECTION_LIMITS:
            limit = _SECTION_LIMITS[section]
            if n > limit:
                raise WireFormatError(
                    f"{section}: {n} items, over the limit of {limit} {section} per batch"
                )
        elif section == "series" and depth == 3 and path.endswith(".dt"):
            # One reading per dt item: counted before any of them is built.
            self._readings += n
            if self._readings > MAX_BATCH_READINGS:
                raise WireFormatError(
                    f"{path}: the batch holds more than {MAX_BATCH_READINGS} readings,"
                    " the limit per batch"
                )
        if n > limit:
            raise WireFormatError(f"{path}: an array of {n} items, over the limit of {limit}")
        self._charge(n, path)
        if n >= _FAST_ARRAY_MIN:
            scalars = self._scalars(n)
            if scalars is not None:
                self._unpacker.skip()
                return scalars
        self._unpacker.read_array_header()
        items: list[Any] = []
        for i in range(n):
            head = self._head()
            if head in _CONTAINER_HEADS:
                items.append(self._container(head, depth + 1, f"{path}[{i}]", section))
            else:
                items.append(self._unpacker.unpack())
        return items

    def _scalars(self, n: int) -> list[Any] | None:
        """The array at the read position in one C call if it holds only scalars, else None.

        The call reads from a slice no longer than ``n`` numbers can take, and gives up at the
        first string or nested container (the list hook runs for inner lists before the outer
        one), so whatever the bytes hold, it builds at most ``n`` numbers' worth of objects.
        """
        calls = 0

        def only_outer(items: list[Any]) -> list[Any]:
            nonlocal calls
            calls += 1
            if calls > 1:
                raise _NestedContainer
            return items

        def no_maps(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
            raise _NestedContainer

        start = self._unpacker.tell()
        span = 5 + _MAX_SCALAR_BYTES * n  # header (at most 5 bytes) + n numbers
        # Strings end the attempt at once (max_str_len 0): the arrays worth it hold numbers.
        sub = self._new_unpacker(span, 0, list_hook=only_outer, object_pairs_hook=no_maps)
        sub.feed(self._body[start : start + span])
        try:
            items = sub.unpack()
        except Exception:  # nested, longer items (strings), or malformed: item by item
            return None
        return items if isinstance(items, list) else None


def _unpack(body: bytes) -> object:
    try:
        return _BoundedReader(body).read_body()
    except WireFormatError:
        raise
    except Exception as exc:  # msgpack raises ValueError, TypeError, StackError, OutOfData, …
        raise WireFormatError(f"msgpack body: {type(exc).__name__}: {exc}") from exc


def decode_batch(payload: bytes, *, max_body_bytes: int = MAX_BODY_BYTES) -> Batch:
    """Decode and check a v1 payload; anything malformed raises WireFormatError naming where."""
    payload = bytes(payload)
    if len(payload) < HEADER_LEN:
        raise WireFormatError(
            f"payload too short: {len(payload)} bytes, a v1 batch starts with 5 (SSC1 + codec)"
        )
    if payload[:4] != MAGIC:
        raise WireFormatError(
            f"wrong magic {payload[:4].hex(' ')}: a v1 batch starts with 53 53 43 31 ('SSC1')"
        )
    codec = payload[4]
    if codec == CODEC_PLAIN:
        body = payload[HEADER_LEN:]
        if len(body) > max_body_bytes:
            raise WireFormatError(
                f"body is {len(body)} bytes, over the {max_body_bytes}-byte limit"
            )
    elif codec == CODEC_ZSTD:
        body = _decompress(payload[HEADER_LEN:], max_body_bytes)
    else:
        raise WireFormatError(f"unknown codec 0x{codec:02x}: v1 knows 0x00 (plain) and 0x01 (zstd)")
    obj = _unpack(body)
    try:
        return _check_body(obj)
    except WireFormatError:
        raise
    except Exception as exc:
        # The checks are meant to catch everything; this keeps the contract (only
        # WireFormatError comes out) even if one of them has a hole.
        raise WireFormatError(
            f"body: internal error in the v1 checks ({type(exc).__name__}: {exc}); please report it"
        ) from exc


# --------------------------------------------------------------------------- status and topics


def encode_status(status: Status) -> bytes:
    """The status topic's retained JSON payload."""
    _check_gateway(status.gw, "status.gw")
    obj: dict[str, Any] = {
        "state": status.state,
        "gw": status.gw,
        "boot": status.boot,
        "t": status.t,
        "version": status.version,
    }
    if status.buffer is not None:
        obj["buffer"] = _buffer_map(status.buffer)
    return json.dumps(obj, separators=(",", ":")).encode()


def _buffer_map(health: BufferHealth) -> dict[str, Any]:
    fields = {"since": health.since, "reason": health.reason,
              "held_readings": health.held_readings, "dropped_readings": health.dropped_readings}
    out: dict[str, Any] = {"state": health.state}
    out.update((k, v) for k, v in fields.items() if v is not None)
    _check_buffer(out, "status.buffer")  # what is sent must decode
    return out


def decode_status(payload: bytes | str) -> Status:
    """Parse a status payload; unknown JSON keys are ignored, known ones are checked."""
    try:
        obj = json.loads(payload)
    except (ValueError, TypeError, RecursionError) as exc:
        raise WireFormatError(f"status: not JSON ({exc})") from exc
    m = _need_map(obj, "status")
    _check_keys(m, ("state", "gw", "boot", "t", "version"), "status", exact=False)
    state = m["state"]
    if state not in STATUS_STATES:
        raise WireFormatError(f"status.state: must be 'online' or 'offline', got {state!r}")
    version = _need_str(m["version"], "status.version")
    return Status(
        state=state,
        gw=_check_gateway(m["gw"], "status.gw"),
        boot=_need_int(m["boot"], "status.boot", minimum=0),
        t=_need_int(m["t"], "status.t"),
        version=version,
        buffer=_check_buffer(m["buffer"], "status.buffer") if "buffer" in m else None,
    )


def _check_buffer(obj: object, path: str) -> BufferHealth:
    """The status's ``buffer`` map: ``state`` required, the rest checked when present,
    unknown keys ignored (like the status itself)."""
    m = _need_map(obj, path)
    _check_keys(m, ("state",), path, exact=False)
    state = _need_str(m["state"], f"{path}.state")
    if len(state) > MAX_BUFFER_REASON_LEN:
        raise WireFormatError(f"{path}.state: longer than {MAX_BUFFER_REASON_LEN} characters")
    reason = None
    if m.get("reason") is not None:
        reason = _need_str(m["reason"], f"{path}.reason")
        if len(reason) > MAX_BUFFER_REASON_LEN:
            raise WireFormatError(
                f"{path}.reason: longer than {MAX_BUFFER_REASON_LEN} characters")

    def count(key: str) -> int | None:
        value = m.get(key)
        return None if value is None else _need_int(value, f"{path}.{key}", minimum=0)

    since = m.get("since")
    return BufferHealth(
        state=state,
        since=None if since is None else _need_int(since, f"{path}.since"),
        reason=reason,
        held_readings=count("held_readings"),
        dropped_readings=count("dropped_readings"),
    )


def topic_for(prefix: str, gw: str, kind: TopicKind) -> str:
    """``{prefix}/{gw}/batch`` or ``{prefix}/{gw}/status``."""
    if kind not in TOPIC_KINDS:
        raise ValueError(f"topic kind must be 'batch' or 'status', got {kind!r}")
    if not _GATEWAY_ID.fullmatch(gw):
        raise ValueError(f"{gw!r} is not a gateway id ([A-Za-z0-9_-]+)")
    return f"{prefix.rstrip('/')}/{gw}/{kind}"


def parse_topic(prefix: str, topic: str) -> tuple[str, TopicKind]:
    """Split ``{prefix}/{gw}/{kind}`` into (gw, kind); WireFormatError if it is not one."""
    head = prefix.rstrip("/") + "/"
    parts = topic[len(head) :].split("/") if topic.startswith(head) else []
    if len(parts) != 2 or not _GATEWAY_ID.fullmatch(parts[0]) or parts[1] not in TOPIC_KINDS:
        raise WireFormatError(f"topic {topic!r} is not {head}GATEWAY/batch or {head}GATEWAY/status")
    kind: TopicKind = "batch" if parts[1] == "batch" else "status"
    return parts[0], kind
