"""The line protocol, pure: table-driven cases and fuzzing (only the driver's own errors)."""

from __future__ import annotations

import pytest
from agent.errors import DeviceProtocolError
from hypothesis import given
from hypothesis import strategies as st

from ssc_driver_example.protocol import (
    AnswerError,
    SensorError,
    Value,
    checksum,
    encode_answer,
    encode_error,
    parse_answer,
)


def framed(body: str) -> bytes:
    return body.encode() + b"*%02X\r\n" % checksum(body.encode())


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (framed("OK t=21.5 rh=48 p=10132"), {"t": 21.5, "rh": 48, "p": 10132}),
        (b"OK t=21.5 rh=48 p=10132*22\r\n", {"t": 21.5, "rh": 48, "p": 10132}),  # the README's
        (framed("OK t=-3.25"), {"t": -3.25}),
        (framed("OK t=-"), {"t": None}),
        (framed("OK"), {}),
        (framed("OK t=0").removesuffix(b"\r\n"), {"t": 0}),  # no line end: still one answer
        (framed("OK t=0").removesuffix(b"\r\n") + b"\n", {"t": 0}),  # bare \n
    ],
)
def test_valid_answers_parse(line: bytes, expected: dict[str, Value]) -> None:
    assert parse_answer(line) == expected


def test_lower_case_checksum_digits_are_accepted() -> None:
    body = b"OK t=21.5 rh=48"  # checksum 0x7E
    line = body + b"*%02x\r\n" % checksum(body)
    assert line.endswith(b"*7e\r\n")
    assert parse_answer(line) == {"t": 21.5, "rh": 48}


def test_ints_stay_ints_and_decimals_become_floats() -> None:
    values = parse_answer(framed("OK a=12 b=12.0"))
    assert type(values["a"]) is int
    assert type(values["b"]) is float


@pytest.mark.parametrize(
    ("line", "error", "message"),
    [
        (b"OK t=21.5\r\n", AnswerError, "no '\\*' checksum"),
        (b"OK t=21.5*ZZ\r\n", AnswerError, "not two hex digits"),
        (b"OK t=21.5*00\r\n", AnswerError, "does not match"),
        (framed("HELLO"), AnswerError, "neither OK nor ERR"),
        (framed("OK t=abc"), AnswerError, "is not a number"),
        (framed("OK t=nan"), AnswerError, "is not a number"),
        (framed("OK t=1e5"), AnswerError, "is not a number"),
        (framed("OK t=1 t=2"), AnswerError, "appears twice"),
        (framed("OK t"), AnswerError, "not key=value"),
        (framed("OK T=1"), AnswerError, "not key=value"),
        (framed("OK  t=1"), AnswerError, "not key=value"),
        (b"\xff\xfe*00\r\n", AnswerError, "not ASCII"),
        (framed("OK t=1\tx"), AnswerError, "control characters"),
        (framed("OK " + " ".join(f"k{i}=1" for i in range(200))), AnswerError, "more than"),
        (framed("ERR warming up"), SensorError, "warming up"),
        (framed("ERR"), SensorError, "no reason given"),
    ],
)
def test_bad_answers_raise_the_drivers_error(
    line: bytes, error: type[DeviceProtocolError], message: str
) -> None:
    with pytest.raises(error, match=message):
        parse_answer(line)


def test_error_answers_round_trip() -> None:
    with pytest.raises(SensorError, match="fan blocked"):
        parse_answer(encode_error("fan blocked"))


def test_encode_refuses_what_the_parser_would_refuse() -> None:
    with pytest.raises(ValueError, match="is not a key"):
        encode_answer({"Temp": 1})
    with pytest.raises(ValueError, match="plain decimals only"):
        encode_answer({"t": float("inf")})


keys = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
values = st.one_of(
    st.none(),
    st.integers(min_value=-(10**14), max_value=10**14),
    st.decimals(min_value=-(10**6), max_value=10**6, places=3, allow_nan=False).map(
        lambda d: float(f"{d:.3f}")
    ),
)


@given(st.dictionaries(keys, values, max_size=8))
def test_what_a_sensor_sends_parses_back_to_the_same_values(sent: dict[str, Value]) -> None:
    assert parse_answer(encode_answer(sent)) == sent


@given(st.binary(max_size=600))
def test_any_bytes_give_values_or_the_drivers_protocol_error(line: bytes) -> None:
    try:
        result = parse_answer(line)
    except DeviceProtocolError:
        return
    assert isinstance(result, dict)


@given(st.dictionaries(keys, values, min_size=1, max_size=6), st.data())
def test_one_changed_byte_is_caught_or_harmless(
    sent: dict[str, Value], data: st.DataObject
) -> None:
    line = bytearray(encode_answer(sent))
    i = data.draw(st.integers(min_value=0, max_value=len(line) - 3))  # not the line end
    line[i] = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != line[i]))
    try:
        parsed = parse_answer(bytes(line))
    except DeviceProtocolError:
        return
    # XOR catches every single-byte change of the body; only a change of the checksum's
    # letter case (a ↔ A) can still parse, and then to the same values.
    assert parsed == sent
