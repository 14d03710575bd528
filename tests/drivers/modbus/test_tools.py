"""``ssc-agent probe`` and ``scan``: pure decoding/formatting tables, then the real thing.

The servers are real pymodbus servers (``SimDevice``s on a loopback TCP port, or an RTU server
on one end of a socat pty pair) running in their own thread and event loop, because the CLI
under test runs ``asyncio.run`` itself.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.cli import main
from drivers.modbus.config import ByteOrder, PointType, Table
from drivers.modbus.probe import (
    ProbeView,
    format_number,
    format_probe_text,
    probe_json,
    register_rows,
    window_rows,
)
from drivers.modbus.scan import (
    ScanRequest,
    UnitAnswer,
    classify_exception,
    format_scan_summary,
    run_scan,
)
from drivers.modbus.tools import (
    TcpTarget,
    chunk_ranges,
    compress_ids,
    describe_exception,
    parse_address,
    parse_endpoint,
    parse_units,
)
from drivers.serialio import SerialSettings
from tests.conftest import free_port

REPO = Path(__file__).parents[3]
A, B, C, D = ByteOrder.ABCD, ByteOrder.CDAB, ByteOrder.BADC, ByteOrder.DCBA


def _f32_words(value: float, fmt: str) -> list[int]:
    """Registers of a float32 packed with struct (independent of the codec under test)."""
    raw = struct.pack(fmt, value)
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]


# --- pure: decoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registers", "type_", "order", "expected"),
    [
        ([0x44FA, 0x0800], PointType.F32, A, 2000.25),
        ([0x0800, 0x44FA], PointType.F32, B, 2000.25),
        (_f32_words(2000.25, "<f")[::-1], PointType.F32, C, 2000.25),
        (_f32_words(2000.25, "<f"), PointType.F32, D, 2000.25),
        ([0x0901, 0x0000], PointType.I32, B, 2305),
        ([0x0901, 0x0000], PointType.I32, A, 0x09010000),
        ([0x1234, 0x5678], PointType.U32, A, 0x12345678),
        ([0x1234, 0x5678], PointType.U32, B, 0x56781234),
        ([0x1234, 0x5678], PointType.U32, C, 0x34127856),
        ([0x1234, 0x5678], PointType.U32, D, 0x78563412),
        ([0xFFFF, 0xFFFE], PointType.I32, A, -2),
        ([0xFFFF, 0xFFFE], PointType.I32, B, -65537),
        ([0xFFFF, 0xFFFE], PointType.U32, A, 0xFFFFFFFE),
        ([0xCFC7, 0xFFFF], PointType.I32, B, -12345),
    ],
)
def test_window_decodings(
    registers: list[int], type_: PointType, order: ByteOrder, expected: int | float
) -> None:
    (row,) = window_rows(100, registers)
    assert row.address == 100
    assert row.values[type_][order] == expected


def test_windows_slide_over_every_register_pair() -> None:
    rows = window_rows(10, [0x0000, 0x44FA, 0x0800, 0x0001])
    assert [r.address for r in rows] == [10, 11, 12]
    assert rows[1].values[PointType.F32][A] == 2000.25
    assert rows[2].values[PointType.U32][A] == 0x08000001
    assert PointType.F64 not in rows[0].values
    assert window_rows(0, [0x1234]) == []


def test_scale_applies_to_every_decoding() -> None:
    (row,) = window_rows(0, [0x0901, 0x0000], 0.1)
    assert row.values[PointType.I32][B] == 230.5  # EM24 voltage, docs/protocols.md §4
    (row,) = window_rows(0, [0xCFC7, 0xFFFF], 0.1)
    assert row.values[PointType.I32][B] == -1234.5
    (reg,) = register_rows(0, [2305], 0.1)
    assert (reg.u16, reg.i16) == (230.5, 230.5)


def test_f64_windows_on_request() -> None:
    words = [int.from_bytes(struct.pack(">d", -1234.5678)[i : i + 2], "big") for i in (0, 2, 4, 6)]
    rows = window_rows(0, words, f64=True)
    assert rows[0].values[PointType.F64][A] == -1234.5678
    assert rows[0].values[PointType.F64][D] != -1234.5678
    assert PointType.F64 not in rows[1].values  # only three registers left from address 1


@pytest.mark.parametrize(
    ("word", "u16", "i16"),
    [(0x0000, 0, 0), (0x7FFF, 32767, 32767), (0x8000, 32768, -32768), (0xFFFF, 65535, -1)],
)
def test_register_rows(word: int, u16: int, i16: int) -> None:
    (row,) = register_rows(7, [word])
    assert (row.address, row.raw, row.u16, row.i16) == (7, word, u16, i16)


@pytest.mark.parametrize(
    ("value", "type_", "expected"),
    [
        (2000.25, PointType.F32, "2000.25"),
        (struct.unpack(">f", struct.pack(">f", 0.1))[0], PointType.F32, "0.1"),
        (4294967295, PointType.U32, "4294967295"),
        (-2147483648, PointType.I32, "-2147483648"),
        (230.5, PointType.I32, "230.5"),
        (math.nan, PointType.F32, "nan"),
        (-math.inf, PointType.F32, "-inf"),
        (-1.7653809e34, PointType.F32, "-1.76538e+34"),
        (-1.5e100, PointType.F64, "-1.5e+100"),
        (-1.234567891e100, PointType.U32, "-1.2346e+100"),
    ],
)
def test_format_number(value: float, type_: PointType, expected: str) -> None:
    assert format_number(value, type_) == expected


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**63), 2**64))
def test_format_number_fits_its_column(value: int | float) -> None:
    assert len(format_number(value, PointType.F64)) <= 12


# --- pure: the probe table -------------------------------------------------------------------

PROBE_REGISTERS = [0x44FA, 0x0800, 0x0901, 0x0000, 0xFFFF, 0x8000, 0x7FC0, 0x0000]


def parse_windows(text: str) -> dict[tuple[int, str], dict[str, str]]:
    """(address, type) → byte order → cell, read back from the printed table."""
    lines = text.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.split()[:3] == ["address", "hex", "type"]
    )
    orders = lines[start].split()[3:]
    cells: dict[tuple[int, str], dict[str, str]] = {}
    address = -1
    for line in lines[start + 1 :]:
        parts = line.split()
        if not parts:
            break
        if parts[1].startswith("0x"):
            address = int(parts[0])
            parts = parts[2:]
        cells[(address, parts[0])] = dict(zip(orders, parts[1:], strict=True))
    return cells


def parse_registers(text: str) -> dict[int, list[str]]:
    """address → [hex, raw, u16, i16] from the first section of the printed table."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["address", "hex", "raw"])
    rows: dict[int, list[str]] = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        parts = line.split()
        rows[int(parts[0])] = parts[1:]
    return rows


