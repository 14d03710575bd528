"""KPI window boundaries in the site's IANA zone (docs/kpis.md §3.1), DST-correct.

A local day is cut into *segments* of constant UTC offset; inside a segment the wall clock
runs with UTC, so fixed-length boundaries are plain arithmetic. Segments are found once per
local day and cached, so the engine does no datetime work per reading.

All public methods take and return epoch milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from agent.units import KpiDuration

__all__ = ["Calendar", "clock_seconds", "to_epoch_ms"]

_DAY = 86400
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# Offsets are sampled this often to find transitions; no zone changes twice within it.
_SAMPLE_SECONDS = 900
_COUNT_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class _Day:
    """One local date: ``[start, end)`` in epoch seconds, cut into constant-offset segments."""

    start: int  # the local midnight, epoch seconds
    end: int  # the next local midnight
    segments: tuple[tuple[int, int, int], ...]  # (from, to, utc offset), epoch seconds


def clock_seconds(value: time) -> int:
    """Seconds since local midnight of a wall time."""
    return value.hour * 3600 + value.minute * 60 + value.second


class Calendar:
    """Window boundaries, wall times and period lengths in one time zone."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._days: dict[int, _Day] = {}
        self._segment: tuple[int, int, int] = (0, 0, 0)
        self._counts: dict[tuple[KpiDuration, int, int], int] = {}

    # ----------------------------------------------------------------------------------------
    # offsets and local days

    def _zone_offset(self, t_s: int) -> int:
        offset = datetime.fromtimestamp(t_s, self.tz).utcoffset()
        assert offset is not None  # a ZoneInfo always has one
        return int(offset.total_seconds())

    def offset_at(self, t_s: int) -> int:
        """UTC offset in seconds at epoch second ``t_s``."""
        start, end, offset = self._segment
        if start <= t_s < end:
            return offset
        offset = self._zone_offset(t_s)
        day = self._day((t_s + offset) // _DAY + _EPOCH_ORDINAL)
        for segment in day.segments:
            if segment[0] <= t_s < segment[1]:
                self._segment = segment
                return segment[2]
        return offset  # an instant outside its own date's span (a zone jumping across midnight)

    def _day_start(self, ordinal: int) -> int:
        """First epoch second whose local date is ``ordinal`` (or later)."""
        day = date.fromordinal(ordinal)
        midnight = datetime(day.year, day.month, day.day)
        first = int(midnight.replace(tzinfo=self.tz, fold=0).timestamp())
        if datetime.fromtimestamp(first, self.tz).replace(tzinfo=None) == midnight:
            return first  # fold=0 is the earlier of a repeated midnight
        # Midnight falls in a gap: the date starts at the transition, between the two readings.
        other = int(midnight.replace(tzinfo=self.tz, fold=1).timestamp())
        low, high = min(first, other), max(first, other)
        while high - low > 1:
            mid = (low + high) // 2
            if datetime.fromtimestamp(mid, self.tz).date() >= day:
                high = mid
            else:
                low = mid
        return high

    def _day(self, ordinal: int) -> _Day:
        cached = self._days.get(ordinal)
        if cached is not None:
            return cached
        start, end = self._day_start(ordinal), self._day_start(ordinal + 1)
        points = [*range(start, end, _SAMPLE_SECONDS), end - 1]
        offsets = [self._zone_offset(point) for point in points]
        segments: list[tuple[int, int, int]] = []
        begin = start
        for i in range(len(points) - 1):
            if offsets[i] == offsets[i + 1]:
                continue
            low, high = points[i], points[i + 1]
            while high - low > 1:
                mid = (low + high) // 2
                if self._zone_offset(mid) == offsets[i]:
                    low = mid
                else:
                    high = mid
            segments.append((begin, high, offsets[i]))
            begin = high
        segments.append((begin, end, offsets[-1]))
        day = _Day(start, end, tuple(segments))
        self._days[ordinal] = day
        return day

    def _day_of(self, t_s: int) -> tuple[int, _Day]:
        ordinal = (t_s + self.offset_at(t_s)) // _DAY + _EPOCH_ORDINAL
        day = self._day(ordinal)
        while t_s < day.start:
            ordinal -= 1
            day = self._day(ordinal)
        while t_s >= day.end:
            ordinal += 1
            day = self._day(ordinal)
        return ordinal, day

    # ----------------------------------------------------------------------------------------
    # windows

    def window_at(self, duration: KpiDuration, t_ms: int) -> tuple[int, int]:
        """The window ``[start, end)`` of ``duration`` that holds instant ``t_ms``."""
        t_s = t_ms // 1000
        ordinal, day = self._day_of(t_s)
        if duration.unit == "d":
            return day.start * 1000, day.end * 1000
        if duration.unit in ("mo", "y"):
            local = date.fromordinal(ordinal)
            if duration.unit == "mo":
                first = local.replace(day=1)
                after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
            else:
                first, after = date(local.year, 1, 1), date(local.year + 1, 1, 1)
            start = self._day(first.toordinal()).start
            end = self._day(after.toordinal()).start
            if t_s < start:  # only in zones whose clock jumps back across midnight
                return self.window_at(duration, start * 1000 - 1)
            return start * 1000, end * 1000
        return self._fixed_window(duration.seconds, t_s, day)

    @staticmethod
    def _fixed_window(length: int, t_s: int, day: _Day) -> tuple[int, int]:
        # Boundaries: the day start, and in each segment every instant whose wall time of
        # day is a multiple of length (length divides 24 h, so wall seconds mod length).
        start, end = day.start, day.end
        for seg_from, seg_to, offset in day.segments:
            if seg_from > t_s:
                first = seg_from + (-(seg_from + offset)) % length
                if first < seg_to:
                    end = min(end, first)
                    break
                continue
            if seg_to <= t_s:
                last = seg_to - 1 - (seg_to - 1 + offset) % length
                if last >= seg_from:
                    start = max(start, last)
                continue
            last = t_s - (t_s + offset) % length
            if last >= seg_from:
                start = max(start, last)
            following = last + length
            if following < seg_to:
                end = following
                break
        return start * 1000, end * 1000

    def next_window(self, duration: KpiDuration, end_ms: int) -> tuple[int, int]:
        """The window that starts at ``end_ms`` (the end of the one before)."""
        return self.window_at(duration, end_ms)

    def windows(
        self, duration: KpiDuration, start_ms: int, end_ms: int
    ) -> Iterator[tuple[int, int]]:
        """The windows of ``duration`` from the one holding ``start_ms`` until ``end_ms``."""
        window = self.window_at(duration, start_ms)
        while window[0] < end_ms:
            yield window
            window = self.window_at(duration, window[1])

    def count(self, duration: KpiDuration, start_ms: int, end_ms: int) -> int:
        """How many windows of ``duration`` start in ``[start_ms, end_ms)`` (it nests there)."""
        key = (duration, start_ms, end_ms)
        cached = self._counts.get(key)
        if cached is None:
            cached = sum(1 for _ in self.windows(duration, start_ms, end_ms))
            if len(self._counts) >= _COUNT_CACHE_LIMIT:
                self._counts.clear()
            self._counts[key] = cached
        return cached

    # ----------------------------------------------------------------------------------------
    # wall time

    def wall_seconds(self, t_ms: int) -> int:
        """Seconds since local midnight that the wall clock shows at ``t_ms`` (floored)."""
        t_s = t_ms // 1000
        return (t_s + self.offset_at(t_s)) % _DAY

    def clock_span_seconds(self, start_ms: int, end_ms: int, low: int, high: int) -> int:
        """Real seconds in ``[start_ms, end_ms)`` whose wall time of day lies in ``[low, high)``."""
        if high <= low:
            return 0
        t_s, stop = start_ms // 1000, end_ms // 1000
        total = 0
        while t_s < stop:
            _, day = self._day_of(t_s)
            for seg_from, seg_to, offset in day.segments:
                a, b = max(seg_from, t_s), min(seg_to, stop)
                if a < b:
                    total += _wall_measure(b + offset, low, high) - _wall_measure(
                        a + offset, low, high
                    )
            t_s = day.end
        return total

    def isoformat(self, t_ms: int) -> str:
        """``t_ms`` in the zone as ``datetime.isoformat()`` prints it."""
        local = datetime.fromtimestamp(t_ms // 1000, self.tz)
        if t_ms % 1000:
            local = local.replace(microsecond=(t_ms % 1000) * 1000)
        return local.isoformat()

    def local(self, t_ms: int) -> datetime:
        """``t_ms`` as an aware local datetime."""
        return datetime.fromtimestamp(t_ms // 1000, self.tz) + timedelta(milliseconds=t_ms % 1000)


def _wall_measure(local_s: int, low: int, high: int) -> int:
    """Seconds in local time ``[0, local_s)`` whose time of day lies in ``[low, high)``."""
    days, rest = divmod(local_s, _DAY)
    return days * (high - low) + min(max(rest - low, 0), high - low)


def to_epoch_ms(moment: datetime) -> int:
    """An aware datetime as epoch milliseconds, exactly (floored below a millisecond)."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
