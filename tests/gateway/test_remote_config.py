"""Remote configuration end to end: a real mosquitto, real ``ssc-agent run`` subprocesses,
pymodbus meters, and ``ssc-agent fleet push-config`` / ``config-state`` (docs/config.md
"Remote configuration"). One broker and one pair of meters per module; each test its own
gateway id (retained topics do not cross) and data_dir; ``rollback_after`` is 3 s."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.endpoints import parse_broker_url
from agent.mqtt import MqttSettings, publish_once, read_retained
from agent.signing import load_private_key, write_keypair
from agent.wire.config_push import (
    ConfigSet,
    config_sha256,
    config_topic,
    encode_config_set,
)
from tests.chaos.harness import AgentProcess, Device, MeterFleet, write_agent_config
from tests.conftest import Mosquitto, _require_mosquitto, free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.xdist_group("remote_config")

GRACE = "3 s"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    _require_mosquitto()
    server = Mosquitto(tmp_path_factory.mktemp("broker"), free_port())
    server.start()
    yield server
    server.terminate()


@pytest.fixture(scope="module")
def meters() -> Iterator[MeterFleet]:
    with MeterFleet([1000, 1000]) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    private, public = write_keypair(folder / "platform")
    other, _ = write_keypair(folder / "other")
    return {"private": private, "public": public, "other": other}


class Site:
    """One gateway: its local config file, its agent, and pushes to it."""

    def __init__(self, root: Path, gw: str, broker: Mosquitto, keys: dict[str, Path]) -> None:
        self.root, self.gw, self.broker, self.keys = root, gw, broker, keys
        self.data_dir = root / "data"
        self.local = root / "local.toml"
        self.agent = AgentProcess(self.local, root / "agent.log")

    def config_text(self, devices: list[Device]) -> str:
        path = write_agent_config(self.root / "scratch.toml", gw=self.gw,
                                  data_dir=self.data_dir, broker_url=self.broker.url,
                                  devices=devices)
        return path.read_text()

    def start(self, devices: list[Device], grace: str = GRACE) -> None:
        self.local.write_text(self.config_text(devices) + (
            f'[remote_config]\nenabled = true\npublic_key_file = "{self.keys["public"]}"\n'
            f'rollback_after = "{grace}"\n'))
        self.agent.start()
        self.agent.wait_started(1)

    def push(self, text: str, *, serial: int, key: str = "private",
             capsys: pytest.CaptureFixture[str] | None = None) -> int:
        path = self.root / f"push-{serial}.toml"
        path.write_text(text)
        status = main(["fleet", "push-config", "--gw", self.gw, "--key", str(self.keys[key]),
                       "--serial", str(serial), "--broker", self.broker.url, str(path)])
        if capsys is not None:
            capsys.readouterr()
        return status

    def publish(self, payload: bytes) -> None:
        settings = MqttSettings(parse_broker_url(self.broker.url), f"test-{self.gw}")
        asyncio.run(publish_once(settings, config_topic("ssc/v1", self.gw, "set"), payload,
                                 retain=True))

    def signed(self, text: str, *, serial: int, gw: str | None = None) -> bytes:
        key = load_private_key(self.keys["private"])
        unsigned = ConfigSet(gw or self.gw, serial, int(time.time() * 1000), text, bytes(64))
        return encode_config_set(ConfigSet(unsigned.gw, serial, unsigned.issued, text,
                                           key.sign(unsigned.signed())))

    def state(self, capsys: pytest.CaptureFixture[str]) -> dict[str, Any] | None:
        capsys.readouterr()
        assert main(["fleet", "config-state", "--gw", self.gw, "--json", "--timeout", "1",
                     "--broker", self.broker.url]) == 0
        gateways = json.loads(capsys.readouterr().out)["gateways"]
        return gateways[0] if gateways else None

    def wait_state(self, capsys: pytest.CaptureFixture[str], state: str,
                   serial: int | None, contains: str = "", seconds: float = 20.0
                   ) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def reported() -> bool:
            now = self.state(capsys)
            if now is None or now["state"] != state or now["serial"] != serial:
                return False
            if contains and not any(contains in e for e in now["errors"]):
                return False
            found.update(now)
            return True

        assert wait_until(reported, seconds, step=0.3), (
            f"no {state} for {serial} ({contains}): {self.state(capsys)}\n"
            f"{self.agent.log_text()[-3000:]}")
        return found


def _polled_since(meters: MeterFleet, name: str, since: float, count: int = 2) -> bool:
    return len([t for t in meters.requests(name) if t > since]) >= count


@pytest.fixture
def site(tmp_path: Path, request: pytest.FixtureRequest, broker: Mosquitto,
         keys: dict[str, Path]) -> Iterator[Site]:
    gw = "gw-" + request.node.name.removeprefix("test_").replace("_", "-")[:40]
    one = Site(tmp_path, gw, broker, keys)
    yield one
    if one.agent.alive:
        one.agent.terminate()


def test_signed_push_applies_survives_a_restart_and_refuses_a_replay(
        site: Site, meters: MeterFleet, capsys: pytest.CaptureFixture[str]) -> None:
    meter_1, meter_2 = meters.devices
    site.start([meter_1])
    started = time.time()
    assert wait_until(lambda: _polled_since(meters, meter_1.name, started), 15)
    assert not _polled_since(meters, meter_2.name, started, 1)

    pushed = site.config_text([meter_1, meter_2])
    path = site.root / "pushed.toml"
    path.write_text(pushed)
    # --wait: the command itself waits for the gateway's report and says it
    assert main(["fleet", "push-config", "--gw", site.gw, "--key", str(site.keys["private"]),
                 "--serial", "1000", "--broker", site.broker.url, "--wait", "20",
                 str(path)]) == 0
    assert f"{site.gw}: applied serial 1000" in capsys.readouterr().out
    state = site.wait_state(capsys, "applied", 1000)
    assert state["sha256"] == config_sha256(pushed.encode())
    assert state["running_serial"] == 1000
    assert state["errors"] == []
    applied_at = time.time()
    assert wait_until(lambda: _polled_since(meters, meter_2.name, applied_at), 15)
    assert wait_until(lambda: site.agent.events("remote_config_working"), 15)
    # meter-1 was unchanged: it polled on through the apply
    assert _polled_since(meters, meter_1.name, applied_at)

    # SIGHUP reads the local file again but keeps the pushed config running
    reloads = len(site.agent.events("config_reloaded"))
    assert site.agent.proc is not None
    site.agent.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: len(site.agent.events("config_reloaded")) > reloads, 15)
    assert site.agent.events("config_reloaded")[-1]["status"] == "unchanged"

    # an older serial, properly signed: a replay
    assert site.push(site.config_text([meter_1]), serial=999, capsys=capsys) == 0
    state = site.wait_state(capsys, "rejected", 999, contains="is not above 1000")
    assert state["running_serial"] == 1000

    # a restart runs the pushed config (meter-2 polled again), not the local file
    assert site.agent.terminate() == 0
    site.agent.start()
    site.agent.wait_started(2)
    restarted = time.time()
    assert wait_until(lambda: _polled_since(meters, meter_2.name, restarted), 15)
    enabled = site.agent.events("remote_config_enabled")[-1]
    assert enabled["running_serial"] == 1000
    # the retained push, delivered again at the new connection, is not applied twice
    assert len(site.agent.events("remote_config_applied")) == 1
    assert pushed.splitlines()[0] not in site.agent.log_text()  # no config text in the log


def test_refused_pushes_leave_the_running_config(
        site: Site, meters: MeterFleet, capsys: pytest.CaptureFixture[str]) -> None:
    meter_1, meter_2 = meters.devices
    site.start([meter_1])
    began = time.time()  # (the module's other agents poll meter-2 too: stopped by now)
    good = site.config_text([meter_1, meter_2])

    site.publish(json.dumps({"v": 1, "gw": site.gw, "serial": 5, "issued": 0,
                             "config": good}).encode())
    site.wait_state(capsys, "rejected", None, contains="missing sig (an unsigned")

    assert site.push(good, serial=6, key="other", capsys=capsys) == 0
    site.wait_state(capsys, "rejected", 6, contains="does not verify with public_key_file")

    site.publish(site.signed(good.replace(site.gw, "gw-elsewhere"), serial=7,
                             gw="gw-elsewhere"))
    site.wait_state(capsys, "rejected", 7, contains="signed for gateway 'gw-elsewhere'")

    invalid = good.replace('interval = "1000 ms"', 'interval = "never"') + (
        '[remote_config]\nenabled = false\n')
    site.publish(site.signed(invalid, serial=8))
    state = site.wait_state(capsys, "rejected", 8, contains="remote_config: cannot be pushed")
    assert any("interval" in e for e in state["errors"]), state["errors"]
    assert state["running_serial"] is None  # still the local file
    assert state["running_sha256"] == config_sha256(site.local.read_bytes())

    site.publish(b"\x00" * 300_000)
    site.wait_state(capsys, "rejected", None, contains="over the 262,144")

    checked = time.time()
    assert wait_until(lambda: _polled_since(meters, meter_1.name, checked), 15)
    assert not _polled_since(meters, meter_2.name, began, 1)
    assert not site.agent.events("remote_config_applied")
    assert site.agent.alive


def test_a_config_that_leaves_every_device_down_is_rolled_back(
        site: Site, meters: MeterFleet, capsys: pytest.CaptureFixture[str]) -> None:
    meter_1, _ = meters.devices
    site.start([meter_1])
    closed = Device(meter_1.name, free_port(), meter_1.interval_ms)  # nothing listens there
    assert site.push(site.config_text([closed]), serial=20, capsys=capsys) == 0
    site.wait_state(capsys, "applied", 20)
    state = site.wait_state(capsys, "rolled_back", 20,
                            contains=f"no device answered a poll within {GRACE}", seconds=30)
    assert state["restored_serial"] is None
    assert state["restored_sha256"] == config_sha256(site.local.read_bytes())
    assert state["running_serial"] is None
    rolled = time.time()
    assert wait_until(lambda: _polled_since(meters, meter_1.name, rolled), 15)
    # the rollback is kept: a restart runs the local file again
    assert site.agent.terminate() == 0
    site.agent.start()
    site.agent.wait_started(2)
    assert site.agent.events("remote_config_enabled")[-1]["running_serial"] is None


def test_a_config_whose_broker_cannot_be_reached_is_rolled_back(
        site: Site, meters: MeterFleet, capsys: pytest.CaptureFixture[str]) -> None:
    meter_1, meter_2 = meters.devices
    site.start([meter_1])
    nowhere = site.config_text([meter_1, meter_2]).replace(
        site.broker.url, f"mqtt://127.0.0.1:{free_port()}")
    assert site.push(nowhere, serial=50, capsys=capsys) == 0
    # its uplink never connects: the report of the apply and of the rollback both go out
    # once the restored uplink is connected again, the rollback's last (retained)
    state = site.wait_state(capsys, "rolled_back", 50, seconds=30,
                            contains=f"the uplink did not connect to the broker within {GRACE}")
    assert not any("no device answered" in e for e in state["errors"])  # meter-2 answered
    assert state["running_serial"] is None
    events = [e["event"] for e in site.agent.events()
              if e["event"] in ("remote_config_applied", "remote_config_rolled_back",
                                "uplink_connected", "uplink_restored")]
    assert events[:2] == ["uplink_connected", "remote_config_applied"], events
    assert "remote_config_rolled_back" in events


def test_a_config_whose_trial_restarts_cut_short_is_rolled_back_at_the_third_start(
        site: Site, meters: MeterFleet, capsys: pytest.CaptureFixture[str]) -> None:
    meter_1, _ = meters.devices
    site.start([meter_1], grace="10 min")  # the trial never ends by time here
    closed = Device(meter_1.name, free_port(), meter_1.interval_ms)
    assert site.push(site.config_text([closed]), serial=40, capsys=capsys) == 0
    site.wait_state(capsys, "applied", 40)
    # a second agent on the same data_dir changes nothing of the trial before it gives up
    before = (site.data_dir / "remote" / "state.json").read_bytes()
    second = AgentProcess(site.local, site.root / "second.log")
    second.start()
    assert second.proc is not None
    assert second.proc.wait(30) == 2
    assert "is in use by another agent" in second.log_text()
    assert (site.data_dir / "remote" / "state.json").read_bytes() == before
    for run in (2, 3):  # the agent dies during the trial and systemd starts it again
        site.agent.kill()
        site.agent.start()
        site.agent.wait_started(run)
        enabled = site.agent.events("remote_config_enabled")[-1]
        assert (enabled["running_serial"], enabled["on_trial"]) == (40, True)
    site.agent.kill()
    site.agent.start()
    site.agent.wait_started(4)
    assert site.agent.events("remote_config_enabled")[-1]["running_serial"] is None
    state = site.wait_state(capsys, "rolled_back", 40, contains="restarted 3 times")
    assert state["running_serial"] is None
    started = time.time()
    assert wait_until(lambda: _polled_since(meters, meter_1.name, started), 15)


def test_push_config_refuses_an_invalid_config_locally(
        site: Site, meters: MeterFleet, capsys: pytest.CaptureFixture[str]) -> None:
    text = site.config_text(list(meters.devices)).replace('interval = "1000 ms"',
                                                        'interval = "soon"')
    assert site.push(text, serial=30) == 2
    err = capsys.readouterr().err
    assert "interval" in err
    assert "not pushed" in err
    settings = MqttSettings(parse_broker_url(site.broker.url), "test-retained")
    retained = asyncio.run(read_retained(settings, config_topic("ssc/v1", site.gw, "set"),
                                         quiet=0.5, limit=2))
    assert retained == []
