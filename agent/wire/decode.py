"""Wire format v1: bounded decoding of a batch payload.

A receiver's work per payload is bounded before anything is built: the zstd frame's size and
window, the body's bytes, and the count of msgpack objects, containers, items per section and
readings (the limits in ``agent.wire.model``, ``docs/wire-format.md`` §11)."""

from __future__ import annotations

from typing import Any, Final

import msgpack
import zstandard

from agent.errors import WireFormatError
from agent.wire.checks import _check_body
from agent.wire.model import (
    CODEC_PLAIN,
    CODEC_ZSTD,
    HEADER_LEN,
    MAGIC,
    MAX_ARRAY_LEN,
    MAX_BATCH_AGGREGATES,
    MAX_BATCH_EVENTS,
    MAX_BATCH_READINGS,
    MAX_BATCH_SERIES,
    MAX_BODY_BYTES,
    MAX_BODY_CONTAINERS,
    MAX_BODY_DEPTH,
    MAX_BODY_OBJECTS,
    MAX_MAP_LEN,
    MAX_STR_LEN,
    MAX_ZSTD_WINDOW,
    Batch,
)


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
