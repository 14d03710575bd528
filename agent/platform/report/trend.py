"""The report's pure arithmetic (docs/reports.md §4, §5): the least-squares trend of yearly
figures and its projection to a target year, a station's data capture over the period, and
the city-wide share of stations meeting a limit or a target.

No I/O and no clock. Every result is a :class:`Figure`: a value with whether it is valid
and, when it is not, why, so that a report never shows a silent number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from agent.platform.statistics import Stat

__all__ = [
    "Figure",
    "Trend",
    "capture",
    "compare",
    "fit_trend",
    "share_meeting",
]


@dataclass(frozen=True, slots=True)
class Figure:
    """One figure of the report: ``value`` when ``valid``; else ``value`` is None, ``reason``
    says why and ``partial`` holds what the data present gives (or None). ``n`` of
    ``expected`` is what it rests on (windows, days, years or stations)."""

    value: float | None
    valid: bool
    reason: str = ""
    n: int | None = None
    expected: int | None = None
    partial: float | None = None

    @classmethod
    def of(cls, stat: Stat) -> Figure:
        return cls(stat.value, stat.valid, stat.reason, stat.n, stat.expected, stat.partial)

    @classmethod
    def invalid(cls, reason: str, *, partial: float | None = None, n: int | None = None,
                expected: int | None = None) -> Figure:
        return cls(None, False, reason, n, expected, partial)


@dataclass(frozen=True, slots=True)
class Trend:
    """``value = intercept + slope × year`` fitted on ``years`` (valid yearly figures)."""

    slope: Figure  # unit per year
    intercept: float | None
    years: tuple[int, ...]

    def at(self, year: int) -> Figure:
        """The line's value in ``year``: the projection, valid when the trend is."""
        if not self.slope.valid or self.slope.value is None or self.intercept is None:
            return Figure.invalid(self.slope.reason)
        return Figure(self.intercept + self.slope.value * year, True, n=len(self.years))


MIN_TREND_YEARS = 2


def fit_trend(points: Sequence[tuple[int, Figure]]) -> Trend:
    """The ordinary least-squares line through the valid ``(year, figure)`` points; invalid
    with fewer than two valid years (a line needs two), the invalid years named."""
    valid = [(year, f.value) for year, f in points if f.valid and f.value is not None]
    skipped = [str(year) for year, f in points if not (f.valid and f.value is not None)]
    years = tuple(year for year, _ in valid)
    if len(valid) < MIN_TREND_YEARS:
        why = (f"a trend needs valid figures of {MIN_TREND_YEARS} years at least, "
               f"{len(valid)} valid")
        if skipped:
            why += f" (not valid: {', '.join(skipped)})"
        return Trend(Figure.invalid(why, n=len(valid), expected=len(points)), None, years)
    n = len(valid)
    mean_x = math.fsum(x for x, _ in valid) / n
    mean_y = math.fsum(y for _, y in valid) / n
    sxx = math.fsum((x - mean_x) ** 2 for x, _ in valid)
    sxy = math.fsum((x - mean_x) * (y - mean_y) for x, y in valid)
    slope = sxy / sxx  # years are distinct, so sxx > 0
    return Trend(Figure(slope, True, n=n, expected=len(points)), mean_y - slope * mean_x, years)


def compare(value: float, comparison: str, target: float) -> bool:
    """Whether ``value`` stands in ``comparison`` (``<=``, ``<``, ``>=``, ``>``) to ``target``."""
    if comparison == "<=":
        return value <= target
    if comparison == "<":
        return value < target
    if comparison == ">=":
        return value >= target
    if comparison == ">":
        return value > target
    raise ValueError(f"unknown comparison {comparison!r}")


def capture(valid_windows: int, expected_windows: int, required: float = 0.9
            ) -> tuple[Figure, str]:
    """A station's data capture over the period: valid windows / windows the period holds,
    in percent, and, when it is below ``required``, what that means (else '')."""
    if expected_windows <= 0:
        return Figure.invalid("the period holds no window of this length", n=valid_windows,
                              expected=expected_windows), ""
    share = 100.0 * valid_windows / expected_windows
    short = ""
    if valid_windows < required * expected_windows - 1e-9:
        # two decimals: 89.99 % must not print as the 90 % it falls short of
        short = (f"{share:.2f} % < the {required * 100:g} % a yearly figure needs: the "
                 "period's yearly figures at this station are not valid")
    return Figure(share, True, n=valid_windows, expected=expected_windows), short


def share_meeting(verdicts: Sequence[tuple[str, bool | None]]) -> Figure:
    """The share (percent) of stations meeting a limit or target, from ``(station, meets)``
    where None is a station not assessed (no valid figure). Valid only when every station is
    assessed; else ``partial`` is the share of the assessed ones and ``reason`` names the
    others. ``n`` stations meet of ``expected`` stations."""
    if not verdicts:
        return Figure.invalid("no station feeds this indicator", n=0, expected=0)
    assessed = [meets for _, meets in verdicts if meets is not None]
    meeting = sum(1 for meets in assessed if meets)
    missing = [name for name, meets in verdicts if meets is None]
    share = 100.0 * meeting / len(assessed) if assessed else None
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                          else "")
        return Figure.invalid(
            f"{len(missing)} of {len(verdicts)} stations have no valid figure ({shown})",
            partial=share, n=meeting, expected=len(verdicts))
    return Figure(share, True, n=meeting, expected=len(verdicts))
