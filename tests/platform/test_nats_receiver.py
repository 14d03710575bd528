"""Receivers on a real 3-node NATS cluster (MQTT + JetStream): gateways' QoS 1 batches published
over MQTT to any node are read through one durable JetStream consumer the receivers share."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from agent.platform.jetstream import STREAM, consumer_subject, parse_source, topic_of
from agent.platform.receiver import ReceiverSettings, ReceiverStats, run_receiver
from agent.platform.sink import SqliteSink
from agent.wire import encode_batch
from tests.nats_cluster import NatsCluster, running_cluster
from tests.platform.test_receiver import PREFIX, _batch
from tests.waiting import wait_until_async

# one 3-node NATS cluster at a time (module fixture): the NATS modules share a worker
pytestmark = [pytest.mark.timeout(90), pytest.mark.xdist_group("nats")]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with running_cluster(tmp_path_factory.mktemp("nats")) as nodes:
        yield nodes


async def _publish(port: int, gw: str, seqs: range) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"pub-{gw}") as client:
        for seq in seqs:
            await client.publish(f"{PREFIX}/{gw}/batch", encode_batch(_batch(seq, gw)), qos=1)


def _create_consumer(cluster: NatsCluster, group: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "receive", "--create-session", "--source",
         cluster.urls, "--group", group, "--sink", "sqlite:///unused.db"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)


async def test_two_receivers_share_one_consumer_and_store_everything_once(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    async with aiomqtt.Client("127.0.0.1", cluster.nodes[0].mqtt_port, identifier="first"):
        pass  # the first MQTT connection makes NATS create its MQTT streams
    done = _create_consumer(cluster, "rx-share")
    assert done.returncode == 0, done.stderr
    assert consumer_subject(PREFIX) in done.stdout

    # published before any receiver runs: kept for the consumer
    await _publish(cluster.nodes[0].mqtt_port, "gw-a", range(1, 21))
    await _publish(cluster.nodes[1].mqtt_port, "gw-b", range(1, 21))

    stop = asyncio.Event()
    stats = [ReceiverStats(), ReceiverStats()]
    sinks = [tmp_path / "a.db", tmp_path / "b.db"]
    tasks = [asyncio.create_task(run_receiver(ReceiverSettings(
        broker=None, nats_servers=tuple(cluster.urls.split(",")), sink_url=f"sqlite:///{sink}",
        topic_prefix=PREFIX, shared_group="rx-share"), stop=stop, stats=s))
        for sink, s in zip(sinks, stats, strict=True)]
    await _publish(cluster.nodes[2].mqtt_port, "gw-a", range(21, 41))
    assert await wait_until_async(lambda: sum(s.batches for s in stats) >= 60, 30)
    stop.set()
    async with asyncio.timeout(20):  # a receiver told to stop stops
        await asyncio.gather(*tasks)

    for gw in ("gw-a", "gw-b"):
        stored: list[int] = []
        for sink in sinks:
            with SqliteSink.open(f"sqlite:///{sink}") as db:
                stored += db.seqs(gw)
        assert sorted(stored) == list(range(1, 41 if gw == "gw-a" else 21)), gw
    assert sum(s.duplicates for s in stats) == 0
    assert sum(s.rejected for s in stats) == 0


async def test_a_batch_left_unacknowledged_is_delivered_again(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    async with aiomqtt.Client("127.0.0.1", cluster.nodes[0].mqtt_port, identifier="first"):
        pass
    nc = await nats.connect(cluster.urls.split(","))
    try:
        js = nc.jetstream()
        # the consumer as the receivers find it, with a 1 s ack wait instead of 30 s
        await js.add_consumer(STREAM, ConsumerConfig(
            durable_name="rx-again", ack_policy=AckPolicy.EXPLICIT, ack_wait=1.0,
            filter_subject=consumer_subject(PREFIX)))
        await _publish(cluster.nodes[1].mqtt_port, "gw-r", range(1, 4))
        # a receiver that fetched the first batch and died before its commit
        taken = await (await js.pull_subscribe_bind("rx-again", stream=STREAM)).fetch(1, 5)
        assert [topic_of(m.subject) for m in taken] == [f"{PREFIX}/gw-r/batch"]
    finally:
        await nc.close()

    stop = asyncio.Event()
    stats = ReceiverStats()
    task = asyncio.create_task(run_receiver(ReceiverSettings(
        broker=None, nats_servers=tuple(cluster.urls.split(",")),
        sink_url=f"sqlite:///{tmp_path}/r.db", topic_prefix=PREFIX, shared_group="rx-again"),
        stop=stop, stats=stats))
    assert await wait_until_async(lambda: stats.batches == 3, 30)
    stop.set()
    async with asyncio.timeout(20):
        await task
    with SqliteSink.open(f"sqlite:///{tmp_path}/r.db") as db:
        assert db.seqs("gw-r") == [1, 2, 3]


async def test_the_mqtt_stream_is_replicated_on_three_nodes(cluster: NatsCluster) -> None:
    import nats

    async with aiomqtt.Client("127.0.0.1", cluster.nodes[1].mqtt_port, identifier="probe"):
        pass
    nc = await nats.connect(cluster.urls.split(","))
    try:
        info = await nc.jetstream().stream_info(STREAM)
    finally:
        await nc.close()
    assert info.config.num_replicas == 3


def test_create_session_names_a_missing_cluster(tmp_path: Path) -> None:
    from tests.conftest import free_port

    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "receive", "--create-session", "--source",
         f"nats://127.0.0.1:{free_port()}", "--sink", f"sqlite:///{tmp_path}/x.db"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "cannot connect" in done.stderr, done.stderr


def test_source_without_the_nats_client_says_what_to_install(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['nats'] = None; from agent.cli import main; "
            f"sys.exit(main(['receive', '--source', 'nats://127.0.0.1:4222', '--sink', "
            f"'sqlite:///{tmp_path}/x.db']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "ssc-agent: --source: needs the NATS client: pip install 'ssc-edge-agent[platform]' "
        "(nats-py), or use --broker"]


@pytest.mark.parametrize(("text", "message"), [
    ("", "write nats://"),
    ("nats://a:4222,", "write nats://"),
    ("mqtt://a:1883", "element 1 ('mqtt://a:1883'): a source URL starts with nats://"),
    ("nats://a:4222,nats://u:p@b:4222", "element 2"),
    ("nats://a:4222,tls://b:4222", "mixes nats:// and tls://"),
    ("nats://a:99999", "the port must be"),
    ("nats://a:4222/x", "only a host and a port"),
])
def test_bad_sources_are_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_source(text)


def test_sources_and_subjects() -> None:
    assert parse_source("nats://a:4222, nats://b:4223") == ("nats://a:4222", "nats://b:4223")
    assert consumer_subject("ssc/v1") == "$MQTT.msgs.ssc.v1.>"
    assert topic_of("$MQTT.msgs.ssc.v1.gw-1.batch") == "ssc/v1/gw-1/batch"


async def test_health_summaries_through_jetstream_are_stored(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """The consumer takes every topic under the prefix: a gateway's retained health summary
    (QoS 1) reaches the receiver and is stored, not set aside as a bad topic."""
    from agent.wire import HealthSummary, encode_health

    async with aiomqtt.Client("127.0.0.1", cluster.nodes[0].mqtt_port, identifier="first-h"):
        pass
    done = _create_consumer(cluster, "rx-health")
    assert done.returncode == 0, done.stderr
    health = encode_health(HealthSummary(
        gw="gw-h", boot=1, t=7_000, version="0.9", devices_up=0, devices_down=0,
        devices_pending=0, buffer_state="ok", buffer_batches=0, buffer_readings=0,
        buffer_bytes=0, buffer_oldest_age_s=None, buffer_dropped_readings=0,
        uplink_in_flight=0, uplink_last_ack_age_s=None, kpis_open=0, kpis_closed=0))
    async with aiomqtt.Client("127.0.0.1", cluster.nodes[1].mqtt_port, identifier="gw-h") as c:
        # remote configuration under the same prefix: passed over, not set aside as bad topics
        await c.publish(f"{PREFIX}/gw-h/config/set", b'{"v":1}', qos=1, retain=True)
        await c.publish(f"{PREFIX}/gw-h/config/state", b'{"state":"applied"}', qos=1)
        await c.publish(f"{PREFIX}/gw-h/health", health, qos=1, retain=True)
    stop = asyncio.Event()
    stats = ReceiverStats()
    sink = tmp_path / "h.db"
    task = asyncio.create_task(run_receiver(ReceiverSettings(
        broker=None, nats_servers=tuple(cluster.urls.split(",")), sink_url=f"sqlite:///{sink}",
        topic_prefix=PREFIX, shared_group="rx-health"), stop=stop, stats=stats))
    try:
        assert await wait_until_async(
            lambda: stats.health_summaries == 1 and stats.config_messages == 2, 30), stats
    finally:
        stop.set()
        async with asyncio.timeout(20):
            await task
    assert stats.rejected == 0
    with SqliteSink.open(f"sqlite:///{sink}") as db:
        assert db.select("SELECT gw, t FROM health") == [("gw-h", 7_000)]
