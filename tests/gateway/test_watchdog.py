"""The watchdog's decision (pure, clock injected), the STATUS line, and the sd_notify datagrams
on a real AF_UNIX socket bound by the test."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.gateway.watchdog import Progress, ProgressGate, ServiceWatch, status_line
from agent.sdnotify import MAX_STATUS_CHARS, Notifier, socket_address, status_text, watchdog_seconds

PERIOD = 30.0


def _looks(gate: ProgressGate, looks: list[tuple[float, dict[str, int]]],
           quiet: dict[str, float]) -> list[list[str]]:
    """The gate's verdict at each (time, {component: count}) look."""
    return [gate.stalled(now, [Progress(name, name, count, quiet.get(name, 0.0))
                               for name, count in counts.items()])
            for now, counts in looks]


# (what, looks, quiet_allowed per component, verdicts expected)
CASES = [
    ("moving components are never stalled",
     [(0, {"a": 0, "b": 0}), (15, {"a": 1, "b": 5}), (30, {"a": 2, "b": 9}),
      (45, {"a": 3, "b": 12})], {}, [[], [], [], []]),
    ("first seen counts as just moved, even at a count that never changes",
     [(100, {"a": 7}), (115, {"a": 7}), (130, {"a": 7})], {}, [[], [], []]),
    ("still for longer than a period: stalled, until it moves again",
     [(0, {"a": 0}), (15, {"a": 1}), (30, {"a": 1}), (45, {"a": 1}), (46, {"a": 1}),
      (60, {"a": 2}), (75, {"a": 2})], {}, [[], [], [], [], ["a"], [], []]),
    ("exactly a period still is not yet stalled",
     [(0, {"a": 0}), (30, {"a": 0}), (30.5, {"a": 0})], {}, [[], [], ["a"]]),
    ("a slow component may stay still for its own allowance (a 15 min poll interval)",
     [(0, {"slow": 0}), (600, {"slow": 0}), (950, {"slow": 0}), (951, {"slow": 0})],
     {"slow": 950.0}, [[], [], [], ["slow"]]),
    ("one stalled component among moving ones is named alone, in order",
     [(0, {"a": 0, "b": 0, "c": 0}), (31, {"a": 1, "b": 0, "c": 0}),
      (40, {"a": 2, "b": 0, "c": 1})], {}, [[], ["b", "c"], ["b"]]),
    ("a component gone (reload) is forgotten; one come back starts afresh",
     [(0, {"a": 0, "b": 0}), (20, {"a": 1}), (60, {"a": 2, "b": 0}), (80, {"a": 3, "b": 0}),
      (91, {"a": 4, "b": 0})], {}, [[], [], [], [], ["b"]]),
]


