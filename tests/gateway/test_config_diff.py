"""plan_reload: what a reload keeps, restarts, stops and starts, and what it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from agent.config import AgentConfig, config_from_dict
from agent.gateway.config_diff import FIXED_KEYS, Changes, plan_reload
from drivers.modbus.config import ModbusDeviceConfig

DRIVERS = {"modbus": ModbusDeviceConfig}
POINTS = [{"name": "p", "address": 0}, {"name": "q", "address": 1}]


def device(name: str, **keys: Any) -> dict[str, Any]:
    table = {"name": name, "driver": "modbus", "endpoint": "tcp://127.0.0.1:5020",
             "interval": "1 s", "points": POINTS}
    table.update(keys)
    return table


def kpi(name: str, source: str, **keys: Any) -> dict[str, Any]:
    return {"name": name, "source": source, "operator": "mean", "window": "1 min", **keys}


def config(*, devices: list[dict[str, Any]] | None = None,
           buses: list[dict[str, Any]] | None = None,
           kpis: list[dict[str, Any]] | None = None,
           gateway: dict[str, Any] | None = None,
           uplink: dict[str, Any] | None = None,
           buffer: dict[str, Any] | None = None,
           metrics: dict[str, Any] | None = None,
           status_page: dict[str, Any] | None = None) -> AgentConfig:
    data: dict[str, Any] = {
        "gateway": {"id": "gw-1", "data_dir": "/tmp/ssc-diff", "kpi_lateness": "2 s",
                    **(gateway or {})},
        "uplink": {"broker": "mqtt://127.0.0.1:1883", **(uplink or {})},
        "devices": devices if devices is not None else [device("a"), device("b")],
        "buses": buses or [],
        "kpis": kpis or [],
    }
    if buffer:
        data["buffer"] = buffer
    if metrics:
        data["metrics"] = metrics
    if status_page:
        data["status_page"] = status_page
    return config_from_dict(data, driver_models=DRIVERS)


BASE = config()
BUS = {"name": "rs485-1", "port": "/dev/ttyUSB0"}
ON_BUS = [device("a", endpoint=None, bus="rs485-1", unit=1),
          device("b", endpoint=None, bus="rs485-1", unit=2), device("c")]


@pytest.mark.parametrize(("old", "new", "devices"), [
    pytest.param(BASE, BASE, Changes(kept=("a", "b")), id="same"),
    pytest.param(BASE, config(devices=[device("a"), device("b", interval="2 s")]),
                 Changes(kept=("a",), restarted=("b",)), id="interval"),
    pytest.param(BASE, config(devices=[device("a")]), Changes(kept=("a",), stopped=("b",)),
                 id="removed"),
    pytest.param(BASE, config(devices=[device("a"), device("b"), device("c")]),
                 Changes(kept=("a", "b"), started=("c",)), id="added"),
    pytest.param(BASE, config(devices=[device("b"), device("a")]), Changes(kept=("a", "b")),
                 id="order does not matter"),
    pytest.param(BASE, config(devices=[device("a"), device("b", enabled=False)]),
                 Changes(kept=("a",), stopped=("b",)), id="disabled is stopped"),
    pytest.param(config(devices=[device("a"), device("b", enabled=False)]), BASE,
                 Changes(kept=("a",), started=("b",)), id="enabled is started"),
    pytest.param(BASE, config(devices=[device("a"), device("b", points=POINTS[:1])]),
                 Changes(kept=("a",), restarted=("b",)), id="points"),
    pytest.param(config(buses=[BUS], devices=ON_BUS),
                 config(buses=[{**BUS, "baudrate": 19200}], devices=ON_BUS),
                 Changes(kept=("c",), restarted=("a", "b")), id="bus changed"),
    pytest.param(config(buses=[BUS], devices=ON_BUS),
                 config(buses=[BUS, {"name": "rs485-2", "port": "/dev/ttyUSB1"}],
                        devices=ON_BUS),
                 Changes(kept=("a", "b", "c")), id="other bus added"),
    pytest.param(config(buses=[BUS], devices=ON_BUS),
                 config(buses=[BUS], devices=[ON_BUS[0], ON_BUS[2]]),
                 Changes(kept=("a", "c"), stopped=("b",)), id="neighbour on the bus removed"),
])
def test_devices(old: AgentConfig, new: AgentConfig, devices: Changes) -> None:
    plan = plan_reload(old, new)
    assert plan.devices == devices
    assert not plan.refused
    assert not plan.uplink_restart


def test_a_changed_bus_is_reported_as_restarted() -> None:
    old = config(buses=[BUS], devices=ON_BUS)
    new = config(buses=[{**BUS, "timeout": "2 s"}], devices=ON_BUS)
    assert plan_reload(old, new).buses == Changes(restarted=("rs485-1",))
    assert plan_reload(old, old).buses == Changes(kept=("rs485-1",))


KPIS = [kpi("k1", "a.p"), kpi("k2", "b.p"), kpi("k3", "kpi:k1", window="1 h")]


@pytest.mark.parametrize(("new", "kpis"), [
    pytest.param(config(kpis=KPIS), Changes(kept=("k1", "k2", "k3")), id="same"),
    pytest.param(config(kpis=[KPIS[0], kpi("k2", "b.p", min_coverage=0.5), KPIS[2]]),
                 Changes(kept=("k1", "k3"), restarted=("k2",)), id="changed"),
    pytest.param(config(kpis=[kpi("k1", "a.q"), KPIS[1], KPIS[2]]),
                 Changes(kept=("k2",), restarted=("k1", "k3")), id="reader of a changed one"),
    pytest.param(config(kpis=[KPIS[0], KPIS[2]]),
                 Changes(kept=("k1", "k3"), stopped=("k2",)), id="removed"),
    pytest.param(config(kpis=[*KPIS, kpi("k4", "a.q")]),
                 Changes(kept=("k1", "k2", "k3"), started=("k4",)), id="added"),
    pytest.param(config(kpis=KPIS, devices=[device("a"), device("b", interval="2 s")]),
                 Changes(kept=("k1", "k3"), restarted=("k2",)),
                 id="device interval is the sample interval"),
    pytest.param(config(kpis=KPIS, gateway={"timezone": "Europe/Berlin"}),
                 Changes(restarted=("k1", "k2", "k3")), id="time zone"),
    pytest.param(config(kpis=KPIS, gateway={"kpi_lateness": "5 s"}),
                 Changes(kept=("k1", "k2", "k3")), id="lateness keeps windows"),
])
def test_kpis(new: AgentConfig, kpis: Changes) -> None:
    plan = plan_reload(config(kpis=KPIS), new)
    assert plan.kpis == kpis
    assert not plan.refused


@pytest.mark.parametrize(("uplink", "restart", "batching"), [
    pytest.param({}, False, False, id="same"),
    pytest.param({"keepalive": "10 s"}, True, False, id="keepalive"),
    pytest.param({"broker": "mqtt://127.0.0.1:1884"}, True, False, id="broker"),
    pytest.param({"topic_prefix": "city/v1"}, True, False, id="topic prefix"),
    pytest.param({"batch_max_age": "30 s"}, False, True, id="batch age"),
    pytest.param({"compression": "none"}, False, True, id="compression"),
    pytest.param({"flush_interval": "2 s", "max_inflight": 2}, True, True, id="both"),
])
def test_uplink(uplink: dict[str, Any], restart: bool, batching: bool) -> None:
    plan = plan_reload(BASE, config(uplink=uplink))
    assert (plan.uplink_restart, plan.batching_changed) == (restart, batching)
    assert plan.changes_anything == (restart or batching)
    assert plan.devices == Changes(kept=("a", "b"))


@pytest.mark.parametrize(("new", "key"), [
    pytest.param(config(gateway={"id": "gw-2"}), "gateway.id", id="id"),
    pytest.param(config(gateway={"data_dir": "/tmp/elsewhere"}), "gateway.data_dir",
                 id="data_dir"),
    pytest.param(config(gateway={"log_level": "debug"}), "gateway.log_level", id="log level"),
    pytest.param(config(buffer={"max_bytes": "1 MiB"}), "buffer.max_bytes", id="buffer"),
    pytest.param(config(buffer={"sync": "normal"}), "buffer.sync", id="sync"),
    pytest.param(config(metrics={"port": 9100}), "metrics.port", id="metrics"),
    pytest.param(config(status_page={"port": 8081}), "status_page.port", id="status page"),
])
def test_fixed_keys_refuse_the_reload(new: AgentConfig, key: str) -> None:
    plan = plan_reload(BASE, new)
    assert len(plan.refused) == 1
    assert plan.refused[0].startswith(f"{key}: cannot change while the agent runs")
    assert "restart the agent" in plan.refused[0]
    assert key in FIXED_KEYS


def test_every_fixed_key_that_changed_is_named() -> None:
    new = config(gateway={"id": "gw-2", "data_dir": "/tmp/x"}, buffer={"when_full": "drop_newest"},
                 devices=[device("a")])
    plan = plan_reload(BASE, new)
    assert [line.split(":")[0] for line in plan.refused] == [
        "gateway.id", "gateway.data_dir", "buffer.when_full"]
    assert "'gw-1' → 'gw-2'" in plan.refused[0]


def test_keys_that_change_live() -> None:
    plan = plan_reload(BASE, config(gateway={"shutdown_timeout": "30 s"}))
    assert not plan.refused and not plan.changes_anything
    plan = plan_reload(config(kpis=KPIS), config(kpis=KPIS, gateway={"kpi_lateness": "5 s"}))
    assert plan.kpi_engine_changed and plan.changes_anything


def test_source_path_is_not_a_change(tmp_path: Any) -> None:
    moved = BASE.model_copy(update={"source_path": tmp_path / "other.toml"})
    assert not plan_reload(BASE, moved).changes_anything
