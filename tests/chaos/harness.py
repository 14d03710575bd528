"""The chaos harness: the agent as a real process, real outages, exact accounting.

Parts, all real:

- :class:`MeterFleet`: simulated ``ssc-demo-meter`` devices (``drivers.modbus.simulator.serve``),
  one pymodbus TCP server per device on a free 127.0.0.1 port, run by an event loop in a thread of
  their own so the test can block (sleep, wait for processes) without stalling a meter. Every
  request a server receives is logged with its wall-clock time through pymodbus' ``trace_pdu`` hook.
- :class:`AgentProcess`: ``python -m agent.cli --log-json run --config FILE`` as a subprocess,
  JSON log lines appended to one file over all its runs; SIGKILL and SIGTERM are timed by the
  test.
- :class:`ReceiverProcess`: ``python -m agent.cli receive`` as a subprocess with a persistent
  session client id, writing the platform's SQLite sink. As a separate process it rides out
  broker restarts exactly as it would in production.
- The broker is a real mosquitto (``tests.conftest``); chaos tests that restart it give it
  persistence (:data:`PERSISTENT_BROKER`), as a platform broker has (``deploy/``), so the
  receiver's persistent session survives the restart; the receiver fixture waits for the
  broker's first save after the subscription. Without persistence a restarted broker forgets
  the subscription and drops whatever the agent resends before the receiver is back: a loss
  of the platform's broker, not of the agent. One residual race no agent can close: a
  broker SIGKILLed in the sub-millisecond between its PUBACK to the agent and its delivery to
  the (connected) receiver loses that message.

Ground truth, and why it is exact. The agent stamps every reading with its poll's slot
(``t = k × interval``, epoch-aligned), by the scheduler's rule: a poll that wakes less than an
interval after its slot keeps that slot; one that wakes a whole interval late or more is
stamped with the slot it is taken in (the slots between are skipped); the slot after a poll is
the first one after the poll ended. One poll of a device is one burst of Modbus read requests
after it wakes (two for ``ssc-demo-meter``; the harness's devices resend nothing), so the
meters' request logs give the polls
(:func:`group_polls`: a poll is its device's requests up to its full count, cut short by an
interval without one or by an agent's restart; a request in the slot its predecessor ended in
always belongs to the same poll). A poll whose first request reached the meter at ``r`` may be
stamped with any slot ``s`` the rule allows (:func:`polls_of`):

- ``s ≤ r + EARLY``: it is never stamped after it polled; ``EARLY`` (20 ms) absorbs a poll
  that fires a hair before its slot (the agent sleeps on the monotonic clock towards a
  wall-clock slot);
- ``s > r_prev − EARLY``, ``r_prev`` the last request of the device's previous poll: its slot
  came after the previous poll ended;
- ``s > r − 2 × interval + EARLY`` (one slot before the one ``r`` falls in, at most) when it
  polled on an open connection: it woke less than an interval after its slot, and its first
  request reached the meter less than an interval after it woke. The first poll after an
  agent's restart (a SIGKILL the test names) or after a pause of two intervals or more (a
  restart or reconnect the test does not name) connects first, which takes what it takes:
  only the two bounds above hold for it (for the very first poll: ``s`` after the meters
  started). A SIGKILL also ends the poll it cut short; a request of the killed agent may
  reach the meter just after the kill, and counts as a poll of its own.

Under load a poll may start, or its requests arrive, more than ``interval − EARLY`` after its
slot and still carry that slot, so a request is not simply mapped to the slot it falls in. The
expected side is every poll, each with its allowed slots and every point of the profile, over
every run of the agent: slots the scheduler skipped were never polled, so they are not
expected; a poll the agent made but lost is. The received side is every ``(dev, pt, t)`` row
the receiver stored. The :class:`Ledger` assigns a device's polls to its received slots as a
largest matching (each poll at most one allowed slot, each slot at most one poll,
:func:`match_polls`): a poll with none of its slots is lost (named by the slot its first
request fell in), a stored slot no poll can claim is phantom, a point a matched poll lacks is
lost and one it does not read is phantom, and a key stored more than once is a duplicate. A
reading stamped earlier than the rule allows, or two polls with one slot between them, still
show as lost and phantom (or duplicate).

A SIGKILL may lose what was polled but not yet committed: with ``flush_interval`` F, a reading
emitted at ``e`` is committed by ``e + F`` plus the time a flush takes; it was emitted ``latency``
after its slot. So for a kill at ``K`` the only keys that may be missing are those with
``K − F − POLL_SLACK < t ≤ K`` (``POLL_SLACK`` = 0.25 s covers poll latency and flush time);
anything missing outside such a window is a loss. A clean stop (SIGTERM) is sent at a quiet
point between polls (:func:`sleep_to_quiet_point`), so no poll is cut short and nothing at all
may be missing.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from agent.platform.sink import SqliteSink
from agent.profiles import load_profile
from agent.wire import Status, decode_status
from drivers.modbus.simulator import SimulatorServer, serve
from tests.conftest import free_port
from tests.waiting import Waited, wait_until

if TYPE_CHECKING:
    from pymodbus.pdu import ModbusPDU

ROOT = Path(__file__).resolve().parents[2]
PROFILE = "ssc-demo-meter"
EARLY_S = 0.020
REQUESTS_PER_POLL = 2  # ssc-demo-meter: two read blocks (tests/chaos/test_ledger.py checks it)
POLL_SLACK_S = 0.25
READ_FUNCTION_CODES = frozenset({1, 2, 3, 4})
PERSISTENT_BROKER = "persistence true\npersistence_location {dir}/\nautosave_interval 1\n"

Key = tuple[str, str, int]
"""(device, point, slot time in epoch ms)."""

T = TypeVar("T")


def persistent_broker_config(directory: Path) -> str:
    """Extra mosquitto lines: keep sessions and queues on disk (saved every second)."""
    directory.mkdir(parents=True, exist_ok=True)
    return PERSISTENT_BROKER.format(dir=directory)


def sleep_to_quiet_point(grid: float) -> float:
    """Sleep until the middle of the next ``grid`` step (no poll is running then); returns now.

    Every device interval of a test must be a multiple of ``grid``.
    """
    now = time.time()
    target = (math.floor(now / grid) + 0.5) * grid
    if target - now < 0.01:
        target += grid
    time.sleep(target - now)
    return time.time()


def slot_ms(request_time: float, interval_ms: int) -> int:
    """The slot (epoch ms) a poll request seen at ``request_time`` (epoch s) belongs to."""
    return (math.floor((request_time * 1000 + EARLY_S * 1000) / interval_ms)) * interval_ms


# ---------------------------------------------------------------------------------- meters


def request_recorder(requests: list[float]) -> Callable[[bool, ModbusPDU], ModbusPDU]:
    """A simulator's ``trace_pdu`` hook appending the wall time of every read request."""

    def trace(sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending and pdu.function_code in READ_FUNCTION_CODES:
            requests.append(time.time())  # list.append is atomic under the GIL
        return pdu

    return trace


def polled_slots(requests: Iterable[float], interval_ms: int) -> set[int]:
    """The slots (epoch ms) in which the read requests at ``requests`` were made."""
    return {slot_ms(r, interval_ms) for r in requests}


@dataclass(frozen=True)
class Device:
    """One simulated meter as the agent's config names it."""

    name: str
    port: int
    interval_ms: int

    @property
    def interval(self) -> str:
        """The config's duration string."""
        return f"{self.interval_ms} ms"


class MeterFleet:
    """Simulated meters in a background event loop; logs every read request per device."""

    def __init__(self, intervals_ms: Sequence[int], *, prefix: str = "meter") -> None:
        profile = load_profile(PROFILE)
        self.points: list[str] = [str(p["name"]) for p in profile.points]
        self.devices = [
            Device(f"{prefix}-{i + 1}", free_port(), interval)
            for i, interval in enumerate(intervals_ms)
        ]
        self._profile = profile
        self._requests: dict[str, list[float]] = {d.name: [] for d in self.devices}
        self.started = time.time()
        self._servers: list[SimulatorServer] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="meters",
                                        daemon=True)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _start(self) -> None:
        for device in self.devices:
            self._servers.append(await serve(
                {1: self._profile}, "127.0.0.1", device.port, seed=device.name,
                trace_pdu=request_recorder(self._requests[device.name]),
            ))

    async def _stop(self) -> None:
        for server in self._servers:
            await server.stop()
        self._servers.clear()

    def __enter__(self) -> Self:
        self.started = time.time()
        self._thread.start()
        self._run(self._start())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._run(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def requests(self, name: str) -> list[float]:
        """Wall-clock times of every read request the device ``name`` received."""
        return list(self._requests[name])

    def request_count(self) -> int:
        """Read requests received by all meters so far."""
        return sum(len(r) for r in self._requests.values())

    def served_slots(self, device: Device) -> set[int]:
        """The slots (epoch ms) in which the agent polled ``device``."""
        return polled_slots(self.requests(device.name), device.interval_ms)

    def expected(self, *, restarts: Sequence[float] = ()) -> Polled:
        """Every poll the agent made, over all its runs (started again at ``restarts``)."""
        return Polled(tuple(
            poll for d in self.devices
            for poll in polls_of(d.name, self.points, self.requests(d.name), d.interval_ms,
                                 since=self.started, restarts=restarts)
        ))


# ---------------------------------------------------------------------------------- config


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} into TOML")


