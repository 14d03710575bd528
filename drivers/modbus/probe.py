"""``ssc-agent probe``: read a register range and show every plausible decoding side by side.

A technician tells a meter's types, byte order and scale from what it answers. Decoding and
formatting are pure functions; only :func:`probe` and :func:`run_probe` touch the device.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from agent.errors import ConfigError, DeviceProtocolError, DeviceUnavailable
from drivers.modbus.codec import apply_scale, decode_registers
from drivers.modbus.config import BIT_TABLES, ByteOrder, PointType, Table
from drivers.modbus.tools import (
    Target,
    answer_values,
    chunk_ranges,
    describe_exception,
    open_client,
    read_table,
    unit_word,
)

__all__ = [
    "ProbeResult",
    "ProbeView",
    "RegisterRow",
    "WindowRow",
    "format_number",
    "format_probe_text",
    "probe",
    "probe_json",
    "register_rows",
    "run_probe",
    "window_rows",
]

MAX_REGISTERS = 125  # Modbus limit per read of registers (FC03/FC04)
MAX_BITS = 2000  # … and of coils/discrete inputs (FC01/FC02)
ORDERS = (ByteOrder.ABCD, ByteOrder.CDAB, ByteOrder.BADC, ByteOrder.DCBA)


# --- decoding and formatting (pure) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterRow:
    """One register: its raw word and its 16-bit readings (scaled)."""

    address: int
    raw: int
    u16: int | float
    i16: int | float


@dataclass(frozen=True, slots=True)
class WindowRow:
    """The registers from ``address`` read as one wider value: type → byte order → value."""

    address: int
    values: dict[PointType, dict[ByteOrder, int | float]]


def register_rows(address: int, registers: Sequence[int], scale: float = 1.0) -> list[RegisterRow]:
    """Each register as raw word, u16 and i16, the latter two scaled."""
    rows: list[RegisterRow] = []
    for i, word in enumerate(registers):
        u16 = decode_registers([word], PointType.U16, ByteOrder.ABCD)
        i16 = decode_registers([word], PointType.I16, ByteOrder.ABCD)
        u16_scaled, i16_scaled = apply_scale(u16, scale, 0.0), apply_scale(i16, scale, 0.0)
        rows.append(RegisterRow(address + i, word, u16_scaled, i16_scaled))
    return rows


def window_rows(
    address: int, registers: Sequence[int], scale: float = 1.0, *, f64: bool = False
) -> list[WindowRow]:
    """Every 2-register window as u32/i32/f32 in the four byte orders (and 4-register f64)."""
    rows: list[WindowRow] = []
    types = [PointType.U32, PointType.I32, PointType.F32]
    for i in range(len(registers) - 1):
        values: dict[PointType, dict[ByteOrder, int | float]] = {}
        for type_ in [*types, PointType.F64] if f64 and i + 3 < len(registers) else types:
            width = 4 if type_ is PointType.F64 else 2
            words = registers[i : i + width]
            values[type_] = {
                order: apply_scale(decode_registers(words, type_, order), scale, 0.0)
                for order in ORDERS
            }
        rows.append(WindowRow(address + i, values))
    return rows


def format_number(value: int | float, type_: PointType = PointType.U32, width: int = 12) -> str:
    """A decoded value in at most ``width`` characters, with the digits its type carries."""
    if isinstance(value, int):
        text = str(value)
    elif math.isnan(value):
        return "nan"
    elif math.isinf(value):
        return "inf" if value > 0 else "-inf"
    else:
        # float32 carries ~7 significant digits; more would print noise (0.1 → 0.1000000015).
        digits = {PointType.F32: 7, PointType.F64: 15}.get(type_, 10)
        text = f"{value:.{digits}g}"
    for digits in range(width - 7, -1, -1):  # fewer digits until it fits (e+100 is wide)
        if len(text) <= width:
            break
        text = f"{value:.{digits}e}"
    return text


def _range_text(table: Table, address: int, count: int) -> str:
    if count == 1:
        return f"{unit_word(table, 1)} {address} (0x{address:04X})"
    last = address + count - 1
    hex_span = f"0x{address:04X}-0x{last:04X}"
    return f"{unit_word(table, count)} {address}-{last} ({hex_span}), {count} in all"


@dataclass(frozen=True, slots=True)
class ProbeView:
    """What a probe shows: the values read from ``address`` on, and how to decode them."""

    label: str
    unit: int
    table: Table
    address: int
    values: Sequence[int]
    scale: float = field(default=1.0, kw_only=True)
    f64: bool = field(default=False, kw_only=True)


def format_probe_text(view: ProbeView) -> str:
    """The probe table for a terminal of 80 columns: registers, then wider values."""
    table, address, values, scale, f64 = view.table, view.address, view.values, view.scale, view.f64
    lines = [f"{view.label} unit {view.unit}", _range_text(table, address, len(values)), ""]
    if table in BIT_TABLES:
        lines.append(f"{'address':>7}  {'hex':>6}  {'value':>5}")
        lines += [f"{address + i:>7}  0x{address + i:04X}  {v:>5}" for i, v in enumerate(values)]
        return "\n".join(lines) + "\n"
    scaled = "" if scale == 1 else f", scaled ×{format_number(scale, PointType.F64)}"
    lines.append(f"{'address':>7}  {'hex':>6}  {'raw':>4}  {'u16':>13}  {'i16':>13}{scaled}")
    for reg in register_rows(address, values, scale):
        u16 = format_number(reg.u16, PointType.U16)
        i16 = format_number(reg.i16, PointType.I16)
        lines.append(f"{reg.address:>7}  0x{reg.address:04X}  {reg.raw:04X}  {u16:>13}  {i16:>13}")
    windows = window_rows(address, values, scale, f64=f64)
    if windows:
        span = "N..N+1" + (" (f64: N..N+3)" if f64 else "")
        lines += ["", f"registers {span} as one value, in each byte order{scaled}"]
        lines.append(
            f"{'address':>7}  {'hex':>6}  {'type':>4}" + "".join(f"  {o.value:>12}" for o in ORDERS)
        )
        for row in windows:
            for n, (type_, by_order) in enumerate(row.values.items()):
                where = f"{row.address:>7}  0x{row.address:04X}" if n == 0 else " " * 15
                cells = "".join(f"  {format_number(by_order[o], type_):>12}" for o in ORDERS)
                lines.append(f"{where}  {type_.value:>4}{cells}")
    return "\n".join(lines) + "\n"


def _json_number(value: int | float) -> int | float | None:
    # JSON has no NaN or infinity; null says "no number" to any strict parser.
    return value if isinstance(value, int) or math.isfinite(value) else None


def probe_json(view: ProbeView, error: str | None = None) -> dict[str, Any]:
    """The probe result as a JSON-ready dict (non-finite floats become null)."""
    table, address, values, scale, f64 = view.table, view.address, view.values, view.scale, view.f64
    out: dict[str, Any] = {
        "target": view.label,
        "unit": view.unit,
        "table": table.value,
        "address": address,
        "count": len(values),
        "scale": scale,
    }
    if table in BIT_TABLES:
        out["bits"] = [{"address": address + i, "value": int(v)} for i, v in enumerate(values)]
    else:
        out["registers"] = [
            {
                "address": r.address,
                "hex": f"0x{r.address:04X}",
                "raw": f"{r.raw:04X}",
                "u16": r.u16,
                "i16": r.i16,
            }
            for r in register_rows(address, values, scale)
        ]
        out["windows"] = [
            {
                "address": w.address,
                **{
                    t.value: {o.value: _json_number(v) for o, v in by_order.items()}
                    for t, by_order in w.values.items()
                },
            }
            for w in window_rows(address, values, scale, f64=f64)
        ]
    out["error"] = error
    return out


@dataclass
class ProbeResult:
    """What a probe read: the values of the range's first part, and the error that ended it."""

    values: list[int] = field(default_factory=list)
    error: DeviceProtocolError | DeviceUnavailable | None = None


