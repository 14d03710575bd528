"""The fleet's meter inventory: the sink's ``devices`` rows kept at ingest (SQLite and
PostgreSQL, the receiver fed real wire-v1 batches through mosquitto), their backfill when an
older database is migrated, the city config's ``[inventory]`` and its checks, the pure
figures (table tests worked out by hand) and ``ssc-agent fleet inventory``'s output and exit
codes."""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.cli import main as cli_main
from agent.endpoints import parse_broker_url
from agent.errors import ConfigError
from agent.platform.city import InventorySection
from agent.platform.city_checks import city_from_dict
from agent.platform.indicators import Catalogue, load_catalogue
from agent.platform.inventory import compute_inventory, render_inventory
from agent.platform.receiver import ReceiverSettings, ReceiverStats, run_receiver
from agent.platform.sink import open_sink
from agent.platform.sink.devices import DeviceRow, device_rows, read_devices
from agent.platform.sink.summary import StoredBatch
from agent.wire import Batch, DownDevice, HealthSummary, Series, encode_health
from tests.conftest import Mosquitto
from tests.platform.test_receiver import PREFIX, Running

pytestmark = [pytest.mark.timeout(90), pytest.mark.xdist_group("postgresql")]

H = 3_600_000
NOW = 1_800_000_000_000


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


# --------------------------------------------------------------------------- pure figures

def _device(gw: str, dev: str, last_good: int | None, *, seen: int = NOW) -> DeviceRow:
    return DeviceRow(gw, dev, seen, seen, last_good, last_good, 10, 0 if last_good is None else 9)


def _inventory(**kw: Any) -> InventorySection:
    return InventorySection.model_validate(kw)


DEVICES = [
    _device("gw-a", "em-1", NOW - 1 * H),  # reporting
    _device("gw-a", "em-2", NOW - 24 * H),  # exactly a window ago: not within it
    _device("gw-a", "em-3", NOW - 24 * H + 1),  # just within
    _device("gw-a", "em-4", None),  # only bad readings
    _device("gw-b", "wm-1", NOW - 2 * H),
    _device("gw-b", "wm-2", NOW - 30 * H),
    _device("gw-c", "pm", NOW),  # listed as nothing
]
GROUPS = [{"gateway": "gw-a", "kind": "electricity",
           "devices": ["em-1", "em-2", "em-3", "em-4", "em-9"]},  # em-9 never sent
          {"gateway": "gw-b", "kind": "water"}]  # every device of gw-b


@pytest.mark.parametrize(("section", "expected"), [
    # stock given: 2 of the 5 electricity meters report (em-1, em-3) of 40 installed: 5 %;
    # water: 1 of 2 of 4 installed: 25 %
    ({"electricity_meters": 40, "water_meters": 4, "meters": GROUPS},
     {"electricity": (40, 5, 2, 5.0), "water": (4, 2, 1, 25.0)}),
    # no stock: not computed, the counts still shown
    ({"meters": GROUPS}, {"electricity": (None, 5, 2, None), "water": (None, 2, 1, None)}),
    # a window of 48 h: em-2 (24 h) and wm-2 (30 h) report too
    ({"electricity_meters": 40, "water_meters": 4, "reporting_window": "48 h", "meters": GROUPS},
     {"electricity": (40, 5, 3, 7.5), "water": (4, 2, 2, 50.0)}),
    # a stock below the meters reporting: not valid
    ({"electricity_meters": 1, "meters": GROUPS},
     {"electricity": (1, 5, 2, None), "water": (None, 2, 1, None)}),
    # a stock and no meter of that kind listed: not computed; gas has a stock only
    ({"electricity_meters": 40, "gas_meters": 10},
     {"electricity": (40, 0, 0, None), "water": (None, 0, 0, None), "gas": (10, 0, 0, None)}),
])
def test_figures_per_kind(catalogue: Catalogue, section: dict[str, Any],
                          expected: dict[str, tuple[Any, ...]]) -> None:
    inv = compute_inventory(_inventory(**section), DEVICES, at_ms=NOW,
                            indicators=[i for _, i in catalogue.indicators])
    got = {k.kind: (k.stock, k.known, k.reporting, k.share) for k in inv.kinds}
    assert got == expected
    for k in inv.kinds:
        assert k.valid == (k.share is not None) and bool(k.why) != k.valid
    figures = {f.indicator.id: f.figures.share for f in inv.indicators}
    assert figures == {"smart_electricity_meters": expected["electricity"][3],
                       "smart_water_meters": expected["water"][3]}


