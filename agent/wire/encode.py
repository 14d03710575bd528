"""Wire format v1: encoding a batch (``SSC1`` + codec byte + msgpack body, zstd when codec 1).

The encoder runs the same checks as the decoder, so the agent never stores a batch that a
receiver would refuse."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence
from typing import Any, Final

import msgpack
import zstandard

from agent.errors import WireFormatError
from agent.readings import Value
from agent.wire.checks import _check_body, _check_series
from agent.wire.model import (
    BODY_KEYS,
    CODEC_PLAIN,
    CODEC_ZSTD,
    MAGIC,
    MAX_BATCH_READINGS,
    MAX_BATCH_SERIES,
    MAX_BODY_BYTES,
    SERIES_KEYS,
    Batch,
)

_F32 = struct.Struct(">f")
_F32_TAGGED = struct.Struct(">Bf")
_F64_TAGGED = struct.Struct(">Bd")
_NIL: Final = b"\xc0"

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
