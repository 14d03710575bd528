"""The interface of one KPI's pipeline (:class:`Runner`), which the engine drives."""

from __future__ import annotations

import math

from agent.kpi.context import KpiContext, State
from agent.kpi.operators import is_valid
from agent.kpi.output import Extra
from agent.units import KpiDuration


class Runner:
    """One KPI's pipeline. Device KPIs take ``reading``; ``kpi:`` KPIs take ``item``."""

    def __init__(self, kpi: KpiContext) -> None:
        self.kpi = kpi

    def begin(self, origin: int) -> None:
        raise NotImplementedError

    def reading(self, t: int, value: float | None) -> None:
        raise NotImplementedError(f"KPI {self.kpi.name} takes no readings")

    def item(self, start: int, end: int, value: float | None) -> None:
        raise NotImplementedError(f"KPI {self.kpi.name} takes no kpi: items")

    def advance(self, watermark: int) -> None:
        """Close the windows that ``watermark`` (``now − lateness``) has completed."""

    def jump(self, frm: int, to: int) -> None:
        """Time jumped forward from ``frm`` (every reading up to it was fed) to ``to``: close
        the windows holding ``frm`` as at the end of input, skip the windows that lie wholly
        inside the jump without materialising them, and open the windows holding ``to``. A
        window that holds both stays open. Bounded work, whatever the size of the jump."""
        raise NotImplementedError

    def finish(self, last: int) -> None:
        raise NotImplementedError

    def state(self) -> State:
        raise NotImplementedError

    def load(self, state: State) -> None:
        raise NotImplementedError

    def emit_over_bases(
        self,
        base: KpiDuration,
        window: list[int],
        value: float,
        n: int,
        extras: dict[str, Extra],
    ) -> list[int]:
        """Emit the output window ``[start, end)`` whose items are its ``base`` windows, ``n``
        of them valid; returns the next window."""
        kpi = self.kpi
        start, end = window
        expected = kpi.calendar.count(base, start, end)
        output = kpi.output(
            start,
            end,
            value,
            valid=is_valid(n, expected, kpi.min_coverage),
            n=n,
            expected=expected,
            extras=extras,
        )
        kpi.emit(output, start, end)
        return [end, kpi.calendar.next_window(kpi.window, end)[1]]


def scaled(value: float | None, scale: float) -> float | None:
    """The value times ``scale``; None (invalid) if that leaves the float range."""
    if value is None:
        return None
    x = value * scale
    return x if math.isfinite(x) else None