def test_probe_text_shows_every_decoding() -> None:
    view = ProbeView("tcp://127.0.0.1:502", 1, Table.HOLDING, 0x100, PROBE_REGISTERS)
    text = format_probe_text(view)
    assert text.splitlines()[:2] == [
        "tcp://127.0.0.1:502 unit 1",
        "holding registers 256-263 (0x0100-0x0107), 8 in all",
    ]
    registers = parse_registers(text)
    assert registers[256] == ["0x0100", "44FA", "17658", "17658"]
    assert registers[260] == ["0x0104", "FFFF", "65535", "-1"]
    assert registers[261] == ["0x0105", "8000", "32768", "-32768"]
    windows = parse_windows(text)
    assert windows[(256, "f32")]["ABCD"] == "2000.25"
    assert windows[(258, "i32")]["CDAB"] == "2305"
    assert windows[(258, "u32")]["ABCD"] == str(0x09010000)
    assert windows[(260, "i32")]["ABCD"] == "-32768"  # 0xFFFF8000
    assert windows[(262, "f32")]["ABCD"] == "nan"
    assert {t for _, t in windows} == {"u32", "i32", "f32"}
    assert len(windows) == 3 * 7


@given(
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=12),
    st.sampled_from([1.0, 0.1, 0.001, 1000.0, 1e-7]),
    st.booleans(),
)
def test_probe_text_fits_80_columns(registers: list[int], scale: float, f64: bool) -> None:
    text = format_probe_text(ProbeView(
        "rtu+tcp://gateway.example:4001", 247, Table.INPUT, 65535 - len(registers) + 1,
        registers, scale=scale, f64=f64,
    ))  # fmt: skip
    assert max(len(line) for line in text.splitlines()) <= 80


