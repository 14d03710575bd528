"""Modbus servers for the interop and request-count tests and the plan benchmark.

- :class:`RegisterImage`: what a device holds, per table, address → word (or bit 0/1).
- :class:`ModbusTkServer`: a modbus-tk slave (TCP or RTU on a serial path), in its own thread.
- :class:`LibmodbusSlave`: the libmodbus C slave of ``slave.c``, built with ``gcc`` and run as a
  subprocess (TCP or RTU on a serial path).
- :class:`SocatLine`: a socat pty pair, a virtual serial line with two ends.
- :class:`CountingServer`: a pymodbus simulator (TCP or RTU on a serial path) that records every
  request it receives through its ``trace_pdu`` hook.
- :func:`rtu_unavailable_reason`: why the driver cannot talk RTU over a ``[[buses]]`` line yet
  (``None`` once it can), computed from the real config model and driver.

Every process is started with PR_SET_PDEATHSIG so a killed test run takes it along.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from drivers.modbus.config import Table
from drivers.modbus.simulated_meter import sim_device
from tests.conftest import stop_process

if TYPE_CHECKING:
    from pymodbus.pdu import ModbusPDU
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer

__all__ = [
    "SCATTERED_LIMITS",
    "UNDEFINED_GAP",
    "UNDEFINED_POINT",
    "CountingServer",
    "LibmodbusSlave",
    "ModbusTkServer",
    "RegisterImage",
    "SeenRequest",
    "SocatLine",
    "build_libmodbus_slave",
    "image_for",
    "interop_required",
    "libmodbus_missing_reason",
    "raw_value",
    "require_libmodbus",
    "require_modbus_tk",
    "rtu_unavailable_reason",
    "scattered_points",
]

HERE = Path(__file__).resolve().parent
SLAVE_SOURCE = HERE / "slave.c"
READY_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1

FUNCTION_CODE = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}
_TABLE_BY_FUNCTION_CODE = {fc: table for table, fc in FUNCTION_CODE.items()}


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def interop_required() -> bool:
    """True when ``SSC_REQUIRE_INTEROP=1``: missing interop tooling fails instead of skipping."""
    return os.environ.get("SSC_REQUIRE_INTEROP") == "1"


def _skip_or_fail(reason: str) -> None:
    if interop_required():
        pytest.fail(f"{reason}, and SSC_REQUIRE_INTEROP=1 is set")
    pytest.skip(reason)


def libmodbus_missing_reason() -> str | None:
    """Why the libmodbus slave cannot be built here, or None when it can."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return "no C compiler (gcc or cc) on PATH: apt install gcc"
    if shutil.which("pkg-config") is None:
        return "pkg-config is not on PATH: apt install pkg-config libmodbus-dev"
    found = subprocess.run(["pkg-config", "--exists", "libmodbus"], check=False)
    if found.returncode != 0:
        return "pkg-config does not find libmodbus: apt install libmodbus-dev"
    return None


def require_libmodbus() -> None:
    """Skip the test (or fail it under SSC_REQUIRE_INTEROP=1) when libmodbus cannot be built."""
    reason = libmodbus_missing_reason()
    if reason is not None:
        _skip_or_fail(reason)


def require_modbus_tk() -> None:
    """Skip the test (or fail it under SSC_REQUIRE_INTEROP=1) when modbus-tk is not installed."""
    try:
        importlib.import_module("modbus_tk")
    except ImportError:
        _skip_or_fail("modbus-tk is not installed: pip install modbus_tk (the test extra)")


@dataclass
class RegisterImage:
    """What a device holds: per table, address → register word (or 0/1 for bits).

    ``sizes`` gives, per table, how many addresses (from 0) the device defines; a server built
    from the image answers exception 2 past them. ``holes`` are addresses inside the size that
    the device still does not define (only the pymodbus counting server can model those).
    """

    words: dict[Table, dict[int, int]] = field(default_factory=lambda: {t: {} for t in Table})
    sizes: dict[Table, int] = field(default_factory=lambda: dict.fromkeys(Table, 0))
    holes: dict[Table, set[int]] = field(default_factory=lambda: {t: set() for t in Table})

    def put(self, table: Table, address: int, words: Iterable[int]) -> None:
        """Store consecutive words (or bits) from ``address`` and grow the table to hold them."""
        for i, word in enumerate(words):
            if not 0 <= word <= 0xFFFF:
                raise ValueError(f"{word} is not a 16-bit word")
            self.words[table][address + i] = word
            self.sizes[table] = max(self.sizes[table], address + i + 1)

    def grow(self, table: Table, size: int) -> None:
        """Define addresses 0 … size-1 of ``table`` (unset ones hold 0)."""
        self.sizes[table] = max(self.sizes[table], size)

    def value(self, table: Table, address: int) -> int:
        """The word (bit) at an address; 0 where nothing was put."""
        return self.words[table].get(address, 0)

    def defined(self, table: Table, address: int) -> bool:
        """True when the device answers for this address."""
        return address < self.sizes[table] and address not in self.holes[table]

    def runs(self, table: Table) -> list[tuple[int, int]]:
        """The defined addresses of a table as inclusive (first, last) runs."""
        out: list[tuple[int, int]] = []
        start: int | None = None
        for address in range(self.sizes[table] + 1):
            if address < self.sizes[table] and self.defined(table, address):
                if start is None:
                    start = address
            elif start is not None:
                out.append((start, address - 1))
                start = None
        return out

    def map_file(self, path: Path) -> Path:
        """Write the image in the map-file format ``slave.c`` reads."""
        if any(self.holes[t] for t in Table):
            raise ValueError("the libmodbus slave cannot model holes inside a table")
        letters = {Table.COIL: "c", Table.DISCRETE: "d", Table.HOLDING: "h", Table.INPUT: "i"}
        lines = ["SIZES " + " ".join(str(self.sizes[t]) for t in letters)]
        for table, letter in letters.items():
            lines += [f"{letter} {a} {w}" for a, w in sorted(self.words[table].items())]
        path.write_text("\n".join(lines) + "\n")
        return path


