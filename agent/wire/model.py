"""Wire format v1: the batch and status types, the keys and the per-batch limits (constants),
and the mapping between readings and columnar series. Pure: no I/O, no clock."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from agent.readings import Event, Quality, Reading, Value

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
TOPIC_KINDS: Final = ("batch", "status", "health")  # health: §8.2

_GATEWAY_ID = re.compile(r"[A-Za-z0-9_-]+")
_QUALITY_CODES: Final = frozenset(int(q) for q in Quality)

TopicKind = Literal["batch", "status", "health"]


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
