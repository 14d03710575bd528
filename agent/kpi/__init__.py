"""City KPIs at the edge (docs/kpis.md): calendar windows, operators, streaming engine, replay."""

from __future__ import annotations

from agent.kpi.calendar import Calendar, to_epoch_ms
from agent.kpi.engine import TIME_EXTRAS, Engine, KpiOutput
from agent.kpi.replay import ReplayInputError, format_output, replay, replay_paths

__all__ = [
    "TIME_EXTRAS",
    "Calendar",
    "Engine",
    "KpiOutput",
    "ReplayInputError",
    "format_output",
    "replay",
    "replay_paths",
    "to_epoch_ms",
]
