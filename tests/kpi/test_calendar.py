"""Calendar windows (docs/kpis.md §3.1): local time, DST days of 23 and 25 hours, tiling."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import parse_kpi_duration
from agent.kpi.calendar import Calendar
from tests.kpi.support import ms

HOUR = parse_kpi_duration("1 h")
DAY = parse_kpi_duration("1 d")
MONTH = parse_kpi_duration("1 mo")
YEAR = parse_kpi_duration("1 y")
H = 3_600_000


def hour_starts(zone: str, date: str) -> list[str]:
    calendar = Calendar(ZoneInfo(zone))
    start, end = calendar.window_at(DAY, ms(f"{date}T12:00:00+00:00"))
    return [calendar.isoformat(s) for s, _ in calendar.windows(HOUR, start, end)]


@pytest.mark.parametrize(
    ("zone", "date", "day_start", "day_end", "hours", "around"),
    [
        # spring: 02:00 is skipped, no boundary there
        (
            "Europe/Berlin",
            "2025-03-30",
            "2025-03-30T00:00:00+01:00",
            "2025-03-31T00:00:00+02:00",
            23,
            ["2025-03-30T01:00:00+01:00", "2025-03-30T03:00:00+02:00"],
        ),
        # autumn: 02:00 shows twice, two boundaries
        (
            "Europe/Berlin",
            "2025-10-26",
            "2025-10-26T00:00:00+02:00",
            "2025-10-27T00:00:00+01:00",
            25,
            ["2025-10-26T02:00:00+02:00", "2025-10-26T02:00:00+01:00"],
        ),
        (
            "America/New_York",
            "2025-03-09",
            "2025-03-09T00:00:00-05:00",
            "2025-03-10T00:00:00-04:00",
            23,
            ["2025-03-09T01:00:00-05:00", "2025-03-09T03:00:00-04:00"],
        ),
        (
            "America/New_York",
            "2025-11-02",
            "2025-11-02T00:00:00-04:00",
            "2025-11-03T00:00:00-05:00",
            25,
            ["2025-11-02T01:00:00-04:00", "2025-11-02T01:00:00-05:00"],
        ),
        # a 30-minute change: 02:00 (+11) → 01:30 (+10:30); 01:00–02:00 lasts 90 real minutes
        (
            "Australia/Lord_Howe",
            "2025-04-06",
            "2025-04-06T00:00:00+11:00",
            "2025-04-07T00:00:00+10:30",
            24,
            ["2025-04-06T01:00:00+11:00", "2025-04-06T02:00:00+10:30"],
        ),
        # 02:00 (+10:30) → 02:30 (+11): 02:00 never shows, 01:00–03:00 lasts 90 real minutes
        (
            "Australia/Lord_Howe",
            "2025-10-05",
            "2025-10-05T00:00:00+10:30",
            "2025-10-06T00:00:00+11:00",
            23,
            ["2025-10-05T01:00:00+10:30", "2025-10-05T03:00:00+11:00"],
        ),
        (
            "UTC",
            "2025-03-30",
            "2025-03-30T00:00:00+00:00",
            "2025-03-31T00:00:00+00:00",
            24,
            ["2025-03-30T01:00:00+00:00", "2025-03-30T02:00:00+00:00"],
        ),
    ],
)
def test_dst_days(
    zone: str, date: str, day_start: str, day_end: str, hours: int, around: list[str]
) -> None:
    calendar = Calendar(ZoneInfo(zone))
    start, end = calendar.window_at(DAY, ms(f"{date}T12:00:00+00:00"))
    assert (calendar.isoformat(start), calendar.isoformat(end)) == (day_start, day_end)
    starts = hour_starts(zone, date)
    assert len(starts) == hours
    i = starts.index(around[0])
    assert starts[i + 1] == around[1]


def test_midnight_in_a_gap_starts_the_day_at_the_transition() -> None:
    # Sao Paulo 2018-11-04: 00:00 → 01:00; the local date begins at 01:00 (-02:00).
    calendar = Calendar(ZoneInfo("America/Sao_Paulo"))
    start, end = calendar.window_at(DAY, ms("2018-11-04T12:00:00-02:00"))
    assert calendar.isoformat(start) == "2018-11-04T01:00:00-02:00"
    assert (end - start) == 23 * H
    assert calendar.isoformat(calendar.window_at(HOUR, start)[0]) == "2018-11-04T01:00:00-02:00"


@pytest.mark.parametrize(
    ("text", "t", "start", "end"),
    [
        (
            "15 min",
            "2025-10-26T02:20:00+01:00",
            "2025-10-26T02:15:00+01:00",
            "2025-10-26T02:30:00+01:00",
        ),
        (
            "8 h",
            "2025-03-30T05:00:00+02:00",
            "2025-03-30T00:00:00+01:00",
            "2025-03-30T08:00:00+02:00",
        ),
        (
            "1 mo",
            "2025-02-10T00:00:00+01:00",
            "2025-02-01T00:00:00+01:00",
            "2025-03-01T00:00:00+01:00",
        ),
        (
            "1 mo",
            "2025-03-31T23:59:59+02:00",
            "2025-03-01T00:00:00+01:00",
            "2025-04-01T00:00:00+02:00",
        ),
        (
            "1 y",
            "2025-12-31T23:30:00+01:00",
            "2025-01-01T00:00:00+01:00",
            "2026-01-01T00:00:00+01:00",
        ),
        # half-open: an instant on a boundary belongs to the window it starts
        (
            "1 h",
            "2025-01-15T09:00:00+01:00",
            "2025-01-15T09:00:00+01:00",
            "2025-01-15T10:00:00+01:00",
        ),
        (
            "1 d",
            "2025-01-15T00:00:00+01:00",
            "2025-01-15T00:00:00+01:00",
            "2025-01-16T00:00:00+01:00",
        ),
    ],
)
def test_window_at_in_berlin(text: str, t: str, start: str, end: str) -> None:
    calendar = Calendar(ZoneInfo("Europe/Berlin"))
    assert calendar.window_at(parse_kpi_duration(text), ms(t)) == (ms(start), ms(end))


@pytest.mark.parametrize(
    ("zone", "year", "hours", "days"),
    [
        ("Europe/Berlin", 2025, 8760, 365),
        ("Europe/Berlin", 2024, 8784, 366),
        ("America/New_York", 2025, 8760, 365),
        # spring loses 02:00 (23 windows); autumn keeps 24, one of them 90 minutes long
        ("Australia/Lord_Howe", 2025, 8759, 365),
        ("Asia/Kolkata", 2025, 8760, 365),
    ],
)
def test_a_year_has_its_hours_and_days(zone: str, year: int, hours: int, days: int) -> None:
    calendar = Calendar(ZoneInfo(zone))
    start, end = calendar.window_at(YEAR, ms(f"{year}-07-01T00:00:00+00:00"))
    assert calendar.count(DAY, start, end) == days
    assert calendar.count(MONTH, start, end) == 12
    assert calendar.count(HOUR, start, end) == hours


TILING_ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Asia/Kathmandu",
    "UTC",
]
TILING_LENGTHS = ["15 min", "1 h", "3 h", "8 h", "1 d", "1 mo"]


@pytest.mark.parametrize("zone", TILING_ZONES)
@pytest.mark.parametrize("text", TILING_LENGTHS)
def test_windows_tile_a_whole_year(zone: str, text: str) -> None:
    """Consecutive windows meet exactly; each starts on a wall-clock multiple or a day start."""
    tz = ZoneInfo(zone)
    calendar = Calendar(tz)
    duration = parse_kpi_duration(text)
    year_start, year_end = calendar.window_at(YEAR, ms("2025-06-01T00:00:00+00:00"))
    day_starts = {s for s, _ in calendar.windows(DAY, year_start, year_end)}
    previous_end = year_start
    for start, end in calendar.windows(duration, year_start, year_end):
        assert start == previous_end
        assert end > start
        assert calendar.window_at(duration, start) == (start, end)
        assert calendar.window_at(duration, end - 1) == (start, end)
        if not duration.is_calendar:
            wall = datetime.fromtimestamp(start / 1000, tz)
            seconds = wall.hour * 3600 + wall.minute * 60 + wall.second
            assert seconds % duration.seconds == 0 or start in day_starts
        previous_end = end
    assert previous_end == year_end


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(TILING_ZONES),
    text=st.sampled_from([*TILING_LENGTHS, "1 y", "5 min", "30 min", "2 h"]),
    t=st.integers(min_value=ms("2020-01-01T00:00:00Z"), max_value=ms("2030-01-01T00:00:00Z")),
)
def test_window_at_holds_the_instant(zone: str, text: str, t: int) -> None:
    calendar = Calendar(ZoneInfo(zone))
    duration = parse_kpi_duration(text)
    start, end = calendar.window_at(duration, t)
    assert start <= t < end
    assert calendar.window_at(duration, end)[0] == end
    assert calendar.window_at(duration, start - 1)[1] == start


@pytest.mark.parametrize(
    ("date", "low", "high", "seconds"),
    [
        ("2025-01-15", 7 * 3600, 19 * 3600, 12 * 3600),
        ("2025-03-30", 0, 7 * 3600, 6 * 3600),  # 02:00–03:00 does not exist
        ("2025-10-26", 0, 7 * 3600, 8 * 3600),  # 02:00–03:00 happens twice
        ("2025-10-26", 23 * 3600, 24 * 3600, 3600),
    ],
)
def test_clock_span_counts_real_seconds(date: str, low: int, high: int, seconds: int) -> None:
    calendar = Calendar(ZoneInfo("Europe/Berlin"))
    start, end = calendar.window_at(DAY, ms(f"{date}T12:00:00+00:00"))
    assert calendar.clock_span_seconds(start, end, low, high) == seconds


def test_isoformat_prints_the_zone_offset_and_milliseconds() -> None:
    calendar = Calendar(ZoneInfo("Europe/Berlin"))
    assert calendar.isoformat(ms("2025-10-26T01:00:00Z")) == "2025-10-26T02:00:00+01:00"
    assert calendar.isoformat(ms("2025-10-26T00:00:00Z")) == "2025-10-26T02:00:00+02:00"
    assert calendar.isoformat(ms("2025-01-15T07:00:00.250Z")) == "2025-01-15T08:00:00.250000+01:00"
