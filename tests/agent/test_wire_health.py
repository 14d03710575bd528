"""Wire format §8.2: the retained health summary, encoded and decoded within its bounds."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest

from agent.errors import WireFormatError
from agent.wire import DownDevice, HealthSummary, decode_health, encode_health
from agent.wire.health import MAX_HEALTH_BYTES, MAX_HEALTH_DOWN, MAX_HEALTH_ERROR_LEN

SUMMARY = HealthSummary(
    gw="gw-017", boot=12, t=1_700_000_060_000, version="0.1.0",
    devices_up=2, devices_down=1, devices_pending=0,
    buffer_state="ok", buffer_batches=3, buffer_readings=1200, buffer_bytes=45_000,
    buffer_oldest_age_s=12.5, buffer_dropped_readings=0,
    uplink_in_flight=1, uplink_last_ack_age_s=2.0, kpis_open=2, kpis_closed=1,
    down=(DownDevice("meter-9", 30, None, "meter-9 (tcp://10.0.0.9:502): no answer"),),
)


def test_round_trip_and_the_documented_example() -> None:
    payload = encode_health(SUMMARY)
    assert decode_health(payload) == SUMMARY
    # the example of docs/wire-format.md §8.2, byte for byte
    assert payload == (
        b'{"v":1,"gw":"gw-017","boot":12,"t":1700000060000,"version":"0.1.0",'
        b'"devices":{"up":2,"down":1,"pending":0},"down":[{"name":"meter-9","failures":30,'
        b'"last_good":null,"error":"meter-9 (tcp://10.0.0.9:502): no answer"}],'
        b'"buffer":{"state":"ok","batches":3,"readings":1200,"bytes":45000,'
        b'"oldest_age_s":12.5,"dropped_readings":0},'
        b'"uplink":{"in_flight":1,"last_ack_age_s":2.0},"kpis":{"open":2,"closed":1}}')


def test_the_encoder_keeps_within_the_bounds() -> None:
    many = tuple(DownDevice(f"meter-{i}", 1, None, "x" * 1000) for i in range(100))
    payload = encode_health(replace(SUMMARY, devices_down=100, down=many))
    decoded = decode_health(payload)
    assert decoded.devices_down == 100 and len(decoded.down) == MAX_HEALTH_DOWN
    assert all(len(d.error or "") == MAX_HEALTH_ERROR_LEN for d in decoded.down)
    assert len(payload) < MAX_HEALTH_BYTES


def _doc(**changes: Any) -> str:
    obj = json.loads(encode_health(SUMMARY))
    for path, value in changes.items():
        where = obj
        *parents, last = path.split("__")
        for key in parents:
            where = where[int(key)] if isinstance(where, list) else where[key]
        if value is KeyError:
            del where[last]
        else:
            where[last] = value
    return json.dumps(obj)


@pytest.mark.parametrize(("payload", "message"), [
    ("[]", "health: must be a map"),
    ("{", "health: not JSON"),
    (_doc(v=2), "health.v: must be 1"),
    (_doc(v=True), "health.v: must be 1"),
    (_doc(gw="gw/1"), "health.gw: 'gw/1' is not a gateway id"),
    (_doc(boot=-1), "health.boot: must be ≥ 0"),
    (_doc(t=1.5), "health.t: must be an int"),
    (_doc(devices=KeyError), "health: missing key 'devices'"),
    (_doc(devices__up=-1), "health.devices.up: must be ≥ 0"),
    (_doc(devices__down=0), "health.down: lists 1 devices, devices.down says 0"),
    (_doc(down={}), "health.down: must be a list"),
    (_doc(down__0__name=""), "health.down[0].name: must not be empty"),
    (_doc(down__0__name="m" * 65), "health.down[0].name: longer than 64"),
    (_doc(down__0__failures="3"), "health.down[0].failures: must be an int"),
    (_doc(down__0__error="e" * 201), "health.down[0].error: longer than 200"),
    (_doc(buffer__state=""), "health.buffer.state: must not be empty"),
    (_doc(buffer__bytes=True), "health.buffer.bytes: must be an int"),
    (_doc(buffer__oldest_age_s=-1), "health.buffer.oldest_age_s: must be a number ≥ 0"),
    (_doc(buffer__oldest_age_s="1"), "health.buffer.oldest_age_s: must be a number ≥ 0"),
    (_doc(uplink__in_flight=None), "health.uplink.in_flight: must be an int"),
    (_doc(kpis__closed=KeyError), "health.kpis: missing key 'closed'"),
    ('{"pad":"' + "x" * MAX_HEALTH_BYTES + '"}', f"over the {MAX_HEALTH_BYTES} allowed"),
])
def test_decoder_refuses(payload: str, message: str) -> None:
    with pytest.raises(WireFormatError, match=re.escape(message)):
        decode_health(payload)


def test_decoder_ignores_unknown_keys_and_allows_missing_optionals() -> None:
    obj = json.loads(encode_health(SUMMARY))
    obj["later"] = {"anything": [1, 2]}
    obj["buffer"]["extra"] = 1
    obj["down"][0].pop("error")
    obj["down"][0].pop("last_good")
    decoded = decode_health(json.dumps(obj))
    assert decoded.down == (DownDevice("meter-9", 30),)
    del obj["down"]
    assert decode_health(json.dumps(obj)).down == ()
