"""The Modbus driver against servers that are not pymodbus: modbus-tk and the libmodbus C slave.

Each server holds register words computed here with ``struct`` (not with the driver's codec),
over Modbus TCP and over RTU on a socat pty pair; the driver must decode every value exactly
and report the point past the end of the server's mapping as a protocol error (exception 2),
without losing its neighbours.

The libmodbus tests need ``gcc``/``cc`` and ``pkg-config --exists libmodbus``; the modbus-tk
tests need the ``modbus_tk`` package. Without them the tests skip, unless
``SSC_REQUIRE_INTEROP=1`` (CI), where they fail. The RTU tests skip while the driver cannot
build a device on a ``[[buses]]`` line (computed by ``servers.rtu_unavailable_reason``).
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from agent.driver import Driver, DriverContext
from agent.readings import Quality
from drivers.modbus.config import ModbusDeviceConfig, Table
from drivers.modbus.driver import SPEC
from tests.conftest import free_port
from tests.drivers.modbus.servers import (
    LibmodbusSlave,
    ModbusTkServer,
    RegisterImage,
    SocatLine,
    build_libmodbus_slave,
    libmodbus_missing_reason,
    require_libmodbus,
    require_modbus_tk,
    rtu_unavailable_reason,
)

pytestmark = [
    # slave.c is built once (session fixture) on the worker that runs these
    pytest.mark.xdist_group("libmodbus"),
    pytest.mark.timeout(60),
    # modbus-tk 1.1.5 calls Event.isSet() in its server loop.
    pytest.mark.filterwarnings("ignore:isSet:DeprecationWarning"),
]

RTU_REASON = rtu_unavailable_reason()
needs_rtu = pytest.mark.skipif(RTU_REASON is not None, reason=RTU_REASON or "")


def words(fmt: str, value: float, *, low_word_first: bool = False) -> list[int]:
    """Big-endian register words of ``value`` packed with struct ``fmt``; CDAB swaps the words."""
    raw = struct.pack(fmt, value)
    out = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return out[::-1] if low_word_first else out


def f32(value: float) -> float:
    """The float32 nearest to ``value``, as a Python float: what a meter can hold."""
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


@dataclass(frozen=True)
class Served:
    """One point: where it lives, how it is declared, the wire words, the decoded value."""

    name: str
    table: Table
    address: int
    type: str
    byte_order: str
    wire: list[int]
    expected: int | float
    scale: float = 1.0


SERVED: list[Served] = [
    Served("u16", Table.HOLDING, 0, "u16", "ABCD", [0xBEEF], 0xBEEF),
    Served("i16", Table.HOLDING, 1, "i16", "ABCD", words(">h", -1234), -1234),
    Served("u32", Table.HOLDING, 2, "u32", "ABCD", words(">I", 3_000_000_000), 3_000_000_000),
    Served(
        "i32_cdab",
        Table.HOLDING,
        4,
        "i32",
        "CDAB",
        words(">i", -1_234_567, low_word_first=True),
        -1_234_567,
    ),
    Served("f32_abcd", Table.HOLDING, 6, "f32", "ABCD", [0x44FA, 0x0800], 2000.25),
    Served(
        "f32_cdab",
        Table.HOLDING,
        8,
        "f32",
        "CDAB",
        words(">f", 1234.5, low_word_first=True),
        1234.5,
    ),
    Served("i16_tenths", Table.HOLDING, 10, "i16", "ABCD", words(">h", -125), -12.5, scale=0.1),
    Served("voltage", Table.INPUT, 0, "f32", "ABCD", words(">f", 230.1), f32(230.1)),
    Served(
        "current_cdab",
        Table.INPUT,
        2,
        "f32",
        "CDAB",
        words(">f", -0.5, low_word_first=True),
        -0.5,
    ),
    # Carlo Gavazzi EM24 style: INT32 low word first, ×0.1 (docs/protocols.md §4, verified words).
    Served("power_em24", Table.INPUT, 4, "i32", "CDAB", [0xCFC7, 0xFFFF], -1234.5, scale=0.1),
    Served("u16_max", Table.INPUT, 6, "u16", "ABCD", [0xFFFF], 65535),
    Served("relay_1", Table.COIL, 0, "bool", "ABCD", [1], 1),
    Served("relay_2", Table.COIL, 1, "bool", "ABCD", [0], 0),
    Served("relay_3", Table.COIL, 2, "bool", "ABCD", [1], 1),
    Served("relay_4", Table.COIL, 3, "bool", "ABCD", [1], 1),
    Served("door", Table.DISCRETE, 0, "bool", "ABCD", [1], 1),
    Served("tamper", Table.DISCRETE, 1, "bool", "ABCD", [0], 0),
]

HOLDING_SIZE = 12  # the server defines holding 0..11; 12 is one past the end
BEYOND_END = HOLDING_SIZE


def image() -> RegisterImage:
    """The servers' memory: every SERVED point's words, tables sized a little beyond them."""
    img = RegisterImage()
    for point in SERVED:
        img.put(point.table, point.address, point.wire)
    img.grow(Table.HOLDING, HOLDING_SIZE)
    img.grow(Table.INPUT, 8)
    img.grow(Table.COIL, 8)
    img.grow(Table.DISCRETE, 8)
    return img


def device_table(transport: dict[str, Any]) -> dict[str, Any]:
    points: list[dict[str, Any]] = [
        {
            "name": p.name,
            "address": p.address,
            "table": p.table.value,
            "type": p.type,
            "byte_order": p.byte_order,
            "scale": p.scale,
        }
        for p in SERVED
    ]
    # Past the end of the mapping; with max_gap 0 it is a request of its own.
    points.append({"name": "beyond_end", "address": BEYOND_END, "table": "holding"})
    return {
        "name": "interop-meter",
        "unit": 1,
        "timeout": "500 ms",
        "retries": 0,
        "max_gap": 0,
        **transport,
        "points": points,
    }


class Closable(Protocol):
    def close(self) -> None: ...


@dataclass
class Rig:
    """What a test talks to: the device config, the driver context, and the raw client setup."""

    config: ModbusDeviceConfig
    context: DriverContext
    client_kwargs: dict[str, Any]


ServerFactory = Callable[[RegisterImage, Path, int | None, str | None], Closable]


@pytest.fixture(scope="session")
def libmodbus_slave_binary(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """slave.c built once per session, or None when libmodbus is missing (the test decides)."""
    if libmodbus_missing_reason() is not None:
        return None
    return build_libmodbus_slave(tmp_path_factory.mktemp("libmodbus"))


@pytest.fixture
def closables() -> Iterator[list[Closable]]:
    items: list[Closable] = []
    yield items
    for item in reversed(items):
        item.close()


@pytest.fixture(params=["modbus-tk", "libmodbus"])
def server_factory(request: pytest.FixtureRequest, libmodbus_slave_binary: Path | None) -> Any:
    """Starts the server under test: (image, workdir, tcp_port, serial_path) → closable."""
    if request.param == "modbus-tk":
        require_modbus_tk()

        def make_tk(img: RegisterImage, _: Path, port: int | None, path: str | None) -> Closable:
            return ModbusTkServer(img, unit=1, tcp_port=port, serial_path=path)

        return make_tk
    require_libmodbus()
    assert libmodbus_slave_binary is not None

    def make_c(img: RegisterImage, workdir: Path, port: int | None, path: str | None) -> Closable:
        return LibmodbusSlave(
            libmodbus_slave_binary, img, workdir, unit=1, tcp_port=port, serial_path=path
        )

    return make_c


@pytest.fixture
def tcp_rig(server_factory: ServerFactory, tmp_path: Path, closables: list[Closable]) -> Rig:
    port = free_port()
    closables.append(server_factory(image(), tmp_path, port, None))
    config = ModbusDeviceConfig.model_validate(
        device_table({"endpoint": f"tcp://127.0.0.1:{port}"})
    )
    return Rig(config, DriverContext(), {"kind": "tcp", "port": port})


@pytest.fixture
def rtu_rig(server_factory: ServerFactory, tmp_path: Path, closables: list[Closable]) -> Rig:
    from agent.config import BusConfig
    from agent.units import Duration

    line = SocatLine(tmp_path)
    closables.append(line)
    closables.append(server_factory(image(), tmp_path, None, line.server_end))
    bus = BusConfig(name="line-1", port=line.client_end, baudrate=9600,
                    timeout=Duration.parse("500 ms"))
    config = ModbusDeviceConfig.model_validate(device_table({"bus": "line-1"}))
    return Rig(
        config, DriverContext(buses={"line-1": bus}), {"kind": "rtu", "path": line.client_end}
    )


@pytest.fixture
async def drivers() -> AsyncIterator[list[tuple[Driver, DriverContext]]]:
    made: list[tuple[Driver, DriverContext]] = []
    yield made
    for driver, context in made:
        await driver.close()
        await context.close()


async def raw_exception_code(rig: Rig, address: int) -> int | None:
    """Read one holding register with a plain pymodbus client: its exception code, or None."""
    from pymodbus import FramerType
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

    client: AsyncModbusTcpClient | AsyncModbusSerialClient
    if rig.client_kwargs["kind"] == "tcp":
        client = AsyncModbusTcpClient("127.0.0.1", port=rig.client_kwargs["port"], timeout=1)
    else:
        client = AsyncModbusSerialClient(
            rig.client_kwargs["path"], framer=FramerType.RTU, baudrate=9600, timeout=1, retries=0
        )
    assert await client.connect()
    try:
        answer = await client.read_holding_registers(address, count=1, device_id=1)
    finally:
        client.close()
    code: int | None = answer.exception_code if answer.isError() else None
    return code


async def check_every_value(rig: Rig, drivers: list[tuple[Driver, DriverContext]]) -> None:
    driver = SPEC.create(rig.config, rig.context)
    drivers.append((driver, rig.context))
    await driver.connect()
    for cycle in range(2):
        values = {v.point: v for v in await driver.read()}
        assert list(values) == [p.name for p in SERVED] + ["beyond_end"]
        for point in SERVED:
            got = values[point.name]
            assert got.quality is Quality.GOOD, (cycle, point.name, got)
            assert got.value == point.expected, (cycle, point.name, got.value)
            assert type(got.value) is type(point.expected), (cycle, point.name, got.value)
        beyond = values["beyond_end"]
        assert beyond.quality is Quality.PROTOCOL_ERROR, beyond
        assert beyond.value is None
    await driver.close()
    # The server itself says why: exception 2 (illegal data address) one past the end, and a
    # normal answer on the last defined register.
    assert await raw_exception_code(rig, BEYOND_END) == 2
    assert await raw_exception_code(rig, HOLDING_SIZE - 1) is None


async def test_tcp_decodes_every_type_exactly(
    tcp_rig: Rig, drivers: list[tuple[Driver, DriverContext]]
) -> None:
    await check_every_value(tcp_rig, drivers)


@needs_rtu
async def test_rtu_over_pty_decodes_every_type_exactly(
    rtu_rig: Rig, drivers: list[tuple[Driver, DriverContext]]
) -> None:
    await check_every_value(rtu_rig, drivers)


async def test_rtu_servers_answer_a_plain_client(rtu_rig: Rig) -> None:
    """The RTU harness itself (pty pair + server) works, whatever the driver's state."""
    from pymodbus import FramerType
    from pymodbus.client import AsyncModbusSerialClient

    client = AsyncModbusSerialClient(
        rtu_rig.client_kwargs["path"], framer=FramerType.RTU, baudrate=9600, timeout=1, retries=0
    )
    assert await client.connect()
    try:
        holding = await client.read_holding_registers(0, count=HOLDING_SIZE, device_id=1)
        coils = await client.read_coils(0, count=4, device_id=1)
    finally:
        client.close()
    expected = [0] * HOLDING_SIZE
    for point in SERVED:
        if point.table is Table.HOLDING:
            expected[point.address : point.address + len(point.wire)] = point.wire
    assert holding.registers == expected
    assert coils.bits[:4] == [True, False, True, True]
    assert await raw_exception_code(rtu_rig, BEYOND_END) == 2


def test_wire_words_are_the_documented_ones() -> None:
    """The struct-built words match the docs/protocols.md §4 vectors, so the oracle is sound."""
    assert words(">f", 2000.25) == [0x44FA, 0x0800]
    assert words(">i", -12345, low_word_first=True) == [0xCFC7, 0xFFFF]
    assert words(">i", 2305, low_word_first=True) == [0x0901, 0x0000]
