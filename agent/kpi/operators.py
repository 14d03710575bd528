"""The operators of docs/kpis.md §4 as pure functions over the items of one window.

The engine accumulates items in time order and calls these at window close; the
functions take plain numbers and sequences so that the tests can check them against the
standards' definitions directly. No I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "AQI_BREAKPOINTS",
    "LDEN_PENALTIES",
    "CounterStep",
    "aqi_category",
    "aqi_us_pm25",
    "counter_step",
    "coverage",
    "energetic_mean",
    "energy",
    "expected_items",
    "is_valid",
    "lden_level",
    "level_of_energy",
    "nowcast",
    "percentile",
    "percentile_rank",
    "truncate_concentration",
]

_TOLERANCE = 1e-9


def is_valid(n: int, expected: int, min_coverage: float) -> bool:
    """docs/kpis.md §3.3: ``expected > 0``, ``n ≥ 1`` and ``n ≥ min_coverage × expected − 1e-9``."""
    return expected > 0 and n >= 1 and n >= min_coverage * expected - _TOLERANCE


def coverage(n: int, expected: int) -> float:
    """``n / expected`` (not capped); 0.0 for a window that expects nothing."""
    return n / expected if expected > 0 else 0.0


def expected_items(duration_ms: int, interval_ms: int) -> int:
    """Readings a window of real length ``duration_ms`` should hold: Python ``round()``."""
    return round(duration_ms / interval_ms)


def energy(level: float) -> float:
    """A sound level in dB as relative energy, ``10^(L/10)``; inf beyond the float range."""
    try:
        return float(10.0 ** (level / 10.0))
    except OverflowError:  # a glitch such as 65535 dB: the caller treats it as invalid
        return math.inf


def level_of_energy(total: float, n: int) -> float:
    """The level of the mean of ``n`` energies summing to ``total``: ``10·log10(total / n)``."""
    return 10.0 * math.log10(total / n)


def energetic_mean(levels: Sequence[float]) -> float:
    """``10·log10(mean(10^(x/10)))``, summed in the given (time) order."""
    total = 0.0
    for level in levels:
        total += energy(level)
    return level_of_energy(total, len(levels))


def percentile_rank(q: float, n: int) -> int:
    """Nearest rank: ``max(1, ceil(q·n/100 − 1e-9))`` (1-based)."""
    return max(1, math.ceil(q * n / 100.0 - _TOLERANCE))


def percentile(values: Sequence[float], q: float) -> tuple[float, int]:
    """(value, rank) of the nearest-rank ``q``-th percentile of non-empty ``values``."""
    rank = percentile_rank(q, len(values))
    return sorted(values)[rank - 1], rank


# --------------------------------------------------------------------------------------------
# counters


@dataclass(frozen=True, slots=True)
class CounterStep:
    """One reading of a cumulative counter: what it adds to the window of its time."""

    delta: float | None  # accepted delta, None for a first reading or a reset
    rollover: bool
    reset: bool


def counter_step(
    previous: float | None,
    gap_ms: int,
    current: float,
    *,
    interval_ms: int,
    modulus: float | None,
    max_delta: float | None,
) -> CounterStep:
    """The delta from ``previous`` to ``current`` (docs/kpis.md §4 ``counter_delta``).

    A negative delta wraps at ``modulus`` (a rollover); a delta still negative, or above
    ``max_delta`` × the number of sample intervals bridged, is discarded as a reset and the
    caller takes ``current`` as the new baseline.
    """
    if previous is None:
        return CounterStep(None, rollover=False, reset=False)
    delta = current - previous
    rollover = False
    if delta < 0 and modulus is not None:
        delta += modulus
        rollover = True
    limit = math.inf if max_delta is None else max_delta * max(1, round(gap_ms / interval_ms))
    if delta < 0 or delta > limit:
        return CounterStep(None, rollover=False, reset=True)
    return CounterStep(delta, rollover=rollover, reset=False)


# --------------------------------------------------------------------------------------------
# US AQI for PM2.5 (EPA, 2024 breakpoints)

AQI_BREAKPOINTS: tuple[tuple[float, float, int, int], ...] = (
    (0.0, 9.0, 0, 50),
    (9.1, 35.4, 51, 100),
    (35.5, 55.4, 101, 150),
    (55.5, 125.4, 151, 200),
    (125.5, 225.4, 201, 300),
    (225.5, 325.4, 301, 500),
)
_AQI_CATEGORIES = (
    (50, "good"),
    (100, "moderate"),
    (150, "unhealthy_for_sensitive_groups"),
    (200, "unhealthy"),
    (300, "very_unhealthy"),
)


def truncate_concentration(concentration: float) -> float:
    """``max(0, C)`` truncated to 0.1 µg/m³: ``floor(10·C + 1e-9) / 10``."""
    return math.floor(10.0 * max(0.0, concentration) + _TOLERANCE) / 10.0


def aqi_us_pm25(concentration: float) -> tuple[int, float]:
    """(AQI, truncated concentration) for a PM2.5 concentration in µg/m³."""
    c = truncate_concentration(concentration)
    segment = next((bp for bp in AQI_BREAKPOINTS if c <= bp[1]), AQI_BREAKPOINTS[-1])
    c_lo, c_hi, i_lo, i_hi = segment
    index = (i_hi - i_lo) / (c_hi - c_lo) * (c - c_lo) + i_lo
    return math.floor(index + 0.5), c


def aqi_category(aqi: int) -> str:
    """The EPA category name of an AQI value."""
    for upper, name in _AQI_CATEGORIES:
        if aqi <= upper:
            return name
    return "hazardous"


def nowcast(hours: Sequence[float | None]) -> tuple[float, float] | None:
    """(NowCast, weight) of hourly means ``c1`` (latest) … ``c12``; None if not valid.

    Valid iff at least two of c1, c2, c3 are present. A missing hour keeps its power of w.
    """
    if sum(1 for c in hours[:3] if c is not None) < 2:
        return None
    present = [c for c in hours if c is not None]
    c_min, c_max = min(present), max(present)
    weight = 1.0 if c_max <= 0 else max(0.5, c_min / c_max)
    numerator = 0.0
    denominator = 0.0
    for i, c in enumerate(hours):
        if c is not None:
            factor = weight**i
            numerator += factor * c
            denominator += factor
    return numerator / denominator, weight


# --------------------------------------------------------------------------------------------
# Lden (Directive 2002/49/EC, Annex I)

LDEN_PENALTIES: Mapping[str, float] = {"day": 0.0, "evening": 5.0, "night": 10.0}


def lden_level(levels: Mapping[str, float], hours: Mapping[str, float]) -> float:
    """``10·log10(Σ T_p·10^((L_p + P_p)/10) / Σ T_p)`` over day, evening, night."""
    numerator = 0.0
    for period, penalty in LDEN_PENALTIES.items():
        numerator += hours[period] * energy(levels[period] + penalty)
    total_hours = hours["day"] + hours["evening"] + hours["night"]
    return 10.0 * math.log10(numerator / total_hours)
