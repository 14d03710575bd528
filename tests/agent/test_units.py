"""Durations and sizes parsed once into values that keep the text a config wrote."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.schema import ConfigModel, ValidationError
from agent.unit_fields import DeviceDurationField, DurationField, SizeField
from agent.units import (
    Duration,
    KpiDuration,
    Size,
    parse_duration,
    parse_kpi_length,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15 s", 15.0), ("250 ms", 0.25), ("1.5 h", 5400.0), (" 10 min ", 600.0), ("1 d", 86400.0)],
)
def test_duration_keeps_seconds_and_text(text: str, seconds: float) -> None:
    duration = Duration.parse(text)
    assert (duration.seconds, duration.text, str(duration)) == (seconds, text, text)


@pytest.mark.parametrize(
    ("text", "size"), [("256 MiB", 256 * 1024**2), ("1 KB", 1000), ("3 B", 3), ("1.5 KiB", 1536)]
)
def test_size_keeps_bytes_and_text(text: str, size: int) -> None:
    parsed = Size.parse(text)
    assert (parsed.bytes, parsed.text, str(parsed)) == (size, text, text)


@pytest.mark.parametrize(
    ("text", "low", "high", "message"),
    [
        ("1 ms", "1 s", "1 h", "'1 ms' is too short: at least 1 s: why"),
        ("2 h", "1 s", "1 h", "'2 h' is too long: at most 1 h: why"),
    ],
)
def test_check_within_words_the_bound_as_written(
    text: str, low: str, high: str, message: str
) -> None:
    with pytest.raises(ValueError, match="^" + message + "$"):
        Duration.parse(text).check_within(Duration.parse(low), Duration.parse(high), "why")


@given(
    st.decimals(min_value=1, max_value=80_000, places=3, allow_nan=False),
    st.sampled_from(["ms", "s", "min", "h"]),
)
def test_parsed_once_equals_parsed_again(number: object, unit: str) -> None:
    text = f"{number} {unit}"
    assert Duration.parse(text).seconds == parse_duration(text)


@given(st.integers(min_value=1, max_value=1024), st.sampled_from(["B", "KB", "MiB", "GiB"]))
def test_size_parsed_once_equals_parsed_again(number: int, unit: str) -> None:
    text = f"{number} {unit}"
    assert Size.parse(text).bytes == parse_size(text)


class _Section(ConfigModel):
    every: DurationField
    limit: SizeField


class _Device(ConfigModel):
    every: DeviceDurationField


def test_fields_hold_values_and_dump_their_text() -> None:
    section = _Section.model_validate({"every": "90 s", "limit": "1 MiB"})
    assert section.every == Duration(90.0, "90 s")
    assert section.limit == Size(1024**2, "1 MiB")
    assert section.model_dump(mode="json") == {"every": "90 s", "limit": "1 MiB"}
    assert _Section.model_validate(section.model_dump()) == section


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (_Section, {"every": 5, "limit": "1 B"}, "write a duration as a string, e.g. '15 s'"),
        (_Section, {"every": "5 s", "limit": 5}, "write a size as a string, e.g. '256 MiB'"),
        (_Section, {"every": "soon", "limit": "1 B"}, "'soon' is not a duration"),
        (_Device, {"every": 5}, "must be a string"),
    ],
)
def test_fields_word_a_wrong_value(model: type[ConfigModel], data: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        model.model_validate(data)


@pytest.mark.parametrize(
    ("text", "count", "unit"), [("15 min", 15, "min"), (" 1  mo ", 1, "mo"), ("24 h", 24, "h")]
)
def test_kpi_length_keeps_its_duration_and_text(text: str, count: int, unit: str) -> None:
    length = parse_kpi_length(text)
    assert (length.duration, length.text, str(length)) == (KpiDuration(count, unit), text, text)
