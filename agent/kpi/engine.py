"""The streaming KPI engine (docs/kpis.md §3–§4): readings in, closed windows out.

Pure: no I/O and no clock. Time comes from the readings' timestamps and from explicit
:meth:`Engine.advance` / :meth:`Engine.finish` calls.

Lateness: a reading is accepted if its time is at least ``now − lateness`` (``now`` = the
latest time fed or advanced to); accepted readings wait in a reorder buffer and are released
to the KPIs in time order once ``now − lateness`` has passed them, so every operator sees each
source in time order and the outputs do not depend on arrival order. A window closes once
``now − lateness`` reaches its end (a counter window, which holds the reading on its end,
once it passes it). Readings older than ``now − lateness`` are counted in
:attr:`Engine.late_dropped`, per KPI.

Checkpointing: :meth:`Engine.snapshot` returns a JSON- and msgpack-able dict of all open
state; :meth:`Engine.restore` rebuilds an engine that continues exactly where it stopped.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias
from zoneinfo import ZoneInfo

from agent.config import AgentConfig, KpiConfig, KpiDuration
from agent.kpi.calendar import Calendar, clock_seconds
from agent.kpi.operators import (
    aqi_category,
    aqi_us_pm25,
    counter_step,
    coverage,
    energy,
    expected_items,
    is_valid,
    lden_level,
    level_of_energy,
    nowcast,
    percentile,
)
from agent.readings import Quality, Reading

__all__ = ["TIME_EXTRAS", "Engine", "KpiOutput", "TimeJump"]

Extra: TypeAlias = float | int | str | None
State: TypeAlias = dict[str, Any]
SNAPSHOT_VERSION = 1
# Extras that hold an instant (epoch ms here, ISO 8601 in replay output).
TIME_EXTRAS = frozenset({"at", "peak_start", "max_start", "max_end"})
_DAY_SECONDS = 86400
_MS_PER_HOUR = 3_600_000


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


def _sort_key(output: KpiOutput) -> tuple[int, str]:
    return output.end, output.kpi


# Called with an output and its step window (for sliding operators its last base window).
Emit: TypeAlias = Callable[[KpiOutput, int, int], None]


class _Kpi:
    """The fixed facts of one KPI that every part of its pipeline needs."""

    def __init__(self, config: KpiConfig, calendar: Calendar, emit: Emit) -> None:
        self.config = config
        self.name = config.name
        self.src = config.source
        self.calendar = calendar
        self.emit = emit
        self.scale = config.scale
        self.window = config.window_duration
        self.base = config.base_duration
        interval = config.sample_interval_duration
        self.interval_ms = 0 if interval is None else interval.seconds * 1000
        self.min_coverage = config.min_coverage
        default_unit = "AQI" if config.operator == "aqi_us_pm25" else None
        self.unit = config.unit if config.unit is not None else default_unit

    def output(
        self,
        start: int,
        end: int,
        value: float | int | None,
        *,
        valid: bool,
        n: int,
        expected: int,
        extras: Mapping[str, Extra] | None = None,
        always: Iterable[str] = (),
        cover: float | None = None,
    ) -> KpiOutput:
        """An output; when not valid, the value and every extra not in ``always`` are null."""
        shown = dict(extras or {})
        if not valid:
            value = None
            keep = set(always)
            shown = {key: (item if key in keep else None) for key, item in shown.items()}
        return KpiOutput(
            kpi=self.name,
            src=self.src,
            start=start,
            end=end,
            value=value,
            valid=valid,
            n=n,
            expected=expected,
            coverage=coverage(n, expected) if cover is None else cover,
            unit=self.unit,
            extras=shown,
        )


class _Scope:
    """What the items of a window are, for ``expected``: readings, or steps of a duration."""

    def __init__(self, calendar: Calendar, interval_ms: int, step: KpiDuration | None) -> None:
        self.calendar = calendar
        self.interval_ms = interval_ms
        self.step = step

    def total(self, start: int, end: int) -> int:
        """Items the window ``[start, end)`` should hold."""
        if self.step is not None:
            return self.calendar.count(self.step, start, end)
        return expected_items(end - start, self.interval_ms)

    def in_clock(self, start: int, end: int, low: int, high: int) -> int:
        """Items expected at local wall times of day in ``[low, high)`` (wrapping midnight)."""
        if self.step is None:
            seconds = _clock_span(self.calendar, start, end, low, high)
            return expected_items(seconds * 1000, self.interval_ms)
        return sum(
            1
            for step_start, _ in self.calendar.windows(self.step, start, end)
            if _in_clock(self.calendar.wall_seconds(step_start), low, high)
        )


def _in_clock(wall: int, low: int, high: int) -> bool:
    return low <= wall < high if low < high else wall >= low or wall < high


def _clock_span(calendar: Calendar, start: int, end: int, low: int, high: int) -> int:
    if low < high:
        return calendar.clock_span_seconds(start, end, low, high)
    return calendar.clock_span_seconds(start, end, low, _DAY_SECONDS) + (
        calendar.clock_span_seconds(start, end, 0, high)
    )


# --------------------------------------------------------------------------------------------
# Window accumulators: valid items (time, value) in time order → one output at close.


class _Acc(Protocol):
    n: int

    def add(self, t: int, x: float) -> None: ...

    def result(self, kpi: _Kpi, scope: _Scope, start: int, end: int) -> KpiOutput: ...

    def state(self) -> list[Any]: ...

    def load(self, state: list[Any]) -> None: ...


class _MeanAcc:
    """``mean`` and ``sum``: a running total in time order."""

    __slots__ = ("is_sum", "n", "total")

    def __init__(self, *, is_sum: bool) -> None:
        self.is_sum = is_sum
        self.n = 0
        self.total = 0.0

    def add(self, t: int, x: float) -> None:
        self.n += 1
        self.total += x

    def result(self, kpi: _Kpi, scope: _Scope, start: int, end: int) -> KpiOutput:
        expected = scope.total(start, end)
        valid = is_valid(self.n, expected, kpi.min_coverage)
        value = self.total if self.is_sum else (self.total / self.n if self.n else None)
        return kpi.output(start, end, value, valid=valid, n=self.n, expected=expected)

    def state(self) -> list[Any]:
        return [self.n, self.total]

    def load(self, state: list[Any]) -> None:
        self.n, self.total = int(state[0]), float(state[1])


class _CountAcc:
    """``count``: the number of valid items; always valid."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def add(self, t: int, x: float) -> None:
        self.n += 1

    def result(self, kpi: _Kpi, scope: _Scope, start: int, end: int) -> KpiOutput:
        expected = scope.total(start, end)
        return kpi.output(start, end, self.n, valid=True, n=self.n, expected=expected)

    def state(self) -> list[Any]:
        return [self.n]

    def load(self, state: list[Any]) -> None:
        self.n = int(state[0])


