"""Configuration model of a Plantower PMS5003 / PMS7003 sensor (``driver = "pms5003"``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from agent.driver import DeviceConfig
from agent.units import duration_within, parse_duration
from drivers.pms5003.frames import FIELDS

__all__ = ["Pms5003Config"]


class Pms5003Config(DeviceConfig):
    """A PMS5003 (or PMS7003) on a UART: passive (read on request) or active (streaming)."""

    driver: str = "pms5003"
    port: str = Field(min_length=1, description="serial device or pyserial URL")
    baudrate: int = Field(default=9600, gt=0)
    mode: Literal["passive", "active"] = "passive"
    timeout: str = Field(default="3 s", description="wait for an answer or, active, a frame")
    points: list[str] = Field(default_factory=lambda: list(FIELDS), min_length=1)

    @field_validator("timeout")
    @classmethod
    def _timeout_form(cls, value: str) -> str:
        # Active mode: a frame comes every 0.2-2.3 s; passive: the answer within a frame time.
        duration_within(value, "100 ms", "1 min")
        return value

    @field_validator("points")
    @classmethod
    def _known_points(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in FIELDS:
                known = ", ".join(FIELDS)
                raise ValueError(f"{name!r} is not a PMS5003 value: write one of {known}")
        if len(set(value)) != len(value):
            raise ValueError("a point appears twice in points")
        return value

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout)