def test_probe_text_with_scale_and_f64() -> None:
    words = [int.from_bytes(struct.pack(">d", 1.5)[i : i + 2], "big") for i in (0, 2, 4, 6)]
    text = format_probe_text(ProbeView("x", 1, Table.INPUT, 0, words, scale=2.0, f64=True))
    assert "scaled ×2" in text
    assert parse_windows(text)[(0, "f64")]["ABCD"] == "3"


def test_probe_text_of_bits() -> None:
    text = format_probe_text(ProbeView("x", 1, Table.COIL, 8, [1, 0, 1]))
    assert text.splitlines()[1:] == [
        "coils 8-10 (0x0008-0x000A), 3 in all",
        "",
        "address     hex  value",
        "      8  0x0008      1",
        "      9  0x0009      0",
        "     10  0x000A      1",
    ]


def test_probe_json() -> None:
    doc = probe_json(ProbeView("tcp://h:502", 3, Table.HOLDING, 0, PROBE_REGISTERS, scale=1.0))
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc  # strict JSON: no NaN
    assert doc["registers"][0] == {
        "address": 0, "hex": "0x0000", "raw": "44FA", "u16": 17658, "i16": 17658,
    }  # fmt: skip
    assert doc["windows"][0]["f32"]["ABCD"] == 2000.25
    assert doc["windows"][2]["i32"]["CDAB"] == 2305
    assert doc["windows"][6]["f32"]["ABCD"] is None  # NaN
    assert doc["error"] is None
    bits = probe_json(ProbeView("x", 1, Table.DISCRETE, 4, [1, 0]))
    assert bits["bits"] == [{"address": 4, "value": 1}, {"address": 5, "value": 0}]


# --- pure: arguments, exceptions, scan text -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://127.0.0.1:5020", TcpTarget("127.0.0.1", 5020)),
        ("tcp://meter-7.local", TcpTarget("meter-7.local", 502)),
        ("rtu+tcp://10.0.0.9:4001", TcpTarget("10.0.0.9", 4001, rtu=True)),
        ("tcp://[::1]:1502", TcpTarget("::1", 1502)),
    ],
)
def test_parse_endpoint(text: str, expected: TcpTarget) -> None:
    assert parse_endpoint(text) == expected
    assert parse_endpoint(expected.label) == expected


@pytest.mark.parametrize(
    "text", ["udp://h:502", "tcp://h:0", "tcp://h:70000", "127.0.0.1:502", "tcp://", "tcp://h:x"]
)
def test_parse_endpoint_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not an endpoint"):
        parse_endpoint(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5", [5]), (" 1 - 3 ", [1, 2, 3]), ("1,3,10-12", [1, 3, 10, 11, 12]), ("2,2,1-2", [1, 2])],
)
def test_parse_units(text: str, expected: list[int]) -> None:
    assert parse_units(text) == expected


def test_parse_units_full_range_and_refusals() -> None:
    assert parse_units("1-247") == list(range(1, 248))
    for bad in ("0-300", "5-3", "a", "1,,2", "-4"):
        with pytest.raises(ValueError, match="unit"):
            parse_units(bad)


@pytest.mark.parametrize(
    ("text", "expected"), [("0", 0), ("256", 256), ("0x0100", 256), ("0xFFFF", 65535)]
)
def test_parse_address(text: str, expected: int) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["-1", "0x10000", "30001x", ""])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"address|outside"):
        parse_address(text)


