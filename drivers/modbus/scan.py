"""``ssc-agent scan``: find which unit ids answer on a line or behind a gateway.

Classifying and formatting answers are pure functions; only :func:`scan` and :func:`run_scan`
touch the line.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Literal

from agent.errors import ConfigError, DeviceUnavailable
from drivers.modbus.codec import EXCEPTION_MEANINGS
from drivers.modbus.config import BIT_TABLES, Table
from drivers.modbus.tools import (
    Target,
    answer_values,
    compress_ids,
    is_gateway_tcp,
    open_client,
    read_table,
)

__all__ = [
    "AnswerKind",
    "ScanRequest",
    "UnitAnswer",
    "classify_exception",
    "format_scan_summary",
    "format_unit_line",
    "run_scan",
    "scan",
]

RTU_QUIET_SECONDS = 0.1  # after a timeout on RTU a late answer would shift every later one


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
    if code == 4 and is_gateway_tcp(target):
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


@dataclass(frozen=True, slots=True)
class ScanRequest:
    """Which unit ids to try on a target, and the one read each gets.

    On RTU the line is kept quiet for ``quiet_after_timeout`` seconds (default 0.1) after a
    silent unit, so that a late answer cannot be taken for the next unit's.
    """

    target: Target
    units: Sequence[int]
    table: Table = Table.HOLDING
    address: int = 0
    timeout_seconds: float = 0.2
    quiet_after_timeout: float | None = None


async def scan(
    request: ScanRequest, on_answer: Callable[[int, UnitAnswer], None] | None = None
) -> list[UnitAnswer]:
    """Try each unit id with a one-register read, one at a time; every unit gets an answer.

    ``on_answer(done, answer)`` is called after each unit.
    """
    target, table, address = request.target, request.table, request.address
    timeout_seconds = request.timeout_seconds
    rtu = not is_gateway_tcp(target)
    quiet = RTU_QUIET_SECONDS if rtu else 0.0
    if request.quiet_after_timeout is not None:
        quiet = request.quiet_after_timeout
    client = await open_client(target, timeout_seconds, retries=0)
    answers: list[UnitAnswer] = []
    try:
        for done, unit in enumerate(request.units, start=1):
            if not client.connected:
                # pymodbus drops a TCP connection after several silent requests in a row.
                client.close()
                client = await open_client(target, timeout_seconds, retries=0)
            reply = await read_table(client, table, address, 1, unit)
            if reply is None:
                answer = UnitAnswer(unit, "silent")
                if quiet:
                    await asyncio.sleep(quiet)
            elif reply.isError():
                code = int(reply.exception_code)
                answer = UnitAnswer(unit, classify_exception(code, target), code=code)
            else:
                values = answer_values(reply, table, 1)
                answer = UnitAnswer(unit, "value", value=values[0] if values else None)
            answers.append(answer)
            if on_answer is not None:
                on_answer(done, answer)
    finally:
        client.close()
    return answers


async def run_scan(
    request: ScanRequest,
    *,
    output: Literal["text", "json"] = "text",
    out: IO[str],
    err: IO[str],
    tty: bool | None = None,
) -> int:
    """``ssc-agent scan``: list the units that answer; exit status 0 when any did, else 1."""
    target, table, address = request.target, request.table, request.address
    if not request.units:
        raise ConfigError("--units: give at least one unit id, e.g. 1-247")
    progress = _Progress(err, err.isatty() if tty is None else tty, len(request.units))
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
        answers = await scan(request, on_answer)
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