class _ExtremeAcc:
    """``min`` / ``max`` with ``at``, the first extreme item (strict comparison: earliest wins)."""

    __slots__ = ("at", "best", "is_max", "n")

    def __init__(self, *, is_max: bool) -> None:
        self.is_max = is_max
        self.n = 0
        self.best = 0.0
        self.at = 0

    def add(self, t: int, x: float) -> None:
        if self.n == 0 or (x > self.best if self.is_max else x < self.best):
            self.best, self.at = x, t
        self.n += 1

    def result(self, kpi: _Kpi, scope: _Scope, start: int, end: int) -> KpiOutput:
        expected = scope.total(start, end)
        valid = is_valid(self.n, expected, kpi.min_coverage)
        return kpi.output(
            start, end, self.best, valid=valid, n=self.n, expected=expected, extras={"at": self.at}
        )

    def state(self) -> list[Any]:
        return [self.n, self.best, self.at]

    def load(self, state: list[Any]) -> None:
        self.n, self.best, self.at = int(state[0]), float(state[1]), int(state[2])


class _PercentileAcc:
    """``percentile``: keeps the values (nearest rank needs them all)."""

    __slots__ = ("n", "q", "values")

    def __init__(self, q: float) -> None:
        self.q = q
        self.n = 0
        self.values: list[float] = []

    def add(self, t: int, x: float) -> None:
        self.n += 1
        self.values.append(x)

    def result(self, kpi: _Kpi, scope: _Scope, start: int, end: int) -> KpiOutput:
        expected = scope.total(start, end)
        valid = is_valid(self.n, expected, kpi.min_coverage)
        value, rank = percentile(self.values, self.q) if self.values else (None, None)
        return kpi.output(
            start, end, value, valid=valid, n=self.n, expected=expected, extras={"rank": rank}
        )

    def state(self) -> list[Any]:
        return [self.n, list(self.values)]

    def load(self, state: list[Any]) -> None:
        self.n, self.values = int(state[0]), [float(x) for x in state[1]]


class _EnergyAcc:
    """``energetic_mean``: ``10·log10(mean(10^(x/10)))``."""

    __slots__ = ("energy", "n")

    def __init__(self) -> None:
        self.n = 0
        self.energy = 0.0

    def add(self, t: int, x: float) -> None:
        e = energy(x)
        if e != math.inf:  # beyond any real level: invalid
            self.n += 1
            self.energy += e

    def result(self, kpi: _Kpi, scope: _Scope, start: int, end: int) -> KpiOutput:
        expected = scope.total(start, end)
        valid = is_valid(self.n, expected, kpi.min_coverage)
        value = level_of_energy(self.energy, self.n) if valid else None
        return kpi.output(start, end, value, valid=valid, n=self.n, expected=expected)

    def state(self) -> list[Any]:
        return [self.n, self.energy]

    def load(self, state: list[Any]) -> None:
        self.n, self.energy = int(state[0]), float(state[1])


class _ExceedAcc:
    """``exceedance_count``: valid items strictly above the threshold."""

    __slots__ = ("above", "n", "threshold")

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.n = 0
        self.above = 0

    def add(self, t: int, x: float) -> None:
        self.n += 1
        if x > self.threshold:
            self.above += 1

    def result(self, kpi: _Kpi, scope: _Scope, start: int, end: int) -> KpiOutput:
        expected = scope.total(start, end)
        valid = is_valid(self.n, expected, kpi.min_coverage)
        return kpi.output(
            start,
            end,
            self.above,
            valid=valid,
            n=self.n,
            expected=expected,
            extras={"exceedances": self.above},
            always=("exceedances",),
        )

    def state(self) -> list[Any]:
        return [self.n, self.above]

    def load(self, state: list[Any]) -> None:
        self.n, self.above = int(state[0]), int(state[1])


class _AqiDailyAcc:
    """``aqi_us_pm25`` with ``averaging = "daily"``: the AQI of the mean of hourly means."""

    __slots__ = ("n", "total")

    def __init__(self) -> None:
        self.n = 0
        self.total = 0.0

    def add(self, t: int, x: float) -> None:
        self.n += 1
        self.total += x

    def result(self, kpi: _Kpi, scope: _Scope, start: int, end: int) -> KpiOutput:
        expected = scope.total(start, end)
        valid = is_valid(self.n, expected, kpi.min_coverage)
        extras: dict[str, Extra] = {"concentration": None, "category": None}
        value: int | None = None
        if valid:
            value, concentration = aqi_us_pm25(self.total / self.n)
            extras = {"concentration": concentration, "category": aqi_category(value)}
        return kpi.output(
            start, end, value, valid=valid, n=self.n, expected=expected, extras=extras
        )

    def state(self) -> list[Any]:
        return [self.n, self.total]

    def load(self, state: list[Any]) -> None:
        self.n, self.total = int(state[0]), float(state[1])


