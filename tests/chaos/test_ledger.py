"""The chaos ledger's own rules, on synthetic request logs and stored rows (no processes).

One meter polled every 100 ms from ``T0``; a poll is two read requests, as ``ssc-demo-meter``'s.
Each case names the polls by the time of their requests after a slot and the rows the receiver
stored, and says what the ledger must find. The cases where a request falls more than
``interval − EARLY`` after the slot it is stamped with are the ones a ledger that maps each
request to the slot it falls in gets wrong.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest

from agent.profiles import load_profile
from drivers.modbus.driver import ModbusDriver
from tests.chaos.harness import (
    PROFILE,
    REQUESTS_PER_POLL,
    Key,
    Ledger,
    Polled,
    group_polls,
    polls_of,
)
from tests.drivers.modbus.test_driver import device

INTERVAL_MS = 100
T0 = 1_796_600_000_000  # epoch ms, on the grid
SINCE = (T0 - 50) / 1000  # the meters started 50 ms before the first slot
POINTS = ("energy", "power")


def slot(k: int) -> int:
    """Slot ``k`` of the grid (epoch ms)."""
    return T0 + k * INTERVAL_MS


def poll(k: int, after_ms: float, spread_ms: float = 3.0) -> list[float]:
    """The two requests (epoch s) of a poll whose first request came ``after_ms`` after slot k."""
    first = slot(k) + after_ms
    return [first / 1000, (first + spread_ms) / 1000]


def on_time(slots: Sequence[int]) -> list[float]:
    """Polls 5 ms after each of ``slots``."""
    return [r for k in slots for r in poll(k, 5)]


def stored(slots: Sequence[int], *, extra: Sequence[int] = ()) -> Counter[Key]:
    """Rows of every point at each of the slots ``slots`` and ``extra`` (a slot twice: twice)."""
    rows: Counter[Key] = Counter()
    for k in [*slots, *extra]:
        for point in POINTS:
            rows[("m", point, slot(k))] += 1
    return rows


def ledger(requests: list[float], received: Counter[Key], *, kills: Sequence[float] = (),
           flush_interval: float = 1.0) -> Ledger:
    polls = polls_of("m", POINTS, requests, INTERVAL_MS, since=SINCE, restarts=kills)
    return Ledger.of(Polled(tuple(polls)), received, kills=kills, flush_interval=flush_interval)


def times(keys: set[Key] | list[Key]) -> set[int]:
    """The slots of ``keys`` as grid indices."""
    return {(t - T0) // INTERVAL_MS for _, _, t in keys}


def test_every_poll_stored_once_in_its_slot_is_exact() -> None:
    result = ledger(on_time(range(10)), stored(range(10)))
    result.assert_exact()
    assert not result.lost and not result.phantom and not result.duplicates


@pytest.mark.parametrize("after_ms", [
    pytest.param(95, id="late-within-the-slot"),
    pytest.param(99.5, id="late-a-hair-before-the-next-slot"),
    pytest.param(110, id="first-request-after-the-next-slot-began"),
    pytest.param(170, id="woke-late-and-its-request-was-slow"),
])
def test_a_late_poll_keeps_its_scheduled_slot(after_ms: float) -> None:
    """Poll 3 woke late (less than an interval: it keeps slot 3) and its requests reached the
    meter late. The next poll is slot 4's if poll 3 ended before slot 4 began, else slot 5's
    (slot 4 skipped as an overrun)."""
    spilled = after_ms + 3 >= INTERVAL_MS
    following = range(5, 10) if spilled else range(4, 10)
    requests = [*on_time(range(3)), *poll(3, after_ms), *on_time(following)]
    result = ledger(requests, stored([*range(4), *following]))
    result.assert_exact()
    assert not result.lost, result.summary()


def test_a_late_poll_whose_second_request_crosses_into_the_next_slot() -> None:
    requests = [*on_time(range(3)), *poll(3, 90, spread_ms=15), *on_time(range(5, 10))]
    result = ledger(requests, stored([*range(4), *range(5, 10)]))
    result.assert_exact()


def test_the_first_poll_after_a_restart_may_connect_for_longer_than_an_interval() -> None:
    """Killed at slot 5.5 (the poll of slot 5 lost in the kill's window), started again: the
    first poll woke at slot 20 and reached the meter 350 ms later (connecting), so the next
    slot was 24."""
    killed_at = (slot(5) + 50) / 1000
    requests = [*on_time(range(6)), *poll(20, 350), *on_time(range(24, 28))]
    result = ledger(requests, stored([*range(5), 20, *range(24, 28)]), kills=[killed_at],
                    flush_interval=0.1)
    result.assert_exact()
    assert times(result.lost) == {5}


def test_a_poll_cut_by_a_kill_is_lost_in_its_window_even_if_a_request_came_after() -> None:
    """The agent was killed 5 ms into slot 12's poll; the meter saw its second request 5 ms
    after the kill. Started again, it polls from slot 30 (its first poll connecting)."""
    killed_at = (slot(12) + 5) / 1000
    requests = [*on_time(range(12)), *poll(12, 3, spread_ms=7), *poll(30, 150),
                *on_time(range(32, 36))]
    result = ledger(requests, stored([*range(10), 30, *range(32, 36)]), kills=[killed_at],
                    flush_interval=0.02)
    result.assert_exact()
    assert times(result.lost) == {10, 11, 12}


def test_a_poll_that_was_not_stored_is_lost() -> None:
    result = ledger(on_time(range(10)), stored([k for k in range(10) if k != 6]))
    assert times(result.unexplained) == {6}
    assert not result.phantom
    with pytest.raises(AssertionError, match="unexplained 2"):
        result.assert_exact()


def test_a_stored_slot_no_poll_made_is_phantom() -> None:
    result = ledger(on_time([*range(5), *range(8, 12)]), stored([*range(5), *range(8, 12)],
                                                               extra=[6]))
    assert times(result.phantom) == {6}
    assert not result.lost
    with pytest.raises(AssertionError, match="phantom=2"):
        result.assert_exact()


def test_a_reading_stamped_two_slots_early_is_lost_and_stored_twice() -> None:
    """Poll 6's readings carry slot 4: slot 6 is lost and slot 4 is stored twice."""
    result = ledger(on_time(range(10)), stored([k for k in range(10) if k != 6], extra=[4]))
    assert times(result.unexplained) == {6}
    assert times(result.duplicates) == {4}
    assert not result.phantom


def test_a_reading_stamped_before_the_meters_started_is_phantom_and_lost() -> None:
    """The meters up since slot 1.5, the first poll (slot 2) stored as slot 0."""
    requests = on_time(range(2, 10))
    polls = polls_of("m", POINTS, requests, INTERVAL_MS, since=(slot(1) + 50) / 1000)
    result = Ledger.of(Polled(tuple(polls)), stored([0, *range(3, 10)]))
    assert times(result.phantom) == {0}
    assert times(result.unexplained) == {2}


def test_two_polls_cannot_share_one_slot() -> None:
    """Poll 3 ran late, poll 4 right after it: both requests fell in slot 4. Only slot 4 was
    stored: one of the two polls is lost, though every request falls in a stored slot."""
    requests = [*on_time(range(3)), *poll(3, 95), *poll(4, 5), *on_time(range(5, 10))]
    result = ledger(requests, stored([k for k in range(10) if k != 3]))
    assert len(result.unexplained) == len(POINTS), result.summary()
    assert not result.phantom


def test_a_slot_stored_twice_is_a_duplicate() -> None:
    result = ledger(on_time(range(10)), stored(range(10), extra=[7]))
    assert result.duplicates == sorted(("m", p, slot(7)) for p in POINTS)
    assert not result.lost and not result.phantom
    with pytest.raises(AssertionError, match="duplicates=2"):
        result.assert_exact()


def test_only_the_readings_of_a_kill_window_may_be_missing() -> None:
    """Killed at 8.5 s with flush_interval 1 s: polls of slots in (7.25 s, 8.5 s] may be lost,
    as the module docstring says; slot 3 s may not. Started again, it polls from 10 s."""
    killed_at = slot(85) / 1000
    requests = [*on_time(range(85)), *on_time(range(100, 110))]
    missing = {30, *range(70, 85)}
    result = ledger(requests, stored([k for k in [*range(85), *range(100, 110)]
                                      if k not in missing]), kills=[killed_at])
    assert times(result.lost) == missing
    assert times(result.unexplained) == {30, 70, 71, 72}


def test_a_point_missing_from_a_stored_poll_is_lost_and_an_unknown_point_is_phantom() -> None:
    received = stored(range(5))
    del received[("m", "power", slot(2))]
    received[("m", "voltage", slot(3))] = 1
    result = ledger(on_time(range(5)), received)
    assert result.unexplained == {("m", "power", slot(2))}
    assert result.phantom == {("m", "voltage", slot(3))}


def test_requests_group_into_polls_of_their_count_and_split_at_a_restart() -> None:
    cut_short = poll(3, 5)[:1]  # the agent was killed between the two requests
    requests = [*on_time(range(3)), *cut_short, *poll(20, 300), *poll(21, 5)]
    polls = group_polls(requests, INTERVAL_MS, restarts=[(slot(3) + 50) / 1000])
    assert [len(p) for p in polls] == [2, 2, 2, 1, 2, 2]
    # a late poll followed at once by the next: still two polls
    assert len(group_polls([*poll(3, 97), *poll(4, 1)], INTERVAL_MS)) == 2


def test_the_demo_meter_poll_is_two_requests() -> None:
    driver = ModbusDriver(device(1502, load_profile(PROFILE)))
    assert driver.requests_per_cycle == REQUESTS_PER_POLL
