"""Durations and sizes written as strings with units ("15 s", "256 MiB"): pure parsing."""

from __future__ import annotations

import math
import re

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


def parse_duration(text: str) -> float:
    """Parse ``"15 s"`` / ``"10 min"`` / ``"250 ms"`` into seconds (> 0)."""
    match = _PATTERN.match(text)
    if match is None or match.group(2) not in _DURATION_UNITS:
        units = ", ".join(_DURATION_UNITS)
        raise ValueError(
            f"{text!r} is not a duration: write a number and a unit ({units}), e.g. '15 s'"
        )
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be greater than zero")
    if not math.isfinite(seconds) or seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{text!r} is too long: a duration is at most 3650 d")
    return seconds


def duration_within(text: str, low: str, high: str, why: str = "") -> float:
    """``text`` parsed, if it lies in [``low``, ``high``]; ValueError naming the bound if not.

    ``why`` says what breaks outside the range, e.g. "a publish needs a round trip".
    """
    seconds = parse_duration(text)
    reason = f": {why}" if why else ""
    if seconds < parse_duration(low):
        raise ValueError(f"{text!r} is too short: at least {low}{reason}")
    if seconds > parse_duration(high):
        raise ValueError(f"{text!r} is too long: at most {high}{reason}")
    return seconds


def parse_size(text: str) -> int:
    """Parse ``"256 MiB"`` into bytes (> 0)."""
    match = _PATTERN.match(text)
    if match is None or match.group(2) not in _SIZE_UNITS:
        units = ", ".join(_SIZE_UNITS)
        raise ValueError(
            f"{text!r} is not a size: write a number and a unit ({units}), e.g. '256 MiB'"
        )
    number = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if not math.isfinite(number) or number > MAX_SIZE_BYTES:
        raise ValueError(f"{text!r} is too large: a size is at most 1024 GiB")
    size = int(number)
    if size <= 0:
        raise ValueError(f"{text!r}: a size must be greater than zero")
    return size