class _NightAcc:
    """``min_night_flow``: the minimum of the items that start in ``[night_start, night_end)``."""

    __slots__ = ("at", "best", "calendar", "high", "low", "n")

    def __init__(self, calendar: Calendar, low: int, high: int) -> None:
        self.calendar = calendar
        self.low, self.high = low, high
        self.n = 0
        self.best = 0.0
        self.at = 0

    def add(self, t: int, x: float) -> None:
        if not _in_clock(self.calendar.wall_seconds(t), self.low, self.high):
            return
        if self.n == 0 or x < self.best:
            self.best, self.at = x, t
        self.n += 1

    def result(self, kpi: _Kpi, scope: _Scope, start: int, end: int) -> KpiOutput:
        expected = scope.in_clock(start, end, self.low, self.high)
        valid = is_valid(self.n, expected, kpi.min_coverage)
        return kpi.output(
            start, end, self.best, valid=valid, n=self.n, expected=expected, extras={"at": self.at}
        )

    def state(self) -> list[Any]:
        return [self.n, self.best, self.at]

    def load(self, state: list[Any]) -> None:
        self.n, self.best, self.at = int(state[0]), float(state[1]), int(state[2])


_PERIODS = ("day", "evening", "night")


class _LdenAcc:
    """``lden``: energies per period (day, evening, night) by the items' local wall time."""

    __slots__ = ("calendar", "counts", "day", "energies", "evening", "n", "night")

    def __init__(self, calendar: Calendar, day: int, evening: int, night: int) -> None:
        self.calendar = calendar
        self.day, self.evening, self.night = day, evening, night
        self.n = 0
        self.counts = [0, 0, 0]
        self.energies = [0.0, 0.0, 0.0]

    def add(self, t: int, x: float) -> None:
        wall = self.calendar.wall_seconds(t)
        period = (
            0 if self.day <= wall < self.evening else 1 if self.evening <= wall < self.night else 2
        )
        e = energy(x)
        if e == math.inf:  # beyond any real level: invalid
            return
        self.n += 1
        self.counts[period] += 1
        self.energies[period] += e

    def result(self, kpi: _Kpi, scope: _Scope, start: int, end: int) -> KpiOutput:
        spans = ((self.day, self.evening), (self.evening, self.night), (self.night, self.day))
        seconds_day = self.calendar.clock_span_seconds(start, end, self.day, self.evening)
        seconds_evening = self.calendar.clock_span_seconds(start, end, self.evening, self.night)
        seconds_night = (end - start) // 1000 - seconds_day - seconds_evening
        hours = dict(
            zip(
                _PERIODS,
                (seconds_day / 3600, seconds_evening / 3600, seconds_night / 3600),
                strict=True,
            )
        )
        expected = [scope.in_clock(start, end, low, high) for low, high in spans]
        valid = all(
            is_valid(count, want, kpi.min_coverage)
            for count, want in zip(self.counts, expected, strict=True)
        )
        extras: dict[str, Extra] = {"lday": None, "levening": None, "lnight": None}
        value: float | None = None
        if valid:
            levels = {
                period: level_of_energy(total, count)
                for period, total, count in zip(_PERIODS, self.energies, self.counts, strict=True)
            }
            value = lden_level(levels, hours)
            extras = {
                "lday": levels["day"],
                "levening": levels["evening"],
                "lnight": levels["night"],
            }
        extras.update({f"hours_{period}": hours[period] for period in _PERIODS})
        return kpi.output(
            start,
            end,
            value,
            valid=valid,
            n=self.n,
            expected=sum(expected),
            extras=extras,
            always=("hours_day", "hours_evening", "hours_night"),
        )

    def state(self) -> list[Any]:
        return [self.n, list(self.counts), list(self.energies)]

    def load(self, state: list[Any]) -> None:
        self.n = int(state[0])
        self.counts = [int(x) for x in state[1]]
        self.energies = [float(x) for x in state[2]]


def _acc_factory(kpi: _Kpi) -> Callable[[], _Acc]:
    config, calendar = kpi.config, kpi.calendar
    operator = config.operator
    if operator in ("mean", "sum"):
        is_sum = operator == "sum"
        return lambda: _MeanAcc(is_sum=is_sum)
    if operator in ("min", "max"):
        is_max = operator == "max"
        return lambda: _ExtremeAcc(is_max=is_max)
    if operator == "count":
        return _CountAcc
    if operator == "percentile":
        q = config.q if config.q is not None else 50.0
        return lambda: _PercentileAcc(q)
    if operator == "energetic_mean":
        return _EnergyAcc
    if operator == "exceedance_count":
        threshold = config.threshold if config.threshold is not None else math.inf
        return lambda: _ExceedAcc(threshold)
    if operator == "aqi_us_pm25":
        return _AqiDailyAcc
    if operator == "min_night_flow":
        low, high = (
            clock_seconds(config.clock("night_start")),
            clock_seconds(config.clock("night_end")),
        )
        return lambda: _NightAcc(calendar, low, high)
    if operator == "lden":
        day = clock_seconds(config.clock("day_start"))
        evening = clock_seconds(config.clock("evening_start"))
        night = clock_seconds(config.clock("night_start"))
        return lambda: _LdenAcc(calendar, day, evening, night)
    raise ValueError(f"KPI {kpi.name}: operator {operator} has no window accumulator")


