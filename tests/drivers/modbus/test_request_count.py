"""Requests per cycle, counted by the server, equal the planner's count for a scattered map.

The map (``servers.scattered_points``): 40 points over holding, input, coil and discrete
tables, with gap-free runs, gaps of 1 to 50 registers, a forbidden range between two points
close enough to merge, and a block longer than the request limit. A pymodbus simulator records
every request through its ``trace_pdu`` hook; nothing on the client side is trusted for the
count.

The split part serves the same map with two addresses undefined: one in a gap the planner
reads across (the request is refused with exception 2, split, and all its points still read)
and one under a point (that point alone ends up PROTOCOL_ERROR). It skips while
``planner.split_request`` does not exist.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from agent.driver import Driver, DriverContext
from agent.readings import PointValue, Quality
from drivers.modbus import planner
from drivers.modbus.codec import apply_scale
from drivers.modbus.config import ModbusDeviceConfig, ModbusPoint, Table
from drivers.modbus.driver import SPEC
from drivers.modbus.planner import ReadRequest, plan_reads
from tests.conftest import free_port
from tests.drivers.modbus.servers import (
    SCATTERED_LIMITS,
    UNDEFINED_GAP,
    UNDEFINED_POINT,
    CountingServer,
    RegisterImage,
    SeenRequest,
    image_for,
    raw_value,
    scattered_points,
)

pytestmark = pytest.mark.timeout(60)

CYCLES = 3
HAS_SPLIT = hasattr(planner, "split_request")


def scattered_config(port: int) -> ModbusDeviceConfig:
    return ModbusDeviceConfig.model_validate(
        {
            "name": "scattered",
            "endpoint": f"tcp://127.0.0.1:{port}",
            "timeout": "500 ms",
            "retries": 0,
            **SCATTERED_LIMITS,
            "points": scattered_points(),
        }
    )


def planned(config: ModbusDeviceConfig) -> list[ReadRequest]:
    return list(
        plan_reads(
            config.points,
            max_registers=config.max_registers_per_request,
            max_bits=config.max_bits_per_request,
            max_gap=config.max_gap,
            forbidden=config.forbidden_ranges,
        )
    )


def as_seen(requests: Sequence[ReadRequest]) -> Counter[SeenRequest]:
    return Counter(SeenRequest(r.table, r.address, r.count) for r in requests)


def expected_value(index: int, point: ModbusPoint) -> int | float:
    return apply_scale(raw_value(index, point.type.value), point.scale, point.offset)


def readable(image: RegisterImage, request: ReadRequest) -> bool:
    return all(image.defined(request.table, a) for a in range(request.address, request.last + 1))


@pytest.fixture
async def opened() -> AsyncIterator[list[Any]]:
    """Drivers, contexts and servers to close after the test (newest first)."""
    items: list[Any] = []
    yield items
    for item in reversed(items):
        if isinstance(item, CountingServer):
            await item.stop()
        else:
            await item.close()


async def start(
    config: ModbusDeviceConfig, image: RegisterImage, port: int, opened: list[Any]
) -> tuple[Driver, CountingServer]:
    server = await CountingServer.start_tcp(image, port, unit=config.unit)
    opened.append(server)
    context = DriverContext()
    opened.append(context)
    driver = SPEC.create(config, context)
    opened.append(driver)
    await driver.connect()
    return driver, server


def check_values(
    config: ModbusDeviceConfig, values: Sequence[PointValue], undefined: set[str]
) -> None:
    assert [v.point for v in values] == [p.name for p in config.points]
    for index, (point, value) in enumerate(zip(config.points, values, strict=True)):
        if point.name in undefined:
            assert value.quality is Quality.PROTOCOL_ERROR, value
            assert value.value is None
        else:
            assert value.quality is Quality.GOOD, value
            assert value.value == expected_value(index, point), value


def test_the_map_is_what_the_test_claims() -> None:
    """40 points in four tables; the planner merges across gaps yet respects every limit."""
    config = scattered_config(1)
    plan = planned(config)
    assert len(config.points) == 40
    assert {p.table for p in config.points} == set(Table)
    assert len(plan) < len(config.points)
    assert any(planner.gap_ranges(r, config.points) for r in plan), "no request fills a gap"
    assert max(r.count for r in plan if r.table is Table.HOLDING) == 16  # the limit bites
    for r in plan:
        assert r.count <= 16 or r.table in (Table.COIL, Table.DISCRETE)
        assert not (r.table is Table.HOLDING and r.address <= 42 and r.last >= 40)
    # Without the forbidden range 38 and 44 would share a request: the range matters.
    unforbidden = config.model_copy(update={"forbidden_ranges": []})
    assert len(planned(unforbidden)) == len(plan) - 1
    # Both undefined addresses of the split test sit inside merged requests.
    for table, address in (UNDEFINED_GAP, UNDEFINED_POINT):
        (holder,) = [r for r in plan if r.table is table and r.address <= address <= r.last]
        assert len(holder.points) > 1


async def test_requests_per_cycle_equal_the_planners_count(opened: list[Any]) -> None:
    port = free_port()
    config = scattered_config(port)
    image = image_for(config.points, forbidden=config.forbidden_ranges)
    driver, server = await start(config, image, port, opened)
    plan = planned(config)

    for cycle in range(CYCLES):
        values = await driver.read()
        seen = server.take()
        assert len(seen) == len(plan), (cycle, seen)
        assert Counter(seen) == as_seen(plan), cycle
        check_values(config, values, undefined=set())
    assert server.exceptions == []
    assert getattr(driver, "requests_per_cycle") == len(plan)


def resolve(
    request: ReadRequest, points: Sequence[ModbusPoint], image: RegisterImage
) -> tuple[int, list[ReadRequest]]:
    """(requests sent in the first cycle, the parts kept) for one planned request.

    The driver's contract: a refused request is split with ``planner.split_request`` and each
    part is read in the same cycle, recursively, until a part is readable or cannot be split.
    """
    if readable(image, request):
        return 1, [request]
    parts = planner.split_request(request, points)
    if parts == (request,):
        return 1, [request]
    sent, kept = 1, []
    for part in parts:
        part_sent, part_kept = resolve(part, points, image)
        sent += part_sent
        kept += part_kept
    return sent, kept


@pytest.mark.skipif(not HAS_SPLIT, reason="planner.split_request does not exist yet")
async def test_illegal_address_split_keeps_every_point_and_the_new_count(
    opened: list[Any],
) -> None:
    port = free_port()
    config = scattered_config(port)
    image = image_for(
        config.points, forbidden=config.forbidden_ranges, holes=[UNDEFINED_GAP, UNDEFINED_POINT]
    )
    undefined_points = {
        p.name
        for p in config.points
        if any(
            (p.table, a) in (UNDEFINED_GAP, UNDEFINED_POINT)
            for a in range(p.address, p.address + p.width)
        )
    }
    assert undefined_points == {"i_missing"}  # the gap hole hides no point
    driver, server = await start(config, image, port, opened)
    original = planned(config)
    first_cycle = 0
    new_plan: list[ReadRequest] = []
    for request in original:
        sent, kept = resolve(request, config.points, image)
        first_cycle += sent
        new_plan += kept

    # The new plan, independently of how split_request cuts: every point read once, only
    # single-point requests touch an undefined address, and it is still far from per-point.
    covered = Counter(index for r in new_plan for index, _ in r.points)
    assert covered == Counter(range(len(config.points)))
    assert all(readable(image, r) or len(r.points) == 1 for r in new_plan)
    assert len(original) < len(new_plan) < len(config.points)

    values = await driver.read()
    seen = server.take()
    assert len(seen) == first_cycle, seen
    check_values(config, values, undefined_points)
    assert getattr(driver, "requests_per_cycle") == len(new_plan)

    for cycle in range(1, CYCLES):
        values = await driver.read()
        seen = server.take()
        assert len(seen) == len(new_plan), (cycle, seen)
        assert Counter(seen) == as_seen(new_plan), cycle
        check_values(config, values, undefined_points)
    # From the second cycle on, only the undefined point's own request is refused.
    refused = Counter(server.exceptions)
    (missing_request,) = [r for r in new_plan if not readable(image, r)]
    assert refused[SeenRequest(Table.INPUT, missing_request.address, missing_request.count)] == (
        CYCLES
    )
