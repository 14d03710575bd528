"""What Modbus ``probe`` and ``scan`` share: targets, argument parsing and the client.

The tools build their own pymodbus client from a URL-ish target (``tcp://HOST:PORT``,
``rtu+tcp://HOST:PORT`` or a serial port), independent of any device config. Parsing is pure;
only :func:`open_client` and :func:`read_table` touch the network. pymodbus is imported inside
those, so that loading the CLI stays quick on a Pi. The tools themselves are
:mod:`drivers.modbus.probe` and :mod:`drivers.modbus.scan`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.errors import ConfigError, DeviceUnavailable
from drivers.modbus.codec import EXCEPTION_MEANINGS
from drivers.modbus.config import BIT_TABLES, Table
from drivers.serialio import SerialSettings

if TYPE_CHECKING:
    from pymodbus.client import ModbusBaseClient
    from pymodbus.pdu import ModbusPDU

__all__ = [
    "EXCEPTION_MEANINGS",
    "Target",
    "TcpTarget",
    "answer_values",
    "chunk_ranges",
    "compress_ids",
    "describe_exception",
    "is_gateway_tcp",
    "open_client",
    "parse_address",
    "parse_endpoint",
    "parse_units",
    "read_table",
    "target_from",
    "unit_word",
]

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


def is_gateway_tcp(target: Target) -> bool:
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
    return SerialSettings(serial, baudrate, parity=parity, stopbits=stopbits, bytesize=bytesize)


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


def unit_word(table: Table, count: int) -> str:
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
    kind = unit_word(table, 1)
    if code == 1:
        return (
            f"{head} — unit {unit} does not serve {unit_word(table, 2)} "
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


# --- the client ---------------------------------------------------------------------------


def quiet_pymodbus() -> None:
    import logging

    # pymodbus logs frame dumps and tracebacks for every unanswered request; the tools say
    # what happened in their own words.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


async def open_client(target: Target, timeout_seconds: float, retries: int) -> ModbusBaseClient:
    """A connected pymodbus client for the target, or DeviceUnavailable."""
    from pymodbus import FramerType
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

    quiet_pymodbus()
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


async def read_table(
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


def answer_values(answer: ModbusPDU, table: Table, count: int) -> list[int]:
    if table in BIT_TABLES:
        # bits come padded to whole bytes
        return [int(bool(b)) for b in answer.bits[:count]]
    return [int(w) for w in answer.registers[:count]]
