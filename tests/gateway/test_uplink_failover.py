"""The uplink with several brokers (a clustered broker tier): it tries them in turn, moves on
to the next one at once when its broker is gone, and waits its backoff only per full round."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.endpoints import parse_broker_url
from agent.gateway.store import BatchStore
from agent.gateway.uplink import Uplink
from agent.mqtt import MqttSettings
from tests.conftest import Mosquitto, free_port
from tests.waiting import wait_until_async

pytestmark = pytest.mark.timeout(60)

# Longer than any wait below: a test that passes did not sit out a backoff.
LONG_BACKOFF = 120.0


def _seal(store: BatchStore) -> None:
    store.seal(lambda seq, ev: b"SSC1\x00x", created=1, n_readings=3, pending_upto=0)


@asynccontextmanager
async def running(urls: list[str], store: BatchStore,
                  wake: asyncio.Event | None = None) -> AsyncIterator[Uplink]:
    brokers = [parse_broker_url(url) for url in urls]
    uplink = Uplink(MqttSettings(brokers[0], "gw-fo", keepalive=1, timeout=3), store,
                    gw="gw-fo", boot=1, topic_prefix="ssc/v1", max_inflight=4,
                    wake=wake or asyncio.Event(), clock=time.time, reconnect_min=LONG_BACKOFF,
                    reconnect_max=LONG_BACKOFF, brokers=brokers)
    task = asyncio.create_task(uplink.run())
    try:
        yield uplink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_dead_first_broker_is_skipped_within_the_round(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    store = BatchStore.open(tmp_path / "buffer.db")
    _seal(store)
    dead = f"mqtt://127.0.0.1:{free_port()}"
    with capture_logs() as logs:
        async with running([dead, mosquitto.url], store) as uplink:
            assert await wait_until_async(lambda: store.stats().batches == 0, 20)
            assert uplink.stats.acknowledged == 1
    connected = [e for e in logs if e["event"] in ("uplink_connected", "uplink_restored")]
    assert connected[0]["broker"] == mosquitto.url
    assert [e["broker"] for e in logs if e["event"] == "uplink_down"] == [dead]


async def test_fails_over_to_the_next_broker_when_its_broker_is_gone(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    first, second = mosquitto_factory(), mosquitto_factory()
    store = BatchStore.open(tmp_path / "buffer.db")
    _seal(store)
    wake = asyncio.Event()
    with capture_logs() as logs:
        async with running([first.url, second.url], store, wake) as uplink:
            assert await wait_until_async(lambda: uplink.stats.acknowledged == 1, 20)
            first.kill()
            assert await wait_until_async(lambda: uplink.stats.connects == 2, 20)
            _seal(store)
            wake.set()  # what the batcher does when it seals
            assert await wait_until_async(lambda: uplink.stats.acknowledged == 2, 20)
    restored = [e for e in logs if e["event"] == "uplink_restored"]
    assert [e["broker"] for e in restored] == [second.url]
    assert store.stats().batches == 0


async def test_a_full_round_of_dead_brokers_waits_the_backoff(tmp_path: Path) -> None:
    store = BatchStore.open(tmp_path / "buffer.db")
    dead = [f"mqtt://127.0.0.1:{free_port()}" for _ in range(3)]
    with capture_logs() as logs:
        async with running(dead, store):
            assert await wait_until_async(
                lambda: any(e["event"] == "uplink_retry_in" for e in logs), 20)
            await asyncio.sleep(0.5)  # time for attempts it must not make while it waits
    tried = [e["broker"] for e in logs if e["event"] in ("uplink_down", "uplink_retry_failed")]
    assert tried == dead  # each once, in order, then the wait
    waits = [e for e in logs if e["event"] == "uplink_retry_in"]
    assert len(waits) == 1 and waits[0]["seconds"] >= LONG_BACKOFF


def test_brokers_must_agree_on_tls(tmp_path: Path) -> None:
    brokers = [parse_broker_url("mqtt://a:1883"), parse_broker_url("mqtts://b:8883")]
    with pytest.raises(ValueError, match="all use TLS"):
        Uplink(MqttSettings(brokers[0], "gw"), BatchStore.open(tmp_path / "b.db"), gw="gw",
               boot=1, topic_prefix="ssc/v1", max_inflight=1, wake=asyncio.Event(),
               clock=time.time, brokers=brokers)