def test_why_a_figure_is_not_computed_and_the_table(catalogue: Catalogue) -> None:
    inv = compute_inventory(
        _inventory(electricity_meters=1, gas_meters=3, meters=GROUPS), DEVICES, at_ms=NOW,
        indicators=[i for _, i in catalogue.indicators])
    why = {k.kind: k.why for k in inv.kinds}
    assert why["electricity"].startswith("not valid: 2 smart electricity meters report, more "
                                         "than the 1 installed")
    assert "no [inventory] water_meters" in why["water"]
    assert "no gateway device is listed as a gas meter" in why["gas"]
    assert [(d.gw, d.dev) for d in inv.unlisted] == [("gw-c", "pm")]
    assert {(m.dev, m.seen, m.reporting) for m in inv.kinds[0].meters} == {
        ("em-1", True, True), ("em-2", True, False), ("em-3", True, True),
        ("em-4", True, False), ("em-9", False, False)}
    text = render_inventory(inv)
    assert "not reporting: gw-a/em-9: never sent a reading" in text
    assert "not reporting: gw-a/em-4: no good reading ever" in text
    assert "not reporting: gw-a/em-2: last good reading 2027-01-14T08:00:00Z" in text
    assert "Smart Electricity Meters" not in text  # the catalogue's name, not U4SSC's
    assert "Smart electricity meters (EC:ICT:ES:1C): -" in text
    assert "1 devices sent readings and are not listed" in text
    assert text.splitlines()[0].split() == ["KIND", "STOCK", "SMART", "REPORTING", "SHARE"]


def test_device_rows_sum_a_transaction_per_device() -> None:
    """Readings times as stored (t0 + cumsum(dt) + the batch's clock shift), the newest good
    one per device, counts summed over the batches of one transaction."""
    b1 = Batch(gw="gw", boot=1, seq=1, created=0, series=(
        Series("m", "p", None, 1000, (0, 10, 10), (1, 2, 3), (0, 0, 2)),
        Series("m", "q", None, 1005, (0,), (1,), (1,)),
        Series("n", "p", None, 500, (0,), (1,), (3,))))
    b2 = Batch(gw="gw", boot=1, seq=2, created=0, series=(
        Series("m", "p", None, 900, (0,), (1,), (0,)),))
    rows = device_rows([StoredBatch(b1, False, 50, shift_ms=100), StoredBatch(b2, False, 40)])
    assert rows == [("gw", "m", 40, 50, 1120, 1110, 5, 3), ("gw", "n", 50, 50, 600, None, 1, 0)]


_SERIES = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 4)), min_size=1, max_size=8)


@given(st.lists(st.tuples(st.sampled_from(["m", "n"]), st.integers(0, 10**9), _SERIES),
                min_size=1, max_size=6), st.integers(-10**6, 10**6))
def test_device_rows_are_the_readings_one_by_one(
        series: list[tuple[str, int, list[tuple[int, int]]]], shift: int) -> None:
    batch = Batch(gw="gw", boot=1, seq=1, created=0, series=tuple(
        Series(dev, "p", None, t0, (0, *(d for d, _ in items[1:])),
               (1,) * len(items), tuple(q for _, q in items)) for dev, t0, items in series))
    expected: dict[str, list[Any]] = {}
    for s in batch.series:
        row = expected.setdefault(s.dev, [None, None, 0, 0])
        t = s.t0 + shift
        for delta, q in zip(s.dt, s.q, strict=True):
            t += delta
            row[0] = t if row[0] is None else max(row[0], t)
            row[2] += 1
            if q == 0:
                row[1] = t if row[1] is None else max(row[1], t)
                row[3] += 1
    got = device_rows([StoredBatch(batch, False, 7, shift_ms=shift)])
    assert got == [("gw", dev, 7, 7, *row) for dev, row in sorted(expected.items())]


# --------------------------------------------------------------------------- city config

