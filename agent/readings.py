"""Readings as they flow from the scheduler to the batcher."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Quality(IntEnum):
    """Quality code of a reading, as sent on the wire (``q`` lists)."""

    GOOD = 0
    STALE = 1
    COMM_ERROR = 2
    PROTOCOL_ERROR = 3
    OUT_OF_RANGE = 4


Value = int | float | None


@dataclass(frozen=True, slots=True)
class PointValue:
    """What a driver returns for one point of one read: a value and its quality."""

    point: str
    value: Value
    quality: Quality = Quality.GOOD


@dataclass(frozen=True, slots=True)
class Reading:
    """One point's value at the poll's scheduled time (epoch ms, UTC)."""

    device: str
    point: str
    unit: str | None
    t: int
    value: Value
    quality: Quality


@dataclass(frozen=True, slots=True)
class Event:
    """Something the platform should hear about: device down/up, buffer drops, …"""

    t: int
    kind: str
    device: str | None
    message: str