# --------------------------------------------------------------------------------------------
# socat


class SocatLine:
    """A virtual serial line: a socat pty pair with links ``server_end`` and ``client_end``."""

    def __init__(self, workdir: Path) -> None:
        self.server_end = str(workdir / "ttyServer")
        self.client_end = str(workdir / "ttyClient")
        self._log = (workdir / "socat.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "socat",
                "-d",
                "-d",
                f"pty,raw,echo=0,link={self.server_end}",
                f"pty,raw,echo=0,link={self.client_end}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509  # nothing but prctl runs there
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while not (os.path.exists(self.server_end) and os.path.exists(self.client_end)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                log = (workdir / "socat.log").read_text(errors="replace")
                raise RuntimeError(f"socat did not create the pty pair: {log}")
            time.sleep(0.002)

    def close(self) -> None:
        """Stop socat (the links disappear with it)."""
        stop_process(self.proc, 2)
        self._log.close()


# --------------------------------------------------------------------------------------------
# modbus-tk


class ModbusTkServer:
    """A modbus-tk slave serving a :class:`RegisterImage` as one unit id, TCP or RTU."""

    def __init__(
        self,
        image: RegisterImage,
        *,
        unit: int = 1,
        tcp_port: int | None = None,
        serial_path: str | None = None,
        baudrate: int = 9600,
    ) -> None:
        if (tcp_port is None) == (serial_path is None):
            raise ValueError("give exactly one of tcp_port or serial_path")
        cst: Any = importlib.import_module("modbus_tk.defines")
        self._serial: Any = None
        self._server: Any
        if tcp_port is not None:
            modbus_tcp: Any = importlib.import_module("modbus_tk.modbus_tcp")
            # Its accept loop polls once a second: stop() takes up to 1 s.
            self._server = modbus_tcp.TcpServer(port=tcp_port, address="127.0.0.1")
        else:
            modbus_rtu: Any = importlib.import_module("modbus_tk.modbus_rtu")
            serial_module: Any = importlib.import_module("serial")
            self._serial = serial_module.Serial(serial_path, baudrate)
            self._server = modbus_rtu.RtuServer(self._serial)
        slave = self._server.add_slave(unit)
        kinds = {
            Table.COIL: cst.COILS,
            Table.DISCRETE: cst.DISCRETE_INPUTS,
            Table.HOLDING: cst.HOLDING_REGISTERS,
            Table.INPUT: cst.ANALOG_INPUTS,
        }
        for table, kind in kinds.items():
            size = image.sizes[table]
            if size == 0:
                continue
            slave.add_block(table.value, kind, 0, size)
            slave.set_values(table.value, 0, [image.value(table, a) for a in range(size)])
        self._server.start()
        if tcp_port is not None:
            _wait_until_listening(tcp_port)

    def close(self) -> None:
        """Stop the server thread and release its socket or serial port."""
        self._server.stop()
        if self._serial is not None and self._serial.is_open:
            self._serial.close()


def _wait_until_listening(port: int, seconds: float = 5.0) -> None:
    """modbus-tk's start() returns before its thread listens: wait until a connect works."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


# --------------------------------------------------------------------------------------------
# libmodbus


def build_libmodbus_slave(outdir: Path) -> Path:
    """Compile ``slave.c`` against libmodbus into ``outdir``; the path of the binary."""
    binary = outdir / "libmodbus-slave"
    compiler = shutil.which("gcc") or shutil.which("cc") or "cc"
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "libmodbus"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    result = subprocess.run(
        [compiler, "-Wall", "-O1", "-o", str(binary), str(SLAVE_SOURCE), *flags],
        check=False,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building {SLAVE_SOURCE.name} failed: {result.stderr.strip()}")
    return binary


class LibmodbusSlave:
    """The libmodbus C slave as a subprocess, serving a :class:`RegisterImage`."""

    def __init__(
        self,
        binary: Path,
        image: RegisterImage,
        workdir: Path,
        *,
        unit: int = 1,
        tcp_port: int | None = None,
        serial_path: str | None = None,
    ) -> None:
        if (tcp_port is None) == (serial_path is None):
            raise ValueError("give exactly one of tcp_port or serial_path")
        map_file = image.map_file(workdir / "libmodbus-map.txt")
        args = (
            ["tcp", str(tcp_port)] if tcp_port is not None else ["rtu", str(serial_path), str(unit)]
        )
        self._stderr_path = workdir / "libmodbus-slave.log"
        self._stderr = self._stderr_path.open("ab")
        self.proc = subprocess.Popen(
            [str(binary), *args, str(map_file)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            preexec_fn=_die_with_parent,  # noqa: PLW1509  # nothing but prctl runs there
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], READY_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.close()
            raise RuntimeError(
                f"libmodbus slave did not start: {self._stderr_path.read_text(errors='replace')}"
            )

    def close(self) -> None:
        """Stop the slave process."""
        stop_process(self.proc, 2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


# --------------------------------------------------------------------------------------------
# pymodbus request-counting server


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """A read request as the server received it."""

    table: Table
    address: int
    count: int


class CountingServer:
    """A pymodbus simulator serving a :class:`RegisterImage` that records every read request.

    Undefined addresses (past ``sizes`` or in ``holes``) answer exception 2, for the whole
    request. Use ``await CountingServer.start_tcp(...)`` or ``start_serial(...)``.
    """

    def __init__(self, image: RegisterImage, unit: int) -> None:
        self.image = image
        self.unit = unit
        self.requests: list[SeenRequest] = []
        self.exceptions: list[SeenRequest] = []
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    def _device(self) -> Any:
        return sim_device(self.unit, self.image.runs, self.image.value)

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        fc = pdu.function_code & 0x7F
        table = _TABLE_BY_FUNCTION_CODE.get(fc)
        if table is not None:
            if not sending:
                self.requests.append(SeenRequest(table, pdu.address, pdu.count))
            elif pdu.function_code & 0x80 and self.requests:
                self.exceptions.append(self.requests[-1])
        return pdu

    @classmethod
    async def start_tcp(cls, image: RegisterImage, port: int, unit: int = 1) -> CountingServer:
        """Serve on 127.0.0.1:port."""
        from pymodbus.server import ModbusTcpServer

        self = cls(image, unit)
        self._server = ModbusTcpServer(
            [self._device()], address=("127.0.0.1", port), trace_pdu=self._trace
        )
        await self._server.serve_forever(background=True)
        return self

    @classmethod
    async def start_serial(
        cls, image: RegisterImage, path: str, unit: int = 1, baudrate: int = 9600
    ) -> CountingServer:
        """Serve Modbus RTU on a serial path (one end of a :class:`SocatLine`)."""
        from pymodbus import FramerType
        from pymodbus.server import ModbusSerialServer

        self = cls(image, unit)
        self._server = ModbusSerialServer(
            [self._device()],
            framer=FramerType.RTU,
            port=path,
            baudrate=baudrate,
            trace_pdu=self._trace,
        )
        await self._server.serve_forever(background=True)
        return self

    def take(self) -> list[SeenRequest]:
        """The requests seen since the last take(), and forget them."""
        seen, self.requests = self.requests, []
        return seen

    async def stop(self) -> None:
        """Stop serving; drops connected clients."""
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None


# --------------------------------------------------------------------------------------------
# Is the RTU transport there yet?


def rtu_unavailable_reason() -> str | None:
    """Why the driver cannot yet read a device on a ``[[buses]]`` serial line; None if it can.

    Computed from the real code: the config model must accept ``bus = …`` and the driver spec
    must build a driver for it from a DriverContext holding the bus (no port is opened).
    """
    try:
        from agent.config import BusConfig
        from agent.driver import DriverContext
        from agent.units import Duration
        from drivers.modbus.config import ModbusDeviceConfig
        from drivers.modbus.driver import SPEC

        bus = BusConfig(name="probe-line", port="/dev/null-ssc-probe",
                        timeout=Duration.parse("300 ms"))
        config = ModbusDeviceConfig.model_validate(
            {
                "name": "probe",
                "bus": "probe-line",
                "unit": 1,
                "points": [{"name": "p", "address": 0}],
            }
        )
        SPEC.create(config, DriverContext(buses={"probe-line": bus}))
    except Exception as exc:  # any refusal means: not there yet
        return f"Modbus RTU over a [[buses]] line is not available: {exc}"
    return None


# --------------------------------------------------------------------------------------------
# Register maps shared by the request-count test and the plan benchmark

SCATTERED_LIMITS: dict[str, Any] = {
    "max_gap": 6,
    "max_registers_per_request": 16,
    "forbidden_ranges": [(40, 42)],
}
"""Limits of the scattered 40-point map: a small request limit so the block at 200 is cut."""

# The undefined addresses of the split test: one in a gap the planner reads across, one under
# a point (that point really cannot be read).
UNDEFINED_GAP = (Table.HOLDING, 26)
UNDEFINED_POINT = (Table.INPUT, 21)


def scattered_points() -> list[dict[str, Any]]:
    """40 points over four tables: runs, gaps of 1-50 registers, a forbidden range, a long block."""
    points: list[dict[str, Any]] = []

    def add(
        name: str,
        table: Table,
        address: int,
        type_: str = "u16",
        order: str = "ABCD",
        scale: float = 1.0,
    ) -> None:
        points.append(
            {
                "name": name,
                "table": table.value,
                "address": address,
                "type": type_,
                "byte_order": order,
                "scale": scale,
            }
        )

    h, i, c, d = Table.HOLDING, Table.INPUT, Table.COIL, Table.DISCRETE
    # a gap-free run 0-4, then gaps of 2 and 3 registers the planner reads across
    add("h_status", h, 0)
    add("h_temp", h, 1, "i16", scale=0.1)
    add("h_count", h, 2, "u32")
    add("h_mode", h, 4)
    add("h_flow", h, 7)
    add("h_level", h, 8, "f32")
    add("h_alarm", h, 13)
    # a gap of 7 (> max_gap) starts a new request; its gap 24-28 holds UNDEFINED_GAP
    add("h_energy", h, 21, "u32", "CDAB")
    add("h_pf", h, 23, "i16", scale=0.001)
    add("h_freq", h, 29, "f32")
    add("h_err", h, 32)
    # 38 and 44 are 5 apart, close enough to merge, but 40-42 is forbidden
    add("h_before_forbidden", h, 38)
    add("h_after_forbidden", h, 44, "i16")
    # ten f32 back to back: 20 registers, cut by the 16-register request limit
    for n in range(10):
        add(f"h_block_{n}", h, 200 + 2 * n, "f32")
    add("h_far", h, 270, "u32")
    add("i_v1", i, 0, "f32")
    add("i_v2", i, 2, "f32", "CDAB")
    add("i_v3", i, 4, "f32")
    # a gap-free run whose last point sits on UNDEFINED_POINT
    add("i_a1", i, 16, "f32")
    add("i_a2", i, 18, "f32")
    add("i_code", i, 20)
    add("i_missing", i, 21)
    add("i_total", i, 1000, "u32", "CDAB")
    add("i_hours", i, 1003, "u32")
    add("c_relay1", c, 0, "bool")
    add("c_relay2", c, 1, "bool")
    add("c_relay3", c, 5, "bool")
    add("c_relay4", c, 40, "bool")
    add("d_door", d, 0, "bool")
    add("d_smoke", d, 3, "bool")
    add("d_tamper", d, 9, "bool")
    return points


def raw_value(index: int, type_: str) -> int | float:
    """A distinct raw value per point index, exact in its type (f32 included)."""
    if type_ == "bool":
        return index % 2
    if type_ in ("f32", "f64"):
        return 100.5 + index
    if type_ in ("i16", "i32", "i64"):
        return -(100 + index)
    if type_ in ("u32", "u64"):
        return 70_000 + 1_000 * index
    return 1_000 + index


def image_for(
    points: Iterable[Any],
    *,
    pad: int = 8,
    forbidden: Iterable[tuple[int, int]] = (),
    holes: Iterable[tuple[Table, int]] = (),
) -> RegisterImage:
    """A device image holding ``raw_value`` for each ModbusPoint, as a real meter would.

    Every table is defined from 0 to ``pad`` past its last point, except the forbidden ranges
    (unless a point lies there) and the ``holes``.
    """
    from drivers.modbus.codec import encode_value

    img = RegisterImage()
    owned: set[tuple[Table, int]] = set()
    for index, point in enumerate(points):
        wire = encode_value(raw_value(index, point.type.value), point.type, point.byte_order)
        if point.table in (Table.COIL, Table.DISCRETE):
            wire = [1 if wire[0] else 0]
        img.put(point.table, point.address, wire)
        owned.update((point.table, point.address + k) for k in range(len(wire)))
    for table in Table:
        if img.sizes[table]:
            img.grow(table, img.sizes[table] + pad)
            for first, last in forbidden:
                img.holes[table].update(
                    a for a in range(first, last + 1) if (table, a) not in owned
                )
    for table, address in holes:
        img.holes[table].add(address)
    return img
