"""Chaos cases for the agent's storage: store identity, locks, and a data_dir that goes away.

Real agent subprocesses, real mosquitto, the receiver subprocess and its SQLite sink as the
ground truth (see ``tests/chaos/harness.py``). Cases:

1. a new store under a known gateway id (a replaced SD card, a wiped data_dir) is stored,
   while a redelivered batch of a store is still dropped;
2. a store another process holds a write lock on is not moved aside: the agent waits, says
   so in one line, exits 2, and the store is intact for the next start;
3. a second agent on the same data_dir is refused (one line, exit 2), nothing doubled;
4. the data_dir deleted while the agent runs: reported once, written back, nothing lost;
5. the data_dir made read-only while the agent runs (a read-only bind mount: root ignores
   permission bits): reported once, sealed batches still delivered, held readings within the
   bounds, the loss counted and reported, and a restart on it is one line, exit 2;
5b. the same outage is in the gateway's retained status while it lasts (a platform subscriber
   and the receiver's sink see ``unwritable``, then dropping, then ``ok``), once per change;
6. ``run`` with a data_dir that cannot be created: one line, exit 2.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from agent.platform.sink import SqliteSink
from tests.chaos.harness import (
    AgentProcess,
    Ledger,
    MeterFleet,
    ReceiverProcess,
    StatusWatch,
    Stored,
    last_sealed_seq,
    sleep_to_quiet_point,
    store_batches,
    store_meta,
    wait_live_batch,
    wait_sealed_after,
    write_agent_config,
)
from tests.conftest import Mosquitto
from tests.waiting import wait_until

GW = "gw-storage"
SECOND = 1000
DROP_READINGS = re.compile(r"\breadings=(\d+)\b")


def new_agent(tmp_path: Path, agents: list[AgentProcess], fleet: MeterFleet, broker: Mosquitto,
              data: Path, *, name: str = GW, **sections: dict[str, object]) -> AgentProcess:
    config = write_agent_config(
        tmp_path / f"{name}.toml", gw=GW, data_dir=data, broker_url=broker.url,
        devices=fleet.devices, uplink=sections.get("uplink"), buffer=sections.get("buffer"),
    )
    agent = AgentProcess(config, tmp_path / f"{name}.log")
    agents.append(agent)
    return agent


def tail(*processes: AgentProcess | ReceiverProcess) -> str:
    return "\n".join(f"{p.log}:\n{p.log_text()[-3000:]}" for p in processes)


def stop(agent: AgentProcess, receiver: ReceiverProcess, data: Path) -> None:
    """Stop the agent cleanly between polls and let the receiver store all it sealed."""
    sleep_to_quiet_point(1.0)
    assert agent.terminate() == 0, tail(agent)
    assert agent.events("agent_stopped")[-1]["unsent_batches"] == 0, tail(agent, receiver)
    wait_for_seq(receiver, last_sealed_seq(data))


def stored_seqs(receiver: ReceiverProcess) -> dict[str, list[int]]:
    """Stored seqs per store of GW (empty before the sink exists)."""
    if not receiver.sink.exists():
        return {}
    with SqliteSink.open(f"sqlite:///{receiver.sink}") as db:
        return {store: db.seqs(GW, store) for store in db.stores(GW)}


def wait_for_seq(receiver: ReceiverProcess, seq: int, store: str | None = None) -> None:
    """Wait until the newest (or the given) store has stored ``seq`` and every seq before it
    (a batch published in parallel may arrive after a later one; no case here drops one)."""

    def done() -> bool:
        seqs = stored_seqs(receiver)
        if not seqs:
            return False
        mine = seqs.get(store, []) if store is not None else list(seqs.values())[-1]
        return bool(mine) and max(mine) >= seq and set(range(min(mine), seq + 1)) <= set(mine)

    assert wait_until(done, 30), (seq, stored_seqs(receiver), receiver.log_text()[-2000:])


def error_lines(agent: AgentProcess) -> list[str]:
    return [line for line in agent.log_text().splitlines() if line.startswith("ssc-agent:")]


def reported_readings(stored: Stored) -> int:
    total = 0
    for event in stored.events_of("buffer_drop"):
        match = DROP_READINGS.search(event["msg"])
        assert match, event
        total += int(match.group(1))
    return total


def assert_complete(seqs: list[int]) -> None:
    assert seqs and seqs == list(range(seqs[0], seqs[-1] + 1)), seqs


# ------------------------------------------------------------ 1. a new store, a true duplicate


def test_a_new_store_under_a_known_gateway_is_stored_and_a_redelivery_is_not(
    tmp_path: Path, broker: Mosquitto, receiver: ReceiverProcess, agents: list[AgentProcess]
) -> None:
    data = tmp_path / "data"
    with MeterFleet([1000, 1000]) as fleet:
        agent = new_agent(tmp_path, agents, fleet, broker, data)
        agent.start()
        agent.wait_started(1)
        wait_for_seq(receiver, 1)  # the platform knows the first store
        # export what the store holds while the agent runs (read-only): the broker is frozen
        # so nothing is deleted under the export
        broker.stop()
        assert wait_sealed_after(data) and store_batches(data) >= 1, tail(agent)
        exported = tmp_path / "exported"
        done = subprocess.run(
            [*agent_cli(), "buffer", "export", "--config", str(agent.config), "--output",
             str(exported)], capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 0, done.stderr
        payloads = sorted(exported.glob("*.ssc1"))
        assert payloads, "nothing was waiting in the store"
        broker.cont()
        stop(agent, receiver, data)
        first_store = list(stored_seqs(receiver))
        # a replaced SD card: the whole data_dir is gone, the gateway id is the same
        subprocess.run(["rm", "-rf", str(data)], check=True)
        agent.start()
        second = agent.wait_started(2)
        assert second["boot"] == 1, second  # a new store: counters from scratch
        # the new store's batches reach the platform
        assert wait_until(lambda: len(stored_seqs(receiver)) == 2, 20), tail(agent, receiver)
        stop(agent, receiver, data)
        # a true duplicate: a batch of the first store delivered again
        rx_before = len(receiver.events("batch_duplicate"))
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-h", "127.0.0.1", "-q", "1",
                        "-t", f"ssc/v1/{GW}/batch", "-f", str(payloads[0])], check=True)
        assert wait_until(lambda: len(receiver.events("batch_duplicate")) > rx_before, 10), (
            receiver.log_text()[-2000:])
    stored = Stored.read(receiver.sink, GW)
    ledger = Ledger.build(fleet, stored)
    ledger.assert_exact()
    assert not ledger.lost, ledger.summary()
    per_store = stored_seqs(receiver)
    assert len(per_store) == 2 and next(iter(per_store)) == first_store[0], per_store
    for seqs in per_store.values():
        assert_complete(seqs)
    assert list(per_store.values())[1][0] == 1  # the new store starts at seq 1, stored
    assert not receiver.events("seq_reused"), receiver.events("seq_reused")
    with SqliteSink.open(f"sqlite:///{receiver.sink}") as db:
        assert db.gaps(GW) == []


def agent_cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "agent.cli"]


# ---------------------------------------------------------------------- 2. a locked store


def test_a_locked_store_is_waited_for_refused_in_one_line_and_left_intact(
    tmp_path: Path, broker: Mosquitto, receiver: ReceiverProcess, agents: list[AgentProcess]
) -> None:
    data = tmp_path / "data"
    with MeterFleet([1000]) as fleet:
        agent = new_agent(tmp_path, agents, fleet, broker, data)
        agent.start()
        agent.wait_started(1)
        wait_for_seq(receiver, 1)
        stop(agent, receiver, data)
        before = store_meta(data)
        holder = sqlite3.connect(data / "buffer.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # a backup tool, a `sqlite3` shell: a write lock
        try:
            agent.start()
            assert wait_until(lambda: not agent.alive, 30), tail(agent)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert agent.proc is not None and agent.proc.returncode == 2, tail(agent)
        lines = error_lines(agent)
        assert len(lines) == 1 and "locked by another process for more than 10 s" in lines[0], (
            tail(agent))
        assert "Traceback" not in agent.log_text()
        assert not list(data.glob("buffer.db.corrupt-*")), sorted(data.iterdir())
        assert not agent.events("buffer_corrupt")
        # the lock is gone: the same store goes on, boot and seq continue
        agent.start()
        started = agent.wait_started(2)
        assert started["boot"] == before["boot"] + 1, started
        wait_for_seq(receiver, before["next_seq"])  # the second run's first batch
        stop(agent, receiver, data)
    stored = Stored.read(receiver.sink, GW)
    ledger = Ledger.build(fleet, stored)
    ledger.assert_exact()
    assert not ledger.lost, ledger.summary()
    assert_complete(stored.seqs)


# -------------------------------------------------------------- 3. two agents on one data_dir


def test_a_second_agent_on_the_same_data_dir_is_refused(
    tmp_path: Path, broker: Mosquitto, receiver: ReceiverProcess, agents: list[AgentProcess]
) -> None:
    data = tmp_path / "data"
    with MeterFleet([1000, 1000]) as fleet:
        first = new_agent(tmp_path, agents, fleet, broker, data)
        second = new_agent(tmp_path, agents, fleet, broker, data, name="second")
        first.start()
        first.wait_started(1)
        requests_before = fleet.request_count()
        second.start()
        assert wait_until(lambda: not second.alive, 20), tail(second)
        assert second.proc is not None and second.proc.returncode == 2, tail(second)
        assert first.proc is not None
        assert error_lines(second) == [
            f"ssc-agent: data_dir {data} is in use by another agent (pid {first.proc.pid}); "
            "stop it, or give this one its own data_dir"], tail(second)
        assert not second.events("agent_started")
        # the first agent goes on polling (its next slot may be up to an interval away)
        assert wait_until(lambda: fleet.request_count() > requests_before, 5), tail(first)
        assert first.alive, tail(first)
        wait_for_seq(receiver, 1)
        stop(first, receiver, data)
        # SIGKILL releases the lock: the next agent starts
        first.start()
        first.wait_started(2)
        polled = fleet.request_count()
        # killed while it runs: after its second run has polled every meter
        assert wait_until(lambda: fleet.request_count() >= polled + 2 * len(fleet.devices),
                          10), tail(first)
        first.kill()
        second.start()
        second.wait_started(1)
        assert wait_live_batch(receiver, GW, data), tail(second, receiver)
        stop(second, receiver, data)
    stored = Stored.read(receiver.sink, GW)
    ledger = Ledger.build(fleet, stored, kills=first.kills)
    assert not ledger.duplicates and not ledger.phantom, ledger.summary()
    assert not ledger.unexplained, ledger.summary()
    assert_complete(stored.seqs)


# ---------------------------------------------------------- 4. data_dir deleted while running


def test_a_data_dir_deleted_while_running_is_reported_once_and_nothing_is_lost(
    tmp_path: Path, broker: Mosquitto, receiver: ReceiverProcess, agents: list[AgentProcess]
) -> None:
    data = tmp_path / "data"
    with MeterFleet([1000, 1000, 1000]) as fleet:
        agent = new_agent(tmp_path, agents, fleet, broker, data)
        agent.start()
        agent.wait_started(1)
        wait_for_seq(receiver, 1)
        broker.stop()  # a backlog in the store when it goes: it must survive the deletion
        assert wait_sealed_after(data) and store_batches(data) >= 1, tail(agent)
        subprocess.run(["rm", "-rf", str(data)], check=True)
        assert wait_until(lambda: bool(agent.events("buffer_store_available")), 10), tail(agent)
        broker.cont()
        assert wait_live_batch(receiver, GW, data), tail(agent, receiver)
        assert agent.alive, tail(agent)
        stop(agent, receiver, data)
        # the recreated data_dir is locked again
        intruder = new_agent(tmp_path, agents, fleet, broker, data, name="intruder")
        agent.start()
        agent.wait_started(2)
        intruder.start()
        assert wait_until(lambda: not intruder.alive, 20), tail(intruder)
        assert intruder.proc is not None and intruder.proc.returncode == 2
        assert wait_live_batch(receiver, GW, data), tail(agent, receiver)
        stop(agent, receiver, data)
    unavailable = agent.events("buffer_store_unavailable")
    assert [e["reason"] for e in unavailable] == ["data_dir deleted"], unavailable
    assert [e["recreated"] for e in agent.events("buffer_store_available")] == [True]
    assert not agent.events("buffer_seal_failed"), tail(agent)
    stored = Stored.read(receiver.sink, GW)
    ledger = Ledger.build(fleet, stored)
    ledger.assert_exact()
    assert not ledger.lost, ledger.summary()
    assert len(stored_seqs(receiver)) == 1, "the store went on under its own identity"
    assert_complete(stored.seqs)
    reports = stored.events_of("buffer_unavailable")
    assert len(reports) == 1 and "data_dir deleted" in reports[0]["msg"], reports


# ------------------------------------------------------ 5. data_dir read-only while running


def test_a_read_only_data_dir_is_reported_once_held_in_bounds_and_restart_is_one_line(
    tmp_path: Path, broker: Mosquitto, receiver: ReceiverProcess, agents: list[AgentProcess],
    read_only: Callable[[Path], Callable[[], None]],
) -> None:
    data = tmp_path / "data"
    with MeterFleet([1000, 1000, 1000]) as fleet:
        # 60 readings a second; the agent holds 10 batches of 60 in memory while it cannot
        # write, so 16 s read-only loses about 6 s of readings, counted and reported
        agent = new_agent(tmp_path, agents, fleet, broker, data,
                          uplink={"batch_max_readings": 60})
        agent.start()
        agent.wait_started(1)
        wait_for_seq(receiver, 1)
        broker.stop()  # sealed batches wait in the store...
        assert wait_sealed_after(data) and store_batches(data) >= 1, tail(agent)
        undo = read_only(data)
        ro_at = time.time()
        assert wait_until(lambda: bool(agent.events("buffer_store_unavailable")), 5), tail(agent)
        sealed_before = last_sealed_seq(data)
        broker.cont()  # ...and still go out while the data_dir is read-only
        wait_for_seq(receiver, sealed_before)
        # read-only longer than the agent can hold: the input
        time.sleep(max(0.0, ro_at + 16.0 - time.time()))
        assert agent.alive, tail(agent)
        undo()
        assert wait_until(lambda: bool(agent.events("buffer_store_available")), 10), tail(agent)
        assert wait_live_batch(receiver, GW, data), tail(agent, receiver)
        stop(agent, receiver, data)
        # a restart on a read-only data_dir: one line, exit 2
        undo = read_only(data)
        agent.start()
        assert wait_until(lambda: not agent.alive, 20), tail(agent)
        undo()
    assert agent.proc is not None and agent.proc.returncode == 2, tail(agent)
    lines = error_lines(agent)
    assert lines == [f"ssc-agent: data_dir {data}: cannot write agent.lock there (Read-only "
                     "file system); the agent needs a writable data_dir"], tail(agent)
    assert "Traceback" not in agent.log_text()
    assert [e["reason"] for e in agent.events("buffer_store_unavailable")] == [
        "data_dir read-only"]
    assert len(agent.events("buffer_write_failed")) == 1
    assert not agent.events("buffer_seal_failed")
    stored = Stored.read(receiver.sink, GW)
    ledger = Ledger.build(fleet, stored)
    assert not ledger.phantom and not ledger.duplicates, ledger.summary()
    reported = reported_readings(stored)
    assert reported > 0, "16 s read-only with room for 10 s held: expected a reported loss"
    assert len(ledger.lost) == reported, (reported, ledger.summary())
    assert min(k[2] for k in ledger.lost) >= (ro_at - 2.5) * SECOND, ledger.summary()
    assert len(stored.events_of("buffer_unavailable")) == 1, stored.events
    assert_complete(stored.seqs)


# ------------------------------------------- 5b. the outage in the retained status, meanwhile


def sink_buffer_state(receiver: ReceiverProcess) -> str | None:
    """The buffer state of GW's last status in the receiver's sink (None: none or not said)."""
    if not receiver.sink.exists():
        return None
    with SqliteSink.open(f"sqlite:///{receiver.sink}") as db:
        status = db.status_for(GW)
    return None if status is None or status.buffer is None else status.buffer.state


def test_a_read_only_data_dir_is_in_the_retained_status_while_it_lasts(
    tmp_path: Path, broker: Mosquitto, receiver: ReceiverProcess, agents: list[AgentProcess],
    read_only: Callable[[Path], Callable[[], None]],
) -> None:
    data = tmp_path / "data"
    held_bound = 10 * 30  # batcher.HELD_BATCHES batches of batch_max_readings
    with MeterFleet([1000, 1000, 1000]) as fleet, \
            StatusWatch(broker.port, GW, tmp_path / "status.jsonl") as watch:
        # 60 readings a second: the 300 held in memory fill in about 5 s read-only
        agent = new_agent(tmp_path, agents, fleet, broker, data,
                          uplink={"batch_max_readings": 30})
        agent.start()
        agent.wait_started(1)
        assert wait_until(lambda: watch.buffer_states()[-1:] == ["ok"], 10), watch.statuses()
        assert wait_until(lambda: sink_buffer_state(receiver) == "ok", 10)
        undo = read_only(data)
        ro_at = time.time()

        def dropping() -> bool:
            last = watch.statuses()[-1].buffer
            return last is not None and bool(last.dropped_readings)

        # said while it lasts: the platform needs no batch (the store takes none) to know
        assert wait_until(lambda: "unwritable" in watch.buffer_states(), 10), tail(agent)
        assert wait_until(lambda: sink_buffer_state(receiver) == "unwritable", 10), tail(receiver)
        assert wait_until(dropping, 20), (watch.statuses(), tail(agent))
        time.sleep(3.0)  # the input: more flushes while unwritable, and no status for each
        assert agent.alive, tail(agent)
        undo()
        ok_at = time.time()
        assert wait_until(lambda: watch.buffer_states()[-1:] == ["ok"], 10), tail(agent)
        assert wait_until(lambda: sink_buffer_state(receiver) == "ok", 10), tail(receiver)
        time.sleep(2.0)  # the input: flushes after the recovery, and no status for each
        stop(agent, receiver, data)
        assert wait_until(lambda: watch.statuses()[-1].state == "offline", 10)
    statuses = watch.statuses()
    online = [s for s in statuses if s.state == "online"]
    assert all(s.buffer is not None for s in online), statuses
    told = [(s.buffer.state, bool(s.buffer.dropped_readings)) for s in online if s.buffer]
    changes = [t for i, t in enumerate(told) if i == 0 or t != told[i - 1]]
    assert changes == [("ok", False), ("unwritable", False), ("unwritable", True),
                       ("ok", False)], statuses
    # once per change (and once per reconnect), not once per flush (some 10 flushes here)
    reconnects = len(agent.events("uplink_restored"))
    assert len(online) <= 4 + reconnects, (statuses, reconnects)
    unwritable = [s.buffer for s in online if s.buffer and s.buffer.state == "unwritable"]
    for health in unwritable:
        assert health.reason == "data_dir read-only", health
        assert health.since == unwritable[0].since and health.since is not None, statuses
        # found at a flush (every second) after the remount; a loaded machine may be late
        assert (ro_at - 1.0) * SECOND <= health.since <= (ro_at + 5.0) * SECOND, (ro_at, health)
        # the counts are those when the status was made: polls may come in after the flush
        assert health.held_readings is not None
        assert 0 <= health.held_readings <= held_bound + 60, health
    assert (unwritable[-1].held_readings or 0) >= held_bound, unwritable
    # a clean stop's offline says how the buffer is; it was usable again
    assert statuses[-1].state == "offline" and statuses[-1].buffer is not None
    assert statuses[-1].buffer.state == "ok", statuses[-1]
    assert ok_at - ro_at > 5.0
    # the episode is also in the batches, as before: once, with the loss counted
    stored = Stored.read(receiver.sink, GW)
    assert len(stored.events_of("buffer_unavailable")) == 1, stored.events
    ledger = Ledger.build(fleet, stored)
    assert not ledger.phantom and not ledger.duplicates, ledger.summary()
    assert len(ledger.lost) == reported_readings(stored) > 0, ledger.summary()
    assert_complete(stored.seqs)


# --------------------------------------------------------- 6. a data_dir that cannot be made


def test_run_with_a_data_dir_that_cannot_be_created_is_one_line_exit_2(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the data_dir's parent should be")
    data = tmp_path / "not-a-dir" / "data"
    with MeterFleet([1000]) as fleet:
        agent = new_agent(tmp_path, agents, fleet, broker, data)
        agent.start()
        assert wait_until(lambda: not agent.alive, 30), tail(agent)
    assert agent.proc is not None and agent.proc.returncode == 2
    assert agent.log_text().splitlines() == [
        f"ssc-agent: data_dir {data}: cannot create it (Not a directory)"], tail(agent)