def _table(name: str, values: Mapping[str, object]) -> str:
    body = "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())
    return f"[{name}]\n{body}\n"


def write_agent_config(
    path: Path,
    *,
    gw: str,
    data_dir: Path,
    broker_url: str,
    devices: Iterable[Device],
    uplink: Mapping[str, object] | None = None,
    buffer: Mapping[str, object] | None = None,
    gateway: Mapping[str, object] | None = None,
) -> Path:
    """A complete agent config; ``uplink``/``buffer``/``gateway`` add or override keys."""
    text = _table("gateway", {"id": gw, "data_dir": data_dir, "shutdown_timeout": "10 s",
                              **(gateway or {})})
    text += _table("uplink", {
        "broker": broker_url, "batch_max_age": "2 s", "publish_timeout": "3 s",
        "keepalive": "2 s", "flush_interval": "1 s", **(uplink or {}),
    })
    if buffer:
        text += _table("buffer", buffer)
    for device in devices:
        text += "[[devices]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in {
            "name": device.name, "driver": "modbus",
            "endpoint": f"tcp://127.0.0.1:{device.port}", "profile": PROFILE,
            "interval": device.interval,
            # No resends: a request resent after a timeout (the meters run in the test's own
            # process, which a loaded machine can stall for a second) would read as a poll of
            # its own in the meter's request log, one the agent never stamped. Without them a
            # timed-out poll is a failed poll, stored as bad-quality readings at its slot.
            "retries": 0,
        }.items()) + "\n"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------- processes


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a file (other lines are skipped)."""
    events: list[dict[str, Any]] = []
    if not path.exists():
        return events
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            item = json.loads(line)
            if isinstance(item, dict):
                events.append(item)
    return events


class _Process:
    """A subprocess of ours whose stderr goes to a log file (appended over restarts)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str]) -> None:
        assert not self.alive, "already running"
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", *argv], cwd=ROOT,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> float:
        """SIGKILL it and reap it; returns the time of the kill (epoch s)."""
        assert self.proc is not None and self.alive, "not running"
        killed_at = time.time()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return killed_at

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM it and wait for it to exit (SIGKILL after ``timeout``); its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"no exit within {timeout} s of SIGTERM: {self.log}"
                                     ) from None
        return self.proc.returncode

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Its JSON log lines (all runs), or only those whose ``event`` is ``name``."""
        events = read_events(self.log)
        return events if name is None else [e for e in events if e.get("event") == name]

    def log_text(self) -> str:
        """Everything it wrote to stderr (all runs)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class AgentProcess(_Process):
    """``ssc-agent run`` as a subprocess; remembers when it was SIGKILLed."""

    def __init__(self, config: Path, log: Path, *, log_level: str = "info") -> None:
        super().__init__(log)
        self.config = config
        self.log_level = log_level
        self.kills: list[float] = []

    def start(self) -> None:
        """Start a run of the agent."""
        self._spawn(["--log-json", "--log-level", self.log_level, "run", "--config",
                     str(self.config)])

    def kill(self) -> float:
        """SIGKILL the agent (recorded for the ledger's allowed-loss window)."""
        killed_at = super().kill()
        self.kills.append(killed_at)
        return killed_at

    def wait_started(self, runs: int, seconds: float = 20.0) -> dict[str, Any]:
        """Wait for the ``runs``-th ``agent_started`` line and return it."""
        ok = wait_until(lambda: len(self.events("agent_started")) >= runs or not self.alive,
                        seconds)
        started = self.events("agent_started")
        assert ok and len(started) >= runs, f"agent did not start:\n{self.log_text()[-3000:]}"
        return started[runs - 1]


