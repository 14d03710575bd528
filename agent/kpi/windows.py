"""Window mechanics the runners share: the output windows of a KPI (:class:`Windows`), base
windows over readings (:class:`BaseFront`, docs/kpis.md §3.4) and the last k bases a sliding
operator looks back on (:class:`RecentBases`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeAlias

from agent.kpi.accumulators import Accumulator
from agent.kpi.context import ItemScope, KpiContext, State
from agent.kpi.operators import energy, expected_items, is_valid, level_of_energy
from agent.units import KpiDuration

# What a base window's value is: the mean, the sum or the energetic mean of its readings.
BaseKind: TypeAlias = Literal["mean", "sum", "energy"]


class Windows:
    """The output windows of one KPI, one open at a time, each with an accumulator."""

    def __init__(
        self, kpi: KpiContext, scope: ItemScope, factory: Callable[[], Accumulator]
    ) -> None:
        self.kpi = kpi
        self.scope = scope
        self.factory = factory
        self.start = 0
        self.end = 0
        self.acc = factory()

    def begin(self, origin: int) -> None:
        self.start, self.end = self.kpi.calendar.window_at(self.kpi.window, origin)

    def close(self) -> None:
        output = self.acc.result(self.kpi, self.scope, self.start, self.end)
        self.kpi.emit(output, self.start, self.end)
        self.start, self.end = self.end, self.kpi.calendar.next_window(self.kpi.window, self.end)[1]
        self.acc = self.factory()

    # Items (base windows, kpi: outputs) belong to the window holding their end: start < end ≤ end.
    def item(self, start: int, end: int, x: float | None) -> None:
        while end > self.end:
            self.close()
        if x is not None:
            self.acc.add(start, x)
        if end == self.end:
            self.close()

    def finish(self, last: int) -> None:
        while self.start <= last:
            self.close()

    def skip(self, frm: int, to: int) -> None:
        """A time jump from ``frm`` to ``to``: close the window holding ``frm`` and open the
        one holding ``to``, unless one window spans both (then it stays open)."""
        if self.end <= to:
            self.finish(frm)
            self.begin(to)

    def state(self) -> State:
        return {"start": self.start, "end": self.end, "acc": self.acc.state()}

    def load(self, state: State) -> None:
        self.start, self.end = int(state["start"]), int(state["end"])
        self.acc = self.factory()
        self.acc.load(state["acc"])


class ItemSink(Protocol):
    def item(self, start: int, end: int, x: float | None) -> None: ...


class BaseFront:
    """Base windows over readings (§3.4): each closes into one item, its value or missing."""

    def __init__(
        self, kpi: KpiContext, base: KpiDuration, kind: BaseKind, sink: ItemSink
    ) -> None:
        self.kpi = kpi
        self.base = base
        self.kind = kind
        self.sink = sink
        self.min_coverage = kpi.config.base_min_coverage
        self.start = 0
        self.end = 0
        self.n = 0
        self.total = 0.0

    def begin(self, origin: int) -> None:
        self.start, self.end = self.kpi.calendar.window_at(self.base, origin)

    def reading(self, t: int, x: float | None) -> None:
        while t >= self.end:
            self.close()
        if x is None:
            return
        if self.kind == "energy":
            e = energy(x)
            if e != math.inf:  # beyond any real level: invalid
                self.n += 1
                self.total += e
        else:
            self.n += 1
            self.total += x

    def close(self) -> None:
        expected = expected_items(self.end - self.start, self.kpi.interval_ms)
        value: float | None = None
        if is_valid(self.n, expected, self.min_coverage):
            if self.kind == "sum":
                value = self.total
            elif self.kind == "energy":
                value = level_of_energy(self.total, self.n)
            else:
                value = self.total / self.n
        start, end = self.start, self.end
        self.start, self.end = end, self.kpi.calendar.next_window(self.base, end)[1]
        self.n, self.total = 0, 0.0
        self.sink.item(start, end, value)

    def advance(self, watermark: int) -> None:
        while self.end <= watermark:
            self.close()

    def finish(self, last: int) -> None:
        while self.start <= last:
            self.close()

    def skip(self, frm: int, to: int) -> bool:
        """A time jump: close the base window holding ``frm``, reopen at ``to``. The base
        windows in between are missing items, which no window operator counts. Returns
        whether the front moved."""
        if self.end > to:
            return False
        self.finish(frm)
        self.begin(to)
        return True

    def state(self) -> State:
        return {"start": self.start, "end": self.end, "n": self.n, "total": self.total}

    def load(self, state: State) -> None:
        self.start, self.end = int(state["start"]), int(state["end"])
        self.n, self.total = int(state["n"]), float(state["total"])


class RecentBases:
    """The last ``k`` base windows (start, end, value or None), padded before the span."""

    def __init__(self, kpi: KpiContext, k: int) -> None:
        self.kpi = kpi
        self.k = k
        self.items: list[tuple[int, int, float | None]] = []

    def begin(self, first_start: int) -> None:
        assert self.kpi.base is not None
        calendar, base = self.kpi.calendar, self.kpi.base
        padding: list[tuple[int, int, float | None]] = []
        end = first_start
        for _ in range(self.k - 1):
            start, _ = calendar.window_at(base, end - 1)
            padding.append((start, end, None))
            end = start
        self.items = padding[::-1]

    def rebase(self, first_start: int) -> None:
        """Continue at ``first_start`` after a time jump: the k − 1 bases before it, each with
        its value if it was seen before the jump, else missing."""
        seen = {(start, end): value for start, end, value in self.items}
        self.begin(first_start)
        self.items = [(start, end, seen.get((start, end))) for start, end, _ in self.items]

    def push(self, start: int, end: int, value: float | None) -> None:
        self.items.append((start, end, value))
        if len(self.items) > self.k:
            del self.items[0]

    def state(self) -> list[Any]:
        return [list(item) for item in self.items]

    def load(self, state: list[Any]) -> None:
        self.items = [(int(s), int(e), None if v is None else float(v)) for s, e, v in state]

