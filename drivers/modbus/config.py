"""Configuration model of a Modbus device (``driver = "modbus"``)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Self

from agent.driver import DeviceConfig
from agent.schema import ConfigModel, Field, field_validator, model_validator
from agent.unit_fields import DeviceDurationField, duration_range, not_zero
from agent.units import Duration


class Table(StrEnum):
    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"


class PointType(StrEnum):
    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    U64 = "u64"
    I64 = "i64"
    F32 = "f32"
    F64 = "f64"
    BOOL = "bool"


class ByteOrder(StrEnum):
    """Order of the bytes A (most significant) … D as they arrive on the wire."""

    ABCD = "ABCD"  # big-endian, high word first (Modbus default)
    CDAB = "CDAB"  # word-swapped: low word first, bytes in each word big-endian
    BADC = "BADC"  # byte-swapped within each word, high word first
    DCBA = "DCBA"  # little-endian


REGISTER_COUNT: dict[PointType, int] = {
    PointType.U16: 1,
    PointType.I16: 1,
    PointType.U32: 2,
    PointType.I32: 2,
    PointType.F32: 2,
    PointType.U64: 4,
    PointType.I64: 4,
    PointType.F64: 4,
    PointType.BOOL: 1,
}

BIT_TABLES = frozenset({Table.COIL, Table.DISCRETE})

_ENDPOINT = re.compile(
    r"^(?P<scheme>tcp|rtu\+tcp)://(?P<host>[A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$"
)


class Transport(StrEnum):
    """How a device's requests reach it."""

    TCP = "tcp"  # Modbus TCP (MBAP framing), endpoint = "tcp://HOST:PORT"
    RTU_TCP = "rtu+tcp"  # RTU frames through a TCP socket (a serial device server)
    BUS = "bus"  # RTU on a [[buses]] serial line


class ModbusPoint(ConfigModel):
    """One value of the device: where it lives and how to decode it."""


    name: str = Field(pattern=r"^[A-Za-z0-9_]+$", max_length=64)
    address: int = Field(ge=0, le=65535, description="0-based protocol address")
    table: Table = Table.HOLDING
    type: PointType = PointType.U16
    byte_order: ByteOrder = ByteOrder.ABCD
    scale: Annotated[float, not_zero("every value would read 0")] = 1.0
    offset: float = 0.0
    unit: str | None = Field(default=None, max_length=32)

    @model_validator(mode="after")
    def _type_fits_table(self) -> Self:
        if (self.table in BIT_TABLES) != (self.type is PointType.BOOL):
            if self.type is PointType.BOOL:
                raise ValueError("type 'bool' needs table 'coil' or 'discrete'")
            raise ValueError(
                f"table '{self.table.value}' holds single bits: use type 'bool', "
                "or table 'holding'/'input' for registers"
            )
        if self.address + self.width > 65536:
            raise ValueError(f"a {self.type.value} at address {self.address} runs past 65535")
        return self

    @property
    def width(self) -> int:
        """Registers (or bits) the point occupies."""
        return REGISTER_COUNT[self.type]


# Points are frozen and compared by value: devices of one profile share one instance of each
# (a point model costs ~1 KB; 1,000 meters × 20 points were 20 MB of identical copies).
_SHARED_POINTS: dict[tuple[object, ...], ModbusPoint] = {}


def _shared(point: ModbusPoint) -> ModbusPoint:
    key = tuple(getattr(point, name) for name in ModbusPoint.model_fields)
    return _SHARED_POINTS.setdefault(key, point)


class ModbusDeviceConfig(DeviceConfig):
    """A Modbus device: how to reach it (TCP, RTU over TCP, or a serial bus) and its points."""

    driver: str = "modbus"
    endpoint: str | None = None
    bus: str | None = None
    unit: int = Field(default=1, ge=0, le=255, description="Modbus unit (slave) id")
    profile: str | None = None
    timeout: Annotated[
        DeviceDurationField, duration_range("10 ms", "1 min", "an answer takes milliseconds")
    ] = Duration.parse("1 s")
    retries: int = Field(default=1, ge=0, le=5)
    serialize: bool = Field(
        default=False,
        description="tcp:// only: share one connection and one lock with every device on it",
    )
    max_registers_per_request: int = Field(default=125, ge=1, le=125)
    max_bits_per_request: int = Field(default=2000, ge=1, le=2000)
    max_gap: int = Field(default=0, ge=0, le=124, description="registers to read across to merge")
    forbidden_ranges: list[tuple[int, int]] = Field(default_factory=list)
    points: list[ModbusPoint] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_form(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = _ENDPOINT.match(value)
        if match is None or not 0 < int(match.group("port")) < 65536:
            raise ValueError(
                f"{value!r} is not an endpoint: write tcp://HOST:PORT (Modbus TCP) or "
                "rtu+tcp://HOST:PORT (RTU through a serial device server), e.g. tcp://10.0.0.5:502"
            )
        return value

    @field_validator("points")
    @classmethod
    def _share_points(cls, value: list[ModbusPoint]) -> list[ModbusPoint]:
        return [_shared(point) for point in value]

    @field_validator("forbidden_ranges")
    @classmethod
    def _ranges_ordered(cls, value: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for first, last in value:
            if not 0 <= first <= last <= 65535:
                raise ValueError(
                    f"[{first}, {last}] is not a range: write [first, last], "
                    "0 ≤ first ≤ last ≤ 65535"
                )
        return value

    @model_validator(mode="after")
    def _one_transport_and_unique_points(self) -> Self:
        if (self.endpoint is None) == (self.bus is None):
            raise ValueError("give exactly one of endpoint = \"tcp://HOST:PORT\" or bus = \"NAME\"")
        if self.serialize and self.transport is not Transport.TCP:
            raise ValueError(
                "serialize = true applies to tcp:// endpoints only: devices on a bus or on an "
                "rtu+tcp:// endpoint always share their line one request at a time; remove it"
            )
        seen: set[str] = set()
        for point in self.points:
            if point.name in seen:
                raise ValueError(f"point name {point.name!r} appears twice")
            seen.add(point.name)
        return self

    @property
    def transport(self) -> Transport:
        """Modbus TCP, RTU over TCP, or RTU on a serial bus."""
        if self.bus is not None:
            return Transport.BUS
        match = _ENDPOINT.match(self.endpoint or "")
        assert match is not None  # validated above
        return Transport(match.group("scheme"))

    @property
    def shares_line(self) -> bool:
        """True when the device shares one connection and lock with others (RTU, serialize)."""
        return self.transport is not Transport.TCP or self.serialize

    @property
    def host_port(self) -> tuple[str, int]:
        """Host and port of a tcp:// or rtu+tcp:// endpoint."""
        if self.endpoint is None:
            raise ValueError(f"device {self.name} has no tcp:// or rtu+tcp:// endpoint")
        match = _ENDPOINT.match(self.endpoint)
        assert match is not None  # validated above
        return match.group("host").strip("[]"), int(match.group("port"))

    @property
    def explicit_timeout_seconds(self) -> float | None:
        """The device's ``timeout`` if the table (or its profile) set one, else None."""
        return self.timeout.seconds if "timeout" in self.model_fields_set else None
