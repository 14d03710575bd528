"""The whole chain with real parts: pymodbus simulator → `ssc-agent run` (a subprocess) → real
mosquitto → receiver → SQLite. Values, types and timestamps must arrive exactly; a SIGKILLed
agent resends what it had stored and loses nothing it had committed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.endpoints import parse_broker_url
from agent.platform.receiver import ReceiverSettings, ReceiverStats, run_receiver
from agent.platform.sink import SqliteSink
from agent.profiles import load_profile
from drivers.modbus.config import PointType
from drivers.modbus.simulator import SimulatorServer, serve
from tests.chaos.harness import (
    last_sealed_seq,
    pending_rows,
    polled_slots,
    request_recorder,
    store_batches,
)
from tests.conftest import Mosquitto, free_port
from tests.waiting import wait_until_async

GW = "gw-e2e"
ROOT = Path(__file__).resolve().parent.parent


def write_config(tmp: Path, broker: Mosquitto, meter_port: int, interval: str) -> Path:
    config = tmp / "agent.toml"
    config.write_text(
        f'[gateway]\nid = "{GW}"\ndata_dir = "{tmp / "data"}"\n\n'
        f'[uplink]\nbroker = "{broker.url}"\nbatch_max_age = "3 s"\npublish_timeout = "3 s"\n'
        f'keepalive = "2 s"\n\n'
        f'[[devices]]\nname = "meter-1"\ndriver = "modbus"\n'
        f'endpoint = "tcp://127.0.0.1:{meter_port}"\nprofile = "ssc-demo-meter"\n'
        f'interval = "{interval}"\n'
    )
    return config


def start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "--log-json", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=log.open("ab"), cwd=ROOT,
    )


def stop_agent(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def receiving(broker: Mosquitto, sink: Path) -> AsyncIterator[ReceiverStats]:
    stats = ReceiverStats()
    stop = asyncio.Event()
    settings = ReceiverSettings(broker=parse_broker_url(broker.url), sink_url=f"sqlite:///{sink}",
                                client_id="e2e-receiver")
    task = asyncio.create_task(run_receiver(settings, stop=stop, stats=stats))
    try:
        yield stats
    finally:
        stop.set()
        await task


def fed_ms(slots: list[float]) -> set[int]:
    """The slots (epoch ms) whose values the feeder wrote ahead of the poll."""
    return {round(s * 1000) for s in slots}


def f32(value: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


async def feed_values_ahead(server: SimulatorServer, interval: float, slots: list[float]) -> None:
    """Write each slot's values half an interval before the agent polls it."""
    while True:
        now = time.time()
        slot = (math.floor(now / interval) + 1) * interval
        await asyncio.sleep(max(0.0, slot - interval / 2 - now))
        await server.update(slot)
        slots.append(slot)
        await asyncio.sleep(interval / 2 + 0.01)