CITY: dict[str, Any] = {
    "city": {"name": "Testtown", "timezone": "Europe/Berlin"},
    "sites": [{"id": "district", "name": "District", "population": 12000,
               "location": {"lat": 50.0, "lon": 8.5},
               "feeds": [{"gateway": "gw-a", "kpis": ["energy_day"]}]}],
    "targets": [{"id": "smart", "indicator": "smart_electricity_meters", "comparison": ">=",
                 "value": 90.0, "unit": "%", "scope": "city", "by": 2030}],
    "inventory": {"electricity_meters": 12000, "water_meters": 3000, "reporting_window": "1 d",
                  "meters": [{"gateway": "gw-a", "kind": "electricity", "devices": ["em-1"]},
                             {"gateway": "gw-b", "kind": "water"}]},
}


def _problems(change: dict[str, Any], catalogue: Catalogue) -> list[str]:
    data = copy.deepcopy(CITY)
    data["inventory"].update(change)
    try:
        city_from_dict(data, catalogue=catalogue, source_path=Path("city.toml"))
    except ConfigError as exc:
        return exc.problems
    return []


def test_the_inventory_section_validates(catalogue: Catalogue) -> None:
    config = city_from_dict(CITY, catalogue=catalogue)
    assert config.inventory.stock("electricity") == 12000
    assert config.inventory.stock("heat") is None and config.inventory.stock("air") is None
    assert config.inventory.reporting_window.seconds == 86_400
    assert city_from_dict({k: v for k, v in CITY.items() if k != "inventory"},
                          catalogue=catalogue).inventory.meters == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"electricity_meters": 0},
     "city.toml: inventory.electricity_meters: must be greater than 0"),
    ({"reporting_window": "10 min"},
     "city.toml: inventory.reporting_window: '10 min' is too short: at least 1 h"),
    ({"solar_meters": 5}, "city.toml: inventory.solar_meters: unknown key"),
    ({"meters": [{"gateway": "gw-a", "kind": "steam"}]},
     "city.toml: inventory.meters[0].kind: "),
    ({"meters": [{"gateway": "gw-a", "kind": "water", "devices": ["m", "m"]}]},
     "city.toml: inventory.meters[0].devices[1]: device 'm' of gateway 'gw-a' is listed by "
     "this entry already: a meter has one kind"),
    ({"meters": [{"gateway": "gw-a", "kind": "water", "devices": ["m"]},
                 {"gateway": "gw-a", "kind": "electricity"}]},
     "city.toml: inventory.meters[1].devices: empty: every device of gateway 'gw-a', which "
     "inventory.meters[0] lists too"),
    ({"meters": [{"gateway": "gw-a", "kind": "water"},
                 {"gateway": "gw-a", "kind": "electricity", "devices": ["m"]}]},
     "city.toml: inventory.meters[1].devices[0]: device 'm' of gateway 'gw-a' is listed by "
     "inventory.meters[0] already"),
])
def test_inventory_problems_name_their_place(catalogue: Catalogue, change: dict[str, Any],
                                             expected: str) -> None:
    got = _problems(change, catalogue)
    assert len(got) == 1 and got[0].startswith(expected), got


def test_the_catalogue_names_the_kind_each_inventory_indicator_counts(
        catalogue: Catalogue) -> None:
    kinds = {i.id: i.computation.meter for _, i in catalogue.indicators
             if i.computation.input == "inventory"}
    assert kinds == {"smart_electricity_meters": "electricity", "smart_water_meters": "water"}
    assert all(i.computation.meter is None for _, i in catalogue.indicators
               if i.computation.input != "inventory")


# --------------------------------------------------------------------------- end to end

@pytest.fixture(params=["sqlite", "postgresql"])
def sink_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/inventory.db"
    return str(request.getfixturevalue("pg_url"))


def _series(dev: str, t0: int, qualities: tuple[int, ...]) -> Series:
    n = len(qualities)
    return Series(dev, "energy", "kWh", t0, (0,) + (60_000,) * (n - 1), (1.5,) * n, qualities)


def _health(gw: str, t: int, *down: str) -> bytes:
    return encode_health(HealthSummary(
        gw=gw, boot=1, t=t, version="0.9", devices_up=3, devices_down=len(down),
        devices_pending=0, buffer_state="ok", buffer_batches=0, buffer_readings=0,
        buffer_bytes=0, buffer_oldest_age_s=None, buffer_dropped_readings=0,
        uplink_in_flight=0, uplink_last_ack_age_s=1.0, kpis_open=0, kpis_closed=0,
        down=tuple(DownDevice(name, 7, None, "timeout after 2 s") for name in down)))


