"""`[metrics] port`: Prometheus text from a running agent (real process, broker, meter)."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agent.endpoints import parse_broker_url
from agent.profiles import load_profile
from drivers.modbus.simulator import serve
from tests.conftest import Mosquitto, free_port

ROOT = Path(__file__).resolve().parents[2]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        return str(resp.read().decode())


def value(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in\n{text}"
    return float(match.group(1))


async def test_metrics_show_delivery_and_devices(tmp_path: Path, mosquitto: Mosquitto) -> None:
    meter_port, metrics_port = free_port(), free_port()
    server = await serve({1: load_profile("ssc-demo-meter")}, "127.0.0.1", meter_port)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[gateway]\nid = "gw-m"\ndata_dir = "{tmp_path / "d"}"\n'
        f'[uplink]\nbroker = "{mosquitto.url}"\nbatch_max_age = "1 s"\n'
        f"[metrics]\nport = {metrics_port}\n"
        f'[[devices]]\nname = "good"\ndriver = "modbus"\nendpoint = "tcp://127.0.0.1:{meter_port}"\n'
        'profile = "ssc-demo-meter"\ninterval = "1 s"\n'
        f'[[devices]]\nname = "dead"\ndriver = "modbus"\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
        'profile = "ssc-demo-meter"\ninterval = "1 s"\n'
    )
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
                             cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        text = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)  # the simulated meter runs in this event loop
            try:
                text = await asyncio.to_thread(scrape, metrics_port)
            except OSError:
                continue
            if value(text, "ssc_agent_batches_acknowledged_total") >= 2:
                break
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
        await server.stop()
    assert value(text, "ssc_agent_batches_acknowledged_total") >= 2, text
    assert value(text, "ssc_agent_readings_polled_total") >= 2 * 20 * 2
    assert value(text, "ssc_agent_readings_acknowledged_total") > 0
    assert value(text, 'ssc_agent_device_up{device="good"}') == 1
    assert value(text, 'ssc_agent_device_up{device="dead"}') == 0
    assert value(text, 'ssc_agent_device_failures_total{device="dead"}') >= 1
    assert value(text, "ssc_agent_uplink_connected") == 1
    assert "ssc_agent_backlog_batches" in text and "ssc_agent_backlog_age_seconds" in text
    # nothing was dropped, and the drop counters say so (rather than being absent)
    assert value(text, "ssc_agent_dropped_events_total") == 0
    assert value(text, "ssc_agent_dropped_aggregates_total") == 0


def test_backlog_age_is_elapsed_time_through_a_wall_clock_step(tmp_path: Path) -> None:
    """An NTP step by months must not show a backlog months old (or a negative age)."""
    from agent.gateway.batcher import Batcher
    from agent.gateway.metrics import DeliveryCollector
    from agent.gateway.store import BatchStore
    from agent.gateway.uplink import Uplink
    from agent.mqtt import MqttSettings

    wall, mono = [1_700_000_000.0], [100.0]
    store = BatchStore.open(tmp_path / "buffer.db", clock=lambda: wall[0],
                            monotonic=lambda: mono[0], clock_synced=lambda: None)
    store.seal(lambda seq, ev: b"SSC1\x00x", created=int(wall[0] * 1000), n_readings=1,
               pending_upto=0)
    batcher = Batcher(store, gw="g", boot=1, max_readings=10, max_age=5.0, codec=0, level=3,
                      clock=lambda: wall[0], on_sealed=lambda: None)
    uplink = Uplink(MqttSettings(address=parse_broker_url(f"mqtt://127.0.0.1:{free_port()}"),
                                 client_id="g"), store, gw="g", boot=1, topic_prefix="ssc/v1",
                    max_inflight=1, wake=asyncio.Event(), clock=lambda: wall[0])
    collector = DeliveryCollector(store, batcher, uplink, [], monotonic=lambda: mono[0])

    def age() -> float:
        return float(next(m for m in collector.collect()
                          if m.name == "ssc_agent_backlog_age_seconds").samples[0].value)

    for step in (180 * 86_400.0, -400 * 86_400.0):
        wall[0] += step + 7
        mono[0] += 7
        collector.refresh()
        mono[0] += 3  # between refreshes the scrape adds the time since
        assert age() == pytest.approx(10.0 if step > 0 else 20.0)
