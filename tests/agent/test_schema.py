"""``agent.schema``: the config models' checks, words, places, dumps and copies."""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.schema import (
    AfterValidator,
    BeforeValidator,
    ConfigModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from agent.unit_fields import DeviceDurationField, DurationField
from agent.units import Duration


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


def _shout(value: str) -> str:
    if value != value.upper():
        raise ValueError(f"{value!r} is not upper case")
    return value


class Point(ConfigModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_]+$", max_length=8)
    address: int = Field(ge=0, le=65535)
    scale: float = 1.0


class Device(ConfigModel):
    name: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    ratio: float = Field(default=0.5, gt=0, lt=1)
    mode: Literal["query", "active"] = "query"
    stopbits: Literal[1, 2] = 1
    colour: Colour = Colour.RED
    enabled: bool = True
    path: Path | None = None
    every: DurationField = Duration.parse("1 s")
    tag: Annotated[str, BeforeValidator(str.strip), AfterValidator(_shout)] = "X"
    ranges: list[tuple[int, int]] = Field(default_factory=list)
    points: list[Point] = Field(default_factory=list, max_length=3)
    mixed: int | float = 0


def _problems(model: type[ConfigModel], data: object) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [(".".join(str(p) for p in e.loc), e.message) for e in info.value.errors()]


@pytest.mark.parametrize(
    ("data", "where", "message"),
    [
        ({"name": 5}, "name", "must be a string"),
        ({"name": ""}, "name", "must not be empty"),
        ({"name": "a", "port": "502"}, "port", "must be an integer"),
        ({"name": "a", "port": True}, "port", "must be an integer"),
        ({"name": "a", "port": 1.0}, "port", "must be an integer"),
        ({"name": "a", "port": 0}, "port", "must be at least 1"),
        ({"name": "a", "port": 70000}, "port", "must be at most 65535"),
        ({"name": "a", "ratio": 0}, "ratio", "must be greater than 0"),
        ({"name": "a", "ratio": 1}, "ratio", "must be less than 1"),
        ({"name": "a", "ratio": "0.5"}, "ratio", "must be a number"),
        ({"name": "a", "ratio": math.nan}, "ratio", "must be a finite number"),
        ({"name": "a", "ratio": math.inf}, "ratio", "must be a finite number"),
        ({"name": "a", "mode": "passive"}, "mode", "must be one of query, active"),
        ({"name": "a", "stopbits": True}, "stopbits", "must be one of 1, 2"),
        ({"name": "a", "stopbits": "1"}, "stopbits", "must be one of 1, 2"),
        ({"name": "a", "colour": "green"}, "colour", "must be one of red, blue"),
        ({"name": "a", "enabled": 1}, "enabled", "must be true or false"),
        ({"name": "a", "path": 3}, "path", "must be a path (a string)"),
        ({"name": "a", "every": 5}, "every", "write a duration as a string, e.g. '15 s'"),
        ({"name": "a", "every": "soon"}, "every",
         "'soon' is not a duration: write a number and a unit (ms, s, min, h, d), e.g. '15 s'"),
        ({"name": "a", "tag": " quiet "}, "tag", "'quiet' is not upper case"),
        ({"name": "a", "ranges": [[1]]}, "ranges.0", "must have at least 2 items"),
        ({"name": "a", "ranges": [[1, "2"]]}, "ranges.0.1", "must be an integer"),
        ({"name": "a", "ranges": {"a": 1}}, "ranges", "must be a list"),
        ({"name": "a", "points": [{"name": "p", "address": 1}] * 4}, "points",
         "must have at most 3 items"),
        ({"name": "a", "points": [{"name": "p-1", "address": 1}]}, "points.0.name",
         "use only letters, digits and '_' (at least one)"),
        ({"name": "a", "points": [{"name": "p"}]}, "points.0.address", "required"),
        ({"name": "a", "points": ["p"]}, "points.0", "must be a table"),
        ({"name": "a", "mixed": "1"}, "mixed", "must be a number"),
        ({}, "name", "required"),
        ({"name": "a", "nmae": "b"}, "nmae",
         "unknown key; known keys: name, port, ratio, mode, stopbits, colour, enabled, path, "
         "every, tag, ranges, points, mixed"),
    ],
)
def test_a_wrong_value_is_worded_at_its_place(data: object, where: str, message: str) -> None:
    assert _problems(Device, data) == [(where, message)]


def test_every_problem_is_reported_at_once_in_key_order_then_unknown_keys() -> None:
    data = {"zzz": 1, "points": [{"name": "ok", "address": -1}, {"address": 1}], "port": 0}
    assert _problems(Device, data) == [
        ("name", "required"),
        ("port", "must be at least 1"),
        ("points.0.address", "must be at least 0"),
        ("points.1.name", "required"),
        ("zzz", "unknown key; known keys: name, port, ratio, mode, stopbits, colour, enabled, "
                "path, every, tag, ranges, points, mixed"),
    ]


def test_a_table_that_is_not_a_table() -> None:
    assert _problems(Device, ["name"]) == [("", "must be a table")]


def test_values_come_out_typed() -> None:
    device = Device.model_validate({
        "name": "a", "port": 502, "ratio": 0.25, "colour": "blue", "path": "x/y",
        "every": "90 s", "tag": " UP ", "ranges": [[1, 2]], "points": [{"name": "p", "address": 3,
                                                                       "scale": 2}],
        "mixed": 7,
    })
    assert device.colour is Colour.BLUE
    assert device.path == Path("x/y")
    assert device.every == Duration(90.0, "90 s")
    assert device.tag == "UP"
    assert device.ranges == [(1, 2)]
    assert device.points[0].scale == 2.0 and isinstance(device.points[0].scale, float)
    assert device.mixed == 7 and isinstance(device.mixed, int)
    assert device.model_fields_set == {
        "name", "port", "ratio", "colour", "path", "every", "tag", "ranges", "points", "mixed"
    }


def test_defaults_are_not_checked_unless_asked() -> None:
    class Lax(ConfigModel):
        a: int = Field(default=-1, ge=0)
        b: int = Field(default=-1, ge=0, validate_default=True)

    assert _problems(Lax, {}) == [("b", "must be at least 0")]


def test_dump_gives_text_back_and_validates_to_an_equal_model() -> None:
    device = Device.model_validate({"name": "a", "every": "1 min", "colour": "blue",
                                    "path": "/x", "ranges": [[1, 2]]})
    json = device.model_dump(mode="json")
    assert json["every"] == "1 min"
    assert json["colour"] == "blue"
    assert json["path"] == "/x"
    assert json["ranges"] == [[1, 2]]
    python = device.model_dump()
    assert python["colour"] is Colour.BLUE and python["ranges"] == [(1, 2)]
    assert Device.model_validate(python) == device
    assert Device.model_validate(json) == device


class _Window(ConfigModel):
    low: int = Field(ge=0)
    high: int = Field(ge=0)
    note: str = ""

    @field_validator("high")
    @classmethod
    def _above_low(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("low")
        if isinstance(low, int) and value < low:
            raise ValueError(f"{value} is below low ({low})")
        return value

    @field_validator("note")
    @classmethod
    def _stripped(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.low == self.high:
            raise ValueError("low and high must differ")
        return self


def test_field_validators_see_earlier_keys_and_model_validators_run_last() -> None:
    assert _problems(_Window, {"low": 5, "high": 3}) == [("high", "3 is below low (5)")]
    # a key that failed its type is not in info.data: no second line about it
    assert _problems(_Window, {"low": -1, "high": 3}) == [("low", "must be at least 0")]
    # the model's own rule only once every key is valid
    assert _problems(_Window, {"low": 2, "high": 2}) == [("", "low and high must differ")]
    assert _Window.model_validate({"low": 1, "high": 2, "note": " x "}).note == "x"


class _Defaulted(ConfigModel):
    gw: str
    client: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _client_from_gw(cls, data: Any) -> Any:
        if isinstance(data, dict) and "client" not in data:
            return {**data, "client": data.get("gw")}
        return data


def test_a_before_model_validator_rewrites_the_table() -> None:
    assert _Defaulted.model_validate({"gw": "g"}).client == "g"
    assert _Defaulted(gw="h").client == "h"


def test_models_are_frozen_hashable_and_copied_without_checks() -> None:
    point = Point.model_validate({"name": "p", "address": 1})
    with pytest.raises(AttributeError, match="frozen"):
        point.address = 2  # type: ignore[misc]
    assert hash(point) == hash(Point.model_validate({"name": "p", "address": 1}))
    moved = point.model_copy(update={"address": 9})
    assert (moved.address, point.address) == (9, 1)
    assert "address" in moved.model_fields_set
    assert moved != point


def test_an_instance_passes_as_it_is() -> None:
    point = Point.model_validate({"name": "p", "address": 1})
    device = Device.model_validate({"name": "a", "points": [point]})
    assert device.points[0] is point


def test_a_subclass_inherits_keys_validators_and_may_redefine_defaults() -> None:
    class Base(ConfigModel):
        name: str
        every: DeviceDurationField = Duration.parse("15 s")

        @field_validator("name")
        @classmethod
        def _lower(cls, value: str) -> str:
            if value != value.lower():
                raise ValueError("lower case only")
            return value

    class Child(Base):
        every: DeviceDurationField = Duration.parse("1 min")
        extra: int = 0

    assert list(Child.model_fields) == ["name", "every", "extra"]
    assert Child.model_validate({"name": "a"}).every.text == "1 min"
    assert _problems(Child, {"name": "A", "every": 5}) == [
        ("name", "lower case only"), ("every", "must be a string")
    ]
    assert Child.model_fields["every"].default == Duration.parse("1 min")


def test_nan_only_where_a_model_allows_it() -> None:
    class Reading(ConfigModel):
        allow_inf_nan = True
        value: float

    assert math.isnan(Reading.model_validate({"value": math.nan}).value)


class _Either(ConfigModel):
    value: str | list[int]
    fallback: int | str | None = None


def test_a_union_takes_its_first_fitting_member_and_words_the_closest() -> None:
    assert _Either.model_validate({"value": "a"}).value == "a"
    assert _Either.model_validate({"value": [1, 2], "fallback": "x"}).value == [1, 2]
    assert _Either.model_validate({"value": "a", "fallback": None}).fallback is None
    assert _problems(_Either, {"value": [1, "2"]}) == [("value.1", "must be an integer")]
    assert _problems(_Either, {"value": 5}) == [("value", "must be a string")]
    assert _Either.model_validate({"value": [3]}).model_dump(mode="json") == {
        "value": [3], "fallback": None
    }


def test_a_before_field_validator_sees_the_value_as_written() -> None:
    class Loose(ConfigModel):
        port: int

        @field_validator("port", mode="before")
        @classmethod
        def _from_text(cls, value: object) -> object:
            if isinstance(value, str):
                if not value.isdigit():
                    raise ValueError(f"{value!r} is not a port number")
                return int(value)
            return value

    assert Loose.model_validate({"port": "502"}).port == 502
    assert _problems(Loose, {"port": "x"}) == [("port", "'x' is not a port number")]
    assert _problems(Loose, {"port": 1.5}) == [("port", "must be an integer")]


def test_unsupported_annotations_are_a_programming_error() -> None:
    class Odd(ConfigModel):
        value: dict[str, int]

    with pytest.raises(TypeError, match="unsupported annotation"):
        Odd.model_validate({"value": {}})


_SCALARS = st.fixed_dictionaries(
    {"name": st.text(min_size=1, max_size=5)},
    optional={
        "port": st.integers(min_value=1, max_value=65535),
        "ratio": st.floats(min_value=0.01, max_value=0.99),
        "mode": st.sampled_from(["query", "active"]),
        "colour": st.sampled_from(["red", "blue"]),
        "enabled": st.booleans(),
        "every": st.sampled_from(["1 s", "90 s", "2 min", "1 h"]),
        "ranges": st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), max_size=3),
    },
)


@given(_SCALARS)
def test_any_valid_table_round_trips_through_its_dump(data: dict[str, Any]) -> None:
    device = Device.model_validate(data)
    assert Device.model_validate(device.model_dump()) == device
    assert Device.model_validate(device.model_dump(mode="json")) == device
    assert device.model_fields_set == set(data)
