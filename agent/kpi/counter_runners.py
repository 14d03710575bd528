"""Runners over a cumulative counter (docs/kpis.md §4): ``counter_delta`` and ``demand``."""

from __future__ import annotations

from typing import Any

from agent.kpi.context import KpiContext, State
from agent.kpi.operators import counter_step, expected_items, is_valid
from agent.kpi.output import Extra
from agent.kpi.runner import Runner, scaled

_MS_PER_HOUR = 3_600_000


class Counter:
    """Consecutive valid readings of a cumulative counter → accepted deltas (§4)."""

    def __init__(self, kpi: KpiContext) -> None:
        self.interval_ms = kpi.interval_ms
        self.modulus = kpi.config.modulus
        self.max_delta = kpi.config.max_delta
        self.last_t: int | None = None
        self.last: float | None = None

    def step(self, t: int, x: float) -> tuple[float | None, bool, bool]:
        """(accepted delta or None, rollover, reset) of a valid reading; it becomes the baseline."""
        gap = 0 if self.last_t is None else t - self.last_t
        step = counter_step(
            self.last,
            gap,
            x,
            interval_ms=self.interval_ms,
            modulus=self.modulus,
            max_delta=self.max_delta,
        )
        self.last_t, self.last = t, x
        return step.delta, step.rollover, step.reset

    def state(self) -> list[Any]:
        return [self.last_t, self.last]

    def load(self, state: list[Any]) -> None:
        self.last_t = None if state[0] is None else int(state[0])
        self.last = None if state[1] is None else float(state[1])


class CounterFedRunner(Runner):
    """A runner whose items are the deltas of a cumulative counter."""

    def __init__(self, kpi: KpiContext) -> None:
        super().__init__(kpi)
        self.counter = Counter(kpi)
        self._reset_window()

    def _reset_window(self) -> None:
        raise NotImplementedError

    def counter_step(self, t: int, value: float | None) -> tuple[float | None, bool, bool] | None:
        """The counter's step at a reading (see :meth:`Counter.step`); None for an invalid
        reading, which leaves the baseline as it was."""
        x = scaled(value, self.kpi.scale)
        return None if x is None else self.counter.step(t, x)


class CounterRunner(CounterFedRunner):
    """``counter_delta``: deltas go to the window with ``start < t ≤ end`` (§3.2)."""

    def __init__(self, kpi: KpiContext) -> None:
        super().__init__(kpi)
        self.start = 0
        self.end = 0

    def _reset_window(self) -> None:
        self.n = 0
        self.total = 0.0
        self.rollovers = 0
        self.resets = 0

    def begin(self, origin: int) -> None:
        self.start, self.end = self.kpi.calendar.window_at(self.kpi.window, origin)

    def close(self) -> None:
        kpi = self.kpi
        expected = expected_items(self.end - self.start, kpi.interval_ms)
        output = kpi.output(
            self.start,
            self.end,
            self.total,
            valid=is_valid(self.n, expected, kpi.min_coverage),
            n=self.n,
            expected=expected,
            extras={"rollovers": self.rollovers, "resets": self.resets},
            always=("rollovers", "resets"),
        )
        kpi.emit(output, self.start, self.end)
        self.start, self.end = self.end, kpi.calendar.next_window(kpi.window, self.end)[1]
        self._reset_window()

    def reading(self, t: int, value: float | None) -> None:
        while t > self.end:
            self.close()
        step = self.counter_step(t, value)
        if step is None:
            return
        delta, rollover, reset = step
        if delta is not None:
            self.n += 1
            self.total += delta
            self.rollovers += rollover
        self.resets += reset

    def advance(self, watermark: int) -> None:
        while self.end < watermark:
            self.close()

    def jump(self, frm: int, to: int) -> None:
        # (start, end] windows: the one holding frm has start < frm ≤ end. The counter keeps
        # its baseline: the first delta after the jump is real consumption, checked against
        # max_delta like any other.
        while self.end < frm:
            self.close()
        if self.end >= to:
            return
        self.close()
        self.start, self.end = self.kpi.calendar.window_at(self.kpi.window, to - 1)
        self._reset_window()

    def finish(self, last: int) -> None:
        while self.start <= last:
            self.close()

    def state(self) -> State:
        return {
            "counter": self.counter.state(),
            "window": [self.start, self.end, self.n, self.total, self.rollovers, self.resets],
        }

    def load(self, state: State) -> None:
        self.counter.load(state["counter"])
        start, end, n, total, rollovers, resets = state["window"]
        self.start, self.end, self.n, self.total = int(start), int(end), int(n), float(total)
        self.rollovers, self.resets = int(rollovers), int(resets)