async def test_every_polled_value_arrives_with_its_value_type_and_time(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    profile = load_profile("ssc-demo-meter")
    port = free_port()
    requests: list[float] = []
    server = await serve({1: profile}, "127.0.0.1", port, update_interval=3600.0,
                         trace_pdu=request_recorder(requests))
    meter = server.meters[1]
    interval = 2.0
    slots: list[float] = []
    feeder = asyncio.create_task(feed_values_ahead(server, interval, slots))
    sink = tmp_path / "received.db"
    config = write_config(tmp_path, mosquitto, port, "2 s")
    log = tmp_path / "agent.log"
    try:
        async with receiving(mosquitto, sink) as stats:
            agent = start_agent(config, log)
            try:
                # three slots polled after the feeder wrote their values, one more than the
                # comparison below needs; the fourth poll's first request shows that the third
                # poll is complete (a device's polls run one after the other), so the SIGTERM
                # cannot cut it short (on a busy machine the agent's start can leave no
                # earlier slot to make up for a cut poll)
                assert await wait_until_async(
                    lambda: len(polled_slots(requests, 2000) & fed_ms(slots)) >= 4, 30
                ), log.read_text()
            finally:
                stop_agent(agent)
            assert agent.returncode == 0, log.read_text()
            stopped = [e for e in log_events(log) if e.get("event") == "agent_stopped"]
            assert stopped and stopped[0]["unsent_batches"] == 0, log.read_text()
            # every batch the agent sealed (and sent: unsent_batches is 0) is stored before
            # the receiver stops; under load the last one may still be on its way
            sealed = last_sealed_seq(tmp_path / "data")
            assert await wait_until_async(lambda: stats.batches >= sealed, 20), (stats, sealed)
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        await server.stop()

    with SqliteSink.open(f"sqlite:///{sink}") as db:
        readings = db.readings_for(GW)
    assert readings, "the receiver stored nothing"
    times = sorted({r.t for r in readings})
    assert len(times) >= 3
    assert all(t % 2000 == 0 for t in times), times
    assert times == list(range(times[0], times[-1] + 1, 2000)), "a poll slot is missing"
    types = {p.name: p.type for p in meter.points}
    scaled = {p.name for p in meter.points if p.scale != 1.0 or p.offset != 0.0}
    assert len(readings) == len(times) * len(types)
    assert Counter((r.device, r.point, r.t) for r in readings).most_common(1)[0][1] == 1
    checked = 0
    for r in readings:
        assert r.device == "meter-1"
        assert r.quality == 0, r
        if r.t / 1000 not in slots:
            continue  # polled before the feeder wrote this slot's values
        expected = meter.values_at(r.t / 1000)[r.point]
        kind = types[r.point]
        if kind in (PointType.F32,):
            assert isinstance(r.value, float), r
            assert r.value == f32(float(expected)), (r, expected)
        elif r.point in scaled:
            assert isinstance(r.value, float), r
            assert r.value == pytest.approx(expected, rel=1e-9, abs=1e-9), (r, expected)
        else:
            assert isinstance(r.value, int) and not isinstance(r.value, bool), r
            assert r.value == expected, (r, expected)
        checked += 1
    assert checked >= 2 * len(types), f"only {checked} readings could be compared"


async def test_sigkilled_agent_resends_its_backlog_and_loses_nothing_committed(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    profile = load_profile("ssc-demo-meter")
    port = free_port()
    requests: list[float] = []
    server = await serve({1: profile}, "127.0.0.1", port, update_interval=1.0,
                         trace_pdu=request_recorder(requests))
    data = tmp_path / "data"
    sink = tmp_path / "received.db"
    config = write_config(tmp_path, mosquitto, port, "1 s")
    log = tmp_path / "agent.log"
    try:
        async with receiving(mosquitto, sink) as stats:
            agent = start_agent(config, log)
            await wait_until_async(lambda: stats.batches >= 1, 15)
            assert stats.batches >= 1, log.read_text()
            # The broker stalls (SIGSTOP: TCP stays up, nothing is acknowledged): a batch
            # sealed in the stall stays in the store; then the agent dies without warning and
            # the broker comes back.
            mosquitto.stop()
            sealed_before_stall = last_sealed_seq(data)
            assert await wait_until_async(
                lambda: last_sealed_seq(data) > sealed_before_stall and store_batches(data) >= 1,
                15), log.read_text()
            # Kill while the open batch has committed rows (between two seals), so the
            # restart has something to take back: that is what this test is about.
            assert await wait_until_async(lambda: pending_rows(data) > 0, 10), log.read_text()
            killed_at = time.time()
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait()
            mosquitto.cont()
            await asyncio.sleep(1.0)  # the agent stays down a while, as a crashed one does
            restarted_at = time.time()
            agent = start_agent(config, log)
            # the backlog is delivered and the new run polls two slots past the restart window
            assert await wait_until_async(
                lambda: store_batches(data) == 0
                and len({t for t in polled_slots(requests, 1000)
                         if t >= (restarted_at + 2) * 1000}) >= 2,
                30), log.read_text()
            stop_agent(agent)
            assert agent.returncode == 0, log.read_text()
            with SqliteSink.open(f"sqlite:///{sink}") as db:
                # everything the agent sealed, up to the batch its stop sealed, is stored
                await wait_until_async(
                    lambda: stats.batches >= 3
                    and max(db.seqs(GW), default=0) >= last_sealed_seq(data), 10)
    finally:
        await server.stop()

    with SqliteSink.open(f"sqlite:///{sink}") as db:
        readings = db.readings_for(GW)
        seqs = db.seqs(GW)
        gaps = db.gaps(GW)
    per_key = Counter((r.device, r.point, r.t) for r in readings)
    assert max(per_key.values()) == 1, "a reading was stored twice"
    assert stats.batches >= 3
    assert seqs == list(range(seqs[0], seqs[-1] + 1)) and not gaps, (seqs, gaps)
    points = {str(p["name"]) for p in profile.points}
    times = sorted({r.t for r in readings})
    # Everything polled up to one flush interval (1 s) before the kill was committed, so it
    # must have arrived; so must everything after the restart.
    before = [t for t in times if t <= (killed_at - 1.5) * 1000]
    after = [t for t in times if t >= (restarted_at + 2) * 1000]
    assert before and after
    assert before == list(range(before[0], before[-1] + 1000, 1000)), "lost before the kill"
    assert before[-1] >= (killed_at - 3.0) * 1000, "the last committed second did not arrive"
    assert after == list(range(after[0], after[-1] + 1000, 1000)), "lost after the restart"
    for t in before + after:
        assert {r.point for r in readings if r.t == t} == points
    starts = [e for e in log_events(log) if e.get("event") == "agent_started"]
    assert [e["boot"] for e in starts] == [1, 2]
    # the open batch's committed readings were taken back after the kill
    recovered = starts[1]["recovered_readings"]
    assert isinstance(recovered, int) and recovered > 0, starts[1]


def log_events(path: Path) -> list[dict[str, object]]:
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return events
