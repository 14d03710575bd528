"""Wire format v1: the status topic's JSON payload and the topic names."""

from __future__ import annotations

import json
from typing import Any

from agent.errors import WireFormatError
from agent.wire.checks import _check_gateway, _check_keys, _need_int, _need_map, _need_str
from agent.wire.model import (
    _GATEWAY_ID,
    MAX_BUFFER_REASON_LEN,
    STATUS_STATES,
    TOPIC_KINDS,
    BufferHealth,
    Status,
    TopicKind,
)


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
    """``{prefix}/{gw}/batch``, ``…/status`` or ``…/health``."""
    if kind not in TOPIC_KINDS:
        raise ValueError(f"topic kind must be one of {', '.join(TOPIC_KINDS)}, got {kind!r}")
    if not _GATEWAY_ID.fullmatch(gw):
        raise ValueError(f"{gw!r} is not a gateway id ([A-Za-z0-9_-]+)")
    return f"{prefix.rstrip('/')}/{gw}/{kind}"


def parse_topic(prefix: str, topic: str) -> tuple[str, TopicKind]:
    """Split ``{prefix}/{gw}/{kind}`` into (gw, kind); WireFormatError if it is not one."""
    head = prefix.rstrip("/") + "/"
    parts = topic[len(head) :].split("/") if topic.startswith(head) else []
    if len(parts) != 2 or not _GATEWAY_ID.fullmatch(parts[0]) or parts[1] not in TOPIC_KINDS:
        raise WireFormatError(f"topic {topic!r} is not {head}GATEWAY/batch, …/status or …/health")
    kind: TopicKind = "batch" if parts[1] == "batch" else (
        "health" if parts[1] == "health" else "status")
    return parts[0], kind
