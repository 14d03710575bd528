"""Plantower PMS5003-family frames (the models' data manuals): pure building and parsing.

A data frame is ``42 4D``, the frame length (big-endian; data words × 2 + 2), big-endian data
words and the 16-bit sum of every byte before it. The PMS5003 / PMS7003 / PMSA003 send 13 words
(length 28): PM1.0/2.5/10 at CF=1, PM1.0/2.5/10 atmospheric, counts per 0.1 L above
0.3/0.5/1/2.5/5/10 µm, a reserved word. The other models reuse those words (:data:`MODELS`):

- PMS5003S (length 28): word 13 is formaldehyde (mg/m³ × 1000);
- PMS5003T (length 28): words 10 and 11 are temperature and relative humidity (× 10), not the
  counts above 2.5 and 5 µm; the counts above 10 µm, word 12, are not sent either;
- PMS5003ST (length 36, 17 words): the 12 PMS5003 values, then formaldehyde, temperature,
  humidity, a reserved word and the firmware version / error code.

A command is ``42 4D CMD DH DL`` plus its 16-bit sum; mode changes are answered with an 8-byte
frame of length 4. Every function raises :class:`Pms5003FrameError` (a ``DeviceProtocolError``)
and nothing else on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from agent.errors import DeviceProtocolError
from drivers.frame_scan import scan_fixed_frame, skip_to_header

__all__ = [
    "DATA_LENGTH",
    "FIELDS",
    "FRAME_SIZE",
    "HEADER",
    "MODELS",
    "Answer",
    "Command",
    "DataFrame",
    "Field",
    "FrameScanner",
    "Model",
    "Pms5003FrameError",
    "build_answer",
    "build_command",
    "build_data_frame",
    "checksum",
    "decode",
    "encode_word",
    "parse_command",
    "parse_frame",
    "scan_command",
]

HEADER = b"\x42\x4d"
DATA_LENGTH = 28
ANSWER_LENGTH = 4
FRAME_SIZE = 4 + DATA_LENGTH
COMMAND_SIZE = 7

FIELDS = (
    "pm1_0_cf1", "pm2_5_cf1", "pm10_cf1",
    "pm1_0", "pm2_5", "pm10",
    "count_0_3", "count_0_5", "count_1_0", "count_2_5", "count_5_0", "count_10",
)  # fmt: skip
"""The 12 values of a PMS5003 data frame, in frame order (the 13th word is reserved)."""

MASS = "µg/m³"
COUNT = "1/0.1L"  # particles per 0.1 litre of air


@dataclass(frozen=True, slots=True)
class Field:
    """One value of a data frame: its data word (0-based), how to scale it, its unit."""

    name: str
    word: int
    unit: str
    divisor: int = 1  # the value is the word / divisor (10 for °C × 10)
    signed: bool = False  # the word is two's complement (temperatures below 0)

    def decode(self, word: int) -> int | float:
        """The value of a data word."""
        raw = word - 0x10000 if self.signed and word & 0x8000 else word
        return raw if self.divisor == 1 else raw / self.divisor


@dataclass(frozen=True, slots=True)
class Model:
    """What one sensor model sends: its data length and the values in its data words."""

    name: str
    data_length: int
    fields: tuple[Field, ...]

    @property
    def words(self) -> int:
        """Data words in a frame (the checksum not counted)."""
        return (self.data_length - 2) // 2

    def field(self, name: str) -> Field:
        """A field by name (KeyError when this model does not send it)."""
        for candidate in self.fields:
            if candidate.name == name:
                return candidate
        raise KeyError(name)


_PM = tuple(Field(name, i, MASS) for i, name in enumerate(FIELDS[:6]))
_COUNTS = tuple(Field(name, 6 + i, COUNT) for i, name in enumerate(FIELDS[6:]))
_HCHO = "formaldehyde"
_STANDARD = _PM + _COUNTS

MODELS: dict[str, Model] = {
    model.name: model
    for model in (
        Model("pms5003", 28, _STANDARD),
        Model("pms7003", 28, _STANDARD),
        Model("pmsa003", 28, _STANDARD),
        Model("pms5003s", 28, (*_STANDARD, Field(_HCHO, 12, "mg/m³", 1000))),
        Model("pms5003t", 28, (*_PM, *_COUNTS[:3],
                               Field("temperature", 9, "°C", 10, signed=True),
                               Field("humidity", 10, "%", 10))),
        Model("pms5003st", 36, (*_STANDARD, Field(_HCHO, 12, "mg/m³", 1000),
                                Field("temperature", 13, "°C", 10, signed=True),
                                Field("humidity", 14, "%", 10))),
    )
}
"""Every supported model by its ``model`` setting."""


class Command(IntEnum):
    """Command bytes; DL selects the option (mode 0 passive / 1 active, 0 sleep / 1 wake)."""

    MODE = 0xE1
    READ = 0xE2
    SLEEP = 0xE4


class Pms5003FrameError(DeviceProtocolError):
    """A PMS5003 frame is malformed (length, checksum)."""


@dataclass(frozen=True, slots=True)
class DataFrame:
    """The data words of a frame: the first 12 (``FIELDS`` order for a PMS5003), the 13th,
    and for a 17-word frame (PMS5003ST) the rest in ``extra``."""

    values: tuple[int, ...]
    reserved: int
    extra: tuple[int, ...] = ()

    @property
    def words(self) -> tuple[int, ...]:
        """Every data word, in frame order."""
        return (*self.values, self.reserved, *self.extra)

    def value(self, name: str) -> int:
        """One raw word by its PMS5003 ``FIELDS`` name."""
        return self.values[FIELDS.index(name)]


def decode(frame: DataFrame, model: Model) -> dict[str, int | float]:
    """The values ``model`` sends, decoded from a frame with its data length."""
    words = frame.words
    if len(words) != model.words:
        raise Pms5003FrameError(
            f"a {model.name} sends {model.words} data words, this frame has {len(words)}: "
            "check the model setting"
        )
    return {f.name: f.decode(words[f.word]) for f in model.fields}


def encode_word(field: Field, value: float) -> int:
    """The data word that carries ``value`` (for the simulator); clamped to the word's range."""
    raw = round(value * field.divisor)
    if field.signed:
        raw = max(-0x8000, min(0x7FFF, raw)) & 0xFFFF
    return max(0, min(0xFFFF, raw))


