"""``ssc-agent receive`` into PostgreSQL, against real mosquitto and PostgreSQL servers: bad
settings exit 2 with one line, queued batches go in few transactions, the database stopped
for 30 s mid-stream (then a SIGTERM) and one of two receivers SIGKILLed mid-stream lose
nothing and store nothing twice."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from structlog.testing import capture_logs

from agent.endpoints import parse_broker_url
from agent.platform.receiver import ReceiverSettings, ReceiverStats, run_receiver
from agent.platform.sink.pg import PgSink
from agent.wire import encode_batch
from tests.chaos.harness import read_events
from tests.conftest import Mosquitto, free_port
from tests.platform.conftest import require_postgres
from tests.platform.postgres import PgServer, running_server
from tests.platform.test_receiver import PREFIX, _batch
from tests.waiting import wait_until, wait_until_async

# one PostgreSQL server (session fixture) for every test that needs one: its tests share a worker
pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("postgresql")]

ROOT = Path(__file__).resolve().parents[2]
OUTAGE_SECONDS = 30.0  # how long PostgreSQL stays stopped: the test's input


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("extra", "message"), [
    (["--sink", "postgresql://postgres@127.0.0.1:{port}/x"], "cannot connect"),
    (["--sink", "postgresql://postgres@127.0.0.1:{port}/x", "--sink-password-file",
      "/nonexistent/pw"], "--sink-password-file file /nonexistent/pw cannot be read"),
    (["--sink", "postgresql://ssc:hunter2@127.0.0.1:{port}/x"], "holds a password"),
    (["--sink", "sqlite:///x.db", "--sink-password-file", "/etc/hostname"],
     "only a postgresql:// sink takes a password"),
    (["--sink", "sqlite:///x.db", "--keep-readings", "forever"], "--keep-readings: 'forever'"),
])
def test_bad_sink_settings_exit_2_with_one_line(extra: list[str], message: str) -> None:
    port = str(free_port())  # nothing listens there
    result = _cli("receive", "--broker", f"mqtt://127.0.0.1:{port}",
                  *(a.replace("{port}", port) for a in extra))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert "hunter2" not in result.stderr


async def _publish(broker: Mosquitto, seqs: range, gw: str = "gw-1") -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"pub-{gw}") as client:
        for seq in seqs:
            await client.publish(f"{PREFIX}/{gw}/batch", encode_batch(_batch(seq, gw)), qos=1)


async def test_queued_batches_are_stored_in_few_transactions(
        mosquitto: Mosquitto, pg_url: str) -> None:
    settings = ReceiverSettings(broker=parse_broker_url(mosquitto.url), sink_url=pg_url,
                                topic_prefix=PREFIX, client_id="pg-receiver")

    async def run_until(done: Any) -> list[Any]:
        stop = asyncio.Event()
        with capture_logs() as logs:
            task = asyncio.create_task(run_receiver(settings, stop=stop, stats=ReceiverStats()))
            assert await wait_until_async(
                lambda: any(e["event"] == "mqtt_subscribed" for e in logs) and done(), 30)
            stop.set()
            await task
        return logs

    await run_until(lambda: True)  # the persistent session: the broker queues from now on
    await _publish(mosquitto, range(1, 121))
    with PgSink.open(pg_url) as sink:
        logs = await run_until(lambda: sink.count_readings() >= 360)
        assert sink.count_readings() == 360
        assert sink.seqs("gw-1") == list(range(1, 121))
        # xmin: the transaction that wrote a row; queued batches share transactions
        (transactions,) = sink.select("SELECT count(DISTINCT CAST(xmin AS text)) FROM batches")[0]
        assert transactions < 60, transactions
    assert sum(e["event"] == "batch_stored" for e in logs) == 120


# --------------------------------------------------------------------------- outage


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PgServer]:
    """A server of this module's own: the test stops it."""
    require_postgres()
    with running_server(free_port()) as server:
        yield server


