"""Chaos: the agent's wall clock steps while it runs, and the broker comes back after an outage.

The agent runs as a real process under libfaketime: ``LD_PRELOAD`` of ``libfaketime.so.1``
with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` (only the wall clock is faked; the monotonic clock the
agent waits on stays real) and the offset read from ``FAKETIME_TIMESTAMP_FILE`` again at most a
second after it changes (``FAKETIME_CACHE_DURATION=1``; ``FAKETIME_NO_CACHE=1`` would read the
file at every clock call, which slows the agent down), so rewriting that file (atomically:
write, rename) steps the running agent's wall clock within a second, as NTP or an operator
does. Relative offsets (``+0``, ``-90s``,
``-180d``) keep the faked clock ticking at the real rate. (With libfaketime 0.9.10 and
``DONT_FAKE_MONOTONIC`` Python's ``time.sleep`` fails with EINVAL; the agent never calls it.)

The ground truth is the receiver's SQLite sink, compared with what the simulated meters served
(``tests/chaos/harness.py``). The meters log requests in real time; the agent stamps readings on
its (faked) wall clock, and the sink itself moves the batches of the boot sealed before a
``clock_step`` event's ``before_seq`` by its ``step_ms`` onto the new clock
(``docs/wire-format.md`` §7.1), whether they arrive before or after the event. The test checks
the sink's correction against that rule applied here to the times the gateway sent
(``t - batches.clock_shift_ms``), then compares the sink's own times with the meters: the new
clock is the real one shifted by the fake offset in force after the step, and every polled
(device, point, slot) must be stored exactly once and nothing else.

In CI a missing libfaketime is a failure, not a skip (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import (
    ROOT,
    AgentProcess,
    Key,
    Ledger,
    MeterFleet,
    ReceiverProcess,
    Stored,
    last_sealed_seq,
    request_recorder,
    sleep_to_quiet_point,
    store_batches,
    store_meta,
    wait_live_batch,
    write_agent_config,
)
from tests.conftest import Mosquitto
from tests.waiting import wait_until

GW = "gw-clock"
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
DAY_S = 86_400
WORDS = re.compile(r"(\w+)=(\S+)")


def _need_libfaketime() -> None:
    if LIBFAKETIME.exists():
        return
    message = f"libfaketime is not installed ({LIBFAKETIME}): apt-get install faketime libfaketime"
    if os.environ.get("SSC_REQUIRE_MOSQUITTO") == "1":  # CI: a missing tool is a failure
        pytest.fail(message)
    pytest.skip(message)


class FakeTimeAgent(AgentProcess):
    """``ssc-agent run`` whose wall clock is offset by what ``clock_file`` says (libfaketime)."""

    def __init__(self, config: Path, log: Path, clock_file: Path, *,
                 log_level: str = "info") -> None:
        super().__init__(config, log, log_level=log_level)
        self.clock_file = clock_file

    def set_offset(self, offset: str) -> float:
        """Step the running agent's wall clock to ``offset`` from real time (``-90s``, ``+0``)
        within a second; returns the real time the file was written."""
        tmp = self.clock_file.with_name(self.clock_file.name + ".tmp")
        tmp.write_text(offset + "\n")
        tmp.replace(self.clock_file)
        return time.time()

    def start(self) -> None:
        assert not self.alive, "already running"
        env = dict(os.environ, LD_PRELOAD=str(LIBFAKETIME), FAKETIME_DONT_FAKE_MONOTONIC="1",
                   FAKETIME_CACHE_DURATION="1", FAKETIME_TIMESTAMP_FILE=str(self.clock_file))
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "--log-json", "--log-level", self.log_level,
                 "run", "--config", str(self.config)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
            )


def new_agent(tmp_path: Path, agents: list[AgentProcess], fleet: MeterFleet, broker: Mosquitto,
              *, offset: str | None, **sections: dict[str, object]) -> AgentProcess:
    config = write_agent_config(
        tmp_path / f"{GW}.toml", gw=GW, data_dir=tmp_path / f"{GW}-data",
        broker_url=broker.url, devices=fleet.devices, uplink=sections.get("uplink"),
        buffer=sections.get("buffer"), gateway=sections.get("gateway"))
    agent: AgentProcess
    if offset is None:
        agent = AgentProcess(config, tmp_path / f"{GW}.log", log_level="debug")
    else:
        _need_libfaketime()
        clock = FakeTimeAgent(config, tmp_path / f"{GW}.log", tmp_path / "faketime",
                              log_level="debug")
        clock.set_offset(offset)
        agent = clock
    agents.append(agent)
    return agent


def tail(agent: AgentProcess, receiver: ReceiverProcess) -> str:
    return (f"agent log:\n{agent.log_text()[-4000:]}\nreceiver log:\n"
            f"{receiver.log_text()[-2000:]}")


def finish(agent: AgentProcess, receiver: ReceiverProcess, data: Path) -> None:
    """Stop the agent cleanly between polls and wait until the receiver has every batch."""
    sleep_to_quiet_point(1.0)
    assert agent.terminate() == 0, tail(agent, receiver)
    assert agent.events("agent_stopped")[-1]["unsent_batches"] == 0, tail(agent, receiver)
    receiver.wait_for_seq(GW, last_sealed_seq(data))


def stored_rows(sink: Path) -> list[tuple[str, str, int, int, int]]:
    """Every stored reading as (dev, pt, t as stored, seq of its batch, t as the gateway sent
    it)."""
    conn = sqlite3.connect(f"file:{sink}?mode=ro", uri=True, timeout=5)
    try:
        return [(str(d), str(p), int(t), int(s), int(t) - int(shift))
                for d, p, t, s, shift in conn.execute(
                    "SELECT r.dev, r.pt, r.t, r.seq, b.clock_shift_ms FROM readings r"
                    " JOIN batches b USING (gw, store, seq) WHERE r.gw = ?", (GW,))]
    finally:
        conn.close()


def clock_steps(stored: Stored) -> list[dict[str, str]]:
    """The ``key=value`` words of every stored ``clock_step`` event."""
    return [dict(WORDS.findall(e["msg"])) for e in stored.events_of("clock_step")]


STEP_ERROR_MS = 50  # how far a measured step may be off the real one (asserted on step_ms)


def on_new_clock(rows: list[tuple[str, str, int, int, int]],
                 steps: list[dict[str, str]]) -> Counter[Key]:
    """The sink's readings, after checking them against wire-format §7.1 applied here to what
    the gateway sent: a batch of the boot sealed before a step (seq from its ``from_seq`` to
    below its ``before_seq``) is moved by its ``step_ms``, the others are as sent."""
    ruled: Counter[Key] = Counter()
    for dev, pt, _, seq, sent in rows:
        moved = sum(int(s["step_ms"]) for s in steps
                    if int(s["from_seq"]) <= seq < int(s["before_seq"]))
        ruled[(dev, pt, sent + moved)] += 1
    corrected = Counter((dev, pt, t) for dev, pt, t, _, _ in rows)
    assert corrected == ruled, "the sink's correction is not the rule of wire-format §7.1"
    before = min(int(s["before_seq"]) for s in steps)
    assert any(t != sent for _, _, t, seq, sent in rows if seq < before), "nothing was moved"
    # A step is measured from two clocks read one after the other: step_ms can be a
    # millisecond or so off the real step, and so are the readings it moved. Those land
    # within STEP_ERROR_MS of their real slot (whole seconds here), where the ledger wants them.
    on_slots: Counter[Key] = Counter()
    for (dev, pt, t), n in corrected.items():
        slot = round(t / 1000) * 1000
        assert abs(t - slot) <= STEP_ERROR_MS, (dev, pt, t)
        on_slots[(dev, pt, slot)] += n
    return on_slots


def polls_after(fleet: MeterFleet, since: float) -> int:
    """Polls (bursts of requests, one per real slot) the meters served after ``since``."""
    device = fleet.devices[0]
    return len({round(r) for r in fleet.requests(device.name) if r > since})


# ------------------------------------------------------------------ 1. backward steps of a clock


@pytest.mark.parametrize(("offset", "step_s"), [("-90s", -90), ("-3600s", -3600)])
def test_polling_goes_on_through_a_backward_step_and_every_reading_is_accounted(
    tmp_path: Path, broker: Mosquitto, receiver: ReceiverProcess, agents: list[AgentProcess],
    offset: str, step_s: int,
) -> None:
    """Before: 0 polls for 90 s after a 90 s step back, none for the run after an hour back."""
    data = tmp_path / f"{GW}-data"
    with MeterFleet([1000]) as fleet:
        agent = new_agent(tmp_path, agents, fleet, broker, offset="+0")
        assert isinstance(agent, FakeTimeAgent)
        agent.start()
        agent.wait_started(1)
        assert wait_until(lambda: receiver.count(GW) > 0, 20), tail(agent, receiver)
        time.sleep(1.5)  # the input: the agent runs on the right clock before the step
        stepped_at = agent.set_offset(offset)
        # polling goes on at its interval: 8 polls in the next 8-odd seconds, not after 90 s
        assert wait_until(lambda: polls_after(fleet, stepped_at) >= 8, 30), (
            polls_after(fleet, stepped_at), tail(agent, receiver))
        assert wait_live_batch(receiver, GW, data), tail(agent, receiver)
        finish(agent, receiver, data)
        expected = fleet.expected()
    stored = Stored.read(receiver.sink, GW)
    steps = clock_steps(stored)
    assert len(steps) == 1, stored.events
    assert abs(int(steps[0]["step_ms"]) - step_s * 1000) < STEP_ERROR_MS, steps
    assert steps[0]["boot"] == "1"
    assert len(agent.events("clock_step")) == 1
    # Onto real time: the new clock is real time + step.
    real = Counter({(d, p, t - step_s * 1000): n
                    for (d, p, t), n in on_new_clock(stored_rows(receiver.sink), steps).items()})
    ledger = Ledger(expected, real)
    ledger.assert_exact()
    assert not ledger.lost, ledger.summary()
    # the readings sealed after the step were stamped on the stepped clock
    assert min(t for _, _, t, s, _ in stored_rows(receiver.sink)
               if s >= int(steps[0]["before_seq"])) < (stepped_at + step_s + 5) * 1000
    assert not stored.events_of("slots_skipped")


# ---------------------------------------------------- 2. NTP steps months forward, broker down


def test_a_180_day_step_with_the_broker_down_drops_nothing_as_too_old(
    tmp_path: Path, broker: Mosquitto, receiver: ReceiverProcess, agents: list[AgentProcess],
) -> None:
    """Before: the step made max_age (30 d) drop 15-s-old batches (``reason=max_age``)."""
    data = tmp_path / f"{GW}-data"
    with MeterFleet([1000]) as fleet:
        # boots with the clock 180 days back (fake-hwclock), the broker unreachable
        agent = new_agent(tmp_path, agents, fleet, broker, offset="-180d",
                          buffer={"max_age": "30 d"}, uplink={"batch_max_age": "2 s"})
        assert isinstance(agent, FakeTimeAgent)
        broker.kill()
        agent.start()
        agent.wait_started(1)
        assert wait_until(lambda: store_batches(data) >= 3, 30), tail(agent, receiver)
        agent.set_offset("+0")  # NTP steps the clock to the right time
        assert wait_until(lambda: bool(agent.events("clock_step")), 10), tail(agent, receiver)
        time.sleep(3.0)  # the input: flushes and seals after the step; max_age is applied at each
        broker.start()
        assert wait_until(lambda: store_batches(data) == 0, 30), tail(agent, receiver)
        assert wait_live_batch(receiver, GW, data), tail(agent, receiver)
        finish(agent, receiver, data)
        expected = fleet.expected()
    assert not agent.events("buffer_drop"), agent.events("buffer_drop")
    assert store_meta(data)["dropped_readings"] == 0
    stored = Stored.read(receiver.sink, GW)
    assert not stored.events_of("buffer_drop"), stored.events_of("buffer_drop")
    steps = clock_steps(stored)
    assert len(steps) == 1, stored.events
    assert abs(int(steps[0]["step_ms"]) - 180 * DAY_S * 1000) < STEP_ERROR_MS, steps
    # the new clock is real time: every polled slot stored once, with its real time
    ledger = Ledger(expected, on_new_clock(stored_rows(receiver.sink), steps))
    ledger.assert_exact()
    assert not ledger.lost, ledger.summary()
    # every batch sealed before the step was moved once, by the step
    moved_early, moved_late = moved_batches(receiver, int(steps[0]["step_ms"]))
    assert moved_early + moved_late == (
        int(steps[0]["before_seq"]) - int(steps[0]["from_seq"])), (moved_early, moved_late)


def moved_batches(receiver: ReceiverProcess, step_ms: int) -> tuple[int, int]:
    """(batches the receiver moved when the step arrived, batches it moved while storing them
    after the step), from its log; each moved by exactly ``step_ms``."""
    applied = receiver.events("clock_step_applied")
    assert len(applied) == 1 and applied[0]["step_ms"] == step_ms, applied
    late = [e for e in receiver.events("batch_stored") if e.get("clock_shift_ms")]
    assert all(e["clock_shift_ms"] == step_ms for e in late), late
    return int(applied[0]["batches"]), len(late)


def test_batches_sealed_before_a_step_and_stored_after_it_are_corrected_by_the_sink(
    tmp_path: Path, broker: Mosquitto, receiver: ReceiverProcess, agents: list[AgentProcess],
) -> None:
    """The backlog of a boot with the clock 180 days back drains slowly; NTP steps the clock
    meanwhile. The batch with the ``clock_step`` event is live, so it reaches the receiver
    before the rest of the backlog sealed before the step: the sink moves those batches as
    they arrive, and the ones it had already stored when the event came."""
    data = tmp_path / f"{GW}-data"
    with MeterFleet([1000]) as fleet:
        agent = new_agent(tmp_path, agents, fleet, broker, offset="-180d",
                          buffer={"max_age": "30 d"},
                          uplink={"batch_max_age": "1 s", "replay_rate_per_second": 0.5,
                                  "reconnect_min": "250 ms", "reconnect_max": "2 s"})
        assert isinstance(agent, FakeTimeAgent)
        broker.kill()
        agent.start()
        agent.wait_started(1)
        assert wait_until(lambda: store_batches(data) >= 8, 30), tail(agent, receiver)
        broker.start()
        # the backlog drains at one batch every 2 s: step while most of it is still held
        assert wait_until(lambda: receiver.top_seq(GW) >= 1, 30), tail(agent, receiver)
        agent.set_offset("+0")
        assert wait_until(lambda: bool(agent.events("clock_step")), 10), tail(agent, receiver)
        assert wait_until(lambda: store_batches(data) == 0, 60), tail(agent, receiver)
        assert wait_live_batch(receiver, GW, data), tail(agent, receiver)
        finish(agent, receiver, data)
        expected = fleet.expected()
    stored = Stored.read(receiver.sink, GW)
    steps = clock_steps(stored)
    assert len(steps) == 1, stored.events
    step_ms = int(steps[0]["step_ms"])
    assert abs(step_ms - 180 * DAY_S * 1000) < STEP_ERROR_MS, steps
    moved_early, moved_late = moved_batches(receiver, step_ms)
    assert moved_early + moved_late == (
        int(steps[0]["before_seq"]) - int(steps[0]["from_seq"])), (moved_early, moved_late)
    assert moved_late >= 2, (moved_early, moved_late)  # the case this test is about
    ledger = Ledger(expected, on_new_clock(stored_rows(receiver.sink), steps))
    ledger.assert_exact()
    assert not ledger.lost, ledger.summary()
    # the event itself stays as sent, on the new clock; the batch's readings were not moved
    assert stored.events_of("clock_step")[0]["t"] > (time.time() - 600) * 1000


# ------------------------------------------------------------- 3. back after a broker outage


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def test_readings_flow_again_within_the_reconnect_bound_after_a_broker_restart(
    tmp_path: Path, broker: Mosquitto, receiver: ReceiverProcess, agents: list[AgentProcess],
) -> None:
    """Before: a 1 s → 60 s backoff kept a gateway away for up to a minute after the broker's
    return (16.9 s measured). Now every wait is within [reconnect_min, reconnect_max]."""
    data = tmp_path / f"{GW}-data"
    reconnect_max = 2.0
    with MeterFleet([1000, 1000]) as fleet:
        agent = new_agent(tmp_path, agents, fleet, broker, offset=None,
                          uplink={"reconnect_min": "250 ms", "reconnect_max": "2 s"})
        agent.start()
        agent.wait_started(1)
        assert wait_until(lambda: receiver.count(GW) > 0, 20), tail(agent, receiver)
        broker.kill()
        time.sleep(20.0)  # the input: long enough for the old backoff to have grown to 16-32 s
        broker.start()
        back = time.time()
        stored_before = receiver.count(GW)
        assert wait_until(lambda: receiver.count(GW) > stored_before, 60), tail(agent, receiver)
        flowing = time.time() - back
        assert wait_until(lambda: store_batches(data) == 0, 30), tail(agent, receiver)
        assert wait_live_batch(receiver, GW, data), tail(agent, receiver)
        finish(agent, receiver, data)
    waits = [e["seconds"] for e in agent.events("uplink_retry_in")]
    assert len(waits) >= 5 and max(waits) <= reconnect_max, waits
    restored = [_at(e) - back for e in agent.events("uplink_restored")]
    assert restored, tail(agent, receiver)
    # the documented bound, plus slack for a loaded machine (connect, CONNACK, scheduling):
    # the old backoff misses it by seconds
    assert restored[0] <= reconnect_max + 3.0, restored
    # … and the receiver (which reconnects within 5 s by default) stores new readings
    assert flowing <= 5.0 + 3.0, flowing
    ledger = Ledger.build(fleet, Stored.read(receiver.sink, GW))
    ledger.assert_exact()
    assert not ledger.lost, ledger.summary()


# ------------------------------------------------ 4. polls longer than the interval skip slots


class SilentMeters(MeterFleet):
    """Meters that never answer (their unit is silent, Modbus RTU over TCP, where the
    simulator can mute a unit): every poll runs into its timeout."""

    async def _start(self) -> None:
        from drivers.modbus.simulator import serve

        for device in self.devices:
            self._servers.append(await serve(
                {1: self._profile}, "127.0.0.1", device.port, seed=device.name,
                trace_pdu=request_recorder(self._requests[device.name]), rtu=True,
                silent_units=(1,)))


def test_every_slot_is_polled_or_reported_skipped_when_polls_outlast_the_interval(
    tmp_path: Path, broker: Mosquitto, receiver: ReceiverProcess, agents: list[AgentProcess],
) -> None:
    """Before: with timeout × attempts over the interval, 9 of 52 slots had no reading and no
    record. Now a slot has a reading (here quality 2) or is named by a slots_skipped event."""
    data = tmp_path / f"{GW}-data"
    with SilentMeters([1000]) as fleet:
        agent = new_agent(tmp_path, agents, fleet, broker, offset=None)
        # 2 attempts of 700 ms: every poll of the silent meter takes 1.4 s, over its 1-s slot
        agent.config.write_text(agent.config.read_text().replace(
            'retries = 0\n', 'timeout = "700 ms"\nretries = 1\n'
        ).replace('"tcp://', '"rtu+tcp://'))
        agent.start()
        agent.wait_started(1)
        assert wait_until(lambda: len(agent.events("poll_overrun")) >= 1, 30), tail(
            agent, receiver)
        time.sleep(12.0)  # the input: a run of polls that outlast their slot
        finish(agent, receiver, data)
    stored = Stored.read(receiver.sink, GW)
    polled = {t for _, _, t in stored.keys}
    assert polled and set(stored.qualities) == {2}, stored.qualities
    skipped: set[int] = set()
    for event in stored.events_of("slots_skipped"):
        words = dict(WORDS.findall(event["msg"]))
        assert event["dev"] == fleet.devices[0].name and words["reason"] == "overrun", event
        step = int(words["interval_ms"])
        named = {event["t"] + step * i for i in range(int(words["slots"]))}
        assert not named & skipped, "a slot reported skipped twice"
        skipped |= named
    assert skipped, stored.events
    assert not skipped & polled, "a slot both polled and reported skipped"
    grid = set(range(min(polled), max(polled) + 1, 1000))
    assert grid <= polled | skipped, sorted(grid - polled - skipped)
    # the agent logs the condition once, not per overrun
    assert len(agent.events("poll_overrun")) == 1
