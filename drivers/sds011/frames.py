"""Nova SDS011 frames (Laser Dust Sensor Control Protocol V1.3): pure building and parsing.

Replies are 10 bytes ``AA CMD D1..D6 CHK AB`` with CHK = sum(D1..D6) & 0xFF; the data reply
(``CMD = C0``) carries PM2.5 and PM10 as little-endian tenths of µg/m³ and the two ID bytes.
Commands are 19 bytes ``AA B4 D1..D13 ID1 ID2 CHK AB`` with CHK = sum(D1..ID2) & 0xFF.
Every function here raises :class:`Sds011FrameError` (a ``DeviceProtocolError``) and nothing else
on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from agent.errors import DeviceProtocolError
from drivers.frame_scan import scan_fixed_frame

__all__ = [
    "ANY_ID",
    "COMMAND_SIZE",
    "REPLY_SIZE",
    "Command",
    "DataFrame",
    "Reply",
    "ReplyScanner",
    "Sds011FrameError",
    "build_command",
    "build_data_frame",
    "build_reply",
    "checksum",
    "data_from_reply",
    "parse_command",
    "parse_data_frame",
    "parse_device_id",
    "parse_reply",
    "query_data",
    "scan_command",
    "set_reporting_mode",
    "set_working",
]

HEAD = 0xAA
TAIL = 0xAB
COMMAND_ID = 0xB4
DATA_REPLY = 0xC0
SETTING_REPLY = 0xC5
REPLY_SIZE = 10
COMMAND_SIZE = 19
ANY_ID = 0xFFFF


class Command(IntEnum):
    """The first data byte (D1) of a command, echoed in ``AA C5`` setting replies."""

    REPORTING_MODE = 0x02
    QUERY_DATA = 0x04
    DEVICE_ID = 0x05
    SLEEP_WORK = 0x06
    FIRMWARE = 0x07
    WORKING_PERIOD = 0x08


class Sds011FrameError(DeviceProtocolError):
    """An SDS011 frame is malformed (wrong length, head/tail, checksum)."""


@dataclass(frozen=True, slots=True)
class DataFrame:
    """A measurement: PM2.5 and PM10 in µg/m³ and the sensor's ID (ID1 << 8 | ID2)."""

    pm2_5: float
    pm10: float
    device_id: int


@dataclass(frozen=True, slots=True)
class Reply:
    """Any 10-byte reply: its command byte (C0 data, C5 setting), six data bytes and ID."""

    command: int
    data: bytes
    device_id: int


def checksum(data: bytes) -> int:
    """The SDS011 checksum: the low byte of the sum."""
    return sum(data) & 0xFF


def parse_device_id(text: str) -> int:
    """``"any"`` → 0xFFFF; ``"BCF9"`` (ID1 ID2 as they appear on the wire) → 0xBCF9."""
    if text.strip().lower() == "any":
        return ANY_ID
    try:
        value = int(text, 16)
    except ValueError:
        value = -1
    if len(text) != 4 or not 0 <= value <= 0xFFFF:
        raise ValueError(
            f"{text!r} is not a sensor ID: write the two ID bytes as 4 hex digits as the sensor "
            "sends them (e.g. 'BCF9'), or 'any'"
        )
    return value


# ---------------------------------------------------------------------------- commands


def build_command(command: int, data: bytes = b"", device_id: int = ANY_ID) -> bytes:
    """A 19-byte command frame: D1 = ``command``, then up to 12 more data bytes, zero-padded."""
    if len(data) > 12:
        raise ValueError(f"an SDS011 command carries at most 13 data bytes, got {1 + len(data)}")
    body = bytes([command]) + data.ljust(12, b"\0") + device_id.to_bytes(2, "big")
    return bytes([HEAD, COMMAND_ID]) + body + bytes([checksum(body), TAIL])


def query_data(device_id: int = ANY_ID) -> bytes:
    """Ask for one measurement (query reporting mode)."""
    return build_command(Command.QUERY_DATA, device_id=device_id)


def set_reporting_mode(query: bool, device_id: int = ANY_ID) -> bytes:
    """Set the reporting mode: query (answers on request) or active (a frame every second)."""
    return build_command(Command.REPORTING_MODE, bytes([1, int(query)]), device_id)


def set_working(work: bool, device_id: int = ANY_ID) -> bytes:
    """Wake the sensor (fan and laser on) or put it to sleep."""
    return build_command(Command.SLEEP_WORK, bytes([1, int(work)]), device_id)


