"""The receiver against a real mosquitto, fed by mosquitto_pub: store, dedup, reject, gaps."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.endpoints import parse_broker_url
from agent.platform.receiver import (
    ReceiverSettings,
    ReceiverStats,
    is_sink_fault,
    run_receiver,
    subscription_topics,
)
from agent.platform.sink import (
    REJECTED_KEEP_BYTES,
    REJECTED_KEEP_ROWS,
    REJECTED_TEXT_CHARS,
    SqliteSink,
    StoreOutcome,
)
from agent.wire import Batch, Series, Status, encode_batch, encode_status
from tests.conftest import Mosquitto
from tests.waiting import wait_until_async

pytestmark = pytest.mark.timeout(60)

PREFIX = "ssc/v1"


def _batch(seq: int, gw: str = "gw-1") -> Batch:
    t0 = 1_700_000_000_000 + seq * 10_000
    return Batch(
        gw=gw,
        boot=1,
        seq=seq,
        created=t0 + 10_000,
        series=(
            Series("m1", "voltage", "V", t0, (0, 1000, 1000), (230.0, 230.5, 229.5), (0, 0, 0)),
        ),
        aggregates=(),
        events=(),
    )


@dataclass
class Running:
    """A receiver task with what it reported."""

    broker: Mosquitto
    sink_path: Path
    stats: ReceiverStats
    logs: list[MutableMapping[str, Any]]
    seen: list[tuple[Batch, StoreOutcome]] = field(default_factory=list)
    _files: itertools.count[int] = field(default_factory=itertools.count)

    def events(self, name: str) -> list[MutableMapping[str, Any]]:
        return [e for e in self.logs if e["event"] == name]

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish with mosquitto_pub (QoS 1); returns after the broker's PUBACK."""
        path = self.sink_path.parent / f"payload-{next(self._files)}.bin"
        path.write_bytes(payload)
        args = [
            "-h",
            "127.0.0.1",
            "-p",
            str(self.broker.port),
            "-t",
            topic,
            "-q",
            "1",
            "-f",
            str(path),
        ]
        if retain:
            args.append("-r")
        proc = await asyncio.create_subprocess_exec("mosquitto_pub", *args)
        assert await proc.wait() == 0

    async def publish_batch(self, batch: Batch, *, codec: int = 1) -> None:
        await self.publish(f"{PREFIX}/{batch.gw}/batch", encode_batch(batch, codec=codec))

    async def wait_for(self, what: Callable[[], bool], within: float = 10.0) -> None:
        # The conditions span stats, logs and the sink: polling is the simple honest way.
        assert await wait_until_async(what, within, step=0.01)

    async def subscribed(self, times: int = 1) -> None:
        await self.wait_for(lambda: len(self.events("mqtt_subscribed")) >= times)


@asynccontextmanager
async def receiver(broker: Mosquitto, tmp_path: Path, **overrides: Any) -> AsyncIterator[Running]:
    stats = ReceiverStats()
    settings = ReceiverSettings(
        broker=parse_broker_url(broker.url),
        sink_url=f"sqlite:///{tmp_path}/received.db",
        topic_prefix=PREFIX,
        **overrides,
    )
    stop = asyncio.Event()
    with capture_logs() as logs:
        running = Running(broker, tmp_path / "received.db", stats, logs)
        task = asyncio.create_task(
            run_receiver(
                settings, stop=stop, stats=stats, on_batch=lambda b, o: running.seen.append((b, o))
            ),
            name="test-receiver",
        )
        try:
            await running.subscribed()
            yield running
        finally:
            stop.set()
            async with asyncio.timeout(10):
                await task


