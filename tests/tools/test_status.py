"""Health at a glance, end to end: `ssc-agent status`, the status page in headless Chromium and
the retained health topic, against a real agent subprocess polling pymodbus simulators.

One agent serves the module (its tests run in order on one worker): first with its broker
not started (uplink down, batches pile up in the store, so the store's figures only grow and
what the page shows can be bracketed by two reads of the store), then with the broker up
(the retained health arrives), then stopped (status says so and still shows the buffer).

Its devices: ``meter-1`` answers; ``wrong-unit`` is asked for a unit its simulator does not
serve (exception 4 to every request); ``no-such-register`` asks for a register its simulator
lacks (exception 2); ``behind-gateway`` is answered exception 11 to every request, as a Modbus
TCP gateway answers for a unit behind it that is silent (a wrong unit id there); ``serial-1`` is
on a bus whose port does not exist, named with a ``<script>`` element, which must reach the
page as text.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from pymodbus.constants import ExcCodes

from agent.gateway.health import HEALTH_FILE, figure
from agent.gateway.store import BatchStore, StoreStats
from agent.wire import decode_batch, decode_health
from drivers.modbus.simulator import serve
from tests.chaos.harness import AgentProcess, MeterFleet, request_recorder
from tests.conftest import Mosquitto, _require_mosquitto, free_port, require_chromium
from tests.waiting import wait_until, wait_until_async

pytestmark = [pytest.mark.timeout(180), pytest.mark.xdist_group("health-agent")]

ROOT = Path(__file__).resolve().parents[2]
GW = "gw-health"
HOSTILE_PORT = "/nonexistent/<script>alert(1)</script>"
DOWN = {"wrong-unit", "no-such-register", "behind-gateway", "serial-1"}


async def _gateway_silent(fc: int, start: int, address: int, count: int, registers: list[int],
                          set_values: Any) -> ExcCodes | None:
    # reads only: the simulator's own register updates (set_values) go through
    return ExcCodes.GATEWAY_NO_RESPONSE if set_values is None else None


class Meters(MeterFleet):
    """The harness's meters; the last one answers as a Modbus gateway whose unit is silent."""

    async def _start(self) -> None:
        for i, device in enumerate(self.devices):
            action = _gateway_silent if i == len(self.devices) - 1 else None
            self._servers.append(await serve(
                {1: self._profile}, "127.0.0.1", device.port, seed=device.name,
                trace_pdu=request_recorder(self._requests[device.name]), action=action))


@dataclass
class Site:
    fleet: Meters
    agent: AgentProcess
    broker: Mosquitto
    config: Path
    data_dir: Path
    page: str


def _config(tmp: Path, fleet: MeterFleet, broker_port: int, page_port: int) -> Path:
    meter, other, third, gateway = (d.port for d in fleet.devices)
    # a long timeout: a meter stalled by a loaded machine must not turn meter-1 down
    device = 'driver = "modbus"\ninterval = "1 s"\nretries = 0\ntimeout = "5 s"\n'
    text = f"""[gateway]
id = "{GW}"
data_dir = "{tmp / 'data'}"
timezone = "UTC"
kpi_lateness = "1 s"
shutdown_timeout = "5 s"

[uplink]
broker = "mqtt://127.0.0.1:{broker_port}"
batch_max_age = "2 s"
publish_timeout = "3 s"
keepalive = "2 s"
reconnect_max = "1 s"

[status_page]
port = {page_port}

[[buses]]
name = "rs485"
port = "{HOSTILE_PORT}"

[[devices]]
name = "meter-1"
endpoint = "tcp://127.0.0.1:{meter}"
profile = "ssc-demo-meter"
{device}
[[devices]]
name = "wrong-unit"
endpoint = "tcp://127.0.0.1:{other}"
unit = 9
profile = "ssc-demo-meter"
{device}
[[devices]]
name = "no-such-register"
endpoint = "tcp://127.0.0.1:{third}"
{device}
[[devices.points]]
name = "absent"
address = 60000
table = "holding"
type = "u16"

[[devices]]
name = "behind-gateway"
endpoint = "tcp://127.0.0.1:{gateway}"
profile = "ssc-demo-meter"
{device}
[[devices]]
name = "serial-1"
bus = "rs485"
profile = "ssc-demo-meter"
{device}
[[kpis]]
name = "power_10s"
source = "meter-1.power_total"
operator = "mean"
window = "10 s"
sample_interval = "1 s"
unit = "W"
"""
    path = tmp / "agent.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    _require_mosquitto()
    tmp = tmp_path_factory.mktemp("health")
    (tmp / "broker").mkdir()
    broker = Mosquitto(tmp / "broker", free_port())  # started by the topic's test
    page_port = free_port()
    with Meters([1000, 1000, 1000, 1000]) as fleet:
        config = _config(tmp, fleet, broker.port, page_port)
        agent = AgentProcess(config, tmp / "agent.log")
        agent.start()
        try:
            agent.wait_started(1)
            yield Site(fleet, agent, broker, config, tmp / "data",
                       f"http://127.0.0.1:{page_port}/")
        finally:
            if agent.alive:
                agent.terminate()
            broker.terminate()


