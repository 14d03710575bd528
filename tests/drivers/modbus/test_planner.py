"""Read planner: table tests, and a property test of optimality against brute force."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.config import BIT_TABLES, ModbusPoint, PointType, Table
from drivers.modbus.planner import ReadPlan, ReadRequest, gap_ranges, plan_reads, split_request


def pt(name: str, address: int, type_: str = "u16", table: str = "holding") -> ModbusPoint:
    return ModbusPoint.model_validate(
        {"name": name, "address": address, "type": type_, "table": table}
    )


def spans(plan: ReadPlan) -> list[tuple[str, int, int]]:
    return [(r.table.value, r.address, r.count) for r in plan]


def plan(
    points: Sequence[ModbusPoint],
    *,
    max_registers: int = 125,
    max_bits: int = 2000,
    max_gap: int = 0,
    forbidden: Sequence[tuple[int, int]] = (),
) -> ReadPlan:
    return plan_reads(
        points,
        max_registers=max_registers,
        max_bits=max_bits,
        max_gap=max_gap,
        forbidden=forbidden,
    )


@pytest.mark.parametrize(
    ("points", "kwargs", "expected"),
    [
        pytest.param(
            [pt("a", 0, "f32"), pt("b", 2, "f32"), pt("c", 4, "f32")],
            {},
            [("holding", 0, 6)],
            id="contiguous-merge",
        ),
        pytest.param(
            [pt("a", 0), pt("b", 3)],
            {"max_gap": 2},
            [("holding", 0, 4)],
            id="gap-equal-to-max-merges",
        ),
        pytest.param(
            [pt("a", 0), pt("b", 4)],
            {"max_gap": 2},
            [("holding", 0, 1), ("holding", 4, 1)],
            id="gap-above-max-splits",
        ),
        pytest.param(
            [pt("a", 0, "f32"), pt("b", 2, "f32"), pt("c", 4, "f32")],
            {"max_registers": 4},
            [("holding", 0, 4), ("holding", 4, 2)],
            id="limit-splits",
        ),
        pytest.param(
            [pt("a", 0), pt("b", 2)],
            {"max_gap": 5, "forbidden": [(1, 1)]},
            [("holding", 0, 1), ("holding", 2, 1)],
            id="forbidden-gap-splits",
        ),
        pytest.param(
            [pt("a", 0), pt("b", 1, "u32"), pt("c", 3)],
            {"forbidden": [(2, 2)]},
            [("holding", 0, 1), ("holding", 1, 2), ("holding", 3, 1)],
            id="forbidden-point-read-alone",
        ),
        pytest.param(
            [pt("whole", 10, "u32"), pt("high", 10), pt("low", 11)],
            {"forbidden": [(11, 11)]},
            [("holding", 10, 2)],
            id="points-inside-a-forbidden-point-share-it",
        ),
        pytest.param(
            [pt("as_u32", 0, "u32"), pt("as_i32", 0, "i32"), pt("low", 1)],
            {},
            [("holding", 0, 2)],
            id="overlapping-points-share",
        ),
        pytest.param(
            [pt("long", 0, "u64"), pt("inner", 1), pt("after", 4)],
            {"max_registers": 4},
            [("holding", 0, 4), ("holding", 4, 1)],
            id="contained-point-does-not-grow-span",
        ),
        pytest.param(
            [
                pt("di", 5, "bool", "discrete"),
                pt("ir", 0, "f32", "input"),
                pt("c1", 0, "bool", "coil"),
                pt("hr", 7),
                pt("c2", 9, "bool", "coil"),
            ],
            {"max_gap": 10},
            [("holding", 7, 1), ("input", 0, 2), ("coil", 0, 10), ("discrete", 5, 1)],
            id="tables-separate-in-fixed-order",
        ),
        pytest.param(
            [pt("c1", 0, "bool", "coil"), pt("c2", 9, "bool", "coil")],
            {"max_gap": 10, "max_bits": 5, "max_registers": 125},
            [("coil", 0, 1), ("coil", 9, 1)],
            id="bits-use-max-bits",
        ),
        pytest.param(
            [pt("a", 0), pt("b", 4, "u16", "input")],
            {"max_gap": 10, "forbidden": [(2, 2)]},
            [("holding", 0, 1), ("input", 4, 1)],
            id="no-merge-across-tables",
        ),
    ],
)
def test_plan_table(
    points: list[ModbusPoint], kwargs: dict[str, object], expected: list[tuple[str, int, int]]
) -> None:
    result = plan(points, **kwargs)  # type: ignore[arg-type]
    assert spans(result) == expected
    check_plan(points, result, **kwargs)  # type: ignore[arg-type]


def test_offsets_point_back_at_the_points() -> None:
    points = [pt("b", 12, "f32", "input"), pt("a", 10, "u16", "input"), pt("c", 11, "i16", "input")]
    result = plan(points)
    assert len(result) == 1
    (request,) = result
    assert request.address == 10
    assert request.count == 4
    assert request.points == ((1, 0), (2, 1), (0, 2))


def test_point_wider_than_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="raise the device's request limit"):
        plan([pt("big", 0, "u64")], max_registers=3)


def test_empty_device_plans_nothing() -> None:
    assert len(plan([])) == 0


def test_gap_ranges() -> None:
    points = [pt("a", 0), pt("b", 3), pt("c", 7, "u32")]
    (request,) = plan(points, max_gap=3)
    assert gap_ranges(request, points) == [(1, 2), (4, 6)]


# --- validity and brute force -------------------------------------------------------------


def _touches(first: int, last: int, forbidden: Sequence[tuple[int, int]]) -> bool:
    return any(a <= last and first <= b for a, b in forbidden)


def _half_open(span: tuple[int, int]) -> tuple[int, int]:
    return span[0], span[1] + 1


def _span(point: ModbusPoint) -> tuple[int, int]:
    return point.address, point.address + point.width - 1


def check_plan(
    points: Sequence[ModbusPoint],
    result: ReadPlan,
    *,
    max_registers: int = 125,
    max_bits: int = 2000,
    max_gap: int = 0,
    forbidden: Sequence[tuple[int, int]] = (),
) -> None:
    """Every point read completely, once; no request breaks a limit or a forbidden range."""
    seen: list[int] = []
    for request in result:
        limit = max_bits if request.table in BIT_TABLES else max_registers
        assert 1 <= request.count <= limit
        members = [points[i] for i, _ in request.points]
        for index, offset in request.points:
            point = points[index]
            assert point.table is request.table
            assert offset == point.address - request.address
            assert request.address <= point.address
            assert point.address + point.width - 1 <= request.last
            seen.append(index)
        member_spans = {_span(p) for p in members}
        if _touches(request.address, request.last, forbidden):
            assert (request.address, request.last) in member_spans
        for first, last in gap_ranges(request, points):
            assert last - first + 1 <= max_gap
    assert sorted(seen) == list(range(len(points)))


def brute_force_minimum(
    points: Sequence[ModbusPoint],
    *,
    max_registers: int,
    max_bits: int,
    max_gap: int,
    forbidden: Sequence[tuple[int, int]],
) -> int:
    """Fewest valid requests, by trying every span that starts and ends on point boundaries."""
    total = 0
    for table in Table:
        members = [p for p in points if p.table is table]
        if not members:
            continue
        limit = max_bits if table in BIT_TABLES else max_registers
        point_spans = [_span(p) for p in members]
        masks: list[int] = []
        for s in {a for a, _ in point_spans}:
            for e in {b for _, b in point_spans}:
                if e < s or e - s + 1 > limit:
                    continue
                inside = [i for i, (a, b) in enumerate(point_spans) if s <= a and b <= e]
                if not inside:
                    continue
                covered = {x for i in inside for x in range(*_half_open(point_spans[i]))}
                run = longest = 0
                for x in range(s, e + 1):
                    run = 0 if x in covered else run + 1
                    longest = max(longest, run)
                if longest > max_gap:
                    continue
                if _touches(s, e, forbidden) and (s, e) not in {point_spans[i] for i in inside}:
                    continue
                masks.append(sum(1 << i for i in inside))
        full = (1 << len(members)) - 1

        @cache
        def fewest(todo: int, masks: tuple[int, ...] = tuple(masks)) -> int:
            if todo == 0:
                return 0
            lowest = todo & -todo  # some request must read the lowest unread point
            return 1 + min(fewest(todo & ~m) for m in masks if m & lowest)

        total += fewest(full)
    return total


_REGISTER_TYPES = [PointType.U16, PointType.I16, PointType.U32, PointType.F32, PointType.U64]


@st.composite
def _maps(draw: st.DrawFn) -> tuple[list[ModbusPoint], dict[str, object]]:
    n = draw(st.integers(1, 8))
    points: list[ModbusPoint] = []
    for i in range(n):
        table = draw(st.sampled_from(list(Table)))
        bits = table in BIT_TABLES
        type_ = PointType.BOOL if bits else draw(st.sampled_from(_REGISTER_TYPES))
        address = draw(st.integers(0, 24))
        points.append(pt(f"p{i}", address, type_.value, table.value))
    forbidden = draw(
        st.lists(
            st.tuples(st.integers(0, 28), st.integers(0, 3)).map(lambda t: (t[0], t[0] + t[1])),
            max_size=2,
        )
    )
    kwargs: dict[str, object] = {
        "max_registers": draw(st.integers(4, 12)),
        "max_bits": draw(st.integers(1, 12)),
        "max_gap": draw(st.integers(0, 4)),
        "forbidden": forbidden,
    }
    return points, kwargs


@settings(max_examples=600, deadline=None)
@given(_maps())
def test_greedy_plan_is_valid_and_optimal(
    case: tuple[list[ModbusPoint], dict[str, object]],
) -> None:
    points, kwargs = case
    result = plan(points, **kwargs)  # type: ignore[arg-type]
    check_plan(points, result, **kwargs)  # type: ignore[arg-type]
    assert len(result) == brute_force_minimum(points, **kwargs)  # type: ignore[arg-type]


# --- splitting a refused request ------------------------------------------------------------


def only(plan_: ReadPlan) -> ReadRequest:
    (request,) = plan_
    return request


def shape(parts: Sequence[ReadRequest]) -> list[tuple[int, int, tuple[tuple[int, int], ...]]]:
    return [(r.address, r.count, r.points) for r in parts]


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        pytest.param([pt("a", 7, "f32")], [(7, 2, ((0, 0),))], id="single-point-unchanged"),
        pytest.param(
            [pt("a", 0), pt("b", 3)],
            [(0, 1, ((0, 0),)), (3, 1, ((1, 0),))],
            id="cut-at-gap",
        ),
        pytest.param(
            [pt("a", 0), pt("b", 1), pt("c", 5, "u32")],
            [(0, 2, ((0, 0), (1, 1))), (5, 2, ((2, 0),))],
            id="gap-first-runs-stay-whole",
        ),
        pytest.param(
            [pt("a", 0), pt("b", 1), pt("c", 2, "f32")],
            [(0, 1, ((0, 0),)), (1, 1, ((1, 0),)), (2, 2, ((2, 0),))],
            id="gap-free-run-one-per-point",
        ),
        pytest.param(
            [pt("as_u32", 0, "u32"), pt("as_i32", 0, "i32"), pt("low", 1), pt("next", 2)],
            [(0, 2, ((0, 0), (1, 0), (2, 1))), (2, 1, ((3, 0),))],
            id="overlapping-points-stay-together",
        ),
        pytest.param(
            [pt("long", 0, "u64"), pt("inner", 2)],
            [(0, 4, ((0, 0), (1, 2)))],
            id="point-inside-a-point-is-one-part",
        ),
        pytest.param(
            [pt("c", 9, "bool", "coil"), pt("a", 0, "bool", "coil"), pt("b", 1, "bool", "coil")],
            [(0, 2, ((1, 0), (2, 1))), (9, 1, ((0, 0),))],
            id="bits-and-point-order",
        ),
    ],
)
def test_split_table(
    points: list[ModbusPoint], expected: list[tuple[int, int, tuple[tuple[int, int], ...]]]
) -> None:
    request = only(plan(points, max_gap=10, max_bits=100))
    parts = split_request(request, points)
    assert shape(parts) == expected
    assert all(p.table is request.table for p in parts)


def test_unsplittable_request_is_returned_as_is() -> None:
    points = [pt("a", 3, "u32")]
    request = only(plan(points))
    assert split_request(request, points) == (request,)
    assert split_request(request, points)[0] is request


def test_split_trims_registers_no_point_reads() -> None:
    points = [pt("a", 0), pt("b", 4)]
    padded = ReadRequest(Table.HOLDING, 2, 6, ((1, 2),))  # reads 2..7 for b at 4 only
    assert shape(split_request(padded, points)) == [(4, 1, ((1, 0),))]


def test_split_refuses_a_request_of_other_points() -> None:
    points = [pt("a", 0, "u32")]
    with pytest.raises(ValueError, match="does not belong to these points"):
        split_request(ReadRequest(Table.HOLDING, 0, 1, ((0, 0),)), points)
    with pytest.raises(ValueError, match="with the point list"):
        split_request(ReadRequest(Table.HOLDING, 0, 2, ((3, 0),)), points)


def _split_to_the_end(
    request: ReadRequest, points: Sequence[ModbusPoint], depth: int = 0
) -> list[ReadRequest]:
    """Split until nothing changes; every step must make progress."""
    assert depth <= request.count + len(request.points), "splitting does not terminate"
    parts = split_request(request, points)
    if parts == (request,):
        return [request]
    assert len(parts) > 1 or parts[0].count < request.count  # progress
    leaves: list[ReadRequest] = []
    for part in parts:
        leaves.extend(_split_to_the_end(part, points, depth + 1))
    return leaves


def _check_parts(
    original: ReadRequest, parts: Sequence[ReadRequest], points: Sequence[ModbusPoint]
) -> None:
    assert sorted(i for p in parts for i, _ in p.points) == sorted(i for i, _ in original.points)
    for part in parts:
        assert part.table is original.table
        assert original.address <= part.address
        assert part.last <= original.last
        assert part.count <= original.count
        for index, offset in part.points:
            point = points[index]
            assert offset == point.address - part.address
            assert part.address <= point.address
            assert point.address + point.width - 1 <= part.last
        if part is not original:
            assert gap_ranges(part, points) == []


@st.composite
def _requests(draw: st.DrawFn) -> tuple[list[ModbusPoint], ReadRequest]:
    table = draw(st.sampled_from(list(Table)))
    bits = table in BIT_TABLES
    n = draw(st.integers(1, 8))
    points = [
        pt(
            f"p{i}",
            draw(st.integers(0, 30)),
            "bool" if bits else draw(st.sampled_from(_REGISTER_TYPES)).value,
            table.value,
        )
        for i in range(n)
    ]
    request = only(plan(points, max_gap=40, max_registers=125, max_bits=125))
    lead = draw(st.integers(0, min(3, request.address)))
    trail = draw(st.integers(0, 3))
    if lead or trail:  # a request from elsewhere may read more than its points
        request = ReadRequest(
            table,
            request.address - lead,
            request.count + lead + trail,
            tuple((i, o + lead) for i, o in request.points),
        )
    return points, request


@settings(max_examples=500, deadline=None)
@given(_requests())
def test_split_parts_read_exactly_the_points(case: tuple[list[ModbusPoint], ReadRequest]) -> None:
    points, request = case
    parts = split_request(request, points)
    _check_parts(request, parts, points)


@settings(max_examples=500, deadline=None)
@given(_requests())
def test_repeated_splitting_ends_at_single_points(
    case: tuple[list[ModbusPoint], ReadRequest],
) -> None:
    points, request = case
    leaves = _split_to_the_end(request, points)
    _check_parts(request, leaves, points)
    for leaf in leaves:
        spans = sorted(_span(points[i]) for i, _ in leaf.points)
        # what is left is one point, or points chained by shared registers
        reach = spans[0][1]
        for first, last in spans[1:]:
            assert first <= reach
            reach = max(reach, last)
        assert (leaf.address, leaf.last) == (spans[0][0], reach)
