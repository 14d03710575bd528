"""Reading the stored KPI windows a report needs, through the one read-only query function
:func:`agent.platform.sink.url.open_read_only` gives for both sinks (SQLite and PostgreSQL):
only ``SELECT``, so a role that may only read will do.

A site's KPI is read as ``aggregates`` rows of its gateway and KPI whose window starts in the
period, and, when the site names devices, whose source is one of those devices' points
(``device.point``). Rows are returned by source; a window stored twice (a batch resent after
its gateway's store was replaced) is kept once, the first stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import first_line

__all__ = ["Select", "SinkReadError", "StoredWindow", "WindowReader"]

Select = Callable[[str, Any], list[tuple[Any, ...]]]


class SinkReadError(Exception):
    """The database failed while the report read it (not the command's options' fault)."""


@dataclass(frozen=True, slots=True)
class StoredWindow:
    """One stored KPI window: ``[start_ms, end_ms)``, its value (or the extra asked for) and
    its own validity."""

    start_ms: int
    end_ms: int
    value: float | None
    valid: bool


class WindowReader:
    """The windows of ``(gateway, kpi)`` in ``[start_ms, end_ms)``, by source."""

    def __init__(self, select: Select) -> None:
        self._select = select
        self.duplicates = 0  # windows stored more than once, kept once

    def windows(self, gateway: str, kpi: str, start_ms: int, end_ms: int, *,
                devices: Sequence[str] = (), extra: str | None = None
                ) -> dict[str, list[StoredWindow]]:
        column = "extras_json" if extra else "NULL"
        try:
            rows = self._select(
                f'SELECT src, "start", "end", value, valid, {column} FROM aggregates '
                'WHERE gw = ? AND kpi = ? AND "start" >= ? AND "start" < ? ORDER BY "start"',
                (gateway, kpi, start_ms, end_ms))
        except Exception as exc:  # sqlite3.Error or psycopg.Error: whichever sink it is
            raise SinkReadError(first_line(exc)) from exc
        prefixes = tuple(f"{device}." for device in devices)
        by_source: dict[str, list[StoredWindow]] = {}
        last_start: dict[str, int] = {}
        for src, start, end, stored, valid, extras in rows:
            if prefixes and not str(src).startswith(prefixes):
                continue
            if last_start.get(src) == start:
                self.duplicates += 1
                continue
            last_start[src] = start
            value = _extra(extras, extra) if extra else stored
            number = float(value) if isinstance(value, int | float) else None
            if number is not None and not math.isfinite(number):
                number = None
            by_source.setdefault(str(src), []).append(
                StoredWindow(int(start), int(end), number, bool(valid) and number is not None))
        return by_source


def _extra(extras: str | None, key: str) -> Any:
    if not extras:
        return None
    try:
        return json.loads(extras).get(key)
    except (ValueError, AttributeError):
        return None
