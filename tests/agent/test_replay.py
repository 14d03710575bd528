"""Backlog replay after an outage: oldest first, paced, live batches interleaved (live_first)
or strictly in order (fifo); against a real mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from pathlib import Path

import pytest

from agent.endpoints import parse_broker_url
from agent.gateway.store import BatchStore
from agent.gateway.uplink import ReplayPacer, Uplink
from agent.mqtt import MqttSettings
from agent.readings import Event
from tests.conftest import Mosquitto
from tests.waiting import wait_until_async


def test_pacer_allows_rate_per_second_after_a_one_second_burst() -> None:
    now = [0.0]
    pacer = ReplayPacer(4.0, lambda: now[0])
    assert [pacer.take() for _ in range(5)] == [True, True, True, True, False]
    assert pacer.wait_time() == pytest.approx(0.25)
    now[0] += 0.25
    assert pacer.take() and not pacer.take()
    now[0] += 10
    assert sum(pacer.take() for _ in range(10)) == 4  # the burst is capped at one second


def seal(store: BatchStore, tag: bytes) -> int:
    def build(seq: int, events: list[Event]) -> bytes:
        return b"SSC1\x00" + tag + b"-%d" % seq

    seq = store.seal(build, created=1, n_readings=1, pending_upto=0)
    assert seq is not None
    return seq


@pytest.mark.parametrize("order", ["live_first", "fifo"])
async def test_backlog_is_paced_and_live_batches_interleave(
    tmp_path: Path, mosquitto: Mosquitto, order: str
) -> None:
    store = BatchStore.open(tmp_path / "b.db")
    backlog = [seal(store, b"old") for _ in range(30)]
    # A persistent QoS 1 session, subscribed before anything is published (-E: exit on
    # SUBACK), so the counting subscriber misses nothing however slowly it starts.
    sub_args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-t",
                "ssc/v1/gw/batch", "-q", "1", "-c", "-i", f"replay-{order}"]
    subprocess.run([*sub_args, "-E"], check=True, timeout=10)
    sub = subprocess.Popen([*sub_args, "-C", "36", "-W", "30"], stdout=subprocess.PIPE,
                           text=True)
    wake = asyncio.Event()
    uplink = Uplink(MqttSettings(parse_broker_url(mosquitto.url), "gw"), store, gw="gw", boot=1,
                    topic_prefix="ssc/v1", max_inflight=1, wake=wake, clock=time.time,
                    replay_rate=10.0, replay_order=order)
    started = time.monotonic()
    task = asyncio.create_task(uplink.run())
    try:
        await asyncio.sleep(0.6)
        live = [seal(store, b"new") for _ in range(6)]
        wake.set()
        out, _ = await asyncio.to_thread(sub.communicate)
        # the subscriber has every batch; the broker's last PUBACK to the uplink may still be
        # on its way, and a batch is deleted only once it is in (asserted below)
        await wait_until_async(lambda: store.stats().batches == 0, 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    elapsed = time.monotonic() - started
    got = [line.strip().removeprefix("SSC1\x00") for line in out.splitlines() if line.strip()]
    assert len(got) == 36
    olds = [g for g in got if g.startswith("old")]
    assert olds == [f"old-{s}" for s in backlog], "the backlog goes oldest first"
    first_live = min(got.index(f"new-{s}") for s in live)
    if order == "live_first":
        assert first_live < 25, got  # live batches did not wait for the whole backlog
    else:
        assert first_live == 30, got
    # 30 backlog batches at 10/s after a 10-batch burst: at least ~2 s
    assert elapsed >= 1.8, elapsed
    assert store.stats().batches == 0
