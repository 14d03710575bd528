"""Technician tools for Modbus: ``ssc-agent probe`` and ``ssc-agent scan``.

``probe`` reads a register range from a live device and shows every plausible decoding side
by side, so a technician can tell a meter's types, byte order and scale from what it answers.
``scan`` finds which unit ids answer on a line or behind a gateway.

The tools build their own pymodbus client from a URL-ish target (``tcp://HOST:PORT``,
``rtu+tcp://HOST:PORT`` or a serial port), independent of any device config. Parsing,
decoding and formatting are pure functions; only :func:`run_probe` and :func:`run_scan` (and
the helpers they call) touch the network. pymodbus is imported inside those, so that loading
the CLI stays quick on a Pi.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Literal

from agent.errors import ConfigError, DeviceProtocolError, DeviceUnavailable
from drivers.modbus.bus import SerialSettings
from drivers.modbus.codec import EXCEPTION_MEANINGS, apply_scale, decode_registers
from drivers.modbus.config import BIT_TABLES, ByteOrder, PointType, Table

if TYPE_CHECKING:
    from pymodbus.client import ModbusBaseClient
    from pymodbus.pdu import ModbusPDU

__all__ = [
    "EXCEPTION_MEANINGS",
    "ProbeResult",
    "RegisterRow",
    "Target",
    "TcpTarget",
    "UnitAnswer",
    "WindowRow",
    "chunk_ranges",
    "compress_ids",
    "describe_exception",
    "format_number",
    "format_probe_text",
    "format_scan_summary",
    "format_unit_line",
    "parse_address",
    "parse_endpoint",
    "parse_units",
    "probe_json",
    "register_rows",
    "run_probe",
    "run_scan",
    "target_from",
    "window_rows",
]

MAX_REGISTERS = 125  # Modbus limit per read of registers (FC03/FC04)
MAX_BITS = 2000  # … and of coils/discrete inputs (FC01/FC02)
RTU_QUIET_SECONDS = 0.1  # after a timeout on RTU a late answer would shift every later one
ORDERS = (ByteOrder.ABCD, ByteOrder.CDAB, ByteOrder.BADC, ByteOrder.DCBA)
FUNCTION_CODE = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}


# --- targets and arguments (pure) ----------------------------------------------------------

_ENDPOINT = re.compile(
    r"^(?P<scheme>tcp|rtu\+tcp)://(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\])(?::(?P<port>\d{1,5}))?$"
)


@dataclass(frozen=True, slots=True)
class TcpTarget:
    """A device reached over TCP: Modbus TCP, or RTU frames through a serial device server."""

    host: str
    port: int = 502
    rtu: bool = False

    @property
    def label(self) -> str:
        """The target as the user writes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rtu+tcp' if self.rtu else 'tcp'}://{host}:{self.port}"


Target = TcpTarget | SerialSettings


def _is_gateway_tcp(target: Target) -> bool:
    """Modbus TCP: a server or gateway that may answer exception 4 for absent units."""
    return isinstance(target, TcpTarget) and not target.rtu


def parse_endpoint(text: str) -> TcpTarget:
    """Parse ``tcp://HOST[:PORT]`` or ``rtu+tcp://HOST[:PORT]`` (port 502 when left out)."""
    match = _ENDPOINT.match(text.strip())
    port = int(match.group("port") or 502) if match else 0
    if match is None or not 0 < port < 65536:
        raise ValueError(
            f"{text!r} is not an endpoint: write tcp://HOST:PORT (Modbus TCP) or "
            "rtu+tcp://HOST:PORT (RTU through a serial device server), e.g. tcp://10.0.0.5:502"
        )
    host = match.group("host").strip("[]")
    return TcpTarget(host, port, rtu=match.group("scheme") == "rtu+tcp")


