"""IEC 62056-21 mode C messages: pure building and parsing.

Sign-on ``/?[address]!CR LF``; identification ``/XXXZ[\\W]ident CR LF`` (XXX manufacturer, Z
the baud-rate code the meter offers: ``0`` 300 … ``6`` 19200); acknowledgement ``ACK 0 Z 0 CR
LF`` (protocol 0, the baud rate chosen, mode 0 = data readout); data block ``STX data ! CR LF
ETX BCC`` with BCC = XOR of every byte after STX up to and including ETX. Data lines hold data
sets ``code(value*unit)``. Every parser raises :class:`Iec62056FrameError` (a
``DeviceProtocolError``) and nothing else on bad input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import reduce

from agent.errors import DeviceProtocolError

__all__ = [
    "ACK",
    "BAUD_RATES",
    "ETX",
    "STX",
    "BlockScanner",
    "DataSet",
    "Identification",
    "Iec62056FrameError",
    "add_even_parity",
    "baud_code",
    "bcc",
    "build_ack",
    "build_data_block",
    "build_identification",
    "build_sign_on",
    "find_dataset",
    "normalize_obis",
    "parse_ack",
    "parse_data",
    "parse_identification",
    "parse_number",
    "parse_sign_on",
    "strip_even_parity",
]

STX = 0x02
ETX = 0x03
ACK = 0x06
BAUD_RATES = {"0": 300, "1": 600, "2": 1200, "3": 2400, "4": 4800, "5": 9600, "6": 19200}
MAX_IDENTIFICATION = 64

_ADDRESS = re.compile(r"^[0-9A-Za-z ]{0,32}$")
_IDENTIFICATION = re.compile(
    rb"^/(?P<maker>[A-Za-z]{3})(?P<baud>[0-9A-Z])(?P<escapes>(?:\\[0-9A-Za-z@])*)"
    rb"(?P<ident>[\x20-\x7e]{0,32})\r\n$"
)
# The address (OBIS code) of a data set is optional in IEC 62056-21 (a data set is
# ``[address](value[*unit])``): a line may hold a bare ``(00054.386)``.
_DATASET = re.compile(
    r"(?P<code>[^()\s!/][^()\r\n]*?)?\s*\((?P<first>[^()\r\n]*)\)(?:\([^()\r\n]*\))*"
)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$", re.ASCII)
_OBIS_MEDIUM = re.compile(r"^\d+-\d+:", re.ASCII)


class Iec62056FrameError(DeviceProtocolError):
    """An IEC 62056-21 message is malformed (identification, BCC, data set)."""


@dataclass(frozen=True, slots=True)
class Identification:
    """What the meter says about itself in answer to the sign-on."""

    manufacturer: str
    baud_code: str
    baudrate: int
    escapes: str
    ident: str


@dataclass(frozen=True, slots=True)
class DataSet:
    """One ``code(value*unit)`` of the readout.

    ``code`` is ``""`` for a data set sent without an address (no point can select it);
    ``unit`` is None when the meter sent none, also for an empty one (``(013925.5*)``).
    """

    code: str
    value: str
    unit: str | None


def add_even_parity(data: bytes) -> bytes:
    """7-bit characters with their even-parity bit as bit 7: 7E1 as seen by an 8N1 port."""
    return bytes(b | (0x80 if (b & 0x7F).bit_count() % 2 else 0) for b in data)


def strip_even_parity(data: bytes) -> bytes:
    """What a 7E1 UART delivers of bytes read at 8N1: bad-parity bytes dropped, bit 7 cleared."""
    return bytes(b & 0x7F for b in data if b.bit_count() % 2 == 0)


def build_sign_on(address: str = "") -> bytes:
    """``/?!\\r\\n``, or ``/?ADDRESS!\\r\\n`` for one meter of several on a line."""
    if not _ADDRESS.match(address):
        raise ValueError(
            f"{address!r} is not a meter address: up to 32 letters, digits or spaces"
        )
    return b"/?" + address.encode("ascii") + b"!\r\n"


def parse_sign_on(line: bytes) -> str | None:
    """The address of a sign-on request (``""`` for any meter), or None if it is not one."""
    start = line.rfind(b"/?")
    if start < 0 or not line.endswith(b"!\r\n"):
        return None
    address = line[start + 2 : -3]
    if not re.fullmatch(rb"[0-9A-Za-z ]{0,32}", address):
        return None
    return address.decode("ascii")


def parse_identification(line: bytes) -> Identification:
    """Parse ``/ISK5\\2MT382-1000\\r\\n``; noise before the ``/`` is dropped."""
    match = None
    start = line.find(b"/")
    while match is None and start >= 0:
        match = _IDENTIFICATION.match(line[start:])
        start = line.find(b"/", start + 1)
    if match is None:
        shown = line[:MAX_IDENTIFICATION].decode("ascii", "replace")
        raise Iec62056FrameError(f"not an IEC 62056-21 identification: {shown!r}")
    baud = match.group("baud").decode()
    if baud not in BAUD_RATES:
        mode = "B" if "A" <= baud <= "I" else "A"
        raise Iec62056FrameError(
            f"the meter offers baud code {baud!r}, i.e. protocol mode {mode}; this driver speaks "
            "mode C (codes 0-6)"
        )
    return Identification(
        manufacturer=match.group("maker").decode(),
        baud_code=baud,
        baudrate=BAUD_RATES[baud],
        escapes=match.group("escapes").decode(),
        ident=match.group("ident").decode(),
    )


def build_identification(maker: str, baud: str, ident: str) -> bytes:
    """An identification line (for the simulator); ``ident`` may start with ``\\W`` escapes."""
    return f"/{maker}{baud}{ident}\r\n".encode("ascii")


def baud_code(baudrate: int) -> str:
    """The mode C code of a baud rate (9600 → ``"5"``)."""
    for code, rate in BAUD_RATES.items():
        if rate == baudrate:
            return code
    raise ValueError(f"{baudrate} is not a mode C baud rate: one of {sorted(BAUD_RATES.values())}")


def build_ack(baud: str, mode: str = "0") -> bytes:
    """``ACK 0 Z Y CR LF``: protocol 0, baud code ``baud``, mode ``0`` data readout."""
    if baud not in BAUD_RATES:
        raise ValueError(f"{baud!r} is not a mode C baud code (0-6)")
    return bytes([ACK]) + f"0{baud}{mode}\r\n".encode("ascii")


def parse_ack(line: bytes) -> tuple[str, str]:
    """``(baud code, mode)`` of an acknowledgement (for the simulator)."""
    start = line.rfind(bytes([ACK]))
    ack = line[start:] if start >= 0 else b""
    if len(ack) != 6 or ack[1:2] != b"0" or ack[4:] != b"\r\n":
        raise Iec62056FrameError(f"not an IEC 62056-21 acknowledgement: {line!r}")
    baud, mode = chr(ack[2]), chr(ack[3])
    if baud not in BAUD_RATES:
        raise Iec62056FrameError(f"acknowledgement with baud code {baud!r}: not mode C")
    return baud, mode


def bcc(data: bytes) -> int:
    """The block check character: XOR of the bytes (those after STX, through ETX)."""
    return reduce(lambda a, b: a ^ b, data, 0)


def build_data_block(text: str) -> bytes:
    """``STX text ETX BCC``; ``text`` ends with the ``!\\r\\n`` end line."""
    body = text.encode("ascii") + bytes([ETX])
    return bytes([STX]) + body + bytes([bcc(body)])


class BlockScanner:
    """A ``SerialLink.read_frame`` scanner for a data block; yields the text between STX and ETX.

    Noise before STX is dropped. A block with a wrong BCC raises Iec62056FrameError unless
    another STX inside it (a false STX in leading noise) gives a block that checks out.
    """

    def __init__(self) -> None:
        self.noise = 0

    def __call__(self, buffer: bytes) -> tuple[int, str | None]:
        start = buffer.find(bytes([STX]))
        if start < 0:
            self.noise += len(buffer)
            return len(buffer), None
        if start > 0:
            self.noise += start
            return start, None
        end = buffer.find(bytes([ETX]), 1)
        if end < 0 or end + 1 >= len(buffer):
            return 0, None
        body = buffer[1 : end + 1]
        if bcc(body) != buffer[end + 1]:
            if buffer.find(bytes([STX]), 1, end) > 0:
                self.noise += 1
                return 1, None
            raise Iec62056FrameError(
                f"data block BCC {buffer[end + 1]:02X}, but the XOR of its {len(body)} bytes "
                f"after STX up to and including ETX is {bcc(body):02X}: noise on the optical "
                "link; check the head's position and shield it from light"
            )
        try:
            text = body[:-1].decode("ascii")
        except UnicodeDecodeError:
            raise Iec62056FrameError("data block holds non-ASCII bytes") from None
        return end + 2, text


def parse_data(text: str) -> list[DataSet]:
    """The data sets of a readout's text, in order; it must end with the ``!`` end line."""
    stripped = text.rstrip("\r\n")
    if not stripped.endswith("!"):
        raise Iec62056FrameError("data block without its end line '!': the readout is cut off")
    found: list[DataSet] = []
    for raw in stripped[:-1].split("\n"):
        line = raw.strip("\r ")
        if not line:
            continue
        matches = list(_DATASET.finditer(line))
        if not matches:
            raise Iec62056FrameError(f"not an IEC 62056-21 data line: {line[:80]!r}")
        for match in matches:
            value, _, unit = match.group("first").partition("*")
            found.append(DataSet((match.group("code") or "").strip(), value.strip(),
                                 unit.strip() or None))
    return found


def normalize_obis(code: str) -> str:
    """``1-0:1.8.0*255`` → ``1.8.0``: drop the medium/channel prefix and the ``*255`` current
    marker (``*01``, a billing period, stays)."""
    code = _OBIS_MEDIUM.sub("", code.strip())
    return code.removesuffix("*255")


def find_dataset(datasets: list[DataSet], code: str) -> DataSet | None:
    """The first data set for OBIS ``code`` (compared after :func:`normalize_obis`)."""
    want = normalize_obis(code)
    if not want:
        return None  # data sets without an address are never selected
    for dataset in datasets:
        if normalize_obis(dataset.code) == want:
            return dataset
    return None


def parse_number(text: str) -> int | float:
    """``001234.567`` → 1234.567, ``0042`` → 42; Iec62056FrameError when not a number."""
    text = text.strip()
    if not _NUMBER.match(text):
        raise Iec62056FrameError(f"value {text[:40]!r} is not a number")
    if "." in text:
        return float(text)
    return int(text)