def _city_file(tmp_path: Path, inventory: dict[str, Any]) -> Path:
    lines = ['[city]', 'name = "Testtown"', 'timezone = "Europe/Berlin"', '',
             '[[sites]]', 'id = "district"', 'name = "District"',
             'location = { lat = 50.0, lon = 8.5 }',
             'feeds = [{ gateway = "gw-a", kpis = ["energy_day"] }]', '', '[inventory]']
    lines += [f"{k} = {json.dumps(v)}" for k, v in inventory.items() if k != "meters"]
    for group in inventory.get("meters", []):
        lines += ["", "[[inventory.meters]]"] + [f"{k} = {json.dumps(v)}"
                                                  for k, v in group.items()]
    path = tmp_path / "city.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _inventory_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = cli_main(["fleet", "inventory", *args])
    out, err = capsys.readouterr()
    return status, out, err


async def test_the_inventory_of_what_the_gateways_sent(
        mosquitto: Mosquitto, tmp_path: Path, sink_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    import time

    now = int(time.time() * 1000)
    # gw-a: em-1 good an hour ago, em-2 only comm errors, em-3 good two days ago; a batch
    # with em-1 again (resent: counted once); gw-b: wm-1 good now, wm-2 good 30 h ago
    sent = [
        Batch(gw="gw-a", boot=1, seq=1, created=now, series=(
            _series("em-1", now - H, (0, 0, 2)), _series("em-2", now - H, (2, 2)),
            _series("em-3", now - 48 * H, (0,)))),
        Batch(gw="gw-b", boot=1, seq=1, created=now, series=(
            _series("wm-1", now - 60_000, (0,)), _series("wm-2", now - 30 * H, (0, 1)))),
    ]
    stats = ReceiverStats()
    settings = ReceiverSettings(broker=parse_broker_url(mosquitto.url), sink_url=sink_url,
                                topic_prefix=PREFIX)
    stop = asyncio.Event()
    with capture_logs() as logs:
        r = Running(mosquitto, tmp_path / "payloads", stats, logs)
        task = asyncio.create_task(run_receiver(settings, stop=stop, stats=stats))
        try:
            await r.subscribed()
            for batch in (*sent, sent[0]):
                await r.publish_batch(batch)
            # gw-a's retained health summary says em-2 is down; gw-b's topic carries gw-a's
            await r.publish(f"{PREFIX}/gw-a/health", _health("gw-a", now, "em-2"), retain=True)
            await r.publish(f"{PREFIX}/gw-b/health", _health("gw-a", now), retain=True)
            await r.wait_for(lambda: stats.batches + stats.duplicates >= 3
                             and stats.health_summaries == 1 and stats.rejected == 1)
        finally:
            stop.set()
            async with asyncio.timeout(10):
                await task
    with open_sink(sink_url) as sink:
        rows = {(d.gw, d.dev): d for d in read_devices(sink.select)}
    assert sorted(rows) == [("gw-a", "em-1"), ("gw-a", "em-2"), ("gw-a", "em-3"),
                            ("gw-b", "wm-1"), ("gw-b", "wm-2")]
    em1 = rows[("gw-a", "em-1")]
    assert (em1.readings, em1.good_readings, em1.last_good_t, em1.last_t) == (
        3, 2, now - H + 60_000, now - H + 120_000)
    assert (rows[("gw-a", "em-2")].last_good_t, rows[("gw-a", "em-2")].readings) == (None, 2)
    assert now <= em1.first_seen <= em1.last_seen <= int(time.time() * 1000)

    city = _city_file(tmp_path, {
        "electricity_meters": 20, "water_meters": 8,
        "meters": [{"gateway": "gw-a", "kind": "electricity",
                    "devices": ["em-1", "em-2", "em-3", "em-4"]},
                   {"gateway": "gw-b", "kind": "water"}]})
    status, out, err = _inventory_cli(capsys, "--sink", sink_url, "--city", str(city), "--json")
    assert (status, err) == (0, "")
    doc = json.loads(out)
    kinds = {k["kind"]: k for k in doc["kinds"]}
    e, w = kinds["electricity"], kinds["water"]
    assert (e["stock"], e["smart"], e["reporting"], e["share_percent"], e["valid"]) == (
        20, 4, 1, 5.0, True)
    assert {m["dev"]: (m["seen"], m["reporting"]) for m in e["meters"]} == {
        "em-1": (True, True), "em-2": (True, False), "em-3": (True, False),
        "em-4": (False, False)}
    assert {m["dev"]: m["down"] for m in e["meters"] if m["down"]} == {
        "em-2": {"health_at_ms": now, "failures": 7, "error": "timeout after 2 s"}}
    assert (w["smart"], w["reporting"], w["share_percent"]) == (2, 1, 12.5)
    assert doc["reporting_window_ms"] == 24 * H and doc["unlisted"] == []
    assert {i["id"]: (i["u4ssc"], i["value"]) for i in doc["indicators"]} == {
        "smart_electricity_meters": ("EC:ICT:ES:1C", 5.0),
        "smart_water_meters": ("EC:ICT:WS:1C", 12.5)}

    status, out, _ = _inventory_cli(capsys, "--sink", sink_url, "--city", str(city))
    assert status == 0
    assert out.splitlines()[1].split() == ["electricity", "20", "4", "1", "5.0", "%"]
    assert "not reporting: gw-a/em-4: never sent a reading" in out
    assert "gw-a/em-2: no good reading ever; down in its gateway's health at" in out
    with open_sink(sink_url) as sink:
        (rejected,) = sink.rejected()
        assert (rejected.gw, rejected.kind) == ("gw-b", "bad_health")
        # an older summary (a retained one sent again after a newer) does not replace it
        sink.store_health("gw-a", _health("gw-a", now - 60_000))
        assert sink.select("SELECT t FROM health") == [(now,)]
        sink.store_health("gw-a", _health("gw-a", now + 60_000))
        assert sink.select("SELECT t FROM health") == [(now + 60_000,)]


# --------------------------------------------------------------------------- migration

def _batches() -> list[Batch]:
    return [
        Batch(gw="gw-a", boot=1, seq=1, created=0, series=(
            _series("em-1", NOW - H, (0, 2)), _series("em-2", NOW, (4,)))),
        Batch(gw="gw-a", boot=1, seq=2, created=0, series=(_series("em-1", NOW, (0, 0)),)),
        Batch(gw="gw-b", boot=1, seq=7, created=0, series=(_series("wm", NOW - 5 * H, (1,)),)),
    ]


def test_a_database_stored_before_the_devices_table_is_migrated(
        sink_url: str, request: pytest.FixtureRequest) -> None:
    with open_sink(sink_url) as sink:
        for batch in _batches():
            sink.store(batch)
        before = read_devices(sink.select)
    assert [(d.dev, d.readings, d.good_readings) for d in before] == [
        ("em-1", 4, 3), ("em-2", 1, 0), ("wm", 1, 0)]
    # the database as the release before the inventory left it
    if sink_url.startswith("sqlite"):
        with sqlite3.connect(sink_url.removeprefix("sqlite:///")) as conn:
            conn.execute("DROP TABLE health")
            conn.execute("DROP TABLE devices")
            conn.execute("PRAGMA user_version = 1")
        conn.close()
    else:
        with request.getfixturevalue("pg_server").admin(sink_url.rsplit("/", 1)[1]) as conn:
            conn.execute("DROP TABLE health")
            conn.execute("DROP TABLE devices")
            conn.execute("DELETE FROM schema_version WHERE version >= 4")
    with open_sink(sink_url) as sink:
        assert read_devices(sink.select) == before  # the backfill gives what ingest kept
        sink.store(Batch(gw="gw-b", boot=1, seq=8, created=0,
                         series=(_series("wm", NOW, (0,)),)))
        after = {d.dev: d for d in read_devices(sink.select)}
    assert (after["wm"].readings, after["wm"].last_good_t) == (2, NOW)
    with open_sink(sink_url) as sink:  # opening again migrates nothing twice
        assert len(read_devices(sink.select)) == 3


# --------------------------------------------------------------------------- errors

def test_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "r.db"
    with open_sink(f"sqlite:///{db}") as sink:
        sink.store(_batches()[0])
    good = _city_file(tmp_path, {"electricity_meters": 5,
                                 "meters": [{"gateway": "gw-a", "kind": "electricity"}]})
    status, out, err = _inventory_cli(capsys, "--sink", str(db), "--city", str(good))
    assert (status, err) == (0, "") and "electricity" in out
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("electricity_meters = 5", "electricity_meters = -5"))
    for args, says in (
            (["--sink", str(db), "--city", str(bad)],
             "inventory.electricity_meters: must be greater than 0"),
            (["--sink", str(tmp_path / "typo.db"), "--city", str(good)], "no such database"),
            (["--sink", "mqtt://x/y", "--city", str(good)], "--sink"),
            (["--sink", str(db), "--city", str(tmp_path / "none.toml")], "none.toml")):
        status, out, err = _inventory_cli(capsys, *args)
        assert (status, out) == (2, ""), args
        assert len(err.splitlines()) == 1 and says in err, err
    with sqlite3.connect(db) as conn:  # a database the receiver has not migrated yet
        conn.execute("DROP TABLE devices")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    status, _, err = _inventory_cli(capsys, "--sink", str(db), "--city", str(good))
    assert status == 2 and "start the receiver of this release once" in err