@dataclass(frozen=True, slots=True)
class Answer:
    """The 8-byte answer to a mode command: the command byte and its option."""

    command: int
    data: int


def checksum(data: bytes) -> int:
    """The 16-bit sum of the bytes."""
    return sum(data) & 0xFFFF


def build_command(command: int, data: int = 0) -> bytes:
    """``42 4D CMD DH DL`` and its sum, e.g. read = ``42 4D E2 00 00 01 71``."""
    body = HEADER + bytes([command]) + data.to_bytes(2, "big")
    return body + checksum(body).to_bytes(2, "big")


PASSIVE = build_command(Command.MODE, 0)
ACTIVE = build_command(Command.MODE, 1)
READ = build_command(Command.READ, 0)
SLEEP = build_command(Command.SLEEP, 0)
WAKE = build_command(Command.SLEEP, 1)


def parse_command(frame: bytes) -> tuple[int, int]:
    """``(CMD, DH DL)`` of a 7-byte command (for the simulator)."""
    if len(frame) != COMMAND_SIZE or frame[:2] != HEADER:
        raise Pms5003FrameError(f"not a PMS5003 command: {frame.hex(' ')}")
    if checksum(frame[:5]) != int.from_bytes(frame[5:7], "big"):
        raise Pms5003FrameError(f"PMS5003 command checksum wrong: {frame.hex(' ')}")
    return frame[2], int.from_bytes(frame[3:5], "big")


def scan_command(buffer: bytes) -> tuple[int, tuple[int, int] | None]:
    """Resync on ``42 4D`` and take a valid command (``SerialLink.read_frame`` scanner)."""
    return scan_fixed_frame(buffer, HEADER, COMMAND_SIZE, parse_command, Pms5003FrameError)


