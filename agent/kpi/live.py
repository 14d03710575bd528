"""The KPI engine inside the running agent: fed at every flush, checkpointed, resumed.

Each flush is one step: the readings of the flush that some KPI uses are fed to the engine,
the engine is advanced to the flush's clock, and the windows that closed go into the same
SQLite transaction as the readings (the store's pending row), together with a journal entry of
what was fed. Every minute (and on shutdown) the engine's open windows are checkpointed and
the journal is emptied. After a SIGKILL or power cut the agent restores the checkpoint and
replays the journal, so the open windows are exactly as the last committed flush left them,
and no closed window is emitted twice: its output was committed with the step that closed it.

Clock steps: a time more than :data:`MAX_STEP_MS` (or twice the lateness) away from the
engine's is a step of the wall clock, not elapsed time. Forward, the windows wholly inside the
step are skipped in constant work (never materialised one by one) and the step is logged and
sent once as a ``kpi_clock_step`` event with its size; backward, the engine keeps its windows
and readings stamped before them are counted as late until the clock is back
(``docs/kpis.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from agent.config import AgentConfig
from agent.errors import BufferFull
from agent.gateway.store import DECODE_ERRORS, BatchStore, KpiStateUnusable
from agent.kpi.calendar import Calendar
from agent.kpi.engine import Engine, TimeJump
from agent.readings import Event, Quality, Reading

log = structlog.get_logger(__name__)

# An advance of the clock by more than this between two flushes (1 s apart) is a clock step.
MAX_STEP_MS = 15 * 60 * 1000


# Flushes without a late reading that end an episode of late readings.
QUIET_STEPS = 60
# Flushes the clock may stay behind the engine (a step back) before the engine gives up its
# time and restarts its windows at the clock's: an hour at 1-s flushes.
BEHIND_STEPS = 3600


def max_step_ms(lateness_ms: int) -> int:
    """The step threshold of the live engine: never within the lateness."""
    return max(MAX_STEP_MS, 2 * lateness_ms)


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
        self._late_unsent: dict[str, int] = {}  # counted, not yet in an event
        self._late_since: int | None = None  # the episode of late readings, if one is on
        self._quiet_steps = 0  # steps without a late reading since the last one
        self._behind_steps = 0  # steps with the clock behind the engine by over a step
        self._calendar = Calendar(engine.tz)
        # the last window each KPI closed in this run (health shows them; one per KPI)
        self.latest: dict[str, dict[str, Any]] = {}

    @classmethod
    def resume(cls, config: AgentConfig, store: BatchStore, clock: Callable[[], float],
               lateness_ms: int, checkpoint_seconds: float = 60.0) -> LiveKpis:
        """Restore the last checkpoint and replay the journal written after it."""
        step_ms = max_step_ms(lateness_ms)

        def fresh() -> Engine:
            return Engine.from_config(config, lateness_ms=lateness_ms, max_step_ms=step_ms)

        snapshot: dict[str, Any] | None = None
        steps = 0
        try:
            snapshot, journal = store.load_kpi_state()
            engine = fresh() if snapshot is None else Engine.restore(config, snapshot,
                                                                     lateness_ms=lateness_ms)
            engine.max_step_ms = step_ms
            if engine.discarded:
                log.warning("kpi_definition_changed", restarted=sorted(engine.discarded))
            for row in journal:
                for step in row:
                    for device, point, t, value in step["r"]:
                        engine.feed_value(device, point, t, value)
                    engine.advance(step["now"])  # these outputs were committed with their step
                    steps += 1
        except KpiStateUnusable as exc:  # set aside and reported by the store
            log.error("kpi_checkpoint_unusable", error=str(exc))
            engine, snapshot, steps = fresh(), None, 0
        except (*DECODE_ERRORS, RuntimeError) as exc:
            log.error("kpi_checkpoint_unusable", error=str(exc)[:200])
            try:
                store.set_aside_kpi_state(f"checkpoint unusable: {str(exc)[:200]}")
            except BufferFull as failed:  # the next checkpoint replaces it anyway
                log.error("kpi_checkpoint_set_aside_failed", error=str(failed))
            engine, snapshot, steps = fresh(), None, 0
        engine.take_jumps()  # reported with their step before the restart
        live = cls(engine, store, clock, checkpoint_seconds)
        if snapshot is not None or steps:
            log.info("kpi_resumed", checkpoint=snapshot is not None, journal_steps=steps,
                     kpis=len(engine.configs))
        return live

    @classmethod
    def fresh(cls, config: AgentConfig, store: BatchStore, clock: Callable[[], float],
              lateness_ms: int, checkpoint_seconds: float = 60.0) -> LiveKpis:
        """An engine with no windows open yet (KPIs added to a running agent by a reload)."""
        engine = Engine.from_config(config, lateness_ms=lateness_ms,
                                    max_step_ms=max_step_ms(lateness_ms))
        return cls(engine, store, clock, checkpoint_seconds)

    def reconfigured(self, config: AgentConfig, restart: Iterable[str], lateness_ms: int,
                     checkpoint_seconds: float) -> LiveKpis:
        """The engine for ``config`` (a reload), continued from this one's state: a KPI whose
        definition is unchanged keeps its open windows; one in ``restart``, a new one, and all
        of them if the time zone changed, start at the current window; removed ones go."""
        snapshot = self.engine.snapshot()
        for name in restart:
            snapshot["kpis"].pop(name, None)
        engine = Engine.restore(config, snapshot, lateness_ms=lateness_ms)
        engine.max_step_ms = max_step_ms(lateness_ms)
        live = type(self)(engine, self._store, self._clock, checkpoint_seconds)
        live._last_checkpoint = self._last_checkpoint
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
        engine_now = engine.now
        step_ms = engine.max_step_ms
        if engine_now is not None and step_ms is not None and now_ms < engine_now - step_ms:
            self._behind_steps += 1
            if self._behind_steps >= BEHIND_STEPS:
                # the clock was set back for good: windows on it beat windows never closed
                log.warning("kpi_windows_rebased", frm=self._calendar.isoformat(engine_now),
                            to=self._calendar.isoformat(now_ms))
                outputs.extend(engine.rebase(now_ms))
                self._behind_steps = 0
        else:
            self._behind_steps = 0
        events = [self._jump_event(jump, now_ms) for jump in engine.take_jumps()]
        events += self._note_late(now_ms)
        closed = [o.as_dict() for o in outputs]
        for window in closed:
            self.latest[window["kpi"]] = window
        return closed, {"now": now_ms, "r": fed}, events

    def _jump_event(self, jump: TimeJump, now_ms: int) -> Event:
        iso = self._calendar.isoformat
        size_s = jump.size_ms / 1000
        if jump.size_ms > 0:
            log.warning("kpi_clock_step", frm=iso(jump.frm), to=iso(jump.to), size_s=size_s,
                        windows_closed=jump.closed)
            message = (f"from={iso(jump.frm)} to={iso(jump.to)} size_s={size_s:g} "
                       f"windows_closed={jump.closed}; windows wholly inside the step "
                       "were not computed")
        elif jump.closed:  # the engine gave up its time (rebase)
            message = (f"from={iso(jump.frm)} to={iso(jump.to)} size_s={size_s:g} "
                       f"windows_closed={jump.closed}; the clock stayed behind: windows "
                       "restarted on it")
        else:
            log.warning("kpi_clock_step", frm=iso(jump.frm), to=iso(jump.to), size_s=size_s,
                        held=True)
            message = (f"from={iso(jump.frm)} to={iso(jump.to)} size_s={size_s:g}; windows "
                       "held, readings before them count as late until the clock is back")
        return Event(now_ms, "kpi_clock_step", None, message)

    def _note_late(self, now_ms: int) -> list[Event]:
        """Late readings: logged when an episode starts and when it ends (after
        :data:`QUIET_STEPS` flushes without one); sent as one event per KPI at the end of the
        episode, and at every checkpoint while it goes on."""
        fresh = False
        for name, count in self.engine.late_dropped.items():
            new = count - self._late_reported.get(name, 0)
            if new > 0:
                self._late_unsent[name] = self._late_unsent.get(name, 0) + new
                self._late_reported[name] = count
                fresh = True
        if fresh and self._late_since is None:
            self._late_since = now_ms
            log.warning("kpi_readings_too_late", kpis=sorted(self._late_unsent),
                        lateness_ms=self.engine.lateness_ms)
        self._quiet_steps = 0 if fresh else self._quiet_steps + 1
        ended = self._late_since is not None and self._quiet_steps >= QUIET_STEPS
        if ended:
            log.info("kpi_readings_on_time_again", dropped=dict(self._late_unsent),
                     lateness_ms=self.engine.lateness_ms)
            self._late_since = None
        if not self._late_unsent or not (ended or self.checkpoint_due()):
            return []
        events = [Event(now_ms, "kpi_late_readings", None,
                        f"kpi={name} dropped={new} total={self.engine.late_dropped[name]} "
                        f"lateness_ms={self.engine.lateness_ms}")
                  for name, new in sorted(self._late_unsent.items())]
        self._late_unsent = {}
        return events

    def checkpoint_due(self) -> bool:
        return self._clock() - self._last_checkpoint >= self._checkpoint_seconds

    def checkpoint(self) -> None:
        """Save the open windows and empty the journal (one transaction)."""
        self._store.save_kpi_state(self.engine.snapshot(), int(self._clock() * 1000))
        self.checkpointed()

    def checkpointed(self) -> None:
        """A checkpoint was saved (here or with a flush's pending row)."""
        self._last_checkpoint = self._clock()