# --------------------------------------------------------------------------- the report

def test_the_report_shows_the_smart_meter_indicators(
        sink_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The catalogue's inventory indicators in the report (JSON, CSV, HTML) and a target on
    one judged on it; a period that ended before the inventory's window says why not."""
    import datetime as dt
    import time
    from zoneinfo import ZoneInfo

    now = int(time.time() * 1000)
    with open_sink(sink_url) as sink:
        sink.store(Batch(gw="gw-a", boot=1, seq=1, created=now, series=(
            _series("em-1", now - H, (0,)), _series("em-2", now - H, (2,)),
            _series("em-3", now - 2 * H, (0, 0)))))
    city = _city_file(tmp_path, {"electricity_meters": 8,
                                 "meters": [{"gateway": "gw-a", "kind": "electricity"}]})
    text = city.read_text().replace("[inventory]", (
        '[[targets]]\nid = "smart"\nindicator = "smart_electricity_meters"\n'
        'comparison = ">="\nvalue = 90.0\nunit = "%"\nscope = "city"\nby = 2030\n\n'
        "[inventory]"))
    city.write_text(text)
    today = dt.datetime.now(ZoneInfo("Europe/Berlin")).date()  # the city's

    def report(first: str, last: str, form: str) -> str:
        capsys.readouterr()
        status = cli_main(["report", "--sink", sink_url, "--city", str(city), "--from", first,
                           "--to", last, "--format", form])
        out, err = capsys.readouterr()
        assert (status, err) == (0, ""), err
        return out

    doc = json.loads(report(f"{today.year}-01-01", today.isoformat(), "json"))
    sections = {s["id"]: s for s in doc["indicators"]}
    (electricity,) = sections["smart_electricity_meters"]["city_figures"]
    assert electricity["year"] == today.year
    assert electricity["figure"] == {"value": 25.0, "valid": True, "reason": "", "n": 2,
                                     "expected": 8, "partial": None}  # em-1, em-3 of 8
    (water,) = sections["smart_water_meters"]["city_figures"]
    assert not water["figure"]["valid"] and "no [inventory] water_meters" in water["figure"][
        "reason"]
    (target,) = doc["targets"]
    assert [(y["year"], y["figure"]["value"], y["meets"]) for y in target["years"]][-1] == (
        today.year, 25.0, False)
    csv_text = report(f"{today.year}-01-01", today.isoformat(), "csv")
    assert f"smart_electricity_meters/city/{today.year}/smart meters reporting" in csv_text
    html = report(f"{today.year}-01-01", today.isoformat(), "html")
    assert f'data-fig="smart_electricity_meters/city/{today.year}/smart meters reporting' in html

    past = today.year - 1
    doc = json.loads(report(f"{past}-01-01", f"{past}-12-31", "json"))
    (electricity,) = {s["id"]: s for s in doc["indicators"]}["smart_electricity_meters"][
        "city_figures"]
    assert electricity["figure"]["valid"] is False
    assert "not its history" in electricity["figure"]["reason"]