def build_data_frame(
    values: tuple[int, ...] | list[int], reserved: int = 0x9700, extra: tuple[int, ...] = ()
) -> bytes:
    """A data frame for the 12 values (each clamped to 0..65535), the 13th word and, for a
    PMS5003ST, the 4 words after it."""
    if len(values) != len(FIELDS):
        raise ValueError(f"a PMS5003 frame has {len(FIELDS)} values, got {len(values)}")
    words = [max(0, min(0xFFFF, int(v))) for v in (*values, reserved, *extra)]
    length = 2 * len(words) + 2
    body = HEADER + length.to_bytes(2, "big") + b"".join(w.to_bytes(2, "big") for w in words)
    return body + checksum(body).to_bytes(2, "big")


def build_answer(command: int, data: int) -> bytes:
    """The 8-byte answer to a mode command (for the simulator)."""
    body = HEADER + ANSWER_LENGTH.to_bytes(2, "big") + bytes([command, data & 0xFF])
    return body + checksum(body).to_bytes(2, "big")


ST_DATA_LENGTH = 36
DATA_LENGTHS = (DATA_LENGTH, ST_DATA_LENGTH)


def parse_frame(frame: bytes, data_length: int = DATA_LENGTH) -> DataFrame | Answer:
    """Check a whole frame's header, length (``data_length`` for data) and sum; decode it."""
    if len(frame) < 4 or frame[:2] != HEADER:
        raise Pms5003FrameError(f"not a PMS5003 frame (no 42 4D header): {frame[:8].hex(' ')}")
    length = int.from_bytes(frame[2:4], "big")
    if length not in (data_length, ANSWER_LENGTH):
        other = {DATA_LENGTH: "a PMS5003/5003S/5003T/7003", ST_DATA_LENGTH: "a PMS5003ST"}
        hint = f"{other[length]} sends it: check the model setting" if length in other else (
            "a PMS1003/3003 (length 20) is not supported, otherwise noise on the line")
        raise Pms5003FrameError(f"PMS5003 frame length {length}, expected {data_length}: {hint}")
    if len(frame) != 4 + length:
        raise Pms5003FrameError(
            f"PMS5003 frame is {len(frame)} bytes, its length says {4 + length}"
        )
    expected = int.from_bytes(frame[-2:], "big")
    if checksum(frame[:-2]) != expected:
        raise Pms5003FrameError(
            f"PMS5003 checksum {expected:04X}, computed {checksum(frame[:-2]):04X}: noise on "
            "the line; check the wiring and ground"
        )
    if length == ANSWER_LENGTH:
        return Answer(frame[4], frame[5])
    words = tuple(int.from_bytes(frame[i : i + 2], "big") for i in range(4, len(frame) - 2, 2))
    return DataFrame(words[:12], words[12], words[13:])


class FrameScanner:
    """A ``SerialLink.read_frame`` scanner for data frames; mode-change answers are dropped.

    It resynchronises on ``42 4D`` and slides past candidates with a bad length or sum (a false
    header in noise), remembering the last such failure in ``rejected``: when no good frame
    follows, that is the reason to report.
    """

    def __init__(self, data_length: int = DATA_LENGTH) -> None:
        self.rejected: Pms5003FrameError | None = None
        self.data_length = data_length

    def __call__(self, buffer: bytes) -> tuple[int, DataFrame | None]:
        start = skip_to_header(buffer, HEADER)
        if start != 0:
            return start, None
        if len(buffer) < 4:
            return 0, None
        length = int.from_bytes(buffer[2:4], "big")
        if length in (*DATA_LENGTHS, ANSWER_LENGTH) and len(buffer) < 4 + length:
            return 0, None
        try:
            frame = parse_frame(buffer[: 4 + length], self.data_length)
        except Pms5003FrameError as exc:
            self.rejected = exc
            return 1, None
        if isinstance(frame, Answer):
            return 4 + length, None
        return 4 + length, frame
