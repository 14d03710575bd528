"""Modbus read planner: merge a device's points into the fewest requests. Pure, no I/O.

Per table the points are sorted by (address, end) and merged greedily left to right: a point
joins the open request when the merged span still fits the request limit, the unread gap
before it is at most ``max_gap``, and the merged span touches no forbidden address. A point
whose own span is forbidden is still read, alone (or together with points inside that same
span): the user asked for exactly those registers.

Why greedy is optimal: sorted by start, the span of a request only grows to the right, a gap
in front of a point can only be filled by points that start earlier (already placed), and once
a span covers a forbidden address it can never again equal one point's span. So every rule is
monotone in the prefix, and the longest valid prefix never hurts. ``tests/drivers/modbus/
test_planner.py`` checks this against brute force.

When a device answers exception 2 (illegal address) for a merged request, ``split_request``
breaks it into smaller ones: first at its gaps (registers no point reads, the likely culprits),
then into one request per point. Each call makes parts strictly smaller, so a driver that
splits again whenever a part still fails ends at requests of single points, which it can mark
bad on their own. ``gap_ranges`` names the gap registers (for a log line, or to plan again with
them forbidden).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from drivers.modbus.config import BIT_TABLES, ModbusPoint, Table

__all__ = ["ReadPlan", "ReadRequest", "gap_ranges", "plan_reads", "split_request"]

_TABLE_ORDER = (Table.HOLDING, Table.INPUT, Table.COIL, Table.DISCRETE)


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: ``count`` registers (or bits) of ``table`` from ``address``.

    ``points`` pairs each point's index in the device's point list with its offset in the
    answer, in ascending offset order.
    """

    table: Table
    address: int
    count: int
    points: tuple[tuple[int, int], ...]

    @property
    def last(self) -> int:
        """Last address read (inclusive)."""
        return self.address + self.count - 1


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """The requests of one poll, in table order (holding, input, coil, discrete), then address."""

    requests: tuple[ReadRequest, ...]

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[ReadRequest]:
        return iter(self.requests)


def _touches(first: int, last: int, forbidden: Sequence[tuple[int, int]]) -> bool:
    return any(f_first <= last and first <= f_last for f_first, f_last in forbidden)


@dataclass(slots=True)
class _Open:
    """The request being built: its span and its members."""

    first: int
    last: int
    members: list[tuple[int, int]]  # (point index, point address)
    own_spans: set[tuple[int, int]]  # spans of single members, for the forbidden exemption

    def close(self, table: Table) -> ReadRequest:
        members = sorted(self.members, key=lambda m: (m[1], m[0]))
        return ReadRequest(
            table=table,
            address=self.first,
            count=self.last - self.first + 1,
            points=tuple((index, address - self.first) for index, address in members),
        )


def _plan_table(
    table: Table,
    points: Sequence[tuple[int, ModbusPoint]],
    limit: int,
    max_gap: int,
    forbidden: Sequence[tuple[int, int]],
) -> list[ReadRequest]:
    ordered = sorted(points, key=lambda ip: (ip[1].address, ip[1].address + ip[1].width, ip[0]))
    requests: list[ReadRequest] = []
    current: _Open | None = None
    for index, point in ordered:
        first, last = point.address, point.address + point.width - 1
        if current is not None:
            merged_last = max(current.last, last)
            span = (current.first, merged_last)
            fits = merged_last - current.first + 1 <= limit
            gap_ok = first - current.last - 1 <= max_gap
            # A forbidden address is read only as part of a span one point asked for whole.
            exempt = span in current.own_spans or span == (first, last)
            allowed = exempt or not _touches(*span, forbidden)
            if fits and gap_ok and allowed:
                current.last = merged_last
                current.members.append((index, first))
                current.own_spans.add((first, last))
                continue
            requests.append(current.close(table))
        current = _Open(first, last, [(index, first)], {(first, last)})
    if current is not None:
        requests.append(current.close(table))
    return requests


