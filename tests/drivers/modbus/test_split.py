"""Split on exception 2: a merged request the device refuses is split, read again in the same
cycle, and the split is remembered. Against a real pymodbus simulator that counts requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.constants import ExcCodes
from structlog.testing import capture_logs

from agent.damper import FLAP_LIMIT
from agent.errors import DeviceProtocolError
from agent.profiles import Profile
from agent.readings import Quality
from drivers.modbus.config import ModbusDeviceConfig, ModbusPoint
from drivers.modbus.driver import ModbusDriver, Splitter
from drivers.modbus.planner import ReadRequest, split_request
from drivers.modbus.simulator import serve
from tests.conftest import free_port

REGISTERS = 48  # holding 0..47 hold 1000 + address, unless refused or left undefined

Seen = list[tuple[int, int]]  # (address, count) of every holding read the server got


def stand_in_split(request: ReadRequest, points: Sequence[ModbusPoint]) -> tuple[ReadRequest, ...]:
    """A local split_request: gap-free runs first, then one request per point."""
    members = sorted(
        (request.address + offset, request.address + offset + points[i].width - 1, i)
        for i, offset in request.points
    )
    runs: list[list[tuple[int, int, int]]] = []
    for member in members:
        if runs and member[0] <= max(m[1] for m in runs[-1]) + 1:
            runs[-1].append(member)
        else:
            runs.append([member])
    if len(runs) == 1:
        if len(members) == 1:
            return (request,)
        runs = [[m] for m in members]

    def part(run: list[tuple[int, int, int]]) -> ReadRequest:
        first, last = min(m[0] for m in run), max(m[1] for m in run)
        return ReadRequest(request.table, first, last - first + 1,
                           tuple((i, start - first) for start, _, i in run))

    return tuple(part(run) for run in runs)


SPLITTERS = {"planner.split_request": split_request, "stand-in": stand_in_split}


def register_profile(tmp_path: Path, defined: Sequence[int]) -> Profile:
    """A device whose holding register A holds 1000 + A, for the addresses in ``defined``."""
    points = [{"name": f"r{a}", "address": a, "type": "u16"} for a in defined]
    simulate = {f"r{a}": {"kind": "constant", "value": 1000 + a} for a in defined}
    return Profile("regs", tmp_path / "regs.toml", "", "modbus", {}, points, simulate)


def value_at(address: int, type_: str) -> int:
    if type_ == "u16":
        return 1000 + address
    return ((1000 + address) << 16) | (1000 + address + 1)


def refusing_action(refused: Callable[[int, int], bool]) -> Any:
    """A SimDevice action answering exception 2 where ``refused(address, count)``."""

    async def action(
        fc: int, start: int, address: int, count: int, registers: list[int], set_values: Any
    ) -> ExcCodes | None:
        if set_values is not None:  # the simulator's own register updates
            return None
        return ExcCodes.ILLEGAL_ADDRESS if refused(address, count) else None

    return action


def counting(seen: Seen) -> Callable[[bool, Any], Any]:
    """A server trace_pdu hook recording (address, count) of every request it receives."""

    def trace_pdu(sending: bool, pdu: Any) -> Any:
        if not sending:
            seen.append((int(pdu.address), int(pdu.count)))
        return pdu

    return trace_pdu


def config(port: int, points: list[dict[str, Any]], max_gap: int = 20) -> ModbusDeviceConfig:
    return ModbusDeviceConfig.model_validate(
        {"name": "m", "endpoint": f"tcp://127.0.0.1:{port}", "timeout": "500 ms",
         "retries": 0, "max_gap": max_gap, "points": points}
    )


@asynccontextmanager
async def device(
    tmp_path: Path,
    defined: Sequence[int],
    points: list[dict[str, Any]],
    refused: Callable[[int, int], bool] = lambda a, c: False,
    split: Splitter | None = None,
) -> AsyncIterator[tuple[ModbusDriver, Seen]]:
    port = free_port()
    seen: Seen = []
    server = await serve({1: register_profile(tmp_path, defined)}, "127.0.0.1", port,
                         update_interval=3600, action=refusing_action(refused),
                         trace_pdu=counting(seen))
    driver = ModbusDriver(config(port, points), split=split)
    try:
        yield driver, seen
    finally:
        await driver.close()
        await server.stop()


def u16(*addresses: int) -> list[dict[str, Any]]:
    return [{"name": f"p{a}", "address": a, "type": "u16"} for a in addresses]


@pytest.fixture(params=list(SPLITTERS))
def splitter(request: pytest.FixtureRequest) -> Splitter:
    return SPLITTERS[request.param]


async def test_undefined_gap_splits_in_the_same_cycle_and_stays_split(
    tmp_path: Path, splitter: Splitter
) -> None:
    # 0..2 and 10..11 are defined; the gap 3..9 is not, but max_gap merges across it
    async with device(tmp_path, [0, 1, 2, 10, 11], u16(0, 1, 2, 10, 11), split=splitter) as (
        driver, seen
    ):
        assert [(r.address, r.count) for r in driver.plan] == [(0, 12)]
        with capture_logs() as logs:
            first = await driver.read()
        assert [(v.value, v.quality) for v in first] == [
            (1000 + a, Quality.GOOD) for a in (0, 1, 2, 10, 11)
        ]
        assert seen == [(0, 12), (0, 3), (10, 2)]
        splits = [e for e in logs if e["event"] == "modbus_plan_split"]
        assert len(splits) == 1
        assert splits[0]["old"] == "holding[0..11]"
        assert splits[0]["new"] == ["holding[0..2]", "holding[10..11]"]
        assert driver.requests_per_cycle == 2

        seen.clear()
        with capture_logs() as logs:
            second = await driver.read()
        assert second == first
        assert seen == [(0, 3), (10, 2)]  # the split plan only
        assert not [e for e in logs if e["event"].startswith("modbus_")]


async def test_a_refused_point_alone_is_a_protocol_error_its_neighbours_keep_values(
    tmp_path: Path, splitter: Splitter
) -> None:
    def refuses_1(address: int, count: int) -> bool:
        return address <= 1 < address + count

    async with device(tmp_path, [0, 1, 2, 10, 11], u16(0, 1, 2, 10, 11), refuses_1,
                      split=splitter) as (driver, seen):
        with capture_logs() as logs:
            first = await driver.read()
            second = await driver.read()
        assert [(v.point, v.value, v.quality) for v in first] == [
            ("p0", 1000, Quality.GOOD),
            ("p1", None, Quality.PROTOCOL_ERROR),
            ("p2", 1002, Quality.GOOD),
            ("p10", 1010, Quality.GOOD),
            ("p11", 1011, Quality.GOOD),
        ]
        assert second == first
        cycle_two = [(0, 1), (1, 1), (2, 1), (10, 2)]
        assert seen == [(0, 12), (0, 3), (0, 1), (1, 1), (2, 1), (10, 2), *cycle_two]
        assert driver.requests_per_cycle == len(cycle_two)
        events = [e["event"] for e in logs]
        assert events.count("modbus_plan_split") == 2  # 0..11 → runs, 0..2 → points
        assert events.count("modbus_exception_answer") == 1  # once per change, not per poll
        assert driver.stats.splits == 2


async def test_other_exception_codes_do_not_split(tmp_path: Path) -> None:
    async def busy(
        fc: int, start: int, address: int, count: int, registers: list[int], set_values: Any
    ) -> ExcCodes | None:
        return ExcCodes.DEVICE_BUSY if set_values is None and address == 0 else None

    port = free_port()
    server = await serve({1: register_profile(tmp_path, [0, 1, 9])}, "127.0.0.1", port,
                         update_interval=3600, action=busy)
    # Register 9 is read on its own and answered: the poll reads something, so it stands.
    driver = ModbusDriver(config(port, u16(0, 1, 9), max_gap=0))
    try:
        with capture_logs() as logs:
            values = await driver.read()
            await driver.read()
        assert [v.quality for v in values] == [Quality.PROTOCOL_ERROR] * 2 + [Quality.GOOD]
        assert driver.requests_per_cycle == 2
        answers = [e for e in logs if e["event"] == "modbus_exception_answer"]
        assert [(e["code"], e["request"]) for e in answers] == [(6, "holding[0..1]")]
    finally:
        await driver.close()
        await server.stop()


async def test_a_single_point_request_is_never_split(tmp_path: Path) -> None:
    port = free_port()
    seen: Seen = []
    server = await serve({1: register_profile(tmp_path, [0])}, "127.0.0.1", port,
                         update_interval=3600, trace_pdu=counting(seen))
    driver = ModbusDriver(config(port, u16(0, 5), max_gap=0))  # register 5 is undefined
    try:
        values = await driver.read()
        assert [(v.value, v.quality) for v in values] == [
            (1000, Quality.GOOD),
            (None, Quality.PROTOCOL_ERROR),
        ]
        assert seen == [(0, 1), (5, 1)]
        assert driver.requests_per_cycle == 2
        assert driver.stats.splits == 0
    finally:
        await driver.close()
        await server.stop()


@st.composite
def point_maps(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Non-overlapping u16/u32 points on holding 0..47, with gaps of 0–6 registers."""
    points: list[dict[str, Any]] = []
    address = draw(st.integers(0, 6))
    for gap, type_ in draw(st.lists(st.tuples(st.integers(0, 6), st.sampled_from(["u16", "u32"])),
                                    min_size=1, max_size=10)):
        width = 1 if type_ == "u16" else 2
        if address + width > REGISTERS:
            break
        points.append({"name": f"p{address}", "address": address, "type": type_})
        address += width + gap
    return points


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=point_maps(), refused=st.sets(st.integers(0, REGISTERS - 1), max_size=6))
def test_split_never_loses_a_readable_point(
    tmp_path: Path, table: list[dict[str, Any]], refused: set[int]
) -> None:
    """Any map, any refused registers: one cycle reads every point that can be read at all,
    and the next cycle sends exactly its (remembered) plan, with no further split.

    (Points that share registers stay in one request when split: ``split_request`` keeps
    them together, so this map has none.)
    """

    def refuses(address: int, count: int) -> bool:
        return any(address <= r < address + count for r in refused)

    def covered(point: dict[str, Any]) -> set[int]:
        address = int(point["address"])
        return set(range(address, address + (1 if point["type"] == "u16" else 2)))

    async def scenario() -> None:
        async with device(tmp_path, range(REGISTERS), table, refuses) as (driver, seen):
            if all(covered(point) & refused for point in table):
                # Nothing readable: the poll fails as a whole, with the split remembered.
                with pytest.raises(DeviceProtocolError, match="exception 2"):
                    await driver.read()
                splits, planned = driver.stats.splits, driver.requests_per_cycle
                seen.clear()
                with pytest.raises(DeviceProtocolError, match="exception 2"):
                    await driver.read()
                assert (len(seen), driver.stats.splits) == (planned, splits)
                return
            first = await driver.read()
            for point, value in zip(table, first, strict=True):
                address, type_ = int(point["address"]), str(point["type"])
                span = set(range(address, address + (1 if type_ == "u16" else 2)))
                if span & refused:
                    assert (value.value, value.quality) == (None, Quality.PROTOCOL_ERROR)
                else:
                    assert value.quality is Quality.GOOD, (point, refused)
                    assert value.value == value_at(address, type_)
            splits, planned = driver.stats.splits, driver.requests_per_cycle
            seen.clear()
            assert await driver.read() == first
            assert len(seen) == planned
            assert driver.stats.splits == splits
            # what is still refused in the plan is a single point
            for request in driver.plan:
                if refuses(request.address, request.count):
                    assert len({request.address + off for _, off in request.points}) == 1

    asyncio.run(scenario())


