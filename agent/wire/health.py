"""Wire format v1: the retained health summary on ``{prefix}/{gw}/health`` (spec §8.2).

A summary of what ``ssc-agent status`` shows, small enough for every gateway of a fleet to
retain one: device counts and the down devices (at most :data:`MAX_HEALTH_DOWN`, with a short
error each), the buffer, the uplink and the KPI windows. JSON like the status, open like it
(unknown keys are ignored), and bounded: a decoder refuses a payload over
:data:`MAX_HEALTH_BYTES`, more down devices than the limit, or strings beyond theirs, before it
builds anything. Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Final

from agent.errors import WireFormatError
from agent.wire.checks import _check_gateway, _check_keys, _kind, _need_int, _need_map, _need_str

HEALTH_VERSION: Final = 1
MAX_HEALTH_BYTES: Final = 16 * 1024
MAX_HEALTH_DOWN: Final = 32  # down devices listed by name; the counts cover the rest
MAX_HEALTH_NAME_LEN: Final = 64  # a device name (the config allows no longer)
MAX_HEALTH_ERROR_LEN: Final = 200
MAX_HEALTH_STATE_LEN: Final = 32


@dataclass(frozen=True, slots=True)
class DownDevice:
    """A device whose last poll failed."""

    name: str
    failures: int  # failed polls in a row
    last_good: int | None = None  # epoch ms of its last good poll's slot; None: none this run
    error: str | None = None  # why its last poll failed, at most MAX_HEALTH_ERROR_LEN


@dataclass(frozen=True, slots=True)
class HealthSummary:
    """The retained JSON a gateway publishes on ``{prefix}/{gw}/health`` every minute."""

    gw: str
    boot: int
    t: int  # epoch ms when it was made
    version: str
    devices_up: int
    devices_down: int
    devices_pending: int  # not polled yet in this run
    buffer_state: str  # "ok" or "unwritable" (as the status's buffer.state)
    buffer_batches: int
    buffer_readings: int
    buffer_bytes: int
    buffer_oldest_age_s: float | None
    buffer_dropped_readings: int  # since the store was created
    uplink_in_flight: int
    uplink_last_ack_age_s: float | None
    kpis_open: int
    kpis_closed: int  # KPIs that closed a window in this run
    down: tuple[DownDevice, ...] = field(default=())


def encode_health(health: HealthSummary) -> bytes:
    """The health topic's retained JSON payload; it passes :func:`decode_health`."""
    _check_gateway(health.gw, "health.gw")
    down = health.down[:MAX_HEALTH_DOWN]
    obj: dict[str, Any] = {
        "v": HEALTH_VERSION,
        "gw": health.gw,
        "boot": health.boot,
        "t": health.t,
        "version": health.version,
        "devices": {"up": health.devices_up, "down": health.devices_down,
                    "pending": health.devices_pending},
        "down": [_down_map(d) for d in down],
        "buffer": {"state": health.buffer_state[:MAX_HEALTH_STATE_LEN],
                   "batches": health.buffer_batches, "readings": health.buffer_readings,
                   "bytes": health.buffer_bytes,
                   "oldest_age_s": _seconds(health.buffer_oldest_age_s),
                   "dropped_readings": health.buffer_dropped_readings},
        "uplink": {"in_flight": health.uplink_in_flight,
                   "last_ack_age_s": _seconds(health.uplink_last_ack_age_s)},
        "kpis": {"open": health.kpis_open, "closed": health.kpis_closed},
    }
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    decode_health(payload)  # what is sent must decode
    return payload


def _down_map(device: DownDevice) -> dict[str, Any]:
    out: dict[str, Any] = {"name": device.name[:MAX_HEALTH_NAME_LEN],
                           "failures": device.failures, "last_good": device.last_good}
    if device.error is not None:
        out["error"] = device.error[:MAX_HEALTH_ERROR_LEN]
    return out


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(max(0.0, value), 1)