class DemandRunner(CounterFedRunner):
    """``demand``: counter deltas summed per demand block (``base``); peak block power."""

    def __init__(self, kpi: KpiContext) -> None:
        super().__init__(kpi)
        assert kpi.base is not None  # config: demand needs a base
        self.base = kpi.base
        self.block = [0, 0, 0, 0.0]  # start, end, accepted deltas, energy
        self.window = [0, 0]

    def _reset_window(self) -> None:
        self.n = 0
        self.peak = 0.0
        self.peak_start = 0
        self.energy = 0.0
        self.hours = 0.0

    def begin(self, origin: int) -> None:
        calendar = self.kpi.calendar
        self.block = [*calendar.window_at(self.base, origin), 0, 0.0]
        self.window = list(calendar.window_at(self.kpi.window, origin))

    def reading(self, t: int, value: float | None) -> None:
        while t > self.block[1]:
            self.close_block()
        step = self.counter_step(t, value)
        delta = None if step is None else step[0]
        if delta is not None:
            self.block[2] += 1
            self.block[3] += delta

    def close_block(self) -> None:
        kpi = self.kpi
        start, end, n, total = (
            int(self.block[0]),
            int(self.block[1]),
            int(self.block[2]),
            self.block[3],
        )
        expected = expected_items(end - start, kpi.interval_ms)
        self.block = [end, kpi.calendar.next_window(self.base, end)[1], 0, 0.0]
        while end > self.window[1]:
            self.close_window()
        if is_valid(n, expected, kpi.config.base_min_coverage):
            hours = (end - start) / _MS_PER_HOUR
            power = total / hours
            if self.n == 0 or power > self.peak:
                self.peak, self.peak_start = power, start
            self.n += 1
            self.energy += total
            self.hours += hours
        if end == self.window[1]:
            self.close_window()

    def close_window(self) -> None:
        mean_power = self.energy / self.hours if self.hours > 0 else None
        load_factor = None
        if mean_power is not None and self.peak > 0:
            load_factor = mean_power / self.peak
        extras: dict[str, Extra] = {
            "peak_start": self.peak_start,
            "mean_power": mean_power,
            "load_factor": load_factor,
        }
        self.window = self.emit_over_bases(self.base, self.window, self.peak, self.n, extras)
        self._reset_window()

    def advance(self, watermark: int) -> None:
        while self.block[1] < watermark:
            self.close_block()

    def jump(self, frm: int, to: int) -> None:
        while self.block[1] < frm:
            self.close_block()
        if self.block[1] >= to:
            return
        self.close_block()  # the block holding frm
        calendar = self.kpi.calendar
        if self.window[1] < to:
            if self.window[0] < frm:
                self.close_window()  # the window holding frm; a later one is inside the jump
            self.window = list(calendar.window_at(self.kpi.window, to - 1))
            self._reset_window()
        self.block = [*calendar.window_at(self.base, to - 1), 0, 0.0]

    def finish(self, last: int) -> None:
        while self.block[0] <= last:
            self.close_block()
        while self.window[0] <= last:
            self.close_window()

    def state(self) -> State:
        return {
            "counter": self.counter.state(),
            "block": list(self.block),
            "window": [*self.window, self.n, self.peak, self.peak_start, self.energy, self.hours],
        }

    def load(self, state: State) -> None:
        self.counter.load(state["counter"])
        start, end, n, total = state["block"]
        self.block = [int(start), int(end), int(n), float(total)]
        w_start, w_end, n_w, peak, peak_start, total_energy, hours = state["window"]
        self.window = [int(w_start), int(w_end)]
        self.n, self.peak, self.peak_start = int(n_w), float(peak), int(peak_start)
        self.energy, self.hours = float(total_energy), float(hours)

