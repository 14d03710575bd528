"""Receivers on a real mosquitto as a platform runs them: several sharing the load through a
shared subscription, and a session created at deploy time that keeps batches published before
any receiver ran."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest

from agent.platform.sink import SqliteSink
from agent.wire import encode_batch
from tests.conftest import Mosquitto
from tests.platform.test_receiver import PREFIX, _batch, receiver

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


async def _publish_batches(broker: Mosquitto, seqs: range, gw: str = "gw-1") -> None:
    """QoS 1 over one connection; returns when the broker acknowledged every batch."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-publisher") as client:
        for seq in seqs:
            await client.publish(f"{PREFIX}/{gw}/batch", encode_batch(_batch(seq, gw)), qos=1)


def _stored(sink: Path, gw: str = "gw-1") -> list[int]:
    with SqliteSink.open(f"sqlite:///{sink}") as db:
        return db.seqs(gw)


async def test_receivers_in_a_group_split_the_batches(mosquitto: Mosquitto,
                                                      tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        receiver(mosquitto, tmp_path / "a", shared_group="sinks", client_id="sink-a") as a,
        receiver(mosquitto, tmp_path / "b", shared_group="sinks", client_id="sink-b") as b,
    ):
        await _publish_batches(mosquitto, range(1, 41))
        await a.wait_for(lambda: a.stats.batches + b.stats.batches >= 40)
    seqs_a, seqs_b = _stored(a.sink_path), _stored(b.sink_path)
    assert seqs_a and seqs_b, (seqs_a, seqs_b)  # both took a share
    assert sorted(seqs_a + seqs_b) == list(range(1, 41))  # everything, nothing twice
    assert a.stats.duplicates == b.stats.duplicates == 0


@pytest.mark.parametrize("group", [None, "sinks"])
async def test_a_session_created_at_deploy_keeps_batches_sent_before_the_receiver_ran(
    mosquitto: Mosquitto, tmp_path: Path, group: str | None
) -> None:
    argv = [sys.executable, "-m", "agent.cli", "receive", "--create-session",
            "--broker", mosquitto.url, "--sink", f"sqlite:///{tmp_path}/received.db",
            "--client-id", "sink-1", *(["--group", group] if group else [])]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "sink-1" in done.stdout
    assert not (tmp_path / "received.db").exists()  # nothing was received yet

    await _publish_batches(mosquitto, range(1, 4))
    async with receiver(mosquitto, tmp_path, client_id="sink-1", shared_group=group) as r:
        await r.wait_for(lambda: r.stats.batches == 3)
    assert _stored(r.sink_path) == [1, 2, 3]


def test_create_session_names_an_unreachable_broker(tmp_path: Path) -> None:
    from tests.conftest import free_port

    argv = [sys.executable, "-m", "agent.cli", "receive", "--create-session",
            "--broker", f"mqtt://127.0.0.1:{free_port()}",
            "--sink", f"sqlite:///{tmp_path}/received.db"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--broker mqtt://127.0.0.1:" in lines[0], done.stderr


async def test_a_retired_member_stores_what_was_queued_for_it_and_gets_nothing_more(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with receiver(mosquitto, tmp_path / "b", shared_group="sinks", client_id="sink-b"):
        pass  # b subscribed once and is gone: its session stays in the group
    async with receiver(mosquitto, tmp_path / "a", shared_group="sinks", client_id="sink-a") as a:
        await _publish_batches(mosquitto, range(1, 11))  # acknowledged: 10 with the broker

        argv = [sys.executable, "-m", "agent.cli", "receive", "--retire-session",
                "--broker", mosquitto.url, "--sink", f"sqlite:///{tmp_path / 'b'}/received.db",
                "--client-id", "sink-b", "--group", "sinks"]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30,
                              check=False)
        assert done.returncode == 0, done.stderr
        drained = re.search(r"retired; (\d+) queued messages stored", done.stdout)
        assert drained, done.stdout
        queued_for_b = int(drained.group(1))
        assert queued_for_b > 0, "mosquitto handed the away member no share"
        await a.wait_for(lambda: a.stats.batches == 10 - queued_for_b)

        await _publish_batches(mosquitto, range(11, 21))
        await a.wait_for(lambda: a.stats.batches == 20 - queued_for_b)
    seqs_a, seqs_b = _stored(a.sink_path), _stored(tmp_path / "b" / "received.db")
    assert len(seqs_b) == queued_for_b and max(seqs_b) <= 10  # nothing after it retired
    assert sorted(seqs_a + seqs_b) == list(range(1, 21))
