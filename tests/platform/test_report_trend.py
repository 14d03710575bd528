"""The report's pure arithmetic, worked out by hand (docs/reports.md §4, §5): the least-squares
trend and its projection, data capture per station, the share of stations meeting a limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from agent.platform.report.trend import Figure, capture, compare, fit_trend, share_meeting


def ok(value: float) -> Figure:
    return Figure(value, True)


BAD = Figure.invalid("data capture 80 % (292 of 365 days) < required 90 %")


@pytest.mark.parametrize(("points", "slope", "at_2030"), [
    # a straight fall of 1 a year: 10, 9, 8 → 0 in 2030
    ([(2020, ok(10)), (2021, ok(9)), (2022, ok(8))], -1.0, 0.0),
    # x̄ = 2021, ȳ = 11, Sxx = 2, Sxy = (-1)(-1) + 0 + (1)(0) = 1: slope 0.5; 11 + 0.5 × 9
    ([(2020, ok(10)), (2021, ok(12)), (2022, ok(11))], 0.5, 15.5),
    # the invalid year is left out: the line through (2020, 20) and (2023, 14), -2 a year
    ([(2020, ok(20)), (2021, BAD), (2022, BAD), (2023, ok(14))], -2.0, 0.0),
    # two years are enough; a rise: 5 → 6, then 13 in 2030
    ([(2022, ok(5)), (2023, ok(6))], 1.0, 13.0),
])
def test_trend_and_projection(points: list[tuple[int, Figure]], slope: float,
                              at_2030: float) -> None:
    trend = fit_trend(points)
    assert trend.slope.valid
    assert trend.slope.value == pytest.approx(slope)
    projection = trend.at(2030)
    assert projection.valid and projection.value == pytest.approx(at_2030, abs=1e-9)
    assert trend.slope.n == sum(1 for _, f in points if f.valid)
    assert trend.slope.expected == len(points)


@pytest.mark.parametrize(("points", "reason"), [
    ([], "a trend needs valid figures of 2 years at least, 0 valid"),
    ([(2024, ok(3))], "a trend needs valid figures of 2 years at least, 1 valid"),
    ([(2023, BAD), (2024, ok(3))],
     "a trend needs valid figures of 2 years at least, 1 valid (not valid: 2023)"),
])
def test_no_trend_says_why(points: list[tuple[int, Figure]], reason: str) -> None:
    trend = fit_trend(points)
    assert not trend.slope.valid and trend.slope.value is None
    assert trend.slope.reason == reason
    projection = trend.at(2030)
    assert not projection.valid and projection.value is None
    assert projection.reason == reason


@given(hs.floats(-50, 50), hs.floats(-100, 100), hs.lists(
    hs.integers(2000, 2040), min_size=2, max_size=10, unique=True))
def test_a_line_is_found_again(slope: float, intercept: float, years: list[int]) -> None:
    points = [(y, ok(intercept + slope * (y - 2000))) for y in years]
    trend = fit_trend(points)
    assert trend.slope.value == pytest.approx(slope, abs=1e-6)
    assert trend.at(2050).value == pytest.approx(intercept + slope * 50, abs=1e-4)


@pytest.mark.parametrize(("valid", "expected", "short"), [
    # a leap year of hourly windows: 8784; 90 % of it is 7905.6, so 7906 is enough
    (7906, 8784, ""),
    (7905, 8784, "89.99 % < the 90 % a yearly figure needs"),
    # a common year: 8760 hours, 90 % is exactly 7884
    (7884, 8760, ""),
    (7883, 8760, "89.99 % < the 90 % a yearly figure needs"),
    (365, 365, ""),
    (0, 365, "0.00 % < the 90 % a yearly figure needs"),
])
def test_capture(valid: int, expected: int, short: str) -> None:
    figure, why = capture(valid, expected)
    assert (figure.valid, figure.n, figure.expected) == (True, valid, expected)
    assert figure.value == pytest.approx(100 * valid / expected)
    assert why.startswith(short) and bool(why) is bool(short)


def test_capture_of_an_empty_period() -> None:
    figure, why = capture(0, 0)
    assert not figure.valid and figure.reason == "the period holds no window of this length"
    assert why == ""


@pytest.mark.parametrize(("verdicts", "value", "partial", "n", "reason"), [
    ([("a", True), ("b", True), ("c", False), ("d", True)], 75.0, None, 3, ""),
    ([("a", False)], 0.0, None, 0, ""),
    # one station without a valid figure: no city-wide share, the assessed ones' as partial
    ([("a", True), ("b", None), ("c", False)], None, 50.0, 1,
     "1 of 3 stations have no valid figure (b)"),
    ([("a", None), ("b", None)], None, None, 0, "2 of 2 stations have no valid figure (a, b)"),
    ([(f"s{i}", None) for i in range(7)] + [("t", True)], None, 100.0, 1,
     "7 of 8 stations have no valid figure (s0, s1, s2, s3, s4 and 2 more)"),
    ([], None, None, 0, "no station feeds this indicator"),
])
def test_share_of_stations_meeting(verdicts: list[tuple[str, bool | None]],
                                   value: float | None, partial: float | None, n: int,
                                   reason: str) -> None:
    figure = share_meeting(verdicts)
    assert figure.value == value
    assert figure.partial == partial
    assert figure.valid is (value is not None)
    assert (figure.n, figure.expected, figure.reason) == (n, len(verdicts), reason)


@pytest.mark.parametrize(("value", "comparison", "target", "meets"), [
    (10.0, "<=", 10.0, True), (10.0, "<", 10.0, False), (10.0, ">=", 10.0, True),
    (10.0, ">", 10.0, False), (9.9, "<", 10.0, True), (10.1, ">", 10.0, True),
])
def test_compare(value: float, comparison: str, target: float, meets: bool) -> None:
    assert compare(value, comparison, target) is meets


def test_compare_refuses_an_unknown_sign() -> None:
    with pytest.raises(ValueError, match="unknown comparison"):
        compare(1.0, "==", 1.0)
