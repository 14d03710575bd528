"""Configuration model of an IEC 62056-21 mode C meter (``driver = "iec62056"``)."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from agent.driver import DeviceConfig
from agent.schema import ConfigModel, Field, field_validator, model_validator
from agent.unit_fields import DeviceDurationField, duration_range, not_zero
from agent.units import Duration
from drivers.iec62056.frames import BAUD_RATES, normalize_obis

__all__ = ["Iec62056Config", "ObisPoint"]

_OBIS = re.compile(r"^(\d+-\d+:)?[0-9A-Z]+(\.[0-9A-Z]+){1,4}(\*\d+)?$", re.ASCII)


class ObisPoint(ConfigModel):
    """One value of the readout: its OBIS code, the point name, and an optional scale."""


    name: str = Field(pattern=r"^[A-Za-z0-9_]+$", max_length=64)
    obis: str = Field(description="e.g. 1.8.0 or 1-0:1.8.0*255")
    scale: Annotated[float, not_zero("every value would read 0")] = 1.0
    unit: str | None = Field(
        default=None,
        max_length=32,
        description="unit of the delivered value; with scale 1 the meter's unit must match",
    )

    @field_validator("obis")
    @classmethod
    def _obis_form(cls, value: str) -> str:
        if not _OBIS.match(value.strip()):
            raise ValueError(
                f"{value!r} is not an OBIS code: write it as the meter prints it, e.g. '1.8.0' "
                "or '1-0:1.8.0*255'"
            )
        return value.strip()


class Iec62056Config(DeviceConfig):
    """A meter read through its optical (or RS-485/CL) IEC 62056-21 port in mode C."""

    driver: str = "iec62056"
    interval: DeviceDurationField = Duration.parse("1 min")
    port: str = Field(min_length=1, description="serial device or pyserial URL")
    address: str = Field(default="", pattern=r"^[0-9A-Za-z ]{0,32}$",
                         description="device address for /?ADDRESS!; empty = any meter")
    framing: Literal["7E1", "8N1"] = Field(
        default="7E1",
        description="7E1 for real meters; 8N1 does 7E1 in software (parity sent as bit 7)",
    )
    initial_baudrate: int = 300
    baud_switch: bool = Field(default=True, description="switch to the meter's offered rate")
    max_baudrate: int | None = Field(default=None, description="cap the rate switched to")
    timeout: Annotated[
        DeviceDurationField,
        duration_range("100 ms", "1 min", "the identification comes within 1.5 s"),
    ] = Field(default=Duration.parse("3 s"), description="wait for the identification")
    # At 300 Bd without a baud switch a long readout takes minutes.
    readout_timeout: Annotated[DeviceDurationField, duration_range("100 ms", "10 min")] = Field(
        default=Duration.parse("30 s"), description="wait for the whole data block"
    )
    points: list[ObisPoint] = Field(min_length=1)

    @field_validator("initial_baudrate", "max_baudrate")
    @classmethod
    def _mode_c_rate(cls, value: int | None) -> int | None:
        if value is not None and value not in BAUD_RATES.values():
            rates = ", ".join(str(r) for r in BAUD_RATES.values())
            raise ValueError(f"{value} is not a mode C baud rate: write one of {rates}")
        return value

    @model_validator(mode="after")
    def _unique_points(self) -> Self:
        names: set[str] = set()
        codes: set[str] = set()
        for point in self.points:
            if point.name in names:
                raise ValueError(f"point name {point.name!r} appears twice")
            code = normalize_obis(point.obis)
            if code in codes:
                raise ValueError(f"OBIS code {point.obis!r} is mapped twice")
            names.add(point.name)
            codes.add(code)
        return self
