"""The open batch as one value: it behaves as the open and the held (unflushed) lists it
replaced, the held part always the newest of the open one."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent.gateway.open_batch import OpenBatch
from agent.readings import Event, Quality, Reading


class TwoLists:
    """The batcher's former bookkeeping: each thing in the open list and, until committed, in
    the unflushed list too; dropped held items removed from both by identity."""

    def __init__(self) -> None:
        self.open: list[Reading] = []
        self.unflushed: list[Reading] = []
        self.open_events: list[Event] = []
        self.unflushed_events: list[Event] = []
        self.kpi_fed = 0  # of unflushed

    def add(self, readings: list[Reading]) -> None:
        self.open.extend(readings)
        self.unflushed.extend(readings)

    def add_event(self, event: Event) -> None:
        self.open_events.append(event)
        self.unflushed_events.append(event)

    def feed(self) -> None:
        self.kpi_fed = len(self.unflushed)

    def commit(self) -> None:
        self.unflushed, self.unflushed_events, self.kpi_fed = [], [], 0

    def drop(self, n: int) -> None:
        lost = set(map(id, self.unflushed[:n]))
        self.unflushed = self.unflushed[n:]
        self.kpi_fed = max(0, self.kpi_fed - n)
        self.open = [r for r in self.open if id(r) not in lost]

    def drop_events(self, n: int) -> None:
        lost = set(map(id, self.unflushed_events[:n]))
        del self.unflushed_events[:n]
        self.open_events = [e for e in self.open_events if id(e) not in lost]

    def seal(self) -> None:
        self.open, self.open_events = [], []

    def shift(self, ms: int) -> None:
        held, held_events = len(self.unflushed), len(self.unflushed_events)
        self.open = [dataclasses.replace(r, t=r.t + ms) for r in self.open]
        self.unflushed = self.open[len(self.open) - held:] if held else []
        self.open_events = [dataclasses.replace(e, t=e.t + ms) for e in self.open_events]
        self.unflushed_events = (self.open_events[len(self.open_events) - held_events:]
                                 if held_events else [])


_counter = iter(range(10**9))


def fresh(n: int) -> list[Reading]:
    return [Reading("m1", "p", "W", next(_counter), 1.0, Quality.GOOD) for _ in range(n)]


operations = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 5)),
    st.tuples(st.just("event"), st.integers(0, 0)),
    st.tuples(st.just("feed"), st.integers(0, 0)),
    st.tuples(st.just("commit"), st.integers(0, 0)),
    st.tuples(st.just("drop"), st.integers(1, 6)),
    st.tuples(st.just("drop_events"), st.integers(1, 3)),
    st.tuples(st.just("seal"), st.integers(0, 0)),
    st.tuples(st.just("shift"), st.integers(-5_000, 5_000)),
), max_size=60)


@given(operations)
def test_the_open_batch_is_what_the_two_lists_were(ops: list[tuple[str, int]]) -> None:
    batch, model = OpenBatch(), TwoLists()
    for op, n in ops:
        if op == "add":
            readings = fresh(n)
            batch.readings.extend(readings)
            model.add(readings)
        elif op == "event":
            event = Event(next(_counter), "device_down", "m1", "")
            batch.events.append(event)
            model.add_event(event)
        elif op == "feed":
            batch.kpi_fed = len(batch.readings)
            model.feed()
        elif op == "commit":
            batch.committed()
            model.commit()
        elif op == "drop":
            k = min(n, batch.n_held_readings())
            batch.drop_held_readings(k)
            model.drop(k)
        elif op == "drop_events":
            k = min(n, batch.n_held_events())
            batch.drop_held_events(k)
            model.drop_events(k)
        elif op == "seal":
            if batch.holds_content():
                continue  # the batcher seals only what is committed
            batch.sealed()
            model.seal()
        else:
            batch.shift(n)
            model.shift(n)
        assert batch.readings == model.open and batch.events == model.open_events
        assert batch.held_readings() == model.unflushed
        assert batch.held_events() == model.unflushed_events
        assert batch.n_held_readings() == len(model.unflushed)
        assert batch.unfed_readings() == model.unflushed[model.kpi_fed:]
        assert len(batch) == len(model.open)


def test_held_parts_commit_and_a_seal_keeps_uncommitted_steps() -> None:
    batch = OpenBatch()
    batch.readings.extend(fresh(3))
    batch.aggregates.append({"kpi": "a"})
    batch.steps.append(("step", 1))  # type: ignore[arg-type]
    assert batch.holds_content() and batch.n_held_aggregates() == 1
    batch.committed()
    assert not batch.holds_content() and batch.steps == [] and len(batch) == 3
    batch.aggregates.append({"kpi": "b"})
    assert batch.held_aggregates() == [{"kpi": "b"}]
    batch.drop_held_aggregates(1)
    assert batch.aggregates == [{"kpi": "a"}]
    held_step: Any = ("step", 2)
    batch.steps.append(held_step)
    batch.sealed()
    assert batch.is_empty() and len(batch) == 0 and batch.kpi_fed == 0
    assert batch.steps == [held_step]  # the journal entry is still to be committed
