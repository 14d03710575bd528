"""The open batch: what the batcher accepted since the last seal, as one value.

Readings, events and closed KPI windows are kept once each, in arrival order; a mark per kind
says how many of them are committed (in the store's pending rows). What lies past the mark is
held: the next flush commits it, and while the store cannot be written it is what the bounds
trim (oldest held first). Next to them: the KPI journal steps taken since the last commit, and
how many readings the KPI engine has been fed.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from agent.readings import Event, Reading

if TYPE_CHECKING:
    from agent.kpi.live import Step


class OpenBatch:
    __slots__ = ("_committed_aggregates", "_committed_events", "_committed_readings",
                 "aggregates", "events", "kpi_fed", "readings", "steps")

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.events: list[Event] = []
        self.aggregates: list[dict[str, Any]] = []
        self.steps: list[Step] = []  # KPI journal entries not yet committed
        self.kpi_fed = 0  # readings[:kpi_fed] went through the KPI engine
        self._committed_readings = 0
        self._committed_events = 0
        self._committed_aggregates = 0

    def __len__(self) -> int:
        """Readings in the open batch (what ``batch_max_readings`` counts)."""
        return len(self.readings)

    def is_empty(self) -> bool:
        return not (self.readings or self.events or self.aggregates)

    # -- what is held (not yet committed) ------------------------------------------------------

    def held_readings(self) -> list[Reading]:
        return self.readings[self._committed_readings:]

    def held_events(self) -> list[Event]:
        return self.events[self._committed_events:]

    def held_aggregates(self) -> list[dict[str, Any]]:
        return self.aggregates[self._committed_aggregates:]

    def n_held_readings(self) -> int:
        return len(self.readings) - self._committed_readings

    def n_held_events(self) -> int:
        return len(self.events) - self._committed_events

    def n_held_aggregates(self) -> int:
        return len(self.aggregates) - self._committed_aggregates

    def holds_content(self) -> bool:
        """Readings, events or KPI windows not yet committed."""
        return bool(self.n_held_readings() or self.n_held_events() or self.n_held_aggregates())

    def unfed_readings(self) -> list[Reading]:
        return self.readings[self.kpi_fed:]

    # -- changes -------------------------------------------------------------------------------

    def committed(self) -> None:
        """Everything held is now in the store (one pending row, and the journal entry)."""
        self._committed_readings = len(self.readings)
        self._committed_events = len(self.events)
        self._committed_aggregates = len(self.aggregates)
        self.kpi_fed = len(self.readings)  # what is committed is never fed again
        self.steps = []

    def sealed(self) -> None:
        """The batch was sealed: a new one opens (steps not yet committed stay)."""
        self.readings, self.events, self.aggregates = [], [], []
        self.kpi_fed = 0
        self._committed_readings = self._committed_events = self._committed_aggregates = 0

    def drop_held_readings(self, n: int) -> None:
        """Forget the ``n`` oldest held readings (the store stayed unwritable too long)."""
        start = self._committed_readings
        del self.readings[start:start + n]
        self.kpi_fed = max(start, self.kpi_fed - n)

    def drop_held_events(self, n: int) -> None:
        del self.events[self._committed_events:self._committed_events + n]

    def drop_held_aggregates(self, n: int) -> None:
        del self.aggregates[self._committed_aggregates:self._committed_aggregates + n]

    def shift(self, ms: int) -> None:
        """Move every reading and event by ``ms`` (a wall-clock step)."""
        self.readings = [dataclasses.replace(r, t=r.t + ms) for r in self.readings]
        self.events = [dataclasses.replace(e, t=e.t + ms) for e in self.events]