async def test_stores_dedups_rejects_and_reports_gaps(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with receiver(mosquitto, tmp_path) as r:
        await r.publish_batch(_batch(1))
        await r.publish_batch(_batch(1))  # resent: a duplicate
        garbage = b"SSC1\x01this is not zstd"
        await r.publish(f"{PREFIX}/gw-1/batch", garbage)
        await r.publish_batch(_batch(2), codec=0)  # the receiver kept going
        await r.publish_batch(_batch(5))
        await r.publish_batch(_batch(4))
        await r.wait_for(lambda: len(r.seen) == 5)
        assert r.stats.rejected == 1

    assert [(b.seq, o.duplicate) for b, o in r.seen] == [
        (1, False),
        (1, True),
        (2, False),
        (5, False),
        (4, False),
    ]
    assert (r.stats.batches, r.stats.duplicates, r.stats.readings) == (4, 1, 12)

    (rejected,) = r.events("message_set_aside")
    assert rejected["topic"] == f"{PREFIX}/gw-1/batch"
    assert rejected["kind"] == "undecodable"
    assert rejected["size"] == len(garbage)
    assert rejected["error"].startswith("zstd frame header:")
    assert [e["kind"] for e in r.events("messages_set_aside_ended")] == ["undecodable"]
    assert [e["seq"] for e in r.events("batch_stored")] == [1, 2, 5, 4]
    assert r.events("batch_stored")[0]["readings"] == 3
    assert [e["seq"] for e in r.events("batch_duplicate")] == [1]
    assert [(e["gw"], e["first"], e["last"]) for e in r.events("seq_gap")] == [("gw-1", 3, 4)]
    assert [e["seq"] for e in r.events("seq_gap_filled")] == [4]

    with SqliteSink.open(r.sink_path) as sink:
        assert sink.seqs("gw-1") == [1, 2, 4, 5]
        assert sink.count_readings("gw-1") == 12
        assert sink.gaps("gw-1") == [(3, 3)]
        values = [x.value for x in sink.readings_for("gw-1")[:3]]
    assert values == [230.0, 230.5, 229.5]
    assert all(type(v) is float for v in values)


async def test_a_batch_without_readings_is_stored_and_the_receiver_goes_on(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    # A batch of events only (a clock step's, say) first in what is waiting: before, the
    # grouping by readings found no group to put it in and the receiver died.
    async with receiver(mosquitto, tmp_path) as r:
        await r.publish_batch(replace(_batch(1), series=()))
        await r.publish_batch(_batch(2))
        await r.wait_for(lambda: len(r.seen) == 2)
    assert [(b.seq, o.duplicate) for b, o in r.seen] == [(1, False), (2, False)]
    with SqliteSink.open(r.sink_path) as sink:
        assert sink.seqs("gw-1") == [1, 2]
        assert sink.count_readings("gw-1") == 3


async def test_status_and_foreign_batches(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with receiver(mosquitto, tmp_path) as r:
        status = Status("online", "gw-7", 3, 1_700_000_000_000, "0.1.0")
        await r.publish(f"{PREFIX}/gw-7/status", encode_status(status), retain=True)
        # A gateway publishing into another one's topic is refused.
        await r.publish(f"{PREFIX}/gw-7/batch", encode_batch(_batch(1, "gw-8")))
        await r.publish(f"{PREFIX}/gw-7/status", b"{not json", retain=True)
        await r.publish_batch(_batch(1, "gw-7"))
        await r.wait_for(lambda: r.stats.batches == 1)
        assert r.stats.statuses == 1
        assert r.stats.rejected == 2
    assert [(e["kind"], e["error"]) for e in r.events("message_set_aside")] == [
        ("wrong_gateway", "topic names gateway 'gw-7', the batch 'gw-8'"),
        ("bad_status", "status: not JSON (Expecting property name enclosed in double quotes:"
         " line 1 column 2 (char 1))"),
    ]
    with SqliteSink.open(r.sink_path) as sink:
        assert sink.status_for("gw-7") == status
        assert sink.seqs("gw-8") == []


async def test_reconnects_after_the_broker_restarts(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with receiver(mosquitto, tmp_path) as r:
        await r.publish_batch(_batch(1))
        await r.wait_for(lambda: r.stats.batches == 1)
        mosquitto.kill()
        await r.wait_for(lambda: len(r.events("mqtt_retry_failed")) >= 2)
        assert len(r.events("mqtt_disconnected")) == 1  # once per outage, not per retry
        mosquitto.start()  # same port; persistence off, so the receiver must subscribe again
        await r.subscribed(times=2)
        await r.publish_batch(_batch(2))
        await r.wait_for(lambda: r.stats.batches == 2, within=15)
    with SqliteSink.open(r.sink_path) as sink:
        assert sink.seqs("gw-1") == [1, 2]


async def test_batches_sent_while_the_receiver_is_away_arrive(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    # Persistent session: the broker keeps the subscription and queues QoS 1 messages for the
    # receiver's client id while it is down (max_queued_messages 0: no silent drops).
    async with receiver(mosquitto, tmp_path, client_id="sink-q") as r:
        await r.publish_batch(_batch(1))
        await r.wait_for(lambda: r.stats.batches == 1)
    await r.publish_batch(_batch(2))
    await r.publish_batch(_batch(3))
    async with receiver(mosquitto, tmp_path, client_id="sink-q") as again:
        await again.wait_for(lambda: again.stats.batches == 2)
    assert again.events("seq_gap") == []
    with SqliteSink.open(again.sink_path) as sink:
        assert sink.seqs("gw-1") == [1, 2, 3]


async def test_shared_subscription(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with receiver(mosquitto, tmp_path, shared_group="sinks", client_id="sink-a") as r:
        await r.publish_batch(_batch(1))
        await r.wait_for(lambda: r.stats.batches == 1)
    subscribed = r.events("mqtt_subscribed")[0]
    assert subscribed["topics"] == [
        f"$share/sinks/{PREFIX}/+/batch",
        f"$share/sinks/{PREFIX}/+/status",
        f"$share/sinks/{PREFIX}/+/health",
    ]


@pytest.mark.parametrize(
    ("group", "topics"),
    [
        (None, ["ssc/v1/+/batch", "ssc/v1/+/status", "ssc/v1/+/health"]),
        ("g1", ["$share/g1/ssc/v1/+/batch", "$share/g1/ssc/v1/+/status",
                "$share/g1/ssc/v1/+/health"]),
    ],
)
def test_subscription_topics(group: str | None, topics: list[str]) -> None:
    assert subscription_topics("ssc/v1/", group) == topics


@pytest.mark.parametrize("group", ["", "a/b", "a+", "#"])
def test_subscription_topics_refuse_bad_groups(group: str) -> None:
    with pytest.raises(ValueError, match="shared_group"):
        subscription_topics("ssc/v1", group)


def test_broker_fixture_controls(mosquitto: Mosquitto) -> None:
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert mosquitto.proc is not None
    first = mosquitto.proc.pid
    mosquitto.stop()
    mosquitto.cont()
    mosquitto.restart()  # SIGTERM, then a new process on the same port
    assert mosquitto.proc.pid != first
    assert mosquitto.log_text().count(" running") == 2
    mosquitto.kill()
    assert mosquitto.proc.poll() is not None


async def test_poison_messages_are_set_aside_counted_logged_once_and_acknowledged(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    garbage = [b"SSC1\x01not zstd %d" % i for i in range(5)]
    async with receiver(mosquitto, tmp_path, client_id="rx-poison") as r:
        for payload in garbage:
            await r.publish(f"{PREFIX}/gw-1/batch", payload)
        await r.publish(f"{PREFIX}/gw-2/batch", encode_batch(_batch(1, "gw-3")))
        await r.publish_batch(_batch(1))  # queued behind the poison ones: not blocked
        await r.wait_for(lambda: r.stats.batches == 1)
        assert r.stats.rejected == 6
    # One line per burst (gateway, kind), not one per message; the good batch ends gw-1's.
    assert [(e["gw"], e["kind"]) for e in r.events("message_set_aside")] == [
        ("gw-1", "undecodable"), ("gw-2", "wrong_gateway")]
    assert [(e["gw"], e["unreported"]) for e in r.events("messages_set_aside_ended")] == [
        ("gw-1", 4)]
    with SqliteSink.open(r.sink_path) as sink:
        kept = sink.rejected("gw-1")
        assert [m.payload for m in kept] == garbage[::-1]  # newest first, whole (small)
        assert {(m.topic, m.kind, m.size) for m in kept} == {
            (f"{PREFIX}/gw-1/batch", "undecodable", len(p)) for p in garbage}
        assert kept[0].reason.startswith("zstd frame header:")
        assert sink.rejected_totals() == {("gw-1", "undecodable"): 5,
                                          ("gw-2", "wrong_gateway"): 1}
        assert sink.seqs("gw-1") == [1]
    # Acknowledged: a new run on the same persistent session gets none of them again.
    async with receiver(mosquitto, tmp_path, client_id="rx-poison") as again:
        await again.publish_batch(_batch(2))
        await again.wait_for(lambda: again.stats.batches == 1)
        assert again.stats.rejected == 0


def test_set_aside_keeps_the_start_of_a_payload_and_the_latest_rows(tmp_path: Path) -> None:
    clock = itertools.count(1000)
    with SqliteSink.open(tmp_path / "s.db", clock=lambda: next(clock)) as sink:
        big = bytes(range(256)) * 1024  # 256 KiB
        sink.set_aside("gw-1", "ssc/v1/gw-1/batch", "undecodable", "x" * 10_000, big)
        (kept,) = sink.rejected()
        assert kept.payload == big[:REJECTED_KEEP_BYTES]
        assert kept.size == len(big)
        assert len(kept.reason) == REJECTED_TEXT_CHARS
        for i in range(REJECTED_KEEP_ROWS + 5):
            sink.set_aside(None, f"t/{i}", "bad_topic", "no", b"")
        assert len(sink.rejected(limit=10**6)) == REJECTED_KEEP_ROWS
        assert sink.rejected(limit=1)[0].topic == f"t/{REJECTED_KEEP_ROWS + 4}"
        assert sink.rejected_totals() == {("gw-1", "undecodable"): 1,
                                          ("", "bad_topic"): REJECTED_KEEP_ROWS + 5}


@pytest.mark.parametrize(
    ("exc", "fault"),
    [
        (sqlite3.OperationalError("database or disk is full"), True),
        (sqlite3.IntegrityError("constraint"), False),
        (OverflowError("int too big"), False),
        (ValueError("bad"), False),
        (OSError(28, "No space left on device"), True),
    ],
)
def test_sink_faults_and_message_faults(exc: BaseException, fault: bool) -> None:
    assert is_sink_fault(exc) is fault


def test_real_sqlite_errors_are_classified(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute("CREATE TABLE t (x INTEGER NOT NULL)")
    with pytest.raises(sqlite3.Error) as integrity:
        conn.execute("INSERT INTO t VALUES (NULL)")
    assert not is_sink_fault(integrity.value)
    other = sqlite3.connect(tmp_path / "x.db", isolation_level=None, timeout=0)
    conn.execute("BEGIN EXCLUSIVE")
    with pytest.raises(sqlite3.Error) as locked:
        other.execute("INSERT INTO t VALUES (1)")
    assert is_sink_fault(locked.value)
    conn.execute("ROLLBACK")
    conn.execute("PRAGMA max_page_count = 2")
    with pytest.raises(sqlite3.Error) as full:
        conn.execute("INSERT INTO t SELECT zeroblob(100000)")
    assert "full" in str(full.value)
    assert is_sink_fault(full.value)


def test_the_platform_does_not_import_the_gateway() -> None:
    # The receiver and sink run on the platform, where the gateway runtime is not wanted: what
    # the two sides share (MQTT settings, clients) lives in agent.mqtt.
    code = ("import sys, agent.platform.receiver, agent.platform.sink; "
            "print(sorted(m for m in sys.modules if m.startswith('agent.gateway')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("readings", "most", "groups"), [
    ([], 10, []),
    ([0], 10, [[0]]),  # a batch of aggregates or events only
    ([0, 0, 3], 10, [[0, 0, 3]]),
    ([4, 4, 4], 10, [[4, 4], [4]]),
    ([12, 1], 10, [[12], [1]]),  # bigger than a group: alone
    ([1, 12, 0], 10, [[1], [12], [0]]),
    ([10, 0, 10], 10, [[10, 0], [10]]),
])
def test_batches_are_grouped_by_readings(readings: list[int], most: int,
                                         groups: list[list[int]]) -> None:
    from agent.platform.receiver import _by_readings

    def item(n: int) -> tuple[str, bytes, Batch]:
        series = (Series("m", "p", None, 0, (0,) * n, (1,) * n, (0,) * n),) if n else ()
        return ("t", b"", Batch(gw="g", boot=1, seq=1, created=1, series=series,
                                aggregates=(), events=()))

    got = _by_readings([item(n) for n in readings], most)
    assert [[b.n_readings for _, _, b in group] for group in got] == groups
