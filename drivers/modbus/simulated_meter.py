"""A Modbus device simulated from a device profile: its registers as a pure function of time.

A profile's ``[simulate]`` table says how each point's value moves; one key per point name,
each an inline table with a ``kind``:

```toml
[simulate]
voltage_l1    = { kind = "noise", base = 230.0, spread = 1.5, resolution = 0.1 }
energy_import = { kind = "counter", start = 12345.0, rate_per_hour = 4.2, resolution = 0.001 }
frequency     = { kind = "constant", value = 50.0 }
defined       = { input = [[0x00, 0x4F], [0x156, 0x157]] }   # optional, see below
```

- ``constant``: always ``value``.
- ``noise``: ``base`` plus uniform noise in ``[-spread, +spread]``, drawn afresh every time
  step (``step_seconds`` of the meter, 1 s by default) from the seed, the point name and the
  step number, so a given seed and time always give the same value.
- ``counter``: ``start + rate_per_hour × elapsed hours`` since the meter's start time ``t0``;
  never decreases.
- ``resolution`` (noise, counter; default 0.01): values are quantized to it, as a real meter's
  finite resolution does (it matters for compression on the wire). Counters round down.
- A point without a hint is a constant 0.
- ``defined`` (optional): extra address ranges ``[first, last]`` per table (``holding``,
  ``input``, ``coil``, ``discrete``) that the device answers, beyond what is derived.

Values are engineering values (after ``scale`` and ``offset``); integer points store
``round((value - offset) / scale)``, clamped to the type's range, and report the value that
raw number stands for. A simulated device answers for every register of its points, for the
gaps between neighbouring points up to the profile's ``max_gap`` (so any plan the profile's
defaults allow can be read), and for the ``defined`` ranges; ``forbidden_ranges`` of the
profile stay undefined (illegal address, exception 2) unless a point lies there. Anything
else also answers exception 2, like a real device.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, TypeVar

from agent.profiles import Profile
from agent.schema import ConfigModel, Field, ValidationError
from drivers.modbus.codec import apply_scale, encode_value, is_float_type
from drivers.modbus.config import BIT_TABLES, ModbusPoint, PointType, Table

if TYPE_CHECKING:
    from pymodbus.simulator import SimAction, SimDevice

__all__ = ["ConstantHint", "CounterHint", "NoiseHint", "SimulatedMeter"]

_INT_RANGE: dict[PointType, tuple[int, int]] = {
    PointType.U16: (0, 2**16 - 1),
    PointType.I16: (-(2**15), 2**15 - 1),
    PointType.U32: (0, 2**32 - 1),
    PointType.I32: (-(2**31), 2**31 - 1),
    PointType.U64: (0, 2**64 - 1),
    PointType.I64: (-(2**63), 2**63 - 1),
    PointType.BOOL: (0, 1),
}
_DEFINED_KEY = "defined"


class _Hint(ConfigModel):
    allow_inf_nan = True  # a device may hold NaN or ±inf in a float register


class ConstantHint(_Hint):
    """The value never changes."""

    kind: Literal["constant"]
    value: int | float = 0


class NoiseHint(_Hint):
    """Base value plus seeded uniform noise, new each time step."""

    kind: Literal["noise"]
    base: float
    spread: float = Field(ge=0)
    resolution: float = Field(default=0.01, gt=0)


class CounterHint(_Hint):
    """A counter rising at a constant rate from its start value."""

    kind: Literal["counter"]
    start: float = 0.0
    rate_per_hour: float = Field(ge=0)
    resolution: float = Field(default=0.01, gt=0)


Hint = ConstantHint | NoiseHint | CounterHint
_HINT_KINDS: dict[str, type[Hint]] = {
    "constant": ConstantHint,
    "noise": NoiseHint,
    "counter": CounterHint,
}


class _Defined(ConfigModel):
    """``[simulate.defined]``: address ranges that answer besides the points, per table."""

    holding: list[tuple[int, int]] = Field(default_factory=list)
    input: list[tuple[int, int]] = Field(default_factory=list)
    coil: list[tuple[int, int]] = Field(default_factory=list)
    discrete: list[tuple[int, int]] = Field(default_factory=list)

    def by_table(self) -> dict[Table, list[tuple[int, int]]]:
        return {table: getattr(self, table.value) for table in Table}


def _hint(name: str, raw: object) -> Hint:
    """One ``[simulate.NAME]`` table as the hint its ``kind`` names."""
    kind = raw.get("kind") if isinstance(raw, dict) else None
    model = _HINT_KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ValueError(f"{name}.kind: must be one of {', '.join(_HINT_KINDS)}")
    return _validated(model, raw, name)


_M = TypeVar("_M", bound=ConfigModel)


def _validated(model: type[_M], raw: object, where: str) -> _M:
    """``raw`` as ``model``; else a ValueError naming its first problem's place under ``where``."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in (where, *first.loc))
        raise ValueError(f"{loc}: {first.message}") from exc