async def test_an_exception_that_comes_and_goes_is_logged_as_flapping(tmp_path: Path) -> None:
    """Busy at every other poll: before, a modbus_exception_answer and a
    modbus_exception_cleared line per poll; now the first changes, then one line."""
    asked = [0]

    async def sometimes_busy(
        fc: int, start: int, address: int, count: int, registers: list[int], set_values: Any
    ) -> ExcCodes | None:
        if set_values is not None or address != 0:
            return None
        asked[0] += 1
        return ExcCodes.DEVICE_BUSY if asked[0] % 2 else None

    port = free_port()
    server = await serve({1: register_profile(tmp_path, [0, 1, 9])}, "127.0.0.1", port,
                         update_interval=3600, action=sometimes_busy)
    driver = ModbusDriver(config(port, u16(0, 1, 9), max_gap=0))
    try:
        with capture_logs() as logs:
            for _ in range(20):
                await driver.read()
        assert asked[0] >= 20  # the input: busy, then not, at every other poll
        events = [e["event"] for e in logs]
        assert events.count("modbus_exception_answer") + events.count(
            "modbus_exception_cleared") == FLAP_LIMIT, events
        flapping = [e for e in logs if e["event"] == "modbus_exception_flapping"]
        assert len(flapping) == 1 and flapping[0]["request"] == "holding[0..1]", logs
        assert len([e for e in logs if e["log_level"] != "debug"]) == FLAP_LIMIT + 1, events
    finally:
        await driver.close()
        await server.stop()