# --------------------------------------------------------------------------------------------
# Windows and fronts


class _Windows:
    """The output windows of one KPI, one open at a time, each with an accumulator."""

    def __init__(self, kpi: _Kpi, scope: _Scope, factory: Callable[[], _Acc]) -> None:
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


class _ItemSink(Protocol):
    def item(self, start: int, end: int, x: float | None) -> None: ...


class _BaseFront:
    """Base windows over readings (§3.4): each closes into one item, its value or missing."""

    def __init__(self, kpi: _Kpi, base: KpiDuration, kind: str, sink: _ItemSink) -> None:
        self.kpi = kpi
        self.base = base
        self.kind = kind  # "mean", "sum" or "energy"
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


# --------------------------------------------------------------------------------------------
# Runners: one per KPI


class _Runner:
    """One KPI's pipeline. Device KPIs take ``reading``; ``kpi:`` KPIs take ``item``."""

    def __init__(self, kpi: _Kpi) -> None:
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


def _scaled(value: float | None, scale: float) -> float | None:
    """The value times ``scale``; None (invalid) if that leaves the float range."""
    if value is None:
        return None
    x = value * scale
    return x if math.isfinite(x) else None


class _SimpleRunner(_Runner):
    """Operators over the items of a window: readings, base values or ``kpi:`` outputs."""

    def __init__(self, kpi: _Kpi, source_step: KpiDuration | None) -> None:
        super().__init__(kpi)
        config = kpi.config
        step = kpi.base if kpi.base is not None else source_step
        self.windows = _Windows(kpi, _Scope(kpi.calendar, kpi.interval_ms, step), _acc_factory(kpi))
        self.front: _BaseFront | None = None
        if kpi.base is not None:
            kind = {"sum": "sum", "energetic_mean": "energy", "lden": "energy"}.get(
                config.operator, "mean"
            )
            self.front = _BaseFront(kpi, kpi.base, kind, self.windows)

    def begin(self, origin: int) -> None:
        self.windows.begin(origin)
        if self.front is not None:
            self.front.begin(origin)

    def reading(self, t: int, value: float | None) -> None:
        x = _scaled(value, self.kpi.scale)
        if self.front is not None:
            self.front.reading(t, x)
            return
        windows = self.windows
        while t >= windows.end:
            windows.close()
        if x is not None:
            windows.acc.add(t, x)

    def item(self, start: int, end: int, value: float | None) -> None:
        self.windows.item(start, end, _scaled(value, self.kpi.scale))

    def advance(self, watermark: int) -> None:
        if self.kpi.config.source_kpi is not None:
            return  # driven by the source's outputs
        if self.front is not None:
            self.front.advance(watermark)
            return
        while self.windows.end <= watermark:
            self.windows.close()

    def jump(self, frm: int, to: int) -> None:
        if self.front is not None:
            self.front.skip(frm, to)
        self.windows.skip(frm, to)

    def finish(self, last: int) -> None:
        if self.front is not None:
            self.front.finish(last)
        self.windows.finish(last)

    def state(self) -> State:
        state = {"windows": self.windows.state()}
        if self.front is not None:
            state["front"] = self.front.state()
        return state

    def load(self, state: State) -> None:
        self.windows.load(state["windows"])
        if self.front is not None:
            self.front.load(state["front"])


class _Counter:
    """Consecutive valid readings of a cumulative counter → accepted deltas (§4)."""

    def __init__(self, kpi: _Kpi) -> None:
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


class _CounterRunner(_Runner):
    """``counter_delta``: deltas go to the window with ``start < t ≤ end`` (§3.2)."""

    def __init__(self, kpi: _Kpi) -> None:
        super().__init__(kpi)
        self.counter = _Counter(kpi)
        self.start = 0
        self.end = 0
        self._reset_window()

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
        x = _scaled(value, self.kpi.scale)
        if x is None:
            return
        delta, rollover, reset = self.counter.step(t, x)
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


class _DemandRunner(_Runner):
    """``demand``: counter deltas summed per demand block (``base``); peak block power."""

    def __init__(self, kpi: _Kpi) -> None:
        super().__init__(kpi)
        assert kpi.base is not None  # config: demand needs a base
        self.base = kpi.base
        self.counter = _Counter(kpi)
        self.block = [0, 0, 0, 0.0]  # start, end, accepted deltas, energy
        self.window = [0, 0]
        self._reset_window()

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
        x = _scaled(value, self.kpi.scale)
        if x is None:
            return
        delta, _, _ = self.counter.step(t, x)
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
        kpi = self.kpi
        start, end = self.window
        expected = kpi.calendar.count(self.base, start, end)
        mean_power = self.energy / self.hours if self.hours > 0 else None
        load_factor = None
        if mean_power is not None and self.peak > 0:
            load_factor = mean_power / self.peak
        output = kpi.output(
            start,
            end,
            self.peak,
            valid=is_valid(self.n, expected, kpi.min_coverage),
            n=self.n,
            expected=expected,
            extras={
                "peak_start": self.peak_start,
                "mean_power": mean_power,
                "load_factor": load_factor,
            },
        )
        kpi.emit(output, start, end)
        self.window = [end, kpi.calendar.next_window(kpi.window, end)[1]]
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


