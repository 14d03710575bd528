"""``ssc-agent fleet``: the receiver stores real wire-v1 batches (published to a real mosquitto)
into SQLite and into PostgreSQL, and the fleet view's figures are checked against what was
sent: seq gaps, a buffer_drop event, lag from the readings' times, skew from ``created``,
offline from a real last will, silence from ``--silent-after``. Plus the pure figures, the
migration of a database stored before the summaries existed, and the CLI's errors."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.cli import main as cli_main
from agent.endpoints import parse_broker_url
from agent.platform.fleet import WINDOW_MS, gateway_view, render_table, weighted_percentile
from agent.platform.receiver import ReceiverSettings, ReceiverStats, run_receiver
from agent.platform.sink import SinkBase, open_sink
from agent.platform.sink.summary import GatewayRow, batch_lag_ms, drop_counts, read_fleet
from agent.wire import Batch, Series, Status, encode_status
from tests.conftest import Mosquitto
from tests.platform.test_receiver import PREFIX, Running
from tests.waiting import wait_until_async

pytestmark = [pytest.mark.timeout(90), pytest.mark.xdist_group("postgresql")]


# --------------------------------------------------------------------------- pure figures

@pytest.mark.parametrize(("values", "q", "expected"), [
    ([], 50, None),
    ([(5, 0)], 50, None),
    ([(7, 1)], 99, 7),
    ([(1, 1), (2, 1), (3, 1), (4, 1)], 50, 2),
    ([(1, 1), (2, 1), (3, 1), (4, 1)], 99, 4),
    ([(10, 99), (1000, 1)], 99, 10),  # 99 of 100 readings at 10
    ([(10, 98), (1000, 2)], 99, 1000),
    ([(30, 1), (10, 1), (20, 1)], 50, 20),  # order does not matter
])
def test_weighted_percentile(values: list[tuple[int, int]], q: float,
                             expected: int | None) -> None:
    assert weighted_percentile(values, q) == expected


@given(st.lists(st.tuples(st.integers(-10**9, 10**9), st.integers(1, 1000)), min_size=1),
       st.floats(1, 100))
def test_weighted_percentile_is_the_nearest_rank_of_the_expanded_values(
        values: list[tuple[int, int]], q: float) -> None:
    expanded = sorted(v for v, w in values for _ in range(w))
    got = weighted_percentile(values, q)
    assert got is not None and got in expanded
    below = sum(1 for v in expanded if v <= got)
    strictly_below = sum(1 for v in expanded if v < got)
    assert below >= q / 100 * len(expanded) - 1e-9 * len(expanded)
    assert strictly_below < q / 100 * len(expanded) + 1e-9 * len(expanded)


@pytest.mark.parametrize(("msg", "expected"), [
    ("batches=2 readings=400 events=1 aggregates=0 seq=3-4 reason=max_bytes "
     "max_bytes=1000 policy=drop_oldest", (2, 400)),
    ("batches=0 readings=17 reason=store_unwritable", (0, 17)),
    ("readings=5", (0, 5)),
    ("", (0, 0)),
    ("batches=x readings=-3", (0, 0)),
    ("xbatches=9 readings=1", (0, 1)),
    ("batches=1 readings=9999999999999", (1, 0)),  # 13 digits: no gateway's, not counted
])
def test_drop_counts(msg: str, expected: tuple[int, int]) -> None:
    assert drop_counts(msg) == expected


def _series(t0: int, n: int, step: int = 1000) -> Series:
    return Series("m1", "voltage", "V", t0, (0,) + (step,) * (n - 1), (230.0,) * n, (0,) * n)


def test_batch_lag_is_from_the_median_reading() -> None:
    batch = _batch("gw", 1, t0=10_000, n=5)  # readings at 10, 11, 12, 13, 14 s
    assert batch_lag_ms(batch, received=20_000) == 8_000
    assert batch_lag_ms(_batch("gw", 1, t0=0, n=0), received=1) is None


def _row(gw: str, **kw: Any) -> GatewayRow:
    fields: dict[str, Any] = {
        "state": "online", "status_t": 0, "first_seen": 0, "last_seen": 1_000_000, "store": "",
        "last_seq": 3, "batches": 3, "readings": 9, "kpi_windows": 0, "dropped_batches": 0,
        "dropped_readings": 0, "gaps": 0, "missing": 0, "recent": ()}
    fields.update(kw)
    return GatewayRow(gw, **fields)


def test_flags_and_table() -> None:
    now = 1_000_000 + 20 * 60_000
    views = [gateway_view(r, now_ms=now, silent_after_ms=15 * 60_000) for r in (
        _row("gw-late", recent=((5_000, 100, -200), (90_000, 1, 300))),
        _row("gw-fresh", last_seen=now - 1000),
        _row("gw-gone", state="offline", last_seen=now - 1000),
        _row("gw-new", state=None, last_seen=None, last_seq=None, store=None))]
    assert [v.flags for v in views] == [("silent",), (), ("offline",), ("silent",)]
    assert (views[0].lag_p50_ms, views[0].lag_p99_ms, views[0].skew_ms) == (5_000, 5_000, 300)
    lines = render_table(views, now_ms=now, silent_after_ms=15 * 60_000).splitlines()
    assert [line[:1] for line in lines[1:5]] == ["!", " ", "!", "!"]
    header = lines[0]
    for column, cells in (("GATEWAY", ["gw-late", "gw-fresh", "gw-gone", "gw-new"]),
                          ("STATE", ["online", "online", "offline", "-"]),
                          ("FLAGS", ["silent", "", "offline", "silent"])):
        at = header.index(column)  # aligned: each cell starts where its header does
        assert [line[at:].split(" ")[0] for line in lines[1:5]] == cells
    assert "20 min ago" in lines[1] and "5.0 s / 5.0 s" in lines[1] and "+300 ms" in lines[1]
    assert "never" in lines[4]
    assert lines[-1].startswith("4 gateways, 3 flagged")


# --------------------------------------------------------------------------- end to end

def _batch(gw: str, seq: int, *, t0: int, n: int = 3, created: int | None = None,
           events: tuple[dict[str, Any], ...] = (), windows: int = 0) -> Batch:
    aggregates = tuple({"kpi": "v_avg", "src": "m1.voltage", "start": t0 + i, "end": t0 + i + 1,
                        "value": 230.0, "valid": True, "n": 1, "expected": 1, "unit": "V"}
                       for i in range(windows))
    return Batch(gw=gw, boot=1, seq=seq, created=t0 + 10_000 if created is None else created,
                 series=(_series(t0, n),) if n else (), aggregates=aggregates, events=events)


@pytest.fixture(params=["sqlite", "postgresql"])
def sink_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fleet.db"
    return str(request.getfixturevalue("pg_url"))


def _fleet(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what came before (a sink's log lines) is not the command's
    status = cli_main(["fleet", *args])
    out, err = capsys.readouterr()
    return status, out, err


async def test_the_fleet_view_shows_what_the_gateways_sent(
        mosquitto: Mosquitto, tmp_path: Path, sink_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    stats = ReceiverStats()
    settings = ReceiverSettings(broker=parse_broker_url(mosquitto.url), sink_url=sink_url,
                                topic_prefix=PREFIX)
    stop = asyncio.Event()
    now = int(time.time() * 1000)
    drop = {"t": now, "kind": "buffer_drop", "dev": None,
            "msg": "batches=2 readings=6 events=0 aggregates=0 seq=3-4 reason=max_bytes "
                   "max_bytes=1000 policy=drop_oldest"}
    # gw-a: seqs 1, 2, 5 (3-4 missing, their drop reported), readings 60 s old, a clock 2 min
    # ahead; gw-b: fresh readings, then its connection dies and the broker sends its will
    sent = [_batch("gw-a", 1, t0=now - 61_000, created=now + 120_000),
            _batch("gw-a", 2, t0=now - 61_000, created=now + 120_000, windows=2),
            _batch("gw-a", 5, t0=now - 61_000, created=now + 120_000, events=(drop,)),
            _batch("gw-b", 7, t0=now - 2_000, created=now)]
    with capture_logs() as logs:
        r = Running(mosquitto, tmp_path / "payloads", stats, logs)
        task = asyncio.create_task(run_receiver(settings, stop=stop, stats=stats))
        try:
            await r.subscribed()
            for batch in sent:
                await r.publish_batch(batch)
            await r.publish(f"{PREFIX}/gw-a/status",
                            encode_status(Status("online", "gw-a", 1, now, "0.9")), retain=True)
            await r.publish(f"{PREFIX}/gw-c/status",  # online, never a batch
                            encode_status(Status("online", "gw-c", 1, now, "0.9")), retain=True)
            will = encode_status(Status("offline", "gw-b", 1, now, "0.9")).decode()
            gateway = subprocess.Popen(
                ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(mosquitto.port),
                 "-q", "1", "-t", f"{PREFIX}/gw-b/cmd", "-d",
                 "--will-topic", f"{PREFIX}/gw-b/status", "--will-payload", will,
                 "--will-qos", "1", "--will-retain"],
                stdout=subprocess.PIPE, text=True)
            try:
                assert gateway.stdout is not None
                debug = gateway.stdout
                # connected (the will is registered) once its subscription is acknowledged
                async with asyncio.timeout(10):  # a kill ends the read: the pipe closes
                    assert await asyncio.to_thread(
                        lambda: any("SUBACK" in line for line in debug)) is True
            finally:
                gateway.kill()  # no DISCONNECT: the broker publishes the will
                gateway.wait()
            assert await wait_until_async(
                lambda: stats.batches == 4 and stats.statuses == 3, 10, step=0.02)
        finally:
            stop.set()
            async with asyncio.timeout(10):
                await task

    status, out, err = _fleet(capsys, "--sink", sink_url, "--json")
    assert (status, err) == (0, "")
    doc = json.loads(out)
    views = {g["gw"]: g for g in doc["gateways"]}
    assert sorted(views) == ["gw-a", "gw-b", "gw-c"]
    a, b, c = views["gw-a"], views["gw-b"], views["gw-c"]
    assert (a["state"], a["last_seq"], a["batches"], a["readings"]) == ("online", 5, 3, 9)
    assert (a["gaps"], a["batches_missing"]) == (1, 2)
    assert (a["dropped_batches"], a["dropped_readings"], a["kpi_windows"]) == (2, 6, 2)
    # the median reading is 60 s old when sent; storing adds the transit
    assert 60_000 <= a["lag_p50_ms"] <= a["lag_p99_ms"] < 60_000 + 10_000
    # created 2 min ahead: the estimate is that minus the transit
    assert 110_000 < a["skew_ms"] <= 120_000
    assert a["recent_batches"] == 3 and a["flags"] == [] and a["silent"] is False
    assert now <= a["last_seen_ms"] <= int(time.time() * 1000)
    assert (b["state"], b["flags"], b["last_seq"], b["batches_missing"]) == (
        "offline", ["offline"], 7, 0)
    assert 1_000 <= b["lag_p50_ms"] < 11_000 and -10_000 < b["skew_ms"] <= 0
    assert (c["state"], c["last_seen_ms"], c["batches"], c["lag_p50_ms"], c["flags"]) == (
        "online", None, 0, None, ["silent"])
    assert doc["silent_after_ms"] == 15 * 60_000 and doc["window_ms"] == WINDOW_MS

    # silent after a short while: the gateways whose last batch is older are flagged
    newest = max(a["last_seen_ms"], b["last_seen_ms"])
    while int(time.time() * 1000) - newest <= 300:
        await asyncio.sleep(0.05)
    status, out, _ = _fleet(capsys, "--sink", sink_url, "--silent-after", "300 ms", "--json")
    assert status == 0
    flags = {g["gw"]: g["flags"] for g in json.loads(out)["gateways"]}
    assert flags == {"gw-a": ["silent"], "gw-b": ["silent", "offline"], "gw-c": ["silent"]}

    status, out, _ = _fleet(capsys, "--sink", sink_url)
    lines = out.splitlines()
    assert status == 0 and lines[0].split()[:3] == ["GATEWAY", "STATE", "LAST"]
    rows = {line[2:].split()[0]: line for line in lines[1:-1]}
    assert rows["gw-a"].startswith(" ") and rows["gw-b"].startswith("!")
    assert "offline" in rows["gw-b"] and "never" in rows["gw-c"]


def test_summaries_kept_at_ingest_many_batches_a_transaction(sink_url: str) -> None:
    """Batches of one gateway stored together, out of order, resent, from a replaced store:
    the gateway's row says what was stored, and the last seq is the current store's."""
    import dataclasses

    drop = {"t": 5, "kind": "buffer_drop", "dev": None, "msg": "batches=1 readings=3 seq=4-4"}
    first = [_batch("gw-a", 5, t0=5000, events=(drop,), windows=2), _batch("gw-a", 3, t0=3000),
             _batch("gw-a", 5, t0=5000, events=(drop,), windows=2),  # resent: not counted
             _batch("gw-b", 1, t0=1000, n=0)]
    replaced = dataclasses.replace(_batch("gw-a", 1, t0=9000), store="new-card")
    older_store_late = _batch("gw-a", 6, t0=6000)  # created before the new store's batch
    with open_sink(sink_url) as sink:
        outcomes = sink.store_many(first)
        assert [o.duplicate for o in outcomes] == [False, False, True, False]
        rows = {r.gw: r for r in _summary(sink)}
        assert (rows["gw-a"].store, rows["gw-a"].last_seq, rows["gw-a"].batches,
                rows["gw-a"].readings, rows["gw-a"].kpi_windows, rows["gw-a"].dropped_readings,
                rows["gw-a"].dropped_batches) == ("", 5, 2, 6, 2, 3, 1)
        assert (rows["gw-b"].last_seq, rows["gw-b"].readings) == (1, 0)
        sink.store_many([replaced, older_store_late])
        a = {r.gw: r for r in _summary(sink)}["gw-a"]
        # 5 came first (the baseline), 3 below it and 6 next in line: no gap
        assert (a.store, a.last_seq, a.batches, a.missing) == ("new-card", 1, 4, 0)


# --------------------------------------------------------------------------- migration

_DOWNGRADE = {
    # a database of the release before the summaries
    "sqlite": ["DROP TABLE health", "DROP TABLE devices", "DROP TABLE gateways",
               "DROP INDEX batches_by_received", "ALTER TABLE batches DROP COLUMN lag_ms",
               "PRAGMA user_version = 0"],
    "postgresql": ["DROP TABLE health", "DROP TABLE devices", "DROP TABLE gateways",
                   "DROP INDEX batches_by_received", "ALTER TABLE batches DROP COLUMN lag_ms",
                   "DELETE FROM schema_version WHERE version >= 3"],
}


@pytest.fixture
def downgrade(sink_url: str, request: pytest.FixtureRequest) -> Any:
    def run() -> None:
        if sink_url.startswith("sqlite"):
            with sqlite3.connect(sink_url.removeprefix("sqlite:///")) as conn:
                for sql in _DOWNGRADE["sqlite"]:
                    conn.execute(sql)
            conn.close()
        else:
            server = request.getfixturevalue("pg_server")
            with server.admin(sink_url.rsplit("/", 1)[1]) as conn:
                for sql in _DOWNGRADE["postgresql"]:
                    conn.execute(sql)
    return run


def _summary(sink: SinkBase) -> list[GatewayRow]:
    return read_fleet(sink.select, 0)


def test_a_database_stored_before_the_summaries_is_migrated(
        sink_url: str, downgrade: Any) -> None:
    drop = {"t": 5, "kind": "buffer_drop", "dev": None, "msg": "batches=3 readings=9 seq=2-4"}
    with open_sink(sink_url) as sink:
        for batch in (_batch("gw-a", 1, t0=1000, windows=1),
                      _batch("gw-a", 5, t0=2000, events=(drop,)),
                      _batch("gw-b", 1, t0=1000, n=0),
                      _batch("gw-a", 1_000_000, t0=3000)):  # a seq jump: not the last seq
            sink.store(batch)
        before = _summary(sink)
    downgrade()
    with open_sink(sink_url) as sink:
        after = _summary(sink)
        assert sink.select("SELECT COUNT(*) FROM batches WHERE lag_ms IS NOT NULL") == [(0,)]
    # the backfill gives what ingest counted, except lag (no readings are read)
    assert [(r.gw, r.last_seq, r.batches, r.readings, r.kpi_windows, r.dropped_batches,
             r.dropped_readings, r.missing, r.first_seen, r.last_seen) for r in after] == [
        (r.gw, r.last_seq, r.batches, r.readings, r.kpi_windows, r.dropped_batches,
         r.dropped_readings, r.missing, r.first_seen, r.last_seen) for r in before]
    assert [(r.gw, r.last_seq, r.batches, r.dropped_readings) for r in after] == [
        ("gw-a", 5, 3, 9), ("gw-b", 1, 1, 0)]
    with open_sink(sink_url) as sink:  # and opening again migrates nothing twice
        sink.store(_batch("gw-a", 6, t0=4000))
        assert [(r.gw, r.last_seq, r.batches) for r in _summary(sink)] == [
            ("gw-a", 6, 4), ("gw-b", 1, 1)]


# --------------------------------------------------------------------------- errors

def test_a_sink_that_cannot_be_opened_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import free_port

    (tmp_path / "not-a-db").write_text("a text file, not a database\n" * 100)
    for args, says in (
            (["--sink", str(tmp_path / "typo.db")], "typo.db: no such database"),
            (["--sink", f"postgresql://postgres@127.0.0.1:{free_port()}/x"], "cannot connect"),
            (["--sink", "mqtt://x/y"], "--sink"),
            (["--sink", str(tmp_path / "not-a-db")], "cannot read the SQLite database"),
            (["--sink", str(tmp_path / "x.db"), "--silent-after", "soon"], "--silent-after")):
        status, out, err = _fleet(capsys, *args)
        assert (status, out) == (2, ""), args
        assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "typo.db").exists()


def test_the_view_only_reads(sink_url: str, downgrade: Any, tmp_path: Path,
                             request: pytest.FixtureRequest,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """It migrates nothing (a database the receiver has not migrated yet is refused), writes
    nothing, and works with a role that may only read."""
    with open_sink(sink_url) as sink:
        sink.store(_batch("gw-a", 1, t0=1000))
    downgrade()
    status, _, err = _fleet(capsys, "--sink", sink_url)
    assert status == 2 and "start the receiver of this release once" in err
    assert len(err.splitlines()) == 1
    with open_sink(sink_url):  # the receiver migrates it
        pass
    args = ["--sink", sink_url, "--json"]
    if sink_url.startswith("sqlite"):
        path = Path(sink_url.removeprefix("sqlite:///"))
        before = path.read_bytes()
    else:
        db = sink_url.rsplit("/", 1)[1]
        with request.getfixturevalue("pg_server").admin(db) as admin:
            admin.execute(f"CREATE ROLE reader_{db} LOGIN PASSWORD 'only reads'")
            admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader_{db}")
        (tmp_path / "pw").write_text("only reads\n")
        args = ["--sink", sink_url.replace("postgres@", f"reader_{db}@"),
                "--sink-password-file", str(tmp_path / "pw"), "--json"]
    status, out, err = _fleet(capsys, *args)
    assert (status, err) == (0, ""), err
    assert [g["last_seq"] for g in json.loads(out)["gateways"]] == [1]
    if sink_url.startswith("sqlite"):
        assert path.read_bytes() == before
