"""What the KPI engine emits: a closed window (:class:`KpiOutput`, docs/kpis.md §1) and a
clock step it saw (:class:`TimeJump`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

__all__ = ["TIME_EXTRAS", "Emit", "Extra", "KpiOutput", "TimeJump"]


Extra: TypeAlias = float | int | str | None

# Extras that hold an instant (epoch ms here, ISO 8601 in replay output).
TIME_EXTRAS = frozenset({"at", "peak_start", "max_start", "max_end"})


@dataclass(slots=True)
class KpiOutput:
    """A closed window of a KPI (docs/kpis.md §1); ``start``/``end`` and time extras in epoch ms."""

    kpi: str
    src: str
    start: int
    end: int
    value: float | int | None
    valid: bool
    n: int
    expected: int
    coverage: float
    unit: str | None
    extras: dict[str, Extra] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The §1 keys and the extras as one flat dict (times stay epoch ms)."""
        record: dict[str, Any] = {
            "kpi": self.kpi,
            "src": self.src,
            "start": self.start,
            "end": self.end,
            "value": self.value,
            "valid": self.valid,
            "n": self.n,
            "expected": self.expected,
            "coverage": self.coverage,
            "unit": self.unit,
        }
        record.update(self.extras)
        return record


@dataclass(frozen=True, slots=True)
class TimeJump:
    """The engine's time moved by more than ``max_step_ms``: from ``frm`` to ``to`` (epoch
    ms; ``to < frm`` for a step back), closing ``closed`` windows open at ``frm``."""

    frm: int
    to: int
    closed: int

    @property
    def size_ms(self) -> int:
        return self.to - self.frm


# Called with an output and its step window (for sliding operators its last base window).
Emit: TypeAlias = Callable[[KpiOutput, int, int], None]