class _TimeWeightedRunner(_Runner):
    """``time_weighted_mean``: each valid reading holds until the next one or ``max_hold``."""

    def __init__(self, kpi: _Kpi) -> None:
        super().__init__(kpi)
        hold = kpi.config.max_hold_seconds
        self.max_hold_ms = round((hold if hold is not None else 0.0) * 1000)
        self.start = 0
        self.end = 0
        self.held: tuple[int, float] | None = None  # the last valid reading, still holding
        self._reset_window()

    def _reset_window(self) -> None:
        self.n = 0
        self.weighted = 0.0
        self.covered_ms = 0

    def begin(self, origin: int) -> None:
        self.start, self.end = self.kpi.calendar.window_at(self.kpi.window, origin)

    def _hold_until(self, until: int) -> None:
        """Credit the held reading's value over ``[max(t, start), min(until, t + max_hold))``."""
        if self.held is None:
            return
        t, x = self.held
        overlap = min(until, t + self.max_hold_ms, self.end) - max(t, self.start)
        if overlap > 0:
            self.weighted += x * (overlap / 1000)
            self.covered_ms += overlap

    def close(self) -> None:
        kpi = self.kpi
        self._hold_until(self.end)  # the next reading comes at or after the end
        length = self.end - self.start
        cover = self.covered_ms / length
        valid = self.covered_ms > 0 and cover >= kpi.min_coverage
        value = self.weighted / (self.covered_ms / 1000) if self.covered_ms > 0 else None
        output = kpi.output(
            self.start,
            self.end,
            value,
            valid=valid,
            n=self.n,
            expected=expected_items(length, kpi.interval_ms),
            extras={"covered_seconds": self.covered_ms / 1000},
            always=("covered_seconds",),
            cover=cover,
        )
        kpi.emit(output, self.start, self.end)
        self.start, self.end = self.end, kpi.calendar.next_window(kpi.window, self.end)[1]
        self._reset_window()

    def reading(self, t: int, value: float | None) -> None:
        while t >= self.end:
            self.close()
        self._hold_until(t)
        x = _scaled(value, self.kpi.scale)
        if x is None:
            self.held = None  # a bad reading ends the hold and holds nothing
            return
        self.held = (t, x)
        self.n += 1

    def advance(self, watermark: int) -> None:
        while self.end <= watermark:
            self.close()

    def jump(self, frm: int, to: int) -> None:
        self.advance(frm)
        # A hold is real time; the wall clock's jump is not: the hold ends at the jump.
        self._hold_until(frm)
        self.held = None
        if self.end <= to:
            self.close()
            self.begin(to)
            self._reset_window()

    def finish(self, last: int) -> None:
        while self.start <= last:
            self.close()

    def state(self) -> State:
        held = None if self.held is None else list(self.held)
        return {
            "window": [self.start, self.end, self.n, self.weighted, self.covered_ms],
            "held": held,
        }

    def load(self, state: State) -> None:
        start, end, n, weighted, covered = state["window"]
        self.start, self.end, self.n = int(start), int(end), int(n)
        self.weighted, self.covered_ms = float(weighted), int(covered)
        held = state["held"]
        self.held = None if held is None else (int(held[0]), float(held[1]))


class _RecentBases:
    """The last ``k`` base windows (start, end, value or None), padded before the span."""

    def __init__(self, kpi: _Kpi, k: int) -> None:
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


class _SlidingRunner(_Runner):
    """``running_mean`` and NowCast ``aqi_us_pm25``: one output per base window."""

    def __init__(self, kpi: _Kpi) -> None:
        super().__init__(kpi)
        assert kpi.base is not None  # config: sliding operators need a base
        self.is_nowcast = kpi.config.operator == "aqi_us_pm25"
        k = 12 if self.is_nowcast else kpi.window.seconds // kpi.base.seconds
        self.recent = _RecentBases(kpi, k)
        self.front = _BaseFront(kpi, kpi.base, "mean", self)

    def begin(self, origin: int) -> None:
        self.front.begin(origin)
        self.recent.begin(self.front.start)

    def reading(self, t: int, value: float | None) -> None:
        self.front.reading(t, _scaled(value, self.kpi.scale))

    def item(self, start: int, end: int, x: float | None) -> None:
        """A closed base window from the front."""
        self.recent.push(start, end, x)
        kpi, items = self.kpi, self.recent.items
        present = [value for _, _, value in items if value is not None]
        span_start = items[0][0]
        if self.is_nowcast:
            hours = [value for _, _, value in reversed(items)]
            result = nowcast(hours)
            extras: dict[str, Extra] = {"concentration": None, "category": None, "weight": None}
            aqi: int | None = None
            if result is not None:
                aqi, concentration = aqi_us_pm25(result[0])
                extras = {
                    "concentration": concentration,
                    "category": aqi_category(aqi),
                    "weight": result[1],
                }
            output = kpi.output(
                span_start,
                end,
                aqi,
                valid=result is not None,
                n=len(present),
                expected=self.recent.k,
                extras=extras,
            )
        else:
            total = 0.0
            for value in present:
                total += value
            valid = is_valid(len(present), self.recent.k, kpi.min_coverage)
            mean = total / len(present) if present else None
            output = kpi.output(
                span_start, end, mean, valid=valid, n=len(present), expected=self.recent.k
            )
        kpi.emit(output, start, end)

    def finish(self, last: int) -> None:
        self.front.finish(last)

    def advance(self, watermark: int) -> None:
        self.front.advance(watermark)

    def jump(self, frm: int, to: int) -> None:
        if self.front.skip(frm, to):
            self.recent.rebase(self.front.start)  # the bases of the jump are missing

    def state(self) -> State:
        return {"front": self.front.state(), "recent": self.recent.state()}

    def load(self, state: State) -> None:
        self.front.load(state["front"])
        self.recent.load(state["recent"])


