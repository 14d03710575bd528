"""Configuration model of an ASCII line-protocol sensor (``driver = "ascii_tcp"``)."""

from __future__ import annotations

import re
from typing import Self

from agent.driver import DeviceConfig
from agent.schema import ConfigModel, Field, field_validator, model_validator
from agent.unit_fields import DeviceDurationField
from agent.units import Duration

_ENDPOINT = re.compile(r"^tcp://(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")


class AsciiPoint(ConfigModel):
    """One value of the sensor's answer and how to turn it into a reading."""


    name: str = Field(pattern=r"^[A-Za-z0-9_]+$", max_length=64)
    key: str | None = Field(
        default=None, pattern=r"^[a-z][a-z0-9_]{0,31}$", description="key in the answer"
    )
    unit: str | None = None
    scale: float = 1.0
    valid_min: float | None = None
    valid_max: float | None = None

    @model_validator(mode="after")
    def _range_ordered(self) -> Self:
        if (
            self.valid_min is not None
            and self.valid_max is not None
            and self.valid_min > self.valid_max
        ):
            raise ValueError(
                f"valid_min {self.valid_min} is above valid_max {self.valid_max}: swap them"
            )
        return self

    @property
    def answer_key(self) -> str:
        """The key this point is read from: ``key``, or the point name."""
        return self.key or self.name


class AsciiTcpDeviceConfig(DeviceConfig):
    """A sensor that answers ``READ`` with one checksummed ASCII line over TCP."""

    driver: str = "ascii_tcp"
    endpoint: str
    timeout: DeviceDurationField = Duration.parse("1 s")  # parsed once, text kept
    points: list[AsciiPoint] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_form(cls, value: str) -> str:
        match = _ENDPOINT.match(value)
        if match is None or not 0 < int(match.group("port")) < 65536:
            raise ValueError(
                f"{value!r} is not an endpoint: write tcp://HOST:PORT, e.g. tcp://10.0.0.20:7070"
            )
        return value

    @model_validator(mode="after")
    def _unique_points(self) -> Self:
        names: set[str] = set()
        keys: dict[str, str] = {}
        for point in self.points:
            if point.name in names:
                raise ValueError(f"point name {point.name!r} appears twice")
            other = keys.get(point.answer_key)
            if other is not None:
                raise ValueError(
                    f"points {other!r} and {point.name!r} both read key {point.answer_key!r}: "
                    "give each point its own key"
                )
            names.add(point.name)
            keys[point.answer_key] = point.name
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        """Host and port of the endpoint."""
        match = _ENDPOINT.match(self.endpoint)
        assert match is not None  # validated above
        return match.group("host").strip("[]"), int(match.group("port"))

    @property
    def timeout_seconds(self) -> float:
        """``timeout`` in seconds."""
        return self.timeout.seconds
