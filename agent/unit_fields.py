"""Config field types for durations and sizes: the string a config holds becomes a
:class:`~agent.units.Duration` or :class:`~agent.units.Size` once, when it is validated;
and the rule of a scale factor (never 0), which device points and KPIs share.

Models of the agent and of every driver use them, so nothing parses a config string again;
dumped, a value is its original text (KPI checkpoints compare dumped configs). A value that
is parsed already (a default, a copied model) passes as it is.
"""

from __future__ import annotations

from typing import Annotated

from agent.schema import AfterValidator, Parsed
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


# The agent's own sections say how to write the value; device and driver tables keep
# the plain "must be a string".
_AS_DURATION = "write a duration as a string, e.g. '15 s'"
DurationField = Annotated[Duration, Parsed(Duration, Duration.parse, _text, _AS_DURATION)]
DeviceDurationField = Annotated[Duration, Parsed(Duration, Duration.parse, _text)]
KpiLengthField = Annotated[KpiLength, Parsed(KpiLength, parse_kpi_length, _text, _AS_DURATION)]
_AS_SIZE = "write a size as a string, e.g. '256 MiB'"
SizeField = Annotated[Size, Parsed(Size, Size.parse, _text, _AS_SIZE)]


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