def parse_command(frame: bytes) -> tuple[int, bytes, int]:
    """``(D1, D2..D13, device_id)`` of a 19-byte command frame (for the simulator)."""
    if len(frame) != COMMAND_SIZE:
        raise Sds011FrameError(f"SDS011 command is {len(frame)} bytes, expected {COMMAND_SIZE}")
    if frame[0] != HEAD or frame[1] != COMMAND_ID or frame[-1] != TAIL:
        raise Sds011FrameError(f"not an SDS011 command frame: {frame.hex(' ')}")
    body = frame[2:17]
    if checksum(body) != frame[17]:
        raise Sds011FrameError(
            f"SDS011 command checksum {frame[17]:02X}, computed {checksum(body):02X}"
        )
    return body[0], bytes(body[1:13]), int.from_bytes(body[13:15], "big")


def scan_command(buffer: bytes) -> tuple[int, tuple[int, bytes, int] | None]:
    """Resync on ``AA B4`` and take a valid 19-byte command (``SerialLink.read_frame`` scanner)."""
    return scan_fixed_frame(
        buffer, bytes([HEAD, COMMAND_ID]), COMMAND_SIZE, parse_command, Sds011FrameError
    )


# ---------------------------------------------------------------------------- replies


def build_reply(command: int, data: bytes, device_id: int) -> bytes:
    """A 10-byte reply frame (for the simulator): ``command`` is C0 or C5."""
    if len(data) != 4:
        raise ValueError(f"an SDS011 reply carries 4 data bytes before its ID, got {len(data)}")
    body = data + device_id.to_bytes(2, "big")
    return bytes([HEAD, command]) + body + bytes([checksum(body), TAIL])


def build_data_frame(pm2_5: float, pm10: float, device_id: int) -> bytes:
    """A data reply for PM2.5 and PM10 in µg/m³ (rounded to the sensor's 0.1 steps)."""
    raw25 = max(0, min(0xFFFF, round(pm2_5 * 10)))
    raw10 = max(0, min(0xFFFF, round(pm10 * 10)))
    return build_reply(DATA_REPLY, raw25.to_bytes(2, "little") + raw10.to_bytes(2, "little"),
                       device_id)


def parse_reply(frame: bytes) -> Reply:
    """Check a 10-byte reply's head, tail and checksum."""
    if len(frame) != REPLY_SIZE:
        raise Sds011FrameError(f"SDS011 reply is {len(frame)} bytes, expected {REPLY_SIZE}")
    if frame[0] != HEAD or frame[1] not in (DATA_REPLY, SETTING_REPLY) or frame[-1] != TAIL:
        raise Sds011FrameError(f"not an SDS011 reply frame: {frame.hex(' ')}")
    body = frame[2:8]
    if checksum(body) != frame[8]:
        raise Sds011FrameError(
            f"SDS011 reply checksum {frame[8]:02X}, computed {checksum(body):02X} "
            f"(frame {frame.hex(' ')}): noise on the line; check the wiring and ground"
        )
    return Reply(frame[1], bytes(body[:4]), int.from_bytes(body[4:6], "big"))


def parse_data_frame(frame: bytes) -> DataFrame:
    """PM2.5 and PM10 from an ``AA C0`` data reply."""
    return data_from_reply(parse_reply(frame))


def data_from_reply(reply: Reply) -> DataFrame:
    """PM2.5 and PM10 from a checked reply, which must be a data reply."""
    if reply.command != DATA_REPLY:
        raise Sds011FrameError(f"SDS011 reply {reply.command:02X} is not a data frame (C0)")
    pm25 = int.from_bytes(reply.data[0:2], "little") / 10
    pm10 = int.from_bytes(reply.data[2:4], "little") / 10
    return DataFrame(pm25, pm10, reply.device_id)


class ReplyScanner:
    """A ``SerialLink.read_frame`` scanner for ``AA <command>`` replies.

    It resynchronises on the header and slides past candidates that fail the tail or checksum
    check (a false header in noise), remembering the last such failure in ``rejected``: when no
    good reply follows, that is the reason to report.
    """

    def __init__(self, command: int = DATA_REPLY) -> None:
        self.command = command
        self.rejected: Sds011FrameError | None = None

    def __call__(self, buffer: bytes) -> tuple[int, Reply | None]:
        try:
            return scan_fixed_frame(
                buffer, bytes([HEAD, self.command]), REPLY_SIZE, parse_reply, Sds011FrameError,
                strict=True,
            )
        except Sds011FrameError as exc:
            self.rejected = exc
            return 1, None

