"""The sensor's line protocol, pure: build and parse answers, no I/O.

The client sends ``READ\\r\\n``. The sensor answers one ASCII line::

    OK t=21.5 rh=48 p=10132 n=17*57\\r\\n
    ERR warming up*29\\r\\n

The two hex digits after ``*`` are the XOR of every byte before it (as in NMEA 0183). A value
is a decimal number (``21.5``, ``-3``, ``48``) or ``-`` when the sensor has none right now.
``ERR`` means the sensor answered but cannot measure; its text says why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import reduce

from agent.errors import DeviceProtocolError

REQUEST = b"READ\r\n"
MAX_LINE_BYTES = 512

Value = int | float | None

_KEY = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_NUMBER = re.compile(r"^-?(0|[1-9][0-9]{0,14})(\.[0-9]{1,9})?$")


class AnswerError(DeviceProtocolError):
    """The sensor answered something that is not a valid answer line."""


class SensorError(DeviceProtocolError):
    """The sensor answered ``ERR``: it is there but cannot measure right now."""


def checksum(body: bytes) -> int:
    """XOR of every byte of ``body``."""
    return reduce(lambda acc, byte: acc ^ byte, body, 0)


def encode_answer(values: Mapping[str, Value]) -> bytes:
    """The answer line for ``values`` (what a sensor sends; the simulator uses it)."""
    pairs = []
    for key, value in values.items():
        if not _KEY.match(key):
            raise ValueError(f"{key!r} is not a key: lowercase letters, digits and _, at most 32")
        text = "-" if value is None else str(value)
        if value is not None and not _NUMBER.match(text):
            raise ValueError(f"{key}={text}: the protocol carries plain decimals only")
        pairs.append(f"{key}={text}")
    return _frame(" ".join(["OK", *pairs]).encode("ascii"))


def encode_error(reason: str) -> bytes:
    """An ``ERR`` answer line with ``reason`` (printable ASCII, no ``*``)."""
    return _frame(f"ERR {reason}".encode("ascii"))


def _frame(body: bytes) -> bytes:
    return body + b"*%02X\r\n" % checksum(body)


def parse_answer(line: bytes) -> dict[str, Value]:
    """The values of one answer line; AnswerError (or SensorError for ``ERR``) otherwise."""
    if len(line) > MAX_LINE_BYTES:
        raise AnswerError(f"answer is {len(line)} bytes long, more than {MAX_LINE_BYTES}")
    text = _ascii(line.removesuffix(b"\n").removesuffix(b"\r"))
    body, star, tail = text.rpartition("*")
    if not star:
        raise AnswerError(f"answer {_show(text)} has no '*' checksum")
    if not re.fullmatch(r"[0-9A-Fa-f]{2}", tail):
        raise AnswerError(f"answer {_show(text)}: {tail!r} after '*' is not two hex digits")
    expected = checksum(body.encode("ascii"))
    if int(tail, 16) != expected:
        raise AnswerError(
            f"answer {_show(text)}: checksum {tail.upper()} does not match {expected:02X} "
            "(noise on the line, or another program talking to the sensor)"
        )
    word, _, rest = body.partition(" ")
    if word == "ERR":
        raise SensorError(f"sensor reports an error: {rest or 'no reason given'}")
    if word != "OK":
        raise AnswerError(f"answer {_show(text)} starts with neither OK nor ERR")
    values: dict[str, Value] = {}
    for pair in rest.split(" ") if rest else []:
        key, eq, raw = pair.partition("=")
        if not eq or not _KEY.match(key):
            raise AnswerError(f"answer {_show(text)}: {pair!r} is not key=value")
        if key in values:
            raise AnswerError(f"answer {_show(text)}: key {key!r} appears twice")
        values[key] = _value(raw, key, text)
    return values


def _value(raw: str, key: str, text: str) -> Value:
    if raw == "-":
        return None
    if not _NUMBER.match(raw):
        raise AnswerError(f"answer {_show(text)}: {key}={raw!r} is not a number")
    return float(raw) if "." in raw else int(raw)


def _ascii(line: bytes) -> str:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError as exc:
        raise AnswerError(f"answer {line[:40]!r} is not ASCII (wrong port or baud rate?)") from exc
    if not text.isprintable():
        raise AnswerError(f"answer {_show(text)} holds control characters")
    return text


def _show(text: str) -> str:
    """The answer, shortened for a log line."""
    return repr(text if len(text) <= 60 else text[:57] + "...")
