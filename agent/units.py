"""Durations and sizes written as strings with units ("15 s", "256 MiB"), KPI lengths
("15 min", "1 mo") and wall times ("07:00"): pure parsing."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import time

_DURATION_UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
# No duration or size in a config is meant to be this large: beyond it, a typo (or a number
# that overflows to infinity) would only break arithmetic far from the config file.
MAX_DURATION_SECONDS = 3650 * 86400.0
MAX_SIZE_BYTES = 1024**4
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")


def _number_times_unit(text: str, units: Mapping[str, float], what: str, example: str) -> float:
    """``text`` as ``<number> <unit>``, multiplied out; ValueError saying how to write ``what``."""
    match = _PATTERN.match(text)
    if match is None or match.group(2) not in units:
        raise ValueError(
            f"{text!r} is not {what}: write a number and a unit ({', '.join(units)}), "
            f"e.g. {example!r}"
        )
    return float(match.group(1)) * units[match.group(2)]


def parse_duration(text: str) -> float:
    """Parse ``"15 s"`` / ``"10 min"`` / ``"250 ms"`` into seconds (> 0)."""
    seconds = _number_times_unit(text, _DURATION_UNITS, "a duration", "15 s")
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be greater than zero")
    if not math.isfinite(seconds) or seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{text!r} is too long: a duration is at most 3650 d")
    return seconds


def parse_size(text: str) -> int:
    """Parse ``"256 MiB"`` into bytes (> 0)."""
    number = _number_times_unit(text, _SIZE_UNITS, "a size", "256 MiB")
    if not math.isfinite(number) or number > MAX_SIZE_BYTES:
        raise ValueError(f"{text!r} is too large: a size is at most 1024 GiB")
    size = int(number)
    if size <= 0:
        raise ValueError(f"{text!r}: a size must be greater than zero")
    return size


class AsWritten:
    """A value parsed once from a config string; it prints as the string was written."""

    __slots__ = ()
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Duration(AsWritten):
    """A duration as a config wrote it: parsed once into ``seconds``, ``text`` kept for messages."""

    seconds: float
    text: str

    def check_within(self, low: Duration, high: Duration, why: str = "") -> None:
        """ValueError naming the bound if this lies outside [``low``, ``high``].

        ``why`` says what breaks outside the range, e.g. "a publish needs a round trip".
        """
        reason = f": {why}" if why else ""
        if self.seconds < low.seconds:
            raise ValueError(f"{self.text!r} is too short: at least {low.text}{reason}")
        if self.seconds > high.seconds:
            raise ValueError(f"{self.text!r} is too long: at most {high.text}{reason}")

    @classmethod
    def parse(cls, text: str) -> Duration:
        """``text`` parsed (ValueError as :func:`parse_duration` words it)."""
        return cls(parse_duration(text), text)


@dataclass(frozen=True, slots=True)
class Size(AsWritten):
    """A size as a config wrote it: parsed once into ``bytes``, ``text`` kept for messages."""

    bytes: int
    text: str

    @classmethod
    def parse(cls, text: str) -> Size:
        """``text`` parsed (ValueError as :func:`parse_size` words it)."""
        return cls(parse_size(text), text)


# --------------------------------------------------------------------------------------------
# KPI durations (pure; the KPI engine reuses them)

_KPI_UNITS: dict[str, int] = {"s": 1, "min": 60, "h": 3600}
_CALENDAR_UNITS = ("d", "mo", "y")
# Shortest length of a calendar unit, ignoring DST: for "is X longer than a window" checks.
_CALENDAR_NOMINAL = {"d": 86400, "mo": 28 * 86400, "y": 365 * 86400}
_KPI_DURATION = re.compile(r"^\s*(\d+)\s*([a-z]+)\s*$")
_DAY = 86400


@dataclass(frozen=True, slots=True)
class KpiDuration:
    """A KPI length ``count`` × ``unit``: s, min, h are fixed; d, mo, y follow the calendar."""

    count: int
    unit: str

    @property
    def is_calendar(self) -> bool:
        """True for ``1 d``, ``1 mo``, ``1 y``: their real length follows the calendar."""
        return self.unit in _CALENDAR_UNITS

    @property
    def seconds(self) -> int:
        """The fixed length in seconds; calendar durations have none (ValueError)."""
        if self.is_calendar:
            raise ValueError(f"{self} is a calendar length: it has no fixed number of seconds")
        return self.count * _KPI_UNITS[self.unit]

    @property
    def nominal_seconds(self) -> int:
        """Fixed length, or the shortest calendar length ignoring DST (1 d = 24 h, 1 mo = 28 d)."""
        if self.is_calendar:
            return _CALENDAR_NOMINAL[self.unit]
        return self.seconds

    def __str__(self) -> str:
        return f"{self.count} {self.unit}"


def parse_kpi_duration(text: str) -> KpiDuration:
    """Parse ``"<int> <unit>"`` (units s, min, h, d, mo, y; d/mo/y only with 1)."""
    match = _KPI_DURATION.match(text)
    units = ", ".join([*_KPI_UNITS, *_CALENDAR_UNITS])
    if match is None or match.group(2) not in (*_KPI_UNITS, *_CALENDAR_UNITS):
        raise ValueError(
            f"{text!r} is not a KPI duration: write '<whole number> <unit>' ({units}), "
            "e.g. '15 min'"
        )
    count, unit = int(match.group(1)), match.group(2)
    if count <= 0:
        raise ValueError(f"{text!r}: a duration must be greater than zero")
    if unit in _CALENDAR_UNITS and count != 1:
        raise ValueError(f"{text!r}: d, mo and y take only a count of 1 ('1 {unit}')")
    return KpiDuration(count, unit)


@dataclass(frozen=True, slots=True)
class KpiLength(AsWritten):
    """A KPI length as a config wrote it: parsed once into ``duration``, ``text`` kept."""

    duration: KpiDuration
    text: str


def parse_kpi_length(text: str) -> KpiLength:
    """``text`` parsed once (ValueError as :func:`parse_kpi_duration` words it)."""
    return KpiLength(parse_kpi_duration(text), text)


def is_day_aligned(duration: KpiDuration) -> bool:
    """True if windows of this length tile a local day: calendar, or fixed and dividing 24 h."""
    return duration.is_calendar or _DAY % duration.seconds == 0


_CALENDAR_RANK = {"d": 0, "mo": 1, "y": 2}


def nests_in(inner: KpiDuration, outer: KpiDuration) -> bool:
    """True if every boundary of ``outer`` windows is a boundary of ``inner`` windows."""
    if not inner.is_calendar:
        if not is_day_aligned(inner):
            return False
        return outer.is_calendar or outer.seconds % inner.seconds == 0
    if not outer.is_calendar:
        return False
    return _CALENDAR_RANK[inner.unit] <= _CALENDAR_RANK[outer.unit]


_CLOCK = re.compile(r"^(\d{2}):(\d{2})$")


def parse_clock(text: str) -> time:
    """Parse a local wall time ``"HH:MM"`` (00:00 … 23:59)."""
    match = _CLOCK.match(text)
    if match is None or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ValueError(f"{text!r} is not a time of day: write 'HH:MM', e.g. '07:00'")
    return time(int(match.group(1)), int(match.group(2)))
