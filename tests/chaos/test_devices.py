"""Chaos cases of devices that answer, but wrongly: the agent as a real process, real meters,
the receiver's sink as ground truth (issue 11 §4).

A meter asked for a unit id it does not have answers every request with exception 4. Before,
the agent reported it up with 0 failures and sent quality-3 readings as if it polled fine; it
must be down: counted, logged once, a ``device_down`` event at the platform, and no reading of
it ever GOOD, while its neighbour on the same agent delivers normally.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.platform.sink import SqliteSink
from agent.readings import Quality
from tests.chaos.harness import (
    PROFILE,
    AgentProcess,
    MeterFleet,
    ReceiverProcess,
    Stored,
    last_sealed_seq,
    sleep_to_quiet_point,
    slot_ms,
    write_agent_config,
)
from tests.conftest import Mosquitto
from tests.waiting import wait_until

GW = "gw-devices"


def test_a_meter_at_the_wrong_unit_id_is_down_counted_and_logged_once(
    tmp_path: Path, broker: Mosquitto, receiver: ReceiverProcess
) -> None:
    data = tmp_path / "data"
    with MeterFleet([1000, 1000]) as fleet:  # both serve unit 1 only
        wrong, right = fleet.devices
        config = write_agent_config(tmp_path / "agent.toml", gw=GW, data_dir=data,
                                    broker_url=broker.url, devices=[right])
        with config.open("a") as out:
            out.write(
                "[[devices]]\n"
                f'name = "{wrong.name}"\ndriver = "modbus"\n'
                f'endpoint = "tcp://127.0.0.1:{wrong.port}"\nprofile = "{PROFILE}"\n'
                f'interval = "{wrong.interval}"\nunit = 7\n'
            )
        agent = AgentProcess(config, tmp_path / "agent.log")
        agent.start()
        try:
            agent.wait_started(1)
            # At least three failed polls of the wrong meter (backoff 1, 2 slots between them).
            assert wait_until(lambda: len({slot_ms(r, wrong.interval_ms)
                                           for r in fleet.requests(wrong.name)}) >= 3, 30)
            time.sleep(1.5)
            sleep_to_quiet_point(1.0)
            assert agent.terminate() == 0, agent.log_text()[-3000:]
        finally:
            if agent.alive:
                agent.kill()
        polled = fleet.served_slots(wrong)
    receiver.wait_for_seq(GW, last_sealed_seq(data))
    stored = Stored.read(receiver.sink, GW)
    with SqliteSink.open(f"sqlite:///{receiver.sink}") as db:
        readings = db.readings_for(GW)

    down = [e for e in agent.events("device_unavailable") if e.get("device") == wrong.name]
    assert len(down) == 1, agent.log_text()[-3000:]
    assert "exception 4 (server device failure)" in down[0]["error"]
    assert down[0]["error_type"] == "DeviceProtocolError"
    assert agent.events("modbus_exception_answer") == []  # no line per request
    assert [e["dev"] for e in stored.events_of("device_down")] == [wrong.name]

    bad = [r for r in readings if r.device == wrong.name]
    assert bad and all(r.value is None for r in bad)
    assert Quality.GOOD not in {r.quality for r in bad}
    # Every slot the meter was asked in is a protocol error at the platform (wrong answers).
    protocol = {r.t for r in bad if r.quality is Quality.PROTOCOL_ERROR}
    assert polled and polled <= protocol, (sorted(polled), sorted(protocol))

    good = [r for r in readings if r.device == right.name]
    assert good and {r.quality for r in good} == {Quality.GOOD}
