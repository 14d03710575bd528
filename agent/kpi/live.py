"""The KPI engine inside the running agent: fed at every flush, checkpointed, resumed.

Each flush is one step: the readings of the flush that some KPI uses are fed to the engine,
the engine is advanced to the flush's clock, and the windows that closed go into the same
SQLite transaction as the readings (the store's pending row), together with a journal entry of
what was fed. Every minute (and on shutdown) the engine's open windows are checkpointed and
the journal is emptied. After a SIGKILL or power cut the agent restores the checkpoint and
replays the journal, so the open windows are exactly as the last committed flush left them,
and no closed window is emitted twice: its output was committed with the step that closed it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from agent.config import AgentConfig
from agent.kpi.engine import Engine
from agent.readings import Event, Quality, Reading
from agent.store import BatchStore

log = structlog.get_logger(__name__)


Step = dict[str, Any]  # {"now": epoch ms, "r": [[device, point, t, value or None], …]}


def _value(reading: Reading) -> float | None:
    if reading.quality != Quality.GOOD or reading.value is None:
        return None
    number = float(reading.value)
    return number if math.isfinite(number) else None


class LiveKpis:
    """The engine plus its checkpointing; the batcher calls :meth:`step` once per flush."""

    def __init__(self, engine: Engine, store: BatchStore, clock: Callable[[], float],
                 checkpoint_seconds: float = 60.0) -> None:
        self.engine = engine
        self._checkpoint_seconds = checkpoint_seconds
        self._store = store
        self._clock = clock
        self._sources = engine.sources
        self._last_checkpoint = clock()
        self._late_reported: dict[str, int] = dict(engine.late_dropped)

    @classmethod
    def resume(cls, config: AgentConfig, store: BatchStore, clock: Callable[[], float],
               lateness_ms: int, checkpoint_seconds: float = 60.0) -> LiveKpis:
        """Restore the last checkpoint and replay the journal written after it."""
        snapshot, journal = store.load_kpi_state()
        if snapshot is None:
            engine = Engine.from_config(config, lateness_ms=lateness_ms)
        else:
            try:
                engine = Engine.restore(config, snapshot, lateness_ms=lateness_ms)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("kpi_checkpoint_unusable", error=str(exc))
                engine = Engine.from_config(config, lateness_ms=lateness_ms)
                journal = []
            if engine.discarded:
                log.warning("kpi_definition_changed", restarted=sorted(engine.discarded))
        steps = 0
        for row in journal:
            for step in row:
                for device, point, t, value in step["r"]:
                    engine.feed_value(device, point, t, value)
                engine.advance(step["now"])  # these outputs were committed with their step
                steps += 1
        live = cls(engine, store, clock, checkpoint_seconds)
        if snapshot is not None or steps:
            log.info("kpi_resumed", checkpoint=snapshot is not None, journal_steps=steps,
                     kpis=len(engine.configs))
        return live

    def step(self, readings: Sequence[Reading],
             now_ms: int) -> tuple[list[dict[str, Any]], Step, list[Event]]:
        """Feed one flush's readings and advance: the closed windows, the journal entry, and
        events for readings that came later than the lateness allows (counted, reported)."""
        engine = self.engine
        sources = self._sources
        fed: list[list[Any]] = []
        outputs = []
        for r in readings:
            if (r.device, r.point) in sources:
                value = _value(r)
                fed.append([r.device, r.point, r.t, value])
                outputs.extend(engine.feed_value(r.device, r.point, r.t, value))
        outputs.extend(engine.advance(now_ms))
        return [o.as_dict() for o in outputs], {"now": now_ms, "r": fed}, self._note_late(now_ms)

    def _note_late(self, now_ms: int) -> list[Event]:
        events = []
        for name, count in self.engine.late_dropped.items():
            new = count - self._late_reported.get(name, 0)
            if new > 0:
                log.warning("kpi_readings_too_late", kpi=name, dropped=new, total=count,
                            lateness_ms=self.engine.lateness_ms)
                events.append(Event(now_ms, "kpi_late_readings", None,
                                    f"kpi={name} dropped={new} total={count} "
                                    f"lateness_ms={self.engine.lateness_ms}"))
                self._late_reported[name] = count
        return events

    def checkpoint_due(self) -> bool:
        return self._clock() - self._last_checkpoint >= self._checkpoint_seconds

    def checkpoint(self) -> None:
        """Save the open windows and empty the journal (one transaction)."""
        self._store.save_kpi_state(self.engine.snapshot(), int(self._clock() * 1000))
        self._last_checkpoint = self._clock()
