"""The pure operators (docs/kpis.md §4), table-driven from the standards' definitions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.kpi.operators import (
    aqi_category,
    aqi_us_pm25,
    counter_step,
    energetic_mean,
    expected_items,
    is_valid,
    lden_level,
    nowcast,
    percentile,
    percentile_rank,
    truncate_concentration,
)

MIN15 = 15 * 60_000


@pytest.mark.parametrize(
    ("n", "expected", "min_coverage", "valid"),
    [
        (45, 60, 0.75, True),  # 1 h from minutes: 45/60
        (44, 60, 0.75, False),
        (18, 24, 0.75, True),  # a day from hours: 18/24
        (18, 23, 0.75, True),  # 23-h day: 17.25 → 18
        (17, 23, 0.75, False),
        (19, 25, 0.75, True),  # 25-h day: 18.75 → 19
        (18, 25, 0.75, False),
        (6, 8, 0.75, True),  # 8-h mean: 6/8
        (329, 365, 0.9, True),  # annual: 328.5 → 329
        (328, 365, 0.9, False),
        (0, 10, 0.0, False),  # n ≥ 1 even with min_coverage 0
        (1, 10, 0.0, True),
        (1, 0, 0.0, False),  # expected > 0
        (7, 10, 0.7, True),  # 0.7 × 10 = 7.000000000000001: the 1e-9 tolerance
    ],
)
def test_is_valid(n: int, expected: int, min_coverage: float, valid: bool) -> None:
    assert is_valid(n, expected, min_coverage) is valid


@pytest.mark.parametrize(
    ("duration_h", "interval_h", "expected"),
    [(1, 1 / 60, 60), (23, 1, 23), (25, 1, 25), (23, 2, 12), (25, 2, 12), (1.5, 1, 2)],
)
def test_expected_uses_round(duration_h: float, interval_h: float, expected: int) -> None:
    # Python round(): 11.5 → 12 and 12.5 → 12 (half to even), as docs/kpis.md §3.3 writes it.
    assert expected_items(round(duration_h * 3_600_000), round(interval_h * 3_600_000)) == expected


@pytest.mark.parametrize(
    ("q", "n", "rank"),
    [
        (50, 4, 2),
        (50, 5, 3),
        (25, 4, 1),
        (100, 5, 5),
        (1, 5, 1),
        (0.1, 3, 1),  # max(1, …)
        (90.4, 365, 330),  # 329.96 → 330
        (98, 365, 358),  # 357.7 → 358
        (99.8, 1000, 998),  # 998.0000000000001 in floats: the tolerance keeps 998
        (99, 100, 99),
    ],
)
def test_percentile_rank(q: float, n: int, rank: int) -> None:
    assert percentile_rank(q, n) == rank


def test_percentile_sorts_and_takes_the_rank() -> None:
    assert percentile([5.0, 1.0, 4.0, 2.0, 3.0], 50) == (3.0, 3)
    assert percentile([5.0, 1.0, 4.0, 2.0, 3.0], 80) == (4.0, 4)
    assert percentile([7.0], 99) == (7.0, 1)


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0.01, 100))
def test_percentile_is_an_element_with_at_least_q_percent_at_or_below(
    values: list[float], q: float
) -> None:
    value, rank = percentile(values, q)
    assert value in values
    assert 1 <= rank <= len(values)
    assert sum(1 for x in values if x <= value) >= q * len(values) / 100 - 1e-9


def test_energetic_mean() -> None:
    assert energetic_mean([50, 50, 50, 60, 60, 60]) == 10 * math.log10(550000)
    assert energetic_mean([70.0]) == pytest.approx(70.0)
    assert energetic_mean([60.0, 60.0]) == pytest.approx(60.0)


@pytest.mark.parametrize(
    ("concentration", "truncated", "aqi", "category"),
    [
        (0.0, 0.0, 0, "good"),
        (-3.0, 0.0, 0, "good"),  # max(0, C)
        (9.0, 9.0, 50, "good"),
        (9.04, 9.0, 50, "good"),  # truncated, not rounded
        (9.09, 9.0, 50, "good"),
        (9.1, 9.1, 51, "moderate"),
        (12.0, 12.0, 56, "moderate"),  # 49/26.3·2.9 + 51 = 56.40
        (35.4, 35.4, 100, "moderate"),
        (35.49, 35.4, 100, "moderate"),
        (35.5, 35.5, 101, "unhealthy_for_sensitive_groups"),
        (55.4, 55.4, 150, "unhealthy_for_sensitive_groups"),
        (55.5, 55.5, 151, "unhealthy"),
        (125.4, 125.4, 200, "unhealthy"),
        (125.5, 125.5, 201, "very_unhealthy"),
        (225.4, 225.4, 300, "very_unhealthy"),
        (225.5, 225.5, 301, "hazardous"),
        (325.4, 325.4, 500, "hazardous"),
        (400.0, 400.0, 649, "hazardous"),  # beyond: 199/99.9·174.5 + 301 = 648.60
        (16.6667, 16.6, 65, "moderate"),  # E6
    ],
)
def test_aqi_breakpoints(concentration: float, truncated: float, aqi: int, category: str) -> None:
    assert aqi_us_pm25(concentration) == (aqi, truncated)
    assert aqi_category(aqi) == category


def test_truncation_tolerates_binary_fractions() -> None:
    # 0.3 · 10 = 2.9999999999999996 in floats: the 1e-9 keeps it 0.3
    assert truncate_concentration(0.1 + 0.2) == 0.3
    assert truncate_concentration(35.4) == 35.4


@pytest.mark.parametrize(
    ("hours", "expected"),
    [
        ([20.0, 10.0], (25 / 1.5, 0.5)),  # E6 end 08:00
        ([40.0, 20.0, 10.0], (30.0, 0.5)),  # E6 end 09:00
        ([10.0, None, 10.0], (10.0, 1.0)),  # a missing hour keeps its power of w
        ([10.0, None, None], None),  # one of the last three hours
        (
            [None, 10.0, 12.0],
            ((10.0 * 10 / 12 + 12.0 * (10 / 12) ** 2) / (10 / 12 + (10 / 12) ** 2), 10 / 12),
        ),
        ([0.0, 0.0], (0.0, 1.0)),  # cmax ≤ 0 → w = 1
        # cmin/cmax = 1/10 → w = 0.5; hour 12 weighs 0.5**11
        ([10.0, 9.0, *([None] * 9), 1.0], ((10 + 0.5 * 9 + 0.5**11) / (1 + 0.5 + 0.5**11), 0.5)),
    ],
)
def test_nowcast(hours: list[float | None], expected: tuple[float, float] | None) -> None:
    result = nowcast(hours)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_lden_level() -> None:
    hours = {"day": 12.0, "evening": 4.0, "night": 8.0}
    # day 60, evening 55 + 5, night 50 + 10: every period weighs 60 dB
    assert lden_level({"day": 60.0, "evening": 55.0, "night": 50.0}, hours) == pytest.approx(60.0)
    same = {"day": 60.0, "evening": 60.0, "night": 60.0}
    assert lden_level(same, hours) == pytest.approx(
        10 * math.log10((12 * 10**6 + 4 * 10**6.5 + 8 * 10**7) / 24)
    )
    assert round(lden_level(same, hours), 4) == 66.3952


@pytest.mark.parametrize(
    ("previous", "gap", "current", "modulus", "max_delta", "step"),
    [
        (None, 0, 5.0, None, None, (None, False, False)),  # first reading: baseline
        (10.0, MIN15, 12.5, None, None, (2.5, False, False)),
        (995.5, MIN15, 3.0, 1000.0, 50.0, (7.5, True, False)),  # rollover
        (12.0, MIN15, 500.0, 1000.0, 50.0, (None, False, True)),  # 488 > 50: reset
        (500.0, MIN15, 10.0, None, None, (None, False, True)),  # negative, no modulus: reset
        (500.0, MIN15, 10.0, 1000.0, 50.0, (None, False, True)),  # wraps to 510 > 50: reset
        (10.0, 3 * MIN15, 130.0, None, 50.0, (120.0, False, False)),  # 3 intervals: limit 150
        (10.0, 2 * MIN15, 130.0, None, 50.0, (None, False, True)),  # 2 intervals: limit 100
        (10.0, MIN15 // 3, 60.0, None, 50.0, (50.0, False, False)),  # max(1, …) intervals
        (10.0, MIN15, 10.0, None, 50.0, (0.0, False, False)),  # standing still is fine
    ],
)
def test_counter_step(
    previous: float | None,
    gap: int,
    current: float,
    modulus: float | None,
    max_delta: float | None,
    step: tuple[float | None, bool, bool],
) -> None:
    result = counter_step(
        previous, gap, current, interval_ms=MIN15, modulus=modulus, max_delta=max_delta
    )
    assert (result.delta, result.rollover, result.reset) == step