async def probe(
    target: Target,
    *,
    unit: int,
    table: Table,
    address: int,
    count: int,
    timeout_seconds: float,
    retries: int = 1,
) -> ProbeResult:
    """Read the range in requests of at most 125 registers (2000 bits); stop at a failure."""
    if not 0 < count <= 0x10000 - address:
        raise ConfigError(f"--count {count}: read 1..{0x10000 - address} from address {address}")
    client = await open_client(target, timeout_seconds, retries)
    result = ProbeResult()
    try:
        limit = MAX_BITS if table in BIT_TABLES else MAX_REGISTERS
        for first, n in chunk_ranges(address, count, limit):
            answer = await read_table(client, table, first, n, unit)
            if answer is None:
                result.error = DeviceUnavailable(
                    f"{target.label}: no answer from unit {unit} within {timeout_seconds:g} s, "
                    f"{retries + 1} tries ({unit_word(table, n)} at 0x{first:04X}): check "
                    "--unit, the wiring, "
                    "baud rate and parity, or raise --timeout"
                )
                break
            if answer.isError():
                code = int(answer.exception_code)
                text = describe_exception(code, table, first, n, unit)
                result.error = DeviceProtocolError(f"{target.label} unit {unit}: {text}", code=code)
                break
            values = answer_values(answer, table, n)
            if len(values) < n:
                result.error = DeviceProtocolError(
                    f"{target.label} unit {unit}: asked for {n} {unit_word(table, n)} at "
                    f"0x{first:04X}, got {len(values)}: the device answered short"
                )
                break
            result.values.extend(values)
    finally:
        client.close()
    return result


async def run_probe(
    target: Target,
    *,
    unit: int,
    table: Table,
    address: int,
    count: int,
    scale: float = 1.0,
    timeout_seconds: float = 1.0,
    output: Literal["text", "json"] = "text",
    f64: bool = False,
    out: IO[str],
) -> int:
    """``ssc-agent probe``: print the decodings; raise the error that stopped the read."""
    result = await probe(
        target,
        unit=unit,
        table=table,
        address=address,
        count=count,
        timeout_seconds=timeout_seconds,
    )
    error = str(result.error) if result.error is not None else None
    view = ProbeView(target.label, unit, table, address, result.values, scale=scale, f64=f64)
    if output == "json":
        out.write(json.dumps(probe_json(view, error), ensure_ascii=False) + "\n")
    elif result.values:
        out.write(format_probe_text(view))
    out.flush()
    if result.error is not None:
        raise result.error
    return 0
