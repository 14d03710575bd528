"""Modbus driver: reads a device's points with the fewest requests its limits allow.

A device is reached over Modbus TCP (its own connection, or one shared with the other devices
of a ``serialize = true`` endpoint), RTU through a TCP socket (``rtu+tcp://``), or RTU on a
serial bus (``bus = "NAME"``). Shared paths are :class:`~drivers.modbus.bus.ModbusLine`
objects, one per run and physical line, held in ``DriverContext.resources``.

Per request the driver resends an unanswered (silent) or wrongly answered (wrong transaction
or unit id, CRC error, junk, cut off) request ``retries`` times, then gives up on that request
only. A device silent to the first request of a cycle raises ``DeviceUnavailable``; a device
that answers, but gives no valid answer to any request of a cycle (only exceptions, short or
wrong answers) raises ``DeviceProtocolError``: either way the poll failed, and the scheduler
counts it and backs off. A merged request answered with exception 2 (illegal data address) is
split by ``planner.split_request``, read again in the same cycle, and the split is kept for
later cycles.

Requests go through the driver's own client (drivers/modbus/client.py): the running agent
does not load pymodbus (only the simulator and the tests use it).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

import agent
from agent.damper import Damper, log_notices
from agent.driver import DeviceConfig, DriverContext, DriverSpec, PointInfo, expect_config
from agent.errors import ConfigError, DeviceProtocolError, DeviceUnavailable, PortMissing
from agent.readings import PointValue, Quality
from drivers.modbus.bus import (
    LineUnavailable,
    ModbusLine,
    NoAnswer,
    WrongAnswer,
    line_for,
    note_private_endpoint,
)
from drivers.modbus.codec import apply_scale, decode_registers
from drivers.modbus.config import BIT_TABLES, ModbusDeviceConfig, ModbusPoint, Table, Transport
from drivers.modbus.frames import Answer, exception_text, read_request
from drivers.modbus.planner import ReadPlan, ReadRequest, plan_reads, split_request

__all__ = ["SPEC", "DriverStats", "ModbusDriver", "ModbusTcpDriver", "Splitter", "create_driver"]

log = structlog.get_logger()

SAMPLE_TOML = (Path(__file__).parent / "sample.toml").read_text(encoding="utf-8")

ILLEGAL_DATA_ADDRESS = 2
# A gateway answers these for the device behind it when that device is silent or unreachable:
# the device's own silence, not a wrong answer of the device.
GATEWAY_EXCEPTIONS = frozenset({10, 11})
FUNCTION_CODES = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}

Splitter = Callable[[ReadRequest, Sequence[ModbusPoint]], tuple[ReadRequest, ...]]
"""``planner.split_request``: the parts that replace a request refused with exception 2."""


@dataclass
class DriverStats:
    """Counters of one device since the driver was created."""

    cycles: int = 0
    attempts: int = 0  # requests sent, retries included
    no_answers: int = 0  # silent attempts
    wrong_answers: int = 0  # attempts answered with bytes that are no valid answer
    exception_answers: int = 0
    short_answers: int = 0
    splits: int = 0
    failed_cycles: int = 0  # cycles without any valid answer (read() raised)


class _Silent(Exception):
    """The first request of a cycle got no answer: the device is treated as down."""


@dataclass
class _Cycle:
    """What one read() has seen so far."""

    results: list[PointValue | None]
    answered: int = 0  # requests the device answered at all (rightly or wrongly)
    valid: int = 0  # requests answered with usable data
    last_error: str = ""
    problems: list[str] = field(default_factory=list)  # one per request without valid answer
    codes: list[tuple[ReadRequest, int | None]] = field(default_factory=list)


def _describe(request: ReadRequest) -> str:
    return f"{request.table.value}[{request.address}..{request.last}]"


class ModbusDriver:
    """One Modbus device on its own TCP connection or on a shared line."""

    # driver contract: each request has its own timeout; the plain hang guard covers a poll
    max_poll_seconds: float | None = None

    def __init__(
        self,
        config: ModbusDeviceConfig,
        line: ModbusLine | None = None,
        *,
        split: Splitter | None = None,
    ) -> None:
        if line is None:
            if config.shares_line:
                where = f"bus {config.bus}" if config.bus is not None else config.endpoint
                raise ConfigError(
                    f"devices (name={config.name}, driver=modbus): a device on {where} shares "
                    "its line with others: build it with create_driver(config, context)"
                )
            host, port = config.host_port
            line = ModbusLine(str(config.endpoint), Transport.TCP,
                              timeout=config.timeout.seconds, host=host, port=port, shared=False)
        self._config = config
        self._line = line
        self._split = split or split_request
        if config.transport is Transport.TCP and not config.serialize:
            self._where = f"{config.name} ({config.endpoint})"
        else:
            self._where = f"{config.name} ({line.name}, unit {config.unit})"
        self._points = tuple(PointInfo(p.name, p.unit) for p in config.points)
        self._plan = plan_reads(
            config.points,
            max_registers=config.max_registers_per_request,
            max_bits=config.max_bits_per_request,
            max_gap=config.max_gap,
            forbidden=config.forbidden_ranges,
        )
        self._codes: dict[tuple[Table, int, int], int] = {}
        # a request whose exception comes and goes (busy every other poll): bounded lines
        self._code_dampers: dict[str, Damper] = {}  # by request, as _describe words it
        self._holding = False
        self.stats = DriverStats()
        self._log = log.bind(device=config.name, line=line.name, unit=config.unit)

    @property
    def points(self) -> Sequence[PointInfo]:
        """The configured points, in config order."""
        return self._points

    @property
    def plan(self) -> ReadPlan:
        """The requests one read() sends (after any split the device asked for)."""
        return self._plan

    @property
    def requests_per_cycle(self) -> int:
        """How many Modbus requests one read() sends."""
        return len(self._plan)

    @property
    def line(self) -> ModbusLine:
        """The line (connection, serial port) this device is read through."""
        return self._line

    def _hold(self) -> None:
        if not self._holding:
            self._holding = True
            self._line.hold()

    async def connect(self) -> None:
        """Open the connection or port; raise DeviceUnavailable when it cannot be opened."""
        self._hold()
        try:
            await self._line.connect()
        except LineUnavailable as exc:
            raise self._line_error(exc) from exc

    def _line_error(self, exc: LineUnavailable) -> DeviceUnavailable:
        error = PortMissing if exc.missing else DeviceUnavailable
        return error(f"{self._where}: {exc.reason}")

    async def close(self) -> None:
        """Let go of the line: it closes when no device uses it any more. Idempotent."""
        if self._holding:
            self._holding = False
            await self._line.release()

    # ------------------------------------------------------------------ requests

    async def _send(
        self, request: ReadRequest, cycle: _Cycle
    ) -> Answer | WrongAnswer | None:
        """The answer to ``request`` after up to ``retries`` resends; else the last wrong
        answer if any attempt got one, or None when every attempt met silence."""
        wrong: WrongAnswer | None = None
        unit = self._config.unit
        for _ in range(self._config.retries + 1):
            self.stats.attempts += 1
            try:
                # The line waits out its quiet gap before the resend (and before neighbours).
                answer = await self._line.exchange(
                    read_request(FUNCTION_CODES[request.table], request.address, request.count),
                    unit=unit,
                )
            except WrongAnswer as exc:
                self.stats.wrong_answers += 1
                cycle.last_error = str(exc)
                wrong = exc
                continue
            except NoAnswer as exc:
                self.stats.no_answers += 1
                cycle.last_error = str(exc)
                continue
            expected = FUNCTION_CODES[request.table]
            if answer.function_code & 0x7F == expected:
                return answer
            self.stats.wrong_answers += 1
            wrong = WrongAnswer(
                f"answer with function code {answer.function_code}, sent {expected}"
            )
            cycle.last_error = str(wrong)
        return wrong

    def _note_code(self, request: ReadRequest, code: int | None) -> None:
        """Log an exception code when it changes for a request, not at every poll; one that
        comes and goes is damped (``modbus_exception_flapping``, agent.damper)."""
        key = (request.table, request.address, request.count)
        before = self._codes.get(key)
        if code == before:
            return
        described = _describe(request)
        damper = self._code_dampers.setdefault(described, Damper(time.monotonic))
        if code is None:
            del self._codes[key]
            log_notices(self._log, "modbus_exception", damper.change(True), functools.partial(
                self._log.info, "modbus_exception_cleared", request=described, code=before),
                request=described)
            return
        self._codes[key] = code
        log_notices(self._log, "modbus_exception", damper.change(False), functools.partial(
            self._log.warning, "modbus_exception_answer", request=described, code=code),
            request=described, code=code)

    def _mark(self, request: ReadRequest, cycle: _Cycle, quality: Quality) -> None:
        for index, _ in request.points:
            cycle.results[index] = PointValue(self._config.points[index].name, None, quality)

    async def _read_request(self, request: ReadRequest, cycle: _Cycle) -> tuple[ReadRequest, ...]:
        """Read one request into ``cycle``; returns the requests that replace it in the plan."""
        answer = await self._send(request, cycle)
        gateway_code: int | None = None
        if answer is not None and not isinstance(answer, WrongAnswer) and answer.is_error():
            code = int(answer.exception_code)
            if code in GATEWAY_EXCEPTIONS:
                gateway_code = code
        if answer is None or gateway_code is not None:
            if gateway_code is not None:
                cycle.last_error = f"the gateway answered {exception_text(gateway_code)}"
            if cycle.answered == 0:
                raise _Silent
            self._mark(request, cycle, Quality.COMM_ERROR)
            cycle.problems.append(f"{_describe(request)}: no answer")
            return (request,)
        cycle.answered += 1
        if isinstance(answer, WrongAnswer):
            self._mark(request, cycle, Quality.PROTOCOL_ERROR)
            cycle.problems.append(f"{_describe(request)}: {answer}")
            return (request,)
        if not answer.is_error():
            cycle.codes.append((request, None))
            decoded = self._decode(request, answer)
            if decoded is None:
                self.stats.short_answers += 1
                self._mark(request, cycle, Quality.PROTOCOL_ERROR)
                got = len(answer.bits if request.table in BIT_TABLES else answer.registers)
                cycle.problems.append(
                    f"{_describe(request)}: answer too short ({got} of {request.count} "
                    f"{'bits' if request.table in BIT_TABLES else 'registers'})"
                )
                return (request,)
            cycle.valid += 1
            for index, value in decoded:
                cycle.results[index] = value
            return (request,)
        code = int(answer.exception_code)
        self.stats.exception_answers += 1
        if code == ILLEGAL_DATA_ADDRESS and len(request.points) > 1:
            parts = self._split(request, self._config.points)
            if len(parts) > 1:
                self.stats.splits += 1
                self._log.info(
                    "modbus_plan_split",
                    old=_describe(request),
                    new=[_describe(part) for part in parts],
                )
                replaced: list[ReadRequest] = []
                for part in parts:
                    replaced.extend(await self._read_request(part, cycle))
                return tuple(replaced)
        cycle.codes.append((request, code))
        self._mark(request, cycle, Quality.PROTOCOL_ERROR)
        cycle.problems.append(f"{_describe(request)}: {exception_text(code)}")
        return (request,)

    def _decode(
        self, request: ReadRequest, answer: Answer
    ) -> list[tuple[int, PointValue]] | None:
        """The points of an answer, or None when it holds fewer registers (bits) than asked."""
        points = self._config.points
        is_bits = request.table in BIT_TABLES
        data: Sequence[int] | Sequence[bool] = answer.bits if is_bits else answer.registers
        if len(data) < request.count:
            return None
        out: list[tuple[int, PointValue]] = []
        for index, offset in request.points:
            point = points[index]
            raw: int | float
            if is_bits:
                raw = int(bool(data[offset]))
            else:
                words = [int(w) for w in data[offset : offset + point.width]]
                raw = decode_registers(words, point.type, point.byte_order)
            if isinstance(raw, float) and not math.isfinite(raw):
                out.append((index, PointValue(point.name, None, Quality.OUT_OF_RANGE)))
                continue
            value = apply_scale(raw, point.scale, point.offset)
            out.append((index, PointValue(point.name, value, Quality.GOOD)))
        return out

    def _unavailable(self, cycle: _Cycle) -> DeviceUnavailable:
        detail = cycle.last_error or "no answer"
        return DeviceUnavailable(
            f"{self._where}: no answer to its first request of {len(self._plan)} "
            f"({self._config.retries + 1} attempt(s), {detail}); check that the device is on, "
            "wired and at this unit id"
        )

    def _failed_cycle(self, cycle: _Cycle) -> DeviceProtocolError:
        self.stats.failed_cycles += 1
        shown = "; ".join(cycle.problems[:2])
        if len(cycle.problems) > 2:
            shown += f"; and {len(cycle.problems) - 2} more"
        codes = {code for _, code in cycle.codes}
        code = codes.pop() if len(codes) == 1 else None
        return DeviceProtocolError(
            f"{self._where}: no valid answer to any of its {len(cycle.problems)} request(s): "
            f"{shown}; check the unit id and the register map",
            code=code,
        )

    async def read(self) -> Sequence[PointValue]:
        """Read every point once: one PointValue per point, in config order.

        Raises DeviceUnavailable when the line cannot be opened or the device is silent to
        the first request of the cycle (the rest are then not sent: a silent device must not
        hold its bus neighbours up). Raises DeviceProtocolError when the device answered, but
        no request got a valid answer (exceptions, short or wrong answers only). Otherwise
        silent requests give COMM_ERROR and exception, short or wrong answers
        PROTOCOL_ERROR, for their own points only.
        """
        self._hold()
        self.stats.cycles += 1
        cycle = _Cycle(results=[None] * len(self._config.points))
        plan: list[ReadRequest] = []
        requests = list(self._plan)
        for i, request in enumerate(requests):
            try:
                plan.extend(await self._read_request(request, cycle))
            except _Silent:
                raise self._unavailable(cycle) from None
            except LineUnavailable as exc:
                if cycle.answered == 0:
                    raise self._line_error(exc) from exc
                # The connection went away mid-cycle: the rest of the plan waits for the next.
                for rest in requests[i:]:
                    self._mark(rest, cycle, Quality.COMM_ERROR)
                    cycle.problems.append(f"{_describe(rest)}: {exc.reason}")
                plan.extend(requests[i:])
                break
        if tuple(plan) != self._plan.requests:
            self._plan = ReadPlan(tuple(plan))
        if cycle.valid == 0:
            # The whole poll failed: the scheduler logs the device down once; the per-request
            # codes are noted only from polls that read something.
            raise self._failed_cycle(cycle)
        for request, code in cycle.codes:
            self._note_code(request, code)
        for described, damper in self._code_dampers.items():
            if damper.flapping:
                log_notices(self._log, "modbus_exception", damper.tick(), request=described)
        return [
            value if value is not None else PointValue(p.name, None, Quality.COMM_ERROR)
            for value, p in zip(cycle.results, self._config.points, strict=True)
        ]


ModbusTcpDriver = ModbusDriver
"""The name of the driver before it learned RTU; kept for existing callers."""


def create_driver(config: DeviceConfig, context: DriverContext) -> ModbusDriver:
    """Build the driver for a validated Modbus device config, sharing lines through context."""
    config = expect_config(config, ModbusDeviceConfig)
    if config.shares_line:
        return ModbusDriver(config, line_for(config, context))
    note_private_endpoint(config, context)
    return ModbusDriver(config)


SPEC = DriverSpec(
    name="modbus",
    version=agent.__version__,
    description="Modbus TCP and RTU (serial bus, RTU over TCP) meters and sensors",
    config_model=ModbusDeviceConfig,
    create=create_driver,
    sample_toml=SAMPLE_TOML,
)