def plan_reads(
    points: Sequence[ModbusPoint],
    *,
    max_registers: int,
    max_bits: int,
    max_gap: int,
    forbidden: Sequence[tuple[int, int]],
) -> ReadPlan:
    """The fewest requests that read every point within the device's limits.

    ``forbidden`` holds inclusive ``(first, last)`` address ranges never to read across; they
    apply to every table.
    """
    if max_registers < 1 or max_bits < 1 or max_gap < 0:
        raise ValueError(
            "request limits must be positive and max_gap not negative: "
            f"got max_registers={max_registers}, max_bits={max_bits}, max_gap={max_gap}"
        )
    by_table: dict[Table, list[tuple[int, ModbusPoint]]] = {t: [] for t in _TABLE_ORDER}
    for index, point in enumerate(points):
        limit = max_bits if point.table in BIT_TABLES else max_registers
        if point.width > limit:
            raise ValueError(
                f"point {point.name!r} takes {point.width} registers but a request may read "
                f"only {limit}: raise the device's request limit"
            )
        by_table[point.table].append((index, point))
    requests: list[ReadRequest] = []
    for table in _TABLE_ORDER:
        limit = max_bits if table in BIT_TABLES else max_registers
        requests.extend(_plan_table(table, by_table[table], limit, max_gap, forbidden))
    return ReadPlan(tuple(requests))


def gap_ranges(request: ReadRequest, points: Sequence[ModbusPoint]) -> list[tuple[int, int]]:
    """Addresses a request reads that belong to none of its points, as inclusive ranges."""
    covered = [False] * request.count
    for index, offset in request.points:
        for i in range(offset, offset + points[index].width):
            covered[i] = True
    gaps: list[tuple[int, int]] = []
    start: int | None = None
    for i, is_covered in enumerate(covered):
        if not is_covered and start is None:
            start = i
        elif is_covered and start is not None:
            gaps.append((request.address + start, request.address + i - 1))
            start = None
    if start is not None:
        gaps.append((request.address + start, request.last))
    return gaps


def _part(table: Table, members: Sequence[tuple[int, int, int]]) -> ReadRequest:
    """A request exactly covering ``members`` (point index, absolute first, absolute last)."""
    first = min(m[1] for m in members)
    last = max(m[2] for m in members)
    ordered = sorted(members, key=lambda m: (m[1], m[0]))
    return ReadRequest(
        table=table,
        address=first,
        count=last - first + 1,
        points=tuple((index, start - first) for index, start, _ in ordered),
    )


def _clusters(
    members: Sequence[tuple[int, int, int]], *, join_adjacent: bool
) -> list[list[tuple[int, int, int]]]:
    """Members grouped into runs that overlap (or, with ``join_adjacent``, also touch)."""
    reach = 1 if join_adjacent else 0
    groups: list[list[tuple[int, int, int]]] = []
    group_last = -2
    for member in sorted(members, key=lambda m: (m[1], m[2], m[0])):
        if groups and member[1] <= group_last + reach:
            groups[-1].append(member)
            group_last = max(group_last, member[2])
        else:
            groups.append([member])
            group_last = member[2]
    return groups


def split_request(request: ReadRequest, points: Sequence[ModbusPoint]) -> tuple[ReadRequest, ...]:
    """Smaller requests that together read the same points, for a request the device refused.

    A request with gaps is cut into its gap-free runs; a gap-free run of several points into
    one request per point (points that share registers stay together); a request that cannot
    be cut any further comes back unchanged, as ``(request,)``.
    """
    members: list[tuple[int, int, int]] = []
    for index, offset in request.points:
        if not 0 <= index < len(points):
            raise ValueError(
                f"request at {request.address} names point #{index}, but the device has "
                f"{len(points)} points: split with the point list the request was planned from"
            )
        width = points[index].width
        if offset < 0 or offset + width > request.count:
            raise ValueError(
                f"point {points[index].name!r} (offset {offset}, {width} registers) lies outside "
                f"the request {request.address}+{request.count}: the request does not belong "
                "to these points"
            )
        first = request.address + offset
        members.append((index, first, first + width - 1))
    if not members:
        return (request,)
    parts = tuple(_part(request.table, run) for run in _clusters(members, join_adjacent=True))
    if len(parts) == 1 and (parts[0].address, parts[0].count) == (request.address, request.count):
        # No gap to cut at: one request per point (or per group sharing registers).
        parts = tuple(_part(request.table, c) for c in _clusters(members, join_adjacent=False))
        if len(parts) == 1:
            return (request,)
    return parts
