"""Configuration model of a Plantower PMS5003-family sensor (``driver = "pms5003"``)."""

from __future__ import annotations

from typing import Annotated, Literal

from agent.driver import DeviceConfig
from agent.schema import Field, ValidationInfo, field_validator
from agent.unit_fields import DeviceDurationField, duration_range
from agent.units import Duration
from drivers.pms5003.frames import MODELS, Model

__all__ = ["Pms5003Config"]

ModelName = Literal["pms5003", "pms7003", "pmsa003", "pms5003s", "pms5003t", "pms5003st"]


class Pms5003Config(DeviceConfig):
    """A PMS5003-family sensor on a UART: passive (read on request) or active (streaming).

    ``model`` says which values the frame's words hold (a PMS5003T sends temperature and
    humidity where a PMS5003 sends its largest particle counts); ``points`` defaults to every
    value of the model.
    """

    driver: str = "pms5003"
    port: str = Field(min_length=1, description="serial device or pyserial URL")
    baudrate: int = Field(default=9600, gt=0)
    model: ModelName = Field(default="pms5003", description="sensor model: which values it sends")
    mode: Literal["passive", "active"] = "passive"
    # Active mode: a frame comes every 0.2-2.3 s; passive: the answer within a frame time.
    timeout: Annotated[DeviceDurationField, duration_range("100 ms", "1 min")] = Field(
        default=Duration.parse("3 s"), description="wait for an answer or, active, a frame"
    )
    points: list[str] | None = Field(default=None, min_length=1)

    @field_validator("points")
    @classmethod
    def _known_points(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return value
        model_name = info.data.get("model")
        if model_name is None:  # the model itself is invalid: that error is reported
            return value
        model = MODELS[model_name]
        known = [f.name for f in model.fields]
        for name in value:
            if name not in known:
                shown = name if len(name) <= 40 else name[:40] + "…"
                others = [m for m, spec in MODELS.items() if name in (f.name for f in spec.fields)]
                hint = f" (a value of {', '.join(others)})" if others else ""
                raise ValueError(
                    f"{shown!r} is not a {model.name} value{hint}: write one of "
                    f"{', '.join(known)}, or set model"
                )
        if len(set(value)) != len(value):
            raise ValueError("a point appears twice in points")
        return value

    @property
    def sensor(self) -> Model:
        """The model's frame layout."""
        return MODELS[self.model]

    @property
    def point_names(self) -> tuple[str, ...]:
        """The values to report, in order: ``points``, or every value of the model."""
        if self.points is not None:
            return tuple(self.points)
        return tuple(f.name for f in self.sensor.fields)