def test_chunk_ranges_table() -> None:
    assert chunk_ranges(0, 300, 125) == [(0, 125), (125, 125), (250, 50)]
    assert chunk_ranges(7, 1, 125) == [(7, 1)]
    assert chunk_ranges(65410, 126, 125) == [(65410, 125), (65535, 1)]


@given(st.integers(0, 65535), st.integers(1, 5000), st.integers(1, 2000))
def test_chunk_ranges_cover_the_range_exactly(address: int, count: int, limit: int) -> None:
    chunks = chunk_ranges(address, count, limit)
    covered = [a for first, n in chunks for a in range(first, first + n)]
    assert covered == list(range(address, address + count))
    assert all(1 <= n <= limit for _, n in chunks)


@pytest.mark.parametrize(
    ("ids", "expected"),
    [([], ""), ([4], "4"), ([1, 3, 4, 5, 9], "1, 3-5, 9"), ([7, 6, 6, 1], "1, 6-7")],
)
def test_compress_ids(ids: list[int], expected: str) -> None:
    assert compress_ids(ids) == expected


@pytest.mark.parametrize(
    ("code", "table", "address", "count", "expected"),
    [
        (2, Table.HOLDING, 0x100, 1,
         "exception 2: illegal data address — the device has no holding register at 0x0100"),
        (2, Table.INPUT, 0x10, 16, "exception 2: illegal data address — the device has no input "
         "register somewhere in 0x0010-0x001F: probe a smaller range to find which"),
        (1, Table.COIL, 0, 1, "exception 1: illegal function — unit 9 does not serve coils "
         "(function code 1): try another --table"),
        (3, Table.HOLDING, 0, 125, "exception 3: illegal data value — the device refuses to read "
         "125 at once: try a smaller --count"),
        (6, Table.HOLDING, 0, 1, "exception 6: server device busy — the device is busy: try "
         "again in a moment"),
        (0x42, Table.HOLDING, 0, 1, "exception 66: unknown exception code"),
    ],
)  # fmt: skip
def test_describe_exception(
    code: int, table: Table, address: int, count: int, expected: str
) -> None:
    assert describe_exception(code, table, address, count, unit=9) == expected


@pytest.mark.parametrize(
    ("code", "target", "kind"),
    [
        (4, TcpTarget("h"), "gateway"),
        (4, TcpTarget("h", rtu=True), "exception"),
        (4, SerialSettings("/dev/ttyUSB0"), "exception"),
        (2, TcpTarget("h"), "exception"),
        (11, SerialSettings("/dev/ttyUSB0"), "gateway"),
        (10, TcpTarget("h"), "gateway"),
    ],
)
def test_classify_exception(code: int, target: Any, kind: str) -> None:
    assert classify_exception(code, target) == kind


def test_scan_summary() -> None:
    answers = [
        UnitAnswer(1, "gateway", code=4),
        UnitAnswer(2, "value", value=7),
        UnitAnswer(3, "silent"),
        UnitAnswer(4, "exception", code=2),
        UnitAnswer(5, "gateway", code=4),
    ]
    lines = format_scan_summary(answers, TcpTarget("127.0.0.1", 502))
    assert lines[0] == "found 2 unit(s) of 5 tried (1-5) on tcp://127.0.0.1:502: 2, 4"
    assert lines[1] == "gateway answered exception 4 for 2 unit(s) (1, 5): not found"
    assert format_scan_summary(answers[2:3], SerialSettings("/dev/x")) == [
        "found 0 unit(s) of 1 tried (3) on /dev/x 9600 8N1"
    ]


# --- real servers -----------------------------------------------------------------------------


