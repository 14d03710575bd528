"""The live KPI engine across a reload: an unchanged KPI keeps its open window (its count holds
readings from both sides), a changed one restarts at the current window, a new one starts, a
removed one goes; the batcher then saves a checkpoint of the new engine, which a restart
resumes. Real BatchStore on a temporary file; times are plain epoch ms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.config import AgentConfig, config_from_dict
from agent.gateway.batcher import Batcher
from agent.gateway.config_diff import plan_reload
from agent.gateway.store import BatchStore
from agent.kpi.live import LiveKpis
from agent.readings import Quality, Reading
from drivers.modbus.config import ModbusDeviceConfig

LATENESS_MS = 1000
T0 = 1_700_000_040_000  # a minute boundary (epoch ms)


def config(*kpis: dict[str, Any]) -> AgentConfig:
    device = {"name": "m", "driver": "modbus", "endpoint": "tcp://127.0.0.1:5020",
              "interval": "1 s", "points": [{"name": "p", "address": 0},
                                            {"name": "q", "address": 1}]}
    return config_from_dict({"gateway": {"id": "gw-k", "kpi_lateness": "1 s"},
                             "devices": [device], "kpis": list(kpis)},
                            driver_models={"modbus": ModbusDeviceConfig}, require_uplink=False)


def mean(name: str, point: str, **keys: Any) -> dict[str, Any]:
    return {"name": name, "source": f"m.{point}", "operator": "mean", "window": "1 min", **keys}


OLD = config(mean("k1", "p"), mean("k2", "q"), mean("gone", "q"))
NEW = config(mean("k1", "p"), mean("k2", "q", min_coverage=0.5), mean("k3", "p"))


def second(s: int) -> list[Reading]:
    t = T0 + s * 1000
    return [Reading("m", "p", None, t, 1.0, Quality.GOOD),
            Reading("m", "q", None, t, 2.0, Quality.GOOD)]


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> float:
        return self.ms / 1000


def test_unchanged_kpis_keep_their_window_across_a_reload(tmp_path: Path) -> None:
    clock = Clock()
    store = BatchStore.open(tmp_path / "b.db", clock=clock)
    live = LiveKpis.fresh(OLD, store, clock, LATENESS_MS)
    outputs: list[dict[str, Any]] = []
    for s in range(30):
        outputs += live.step(second(s), T0 + s * 1000 + 500)[0]
    plan = plan_reload(OLD, NEW)
    assert plan.kpis.restarted == ("k2",) and plan.kpis.started == ("k3",)
    assert plan.kpis.stopped == ("gone",)
    live = live.reconfigured(NEW, plan.kpis.restarted, LATENESS_MS, 60.0)
    for s in range(30, 62):
        outputs += live.step(second(s), T0 + s * 1000 + 500)[0]
    first = {o["kpi"]: o for o in outputs if o["start"] == T0}
    assert sorted(first) == ["k1", "k2", "k3"]  # "gone" was not emitted
    assert first["k1"]["n"] == 60  # every second of the minute, before and after
    # k2 and k3 started at the window the reload fell in, from the engine's watermark on
    # (readings within the lateness before the reload still reach them)
    assert 29 <= first["k2"]["n"] <= 31
    assert first["k3"]["n"] == first["k2"]["n"]
    assert first["k1"]["valid"] and first["k2"]["valid"]
    store.close()


def test_the_flush_after_a_reload_checkpoints_the_new_engine(tmp_path: Path) -> None:
    clock = Clock()
    store = BatchStore.open(tmp_path / "b.db", clock=clock)
    batcher = Batcher(store, gw="gw-k", boot=1, max_readings=10_000, max_age=3600.0, codec=1,
                      level=3, clock=clock, on_sealed=lambda: None,
                      kpis=LiveKpis.fresh(OLD, store, clock, LATENESS_MS))
    for s in range(20):
        clock.ms = T0 + s * 1000 + 500
        batcher.add(second(s))
        batcher.flush()
    snapshot, journal = store.load_kpi_state()
    assert snapshot is None and list(journal)  # only the journal so far
    old = batcher.kpis
    assert old is not None
    batcher.replace_kpis(old.reconfigured(NEW, ["k2"], LATENESS_MS, 60.0))
    clock.ms += 1000
    batcher.add(second(20))
    batcher.flush()
    snapshot, journal = store.load_kpi_state()
    assert snapshot is not None and list(journal) == []
    assert sorted(snapshot["kpis"]) == ["k1", "k2", "k3"]
    running = batcher.kpis
    assert running is not None
    resumed = LiveKpis.resume(NEW, store, clock, LATENESS_MS)
    assert resumed.engine.snapshot() == running.engine.snapshot()
    batcher.close()
    store.close()
