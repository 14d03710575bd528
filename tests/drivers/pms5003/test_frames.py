"""PMS5003 frames: docs/protocols.md §4 vectors; fuzzed parsers raise only their own error."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import DeviceProtocolError
from drivers.pms5003 import frames

VECTOR = bytes.fromhex(
    "42 4D 00 1C 00 05 00 09 00 0B 00 05 00 09 00 0B 04 B0 01 5E 00 3C 00 08 00 02 00 01 97 00"
    " 02 CE"
)
VALUES = (5, 9, 11, 5, 9, 11, 1200, 350, 60, 8, 2, 1)


def test_frame_errors_are_protocol_errors() -> None:
    assert issubclass(frames.Pms5003FrameError, DeviceProtocolError)


def test_data_frame_vector() -> None:
    frame = frames.parse_frame(VECTOR)
    assert isinstance(frame, frames.DataFrame)
    assert frame.values == VALUES
    assert frame.reserved == 0x9700
    assert dict(zip(frames.FIELDS, frame.values, strict=True))["count_0_3"] == 1200
    assert frame.value("pm2_5") == 9
    assert frames.build_data_frame(VALUES) == VECTOR


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (frames.PASSIVE, "42 4D E1 00 00 01 70"),
        (frames.ACTIVE, "42 4D E1 00 01 01 71"),
        (frames.READ, "42 4D E2 00 00 01 71"),
        (frames.SLEEP, "42 4D E4 00 00 01 73"),
        (frames.WAKE, "42 4D E4 00 01 01 74"),
    ],
)
def test_command_vectors(built: bytes, expected: str) -> None:
    assert built == bytes.fromhex(expected)
    assert frames.parse_command(built) == (built[2], built[4])


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (VECTOR[:-1] + b"\xcf", "checksum 02CF, computed 02CE"),
        (VECTOR[:20], "20 bytes, its length says 32"),
        (b"\x42\x4d\x00\x14" + VECTOR[4:24], "length 20"),
        (b"\x42\x4e" + VECTOR[2:], "no 42 4D header"),
        (b"\x42", "no 42 4D header"),
    ],
)
def test_bad_frames(frame: bytes, message: str) -> None:
    with pytest.raises(frames.Pms5003FrameError, match=message):
        frames.parse_frame(frame)


def test_mode_answer_is_skipped_by_the_scanner() -> None:
    answer = frames.build_answer(frames.Command.MODE, 0)
    assert frames.parse_frame(answer) == frames.Answer(frames.Command.MODE, 0)
    assert scan_all(answer + VECTOR) == [frames.parse_frame(VECTOR)]


def scan_all(buffer: bytes) -> list[frames.DataFrame]:
    """Run a scanner over a buffer as SerialLink.read_frame does, without the waiting."""
    scanner = frames.FrameScanner()
    found: list[frames.DataFrame] = []
    while True:
        consumed, frame = scanner(buffer)
        assert 0 <= consumed <= len(buffer)
        buffer = buffer[consumed:]
        if frame is not None:
            found.append(frame)
        elif consumed == 0:
            return found


noise_without_header = st.binary(max_size=80).map(lambda b: b.replace(b"\x42", b"\x00"))


@given(st.binary(max_size=80))
def test_parsers_raise_only_their_protocol_error(data: bytes) -> None:
    for parse in (frames.parse_frame, frames.parse_command):
        with contextlib.suppress(frames.Pms5003FrameError):  # anything else fails the test
            parse(data)
    scan_all(data)  # never raises, always makes progress


@given(noise_without_header, noise_without_header,
       st.lists(st.integers(0, 0xFFFF), min_size=12, max_size=12))
def test_scanner_finds_a_frame_inside_noise(
    before: bytes, after: bytes, values: list[int]
) -> None:
    frame = frames.build_data_frame(values)
    assert scan_all(before + frame + after) == [frames.DataFrame(tuple(values), 0x9700)]


@given(st.integers(0, 31), st.integers(1, 255))
def test_any_single_byte_corruption_is_caught(position: int, delta: int) -> None:
    corrupted = bytearray(VECTOR)
    corrupted[position] = (corrupted[position] + delta) & 0xFF
    with pytest.raises(frames.Pms5003FrameError):
        frames.parse_frame(bytes(corrupted))
    assert scan_all(bytes(corrupted)) == []


@given(st.integers(0, 31))
def test_truncated_frames(length: int) -> None:
    with pytest.raises(frames.Pms5003FrameError):
        frames.parse_frame(VECTOR[:length])
    assert frames.FrameScanner()(VECTOR[:length]) == (0, None)  # waits for the rest


# The words of one frame per model: VALUES, then what the model puts after or instead of them.
@pytest.mark.parametrize(
    ("model", "words", "expected"),
    [
        ("pms5003", [*VALUES, 0x9700], dict(zip(frames.FIELDS, VALUES, strict=True))),
        # PMS5003T: words 10 and 11 are temperature × 10 (signed) and humidity × 10.
        ("pms5003t", [*VALUES[:9], 0xFFDD, 612, 0, 0x9700],
         {**dict(zip(frames.FIELDS[:9], VALUES[:9], strict=True)),
          "temperature": -3.5, "humidity": 61.2}),
        ("pms5003t", [*VALUES[:9], 235, 1000, 0, 0x9700],
         {**dict(zip(frames.FIELDS[:9], VALUES[:9], strict=True)),
          "temperature": 23.5, "humidity": 100.0}),
        ("pms5003s", [*VALUES, 45],
         {**dict(zip(frames.FIELDS, VALUES, strict=True)), "formaldehyde": 0.045}),
        # PMS5003ST: 17 words, formaldehyde / 1000, temperature / 10, humidity / 10.
        ("pms5003st", [*VALUES, 1234, 0x8000, 0, 0, 0x9100],
         {**dict(zip(frames.FIELDS, VALUES, strict=True)),
          "formaldehyde": 1.234, "temperature": -3276.8, "humidity": 0.0}),
    ],
)
def test_models_decode_their_words(
    model: str, words: list[int], expected: dict[str, float]
) -> None:
    frame = frames.build_data_frame(tuple(words[:12]), words[12], tuple(words[13:]))
    spec = frames.MODELS[model]
    assert len(frame) == 4 + spec.data_length
    parsed = frames.parse_frame(frame, spec.data_length)
    assert isinstance(parsed, frames.DataFrame)
    assert frames.decode(parsed, spec) == expected
    assert [f.name for f in spec.fields] == list(expected)


def test_the_st_frame_is_40_bytes_with_its_own_length_field() -> None:
    frame = frames.build_data_frame(VALUES, 0, (1, 2, 3, 4))
    assert len(frame) == 40 and frame[2:4] == b"\x00\x24"
    with pytest.raises(frames.Pms5003FrameError, match="a PMS5003ST sends it: check the model"):
        frames.parse_frame(frame)  # expecting a PMS5003's 28
    short = frames.build_data_frame(VALUES)
    with pytest.raises(frames.Pms5003FrameError, match="a PMS5003/5003S/5003T/7003 sends it"):
        frames.parse_frame(short, frames.MODELS["pms5003st"].data_length)
    scanner = frames.FrameScanner(frames.MODELS["pms5003st"].data_length)
    assert scanner(frame) == (40, frames.DataFrame(VALUES, 0, (1, 2, 3, 4)))


@given(st.sampled_from(sorted(frames.MODELS)), st.data())
def test_model_values_round_trip(model: str, data: st.DataObject) -> None:
    spec = frames.MODELS[model]
    words = [0] * spec.words
    expected: dict[str, float] = {}
    for field in spec.fields:
        low, high = (-0x8000, 0x7FFF) if field.signed else (0, 0xFFFF)
        raw = data.draw(st.integers(low, high))
        value = raw / field.divisor if field.divisor != 1 else raw
        words[field.word] = frames.encode_word(field, value)
        expected[field.name] = value
    frame = frames.build_data_frame(tuple(words[:12]), words[12], tuple(words[13:]))
    parsed = frames.parse_frame(frame, spec.data_length)
    assert isinstance(parsed, frames.DataFrame)
    assert frames.decode(parsed, spec) == expected
