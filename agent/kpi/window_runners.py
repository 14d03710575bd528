"""Runners over calendar windows: the accumulator operators (:class:`SimpleRunner`, with an
optional base) and ``time_weighted_mean`` (docs/kpis.md §4)."""

from __future__ import annotations

from collections.abc import Callable

from agent.kpi.accumulators import Accumulator
from agent.kpi.context import ItemScope, KpiContext, State
from agent.kpi.operators import expected_items
from agent.kpi.runner import Runner, scaled
from agent.kpi.windows import BaseFront, BaseKind, Windows
from agent.units import KpiDuration


class SimpleRunner(Runner):
    """Operators over the items of a window: readings, base values or ``kpi:`` outputs."""

    def __init__(
        self,
        kpi: KpiContext,
        source_step: KpiDuration | None,
        accumulator: Callable[[], Accumulator],
        base_kind: BaseKind,
    ) -> None:
        super().__init__(kpi)
        step = kpi.base if kpi.base is not None else source_step
        scope = ItemScope(kpi.calendar, kpi.interval_ms, step)
        self.windows = Windows(kpi, scope, accumulator)
        self.front: BaseFront | None = None
        if kpi.base is not None:
            self.front = BaseFront(kpi, kpi.base, base_kind, self.windows)

    def begin(self, origin: int) -> None:
        self.windows.begin(origin)
        if self.front is not None:
            self.front.begin(origin)

    def reading(self, t: int, value: float | None) -> None:
        x = scaled(value, self.kpi.scale)
        if self.front is not None:
            self.front.reading(t, x)
            return
        windows = self.windows
        while t >= windows.end:
            windows.close()
        if x is not None:
            windows.acc.add(t, x)

    def item(self, start: int, end: int, value: float | None) -> None:
        self.windows.item(start, end, scaled(value, self.kpi.scale))

    def advance(self, watermark: int) -> None:
        if self.kpi.config.source_kpi is not None:
            return  # driven by the source's outputs
        if self.front is not None:
            self.front.advance(watermark)
            return
        while self.windows.end <= watermark:
            self.windows.close()

    def jump(self, frm: int, to: int) -> None:
        if self.front is not None:
            self.front.skip(frm, to)
        self.windows.skip(frm, to)

    def finish(self, last: int) -> None:
        if self.front is not None:
            self.front.finish(last)
        self.windows.finish(last)

    def state(self) -> State:
        state = {"windows": self.windows.state()}
        if self.front is not None:
            state["front"] = self.front.state()
        return state

    def load(self, state: State) -> None:
        self.windows.load(state["windows"])
        if self.front is not None:
            self.front.load(state["front"])


class TimeWeightedRunner(Runner):
    """``time_weighted_mean``: each valid reading holds until the next one or ``max_hold``."""

    def __init__(self, kpi: KpiContext) -> None:
        super().__init__(kpi)
        hold = kpi.config.max_hold_seconds
        self.max_hold_ms = round((hold if hold is not None else 0.0) * 1000)
        self.start = 0
        self.end = 0
        self.held: tuple[int, float] | None = None  # the last valid reading, still holding
        self._reset_window()

    def _reset_window(self) -> None:
        self.n = 0
        self.weighted = 0.0
        self.covered_ms = 0

    def begin(self, origin: int) -> None:
        self.start, self.end = self.kpi.calendar.window_at(self.kpi.window, origin)

    def _hold_until(self, until: int) -> None:
        """Credit the held reading's value over ``[max(t, start), min(until, t + max_hold))``."""
        if self.held is None:
            return
        t, x = self.held
        overlap = min(until, t + self.max_hold_ms, self.end) - max(t, self.start)
        if overlap > 0:
            self.weighted += x * (overlap / 1000)
            self.covered_ms += overlap

    def close(self) -> None:
        kpi = self.kpi
        self._hold_until(self.end)  # the next reading comes at or after the end
        length = self.end - self.start
        cover = self.covered_ms / length
        valid = self.covered_ms > 0 and cover >= kpi.min_coverage
        value = self.weighted / (self.covered_ms / 1000) if self.covered_ms > 0 else None
        output = kpi.output(
            self.start,
            self.end,
            value,
            valid=valid,
            n=self.n,
            expected=expected_items(length, kpi.interval_ms),
            extras={"covered_seconds": self.covered_ms / 1000},
            always=("covered_seconds",),
            cover=cover,
        )
        kpi.emit(output, self.start, self.end)
        self.start, self.end = self.end, kpi.calendar.next_window(kpi.window, self.end)[1]
        self._reset_window()

    def reading(self, t: int, value: float | None) -> None:
        while t >= self.end:
            self.close()
        self._hold_until(t)
        x = scaled(value, self.kpi.scale)
        if x is None:
            self.held = None  # a bad reading ends the hold and holds nothing
            return
        self.held = (t, x)
        self.n += 1

    def advance(self, watermark: int) -> None:
        while self.end <= watermark:
            self.close()

    def jump(self, frm: int, to: int) -> None:
        self.advance(frm)
        # A hold is real time; the wall clock's jump is not: the hold ends at the jump.
        self._hold_until(frm)
        self.held = None
        if self.end <= to:
            self.close()
            self.begin(to)
            self._reset_window()

    def finish(self, last: int) -> None:
        while self.start <= last:
            self.close()

    def state(self) -> State:
        held = None if self.held is None else list(self.held)
        return {
            "window": [self.start, self.end, self.n, self.weighted, self.covered_ms],
            "held": held,
        }

    def load(self, state: State) -> None:
        start, end, n, weighted, covered = state["window"]
        self.start, self.end, self.n = int(start), int(end), int(n)
        self.weighted, self.covered_ms = float(weighted), int(covered)
        held = state["held"]
        self.held = None if held is None else (int(held[0]), float(held[1]))