def target_from(
    endpoint: str | None,
    serial: str | None,
    *,
    baudrate: int = 9600,
    parity: str = "N",
    stopbits: int = 1,
    bytesize: int = 8,
) -> Target:
    """The target of ``--endpoint`` or ``--serial``; ConfigError names the bad option."""
    if (endpoint is None) == (serial is None):
        raise ConfigError("give exactly one of --endpoint tcp://HOST:PORT or --serial PATH")
    if endpoint is not None:
        try:
            return parse_endpoint(endpoint)
        except ValueError as exc:
            raise ConfigError(f"--endpoint: {exc}") from exc
    assert serial is not None
    if parity not in ("N", "E", "O"):
        raise ConfigError(f"--parity {parity!r}: write N (none), E (even) or O (odd)")
    if stopbits not in (1, 2):
        raise ConfigError(f"--stopbits {stopbits}: write 1 or 2")
    if bytesize not in (7, 8):
        raise ConfigError(f"--bytesize {bytesize}: write 7 or 8")
    if baudrate <= 0:
        raise ConfigError(f"--baudrate {baudrate}: write a positive rate, e.g. 9600")
    return SerialSettings(serial, baudrate, parity, stopbits, bytesize)


def parse_address(text: str) -> int:
    """A register address in decimal or hex (``256``, ``0x0100``), 0..65535."""
    try:
        value = int(text, 0)
    except ValueError:
        message = f"{text!r} is not an address: write a number, e.g. 256 or 0x0100"
        raise ValueError(message) from None
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{text!r} is outside 0..65535 (0x0000..0xFFFF)")
    return value


def parse_units(text: str) -> list[int]:
    """Unit ids from ``1-247``, ``5`` or ``1,3,10-12``: sorted, each once, within 0..255."""
    units: set[int] = set()
    for raw_part in text.split(","):
        part = raw_part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if match is None:
            raise ValueError(f"{part!r} is not a unit range: write e.g. 1-247 or 1,3,10-12")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if not 0 <= first <= last <= 255:
            raise ValueError(f"{part!r}: unit ids go from 0 to 255, the first not above the last")
        units.update(range(first, last + 1))
    return sorted(units)


def compress_ids(ids: Sequence[int]) -> str:
    """``[1, 3, 4, 5, 9]`` → ``"1, 3-5, 9"``."""
    runs: list[list[int]] = []
    for unit in sorted(set(ids)):
        if runs and runs[-1][1] == unit - 1:
            runs[-1][1] = unit
        else:
            runs.append([unit, unit])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def chunk_ranges(address: int, count: int, limit: int) -> list[tuple[int, int]]:
    """``(address, count)`` reads of at most ``limit`` that cover the range in order."""
    if count < 1 or limit < 1:
        raise ValueError(f"count ({count}) and limit ({limit}) must be at least 1")
    return [(a, min(limit, address + count - a)) for a in range(address, address + count, limit)]


def _unit_word(table: Table, count: int) -> str:
    kind = {
        Table.HOLDING: "holding register",
        Table.INPUT: "input register",
        Table.COIL: "coil",
        Table.DISCRETE: "discrete input",
    }[table]
    return kind if count == 1 else kind + "s"


def describe_exception(code: int, table: Table, address: int, count: int, unit: int) -> str:
    """One line for an exception answer: its code, its meaning, and what to do."""
    meaning = EXCEPTION_MEANINGS.get(code, "unknown exception code")
    head = f"exception {code}: {meaning}"
    first, last = f"0x{address:04X}", f"0x{address + count - 1:04X}"
    kind = _unit_word(table, 1)
    if code == 1:
        return (
            f"{head} — unit {unit} does not serve {_unit_word(table, 2)} "
            f"(function code {FUNCTION_CODE[table]}): try another --table"
        )
    if code == 2:
        if count == 1:
            return f"{head} — the device has no {kind} at {first}"
        return (
            f"{head} — the device has no {kind} somewhere in {first}-{last}: "
            "probe a smaller range to find which"
        )
    if code == 3:
        return f"{head} — the device refuses to read {count} at once: try a smaller --count"
    if code == 4:
        return (
            f"{head} — the device failed, or a gateway answered for a unit {unit} it does "
            "not have: check --unit"
        )
    if code in (5, 6):
        return f"{head} — the device is busy: try again in a moment"
    if code in (10, 11):
        return (
            f"{head} — nothing answered behind the gateway as unit {unit}: check --unit and "
            "the gateway's serial side (wiring, baud rate, parity)"
        )
    return head


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
        return f"{_unit_word(table, 1)} {address} (0x{address:04X})"
    last = address + count - 1
    hex_span = f"0x{address:04X}-0x{last:04X}"
    return f"{_unit_word(table, count)} {address}-{last} ({hex_span}), {count} in all"