class ReceiverProcess(_Process):
    """``ssc-agent receive`` as a subprocess (persistent MQTT session) into a SQLite sink."""

    def __init__(self, broker_url: str, sink: Path, log: Path,
                 client_id: str = "chaos-receiver") -> None:
        super().__init__(log)
        self.broker_url = broker_url
        self.sink = sink
        self.client_id = client_id

    def start(self, *, wait: bool = True) -> None:
        """Start the receiver and (``wait``) wait until it has subscribed."""
        subscribed = len(self.events("mqtt_subscribed"))
        self._spawn(["--log-json", "receive", "--broker", self.broker_url, "--sink",
                     f"sqlite:///{self.sink}", "--client-id", self.client_id])
        if not wait:
            return
        assert wait_until(lambda: len(self.events("mqtt_subscribed")) > subscribed, 20), (
            f"receiver did not subscribe:\n{self.log_text()[-3000:]}")

    def count(self, gw: str) -> int:
        """Readings stored so far for ``gw`` (0 before the sink exists)."""
        try:
            conn = sqlite3.connect(f"file:{self.sink}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error:
            return 0
        try:
            return int(conn.execute("SELECT count(*) FROM readings WHERE gw = ?",
                                    (gw,)).fetchone()[0])
        except sqlite3.Error:
            return 0
        finally:
            conn.close()

    def top_seq(self, gw: str) -> int:
        """The highest batch seq stored for ``gw`` (0 before any)."""
        try:
            conn = sqlite3.connect(f"file:{self.sink}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error:
            return 0
        try:
            row = conn.execute("SELECT max(seq) FROM batches WHERE gw = ?", (gw,)).fetchone()
            return int(row[0] or 0)
        except sqlite3.Error:
            return 0
        finally:
            conn.close()

    def wait_for_seq(self, gw: str, seq: int, seconds: float = 30.0) -> None:
        """Wait until batch ``seq`` of ``gw`` is stored, then a moment for stragglers."""
        assert wait_until(lambda: self.top_seq(gw) >= seq, seconds), (
            f"receiver has seq {self.top_seq(gw)}, not {seq}:\n{self.log_text()[-3000:]}")
        time.sleep(0.3)


class StatusWatch:
    """``mosquitto_sub`` on a gateway's retained status topic, from a test's start: every
    status the broker delivers (the retained one first), as a platform subscriber sees them."""

    def __init__(self, port: int, gw: str, out: Path, prefix: str = "ssc/v1") -> None:
        self.out = out
        self._argv = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                      "-t", f"{prefix}/{gw}/status"]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        with self.out.open("ab") as sink:
            self.proc = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, stdout=sink,
                                         stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def statuses(self) -> list[Status]:
        """Every status received so far, oldest first (a cleared one is skipped)."""
        if not self.out.exists():
            return []
        return [decode_status(line) for line in self.out.read_text().splitlines()
                if line.strip()]

    def buffer_states(self) -> list[str | None]:
        """The ``buffer`` state of each status received (None: it did not say)."""
        return [None if s.buffer is None else s.buffer.state for s in self.statuses()]


def last_sealed_seq(data_dir: Path) -> int:
    """The seq of the last batch the agent sealed (read from its store's meta table)."""
    conn = sqlite3.connect(f"file:{data_dir / 'buffer.db'}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]
                   ) - 1
    finally:
        conn.close()


def wait_sealed_after(data_dir: Path, seconds: float = 15.0) -> Waited:
    """Wait until the agent seals a batch after this moment (while its uplink is down the
    batch stays in the store: a backlog)."""
    sealed = last_sealed_seq(data_dir)
    return wait_until(lambda: last_sealed_seq(data_dir) > sealed, seconds, step=0.2)


def wait_live_batch(receiver: ReceiverProcess, gw: str, data_dir: Path,
                    seconds: float = 20.0) -> Waited:
    """Wait until a batch the agent seals after this moment is stored: the agent is on its
    live path, past any backlog."""
    seq = last_sealed_seq(data_dir) + 1
    return wait_until(lambda: receiver.top_seq(gw) >= seq, seconds, step=0.2)


def store_meta(data_dir: Path) -> dict[str, int]:
    """The agent store's meta counters (boot, next_seq, dropped_batches, dropped_readings)."""
    conn = sqlite3.connect(f"file:{data_dir / 'buffer.db'}?mode=ro", uri=True, timeout=5)
    try:
        return {str(k): int(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    finally:
        conn.close()


def store_batches(data_dir: Path) -> int:
    """Batches in the agent's store right now, read from outside the agent (-1: unreadable)."""
    return _store_rows(data_dir, "batches")


def pending_rows(data_dir: Path) -> int:
    """Flushes committed into the open batch, not sealed yet (-1: unreadable)."""
    return _store_rows(data_dir, "pending")


def _store_rows(data_dir: Path, table: str) -> int:
    try:
        conn = sqlite3.connect(f"file:{data_dir / 'buffer.db'}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return -1
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.Error:
        return -1
    finally:
        conn.close()


# ---------------------------------------------------------------------------------- ledger


@dataclass(frozen=True)
class Stored:
    """What the receiver stored for one gateway."""

    keys: Counter[Key]
    qualities: Counter[int]
    events: list[dict[str, Any]]
    seqs: list[int]
    gaps: list[tuple[int, int]]

    @classmethod
    def read(cls, sink: Path, gw: str) -> Stored:
        """Read it from the sink file."""
        with SqliteSink.open(f"sqlite:///{sink}") as db:
            readings = db.readings_for(gw)
            return cls(
                keys=Counter((r.device, r.point, r.t) for r in readings),
                qualities=Counter(int(r.quality) for r in readings),
                events=db.events_for(gw),
                seqs=db.seqs(gw),
                gaps=db.gaps(gw),
            )

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        """The stored events of one kind."""
        return [e for e in self.events if e["kind"] == kind]


def _spans(times: Iterable[int]) -> str:
    """Sorted times as compact runs, for failure messages."""
    out: list[str] = []
    ordered = sorted(set(times))
    start = prev = None
    for t in ordered:
        if start is None:
            start = prev = t
        elif prev is not None and t - prev <= 1000:
            prev = t
        else:
            out.append(f"{start}..{prev}")
            start = prev = t
    if start is not None:
        out.append(f"{start}..{prev}")
    return ", ".join(out[:20]) + (" …" if len(out) > 20 else "")


def allowed_loss(expected: Iterable[Key], *, kills: Sequence[float] = (),
                 flush_interval: float = 1.0,
                 windows: Sequence[tuple[int, int]] = ()) -> set[Key]:
    """The keys of ``expected`` inside a SIGKILL's window (see the module docstring) or in
    one of ``windows`` (``(lo, hi]``, epoch ms)."""
    spans = [*windows, *((round((k - flush_interval - POLL_SLACK_S) * 1000), round(k * 1000))
                         for k in kills)]
    return {key for key in expected if any(lo < key[2] <= hi for lo, hi in spans)}


@dataclass(frozen=True)
class Poll:
    """One poll of a device as its meter saw it, and the slots the scheduler may have stamped
    it with (see the module docstring)."""

    device: str
    points: tuple[str, ...]
    slot: int
    """The slot its first request fell in (epoch ms; what a failure message names)."""
    allowed: tuple[int, ...]
    """Every slot (epoch ms, ascending) the scheduler's rule allows for it."""


def group_polls(requests: Sequence[float], interval_ms: int, *,
                per_poll: int = REQUESTS_PER_POLL,
                restarts: Sequence[float] = ()) -> list[tuple[float, ...]]:
    """The read requests (epoch s, ascending) of one device, as polls.

    A request continues the poll before it unless that poll has its ``per_poll`` requests, an
    interval or more passed since its last one (it was cut short), or an agent was (re)started
    in between (``restarts``); and it always continues it when no slot boundary lies between
    them, since the next poll is scheduled in a later slot than the one its predecessor ended in.
    """
    polls: list[list[float]] = []
    early_s, interval_s = EARLY_S, interval_ms / 1000
    for r in sorted(requests):
        current = polls[-1] if polls else None
        if current is not None:
            last = current[-1]
            same_slot = (math.floor((r + early_s) / interval_s)
                         == math.floor((last - early_s) / interval_s))
            complete = (len(current) >= per_poll or r - last >= interval_s
                        or any(last < k < r for k in restarts))
            if same_slot or not complete:
                current.append(r)
                continue
        polls.append([r])
    return [tuple(p) for p in polls]


def polls_of(device: str, points: Sequence[str], requests: Sequence[float], interval_ms: int,
             *, since: float, restarts: Sequence[float] = (),
             per_poll: int = REQUESTS_PER_POLL) -> list[Poll]:
    """The polls of ``device`` read off the requests its meter saw, each with its allowed slots.

    ``since`` (epoch s) is when the meters started: no agent polled before; ``restarts`` are the
    times an agent may have been started again (its SIGKILLs). The rule is the module
    docstring's.
    """
    early = EARLY_S * 1000
    kills = [k * 1000 for k in restarts]
    out: list[Poll] = []
    previous_last: float | None = None
    for burst in group_polls(requests, interval_ms, per_poll=per_poll, restarts=restarts):
        first, last = burst[0] * 1000, burst[-1] * 1000
        if previous_last is None:
            lo = since * 1000  # no agent polled before the meters started
        else:
            # the scheduler's next slot lies after the moment the previous poll ended
            lo = previous_last - early
            restarted = any(previous_last < k < first for k in kills)
            if not restarted and first - previous_last < 2 * interval_ms:
                # on an open connection: the poll started less than an interval after its
                # slot (else it is stamped with the slot it is taken in) and its first request
                # reached the meter less than an interval after that
                lo = max(lo, first - 2 * interval_ms + early)
        hi = math.floor((first + early) / interval_ms) * interval_ms
        lowest = (math.floor(lo / interval_ms) + 1) * interval_ms
        out.append(Poll(device, tuple(points), hi, tuple(range(lowest, hi + 1, interval_ms))))
        previous_last = last
    return out


@dataclass(frozen=True)
class Polled:
    """Every poll the agent made, over all its runs: what the ledger expects."""

    polls: tuple[Poll, ...]

    @classmethod
    def exact(cls, keys: Iterable[Key]) -> Polled:
        """Polls whose slots are known exactly: one per (device, slot) of ``keys``."""
        points: dict[tuple[str, int], list[str]] = {}
        for device, point, t in keys:
            points.setdefault((device, t), []).append(point)
        return cls(tuple(Poll(device, tuple(sorted(p)), t, (t,))
                         for (device, t), p in sorted(points.items())))

    def keys(self) -> set[Key]:
        """Every (device, point, slot) the polls may have been stamped with."""
        return {(p.device, point, t) for p in self.polls for point in p.points
                for t in p.allowed}


def match_polls(polls: Sequence[Poll], slots: Iterable[int]) -> dict[int, Poll]:
    """A largest assignment of ``polls`` (of one device) to received ``slots``: each poll at
    most one of its allowed slots, each slot at most one poll.

    Each poll first takes the slot its first request fell in if that is free (most polls are
    on time); augmenting paths then place the others, moving polls to another of their slots
    where that frees one, so no assignment places more polls.
    """
    stored = set(slots)
    received = sorted(stored)

    def candidates(poll: Poll) -> list[int]:
        if not poll.allowed:
            return []
        lo = bisect.bisect_left(received, poll.allowed[0])
        hi = bisect.bisect_right(received, poll.allowed[-1])
        return received[lo:hi]

    owner: dict[int, int] = {}  # slot -> index into polls
    placed: dict[int, int] = {}  # index into polls -> slot
    for i, poll in enumerate(polls):
        if poll.slot in stored and poll.slot in poll.allowed and poll.slot not in owner:
            owner[poll.slot] = i
            placed[i] = poll.slot
    for start in range(len(polls)):
        if start in placed:
            continue
        # breadth-first search for a free slot, through polls that can move
        came_from: dict[int, tuple[int, int] | None] = {start: None}
        queue = deque([start])
        free: tuple[int, int] | None = None
        while queue and free is None:
            current = queue.popleft()
            for t in candidates(polls[current]):
                if t not in owner:
                    free = (current, t)
                    break
                other = owner[t]
                if other not in came_from:
                    came_from[other] = (current, t)
                    queue.append(other)
        while free is not None:
            i, t = free
            owner[t] = i
            placed[i] = t
            free = came_from[i]
    return {t: polls[i] for t, i in owner.items()}


@dataclass
class Ledger:
    """Polled (expected) versus stored (received), with the windows a SIGKILL may lose.

    ``expected`` is :class:`Polled`, or (a slot known exactly per key) a set of keys.
    """

    expected: Polled | set[Key]
    received: Counter[Key]
    may_lose: set[Key] = field(default_factory=set)

    @classmethod
    def build(cls, fleet: MeterFleet, stored: Stored, *, kills: Sequence[float] = (),
              flush_interval: float = 1.0,
              windows: Sequence[tuple[int, int]] = ()) -> Ledger:
        """Compare what ``fleet`` served with what was ``stored``; SIGKILLs at ``kills``.

        ``windows`` are further ``(lo, hi]`` slot ranges (epoch ms) a case allows to lose.
        """
        return cls.of(fleet.expected(restarts=kills), stored.keys, kills=kills,
                      flush_interval=flush_interval, windows=windows)

    @classmethod
    def of(cls, polled: Polled, received: Counter[Key], *, kills: Sequence[float] = (),
           flush_interval: float = 1.0,
           windows: Sequence[tuple[int, int]] = ()) -> Ledger:
        """:meth:`build` from the polls and the stored keys themselves."""
        may_lose = allowed_loss(polled.keys(), kills=kills, flush_interval=flush_interval,
                                windows=windows)
        return cls(polled, received, may_lose)

    @functools.cached_property
    def _accounts(self) -> tuple[set[Key], set[Key], set[Key]]:
        """(lost, lost outside every kill window, phantom)."""
        polled = (self.expected if isinstance(self.expected, Polled)
                  else Polled.exact(self.expected))
        by_device: dict[str, list[Poll]] = {}
        for poll in polled.polls:
            by_device.setdefault(poll.device, []).append(poll)
        slots: dict[str, set[int]] = {}
        for device, _, t in self.received:
            slots.setdefault(device, set()).add(t)
        lost: set[Key] = set()
        unexplained: set[Key] = set()
        claimed: set[Key] = set()
        for device, polls in by_device.items():
            taken = match_polls(polls, slots.get(device, ()))
            for t, poll in taken.items():
                for point in poll.points:
                    key = (device, point, t)
                    claimed.add(key)
                    if key not in self.received:
                        lost.add(key)
                        if key not in self.may_lose:
                            unexplained.add(key)
            matched = {id(p) for p in taken.values()}
            for poll in polls:
                if id(poll) in matched:
                    continue
                for point in poll.points:
                    key = (device, point, poll.slot)
                    lost.add(key)
                    if not any((device, point, t) in self.may_lose for t in poll.allowed):
                        unexplained.add(key)
        phantom = set(self.received) - claimed
        return lost, unexplained, phantom

    @property
    def lost(self) -> set[Key]:
        """Polled but not stored."""
        return self._accounts[0]

    @property
    def unexplained(self) -> set[Key]:
        """Lost outside every window a SIGKILL may lose."""
        return self._accounts[1]

    @property
    def phantom(self) -> set[Key]:
        """Stored but never polled."""
        return self._accounts[2]

    @property
    def duplicates(self) -> list[Key]:
        """Stored more than once."""
        return sorted(k for k, n in self.received.items() if n > 1)

    def summary(self) -> str:
        """One paragraph for assertion messages."""
        lost = self.lost
        polled = (self.expected if isinstance(self.expected, Polled)
                  else Polled.exact(self.expected))
        polls = len(polled.polls)
        expected = sum(len(p.points) for p in polled.polls)
        return (
            f"expected={expected} ({polls} polls) received={len(self.received)} "
            f"lost={len(lost)} "
            f"(in kill windows {len(lost - self.unexplained)}, unexplained "
            f"{len(self.unexplained)} at t={_spans(k[2] for k in self.unexplained)}) "
            f"phantom={len(self.phantom)} at t={_spans(k[2] for k in self.phantom)} "
            f"duplicates={len(self.duplicates)}"
        )

    def assert_exact(self) -> None:
        """Nothing lost outside kill windows, nothing invented, nothing stored twice."""
        assert not self.unexplained, self.summary()
        assert not self.phantom, self.summary()
        assert not self.duplicates, self.summary()


def fill(path: Path) -> None:
    """Take every free byte of the filesystem ``path`` is on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 16, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError:
                    break
    finally:
        os.close(fd)
