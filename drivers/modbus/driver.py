"""Modbus TCP driver: reads a device's points with the fewest requests its limits allow.

pymodbus is imported inside the methods that use it: discovering drivers (``ssc-agent
drivers``, config validation) loads ``SPEC`` and should not pay for pymodbus.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

import agent
from agent.driver import DeviceConfig, DriverContext, DriverSpec, PointInfo
from agent.errors import ConfigError, DeviceUnavailable
from agent.readings import PointValue, Quality
from drivers.modbus.codec import apply_scale, decode_registers
from drivers.modbus.config import BIT_TABLES, ModbusDeviceConfig, Table
from drivers.modbus.planner import ReadPlan, ReadRequest, plan_reads

if TYPE_CHECKING:
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.pdu import ModbusPDU

__all__ = ["SPEC", "ModbusTcpDriver", "create_driver"]

log = structlog.get_logger()

SAMPLE_TOML = (Path(__file__).parent / "sample.toml").read_text(encoding="utf-8")


class _NoAnswer(Exception):
    """A request got no answer (timeout, connection lost)."""


class ModbusTcpDriver:
    """One Modbus TCP device: connect, read every point once per call, close."""

    def __init__(self, config: ModbusDeviceConfig) -> None:
        if config.endpoint is None:
            raise ConfigError(
                f"devices (name={config.name}, driver=modbus): ModbusTcpDriver needs "
                'endpoint = "tcp://HOST:PORT"'
            )
        self._config = config
        self._host, self._port = config.host_port
        self._where = f"{config.name} ({config.endpoint})"
        self._points = tuple(PointInfo(p.name, p.unit) for p in config.points)
        self._plan = plan_reads(
            config.points,
            max_registers=config.max_registers_per_request,
            max_bits=config.max_bits_per_request,
            max_gap=config.max_gap,
            forbidden=config.forbidden_ranges,
        )
        self._client: AsyncModbusTcpClient | None = None
        self._log = log.bind(device=config.name, endpoint=config.endpoint)

    @property
    def points(self) -> Sequence[PointInfo]:
        """The configured points, in config order."""
        return self._points

    @property
    def plan(self) -> ReadPlan:
        """The requests one read() sends."""
        return self._plan

    @property
    def requests_per_cycle(self) -> int:
        """How many Modbus requests one read() sends."""
        return len(self._plan)

    def _new_client(self) -> AsyncModbusTcpClient:
        from pymodbus.client import AsyncModbusTcpClient

        return AsyncModbusTcpClient(
            self._host,
            port=self._port,
            name=f"modbus-{self._config.name}",
            # 0: no background reconnects; the scheduler owns backoff.
            reconnect_delay=0,
            timeout=self._config.timeout_seconds,
            retries=self._config.retries,
        )

    async def connect(self) -> None:
        """Open the TCP connection; raise DeviceUnavailable when refused or timed out."""
        if self._client is not None and self._client.connected:
            return
        if self._client is not None:
            # A fresh client per connection: no request state survives a lost connection.
            self._client.close()
        self._client = self._new_client()
        loop = asyncio.get_running_loop()
        started = loop.time()
        if await self._client.connect():
            self._log.debug("modbus_connected")
            return
        # pymodbus swallows the OSError and only returns False; the elapsed time tells a
        # refused connection (at once) from an unanswered one (the whole timeout).
        timeout = self._config.timeout_seconds
        if loop.time() - started >= 0.9 * timeout:
            reason = f"no answer within {timeout:g} s (timed out): check the address and network"
        else:
            reason = "connection refused: check that the device is on and the port is right"
        raise DeviceUnavailable(f"{self._where}: {reason}")

    async def _send(self, request: ReadRequest) -> ModbusPDU:
        from pymodbus.exceptions import ModbusException

        assert self._client is not None
        unit = self._config.unit
        client = self._client
        try:
            if request.table is Table.HOLDING:
                return await client.read_holding_registers(
                    request.address, count=request.count, device_id=unit
                )
            if request.table is Table.INPUT:
                return await client.read_input_registers(
                    request.address, count=request.count, device_id=unit
                )
            if request.table is Table.COIL:
                return await client.read_coils(request.address, count=request.count, device_id=unit)
            return await client.read_discrete_inputs(
                request.address, count=request.count, device_id=unit
            )
        except (ModbusException, OSError) as exc:  # TimeoutError is an OSError
            raise _NoAnswer(str(exc)) from exc

    def _decode(self, request: ReadRequest, answer: ModbusPDU) -> list[tuple[int, PointValue]]:
        points = self._config.points
        is_bits = request.table in BIT_TABLES
        data: Sequence[int] | Sequence[bool] = answer.bits if is_bits else answer.registers
        if len(data) < request.count:
            self._log.debug(
                "modbus_short_answer",
                table=request.table.value,
                address=request.address,
                count=request.count,
                got=len(data),
            )
            return [
                (i, PointValue(points[i].name, None, Quality.PROTOCOL_ERROR))
                for i, _ in request.points
            ]
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

    async def read(self) -> Sequence[PointValue]:
        """Read every point once: one PointValue per point, in config order.

        Reconnects once if the connection is down. Raises DeviceUnavailable when no request
        got any answer; otherwise unanswered requests give COMM_ERROR and exception answers
        PROTOCOL_ERROR, for their own points only.
        """
        reconnected = False
        if self._client is None or not self._client.connected:
            await self.connect()
            reconnected = True
        assert self._client is not None
        results: list[PointValue | None] = [None] * len(self._config.points)
        answered = 0
        last_error = ""
        for request in self._plan:
            if not self._client.connected and not reconnected:
                reconnected = True
                try:
                    await self.connect()
                except DeviceUnavailable as exc:
                    last_error = str(exc)
            quality: Quality | None = None
            if not self._client.connected:
                quality = Quality.COMM_ERROR
            else:
                try:
                    answer = await self._send(request)
                except _NoAnswer as exc:
                    last_error = str(exc)
                    quality = Quality.COMM_ERROR
                else:
                    answered += 1
                    if answer.isError():
                        # Seam: exception 2 on a merged request is where a later release
                        # splits it (planner.gap_ranges → forbidden) instead of losing it.
                        self._log.debug(
                            "modbus_exception_answer",
                            table=request.table.value,
                            address=request.address,
                            count=request.count,
                            code=answer.exception_code,
                        )
                        quality = Quality.PROTOCOL_ERROR
                    else:
                        for index, value in self._decode(request, answer):
                            results[index] = value
            if quality is not None:
                for index, _ in request.points:
                    results[index] = PointValue(self._config.points[index].name, None, quality)
        if answered == 0 and len(self._plan) > 0:
            detail = last_error or "connection lost"
            raise DeviceUnavailable(
                f"{self._where}: no answer to any of {len(self._plan)} request(s) ({detail}); "
                "check that the device is on and reachable"
            )
        return [
            value if value is not None else PointValue(p.name, None, Quality.COMM_ERROR)
            for value, p in zip(results, self._config.points, strict=True)
        ]

    async def close(self) -> None:
        """Close the connection; safe to call more than once."""
        if self._client is not None:
            self._client.close()
            self._client = None
            self._log.debug("modbus_closed")


def create_driver(config: DeviceConfig, context: DriverContext) -> ModbusTcpDriver:
    """Build the driver for a validated Modbus device config."""
    if not isinstance(config, ModbusDeviceConfig):
        raise ConfigError(
            f"devices (name={config.name}, driver=modbus): expected a ModbusDeviceConfig, "
            f"got {type(config).__name__}: validate the table with the modbus config model"
        )
    if config.bus is not None:
        raise ConfigError(
            f"devices (name={config.name}, driver=modbus) → bus: Modbus RTU over a serial bus "
            "is not supported yet in this release: use a Modbus TCP gateway and "
            'endpoint = "tcp://HOST:PORT"'
        )
    return ModbusTcpDriver(config)


SPEC = DriverSpec(
    name="modbus",
    version=agent.__version__,
    description="Modbus TCP meters and sensors (holding/input registers, coils, discrete inputs)",
    config_model=ModbusDeviceConfig,
    create=create_driver,
    sample_toml=SAMPLE_TOML,
)
