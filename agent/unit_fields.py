"""Config field types for durations and sizes: the string a config holds becomes a
:class:`~agent.units.Duration` or :class:`~agent.units.Size` once, when it is validated;
and the rule of a scale factor (never 0), which device points and KPIs share.

Models of the agent and of every driver use them, so nothing parses a config string again;
dumped, a value is its original text (KPI checkpoints compare dumped configs). A value that
is parsed already (a default, a copied model) passes as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, GetCoreSchemaHandler
from pydantic_core import CoreSchema, core_schema

from agent.units import AsWritten, Duration, KpiLength, Size, parse_kpi_length

__all__ = [
    "DeviceDurationField",
    "DurationField",
    "KpiLengthField",
    "SizeField",
    "duration_range",
    "not_zero",
]


def _text(value: AsWritten) -> str:
    return value.text


class _ParsedOnce:
    """Pydantic marker: a string parsed by ``parse`` into ``kind``.

    ``wrong_type`` words a value that is not a string; without it pydantic's own string
    check words it (device tables always said "must be a string").
    """

    def __init__(
        self, kind: type[AsWritten], parse: Callable[[str], Any], wrong_type: str | None
    ) -> None:
        self.kind = kind
        self.parse = parse
        self.wrong_type = wrong_type

    def __get_pydantic_core_schema__(
        self, source: object, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        from_text = core_schema.no_info_after_validator_function(
            self.parse, core_schema.str_schema()
        )
        return core_schema.no_info_wrap_validator_function(
            self._validate,
            from_text,
            serialization=core_schema.plain_serializer_function_ser_schema(
                _text, return_schema=core_schema.str_schema()
            ),
        )

    def _validate(self, value: object, from_text: core_schema.ValidatorFunctionWrapHandler) -> Any:
        if isinstance(value, self.kind):
            return value
        if self.wrong_type is not None and not isinstance(value, str):
            raise ValueError(self.wrong_type)
        return from_text(value)


# The agent's own sections say how to write the value; device and driver tables keep
# pydantic's "must be a string".
DurationField = Annotated[
    Duration, _ParsedOnce(Duration, Duration.parse, "write a duration as a string, e.g. '15 s'")
]
DeviceDurationField = Annotated[Duration, _ParsedOnce(Duration, Duration.parse, None)]
KpiLengthField = Annotated[
    KpiLength, _ParsedOnce(KpiLength, parse_kpi_length, "write a duration as a string, e.g. '15 s'")
]
SizeField = Annotated[
    Size, _ParsedOnce(Size, Size.parse, "write a size as a string, e.g. '256 MiB'")
]


def duration_range(low: str, high: str, why: str = "") -> AfterValidator:
    """A duration key's range: outside it the agent cannot do what the key asks.

    ``why`` says what breaks outside the range; the bounds are parsed here, once.
    """
    bounds = Duration.parse(low), Duration.parse(high)

    def check(value: Duration) -> Duration:
        value.check_within(*bounds, why)
        return value

    return AfterValidator(check)


def not_zero(consequence: str) -> AfterValidator:
    """A scale factor's rule: 0 is refused, ``consequence`` says what it would do."""

    def check(value: float) -> float:
        if value == 0:
            raise ValueError(f"must not be 0: {consequence}")
        return value

    return AfterValidator(check)