class ServerThread:
    """An event loop in a thread that runs pymodbus servers while the CLI runs its own loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[ModbusTcpServer | ModbusSerialServer] = []

    def run(self, coro: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await coro

        future: Future[Any] = asyncio.run_coroutine_threadsafe(wrapped(), self.loop)
        return future.result(timeout=10)

    def start(self, make: Callable[[], ModbusTcpServer | ModbusSerialServer]) -> None:
        async def started() -> None:
            server = make()
            await server.serve_forever(background=True)
            self.servers.append(server)

        self.run(started())

    def close(self) -> None:
        for server in self.servers:
            self.run(server.shutdown())  # type: ignore[no-untyped-call]
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def holding_device(unit: int, registers: list[int], inputs: list[int] | None = None) -> SimDevice:
    return SimDevice(
        id=unit,
        simdata=(
            [SimData(0, values=[True, False, True, True], datatype=DataType.BITS)],
            [SimData(0, values=[False, True], datatype=DataType.BITS)],
            [SimData(0, values=registers, datatype=DataType.REGISTERS)],
            [SimData(0, values=inputs or [0x1234, 0x5678], datatype=DataType.REGISTERS)],
        ),
    )


SEEN: list[tuple[int, int, int, int]] = []


def _trace(sending: bool, pdu: Any) -> Any:
    if not sending:
        SEEN.append((pdu.dev_id, pdu.function_code, pdu.address, pdu.count))
    return pdu


@pytest.fixture
def tcp_server() -> Iterator[int]:
    """Units 2 and 5 on a free port; unit 5 has 300 holding registers."""
    port = free_port()
    SEEN.clear()
    thread = ServerThread()
    devices = [
        holding_device(2, PROBE_REGISTERS),
        holding_device(5, [(i * 7) & 0xFFFF for i in range(300)]),
    ]
    try:
        thread.start(
            lambda: ModbusTcpServer(devices, address=("127.0.0.1", port), trace_pdu=_trace)
        )
        yield port
    finally:
        thread.close()


def test_probe_prints_the_decodings(tcp_server: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["probe", "--endpoint", f"tcp://127.0.0.1:{tcp_server}", "--unit", "2",
                 "--address", "0", "--count", "8", "--timeout", "1s"])  # fmt: skip
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    registers = parse_registers(out)
    assert [registers[a][1] for a in range(8)] == [f"{w:04X}" for w in PROBE_REGISTERS]
    windows = parse_windows(out)
    assert windows[(0, "f32")]["ABCD"] == "2000.25"
    assert windows[(2, "i32")]["CDAB"] == "2305"
    assert (2, 3, 0, 8) in SEEN


def test_probe_scale_and_json(tcp_server: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["probe", "--endpoint", f"tcp://127.0.0.1:{tcp_server}", "--unit", "2",
                 "--address", "0x2", "--count", "2", "--scale", "0.1",
                 "--format", "json"])  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    doc = json.loads(out)
    assert doc["address"] == 2
    assert doc["windows"][0]["i32"]["CDAB"] == 230.5
    assert [r["raw"] for r in doc["registers"]] == ["0901", "0000"]


def test_probe_reads_a_long_range_in_chunks(
    tcp_server: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["probe", "--endpoint", f"tcp://127.0.0.1:{tcp_server}", "--unit", "5",
                 "--count", "300", "--format", "json"])  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    assert [r["u16"] for r in json.loads(out)["registers"]] == [
        (i * 7) & 0xFFFF for i in range(300)
    ]
    assert [s for s in SEEN if s[0] == 5] == [(5, 3, 0, 125), (5, 3, 125, 125), (5, 3, 250, 50)]


def test_probe_bits(tcp_server: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["probe", "--endpoint", f"tcp://127.0.0.1:{tcp_server}", "--unit", "2",
                 "--table", "coil", "--count", "4", "--format", "json"])  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    assert [b["value"] for b in json.loads(out)["bits"]] == [1, 0, 1, 1]


def test_probe_exception_answer(tcp_server: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["probe", "--endpoint", f"tcp://127.0.0.1:{tcp_server}", "--unit", "2",
                 "--address", "0x0100", "--count", "1"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err == (
        f"ssc-agent: tcp://127.0.0.1:{tcp_server} unit 2: exception 2: illegal data address — "
        "the device has no holding register at 0x0100\n"
    )


def test_probe_prints_what_it_read_before_the_exception(
    tcp_server: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # unit 5 has 300 registers: 100..224 answers, 225..349 runs past the end
    code = main(["probe", "--endpoint", f"tcp://127.0.0.1:{tcp_server}", "--unit", "5",
                 "--address", "100", "--count", "250", "--format", "json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    doc = json.loads(out)
    assert doc["count"] == 125
    assert [r["u16"] for r in doc["registers"]] == [(i * 7) & 0xFFFF for i in range(100, 225)]
    assert "exception 2: illegal data address" in doc["error"]
    assert "somewhere in 0x00E1-0x015D" in err  # 225..349, the chunk that failed


def test_probe_no_answer(capsys: pytest.CaptureFixture[str]) -> None:
    # A listening socket nobody accepts from: TCP connects, no Modbus answer ever comes.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(4)
        port = mute.getsockname()[1]
        started = time.monotonic()
        code = main(["probe", "--endpoint", f"tcp://127.0.0.1:{port}", "--timeout", "200 ms"])
        elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert "no answer from unit 1 within 0.2 s" in err
    assert elapsed < 3


def test_probe_connection_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["probe", "--endpoint", f"tcp://127.0.0.1:{free_port()}"])
    assert code == 1
    assert "connection refused" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--endpoint", "udp://h:1"], "--endpoint: 'udp://h:1' is not an endpoint"),
        (["--endpoint", "tcp://h:1", "--address", "0x10000"], "--address:"),
        (["--endpoint", "tcp://h:1", "--timeout", "soon"], "--timeout:"),
        (["--endpoint", "tcp://h:1", "--unit", "300"], "--unit 300"),
        (["--endpoint", "tcp://h:1", "--address", "65535", "--count", "2"], "--count 2"),
    ],
)
def test_probe_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["probe", *args]) == 2
    assert message in capsys.readouterr().err


def test_probe_needs_exactly_one_target() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["probe", "--endpoint", "tcp://h:1", "--serial", "/dev/null"])
    assert exc.value.code == 2


def found_units(out: str) -> list[int]:
    return [int(line.split()[1]) for line in out.splitlines() if " answered" in line and
            line.startswith("unit")]  # fmt: skip


def test_scan_finds_the_served_units(tcp_server: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["scan", "--endpoint", f"tcp://127.0.0.1:{tcp_server}", "--units", "1-10"])
    out, err = capsys.readouterr()
    assert code == 0
    assert found_units(out) == [2, 5]
    assert "unit   2  answered: holding 0x0000 = 0x44FA (17658)" in out
    assert f"found 2 unit(s) of 10 tried (1-10) on tcp://127.0.0.1:{tcp_server}: 2, 5" in out
    assert "gateway answered exception 4 for 8 unit(s) (1, 3-4, 6-10): not found" in out
    assert err == "scanned 10/10 unit ids … found 2\n"  # not a TTY: plain lines


def test_scan_with_only_gateway_answers_fails(
    tcp_server: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["scan", "--endpoint", f"tcp://127.0.0.1:{tcp_server}", "--units", "6-8"])
    out, err = capsys.readouterr()
    assert code == 1
    assert found_units(out) == []
    assert "only the TCP server or gateway answered, for all 3 unit id(s) tried" in err


def test_scan_lists_a_unit_answering_an_exception_as_alive(
    tcp_server: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["scan", "--endpoint", f"tcp://127.0.0.1:{tcp_server}", "--units", "2",
                 "--address", "0x0200", "--format", "json"])  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    doc = json.loads(out)
    assert doc["found"] == [2]
    assert doc["answers"] == [{"unit": 2, "kind": "exception", "value": None, "code": 2}]


async def test_scan_progress_on_a_tty(tcp_server: int) -> None:
    out, err = io.StringIO(), io.StringIO()
    request = ScanRequest(TcpTarget("127.0.0.1", tcp_server), [1, 2, 3])
    code = await run_scan(request, out=out, err=err, tty=True)
    assert code == 0
    progress = err.getvalue()
    assert "\rscanning unit 1 (1/3) … found 0" in progress
    assert "\rscanning unit 3 (3/3) … found 1" in progress
    assert progress.endswith("\r")  # the line is cleared at the end
    assert found_units(out.getvalue()) == [2]


def test_scan_no_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--units", "1"]) == 1
    assert "connection refused" in capsys.readouterr().err


async def test_cli_in_a_real_process(tcp_server: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "probe", "--endpoint", f"tcp://127.0.0.1:{tcp_server}",
        "--unit", "2", "--count", "2", "--format", "json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["windows"][0]["f32"]["ABCD"] == 2000.25
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "scan", "--endpoint", f"tcp://127.0.0.1:{tcp_server}",
        "--units", "4-6", stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert found_units(out.decode()) == [5]


# --- RTU over a socat pty pair ----------------------------------------------------------------


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    if shutil.which("socat") is None:
        pytest.skip("socat is not on PATH (apt install socat)")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    with (tmp_path / "socat.log").open("wb") as log:
        proc = subprocess.Popen(
            ["socat", "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
            stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509  # nothing but prctl runs there
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()):
            assert proc.poll() is None, (tmp_path / "socat.log").read_text()
            assert time.monotonic() < deadline, "socat made no ptys within 5 s"
            time.sleep(0.005)
        yield os.fspath(a), os.fspath(b)
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def rtu_line(pty_pair: tuple[str, str]) -> Iterator[str]:
    """Units 1 and 3 served by an RTU server on one end; every other unit stays silent."""
    server_end, client_end = pty_pair
    served = {1, 3}

    def mute_others(sending: bool, data: bytes) -> bytes:
        return b"" if sending and data and data[0] not in served else data

    thread = ServerThread()
    devices = [holding_device(1, [0x0001, 0x0002]), holding_device(3, [0x0901, 0x0000])]
    try:
        thread.start(
            lambda: ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=server_end,
                baudrate=9600,
                trace_packet=mute_others,
            )
        )
        yield client_end
    finally:
        thread.close()


def test_scan_over_rtu_finds_the_answering_units(
    rtu_line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["scan", "--serial", rtu_line, "--baudrate", "9600", "--units", "1-6",
                 "--timeout", "100 ms"])  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    assert found_units(out) == [1, 3]
    assert "gateway" not in out
    assert f"found 2 unit(s) of 6 tried (1-6) on {rtu_line} 9600 8N1: 1, 3" in out


def test_probe_over_rtu(rtu_line: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["probe", "--serial", rtu_line, "--unit", "3", "--count", "2", "--scale", "0.1",
                 "--format", "json"])  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    assert json.loads(out)["windows"][0]["i32"]["CDAB"] == 230.5


def test_probe_over_rtu_silent_unit(rtu_line: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["probe", "--serial", rtu_line, "--unit", "2", "--timeout", "100 ms"])
    assert code == 1
    assert "no answer from unit 2 within 0.1 s" in capsys.readouterr().err


@pytest.fixture
def rtu_over_tcp_server() -> Iterator[int]:
    """RTU frames over TCP (a serial device server): units 2 and 5; the rest are silent."""
    port = free_port()
    served = {2, 5}

    def mute_others(sending: bool, data: bytes) -> bytes:
        return b"" if sending and data and data[0] not in served else data

    thread = ServerThread()
    devices = [holding_device(2, PROBE_REGISTERS), holding_device(5, [0x0005])]
    try:
        thread.start(
            lambda: ModbusTcpServer(
                devices,
                address=("127.0.0.1", port),
                framer=FramerType.RTU,
                trace_packet=mute_others,
            )
        )
        yield port
    finally:
        thread.close()


def test_scan_and_probe_rtu_over_tcp(
    rtu_over_tcp_server: int, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"rtu+tcp://127.0.0.1:{rtu_over_tcp_server}"
    code = main(["scan", "--endpoint", endpoint, "--units", "1-6", "--timeout", "100 ms"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert found_units(out) == [2, 5]
    code = main(["probe", "--endpoint", endpoint, "--unit", "2", "--count", "2",
                 "--format", "json"])  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    assert json.loads(out)["windows"][0]["f32"]["ABCD"] == 2000.25