class _DailyMaxRunner(_Runner):
    """``daily_max_running_mean``: the day's maximum running mean, per base that starts in it."""

    def __init__(self, kpi: _Kpi) -> None:
        super().__init__(kpi)
        assert kpi.base is not None
        running = kpi.config.running_window_duration
        assert running is not None  # config: required
        self.base = kpi.base
        self.recent = _RecentBases(kpi, running.seconds // kpi.base.seconds)
        self.front = _BaseFront(kpi, kpi.base, "mean", self)
        self.day = [0, 0]
        self._reset_day()

    def _reset_day(self) -> None:
        self.n = 0
        self.best = 0.0
        self.span = [0, 0]

    def begin(self, origin: int) -> None:
        self.front.begin(origin)
        self.recent.begin(self.front.start)
        self.day = list(self.kpi.calendar.window_at(self.kpi.window, origin))

    def reading(self, t: int, value: float | None) -> None:
        self.front.reading(t, _scaled(value, self.kpi.scale))

    def item(self, start: int, end: int, x: float | None) -> None:
        """A closed base window: the running mean ending with it is one item of its day."""
        kpi = self.kpi
        self.recent.push(start, end, x)
        items = self.recent.items
        present = [value for _, _, value in items if value is not None]
        while end > self.day[1]:
            self.close_day()
        if is_valid(len(present), self.recent.k, kpi.config.running_min_coverage):
            total = 0.0
            for value in present:
                total += value
            mean = total / len(present)
            if self.n == 0 or mean > self.best:
                self.best, self.span = mean, [items[0][0], end]
            self.n += 1
        if end == self.day[1]:
            self.close_day()

    def close_day(self) -> None:
        kpi = self.kpi
        start, end = self.day
        expected = kpi.calendar.count(self.base, start, end)
        output = kpi.output(
            start,
            end,
            self.best,
            valid=is_valid(self.n, expected, kpi.min_coverage),
            n=self.n,
            expected=expected,
            extras={"max_start": self.span[0], "max_end": self.span[1]},
        )
        kpi.emit(output, start, end)
        self.day = [end, kpi.calendar.next_window(kpi.window, end)[1]]
        self._reset_day()

    def finish(self, last: int) -> None:
        self.front.finish(last)
        # The bases after the last reading are missing, yet a running mean ending with one of
        # them may still hold enough valid bases (6 of 8): they are items of the day too.
        day_end = self.kpi.calendar.window_at(self.kpi.window, last)[1]
        while self.front.end <= day_end and self.day[0] <= last:
            self.front.close()
        while self.day[0] <= last:
            self.close_day()

    def advance(self, watermark: int) -> None:
        self.front.advance(watermark)

    def jump(self, frm: int, to: int) -> None:
        if self.day[1] <= to:
            self.finish(frm)
            self.front.begin(to)
            self.recent.rebase(self.front.start)
            self.day = list(self.kpi.calendar.window_at(self.kpi.window, to))
        else:  # one day holds the jump: at most a day of bases to close
            self.front.advance(to)

    def state(self) -> State:
        return {
            "front": self.front.state(),
            "recent": self.recent.state(),
            "day": [*self.day, self.n, self.best, *self.span],
        }

    def load(self, state: State) -> None:
        self.front.load(state["front"])
        self.recent.load(state["recent"])
        start, end, n, best, span_start, span_end = state["day"]
        self.day = [int(start), int(end)]
        self.n, self.best, self.span = int(n), float(best), [int(span_start), int(span_end)]


def _make_runner(kpi: _Kpi, source_step: KpiDuration | None) -> _Runner:
    operator = kpi.config.operator
    if operator == "counter_delta":
        return _CounterRunner(kpi)
    if operator == "demand":
        return _DemandRunner(kpi)
    if operator == "time_weighted_mean":
        return _TimeWeightedRunner(kpi)
    if operator == "daily_max_running_mean":
        return _DailyMaxRunner(kpi)
    if kpi.config.is_sliding:
        return _SlidingRunner(kpi)
    return _SimpleRunner(kpi, source_step)


# --------------------------------------------------------------------------------------------
# The engine


def _topological(kpis: Sequence[KpiConfig]) -> list[KpiConfig]:
    """Sources before the KPIs that read them (cycles are rejected by the config loader)."""
    by_name = {kpi.name: kpi for kpi in kpis}
    done: set[str] = set()
    order: list[KpiConfig] = []

    def visit(kpi: KpiConfig, depth: int) -> None:
        if kpi.name in done:
            return
        if depth > len(kpis):
            raise ValueError(f"KPI {kpi.name}: its kpi: sources form a cycle")
        source = by_name.get(kpi.source_kpi or "")
        if source is not None:
            visit(source, depth + 1)
        done.add(kpi.name)
        order.append(kpi)

    for kpi in kpis:
        visit(kpi, 0)
    return order


def _fingerprint(config: KpiConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


Source: TypeAlias = tuple[str, str]


class Engine:
    """Streaming KPI engine: :meth:`feed` readings, :meth:`advance` time, :meth:`finish` at end."""

    def __init__(self, kpis: Sequence[KpiConfig], tz: ZoneInfo, *, lateness_ms: int = 0,
                 max_step_ms: int | None = None) -> None:
        if lateness_ms < 0:
            raise ValueError(f"lateness_ms must be ≥ 0, got {lateness_ms}")
        if max_step_ms is not None and max_step_ms <= 0:
            raise ValueError(f"max_step_ms must be > 0, got {max_step_ms}")
        self.tz = tz
        self.max_step_ms = max_step_ms
        self.calendar = Calendar(tz)
        self.lateness_ms = lateness_ms
        self.configs = _topological(kpis)
        by_name = {kpi.name: kpi for kpi in self.configs}
        self._runners: dict[str, _Runner] = {}
        self._by_source: dict[Source, list[_Runner]] = {}
        self._dependents: dict[str, list[_Runner]] = {}
        for config in self.configs:
            kpi = _Kpi(config, self.calendar, self._emitter(config.name))
            source = by_name.get(config.source_kpi or "")
            runner = _make_runner(kpi, None if source is None else source.step_duration)
            self._runners[config.name] = runner
            if config.source_kpi is not None:
                self._dependents.setdefault(config.source_kpi, []).append(runner)
            else:
                device = config.source_device
                assert device is not None
                self._by_source.setdefault(device, []).append(runner)
        self._order = [self._runners[config.name] for config in self.configs]
        self._out: list[KpiOutput] = []
        self._now: int | None = None
        self._origin: int | None = None
        self._last: dict[Source, int] = {}
        self._buffer: list[tuple[int, int, str, str, float | None]] = []
        self._buffered: set[tuple[str, str, int]] = set()
        self._seq = 0
        self.late_dropped: dict[str, int] = {config.name: 0 for config in self.configs}
        self.duplicates = 0
        self.discarded: list[str] = []  # KPIs whose saved state did not match (restore)
        self.jumps: list[TimeJump] = []  # taken by the caller (take_jumps)
        self._behind = False  # the clock is behind the engine by more than max_step_ms
        self._finished = False

    @classmethod
    def from_config(cls, config: AgentConfig, *, lateness_ms: int = 0,
                    max_step_ms: int | None = None) -> Engine:
        """An engine for the ``[[kpis]]`` of a loaded config, in the gateway's zone."""
        return cls(config.kpis, config.gateway.tz, lateness_ms=lateness_ms,
                   max_step_ms=max_step_ms)

    @property
    def sources(self) -> frozenset[Source]:
        """The (device, point) pairs some KPI reads."""
        return frozenset(self._by_source)

    @property
    def now(self) -> int | None:
        """The latest time fed or advanced to (epoch ms), None before the first."""
        return self._now

    def _emitter(self, name: str) -> Emit:
        def emit(output: KpiOutput, step_start: int, step_end: int) -> None:
            self._out.append(output)
            value = output.value if output.valid else None
            x = None if value is None else float(value)
            for runner in self._dependents.get(name, ()):
                runner.item(step_start, step_end, x)

        return emit

    def _take(self) -> list[KpiOutput]:
        out, self._out = self._out, []
        out.sort(key=_sort_key)
        return out

    def start(self, origin_ms: int) -> None:
        """Open every KPI's first window: the one holding ``origin_ms``. Idempotent."""
        if self._origin is not None:
            return
        self._origin = origin_ms
        if self._now is None:
            self._now = origin_ms
        for runner in self._order:
            runner.begin(origin_ms)

    def _watermark(self) -> int | None:
        return None if self._now is None else self._now - self.lateness_ms

    def feed(self, reading: Reading) -> list[KpiOutput]:
        """Feed one reading; a bad quality or non-finite value is a present-but-invalid reading."""
        value: float | None = None
        if reading.quality == Quality.GOOD and reading.value is not None:
            number = float(reading.value)
            value = number if math.isfinite(number) else None
        return self.feed_value(reading.device, reading.point, reading.t, value)

    def feed_value(self, device: str, point: str, t: int, value: float | None) -> list[KpiOutput]:
        """Feed one reading as plain values (``value`` None = present but invalid)."""
        self._feed(device, point, t, value)
        return self._take()

    def _feed(self, device: str, point: str, t: int, value: float | None) -> None:
        if self._finished:
            raise RuntimeError("the engine has finished: create a new one")
        key = (device, point)
        runners = self._by_source.get(key)
        if runners is not None:
            self._check_step(t)
        watermark = self._watermark()
        if runners is not None:
            if watermark is not None and t < watermark:
                for runner in runners:
                    self.late_dropped[runner.kpi.name] += 1
                return
            if self.lateness_ms == 0:
                if self._last.get(key) == t:
                    self.duplicates += 1
                    return
                self._last[key] = t
                if self._origin is None:
                    self.start(t)
                for runner in runners:
                    runner.reading(t, value)
            elif (device, point, t) in self._buffered or self._last.get(key) == t:
                self.duplicates += 1
            else:
                self._buffered.add((device, point, t))
                heapq.heappush(self._buffer, (t, self._seq, device, point, value))
                self._seq += 1
        if self._now is None or t > self._now:
            self._now = t
        if self.lateness_ms:
            self._release(self._now - self.lateness_ms)

    def _release(self, upto: float) -> None:
        """Hand buffered readings with ``t ≤ upto`` to their KPIs, in time order."""
        buffer = self._buffer
        while buffer and buffer[0][0] <= upto:
            t, _, device, point, value = heapq.heappop(buffer)
            self._buffered.discard((device, point, t))
            self._last[(device, point)] = t
            if self._origin is None:
                self.start(t)
            for runner in self._by_source[(device, point)]:
                runner.reading(t, value)

    def advance(self, now_ms: int) -> list[KpiOutput]:
        """Move the engine clock to ``now_ms``: close every window ``now − lateness`` completed."""
        if self._finished:
            raise RuntimeError("the engine has finished: create a new one")
        self._check_step(now_ms)
        if self._now is None or now_ms > self._now:
            self._now = now_ms
        watermark = self._now - self.lateness_ms
        self._release(watermark)
        if self._origin is None:
            return self._take()  # no window opens before the first reading
        for runner in self._order:
            runner.advance(watermark)
        return self._take()

    def _check_step(self, t: int) -> None:
        """Handle ``t`` more than ``max_step_ms`` away from the engine's time (a clock step).

        Forward: the open windows close as at the end of input, the windows wholly inside the
        jump are skipped (not emitted), and the windows holding ``t`` open; one
        :class:`TimeJump` is recorded. Backward: nothing moves; the engine keeps its windows
        and counts readings before ``now − lateness`` as late until the clock is back, and
        one :class:`TimeJump` (negative) is recorded when the clock falls behind.
        """
        step = self.max_step_ms
        now = self._now
        if step is None or now is None:
            return
        if t < now - step:
            if not self._behind:
                self._behind = True
                self.jumps.append(TimeJump(now, t, 0))
            return
        if t >= now:
            self._behind = False
        if t - now <= step:
            return
        self._release(math.inf)  # every accepted reading is at or before now
        if self._origin is None:
            return  # nothing was fed: the first reading will open the windows
        to = max(now, t - self.lateness_ms)
        before = len(self._out)
        for runner in self._order:
            runner.jump(now, to)
        self.jumps.append(TimeJump(now, t, len(self._out) - before))
        self._now = t

    def rebase(self, t: int) -> list[KpiOutput]:
        """Give up the engine's time for ``t`` (earlier than it: a clock set back for good):
        the open windows close as at the end of input at the engine's time, and every KPI
        starts afresh at the window holding ``t``. Recorded as a :class:`TimeJump`."""
        if self._finished:
            raise RuntimeError("the engine has finished: create a new one")
        now = self._now
        self._release(math.inf)
        if now is not None and self._origin is not None:
            before = len(self._out)
            for runner in self._order:
                runner.finish(now)
            for runner in self._order:
                runner.begin(t)
            self.jumps.append(TimeJump(now, t, len(self._out) - before))
        self._now = t
        self._last.clear()
        self._behind = False
        return self._take()

    def take_jumps(self) -> list[TimeJump]:
        """The clock steps seen since the last call."""
        jumps, self.jumps = self.jumps, []
        return jumps

    def finish(self, last_ms: int | None = None) -> list[KpiOutput]:
        """Close every window through the one holding ``last_ms`` (default: now); end of input."""
        if self._finished:
            return []
        self._release(math.inf)
        last = self._now if last_ms is None else last_ms
        self._finished = True
        if last is None:
            return []
        self.start(last)
        for runner in self._order:
            runner.finish(last)
        return self._take()

    # ----------------------------------------------------------------------------------------
    # checkpointing

    def snapshot(self) -> dict[str, Any]:
        """All open state as plain lists, dicts, ints, floats, strings and None."""
        return {
            "version": SNAPSHOT_VERSION,
            "timezone": self.tz.key,
            "lateness_ms": self.lateness_ms,
            "now": self._now,
            "origin": self._origin,
            "finished": self._finished,
            "seq": self._seq,
            "last": [[device, point, t] for (device, point), t in self._last.items()],
            "buffer": [list(entry) for entry in sorted(self._buffer)],
            "late_dropped": dict(self.late_dropped),
            "duplicates": self.duplicates,
            "kpis": {
                name: {"config": _fingerprint(runner.kpi.config), "state": runner.state()}
                for name, runner in self._runners.items()
                if self._origin is not None
            },
        }

    @classmethod
    def restore(
        cls, config: AgentConfig, snapshot: Mapping[str, Any], *, lateness_ms: int | None = None
    ) -> Engine:
        """An engine for ``config`` that continues from ``snapshot``.

        A KPI whose definition changed since the snapshot (or that is new) starts afresh at
        the current window and is listed in :attr:`discarded`; so are all of them if the time
        zone changed.
        """
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"KPI snapshot version {snapshot.get('version')!r} is not {SNAPSHOT_VERSION}: "
                "discard the checkpoint"
            )
        lateness = int(snapshot["lateness_ms"]) if lateness_ms is None else lateness_ms
        engine = cls.from_config(config, lateness_ms=lateness)
        same_zone = snapshot.get("timezone") == engine.tz.key
        engine._now = snapshot["now"]
        engine._seq = int(snapshot["seq"])
        engine._finished = bool(snapshot["finished"])
        engine.duplicates = int(snapshot.get("duplicates", 0))
        engine._last = {(str(d), str(p)): int(t) for d, p, t in snapshot["last"]}
        for t, seq, device, point, value in snapshot["buffer"]:
            if (device, point) in engine._by_source:
                entry = (
                    int(t),
                    int(seq),
                    str(device),
                    str(point),
                    None if value is None else float(value),
                )
                engine._buffer.append(entry)
                engine._buffered.add((device, point, int(t)))
        heapq.heapify(engine._buffer)
        for name, count in snapshot["late_dropped"].items():
            if name in engine.late_dropped:
                engine.late_dropped[name] = int(count)
        origin = snapshot["origin"]
        if origin is None:
            return engine
        engine._origin = int(origin)
        saved: Mapping[str, Any] = snapshot["kpis"] if same_zone else {}
        fresh_from = engine._watermark()
        for name, runner in engine._runners.items():
            kept = saved.get(name)
            if kept is not None and kept["config"] == _fingerprint(runner.kpi.config):
                runner.load(kept["state"])
            else:
                engine.discarded.append(name)
                runner.begin(fresh_from if fresh_from is not None else engine._origin)
        return engine
