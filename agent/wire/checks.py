"""Wire format v1: the checks every batch passes, on the way in (decode) and out (encode).

Each raises WireFormatError naming where (``series[3].v[7]``) and what."""

from __future__ import annotations

import math
from typing import Any

from agent.errors import WireFormatError
from agent.readings import Value
from agent.wire.model import (
    _GATEWAY_ID,
    _QUALITY_CODES,
    AGGREGATE_KEYS,
    BODY_KEYS,
    CLOCK_KEYS,
    EVENT_KEYS,
    INT64_MAX,
    INT64_MIN,
    MAX_BATCH_AGGREGATES,
    MAX_BATCH_EVENTS,
    MAX_BATCH_READINGS,
    MAX_BATCH_SERIES,
    MAX_EXTRA_DEPTH,
    MAX_STORE_ID_LEN,
    OPTIONAL_BODY_KEYS,
    SERIES_KEYS,
    Batch,
    Series,
)


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
