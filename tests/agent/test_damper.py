"""The log damper: which down/up changes are logged, and that any day stays within the bound."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.damper import (
    FLAP_LIMIT,
    FLAP_PERIOD_SECONDS,
    Damper,
    Notice,
    Repeats,
    Tally,
    max_lines,
)

DAY = 86_400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(steps: list[tuple[float, bool | None]], **options: float) -> list[tuple[float, str]]:
    """Feed ``(time, up)`` changes (``None``: a tick only); the notices as (time, kind)."""
    clock = Clock()
    damper = Damper(clock, **options)  # type: ignore[arg-type]
    seen: list[tuple[float, str]] = []
    for t, up in steps:
        clock.now = t
        notices = damper.tick() if up is None else damper.change(up)
        seen.extend((t, n.kind) for n in notices)
    return seen


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # a single outage: logged down, logged up
        ([(0, False), (30, True)], [(0, "change"), (30, "change")]),
        # four changes in a period are logged, the fifth starts flapping
        ([(0, False), (10, True), (20, False), (30, True), (40, False), (50, True)],
         [(0, "change"), (10, "change"), (20, "change"), (30, "change"), (40, "flapping")]),
        # changes spread wider than the period are all logged
        ([(0, False), (300, True), (600, False), (900, True), (1200, False), (1500, True)],
         [(0, "change"), (300, "change"), (600, "change"), (900, "change"), (1200, "change"),
          (1500, "change")]),
        # flapping: a summary a period after it started, then quiet ends it
        ([(0, False), (1, True), (2, False), (3, True), (4, False), (5, True), (800, False),
          (904, None), (905, True), (1700, None), (1805, None)],
         [(0, "change"), (1, "change"), (2, "change"), (3, "change"), (4, "flapping"),
          (904, "summary"), (1805, "ended")]),
        # the end of flapping is noticed at the next change too (no tick in between)
        ([(0, False), (1, True), (2, False), (3, True), (4, False), (2000, True)],
         [(0, "change"), (1, "change"), (2, "change"), (3, "change"), (4, "flapping"),
          (2000, "ended"), (2000, "change")]),
    ],
)
def test_what_is_logged(steps: list[tuple[float, bool | None]],
                        expected: list[tuple[float, str]]) -> None:
    assert run(steps, period=900.0) == expected


def test_summary_counts_and_state() -> None:
    clock = Clock()
    damper = Damper(clock, limit=2, period=100.0)
    notices: list[Notice] = []
    for t, up in [(0, False), (1, True), (2, False), (3, True), (4, False), (50, True),
                  (60, False)]:
        clock.now = t
        notices += damper.change(up)
    assert [n.kind for n in notices] == ["change", "change", "flapping"]
    assert notices[-1].fields() == {"state": "down", "changes": 3, "period_seconds": 100}
    assert notices[-1].event("device") == "device_flapping"
    clock.now = 102.0
    summary = damper.tick()
    assert summary == [Notice("summary", False, downs=2, ups=2, seconds=100.0)]
    assert summary[0].event("uplink") == "uplink_flapping_summary"
    assert summary[0].fields() == {"state": "down", "downs": 2, "ups": 2,
                                   "flapping_seconds": 100}
    clock.now = 150.0
    assert damper.change(True) == []
    clock.now = 250.0  # quiet since 150: ended, not the summary due at 202
    ended = damper.tick()
    assert ended == [Notice("ended", True, downs=0, ups=1, seconds=148.0)]
    assert ended[0].event("device") == "device_flapping_ended"
    assert not damper.flapping


def test_a_steady_flap_logs_about_one_line_per_period() -> None:
    clock = Clock()
    damper = Damper(clock)
    lines: Counter[str] = Counter()
    up = True
    for step in range(int(DAY / 10)):  # down and up every 10 s for a day, ticked every 10 s
        clock.now = step * 10.0
        up = not up
        for notice in [*damper.change(up), *damper.tick()]:
            lines[notice.kind] += 1
    assert lines == {"change": FLAP_LIMIT, "flapping": 1,
                     "summary": int(DAY / FLAP_PERIOD_SECONDS) - 1}
    assert sum(lines.values()) <= max_lines(DAY)


def test_a_late_tick_gives_one_summary() -> None:
    steps: list[tuple[float, bool | None]] = [
        (0, False), (1, True), (2, False), (3, True), (4, False), (3000, None), (3001, None),
        (3604, None)]
    assert run(steps, period=900.0, quiet=5000.0) == [
        (0, "change"), (1, "change"), (2, "change"), (3, "change"), (4, "flapping"),
        (3000, "summary"), (3604, "summary")]


def test_the_bound_of_a_day() -> None:
    assert max_lines(DAY) == 4 * 97 + 2 * 97 + 97 == 679
    with pytest.raises(ValueError, match="limit"):
        Damper(Clock(), limit=0)


events = st.lists(
    st.tuples(st.floats(min_value=0.0, max_value=2 * FLAP_PERIOD_SECONDS),
              st.sampled_from([True, False, None])),
    max_size=400,
)


@settings(max_examples=200, deadline=None)
@given(gaps=events, period=st.sampled_from([60.0, 900.0]), limit=st.integers(1, 6),
       quiet=st.sampled_from([None, 30.0, 1800.0]))
def test_any_sequence_stays_within_the_bound(
    gaps: list[tuple[float, bool | None]], period: float, limit: int, quiet: float | None
) -> None:
    """Any changes and ticks over any stretch: never more lines than max_lines promises, in
    the whole run and in every window of it."""
    clock = Clock()
    damper = Damper(clock, limit=limit, period=period, quiet=quiet)
    start = clock.now
    times: list[float] = []
    for gap, up in gaps:
        clock.now += gap
        notices = damper.tick() if up is None else damper.change(up)
        times.extend(clock.now for _ in notices)
    duration = clock.now - start
    assert len(times) <= max_lines(duration, limit=limit, period=period, quiet=quiet)
    for i, t in enumerate(times):  # every stretch that starts at a line
        span = [u for u in times[i:] if u - t < period - 1e-6]
        assert len(span) <= max_lines(period, limit=limit, period=period, quiet=quiet)


@settings(max_examples=100, deadline=None)
@given(flips=st.lists(st.floats(min_value=0.5, max_value=60.0), min_size=1, max_size=300))
def test_individual_changes_never_exceed_the_limit_in_a_period(flips: list[float]) -> None:
    clock = Clock()
    damper = Damper(clock)
    logged: list[float] = []
    up = True
    for gap in flips:
        clock.now += gap
        up = not up
        if any(n.kind == "change" for n in damper.change(up)):
            logged.append(clock.now)
    for i, t in enumerate(logged):
        assert len([u for u in logged[i:] if u - t < FLAP_PERIOD_SECONDS - 1e-6]) <= FLAP_LIMIT


def test_repeats_log_the_first_then_a_tally_per_period() -> None:
    clock = Clock()
    repeats = Repeats(clock, period=900.0)
    seen: list[tuple[float, object]] = []
    for t in range(0, 2000, 60):  # a drop at every seal, once a minute
        clock.now = float(t)
        seen.append((t, repeats.occurred(batches=1, readings=6)))
    logged = [(t, r) for t, r in seen if r is not None]
    assert logged == [
        (0, "log"),
        (900, Tally(15, {"batches": 15, "readings": 90}, 900.0)),
        (1800, Tally(15, {"batches": 15, "readings": 90}, 900.0)),
    ]
    clock.now = 2600.0
    assert repeats.tick() is None  # 800 s since the last line
    clock.now = 2700.0
    assert repeats.tick() == Tally(3, {"batches": 3, "readings": 18}, 900.0)
    assert repeats.tick() is None
    clock.now = 3700.0
    assert repeats.occurred(batches=1) == "log"  # quiet for a period: on its own again


def test_repeats_flush_gives_what_was_added_up_before_it_is_due() -> None:
    clock = Clock()
    repeats = Repeats(clock, period=900.0)
    assert repeats.flush() is None  # nothing happened
    assert repeats.occurred(batches=1) == "log"
    assert repeats.flush() is None  # the one occurrence had its own line
    start = clock.now
    clock.now = start + 60.0
    assert repeats.occurred(batches=2) is None
    clock.now = start + 120.0
    assert repeats.occurred(batches=3) is None
    assert repeats.flush() == Tally(2, {"batches": 5}, 120.0)  # at shutdown, not due yet
    assert repeats.flush() is None and repeats.tick() is None  # said once


@settings(max_examples=100, deadline=None)
@given(gaps=st.lists(st.tuples(st.floats(min_value=0.0, max_value=1000.0), st.booleans()),
                     max_size=300))
def test_repeats_write_at_most_one_line_per_period(gaps: list[tuple[float, bool]]) -> None:
    clock = Clock()
    repeats = Repeats(clock, period=900.0)
    start, lines = clock.now, []
    occurred = logged = 0
    for gap, tick in gaps:
        clock.now += gap
        result = repeats.tick() if tick else repeats.occurred(n=1)
        occurred += 0 if tick else 1
        if result is not None:
            lines.append(clock.now)
            logged += 1 if result == "log" else result.totals["n"]
    assert all(b - a >= 900.0 for a, b in itertools.pairwise(lines))
    assert len(lines) <= math.floor((clock.now - start) / 900.0) + 1
    clock.now += 901.0  # a period on (and a hair: the sums of float gaps round)
    final = repeats.tick()
    logged += 0 if final is None else final.totals["n"]
    assert logged == occurred  # every occurrence is in a line or a tally, once
