"""Silence, exceptions and wrong answers, against real servers on loopback and a socat pty.

A device that answers no request of a poll with valid data fails the poll: silent to the first
request → DeviceUnavailable (quality 2), answering only exceptions, short or wrong answers →
DeviceProtocolError (quality 3). Within a poll that read something, a silent request is
COMM_ERROR and a wrongly answered one PROTOCOL_ERROR (drivers/modbus/README.md, "Quality
codes"). The misbehaving device is tests/drivers/modbus/hostile.py; the pymodbus simulator
(drivers/modbus/simulator.py) checks the exception cases against another server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pymodbus.constants import ExcCodes
from structlog.testing import capture_logs

from agent.driver import DriverContext
from agent.errors import DeviceProtocolError, DeviceUnavailable
from agent.gateway.scheduler import DevicePoller
from agent.profiles import Profile
from agent.readings import Event, Quality, Reading
from drivers.modbus.bus import describe_wrong_bytes
from drivers.modbus.config import ModbusDeviceConfig
from drivers.modbus.driver import SPEC, ModbusDriver
from drivers.modbus.simulator import serve
from tests.conftest import free_port
from tests.drivers.modbus.conftest import PtyPair
from tests.drivers.modbus.hostile import Answer, HostileServer, Request, always, register_value

# Two requests per poll: holding 0..1 (FC03) and input 10..11 (FC04).
POINTS: list[dict[str, Any]] = [
    {"name": "h0", "address": 0, "table": "holding"},
    {"name": "h1", "address": 1, "table": "holding"},
    {"name": "i10", "address": 10, "table": "input"},
    {"name": "i11", "address": 11, "table": "input"},
]
GOOD_HOLDING = [(register_value(0), Quality.GOOD), (register_value(1), Quality.GOOD)]
GOOD_INPUT = [(register_value(10), Quality.GOOD), (register_value(11), Quality.GOOD)]

# What each wrong answer says, on TCP; the device answered, so PROTOCOL_ERROR.
TCP_WRONG: list[tuple[Answer, str]] = [
    (Answer.EXCEPTION, "exception 4 (server device failure)"),
    (Answer.SHORT, "answer too short (1 of 2 registers)"),
    (Answer.SHORT_DECLARED, "no valid answer"),
    (Answer.WRONG_TID, "answer with transaction id"),
    (Answer.TID_ZERO, "answer with transaction id 0, sent"),
    (Answer.WRONG_UNIT, "answer from unit 8, asked unit 7"),
    (Answer.WRONG_FC, "answer with function code"),
    (Answer.JUNK, "no Modbus TCP answer (junk: 41 42 43"),
    (Answer.RST, "answer cut off after"),
]
RTU_WRONG: list[tuple[Answer, str]] = [
    (Answer.EXCEPTION, "exception 4 (server device failure)"),
    (Answer.SHORT, "answer too short (1 of 2 registers)"),
    (Answer.WRONG_UNIT, "answer from unit 8, asked unit 7"),
    (Answer.WRONG_FC, "answer with function code"),
    (Answer.BAD_CRC, "no valid RTU frame (CRC error or junk"),
    (Answer.JUNK, "no valid RTU frame (CRC error or junk"),
]
SILENT = [Answer.SILENT, Answer.CLOSE]


def config(endpoint: str, **extra: Any) -> ModbusDeviceConfig:
    table: dict[str, Any] = {
        "name": "meter-7", "endpoint": endpoint, "unit": 7, "timeout": "300 ms",
        "retries": 0, "points": POINTS, **extra,
    }
    return ModbusDeviceConfig.model_validate(table)


def only(fc: int, answer: Answer) -> Callable[[Request], tuple[Answer, int]]:
    """Answer requests of function ``fc`` with ``answer``, the others well."""
    return lambda request: (answer if request.fc == fc else Answer.GOOD, 4)


def pairs(values: Any) -> list[tuple[Any, Quality]]:
    return [(v.value, v.quality) for v in values]


Start = Callable[..., Awaitable[tuple[HostileServer, ModbusDriver]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """``await start(behaviour, framing="tcp")``: a hostile server and a driver reading it."""
    servers: list[HostileServer] = []
    drivers: list[ModbusDriver] = []

    async def make(behaviour: Any, framing: str = "tcp", **extra: Any) -> tuple[
        HostileServer, ModbusDriver
    ]:
        port = free_port()
        server = await HostileServer(behaviour, framing=framing).start_tcp(port)
        servers.append(server)
        scheme = "tcp" if framing == "tcp" else "rtu+tcp"
        cfg = config(f"{scheme}://127.0.0.1:{port}", **extra)
        driver = SPEC.create(cfg, DriverContext())
        assert isinstance(driver, ModbusDriver)
        drivers.append(driver)
        return server, driver

    yield make
    for driver in drivers:
        await driver.close()
    for server in servers:
        await server.stop()


# ---------------------------------------------------------------------------- every request


@pytest.mark.parametrize(("answer", "message"), TCP_WRONG, ids=[a.value for a, _ in TCP_WRONG])
async def test_tcp_wrong_answers_to_every_request_fail_the_poll(
    start: Start, answer: Answer, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    server, driver = await start(always(answer))
    with capture_logs() as logs:
        for _ in range(2):
            with pytest.raises(DeviceProtocolError, match="no valid answer to any of its 2") as e:
                await driver.read()
            assert message in str(e.value)
            assert "meter-7 (tcp://127.0.0.1:" in str(e.value)
    # A device that answers is asked every request: the second one too.
    assert len({r.fc for r in server.requests}) == 2
    assert driver.stats.failed_cycles == 2
    assert e.value.code == (4 if answer is Answer.EXCEPTION else None)
    # The scheduler logs the device down once; the driver adds no line per request or poll.
    assert [x for x in logs if x["log_level"] in ("warning", "error")] == []
    # Nor does asyncio log a traceback for an answer pymodbus cannot decode.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize(("answer", "message"), RTU_WRONG, ids=[a.value for a, _ in RTU_WRONG])
async def test_rtu_over_tcp_wrong_answers_to_every_request_fail_the_poll(
    start: Start, answer: Answer, message: str
) -> None:
    _server, driver = await start(always(answer), framing="rtu")
    with pytest.raises(DeviceProtocolError, match="no valid answer to any of its 2") as e:
        await driver.read()
    assert message in str(e.value)


@pytest.mark.parametrize("framing", ["tcp", "rtu"])
@pytest.mark.parametrize("answer", SILENT, ids=[a.value for a in SILENT])
async def test_silence_to_the_first_request_is_a_device_unavailable(
    start: Start, framing: str, answer: Answer
) -> None:
    server, driver = await start(always(answer), framing=framing)
    with pytest.raises(DeviceUnavailable, match="no answer to its first request of 2"):
        await driver.read()
    assert len(server.requests) == 1  # the rest of a silent device's requests are not sent


# ---------------------------------------------------------------------------- one request


@pytest.mark.parametrize("bad_first", [True, False], ids=["first-request", "second-request"])
@pytest.mark.parametrize(("answer", "message"), TCP_WRONG, ids=[a.value for a, _ in TCP_WRONG])
async def test_tcp_one_wrong_answer_marks_its_points_only(
    start: Start, answer: Answer, message: str, bad_first: bool
) -> None:
    _server, driver = await start(only(3 if bad_first else 4, answer))
    bad = [(None, Quality.PROTOCOL_ERROR)] * 2
    expected = bad + GOOD_INPUT if bad_first else GOOD_HOLDING + bad
    assert pairs(await driver.read()) == expected
    assert pairs(await driver.read()) == expected  # the next poll after a reset or junk too


@pytest.mark.parametrize(("answer", "message"), RTU_WRONG, ids=[a.value for a, _ in RTU_WRONG])
async def test_rtu_over_tcp_one_wrong_answer_marks_its_points_only(
    start: Start, answer: Answer, message: str
) -> None:
    _server, driver = await start(only(3, answer), framing="rtu")
    assert pairs(await driver.read()) == [(None, Quality.PROTOCOL_ERROR)] * 2 + GOOD_INPUT


@pytest.mark.parametrize("answer", SILENT, ids=[a.value for a in SILENT])
async def test_silence_after_a_good_answer_is_a_comm_error(start: Start, answer: Answer) -> None:
    _server, driver = await start(only(4, answer))
    assert pairs(await driver.read()) == GOOD_HOLDING + [(None, Quality.COMM_ERROR)] * 2


async def test_a_gateway_exception_for_a_silent_device_is_silence(start: Start) -> None:
    # Exception 11: the gateway's target did not answer. The device is silent, not wrong.
    server, driver = await start(always(Answer.EXCEPTION, 11))
    with pytest.raises(DeviceUnavailable, match="gateway target device failed to respond"):
        await driver.read()
    assert len(server.requests) == 1
    _server, driver = await start(
        lambda r: (Answer.EXCEPTION, 10) if r.fc == 4 else (Answer.GOOD, 0))
    assert pairs(await driver.read()) == GOOD_HOLDING + [(None, Quality.COMM_ERROR)] * 2


async def test_a_retry_that_gets_a_good_answer_wins(start: Start) -> None:
    # The first attempt of each request is junk, the resend is answered.
    def junk_first(request: Request) -> tuple[Answer, int]:
        return (Answer.JUNK if request.index % 2 == 0 else Answer.GOOD, 0)

    _server, driver = await start(junk_first, retries=1)
    assert pairs(await driver.read()) == GOOD_HOLDING + GOOD_INPUT
    assert driver.stats.wrong_answers == 2
    assert driver.stats.no_answers == 0


# ---------------------------------------------------------------------------- pymodbus simulator


def _profile() -> Profile:
    points = [{"name": p["name"], "address": p["address"], "table": p["table"], "type": "u16"}
              for p in POINTS]
    simulate = {p["name"]: {"kind": "constant", "value": 5} for p in POINTS}
    return Profile("regs", Path("regs.toml"), "", "modbus", {}, points, simulate)


@pytest.mark.parametrize("code", [ExcCodes.DEVICE_FAILURE, ExcCodes.ILLEGAL_ADDRESS])
async def test_simulator_answering_only_exceptions_fails_the_poll(code: ExcCodes) -> None:
    async def refuse(
        fc: int, start: int, address: int, count: int, registers: list[int], set_values: Any
    ) -> ExcCodes | None:
        return code if set_values is None else None

    port = free_port()
    server = await serve({7: _profile()}, "127.0.0.1", port, update_interval=3600, action=refuse)
    driver = ModbusDriver(config(f"tcp://127.0.0.1:{port}"))
    try:
        with pytest.raises(DeviceProtocolError, match=f"exception {int(code)} ") as e:
            await driver.read()
        assert e.value.code == int(code)
    finally:
        await driver.close()
        await server.stop()


async def test_simulator_asked_for_a_unit_it_does_not_have() -> None:
    # The simulator serves unit 7 only; unit 9 gets exception 4 for every request (the issue's
    # "reported up with 0 failures" case).
    port = free_port()
    server = await serve({7: _profile()}, "127.0.0.1", port, update_interval=3600)
    driver = ModbusDriver(config(f"tcp://127.0.0.1:{port}", unit=9))
    try:
        with pytest.raises(DeviceProtocolError, match="exception 4 ") as e:
            await driver.read()
        assert e.value.code == 4
        good = ModbusDriver(config(f"tcp://127.0.0.1:{port}"))
        try:
            assert [v.quality for v in await good.read()] == [Quality.GOOD] * 4
        finally:
            await good.close()
    finally:
        await driver.close()
        await server.stop()


# ---------------------------------------------------------------------------- RTU on a pty


@pytest.mark.parametrize(
    ("answer", "message"),
    [(Answer.WRONG_UNIT, "answer from unit 8, asked unit 7"),
     (Answer.BAD_CRC, "no valid RTU frame"),
     (Answer.EXCEPTION, "exception 4 (server device failure)")],
    ids=["wrong_unit", "bad_crc", "exception"],
)
async def test_rtu_bus_wrong_answers(pty_pair: PtyPair, answer: Answer, message: str) -> None:
    from agent.config import BusConfig
    from agent.units import Duration

    server = await HostileServer(only(3, answer), framing="rtu").start_serial(pty_pair.a)
    bus = BusConfig(name="line", port=pty_pair.b, baudrate=19200, timeout=Duration.parse("300 ms"))
    cfg = ModbusDeviceConfig.model_validate(
        {"name": "meter-7", "bus": "line", "unit": 7, "retries": 0, "points": POINTS}
    )
    context = DriverContext(buses={"line": bus})
    driver = SPEC.create(cfg, context)
    assert isinstance(driver, ModbusDriver)
    try:
        assert pairs(await driver.read()) == [(None, Quality.PROTOCOL_ERROR)] * 2 + GOOD_INPUT
        server.behaviour = always(answer)
        with pytest.raises(DeviceProtocolError, match="no valid answer") as e:
            await driver.read()
        assert message in str(e.value)
    finally:
        await driver.close()
        for close in context.closers:
            await close()
        await server.stop()


# ---------------------------------------------------------------------------- scheduler


async def test_scheduler_counts_a_device_answering_only_exceptions_as_down(start: Start) -> None:
    _server, driver = await start(always(Answer.EXCEPTION, 4))
    readings: list[Reading] = []
    events: list[Event] = []
    poller = DevicePoller("meter-7", driver, 0.2, emit=readings.extend, event=events.append,
                          clock=time.time)
    with capture_logs() as logs:
        task = asyncio.create_task(poller.run())
        try:
            async with asyncio.timeout(20):
                while poller.stats.failures < 3:
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert poller.stats.down
    assert [e.kind for e in events] == ["device_down"]
    assert "exception 4 (server device failure)" in events[0].message
    assert sum(1 for x in logs if x["event"] == "device_unavailable") == 1
    assert [x for x in logs if x["event"] == "modbus_exception_answer"] == []
    polled = {r.quality for r in readings}
    assert Quality.PROTOCOL_ERROR in polled
    assert Quality.GOOD not in polled


# ---------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("data", "rtu", "expected"),
    [
        (bytes.fromhex("0004 0000 0007 07 03 04 03e8 03e9"), False,
         "answer with transaction id 4, sent 3"),
        (bytes.fromhex("0003 0000 0007 08 03 04 03e8 03e9"), False,
         "answer from unit 8, asked unit 7"),
        (bytes.fromhex("0003 0000 0007 07 03 04"), False, "answer cut off after 9 of 13 bytes"),
        (bytes.fromhex("0003 0000 0003 07 99 00"), False, "9 bytes that are no valid answer"),
        (b"ABCDEFGHIJKLMNOP", False, "16 bytes that are no Modbus TCP answer (junk: 41 42"),
        (bytes.fromhex("08 03 02 03e8 64fb"), True, "answer from unit 8, asked unit 7"),
        (bytes.fromhex("08 03 02 03e8 0000"), True, "7 bytes with no valid RTU frame"),
        (bytes.fromhex("07 03 02 03e8 0000"), True, "7 bytes with no valid RTU frame"),
    ],
)
def test_describe_wrong_bytes(data: bytes, rtu: bool, expected: str) -> None:
    assert describe_wrong_bytes(data, rtu=rtu, unit=7, tid=3).startswith(expected)


def test_describe_wrong_bytes_shows_a_short_excerpt() -> None:
    text = describe_wrong_bytes(b"\x41" * 5000, rtu=False, unit=7, tid=3)
    assert len(text) < 120
    assert text.endswith("…)")