def health(site: Site) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((site.data_dir / HEALTH_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data


def states(snapshot: dict[str, Any]) -> dict[str, str]:
    return {d["name"]: d["state"] for d in snapshot.get("devices", [])}


def settled(site: Site) -> bool:
    """Every device polled: meter-1 up, the others down."""
    return states(health(site)) == {"meter-1": "up", **dict.fromkeys(DOWN, "down")}


def store_stats(site: Site) -> StoreStats:
    store = BatchStore.open_readonly(site.data_dir / "buffer.db")
    try:
        return store.stats()
    finally:
        store.close()


def stored_windows(site: Site) -> dict[tuple[str, int, int], Any]:
    """(kpi, start, end) → value of every KPI window in the store's batches."""
    store = BatchStore.open_readonly(site.data_dir / "buffer.db")
    try:
        rows = store.iter_batches()
    finally:
        store.close()
    return {(a["kpi"], a["start"], a["end"]): a["value"]
            for *_, payload in rows for a in decode_batch(payload).aggregates}


def status(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config",
                           str(site.config), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)


# --------------------------------------------------------------------- uplink down


def test_status_shows_devices_up_and_down_and_the_buffer(site: Site) -> None:
    assert wait_until(lambda: settled(site), 30), (states(health(site)),
                                                   site.agent.log_text()[-2000:])
    before = store_stats(site)
    done = status(site, "--json")
    after = store_stats(site)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["running"] is True and report["stale"] is False
    devices = {d["name"]: d for d in report["health"]["devices"]}
    good = devices["meter-1"]
    assert good["state"] == "up" and good["failures"] == 0 and good["last_error"] is None
    # its last good poll is a slot the meter was really polled in (a request after the slot,
    # within two intervals: a poll woken late keeps its slot when less than one late)
    slot = good["last_good_ms"] / 1000
    assert any(slot - 0.05 <= r < slot + 2.5 for r in site.fleet.requests("meter-1")), slot
    assert good["last_good_age_s"] is not None and good["last_good_age_s"] >= 0
    # every request answered with an exception: down, never a good poll, with the code
    assert "exception 4" in devices["wrong-unit"]["last_error"]
    assert "exception 2" in devices["no-such-register"]["last_error"]
    assert "exception 11" in devices["behind-gateway"]["last_error"]
    assert HOSTILE_PORT in devices["serial-1"]["last_error"]
    for name in DOWN:
        d = devices[name]
        assert d["state"] == "down" and d["last_good_ms"] is None, d
        assert d["failures"] >= d["failures_in_a_row"] >= 1, d
    # the meter that was asked for unit 9 saw at least as many requests as failed polls
    assert len(site.fleet.requests("meter-2")) >= devices["wrong-unit"]["failures"]
    assert "the uplink is not connected" in report["problems"]
    assert {f"device {n} is down" for n in DOWN} <= set(report["problems"])
    # nothing is acknowledged while the broker is away: every sealed batch is still stored
    said = report["health"]["buffer"]
    assert said["batches"] == said["next_seq"] - 1 and said["dropped_batches"] == 0
    assert said["batches"] <= after.batches
    read = report["buffer"]  # status's own read of the store, between the two reads here
    assert before.batches <= read["batches"] <= after.batches
    assert before.readings <= read["readings"] <= after.readings

    human = status(site)
    assert human.returncode == 1
    lines = human.stdout.splitlines()
    assert lines[0].startswith("agent    running (pid "), human.stdout
    assert any(line.startswith("uplink   NOT CONNECTED") for line in lines), human.stdout
    table = {line.split()[0]: line.split()[1] for line in lines
             if line.split() and line.split()[0] in devices}
    assert table == {"meter-1": "up", **dict.fromkeys(DOWN, "DOWN")}, human.stdout


class _Dom(HTMLParser):
    """The cells of the page's tables, by id and by row."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.rows: list[tuple[dict[str, str | None], list[str]]] = []
        self._cell: list[str] | None = None
        self._cell_id: str | None = None
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts += 1
        if tag == "tr":
            self.rows.append((dict(attrs), []))
        elif tag in ("td", "th"):
            self._cell, self._cell_id = [], dict(attrs).get("id")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            self.rows[-1][1].append(text)
            if self._cell_id:
                self.by_id[self._cell_id] = text
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def row(self, attr: str, value: str) -> list[str]:
        found = [cells for attrs, cells in self.rows if attrs.get(attr) == value]
        assert len(found) == 1, (attr, value, self.rows)
        return found[0]


def dump_dom(url: str) -> str:
    chromium = require_chromium()
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                           "--dump-dom", url], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and "</html>" in done.stdout, done.stderr[-2000:]
    return done.stdout


def test_status_page_in_headless_chromium(site: Site) -> None:
    assert wait_until(lambda: settled(site) and health(site)["kpis"]["latest"], 40), health(site)
    before = store_stats(site)
    dom = dump_dom(site.page)
    after = store_stats(site)
    page = _Dom()
    page.feed(dom)
    # devices: every configured one, in the state the agent holds
    shown = {attrs["data-device"]: cells for attrs, cells in page.rows if "data-device" in attrs}
    assert {name: cells[1] for name, cells in shown.items()} == {
        "meter-1": "up", **dict.fromkeys(DOWN, "down")}
    assert "exception 4" in shown["wrong-unit"][-1]
    # the hostile port name is text on the page, never markup
    assert HOSTILE_PORT in shown["serial-1"][-1]
    assert page.scripts == 0 and "<script" not in dom and "&lt;script&gt;" in dom
    # buffer: read by the page between the two reads of the store (which only grows now)
    assert before.batches <= int(page.by_id["buffer-batches"]) <= after.batches
    assert before.readings <= int(page.by_id["buffer-readings"]) <= after.readings
    assert page.by_id["buffer-state"] == "ok"
    assert page.by_id["uplink-state"] == "not connected"
    # the latest closed KPI window: the value the store holds for that window
    attrs = next(a for a, _ in page.rows if a.get("data-kpi") == "power_10s" and "data-end" in a)
    start, end = int(attrs["data-start"] or 0), int(attrs["data-end"] or 0)
    assert end - start == 10_000
    key = ("power_10s", start, end)
    assert wait_until(lambda: key in stored_windows(site), 20), key
    assert page.by_id["kpi-value-power_10s"] == figure(stored_windows(site)[key])
    # the open window is the next one (or a later one, had one closed since)
    opened = next(c for a, c in page.rows if a.get("data-kpi") == "power_10s"
                  and "data-end" not in a)
    assert opened[1] >= page.row("data-end", str(end))[2]

    # the same snapshot as JSON; nothing but GET and HEAD, nothing but / and /health.json
    with urllib.request.urlopen(site.page + "health.json", timeout=10) as answer:
        assert answer.headers["Content-Type"] == "application/json"
        assert states(json.loads(answer.read())) == states(health(site))
    for method, path, code in (("POST", "", 405), ("PUT", "health.json", 405),
                               ("GET", "nothing", 404), ("GET", "health.json/x", 404)):
        request = urllib.request.Request(site.page + path, method=method, data=None)
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(request, timeout=10)
        assert failed.value.code == code, (method, path)


# ----------------------------------------------------------------------- broker up


async def test_retained_health_reaches_the_broker_and_decodes(site: Site) -> None:
    # a KPI window has closed before the broker comes up (run alone, this test starts early)
    assert await wait_until_async(
        lambda: bool(health(site).get("kpis", {}).get("latest")), 40), health(site)
    site.broker.start()
    url = f"ssc/v1/{GW}/health"

    async def first_health(seconds: float) -> aiomqtt.Message:
        async with aiomqtt.Client("127.0.0.1", site.broker.port) as client:
            await client.subscribe(url, qos=1)
            async with asyncio.timeout(seconds):
                async for message in client.messages:
                    return message
        raise AssertionError("no message")

    live = await first_health(30)
    assert await wait_until_async(lambda: health(site)["uplink"]["connected"], 20)
    # a client that subscribes later gets it from the broker: retained
    retained = await first_health(10)
    assert retained.retain
    assert isinstance(live.payload, bytes) and isinstance(retained.payload, bytes)
    summary = decode_health(retained.payload)
    snapshot = health(site)
    assert summary.gw == GW and summary.boot == snapshot["boot"]
    assert (summary.devices_up, summary.devices_down, summary.devices_pending) == (1, 4, 0)
    assert {d.name for d in summary.down} == DOWN
    errors = {d.name: d.error or "" for d in summary.down}
    assert "exception 4" in errors["wrong-unit"] and "exception 2" in errors["no-such-register"]
    assert all(d.last_good is None and d.failures >= 1 for d in summary.down)
    assert summary.kpis_open == 1 and summary.kpis_closed == 1
    assert summary.buffer_state == "ok"

    # status now sees the uplink up: only the down devices are left as problems
    report = json.loads(status(site, "--json").stdout)
    assert report["health"]["uplink"]["connected"] is True
    assert report["health"]["uplink"]["broker"] == site.broker.url
    assert sorted(report["problems"]) == sorted(f"device {n} is down" for n in DOWN)

    # the platform side: `fleet health` reads the same retained summary from the broker
    fleet = [sys.executable, "-m", "agent.cli", "fleet", "health", "--broker", site.broker.url]
    done = subprocess.run([*fleet, "--json"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    (shown,) = json.loads(done.stdout)["gateways"]
    assert shown["gw"] == GW and shown["devices"]["down"] == 4
    assert {d["name"] for d in shown["down"]} == DOWN
    done = subprocess.run([*fleet, "--gw", GW], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["GATEWAY", "AT", "UP"] and lines[1].startswith(GW)
    assert {line.split(":")[1].strip() for line in lines if line.startswith("    down:")} == DOWN


def test_status_when_no_agent_runs(site: Site) -> None:
    assert site.agent.terminate() == 0
    store = BatchStore.open_readonly(site.data_dir / "buffer.db")
    try:
        stats, drops = store.stats(), store.drop_totals()
    finally:
        store.close()
    done = status(site, "--json")
    assert done.returncode == 3, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["running"] is False
    assert report["problems"] == ["no agent runs with this data_dir"]
    b = report["buffer"]
    assert (b["batches"], b["readings"], b["bytes"], b["next_seq"]) == (
        stats.batches, stats.readings, stats.payload_bytes, stats.next_seq)
    assert b["dropped_readings"] == sum(r for _, r in drops.values())
    human = status(site)
    assert human.returncode == 3
    assert human.stdout.startswith("agent    not running"), human.stdout
    assert f"buffer   {stats.batches} batches, {stats.readings} readings" in human.stdout


def test_status_without_data_dir_or_with_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[gateway]\nid = "gw-x"\ndata_dir = "{tmp_path / "never"}"\n')
    done = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", str(config)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "not running" in done.stdout and "buffer   none yet" in done.stdout
    config.write_text('[gateway]\nid = "gw x"\n')
    done = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", str(config)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 2 and "gateway" in done.stderr, done.stderr


def test_exit_codes_follow_the_lock_and_the_health_file(tmp_path: Path) -> None:
    import time

    from agent.gateway.health import write_health_file
    from agent.gateway.store import DataDirLock
    from agent.tools.status import exit_code, gather, lock_held

    data = tmp_path / "data"
    lock = DataDirLock.acquire(data)  # a real flock, as a running agent holds it
    device = {"name": "m", "state": "up", "polls": 1, "failures": 0, "failures_in_a_row": 0,
              "last_good_ms": 1, "last_good_age_s": 0.5, "last_error": None}
    snap: dict[str, Any] = {
        "t": 1, "devices": [device], "uplink": {"connected": True},
        "buffer": {"state": "ok"}, "kpis": {"open": [], "latest": []}}
    try:
        write_health_file(data / HEALTH_FILE, snap)
        assert lock_held(data / "agent.lock") is True
        now = time.time()
        assert exit_code(gather(data, now=now)) == 0
        for change in ({"devices": [{**device, "state": "down"}]},
                       {"uplink": {"connected": False}},
                       {"buffer": {"state": "unwritable"}}):
            write_health_file(data / HEALTH_FILE, {**snap, **change})
            report = gather(data, now=now)
            assert exit_code(report) == 1 and len(report["problems"]) == 1, report
        write_health_file(data / HEALTH_FILE, {**snap, "devices": [{**device, "state": "pending"}]})
        assert exit_code(gather(data, now=now)) == 0  # not polled yet is not down
        stuck = gather(data, now=now + 60)  # the agent stopped writing its file
        assert stuck["stale"] and exit_code(stuck) == 1
    finally:
        lock.release()
    assert lock_held(data / "agent.lock") is False
    assert exit_code(gather(data, now=now)) == 3