def decode_health(payload: bytes | str) -> HealthSummary:
    """Parse a health payload; WireFormatError naming where and what when it is not one.
    Unknown keys are ignored (the summary may grow in v1); known ones are checked."""
    size = len(payload.encode() if isinstance(payload, str) else payload)
    if size > MAX_HEALTH_BYTES:
        raise WireFormatError(f"health: {size} bytes, over the {MAX_HEALTH_BYTES} allowed")
    try:
        obj = json.loads(payload)
    except (ValueError, TypeError, RecursionError) as exc:
        raise WireFormatError(f"health: not JSON ({str(exc)[:80]})") from exc
    m = _need_map(obj, "health")
    _check_keys(m, ("v", "gw", "boot", "t", "version", "devices", "buffer", "uplink", "kpis"),
                "health", exact=False)
    if type(m["v"]) is not int or m["v"] != HEALTH_VERSION:
        raise WireFormatError(f"health.v: must be {HEALTH_VERSION}, got {str(m['v'])[:20]!r}")
    devices = _need_map(m["devices"], "health.devices")
    _check_keys(devices, ("up", "down", "pending"), "health.devices", exact=False)
    buffer = _need_map(m["buffer"], "health.buffer")
    _check_keys(buffer, ("state", "batches", "readings", "bytes", "oldest_age_s",
                         "dropped_readings"), "health.buffer", exact=False)
    uplink = _need_map(m["uplink"], "health.uplink")
    _check_keys(uplink, ("in_flight", "last_ack_age_s"), "health.uplink", exact=False)
    kpis = _need_map(m["kpis"], "health.kpis")
    _check_keys(kpis, ("open", "closed"), "health.kpis", exact=False)
    raw_down = m.get("down", [])
    if not isinstance(raw_down, list):
        raise WireFormatError(f"health.down: must be a list, got {_kind(raw_down)}")
    if len(raw_down) > MAX_HEALTH_DOWN:
        raise WireFormatError(f"health.down: {len(raw_down)} devices, over the "
                              f"{MAX_HEALTH_DOWN} allowed")

    def count(where: dict[str, Any], key: str, path: str) -> int:
        return _need_int(where[key], f"{path}.{key}", minimum=0)

    down_count = count(devices, "down", "health.devices")
    if len(raw_down) > down_count:
        raise WireFormatError(f"health.down: lists {len(raw_down)} devices, devices.down "
                              f"says {down_count}")
    return HealthSummary(
        gw=_check_gateway(m["gw"], "health.gw"),
        boot=_need_int(m["boot"], "health.boot", minimum=0),
        t=_need_int(m["t"], "health.t"),
        version=_bounded_str(m["version"], "health.version", MAX_HEALTH_STATE_LEN),
        devices_up=count(devices, "up", "health.devices"),
        devices_down=down_count,
        devices_pending=count(devices, "pending", "health.devices"),
        buffer_state=_bounded_str(buffer["state"], "health.buffer.state",
                                  MAX_HEALTH_STATE_LEN),
        buffer_batches=count(buffer, "batches", "health.buffer"),
        buffer_readings=count(buffer, "readings", "health.buffer"),
        buffer_bytes=count(buffer, "bytes", "health.buffer"),
        buffer_oldest_age_s=_age(buffer["oldest_age_s"], "health.buffer.oldest_age_s"),
        buffer_dropped_readings=count(buffer, "dropped_readings", "health.buffer"),
        uplink_in_flight=count(uplink, "in_flight", "health.uplink"),
        uplink_last_ack_age_s=_age(uplink["last_ack_age_s"], "health.uplink.last_ack_age_s"),
        kpis_open=count(kpis, "open", "health.kpis"),
        kpis_closed=count(kpis, "closed", "health.kpis"),
        down=tuple(_check_down(d, f"health.down[{i}]") for i, d in enumerate(raw_down)),
    )


def _bounded_str(obj: object, path: str, limit: int) -> str:
    text = _need_str(obj, path)
    if len(text) > limit:
        raise WireFormatError(f"{path}: longer than {limit} characters")
    return text


def _age(obj: object, path: str) -> float | None:
    if obj is None:
        return None
    if isinstance(obj, bool) or not isinstance(obj, int | float) or not math.isfinite(obj) \
            or obj < 0:
        raise WireFormatError(f"{path}: must be a number ≥ 0 or null, got {str(obj)[:20]}")
    return float(obj)


def _check_down(obj: object, path: str) -> DownDevice:
    m = _need_map(obj, path)
    _check_keys(m, ("name", "failures"), path, exact=False)
    last_good = m.get("last_good")
    error = m.get("error")
    return DownDevice(
        name=_bounded_str(m["name"], f"{path}.name", MAX_HEALTH_NAME_LEN),
        failures=_need_int(m["failures"], f"{path}.failures", minimum=0),
        last_good=None if last_good is None else _need_int(last_good, f"{path}.last_good"),
        error=None if error is None else _bounded_str(error, f"{path}.error",
                                                      MAX_HEALTH_ERROR_LEN),
    )