def format_probe_text(
    label: str,
    unit: int,
    table: Table,
    address: int,
    values: Sequence[int],
    *,
    scale: float = 1.0,
    f64: bool = False,
) -> str:
    """The probe table for a terminal of 80 columns: registers, then wider values."""
    lines = [f"{label} unit {unit}", _range_text(table, address, len(values)), ""]
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


def probe_json(
    label: str,
    unit: int,
    table: Table,
    address: int,
    values: Sequence[int],
    *,
    scale: float = 1.0,
    f64: bool = False,
    error: str | None = None,
) -> dict[str, Any]:
    """The probe result as a JSON-ready dict (non-finite floats become null)."""
    out: dict[str, Any] = {
        "target": label,
        "unit": unit,
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


AnswerKind = Literal["value", "exception", "gateway", "silent"]


@dataclass(frozen=True, slots=True)
class UnitAnswer:
    """What one unit id answered to the scan's one-register read."""

    unit: int
    kind: AnswerKind
    value: int | None = None
    code: int | None = None

    @property
    def found(self) -> bool:
        """The unit is alive: it answered a value or an exception of its own."""
        return self.kind in ("value", "exception")


def classify_exception(code: int, target: Target) -> AnswerKind:
    """Whether an exception answer shows a live unit or only a gateway speaking for it."""
    if code in (10, 11):
        return "gateway"  # the gateway's own "nobody behind me answered"
    if code == 4 and _is_gateway_tcp(target):
        # Modbus TCP servers and gateways (pymodbus among them) answer 4 for unit ids they do
        # not have; over RTU a missing unit is silent, so a 4 there is a real device failing.
        return "gateway"
    return "exception"


def format_unit_line(answer: UnitAnswer, table: Table, address: int) -> str:
    """One line for a unit that answered."""
    where = f"{table.value} 0x{address:04X}"
    if answer.kind == "value":
        value = answer.value if answer.value is not None else 0
        shown = f"{value}" if table in BIT_TABLES else f"0x{value:04X} ({value})"
        return f"unit {answer.unit:>3}  answered: {where} = {shown}"
    if answer.kind == "exception":
        meaning = EXCEPTION_MEANINGS.get(answer.code or 0, "unknown exception code")
        return (
            f"unit {answer.unit:>3}  answered exception {answer.code}: {meaning} "
            f"(alive; {where} gave no value)"
        )
    if answer.kind == "gateway":
        return f"unit {answer.unit:>3}  gateway answered exception {answer.code} (no device)"
    return f"unit {answer.unit:>3}  no answer"


def format_scan_summary(answers: Sequence[UnitAnswer], target: Target) -> list[str]:
    """The closing lines of a scan: what was found, and what only a gateway answered for."""
    tried = [a.unit for a in answers]
    found = [a.unit for a in answers if a.found]
    gateway = [a for a in answers if a.kind == "gateway"]
    lines = [
        f"found {len(found)} unit(s) of {len(tried)} tried ({compress_ids(tried)}) "
        f"on {target.label}" + (f": {compress_ids(found)}" if found else "")
    ]
    if gateway:
        codes = sorted({a.code for a in gateway if a.code is not None})
        lines += [
            f"gateway answered exception {'/'.join(str(c) for c in codes)} for "
            f"{len(gateway)} unit(s) ({compress_ids([a.unit for a in gateway])}): not found",
            "  (a Modbus TCP server or gateway answers so for units it does not have)",
        ]
    return lines


# --- talking to the device -----------------------------------------------------------------


def _quiet_pymodbus() -> None:
    import logging

    # pymodbus logs frame dumps and tracebacks for every unanswered request; the tools say
    # what happened in their own words.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


async def _open(target: Target, timeout_seconds: float, retries: int) -> ModbusBaseClient:
    """A connected pymodbus client for the target, or DeviceUnavailable."""
    from pymodbus import FramerType
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

    _quiet_pymodbus()
    client: AsyncModbusTcpClient | AsyncModbusSerialClient
    if isinstance(target, TcpTarget):
        client = AsyncModbusTcpClient(
            target.host,
            port=target.port,
            framer=FramerType.RTU if target.rtu else FramerType.SOCKET,
            timeout=timeout_seconds,
            retries=retries,
            reconnect_delay=0,  # the tools reconnect themselves, once, when they need to
            name="ssc-agent-tool",
        )
        hint = "connection refused or timed out: check the address, the port, and the network"
    else:
        client = AsyncModbusSerialClient(
            target.port,
            framer=FramerType.RTU,
            baudrate=target.baudrate,
            parity=target.parity,
            stopbits=target.stopbits,
            bytesize=target.bytesize,
            timeout=timeout_seconds,
            retries=retries,
            reconnect_delay=0,
            name="ssc-agent-tool",
        )
        hint = (
            "cannot open the serial port: check the path, and that no other program "
            "(the agent, a second probe) holds it"
        )
    if not await client.connect():
        client.close()
        raise DeviceUnavailable(f"{target.label}: {hint}")
    return client


async def _read(
    client: ModbusBaseClient, table: Table, address: int, count: int, unit: int
) -> ModbusPDU | None:
    """One read; None when nothing answered within the timeout."""
    from pymodbus.exceptions import ModbusException

    try:
        if table is Table.HOLDING:
            return await client.read_holding_registers(address, count=count, device_id=unit)
        if table is Table.INPUT:
            return await client.read_input_registers(address, count=count, device_id=unit)
        if table is Table.COIL:
            return await client.read_coils(address, count=count, device_id=unit)
        return await client.read_discrete_inputs(address, count=count, device_id=unit)
    except (ModbusException, OSError):  # TimeoutError is an OSError
        return None


def _answer_values(answer: ModbusPDU, table: Table, count: int) -> list[int]:
    if table in BIT_TABLES:
        # bits come padded to whole bytes
        return [int(bool(b)) for b in answer.bits[:count]]
    return [int(w) for w in answer.registers[:count]]


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
    client = await _open(target, timeout_seconds, retries)
    result = ProbeResult()
    try:
        limit = MAX_BITS if table in BIT_TABLES else MAX_REGISTERS
        for first, n in chunk_ranges(address, count, limit):
            answer = await _read(client, table, first, n, unit)
            if answer is None:
                result.error = DeviceUnavailable(
                    f"{target.label}: no answer from unit {unit} within {timeout_seconds:g} s, "
                    f"{retries + 1} tries ({_unit_word(table, n)} at 0x{first:04X}): check "
                    "--unit, the wiring, "
                    "baud rate and parity, or raise --timeout"
                )
                break
            if answer.isError():
                code = int(answer.exception_code)
                text = describe_exception(code, table, first, n, unit)
                result.error = DeviceProtocolError(f"{target.label} unit {unit}: {text}", code=code)
                break
            values = _answer_values(answer, table, n)
            if len(values) < n:
                result.error = DeviceProtocolError(
                    f"{target.label} unit {unit}: asked for {n} {_unit_word(table, n)} at "
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
    if output == "json":
        doc = probe_json(
            target.label, unit, table, address, result.values, scale=scale, f64=f64, error=error
        )
        out.write(json.dumps(doc, ensure_ascii=False) + "\n")
    elif result.values:
        text = format_probe_text(
            target.label, unit, table, address, result.values, scale=scale, f64=f64
        )
        out.write(text)
    out.flush()
    if result.error is not None:
        raise result.error
    return 0


class _Progress:
    """``scanning unit 17 (17/247) … found 2``: redrawn with ``\\r`` on a TTY, else plain lines."""

    def __init__(self, stream: IO[str], tty: bool, total: int) -> None:
        self.stream = stream
        self.tty = tty
        self.total = total
        self._width = 0
        self._stride = max(10, total // 10)
        self._next_line = self._stride

    def show(self, done: int, unit: int, found: int) -> None:
        if self.tty:
            text = f"scanning unit {unit} ({done}/{self.total}) … found {found}"
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        elif done >= self._next_line or done == self.total:
            # a log file or a pipe gets a line per tenth, not one per unit
            self.stream.write(f"scanned {done}/{self.total} unit ids … found {found}\n")
            self._next_line = done + self._stride
        self.stream.flush()

    def clear(self) -> None:
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


async def scan(
    target: Target,
    units: Sequence[int],
    *,
    table: Table = Table.HOLDING,
    address: int = 0,
    timeout_seconds: float = 0.2,
    on_answer: Callable[[int, UnitAnswer], None] | None = None,
    quiet_after_timeout: float | None = None,
) -> list[UnitAnswer]:
    """Try each unit id with a one-register read, one at a time; every unit gets an answer.

    ``on_answer(done, answer)`` is called after each unit. On RTU the line is kept quiet for
    ``quiet_after_timeout`` seconds (default 0.1) after a silent unit, so that a late answer
    cannot be taken for the next unit's.
    """
    rtu = not _is_gateway_tcp(target)
    quiet = RTU_QUIET_SECONDS if rtu else 0.0
    if quiet_after_timeout is not None:
        quiet = quiet_after_timeout
    client = await _open(target, timeout_seconds, retries=0)
    answers: list[UnitAnswer] = []
    try:
        for done, unit in enumerate(units, start=1):
            if not client.connected:
                # pymodbus drops a TCP connection after several silent requests in a row.
                client.close()
                client = await _open(target, timeout_seconds, retries=0)
            reply = await _read(client, table, address, 1, unit)
            if reply is None:
                answer = UnitAnswer(unit, "silent")
                if quiet:
                    await asyncio.sleep(quiet)
            elif reply.isError():
                code = int(reply.exception_code)
                answer = UnitAnswer(unit, classify_exception(code, target), code=code)
            else:
                values = _answer_values(reply, table, 1)
                answer = UnitAnswer(unit, "value", value=values[0] if values else None)
            answers.append(answer)
            if on_answer is not None:
                on_answer(done, answer)
    finally:
        client.close()
    return answers


async def run_scan(
    target: Target,
    units: Sequence[int],
    *,
    table: Table = Table.HOLDING,
    address: int = 0,
    timeout_seconds: float = 0.2,
    output: Literal["text", "json"] = "text",
    out: IO[str],
    err: IO[str],
    tty: bool | None = None,
    quiet_after_timeout: float | None = None,
) -> int:
    """``ssc-agent scan``: list the units that answer; exit status 0 when any did, else 1."""
    if not units:
        raise ConfigError("--units: give at least one unit id, e.g. 1-247")
    progress = _Progress(err, err.isatty() if tty is None else tty, len(units))
    found = 0

    def on_answer(done: int, answer: UnitAnswer) -> None:
        nonlocal found
        if answer.found:
            found += 1
            if output == "text":
                progress.clear()  # the progress line and the result share a terminal
                out.write(format_unit_line(answer, table, address) + "\n")
                out.flush()
        progress.show(done, answer.unit, found)

    try:
        answers = await scan(
            target,
            units,
            table=table,
            address=address,
            timeout_seconds=timeout_seconds,
            on_answer=on_answer,
            quiet_after_timeout=quiet_after_timeout,
        )
    finally:
        progress.clear()
    if output == "json":
        doc = {
            "target": target.label,
            "table": table.value,
            "address": address,
            "found": [a.unit for a in answers if a.found],
            "answers": [
                {"unit": a.unit, "kind": a.kind, "value": a.value, "code": a.code}
                for a in answers
                if a.kind != "silent"
            ],
        }
        out.write(json.dumps(doc) + "\n")
    else:
        out.write("\n".join(format_scan_summary(answers, target)) + "\n")
    out.flush()
    if found:
        return 0
    gateway = sum(a.kind == "gateway" for a in answers)
    if gateway:
        hint = (
            f"only the TCP server or gateway answered, for all {gateway} unit id(s) tried "
            "(exception 4, 10 or 11): no such unit behind it; try other --units, or check "
            "the gateway's serial side"
        )
    else:
        hint = "no unit answered: check the wiring, baud rate and parity, or raise --timeout"
    raise DeviceUnavailable(f"{target.label}: {hint}")