def _quantize(value: float, resolution: float, *, down: bool = False) -> float | int:
    # A tiny epsilon keeps 0.3 / 0.1 = 2.9999999999999996 from flooring to 2.
    steps = math.floor(value / resolution + 1e-9) if down else round(value / resolution)
    return apply_scale(steps, resolution, 0.0)


def _runs(addresses: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted addresses as inclusive (first, last) runs."""
    runs: list[tuple[int, int]] = []
    for address in sorted(set(addresses)):
        if runs and runs[-1][1] == address - 1:
            runs[-1] = (runs[-1][0], address)
        else:
            runs.append((address, address))
    return runs


class SimulatedMeter:
    """A device simulated from a profile; values are a pure function of seed and time."""

    def __init__(
        self,
        profile: Profile,
        seed: int | str = 0,
        *,
        t0: float = 0.0,
        step_seconds: float = 1.0,
    ) -> None:
        if step_seconds <= 0:
            raise ValueError(f"step_seconds must be greater than zero, got {step_seconds}")
        self.profile = profile
        self.seed = seed
        self.t0 = t0
        self.step_seconds = step_seconds
        where = f"profile {profile.name} ({profile.path})"
        try:
            self.points = [ModbusPoint.model_validate(p) for p in profile.points]
        except ValidationError as exc:
            raise ValueError(f"{where}: invalid point: {exc.errors()[0].message}") from exc
        if not self.points:
            raise ValueError(f"{where}: has no [[points]] to simulate")
        names = {p.name for p in self.points}
        raw_hints = dict(profile.simulate)
        defined = raw_hints.pop(_DEFINED_KEY, {}) if _DEFINED_KEY not in names else {}
        try:
            hints = {name: _hint(str(name), raw) for name, raw in raw_hints.items()}
            extra = _validated(_Defined, defined, _DEFINED_KEY).by_table()
        except ValueError as exc:
            raise ValueError(f"{where}: [simulate] {exc}") from exc
        unknown = sorted(set(hints) - names)
        if unknown:
            raise ValueError(f"{where}: [simulate] names no such point(s) {unknown}")
        self._hints = hints
        self.defined = self._defined_addresses(extra)

    def _defined_addresses(
        self, extra: Mapping[Table, Sequence[tuple[int, int]]]
    ) -> dict[Table, list[tuple[int, int]]]:
        max_gap = int(self.profile.defaults.get("max_gap", 0))
        forbidden = [tuple(r) for r in self.profile.defaults.get("forbidden_ranges", [])]
        result: dict[Table, list[tuple[int, int]]] = {}
        for table in Table:
            spans = sorted(
                (p.address, p.address + p.width - 1) for p in self.points if p.table is table
            )
            own = {a for first, last in spans for a in range(first, last + 1)}
            filled = set(own)
            for (_, end), (start, _) in itertools.pairwise(spans):
                if 0 < start - end - 1 <= max_gap:
                    filled.update(range(end + 1, start))
            for first, last in extra.get(table, []):
                filled.update(range(first, last + 1))
            for first, last in forbidden:
                filled -= set(range(first, last + 1)) - own
            if filled:
                result[table] = _runs(filled)
        return result

    def _value(self, name: str, t: float) -> float | int:
        hint = self._hints.get(name)
        if hint is None:
            return 0.0
        if isinstance(hint, ConstantHint):
            return hint.value
        if isinstance(hint, CounterHint):
            hours = max(0.0, t - self.t0) / 3600.0
            return _quantize(hint.start + hint.rate_per_hour * hours, hint.resolution, down=True)
        step = math.floor(t / self.step_seconds)
        rng = random.Random(f"{self.seed}/{name}/{step}")
        return _quantize(hint.base + rng.uniform(-hint.spread, hint.spread), hint.resolution)

    def _raw(self, point: ModbusPoint, value: float | int) -> int | float:
        """The number the device stores for an engineering value."""
        if point.scale == 1 and point.offset == 0 and isinstance(value, int):
            unscaled: int | float = value  # a float would round 64-bit integers
        else:
            unscaled = (value - point.offset) / point.scale
        if is_float_type(point.type):
            return value if point.scale == 1 and point.offset == 0 else unscaled
        if point.type is PointType.BOOL:
            return int(unscaled >= 0.5)
        low, high = _INT_RANGE[point.type]
        if isinstance(unscaled, float) and not math.isfinite(unscaled):
            return 0
        return min(high, max(low, round(unscaled)))

    def values_at(self, t: float) -> dict[str, float | int]:
        """Each point's engineering value at time ``t`` (epoch seconds), as served."""
        values: dict[str, float | int] = {}
        for point in self.points:
            value = self._value(point.name, t)
            if is_float_type(point.type):
                values[point.name] = float(value)
            else:
                values[point.name] = apply_scale(self._raw(point, value), point.scale, point.offset)
        return values

    def registers_at(self, t: float) -> dict[Table, dict[int, int]]:
        """Per table, address → register (or bit: 0/1) of every defined address at ``t``."""
        tables: dict[Table, dict[int, int]] = {
            table: {a: 0 for first, last in runs for a in range(first, last + 1)}
            for table, runs in self.defined.items()
        }
        for point in self.points:
            raw = self._raw(point, self._value(point.name, t))
            words = encode_value(raw, point.type, point.byte_order)
            if point.table in BIT_TABLES:
                words = [1 if words[0] else 0]
            for i, word in enumerate(words):
                tables[point.table][point.address + i] = word
        return tables

    def sim_device(self, unit: int, t: float, action: SimAction | None = None) -> SimDevice:
        """The pymodbus ``SimDevice`` serving this meter as ``unit``, registers as at ``t``."""
        registers = self.registers_at(t)
        return sim_device(
            unit,
            lambda table: self.defined.get(table, []),
            lambda table, address: registers[table][address],
            action,
        )


def sim_device(
    unit: int,
    runs: Callable[[Table], Sequence[tuple[int, int]]],
    value: Callable[[Table, int], int],
    action: SimAction | None = None,
) -> SimDevice:
    """A pymodbus ``SimDevice`` answering for the address ``runs`` of each table (inclusive
    ``(first, last)`` pairs), each address holding ``value(table, address)``."""
    from pymodbus.simulator import DataType, SimData, SimDevice

    blocks: dict[Table, list[SimData]] = {}
    for table in Table:
        if table in BIT_TABLES:
            entries = [
                SimData(first, values=[bool(value(table, a)) for a in range(first, last + 1)],
                        datatype=DataType.BITS)
                for first, last in runs(table)
            ]
            # pymodbus needs every block non-empty; 16 spare bits at the very top.
            blocks[table] = entries or [
                SimData(65520, values=[False] * 16, datatype=DataType.BITS)
            ]
        else:
            entries = [
                SimData(first, values=[value(table, a) for a in range(first, last + 1)],
                        datatype=DataType.REGISTERS)
                for first, last in runs(table)
            ]
            blocks[table] = entries or [SimData(0, datatype=DataType.INVALID)]
    return SimDevice(
        id=unit,
        action=action,
        simdata=(
            blocks[Table.COIL],
            blocks[Table.DISCRETE],
            blocks[Table.HOLDING],
            blocks[Table.INPUT],
        ),
    )
