"""Chaos on the clustered broker tier: two gateways (``ssc-agent run``) publish over MQTT to
different nodes of a real 3-node NATS cluster, each listing every node; two receivers
(``receive --source nats://…``) share one durable JetStream consumer and one sink. One NATS
node, the one the MQTT stream's leader and the first gateway are on, is SIGKILLed mid-stream:
nothing polled may be lost and nothing stored twice (docs/platform.md §3)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import pytest

from agent.platform.jetstream import STREAM
from tests.chaos.harness import (
    ROOT,
    AgentProcess,
    Key,
    Ledger,
    MeterFleet,
    ReceiverProcess,
    Stored,
    last_sealed_seq,
    sleep_to_quiet_point,
    write_agent_config,
)
from tests.nats_cluster import NatsCluster, running_cluster
from tests.waiting import wait_until

# one 3-node NATS cluster at a time (module fixture): the NATS modules share a worker
pytestmark = [pytest.mark.timeout(180), pytest.mark.xdist_group("nats")]

GROUP = "chaos"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with running_cluster(tmp_path_factory.mktemp("nats")) as nodes:
        yield nodes


class SourceReceiver(ReceiverProcess):
    """``ssc-agent receive --source nats://…`` as a subprocess."""

    def __init__(self, servers: str, sink: Path, log: Path) -> None:
        super().__init__(servers, sink, log)

    def start(self, *, wait: bool = True) -> None:
        """Start it and wait until it pulls from the consumer."""
        self._spawn(["--log-json", "receive", "--source", self.broker_url, "--group", GROUP,
                     "--sink", f"sqlite:///{self.sink}"])
        if wait:
            assert wait_until(lambda: bool(self.events("jetstream_subscribed")), 20), (
                self.log_text()[-3000:])


def _kill(process: ReceiverProcess | AgentProcess) -> None:
    if process.alive:
        process.kill()


def _stored_upto(receiver: ReceiverProcess, gw: str, seq: int) -> bool:
    return receiver.top_seq(gw) >= seq


def stream_leader(cluster: NatsCluster) -> str:
    import nats

    async def ask() -> str:
        nc = await nats.connect(cluster.urls.split(","))
        try:
            info = await nc.jetstream().stream_info(STREAM)
        finally:
            await nc.close()
        assert info.cluster is not None and info.cluster.leader
        return str(info.cluster.leader)

    return asyncio.run(ask())


def test_nats_node_sigkill_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, cluster: NatsCluster
) -> None:
    # Deploy time: the first MQTT connection makes NATS create its MQTT streams, then the
    # receivers' durable consumer is created before any gateway publishes.
    subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(cluster.nodes[0].mqtt_port),
                    "-t", "deploy/probe", "-C", "1", "-W", "1"], check=False, timeout=10)
    created = subprocess.run(
        [sys.executable, "-m", "agent.cli", "receive", "--create-session", "--source",
         cluster.urls, "--group", GROUP, "--sink", "sqlite:///unused.db"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert created.returncode == 0, created.stderr

    victim = cluster.node(stream_leader(cluster))
    others = [n for n in cluster.nodes if n is not victim]
    sink = tmp_path / "received.db"
    receivers = [SourceReceiver(cluster.urls, sink, tmp_path / f"receiver-{i}.log")
                 for i in (1, 2)]
    gateways = {  # gw-a starts on the victim, gw-b on another node; both list all three
        "gw-a": [victim.mqtt_url, *(n.mqtt_url for n in others)],
        "gw-b": [others[0].mqtt_url, others[1].mqtt_url, victim.mqtt_url],
    }
    agents: dict[str, AgentProcess] = {}
    with ExitStack() as stack:
        fleets = {gw: stack.enter_context(MeterFleet([500, 500], prefix=f"{gw}-m"))
                  for gw in gateways}
        for receiver in receivers:
            receiver.start()
            stack.callback(_kill, receiver)
        for gw, brokers in gateways.items():
            config = write_agent_config(
                tmp_path / f"{gw}.toml", gw=gw, data_dir=tmp_path / f"{gw}-data",
                broker_url=brokers[0], devices=fleets[gw].devices,
                uplink={"broker": brokers, "batch_max_age": "1 s", "flush_interval": "500 ms"})
            agents[gw] = AgentProcess(config, tmp_path / f"{gw}.log")
            agents[gw].start()
            stack.callback(_kill, agents[gw])
        for gw in gateways:
            assert wait_until(partial(_stored_upto, receivers[0], gw, 2), 30), (
                agents[gw].log_text()[-3000:])

        victim.kill()  # mid-stream: both gateways keep publishing batches every second

        assert wait_until(lambda: bool(agents["gw-a"].events("uplink_restored")), 30), (
            agents["gw-a"].log_text()[-3000:])
        for gw in gateways:  # batches sealed after the kill are stored
            after = last_sealed_seq(tmp_path / f"{gw}-data") + 2
            assert wait_until(partial(_stored_upto, receivers[0], gw, after), 40), (
                agents[gw].log_text()[-3000:])
        sleep_to_quiet_point(0.5)
        for agent in agents.values():
            assert agent.terminate() == 0, agent.log_text()[-3000:]
            assert agent.events("agent_stopped")[-1]["unsent_batches"] == 0
        for gw in gateways:
            receivers[0].wait_for_seq(gw, last_sealed_seq(tmp_path / f"{gw}-data"))
        for receiver in receivers:
            assert receiver.terminate() == 0

    # each batch was stored by exactly one receiver, once (a redelivery is a batch_duplicate)
    stored_by = Counter((e["gw"], e["seq"]) for r in receivers for e in r.events("batch_stored"))
    assert stored_by and max(stored_by.values()) == 1, stored_by.most_common(3)
    for gw, fleet in fleets.items():
        stored = Stored.read(sink, gw)
        assert stored.seqs == list(range(1, stored.seqs[-1] + 1)), stored.seqs
        assert stored.seqs[-1] == last_sealed_seq(tmp_path / f"{gw}-data")
        assert not stored.gaps, stored.gaps
        received: Counter[Key] = stored.keys
        ledger = Ledger.of(fleet.expected(), received)
        ledger.assert_exact()
        assert not ledger.lost, ledger.summary()
    gw_a = agents["gw-a"]
    restored = gw_a.events("uplink_restored")
    assert restored and restored[0]["broker"] != victim.mqtt_url
