"""Regulatory statistics (agent/platform/statistics.py, docs/indicators.md §7): table tests
worked by hand from the directive's rules, a leap year and DST days included, and hypothesis
properties."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.platform.statistics import (
    Record,
    Stat,
    annual_exceedances,
    annual_mean,
    annual_percentile,
    daily_means,
    exceedances,
    mean,
    ozone_annual_mean,
    ozone_exceedance_days,
    percentile,
    percentile_rank,
    three_year_mean,
)

BERLIN = ZoneInfo("Europe/Berlin")
HOUR = timedelta(hours=1)


def hours_from(local_start: datetime, values: list[float | None]) -> list[Record]:
    """Consecutive hourly windows from ``local_start`` (real hours: DST changes the wall
    clock, not the step); None is a missing (invalid) hour."""
    start = local_start.astimezone(UTC)
    return [
        Record(start + i * HOUR, start + (i + 1) * HOUR, v, valid=v is not None)
        for i, v in enumerate(values)
    ]


def days_of(year: int, zone: ZoneInfo = BERLIN) -> list[date]:
    first = date(year, 1, 1)
    return [first + timedelta(days=i) for i in range((date(year + 1, 1, 1) - first).days)]


def day_record(day: date, value: float | None, zone: ZoneInfo = BERLIN) -> Record:
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    after = day + timedelta(days=1)
    end = datetime(after.year, after.month, after.day, tzinfo=zone)
    return Record(start, end, value, valid=value is not None)


# --------------------------------------------------------------------------------------------
# Daily means from hourly values: 75 % of the day's real hours


@pytest.mark.parametrize(
    ("day", "valid_hours", "hours_in_day", "ok", "reason"),
    [
        (date(2025, 1, 15), 24, 24, True, ""),
        (date(2025, 1, 15), 18, 24, True, ""),  # 18 of 24: exactly 75 %
        (date(2025, 1, 15), 17, 24, False,
         "data capture 70.83 % (17 of 24 hours) < required 75 %"),
        # 30 March 2025: clocks go 02:00 → 03:00, a 23-hour day; 0.75 × 23 = 17.25.
        (date(2025, 3, 30), 18, 23, True, ""),
        (date(2025, 3, 30), 17, 23, False,
         "data capture 73.91 % (17 of 23 hours) < required 75 %"),
        # 26 October 2025: 03:00 → 02:00, a 25-hour day; 0.75 × 25 = 18.75.
        (date(2025, 10, 26), 19, 25, True, ""),
        (date(2025, 10, 26), 18, 25, False, "data capture 72 % (18 of 25 hours) < required 75 %"),
        (date(2025, 1, 15), 0, 24, False, "data capture 0 % (0 of 24 hours) < required 75 %"),
    ],
)
def test_a_daily_mean_needs_75_percent_of_the_days_real_hours(
    day: date, valid_hours: int, hours_in_day: int, ok: bool, reason: str
) -> None:
    # The valid hours hold 10.0, the others a huge value flagged invalid: never in the mean.
    values: list[float | None] = [10.0] * valid_hours + [None] * (hours_in_day - valid_hours)
    records = [
        r if r.valid else Record(r.start, r.end, 9999.0, valid=False)
        for r in hours_from(datetime(day.year, day.month, day.day, tzinfo=BERLIN), values)
    ]
    (daily,) = daily_means(records, BERLIN, day, day)
    assert daily.stat.expected == hours_in_day
    assert daily.stat.n == valid_hours
    assert daily.stat.valid is ok
    assert daily.stat.reason == reason
    assert daily.stat.value == (10.0 if ok else None)
    assert daily.stat.partial == (None if ok or valid_hours == 0 else 10.0)


def test_daily_means_of_the_dst_days_worked_by_hand() -> None:
    # 25-hour day: hours 0..24 hold 1..25; the repeated 02:00 hour is two windows.
    autumn = hours_from(datetime(2025, 10, 26, tzinfo=BERLIN), [float(v) for v in range(1, 26)])
    # 23-hour day: hours hold 1..23, three of them missing (2, 3 and 23).
    spring_values: list[float | None] = [float(v) for v in range(1, 24)]
    for missing in (2, 3, 23):
        spring_values[missing - 1] = None
    spring = hours_from(datetime(2025, 3, 30, tzinfo=BERLIN), spring_values)
    spring_day, = daily_means(spring, BERLIN, date(2025, 3, 30), date(2025, 3, 30))
    autumn_day, = daily_means(autumn, BERLIN, date(2025, 10, 26), date(2025, 10, 26))
    assert autumn_day.start.isoformat() == "2025-10-26T00:00:00+02:00"
    assert autumn_day.end.isoformat() == "2025-10-27T00:00:00+01:00"
    assert (autumn_day.stat.value, autumn_day.stat.n, autumn_day.stat.expected) == (13.0, 25, 25)
    assert spring_day.end.isoformat() == "2025-03-31T00:00:00+02:00"
    # (1 + … + 23 − 2 − 3 − 23) / 20 = (276 − 28) / 20 = 12.4
    assert (spring_day.stat.value, spring_day.stat.n, spring_day.stat.expected) == (12.4, 20, 23)


def test_daily_means_cover_every_date_asked_and_only_those() -> None:
    values: list[float | None] = [5.0] * 72
    records = hours_from(datetime(2025, 1, 1, tzinfo=BERLIN), values)
    days = daily_means(records, BERLIN, date(2024, 12, 31), date(2025, 1, 2))
    assert [d.day for d in days] == [date(2024, 12, 31), date(2025, 1, 1), date(2025, 1, 2)]
    assert [d.stat.valid for d in days] == [False, True, True]
    assert days[0].stat.reason == "data capture 0 % (0 of 24 hours) < required 75 %"


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([Record(datetime(2025, 1, 1, 0, tzinfo=UTC), datetime(2025, 1, 1, 1, tzinfo=UTC), 1.0),
          Record(datetime(2025, 1, 1, 0, tzinfo=UTC), datetime(2025, 1, 1, 1, tzinfo=UTC), 2.0)],
         re.escape("two windows start at 2025-01-01T00:00:00+00:00")),
        ([Record(datetime(2025, 1, 1, 0, tzinfo=UTC), datetime(2025, 1, 1, 2, tzinfo=UTC), 1.0)],
         "is not 1 h"),
        ([Record(datetime(2025, 1, 1, 0), datetime(2025, 1, 1, 1), 1.0)], "has no UTC offset"),
    ],
)
def test_daily_means_refuse_windows_that_are_not_distinct_aware_hours(
    records: list[Record], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        daily_means(records, BERLIN, date(2025, 1, 1), date(2025, 1, 1))


# --------------------------------------------------------------------------------------------
# Annual means: 90 % data capture; leap years have 366 days and 8784 hours


@pytest.mark.parametrize(
    ("year", "valid_days", "ok", "reason"),
    [
        (2025, 365, True, ""),
        (2025, 329, True, ""),  # 329 / 365 = 90.14 %
        (2025, 328, False, "data capture 89.86 % (328 of 365 days) < required 90 %"),
        (2024, 330, True, ""),  # 330 / 366 = 90.16 %
        (2024, 329, False, "data capture 89.89 % (329 of 366 days) < required 90 %"),
    ],
)
def test_an_annual_mean_of_daily_means_needs_90_percent_of_the_years_days(
    year: int, valid_days: int, ok: bool, reason: str
) -> None:
    days = days_of(year)
    records = [day_record(d, 20.0 if i < valid_days else None) for i, d in enumerate(days)]
    stat = annual_mean(records, BERLIN, year, "1 d")
    assert (stat.valid, stat.reason, stat.n, stat.expected) == (ok, reason, valid_days, len(days))
    assert stat.value == (20.0 if ok else None)


@pytest.mark.parametrize(("year", "hours"), [(2024, 8784), (2025, 8760)])
def test_an_annual_mean_of_hourly_means_expects_the_local_years_real_hours(
    year: int, hours: int
) -> None:
    stat = annual_mean([], BERLIN, year, "1 h")
    assert (stat.valid, stat.expected, stat.value) == (False, hours, None)
    assert stat.reason == f"data capture 0 % (0 of {hours} hours) < required 90 %"


def test_an_annual_mean_uses_only_the_windows_of_its_local_year() -> None:
    # 2024-12-31 23:00 local and 2025-01-01 00:00 local: one hour in each year.
    edge = hours_from(datetime(2024, 12, 31, 23, tzinfo=BERLIN), [1.0, 100.0])
    records = edge + hours_from(datetime(2025, 1, 1, 1, tzinfo=BERLIN), [4.0] * 8759)
    stat = annual_mean(records, BERLIN, 2025, "1 h")
    assert (stat.n, stat.expected, stat.valid) == (8760, 8760, True)
    assert stat.value == pytest.approx((100.0 + 4.0 * 8759) / 8760)


@pytest.mark.parametrize(
    ("campaign_days", "valid_days", "ok", "reason"),
    [
        # One day a week: 52 of 365 days = 14.25 % time coverage; 90 % of 52 = 46.8 → 47.
        (52, 47, True, ""),
        (52, 46, False, "data capture 88.46 % (46 of 52 days) < required 90 %"),
        (51, 51, False, "time coverage 13.97 % (51 of 365 days) < required 14 %"),
    ],
)
def test_indicative_measurements_need_90_percent_within_14_percent_of_the_year(
    campaign_days: int, valid_days: int, ok: bool, reason: str
) -> None:
    days = days_of(2025)[::7][:campaign_days]
    records = [day_record(d, 30.0 if i < valid_days else None) for i, d in enumerate(days)]
    stat = annual_mean(records, BERLIN, 2025, "1 d", indicative_windows=campaign_days)
    assert (stat.valid, stat.reason) == (ok, reason)


# --------------------------------------------------------------------------------------------
# Percentiles (Council Decision 97/101/EC rank) and exceedances


@pytest.mark.parametrize(
    ("q", "n", "rank"),
    [
        (90.4, 365, 330),  # 329.96 → 330: the 36th highest; ≤ 50 ⇔ at most 35 days over 50
        (90.4, 366, 331),  # 330.864 → 331: the 36th highest in a leap year too
        (99.8, 8760, 8742),  # 8742.48 → 8742: the 19th highest; at most 18 hours over
        (99.8, 8784, 8766),  # 8766.432 → 8766: the 19th highest
        (99.2, 365, 362),  # 362.08: the 4th highest; at most 3 days over
        (99.2, 366, 363),  # 363.072: the 4th highest
        (99.7, 8760, 8734),  # 8733.72 → 8734: the 27th highest, i.e. 26 hours, not SO2's 24
        (50.0, 10, 5),
        (95.0, 10, 10),  # 9.5: a half rounds up
        (1.0, 10, 1),  # 0.1 → 0, kept at the first
        (100.0, 7, 7),
    ],
)
def test_percentile_rank_worked_by_hand(q: float, n: int, rank: int) -> None:
    assert percentile_rank(q, n) == rank


def test_a_percentile_of_daily_means_in_a_leap_and_a_common_year() -> None:
    for year, p904 in ((2025, 330.0), (2024, 331.0)):
        days = days_of(year)
        # Day i holds i + 1, in reverse order: the percentile sorts.
        records = [day_record(d, float(len(days) - i)) for i, d in enumerate(days)]
        stat = annual_percentile(records, BERLIN, year, "1 d", 90.4)
        assert (stat.value, stat.valid, stat.n) == (p904, True, len(days))


def test_a_percentile_over_too_few_days_is_not_valid_but_says_what_it_was() -> None:
    days = days_of(2025)[:300]
    stat = annual_percentile([day_record(d, 7.0) for d in days], BERLIN, 2025, "1 d", 90.4)
    assert (stat.valid, stat.value, stat.partial) == (False, None, 7.0)
    assert stat.reason == "data capture 82.19 % (300 of 365 days) < required 90 %"


def test_exceedances_are_strict_unless_the_threshold_starts_a_band() -> None:
    values = [49.9, 50.0, 50.1, 61.5]
    records = [day_record(date(2025, 5, 5) + timedelta(days=i), v) for i, v in enumerate(values)]
    assert exceedances(records, 50.0, 4, 0.9).value == 2.0
    assert exceedances(records, 50.0, 4, 0.9, comparison=">=").value == 3.0


def test_a_year_of_pm10_days_with_36_over_50_fails_both_ways_alike() -> None:
    days = days_of(2025)
    values = [60.0] * 36 + [30.0] * (len(days) - 36)
    records = [day_record(d, v) for d, v in zip(days, values, strict=True)]
    count = annual_exceedances(records, BERLIN, 2025, "1 d", threshold=50.0)
    p904 = annual_percentile(records, BERLIN, 2025, "1 d", 90.4)
    assert (count.value, count.valid) == (36.0, True)
    assert p904.value == 60.0  # > 50: the limit value is exceeded, as the count says
    one_less = [day_record(d, v) for d, v in zip(days, [*values[1:], 30.0], strict=True)]
    assert annual_percentile(one_less, BERLIN, 2025, "1 d", 90.4).value == 30.0


def test_too_few_valid_days_make_the_count_a_lower_bound() -> None:
    days = days_of(2025)[:200]
    stat = annual_exceedances([day_record(d, 80.0) for d in days], BERLIN, 2025, "1 d",
                              threshold=50.0)
    assert (stat.valid, stat.value, stat.partial) == (False, None, 200.0)
    assert stat.reason == "data capture 54.79 % (200 of 365 days) < required 90 %"


# --------------------------------------------------------------------------------------------
# Ozone (Annex VII A.2 and B)


def _hours_of_year(year: int) -> list[Record]:
    start = datetime(year, 1, 1, tzinfo=BERLIN).astimezone(UTC)
    end = datetime(year + 1, 1, 1, tzinfo=BERLIN).astimezone(UTC)
    count = int((end - start) / HOUR)
    return [Record(start + i * HOUR, start + (i + 1) * HOUR, 60.0) for i in range(count)]


@pytest.mark.parametrize(
    ("missing_summer", "missing_winter", "ok", "reason"),
    [
        # 2025 in Berlin: summer (April-September) 183 days of 24 h = 4392 hours; winter 8760 -
        # 4392 = 4368 hours (the 23-hour 30 March and the 25-hour 26 October are both in it).
        # 75 % of 4392 = 3294, of 4368 = 3276.
        (4392 - 3294, 4368 - 3276, True, ""),
        (0, 4368 - 3275,
         False, "winter data capture 74.98 % (3275 of 4368 hours) < required 75 %"),
        (4392 - 3293, 0,
         False, "summer data capture 74.98 % (3293 of 4392 hours) < required 75 %"),
    ],
)
def test_the_ozone_annual_mean_needs_75_percent_of_summer_and_of_winter_each(
    missing_summer: int, missing_winter: int, ok: bool, reason: str
) -> None:
    hours = _hours_of_year(2025)
    summer_start = datetime(2025, 4, 1, tzinfo=BERLIN)
    summer_end = datetime(2025, 10, 1, tzinfo=BERLIN)
    summer = [r for r in hours if summer_start <= r.start < summer_end]
    winter = [r for r in hours if not summer_start <= r.start < summer_end]
    assert (len(summer), len(winter)) == (4392, 4368)
    gone = {r.start for r in summer[:missing_summer]} | {r.start for r in winter[:missing_winter]}
    stat = ozone_annual_mean([r for r in hours if r.start not in gone], BERLIN, 2025)
    assert (stat.valid, stat.reason, stat.expected) == (ok, reason, 8760)
    assert (stat.value if ok else stat.partial) == 60.0


@pytest.mark.parametrize(
    ("valid_days", "ok", "reason"),
    [
        ({}, True, ""),
        # April has 30 days: 90 % is 27 ("27 available daily values per month").
        ({4: 27}, True, ""),
        ({4: 26}, True, ""),  # one short month of six: five remain
        ({4: 26, 7: 27}, False,  # July has 31 days: 27.9 needed, so 28
         "4 of the 6 summer months hold 90 % of their days, 5 required (April 26 of 30, "
         "July 27 of 31 days)"),
    ],
)
def test_ozone_days_over_120_need_five_of_the_six_summer_months(
    valid_days: dict[int, int], ok: bool, reason: str
) -> None:
    records = []
    for day in days_of(2025):
        kept = valid_days.get(day.month)
        if kept is not None and day.day > kept:
            continue
        # 130 in the first ten days of June, 100 elsewhere: 10 days over 120.
        value = 130.0 if day.month == 6 and day.day <= 10 else 100.0
        records.append(day_record(day, value))
    stat = ozone_exceedance_days(records, BERLIN, 2025)
    assert (stat.valid, stat.reason, stat.expected) == (ok, reason, 365)
    assert (stat.value if ok else stat.partial) == 10.0


def _year_stat(value: float | None) -> Stat:
    return Stat(value, value is not None, "" if value is not None else "short", 365, 365)


@pytest.mark.parametrize(
    ("years", "value", "n", "reason"),
    [
        ([30.0, 20.0, 25.0], 25.0, 3, ""),
        ([30.0, None, 20.0], 25.0, 2, ""),  # the valid years only
        ([None, None, 18.0], 18.0, 1, ""),  # one valid year is the minimum
        ([None, None, None], None, 0, "no year with valid data (one is the minimum)"),
    ],
)
def test_the_three_year_mean_of_the_ozone_target_value(
    years: list[float | None], value: float | None, n: int, reason: str
) -> None:
    stat = three_year_mean([_year_stat(v) for v in years])
    assert (stat.value, stat.n, stat.expected, stat.reason) == (value, n, 3, reason)
    assert stat.valid == (value is not None)


# --------------------------------------------------------------------------------------------
# Properties

_levels = st.integers(min_value=0, max_value=120).map(float)
_DAY0, _ONE_DAY = datetime(2025, 1, 1, tzinfo=UTC), timedelta(days=1)


@pytest.mark.parametrize(("n", "q", "allowed"), [(365, 90.4, 35), (366, 90.4, 35),
                                                 (365, 99.2, 3), (366, 99.2, 3)])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_the_percentile_equivalent_agrees_with_the_allowed_exceedances(
    n: int, q: float, allowed: int, data: st.DataObject
) -> None:
    values = data.draw(st.lists(_levels, min_size=n, max_size=n))
    limit = data.draw(_levels)
    records = [Record(_DAY0 + i * _ONE_DAY, _DAY0 + (i + 1) * _ONE_DAY, v)
               for i, v in enumerate(values)]
    p = percentile(records, q, n)
    over = exceedances(records, limit, n)
    assert p.value is not None and over.value is not None
    assert (p.value <= limit) == (over.value <= allowed)


@pytest.mark.parametrize("hours", [8760, 8784])
def test_no2s_998th_percentile_is_its_19th_highest_hour(hours: int) -> None:
    assert hours - percentile_rank(99.8, hours) == 18


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), min_size=1, max_size=60),
       expected=st.integers(min_value=1, max_value=80))
def test_a_mean_lies_within_its_valid_values_and_ignores_invalid_ones(
    values: list[float | None], expected: int
) -> None:
    records = [day_record(date(2025, 1, 1) + timedelta(days=i), v) for i, v in enumerate(values)]
    stat = mean(records, expected, 0.9)
    valid = [v for v in values if v is not None]
    figure = stat.value if stat.valid else stat.partial
    if valid:
        assert figure is not None
        assert min(valid) - 1e-6 <= figure <= max(valid) + 1e-6
    else:
        assert figure is None and not stat.valid
    assert stat.n == len(valid)
    assert stat.valid == (bool(valid) and len(valid) >= 0.9 * expected - 1e-9)
    assert stat.valid or stat.reason


@settings(max_examples=6, deadline=None)
@given(zone=st.sampled_from(["Europe/Berlin", "America/New_York", "Asia/Kolkata",
                             "Australia/Sydney", "America/Sao_Paulo", "UTC"]),
       year=st.integers(min_value=2000, max_value=2030))
def test_the_days_hours_add_up_to_the_years_hours(zone: str, year: int) -> None:
    tz = ZoneInfo(zone)
    days = daily_means([], tz, date(year, 1, 1), date(year, 12, 31))
    hours = annual_mean([], tz, year, "1 h").expected
    assert sum(d.stat.expected for d in days) == hours
    assert hours == (8784 if annual_mean([], tz, year, "1 d").expected == 366 else 8760)
    assert {d.stat.expected for d in days} <= {23, 24, 25}
