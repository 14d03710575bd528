"""Configuration model of a Nova SDS011 particulate sensor (``driver = "sds011"``)."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from agent.driver import DeviceConfig
from agent.schema import ConfigModel, Field, field_validator, model_validator
from agent.unit_fields import DeviceDurationField, duration_range
from agent.units import Duration
from drivers.sds011.frames import parse_device_id

__all__ = ["Sds011Config", "Sds011Duty"]


# A duty phase or warm-up of more than a day is a typo.
_Phase = Annotated[DeviceDurationField, duration_range("1 ms", "1 d")]
# A query is answered within about a second, and active frames come every second.
_Timeout = Annotated[DeviceDurationField, duration_range("100 ms", "1 min")]


class Sds011Duty(ConfigModel):
    """``duty = { work = "45 s", sleep = "4 min" }``: awake (warm-up included), then asleep."""


    work: _Phase
    sleep: _Phase


class Sds011Config(DeviceConfig):
    """An SDS011 on a UART: query or active reporting, optional sleep/work duty cycle."""

    driver: str = "sds011"
    port: str = Field(min_length=1, description="serial device or pyserial URL")
    baudrate: int = Field(default=9600, gt=0)
    mode: Literal["query", "active"] = "query"
    device_id: str = Field(default="any", description="4 hex digits (ID1 ID2) or 'any'")
    timeout: _Timeout = Field(
        default=Duration.parse("2 s"), description="wait for a reply or, in active mode, a frame"
    )
    warmup: _Phase = Field(
        default=Duration.parse("30 s"), description="after a wake, readings are STALE this long"
    )
    duty: Sds011Duty | None = None

    @field_validator("device_id")
    @classmethod
    def _device_id_form(cls, value: str) -> str:
        parse_device_id(value)
        return value

    @model_validator(mode="after")
    def _work_covers_warmup(self) -> Self:
        if self.duty is not None and self.duty.work.seconds < self.warmup.seconds:
            raise ValueError(
                f"duty.work ({self.duty.work}) is shorter than warmup ({self.warmup}): no "
                "reading would ever be good; make work at least as long as warmup"
            )
        return self

    @property
    def device_id_value(self) -> int:
        """The ID as an int (0xFFFF = any sensor)."""
        return parse_device_id(self.device_id)
