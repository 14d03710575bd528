"""The live engine under clock steps (injected times): a jump forward skips the windows wholly
inside it in bounded work and is reported once; a step back holds the windows; no window
that ended before the first reading is emitted; the end-of-input rule of
``daily_max_running_mean``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.kpi.engine import Engine, KpiOutput
from tests.kpi.support import hourly, make_config, ms, rows_of, run_replay
from tests.kpi.test_engine import BERLIN, PROPERTY_KPIS, agent_config

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
STEP = 15 * MIN  # the jump threshold of these engines
T0 = ms("2025-01-15T10:00:00+01:00")

TWO_MINUTE_KPIS: list[dict[str, Any]] = [
    {"name": "x_1m", "source": "a.x", "operator": "mean", "window": "1 min",
     "sample_interval": "5 s"},
    {"name": "y_1m", "source": "a.y", "operator": "max", "window": "1 min",
     "sample_interval": "5 s"},
]

# Every runner kind: plain, base front, kpi: source, counter, demand, time-weighted, sliding,
# daily max, NowCast, lden, night flow.
ALL_KINDS: list[dict[str, Any]] = [
    *PROPERTY_KPIS,
    {"name": "o3", "source": "a.x", "operator": "daily_max_running_mean", "window": "1 d",
     "base": "1 h", "running_window": "8 h", "sample_interval": "1 min"},
    {"name": "aqi", "source": "a.x", "operator": "aqi_us_pm25", "window": "12 h",
     "base": "1 h", "sample_interval": "1 min"},
    {"name": "night", "source": "a.x", "operator": "min_night_flow", "window": "1 d",
     "base": "1 h", "sample_interval": "1 min"},
    {"name": "year", "source": "kpi:m15", "operator": "mean", "window": "1 y"},
]


def feed_minutes(engine: Engine, start: int, minutes: int, points: tuple[str, ...] = ("x",),
                 ) -> list[KpiOutput]:
    """Readings every 5 s for ``minutes`` from ``start``, advancing every second like the
    agent's flushes."""
    outputs: list[KpiOutput] = []
    for i in range(minutes * 12):
        t = start + i * 5000
        for point in points:
            value = 1000.0 + i if point == "c" else float(i % 50)
            outputs += engine.feed_value("a", point, t, value)
        outputs += engine.advance(t + 1000)
    return outputs


def wholly_inside(output: KpiOutput, frm: int, to: int) -> bool:
    return output.start > frm and output.end <= to


def test_jump_forward_400_days_is_one_jump_and_bounded() -> None:
    engine = Engine.from_config(agent_config(BERLIN, TWO_MINUTE_KPIS), max_step_ms=STEP)
    before = feed_minutes(engine, T0, 5, ("x", "y"))
    assert [o.start for o in before if o.kpi == "x_1m"] == [T0 + i * MIN for i in range(4)]
    frm = engine.now
    assert frm is not None
    to = frm + 400 * DAY
    closed = engine.advance(to)
    # only the windows open at the jump close: one per KPI
    assert sorted((o.kpi, o.start, o.n) for o in closed) == [
        ("x_1m", T0 + 4 * MIN, 12), ("y_1m", T0 + 4 * MIN, 12)]
    [jump] = engine.take_jumps()
    assert (jump.frm, jump.to, jump.size_ms, jump.closed) == (frm, to, 400 * DAY, 2)
    after = feed_minutes(engine, to, 3, ("x", "y"))
    # after the jump the windows are those of the new time, full ones
    starts = sorted({o.start for o in after})
    first = to - to % MIN
    assert starts == [first, first + MIN, first + 2 * MIN]
    assert all(o.n in (11, 12) for o in after if o.start != first)
    assert engine.take_jumps() == []
    assert len(engine.calendar._days) < 10  # no local day of the jump was visited


