"""Wire format v1: batches as ``SSC1`` + codec byte + msgpack body (zstd when codec is 1).

Pure: no I/O, no clock. ``docs/wire-format.md`` is the spec; this package and that document
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

The package: ``model`` (types, keys, limits, readings <-> series), ``checks`` (the v1 checks),
``encode``, ``decode`` (bounded), ``status`` (status payload, topic names), ``health`` (the
retained health summary, bounded).

Each name below is imported from its module on first use: the gateway encodes and never loads
the decoder (docs/architecture.md "Footprint").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.wire.decode import decode_batch
    from agent.wire.encode import encode_batch, pack_values
    from agent.wire.health import DownDevice, HealthSummary, decode_health, encode_health
    from agent.wire.model import (
        AGGREGATE_KEYS,
        CLOCK_KEYS,
        CODEC_PLAIN,
        CODEC_ZSTD,
        EVENT_KEYS,
        INT64_MAX,
        INT64_MIN,
        MAGIC,
        MAX_BATCH_AGGREGATES,
        MAX_BATCH_EVENTS,
        MAX_BATCH_READINGS,
        MAX_BATCH_SERIES,
        MAX_BODY_BYTES,
        MAX_BUFFER_REASON_LEN,
        OPTIONAL_BODY_KEYS,
        Batch,
        BufferHealth,
        Series,
        Status,
        build_series,
        event_from_map,
        event_to_map,
        iter_readings,
    )
    from agent.wire.status import decode_status, encode_status, parse_topic, topic_for

__all__ = [
    "AGGREGATE_KEYS",
    "CLOCK_KEYS",
    "CODEC_PLAIN",
    "CODEC_ZSTD",
    "EVENT_KEYS",
    "INT64_MAX",
    "INT64_MIN",
    "MAGIC",
    "MAX_BATCH_AGGREGATES",
    "MAX_BATCH_EVENTS",
    "MAX_BATCH_READINGS",
    "MAX_BATCH_SERIES",
    "MAX_BODY_BYTES",
    "MAX_BUFFER_REASON_LEN",
    "OPTIONAL_BODY_KEYS",
    "Batch",
    "BufferHealth",
    "DownDevice",
    "HealthSummary",
    "Series",
    "Status",
    "build_series",
    "decode_batch",
    "decode_health",
    "decode_status",
    "encode_batch",
    "encode_health",
    "encode_status",
    "event_from_map",
    "event_to_map",
    "iter_readings",
    "pack_values",
    "parse_topic",
    "topic_for",
]


# The module of each name of __all__ that is not in model.py.
_HOMES = {
    "decode_batch": "decode",
    "encode_batch": "encode", "pack_values": "encode",
    "DownDevice": "health", "HealthSummary": "health", "decode_health": "health",
    "encode_health": "health",
    "decode_status": "status", "encode_status": "status", "parse_topic": "status",
    "topic_for": "status",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"agent.wire.{_HOMES.get(name, 'model')}"), name)
    globals()[name] = value
    return value