@pytest.mark.parametrize(("looks", "quiet", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_gate_names_what_stood_still_too_long(
        looks: list[tuple[float, dict[str, int]]], quiet: dict[str, float],
        expected: list[list[str]]) -> None:
    assert _looks(ProgressGate(PERIOD), looks, quiet) == expected


def test_a_replaced_component_under_the_same_name_is_a_new_one() -> None:
    gate = ProgressGate(PERIOD)
    old, new = object(), object()
    assert gate.stalled(0, [Progress(old, "poller m1", 5, 0)]) == []
    assert gate.stalled(25, [Progress(old, "poller m1", 5, 0)]) == []
    # a reload replaced the poller: its counter starts again, it has not stalled
    assert gate.stalled(40, [Progress(new, "poller m1", 5, 0)]) == []
    assert gate.stalled(71, [Progress(new, "poller m1", 5, 0)]) == ["poller m1"]


@pytest.mark.parametrize(("value", "address"), [
    (None, None), ("", None), ("/run/systemd/notify", "/run/systemd/notify"),
    ("@ssc/notify", "\0ssc/notify"), ("relative/path", None), ("vsock:2:1234", None)])
def test_notify_socket_addresses(value: str | None, address: str | None) -> None:
    assert socket_address(value) == address


@pytest.mark.parametrize(("env", "seconds"), [
    ({}, None), ({"WATCHDOG_USEC": "30000000"}, 30.0), ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "x"}, None), ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}, 2.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4243"}, None),  # another process's
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": ""}, 2.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "self"}, None)])
def test_the_watchdog_period_is_for_this_process_only(env: dict[str, str],
                                                      seconds: float | None) -> None:
    assert watchdog_seconds(env, 4242) == seconds


def test_status_lines() -> None:
    assert status_line(up=3, devices=4, connected=True, backlog_batches=12,
                       backlog_readings=3400) == (
        "3/4 devices up, uplink connected, backlog 12 batches (3400 readings)")
    assert status_line(up=0, devices=1, connected=False, backlog_batches=0, backlog_readings=0,
                       stalled=["poller m1", "batcher"]) == (
        "0/1 devices up, uplink down, backlog 0 batches (0 readings); "
        "watchdog withheld: poller m1, batcher stalled")
    assert status_text("a\nb  c") == "a b c"
    long = status_text("x" * 500)
    assert len(long) == MAX_STATUS_CHARS and long.endswith("…")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the role of systemd's notify socket (abstract name)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"@ssc-test-{os.getpid()}-{tmp_path.name}"
    sock.bind("\0" + name[1:])
    sock.settimeout(5)
    yield sock, name
    sock.close()


def _received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_the_notifier_sends_one_datagram_per_call(listener: tuple[socket.socket, str],
                                                  tmp_path: Path) -> None:
    sock, name = listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": name})
    assert notifier.enabled
    assert notifier.ready("1/1 devices up")
    assert _received(sock) == ["READY=1", "STATUS=1/1 devices up"]
    assert notifier.stopping()
    assert _received(sock)[0] == "STOPPING=1"
    assert notifier.reloading()
    reloading = _received(sock)
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    notifier.close()
    # a file system socket works the same
    path_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path_sock.bind(str(tmp_path / "notify"))
    path_sock.settimeout(5)
    by_path = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    assert by_path.send("WATCHDOG=1")
    assert _received(path_sock) == ["WATCHDOG=1"]
    path_sock.close()
    # nobody listening any more: the send fails, quietly for the caller
    assert not by_path.send("WATCHDOG=1")
    by_path.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    watch = ServiceWatch(notifier, watchdog=30.0)
    assert watch.watchdog is None  # no one to ping
    assert not watch.look([])


def test_the_watch_pings_only_while_everything_moves(
        listener: tuple[socket.socket, str]) -> None:
    sock, name = listener
    now = [0.0]
    watch = ServiceWatch(Notifier.from_environment({"NOTIFY_SOCKET": name}), watchdog=2.0,
                         monotonic=lambda: now[0])
    flush = object()
    poll = object()

    def look(at: float, polls: int, rounds: int) -> bool:
        now[0] = at
        return watch.look([Progress(poll, "poller m1", polls, 1.5),
                           Progress(flush, "batcher", rounds, 1.0)])

    assert look(0, 0, 0)
    assert _received(sock) == ["WATCHDOG=1", "STATUS=starting"]  # STATUS: only when it changes
    assert look(1, 1, 1) and _received(sock) == ["WATCHDOG=1"]
    assert look(2, 2, 2) and _received(sock) == ["WATCHDOG=1"]
    # the flush loop stops: pings go on for one period, then stop
    assert look(3, 3, 2) and _received(sock) == ["WATCHDOG=1"]
    assert look(4, 4, 2) and _received(sock) == ["WATCHDOG=1"]
    assert not look(4.5, 5, 2)  # nothing to send: no ping, STATUS unchanged (no runtime)
    assert not look(6, 6, 2)
    # it runs again: pings again
    assert look(7, 7, 3) and _received(sock) == ["WATCHDOG=1"]
    # at shutdown the pollers stop first: no verdict, no ping, no watchdog_withheld
    watch.stopping()
    assert _received(sock)[0] == "STOPPING=1"
    assert not look(20, 7, 3)