class Receiver:
    """``ssc-agent receive`` as a subprocess, JSON logs in a file."""

    def __init__(self, broker: Mosquitto, sink_url: str, log: Path,
                 client_id: str = "pg-outage", *extra: str) -> None:
        self.log = log
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "--log-json", "receive", "--broker",
                 broker.url, "--sink", sink_url, "--client-id", client_id, *extra],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in read_events(self.log) if e.get("event") == name]

    def subscribed(self) -> bool:
        return bool(self.events("mqtt_subscribed"))

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def test_database_stopped_mid_stream_then_sigterm_loses_nothing(
        own_pg: PgServer, mosquitto: Mosquitto, tmp_path: Path) -> None:
    url = own_pg.url(own_pg.new_database())
    total = 150
    first = Receiver(mosquitto, url, tmp_path / "first.log")
    try:
        assert wait_until(lambda: first.events("mqtt_subscribed"), 30), first.log.read_text()

        def stored() -> int:
            try:
                with own_pg.admin(url.rsplit("/", 1)[1]) as conn:
                    return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
            except Exception:  # the server is stopped
                return -1

        async def publish_slowly(seqs: range) -> None:
            async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="pub") as client:
                for seq in seqs:
                    await client.publish(f"{PREFIX}/gw-1/batch", encode_batch(_batch(seq)), qos=1)
                    await asyncio.sleep(0.02)

        asyncio.run(publish_slowly(range(1, 31)))
        assert wait_until(lambda: stored() == 90, 20)
        own_pg.stop()
        asyncio.run(publish_slowly(range(31, 61)))  # they wait, unacknowledged
        time.sleep(OUTAGE_SECONDS)  # the outage's length is the input
        own_pg.start()
        assert wait_until(lambda: stored() == 180, 60), first.log.read_text()[-3000:]
        assert len(first.events("sink_unavailable")) == 1
        assert len(first.events("sink_restored")) == 1
        asyncio.run(_publish(mosquitto, range(61, 101)))  # as fast as it goes
        assert wait_until(lambda: stored() > 180, 20)
        # usually mid-stream: what it committed is acknowledged, the rest comes again
        assert first.terminate() == 0
        assert first.events("receiver_stopped")
        asyncio.run(publish_slowly(range(101, total + 1)))  # queued for the session
        second = Receiver(mosquitto, url, tmp_path / "second.log")
        try:
            assert wait_until(lambda: stored() == 3 * total, 60), second.log.read_text()[-3000:]
            assert second.terminate() == 0
        finally:
            if second.proc.poll() is None:
                second.proc.kill()
        # nothing the first one committed came again as a duplicate: it was acknowledged
        assert second.events("batch_duplicate") == []
        with own_pg.admin(url.rsplit("/", 1)[1]) as conn:
            seqs = [r[0] for r in conn.execute("SELECT seq FROM batches ORDER BY seq")]
        assert seqs == list(range(1, total + 1))
    finally:
        if first.proc.poll() is None:
            first.proc.kill()


@pytest.mark.parametrize("group", [False, True], ids=["every-batch-to-both", "shared"])
def test_two_receivers_store_each_batch_once_and_no_false_gap(
        pg_server: PgServer, mosquitto: Mosquitto, tmp_path: Path, group: bool) -> None:
    """Two receivers with subscriptions of their own both get every batch and race on each;
    two in a ``--group`` store a gateway's consecutive batches at the same time. Either way
    the database keeps one copy of each, and no gap opens for a batch the other one had
    not committed yet."""
    db = pg_server.new_database()
    extra = ("--group", "racers") if group else ()

    def start() -> list[Receiver]:
        started = [Receiver(mosquitto, pg_server.url(db), tmp_path / f"r{i}.log", f"racer-{i}",
                            *extra) for i in (1, 2)]
        for r in started:
            assert wait_until(r.subscribed, 30), r.log.read_text()
        return started

    for r in start():  # their sessions: batches are queued for them from now on
        assert r.terminate() == 0
    total = 200

    async def publish_all() -> None:
        await asyncio.gather(*(_publish(mosquitto, range(1, total + 1), gw)
                               for gw in ("gw-1", "gw-2")))

    asyncio.run(publish_all())
    # both start with a queue: they store big groups at the same time
    receivers = start()
    try:
        assert wait_until(
            lambda: sum(len(r.events("batch_stored")) + len(r.events("batch_duplicate"))
                        for r in receivers) == (1 if group else 2) * 2 * total, 60)
        for r in receivers:
            assert r.terminate() == 0
        stored = [len(r.events("batch_stored")) for r in receivers]
        assert sum(stored) == 2 * total, stored
        with pg_server.admin(db) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 2 * total * 3
            assert conn.execute("SELECT count(*) FROM seq_gaps").fetchone()[0] == 0
            seqs = conn.execute("SELECT gw, count(*), min(seq), max(seq) FROM batches"
                                " GROUP BY gw ORDER BY gw").fetchall()
        assert seqs == [("gw-1", total, 1, total), ("gw-2", total, 1, total)]
    finally:
        for r in receivers:
            if r.proc.poll() is None:
                r.proc.kill()


