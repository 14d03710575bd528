"""Pure building blocks of frame scanners (``scan(buffer) -> (consumed, frame | None)``, what
:meth:`drivers.serialio.SerialLink.read_frame` takes): resynchronising on a header, and a
whole scanner for frames of a fixed size. Each protocol's ``frames.py`` builds on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["scan_fixed_frame", "skip_to_header"]

T = TypeVar("T")


def skip_to_header(buffer: bytes, header: bytes) -> int:
    """How many bytes before ``header`` are noise to drop: its offset, or every byte but a
    trailing first byte of it (the first half of a header still arriving)."""
    start = buffer.find(header)
    if start >= 0:
        return start
    return len(buffer) - (1 if buffer.endswith(header[:1]) else 0)


def scan_fixed_frame(
    buffer: bytes,
    header: bytes,
    size: int,
    parse: Callable[[bytes], T],
    rejected: type[Exception],
    *,
    strict: bool = False,
) -> tuple[int, T | None]:
    """A scanner for frames of ``size`` bytes that start with ``header``: resynchronise on the
    header, wait for the whole frame, and slide one byte past a candidate ``parse`` rejects
    with ``rejected`` (``strict``: let the rejection through)."""
    start = skip_to_header(buffer, header)
    if start != 0:
        return start, None
    if len(buffer) < size:
        return 0, None
    try:
        return size, parse(buffer[:size])
    except rejected:
        if strict:
            raise
        return 1, None