@pytest.mark.parametrize("by", ["advance", "reading"])
def test_jump_forward_every_operator_skips_the_span(by: str) -> None:
    engine = Engine.from_config(agent_config(BERLIN, ALL_KINDS), max_step_ms=STEP)
    feed_minutes(engine, T0, 90, ("x", "c"))
    frm = engine.now
    assert frm is not None
    to = frm + 400 * DAY + 7 * HOUR + 13 * MIN
    closed = engine.advance(to) if by == "advance" else engine.feed_value("a", "x", to, 1.0)
    assert len(closed) <= 2 * len(ALL_KINDS)
    assert not [o for o in closed if wholly_inside(o, frm, to)]
    assert [(j.frm, j.to) for j in engine.take_jumps()] == [(frm, to)]
    after = feed_minutes(engine, to + 5000, 24 * 60, ("x", "c"))
    assert all(o.end > to for o in after)
    assert {o.kpi for o in after} >= {"m15", "p90", "run", "lden", "m15_max", "energy",
                                       "demand", "o3", "aqi", "night", "twm"}
    # the energy delta that bridges the jump is real consumption, placed after the jump
    first_energy = min((o for o in after if o.kpi == "energy"), key=lambda o: o.end)
    assert first_energy.start <= to < first_energy.end


def skip_expected(outputs: list[KpiOutput], frm: int, to: int) -> list[dict[str, Any]]:
    # A counter window (start, end] holds a reading on its end: the one ending at `to` too.
    # A sliding output is one per base window (15 min here): it goes with its base window.
    def inside(o: KpiOutput) -> bool:
        if o.kpi in ("energy", "demand"):
            return o.start > frm and o.end < to
        if o.kpi == "run":
            return o.end - 15 * MIN > frm and o.end <= to
        return wholly_inside(o, frm, to)

    return [o.as_dict() for o in outputs if not inside(o)]


SIMPLE_KPIS = [k for k in PROPERTY_KPIS
               if k["name"] in ("m15", "p90", "m15_max", "energy", "demand", "lden", "run")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=st.integers(1, 100), gap=st.integers(STEP + 2000, 3 * DAY),
       after=st.integers(1, 100), lateness=st.sampled_from([0, 2 * MIN]))
def test_a_jump_only_leaves_out_the_windows_inside_it(
    before: int, gap: int, after: int, lateness: int
) -> None:
    # the same input through an engine without jump handling gives the same windows, plus
    # the empty ones wholly inside the jump (up to ``now − lateness`` after it: later
    # windows may still get readings)
    config = agent_config(BERLIN, SIMPLE_KPIS)
    skipping = Engine.from_config(config, lateness_ms=lateness, max_step_ms=STEP)
    walking = Engine.from_config(config, lateness_ms=lateness)
    got: list[KpiOutput] = []
    want: list[KpiOutput] = []
    times = [T0 + i * 40_000 for i in range(before)]
    times += [times[-1] + gap + i * 40_000 for i in range(after)]
    for i, t in enumerate(times):
        for point in ("x", "c"):
            got += skipping.feed_value("a", point, t, float(i))
            want += walking.feed_value("a", point, t, float(i))
        got += skipping.advance(t + 1000)
        want += walking.advance(t + 1000)
    got += skipping.finish()
    want += walking.finish()
    frm = times[before - 1] + 1000
    key = lambda o: (o.end, o.kpi)  # noqa: E731
    expected = skip_expected(sorted(want, key=key), frm, times[before] - lateness)
    assert [o.as_dict() for o in sorted(got, key=key)] == expected
    assert len(skipping.take_jumps()) == 1