def test_one_of_two_receivers_sigkilled_mid_stream_loses_and_duplicates_nothing(
        pg_server: PgServer, mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Two receivers share the work (``--group``) while two gateways publish; one is SIGKILLed
    while it stores and comes back under its client id: what it had not committed comes again
    from its session, and every reading is stored exactly once."""
    db = pg_server.new_database()
    url = pg_server.url(db)
    total = 300

    def receiver(i: int) -> Receiver:
        started = Receiver(mosquitto, url, tmp_path / f"k{i}.log", f"killed-{i}",
                           "--group", "pair")
        assert wait_until(started.subscribed, 30), started.log.read_text()
        return started

    def stored() -> int:
        with pg_server.admin(db) as conn:
            return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])

    pair = [receiver(1), receiver(2)]
    killed = 0
    try:
        async def publish_while_killing() -> int:
            async def gateways() -> None:
                async def slow(gw: str) -> None:
                    async with aiomqtt.Client("127.0.0.1", mosquitto.port,
                                              identifier=f"pub-{gw}") as client:
                        for seq in range(1, total + 1):
                            await client.publish(f"{PREFIX}/{gw}/batch",
                                                 encode_batch(_batch(seq, gw)), qos=1)
                            await asyncio.sleep(0.005)

                await asyncio.gather(slow("gw-1"), slow("gw-2"))

            publishing = asyncio.create_task(gateways())
            # the input: SIGKILL while both are storing, a third of the way in
            assert await wait_until_async(lambda: stored() >= total * 3 * 2 // 3, 60)
            pair[0].proc.kill()
            pair[0].proc.wait(10)
            before = stored()
            await publishing
            return before

        at_kill = asyncio.run(publish_while_killing())
        killed = len(pair[0].events("batch_stored"))
        assert 0 < at_kill < total * 3 * 2, at_kill  # mid-stream, with work done by both
        pair[0] = receiver(1)  # its session kept what was queued or unacknowledged for it
        assert wait_until(lambda: stored() == total * 3 * 2, 60), (
            stored(), pair[0].log.read_text()[-2000:])
        for r in pair:
            assert r.terminate() == 0
    finally:
        for r in pair:
            if r.proc.poll() is None:
                r.proc.kill()
    assert killed > 0  # the killed one had stored part of the stream
    with pg_server.admin(db) as conn:
        rows = conn.execute("SELECT gw, count(*), count(DISTINCT seq), min(seq), max(seq) "
                            "FROM batches GROUP BY gw ORDER BY gw").fetchall()
        readings = conn.execute("SELECT count(*), count(DISTINCT (gw, dev, pt, t)) "
                                "FROM readings").fetchone()
        gaps = conn.execute("SELECT count(*) FROM seq_gaps").fetchone()[0]
    assert rows == [("gw-1", total, total, 1, total), ("gw-2", total, total, 1, total)]
    assert readings == (total * 3 * 2, total * 3 * 2)  # none lost, none twice
    assert gaps == 0
