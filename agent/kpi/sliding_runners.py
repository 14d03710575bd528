"""Runners that look back over the last bases (docs/kpis.md §4): ``running_mean``, NowCast
``aqi_us_pm25`` and ``daily_max_running_mean``."""

from __future__ import annotations

from agent.kpi.context import KpiContext, State
from agent.kpi.operators import aqi_category, aqi_us_pm25, is_valid, nowcast
from agent.kpi.output import Extra
from agent.kpi.runner import Runner, scaled
from agent.kpi.windows import BaseFront, RecentBases


class SlidingRunner(Runner):
    """``running_mean`` and NowCast ``aqi_us_pm25``: one output per base window."""

    def __init__(self, kpi: KpiContext) -> None:
        super().__init__(kpi)
        assert kpi.base is not None  # config: sliding operators need a base
        self.is_nowcast = kpi.config.operator == "aqi_us_pm25"
        k = 12 if self.is_nowcast else kpi.window.seconds // kpi.base.seconds
        self.recent = RecentBases(kpi, k)
        self.front = BaseFront(kpi, kpi.base, "mean", self)

    def begin(self, origin: int) -> None:
        self.front.begin(origin)
        self.recent.begin(self.front.start)

    def reading(self, t: int, value: float | None) -> None:
        self.front.reading(t, scaled(value, self.kpi.scale))

    def item(self, start: int, end: int, x: float | None) -> None:
        """A closed base window from the front."""
        self.recent.push(start, end, x)
        kpi, items = self.kpi, self.recent.items
        present = [value for _, _, value in items if value is not None]
        span_start = items[0][0]
        if self.is_nowcast:
            hours = [value for _, _, value in reversed(items)]
            result = nowcast(hours)
            extras: dict[str, Extra] = {"concentration": None, "category": None, "weight": None}
            aqi: int | None = None
            if result is not None:
                aqi, concentration = aqi_us_pm25(result[0])
                extras = {
                    "concentration": concentration,
                    "category": aqi_category(aqi),
                    "weight": result[1],
                }
            output = kpi.output(
                span_start,
                end,
                aqi,
                valid=result is not None,
                n=len(present),
                expected=self.recent.k,
                extras=extras,
            )
        else:
            total = 0.0
            for value in present:
                total += value
            valid = is_valid(len(present), self.recent.k, kpi.min_coverage)
            mean = total / len(present) if present else None
            output = kpi.output(
                span_start, end, mean, valid=valid, n=len(present), expected=self.recent.k
            )
        kpi.emit(output, start, end)

    def finish(self, last: int) -> None:
        self.front.finish(last)

    def advance(self, watermark: int) -> None:
        self.front.advance(watermark)

    def jump(self, frm: int, to: int) -> None:
        if self.front.skip(frm, to):
            self.recent.rebase(self.front.start)  # the bases of the jump are missing

    def state(self) -> State:
        return {"front": self.front.state(), "recent": self.recent.state()}

    def load(self, state: State) -> None:
        self.front.load(state["front"])
        self.recent.load(state["recent"])


class DailyMaxRunner(Runner):
    """``daily_max_running_mean``: the day's maximum running mean, per base that starts in it."""

    def __init__(self, kpi: KpiContext) -> None:
        super().__init__(kpi)
        assert kpi.base is not None
        running = kpi.config.running_window_duration
        assert running is not None  # config: required
        self.base = kpi.base
        self.recent = RecentBases(kpi, running.seconds // kpi.base.seconds)
        self.front = BaseFront(kpi, kpi.base, "mean", self)
        self.day = [0, 0]
        self._reset_day()

    def _reset_day(self) -> None:
        self.n = 0
        self.best = 0.0
        self.span = [0, 0]

    def begin(self, origin: int) -> None:
        self.front.begin(origin)
        self.recent.begin(self.front.start)
        self.day = list(self.kpi.calendar.window_at(self.kpi.window, origin))

    def reading(self, t: int, value: float | None) -> None:
        self.front.reading(t, scaled(value, self.kpi.scale))

    def item(self, start: int, end: int, x: float | None) -> None:
        """A closed base window: the running mean ending with it is one item of its day."""
        kpi = self.kpi
        self.recent.push(start, end, x)
        items = self.recent.items
        present = [value for _, _, value in items if value is not None]
        while end > self.day[1]:
            self.close_day()
        if is_valid(len(present), self.recent.k, kpi.config.running_min_coverage):
            total = 0.0
            for value in present:
                total += value
            mean = total / len(present)
            if self.n == 0 or mean > self.best:
                self.best, self.span = mean, [items[0][0], end]
            self.n += 1
        if end == self.day[1]:
            self.close_day()

    def close_day(self) -> None:
        extras: dict[str, Extra] = {"max_start": self.span[0], "max_end": self.span[1]}
        self.day = self.emit_over_bases(self.base, self.day, self.best, self.n, extras)
        self._reset_day()

    def finish(self, last: int) -> None:
        self.front.finish(last)
        # The bases after the last reading are missing, yet a running mean ending with one of
        # them may still hold enough valid bases (6 of 8): they are items of the day too.
        day_end = self.kpi.calendar.window_at(self.kpi.window, last)[1]
        while self.front.end <= day_end and self.day[0] <= last:
            self.front.close()
        while self.day[0] <= last:
            self.close_day()

    def advance(self, watermark: int) -> None:
        self.front.advance(watermark)

    def jump(self, frm: int, to: int) -> None:
        if self.day[1] <= to:
            self.finish(frm)
            self.front.begin(to)
            self.recent.rebase(self.front.start)
            self.day = list(self.kpi.calendar.window_at(self.kpi.window, to))
        else:  # one day holds the jump: at most a day of bases to close
            self.front.advance(to)

    def state(self) -> State:
        return {
            "front": self.front.state(),
            "recent": self.recent.state(),
            "day": [*self.day, self.n, self.best, *self.span],
        }

    def load(self, state: State) -> None:
        self.front.load(state["front"])
        self.recent.load(state["recent"])
        start, end, n, best, span_start, span_end = state["day"]
        self.day = [int(start), int(end)]
        self.n, self.best, self.span = int(n), float(best), [int(span_start), int(span_end)]