def test_step_back_holds_the_windows_and_counts_late_readings() -> None:
    engine = Engine.from_config(agent_config(BERLIN, TWO_MINUTE_KPIS), max_step_ms=STEP)
    feed_minutes(engine, T0, 3, ("x",))
    now = engine.now
    assert now is not None
    back = now - HOUR
    assert engine.advance(back) == []
    assert engine.feed_value("a", "x", back + 5000, 1.0) == []
    assert engine.advance(back + 6000) == []
    [jump] = engine.take_jumps()
    assert (jump.frm, jump.to, jump.size_ms) == (now, back, -HOUR)
    assert engine.late_dropped["x_1m"] == 1
    # more readings while behind: counted, no second jump report
    for i in range(100):
        engine.feed_value("a", "x", back + 10_000 + i * 5000, 1.0)
    assert engine.late_dropped["x_1m"] == 101
    assert engine.take_jumps() == []
    assert engine.now == now
    # once the clock is back past the engine's time, the open window continues
    closed = engine.feed_value("a", "x", now + 60_000, 2.0)
    assert [(o.kpi, o.start, o.n) for o in closed] == [("x_1m", T0 + 2 * MIN, 12)]


def test_no_window_ends_before_the_first_reading() -> None:
    engine = Engine.from_config(agent_config(BERLIN, TWO_MINUTE_KPIS), max_step_ms=STEP)
    for second in range(150):  # flushes before the first poll answered
        assert engine.advance(T0 + second * 1000) == []
    outputs = feed_minutes(engine, T0 + 150_000, 2, ("x", "y"))
    assert min(o.start for o in outputs) == T0 + 2 * MIN
    first = min(outputs, key=lambda o: o.start)
    assert (first.n, first.expected) == (6, 12)


def test_without_a_threshold_every_window_is_closed() -> None:
    # kpi replay: every window of the span, empty ones included
    engine = Engine.from_config(agent_config(BERLIN, TWO_MINUTE_KPIS[:1]))
    engine.feed_value("a", "x", T0, 1.0)
    closed = engine.feed_value("a", "x", T0 + HOUR, 1.0)
    assert len(closed) == 60 and [o.n for o in closed[1:]] == [0] * 59
    assert engine.take_jumps() == []


DAILY_MAX: dict[str, Any] = {
    "name": "o3_max8h", "source": "aq.o3", "operator": "daily_max_running_mean",
    "window": "1 d", "base": "1 h", "running_window": "8 h", "sample_interval": "1 h",
}


@pytest.mark.parametrize(
    ("last_hour", "n", "valid", "value", "max_start", "max_end"),
    [
        # running means ending with the bases after 20:00 still hold 7 and 6 valid hours
        (20, 18, True, 17.5, "2025-01-15T15:00:00+01:00", "2025-01-15T23:00:00+01:00"),
        (23, 19, True, 19.5, "2025-01-15T16:00:00+01:00", "2025-01-16T00:00:00+01:00"),
        (21, 19, True, 18.5, "2025-01-15T16:00:00+01:00", "2025-01-16T00:00:00+01:00"),
        (10, 8, False, None, None, None),
        (5, 3, False, None, None, None),
    ],
)
def test_daily_max_running_mean_counts_the_means_after_the_last_reading(
    tmp_path: Path, last_hour: int, n: int, valid: bool, value: float | None,
    max_start: str | None, max_end: str | None,
) -> None:
    values = [f"{h}.0" for h in range(last_hour + 1)]
    times = hourly(BERLIN, "2025-01-15T00:00:00+01:00", values)
    rows = rows_of("aq", "o3", times, values)
    [day] = run_replay(make_config(tmp_path, BERLIN, [DAILY_MAX]), rows)
    got = (day["n"], day["valid"], day["value"], day["max_start"], day["max_end"])
    assert got == (n, valid, value, max_start, max_end)
    # live: the clock passing midnight closes the day the same way
    engine = Engine.from_config(agent_config(BERLIN, [DAILY_MAX]), max_step_ms=STEP)
    outputs: list[KpiOutput] = []
    for h in range(last_hour + 1):
        outputs += engine.feed_value("aq", "o3", T0 - 10 * HOUR + h * HOUR, float(h))
    for minute in range(0, (24 - last_hour) * 60 + 1, 5):
        outputs += engine.advance(T0 - 10 * HOUR + last_hour * HOUR + minute * MIN)
    [live] = outputs
    assert (live.n, live.valid, live.value) == (n, valid, value)
