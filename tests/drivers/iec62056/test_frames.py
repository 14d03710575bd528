"""IEC 62056-21 messages: the docs/protocols.md §4 vectors as tables, and fuzzed parsers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import DeviceProtocolError
from drivers.iec62056 import frames

TEXT = "0.0.0(12345678)\r\n1.8.0(001234.567*kWh)\r\n2.8.0(000012.345*kWh)\r\n!\r\n"
BLOCK = frames.build_data_block(TEXT)


def test_frame_errors_are_protocol_errors() -> None:
    assert issubclass(frames.Iec62056FrameError, DeviceProtocolError)


def test_bcc_vector() -> None:
    assert BLOCK[0] == frames.STX and BLOCK[-2] == frames.ETX
    assert BLOCK[-1] == 0x19
    assert frames.bcc(BLOCK[1:-1]) == 0x19
    assert frames.BlockScanner()(BLOCK) == (len(BLOCK), TEXT)


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (frames.build_sign_on(), b"/?!\r\n"),
        (frames.build_sign_on("12345678"), b"/?12345678!\r\n"),
        (frames.build_ack("5"), bytes.fromhex("06 30 35 30 0D 0A")),
        (frames.build_ack("0"), bytes.fromhex("06 30 30 30 0D 0A")),
        (frames.add_even_parity(b"/?!\r\n"), bytes.fromhex("AF 3F 21 8D 0A")),
    ],
)
def test_message_vectors(built: bytes, expected: bytes) -> None:
    assert built == expected


@pytest.mark.parametrize(
    ("line", "maker", "code", "rate", "escapes", "ident"),
    [
        (b"/ISK5\\2MT382-1000\r\n", "ISK", "5", 9600, "\\2", "MT382-1000"),
        (b"/LGZ4ZMD3104407.B32\r\n", "LGZ", "4", 4800, "", "ZMD3104407.B32"),
        (b"\x00\x7f/ELS6\\@\\2ABC\r\n", "ELS", "6", 19200, "\\@\\2", "ABC"),  # noise first
        (b"/Abc0X\r\n", "Abc", "0", 300, "", "X"),
    ],
)
def test_identifications(
    line: bytes, maker: str, code: str, rate: int, escapes: str, ident: str
) -> None:
    assert frames.parse_identification(line) == frames.Identification(
        maker, code, rate, escapes, ident
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"/ISKE\\2MT382\r\n", "mode B"),
        (b"/ISKZ\\2MT382\r\n", "mode A"),
        (b"ISK5MT382\r\n", "not an IEC 62056-21 identification"),
        (b"/IS5MT382\r\n", "not an IEC 62056-21 identification"),
        (b"/ISK5MT382", "not an IEC 62056-21 identification"),
    ],
)
def test_bad_identifications(line: bytes, message: str) -> None:
    with pytest.raises(frames.Iec62056FrameError, match=message):
        frames.parse_identification(line)


def test_readout_data_sets() -> None:
    text = ("1-0:1.8.0*255(001234.567*kWh)\r\n1.6.0(00.123*kW)(2101011200)\r\n"
            "F.F(00)\r\n0.9.1(123456)0.9.2(240101)\r\n!\r\n")
    assert frames.parse_data(text) == [
        frames.DataSet("1-0:1.8.0*255", "001234.567", "kWh"),
        frames.DataSet("1.6.0", "00.123", "kW"),  # the first value; the time stamp is dropped
        frames.DataSet("F.F", "00", None),
        frames.DataSet("0.9.1", "123456", None),
        frames.DataSet("0.9.2", "240101", None),
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # A data set without an address is allowed by the standard: code "", never selected.
        ("(00054.386)", [frames.DataSet("", "00054.386", None)]),
        ("(00054.386*m3)", [frames.DataSet("", "00054.386", "m3")]),
        ("1.8.0(1*kWh)(00054.386)", [frames.DataSet("1.8.0", "1", "kWh")]),  # a 2nd value
        ("(1)(2)", [frames.DataSet("", "1", None)]),
        ("( 7 )1.8.0(2)", [frames.DataSet("", "7", None), frames.DataSet("1.8.0", "2", None)]),
        # An empty unit after the star is no unit.
        ("1.8.0(013925.5*)", [frames.DataSet("1.8.0", "013925.5", None)]),
        ("1.8.0(013925.5* )", [frames.DataSet("1.8.0", "013925.5", None)]),
        ("1.8.0(013925.5*kWh)", [frames.DataSet("1.8.0", "013925.5", "kWh")]),
        ("1.8.0(013925.5)", [frames.DataSet("1.8.0", "013925.5", None)]),
        ("1.8.0()", [frames.DataSet("1.8.0", "", None)]),
    ],
)
def test_data_set_forms(line: str, expected: list[frames.DataSet]) -> None:
    assert frames.parse_data(f"{line}\r\n!\r\n") == expected


def test_a_data_set_without_address_keeps_the_rest_of_the_readout() -> None:
    datasets = frames.parse_data("0.0.0(12345678)\r\n(00054.386)\r\n1.8.0(1.5*kWh)\r\n!\r\n")
    assert [d.code for d in datasets] == ["0.0.0", "", "1.8.0"]
    assert frames.find_dataset(datasets, "1.8.0") == frames.DataSet("1.8.0", "1.5", "kWh")
    assert frames.find_dataset(datasets, "") is None


@pytest.mark.parametrize(("flip", "sent", "computed"), [(0x01, "18", "19"), (0x19, "00", "19")])
def test_bcc_error_names_the_span_and_both_values(flip: int, sent: str, computed: str) -> None:
    block = BLOCK[:-1] + bytes([BLOCK[-1] ^ flip])
    span = len(BLOCK) - 2  # every byte after STX, ETX included, BCC excluded
    assert frames.bcc(BLOCK[1:-1]) == int(computed, 16)
    with pytest.raises(frames.Iec62056FrameError) as caught:
        frames.BlockScanner()(block)
    assert str(caught.value).startswith(
        f"data block BCC {sent}, but the XOR of its {span} bytes after STX up to and "
        f"including ETX is {computed}:"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [(TEXT.replace("!\r\n", ""), "without its end line"), ("garbage\r\n!\r\n", "not an IEC")],
)
def test_bad_readouts(text: str, message: str) -> None:
    with pytest.raises(frames.Iec62056FrameError, match=message):
        frames.parse_data(text)


@pytest.mark.parametrize(
    ("code", "normal"),
    [("1.8.0", "1.8.0"), ("1-0:1.8.0*255", "1.8.0"), ("1-0:1.8.0", "1.8.0"),
     ("1.8.0*01", "1.8.0*01"), ("C.1.0", "C.1.0")],
)
def test_normalize_obis(code: str, normal: str) -> None:
    assert frames.normalize_obis(code) == normal


@pytest.mark.parametrize(
    ("text", "value"),
    [("001234.567", 1234.567), ("0042", 42), ("-1.5", -1.5), ("+7", 7), (".5", 0.5)],
)
def test_numbers(text: str, value: float) -> None:
    number = frames.parse_number(text)
    assert number == value
    assert isinstance(number, int) == ("." not in text)


@pytest.mark.parametrize("text", ["", "12:30", "1e5", "A1", "١٢", "1.2.3"])
def test_not_numbers(text: str) -> None:
    with pytest.raises(frames.Iec62056FrameError, match="not a number"):
        frames.parse_number(text)


def test_a_strict_7e1_uart_drops_bytes_without_their_parity_bit() -> None:
    # '/' (5 ones) and CR (3 ones) need bit 7 set: sent without it, a 7E1 meter loses them.
    assert frames.strip_even_parity(b"/?!\r\n") == b"?!\n"
    assert frames.strip_even_parity(frames.add_even_parity(b"/?!\r\n")) == b"/?!\r\n"


@given(st.binary(max_size=64).map(lambda b: bytes(x & 0x7F for x in b)))
def test_parity_round_trip(data: bytes) -> None:
    assert frames.strip_even_parity(frames.add_even_parity(data)) == data


def scan_all(buffer: bytes) -> list[str]:
    scanner = frames.BlockScanner()
    found: list[str] = []
    while True:
        consumed, text = scanner(buffer)
        assert 0 <= consumed <= len(buffer)
        buffer = buffer[consumed:]
        if text is not None:
            found.append(text)
        elif consumed == 0:
            return found


@given(st.binary(max_size=120))
def test_parsers_raise_only_their_protocol_error(data: bytes) -> None:
    with contextlib.suppress(frames.Iec62056FrameError):  # anything else fails the test
        frames.parse_identification(data)
    with contextlib.suppress(frames.Iec62056FrameError):
        frames.parse_ack(data)
    with contextlib.suppress(frames.Iec62056FrameError):
        scan_all(data)
    text = data.decode("latin-1")
    with contextlib.suppress(frames.Iec62056FrameError):
        frames.parse_data(text)
    with contextlib.suppress(frames.Iec62056FrameError):
        frames.parse_number(text)


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=200))
def test_any_ascii_readout_parses_or_is_refused(text: str) -> None:
    with contextlib.suppress(frames.Iec62056FrameError):
        for dataset in frames.parse_data(text):
            assert "(" not in dataset.value and ")" not in dataset.value


# Every byte of the text, and the BCC; a corrupted ETX is a block still arriving (below).
@given(st.sampled_from([*range(1, len(BLOCK) - 2), len(BLOCK) - 1]), st.integers(0, 255))
def test_corruption_inside_the_block_is_caught(position: int, value: int) -> None:
    if value in (frames.STX, frames.ETX) or value == BLOCK[position]:
        value = BLOCK[position] ^ 0x40  # keep the framing bytes where they are
    corrupted = bytearray(BLOCK)
    corrupted[position] = value
    with pytest.raises(frames.Iec62056FrameError, match="BCC"):
        frames.BlockScanner()(bytes(corrupted))


@given(st.integers(0, len(BLOCK) - 1))
def test_truncated_blocks_wait_for_the_rest(length: int) -> None:
    assert frames.BlockScanner()(BLOCK[:length]) == (0, None)
    without_etx = BLOCK[:-2] + b"\x00" + BLOCK[-1:]
    assert frames.BlockScanner()(without_etx[: length + 1]) == (0, None)


@given(st.binary(max_size=40).map(lambda b: b.replace(b"\x02", b"\x00")))
def test_noise_before_the_block_is_skipped(noise: bytes) -> None:
    assert scan_all(noise + BLOCK) == [TEXT]
