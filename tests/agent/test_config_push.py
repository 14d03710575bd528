"""Remote configuration, the pure parts: the signed byte string, the config/set envelope and
the config/state report (docs/wire-format.md §13), Ed25519 keys, and what a pushed config may
not hold (agent/config/pushed.py)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config.pushed import load_pushed, secret_problems
from agent.errors import ConfigError, WireFormatError
from agent.signing import load_private_key, load_public_key, write_keypair
from agent.wire.config_push import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_SET_BYTES,
    MAX_STATE_ERROR_LEN,
    MAX_STATE_ERRORS,
    ConfigSet,
    ConfigState,
    bounded_errors,
    config_sha256,
    config_state_gateway,
    config_topic,
    decode_config_set,
    decode_config_state,
    encode_config_set,
    encode_config_state,
    is_config_topic,
    signed_bytes,
)

CONFIG = '[gateway]\nid = "gw-1"\n\n[uplink]\nbroker = "mqtt://127.0.0.1:1883"\n'
SIG = bytes(range(64))


def _envelope(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"v": 1, "gw": "gw-1", "serial": 7, "issued": 1700000000000,
                           "config": CONFIG, "sig": base64.b64encode(SIG).decode()}
    obj.update(changes)
    return {k: v for k, v in obj.items() if v is not _DROP}


_DROP = object()


def _payload(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


# ------------------------------------------------------------------------- signed bytes


def test_signed_bytes_are_the_documented_lines() -> None:
    assert signed_bytes("gw-1", 7, 1700000000000, CONFIG.encode()) == (
        b"ssc-agent config/set v1\ngw-1\n7\n1700000000000\n" + CONFIG.encode())


@pytest.mark.parametrize(("gw", "serial", "issued"), [
    ("gw\n1", 7, 0),   # a line end would make the header ambiguous
    ("", 7, 0),
    ("gw-1", 0, 0),    # serials start at 1
    ("gw-1", -1, 0),
    ("gw-1", 2**63, 0),
    ("gw-1", 7, -1),
])
def test_signed_bytes_refuse_what_would_be_ambiguous(gw: str, serial: int, issued: int) -> None:
    with pytest.raises(WireFormatError):
        signed_bytes(gw, serial, issued, b"x")


@given(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
       st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
       st.integers(1, 2**63 - 1), st.integers(1, 2**63 - 1), st.binary(max_size=64))
def test_different_pushes_sign_different_bytes(gw_a: str, gw_b: str, serial_a: int,
                                               serial_b: int, config: bytes) -> None:
    """A signature for one gateway or serial is never one for another (no replay across)."""
    a = signed_bytes(gw_a, serial_a, 0, config)
    b = signed_bytes(gw_b, serial_b, 0, config)
    assert (a == b) == (gw_a == gw_b and serial_a == serial_b)


# ------------------------------------------------------------------------- config/set


def test_round_trip_keeps_the_exact_config_text() -> None:
    message = ConfigSet("gw-1", 7, 1700000000000, 'a = "é\\"\r\n"\n', SIG)
    back = decode_config_set(encode_config_set(message))
    assert back == message
    assert back.sha256 == config_sha256(message.config.encode())


@settings(max_examples=60)
@given(st.text(min_size=1, max_size=400), st.integers(1, 2**63 - 1), st.integers(0, 2**63 - 1),
       st.binary(min_size=64, max_size=64))
def test_round_trip_property(config: str, serial: int, issued: int, sig: bytes) -> None:
    try:
        config.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates: not text a file can hold (the decoder refuses them)
    message = ConfigSet("gw_9", serial, issued, config, sig)
    assert decode_config_set(encode_config_set(message)) == message


@pytest.mark.parametrize(("obj", "words"), [
    (_envelope(sig=_DROP), "missing sig (an unsigned"),
    (_envelope(serial=_DROP, sig=_DROP), "missing serial, sig"),
    (_envelope(extra=1), "unknown key 'extra'"),
    (_envelope(v=2), "config/set.v: must be 1"),
    (_envelope(v=True), "config/set.v: must be 1"),
    (_envelope(gw="gw/1"), "config/set.gw: must be a gateway id"),
    (_envelope(gw="g" * 65), "config/set.gw: must be a gateway id"),
    (_envelope(serial=0), "config/set.serial: must be an int from 1"),
    (_envelope(serial="7"), "config/set.serial: must be an int from 1"),
    (_envelope(serial=7.0), "config/set.serial: must be an int from 1"),
    (_envelope(issued=-5), "config/set.issued: must be epoch ms"),
    (_envelope(config=""), "config/set.config: empty"),
    (_envelope(config=["x"]), "config/set.config: must be a str, got list"),
    (_envelope(config="a" * (MAX_CONFIG_BYTES + 1)), "over the 122,880"),
    (_envelope(sig="@@@"), "config/set.sig: not base64"),
    (_envelope(sig=base64.b64encode(b"short").decode()), "5 bytes, an Ed25519"),
    (_envelope(sig=None), "config/set.sig: must be a str, got nil"),
])
def test_bad_envelopes_are_refused_with_their_place(obj: dict[str, Any], words: str) -> None:
    with pytest.raises(WireFormatError, match=None) as caught:
        decode_config_set(_payload(obj))
    assert words in str(caught.value)


@pytest.mark.parametrize(("payload", "words"), [
    (b"", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1,2]", "must be a JSON object, got list"),
    (b"[" * 100_000, "not JSON"),
    (b" " * (MAX_CONFIG_SET_BYTES + 1), "over the 262,144"),
    (b'{"v":1,"gw":"gw-1","serial":7,"issued":0,"config":"\\ud800","sig":"' +
     base64.b64encode(SIG) + b'"}', "not valid Unicode"),
])
def test_payloads_that_are_no_envelope(payload: bytes, words: str) -> None:
    with pytest.raises(WireFormatError) as caught:
        decode_config_set(payload)
    assert words in str(caught.value)


def test_a_config_at_the_limit_fits_the_payload_even_escaped() -> None:
    """JSON escaping at most doubles TOML text: the largest config still fits."""
    config = ('"\\' * (MAX_CONFIG_BYTES // 2))[:MAX_CONFIG_BYTES]
    payload = encode_config_set(ConfigSet("g" * 64, 2**63 - 1, 2**63 - 1, config, SIG))
    assert len(payload) <= MAX_CONFIG_SET_BYTES
    assert decode_config_set(payload).config == config


# ------------------------------------------------------------------------- config/state


def test_state_round_trip_and_rolled_back_keys() -> None:
    state = ConfigState("gw-1", "rolled_back", 1700000000000, serial=9, sha256="a" * 64,
                        errors=("no device answered",), running_serial=None,
                        running_sha256="b" * 64, restored_serial=None,
                        restored_sha256="b" * 64)
    payload = encode_config_state(state)
    assert decode_config_state(payload) == state
    obj = json.loads(payload)
    assert obj["restored_sha256"] == "b" * 64
    assert "restored_sha256" not in json.loads(encode_config_state(
        ConfigState("gw-1", "applied", 1, serial=9, sha256="a" * 64)))


def test_state_errors_are_bounded() -> None:
    errors = [f"line {i} " + "x" * 400 for i in range(80)]
    bounded = bounded_errors(errors)
    assert len(bounded) == MAX_STATE_ERRORS
    assert all(len(e) <= MAX_STATE_ERROR_LEN for e in bounded)
    assert bounded[-1] == "… and 31 more"
    payload = encode_config_state(ConfigState("gw-1", "rejected", 1, errors=tuple(errors)))
    assert len(decode_config_state(payload).errors) == MAX_STATE_ERRORS


@pytest.mark.parametrize(("obj", "words"), [
    ({"state": "done", "gw": "g", "t": 1}, "config/state.state"),
    ({"state": "applied", "gw": "g", "t": -1}, "config/state.t"),
    ({"state": "applied", "gw": "g/x", "t": 1}, "config/state.gw"),
    ({"state": "applied", "gw": "g", "t": 1, "sha256": "ABC"}, "config/state.sha256"),
    ({"state": "applied", "gw": "g", "t": 1, "errors": "x"}, "config/state.errors"),
    ({"state": "applied", "gw": "g", "t": 1, "serial": 0}, "config/state.serial"),
])
def test_bad_states_are_refused(obj: dict[str, Any], words: str) -> None:
    with pytest.raises(WireFormatError) as caught:
        decode_config_state(json.dumps(obj).encode())
    assert words in str(caught.value)


def test_state_ignores_unknown_keys() -> None:
    payload = json.dumps({"state": "applied", "gw": "g", "t": 1, "later": {"x": 1}}).encode()
    assert decode_config_state(payload).state == "applied"


def test_topics() -> None:
    assert config_topic("ssc/v1/", "gw-1", "set") == "ssc/v1/gw-1/config/set"
    assert config_state_gateway("ssc/v1", "ssc/v1/gw-1/config/state") == "gw-1"
    assert config_state_gateway("ssc/v1", "ssc/v1/a/b/config/state") is None
    assert config_state_gateway("ssc/v1", "ssc/v1/gw-1/status") is None
    with pytest.raises(ValueError, match="not a gateway id"):
        config_topic("ssc/v1", "+", "set")


# ------------------------------------------------------------------------- keys


def test_keygen_signs_and_verifies_and_keeps_the_private_key_private(tmp_path: Path) -> None:
    private_path, public_path = write_keypair(tmp_path / "platform")
    assert stat.S_IMODE(os.stat(private_path).st_mode) == 0o600
    private, public = load_private_key(private_path), load_public_key(public_path)
    message = ConfigSet("gw-1", 7, 1, CONFIG, bytes(64))
    sig = private.sign(message.signed())
    assert public.verifies(sig, message.signed())
    # every signed field counts
    for other in (ConfigSet("gw-2", 7, 1, CONFIG, sig), ConfigSet("gw-1", 8, 1, CONFIG, sig),
                  ConfigSet("gw-1", 7, 2, CONFIG, sig),
                  ConfigSet("gw-1", 7, 1, CONFIG + "#", sig)):
        assert not public.verifies(sig, other.signed())
    with pytest.raises(ConfigError, match="exists already"):
        write_keypair(tmp_path / "platform")


def test_key_files_that_are_no_keys(tmp_path: Path) -> None:
    private_path, public_path = write_keypair(tmp_path / "k")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(private_path)
    secret = private_path.read_text()
    with pytest.raises(ConfigError) as caught:
        load_private_key(public_path)
    assert "not a PEM private key" in str(caught.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_public_key(tmp_path / "absent.pub")
    rsa = tmp_path / "garbage.key"
    rsa.write_text(secret.replace("A", "B"))
    with pytest.raises(ConfigError) as caught:
        load_private_key(rsa)
    assert secret.splitlines()[1] not in str(caught.value)


# ------------------------------------------------------------------------- pushed configs


@pytest.mark.parametrize(("table", "place"), [
    ({"uplink": {"password": "hunter2"}}, "uplink.password"),
    ({"uplink": {"api_key": "x"}}, "uplink.api_key"),
    ({"devices": [{"name": "m", "token": "x"}]}, "devices[0].token"),
    ({"devices": [{"name": "m", "auth": {"secret": "x"}}]}, "devices[0].auth.secret"),
    ({"buses": [{"port": "-----BEGIN PRIVATE KEY-----\nabc"}]}, "buses[0].port"),
    ({"devices": [{"host": "http://user:pw@host/"}]}, "devices[0].host"),
])
def test_secret_looking_keys_and_values(table: dict[str, Any], place: str) -> None:
    problems = secret_problems(table)
    assert len(problems) == 1
    assert problems[0].startswith(place + ":")
    assert "hunter2" not in problems[0]


def test_files_are_named_not_secrets() -> None:
    assert secret_problems({"uplink": {"password_file": "/etc/pw", "key_file": "k.pem",
                                       "username": "gw"}}) == []


def test_pushed_config_rules(tmp_path: Path) -> None:
    local = load_pushed(CONFIG, local=None, base_dir=tmp_path)
    text = CONFIG + '\n[remote_config]\nenabled = false\n'
    with pytest.raises(ConfigError) as caught:
        load_pushed(text.replace('"gw-1"', '"gw-2"'), local=local, base_dir=tmp_path)
    assert caught.value.problems == [
        "remote_config: cannot be pushed: it stays as the gateway's local config file says "
        "(the trust anchor never comes over the network)",
        "gateway.id: 'gw-2' is not this gateway ('gw-1')"]
    with pytest.raises(ConfigError) as caught:
        load_pushed("[gateway\n", local=local, base_dir=tmp_path)
    assert caught.value.problems[0].startswith("config:1:")
    ok = load_pushed(CONFIG.replace("1883", "1884"), local=local, base_dir=tmp_path)
    assert ok.remote_config == local.remote_config
    assert ok.uplink is not None
    assert ok.uplink.broker == "mqtt://127.0.0.1:1884"


def test_cryptography_is_loaded_only_to_verify_a_push(tmp_path: Path) -> None:
    """A gateway never imports cryptography (about 10 MiB of RSS) to load its config, with
    [remote_config] or without: only to verify a push."""
    import subprocess
    import sys

    private, public = write_keypair(tmp_path / "k")
    plain = tmp_path / "plain.toml"
    plain.write_text(CONFIG)
    remote = tmp_path / "remote.toml"
    remote.write_text(CONFIG + f'[remote_config]\nenabled = true\npublic_key_file = "{public}"\n')
    message = ConfigSet("gw-1", 7, 1, CONFIG, bytes(64))
    sig = load_private_key(private).sign(message.signed()).hex()
    probe = ("import sys; from pathlib import Path; from agent.config import load_config; "
             "import agent.cli, agent.gateway.supervisor, agent.gateway.uplink, "
             "agent.gateway.remote_config; from agent.signing import load_public_key; "
             "c = load_config(Path(sys.argv[1])); k = c.remote_config.public_key_file; "
             "key = k and load_public_key(k); before = 'cryptography' in sys.modules; "
             "ok = key and key.verifies(bytes.fromhex(sys.argv[2]), sys.argv[3].encode()); "
             "print(before, ok, 'cryptography' in sys.modules)")
    for path, printed in ((plain, "False None False"), (remote, "False True True")):
        out = subprocess.run([sys.executable, "-c", probe, str(path), sig,
                              message.signed().decode()], check=True, capture_output=True,
                             text=True).stdout.strip()
        assert out == printed, path


def test_public_keys_of_other_kinds_are_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / "ec.pub"
    path.write_bytes(other)
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_public_key(path)
    path.write_bytes(b"-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(path)


async def test_a_child_process_verifies_for_the_gateway(tmp_path: Path) -> None:
    """The gateway verifies in a short-lived child (cryptography never loaded in the agent)."""
    private_path, public_path = write_keypair(tmp_path / "k")
    public = load_public_key(public_path)
    message = ConfigSet("gw-1", 7, 1, CONFIG, bytes(64))
    sig = load_private_key(private_path).sign(message.signed())
    assert await public.verifies_apart(sig, message.signed())
    assert not await public.verifies_apart(sig, message.signed() + b" ")
    assert not await public.verifies_apart(bytes(64), message.signed())


def test_config_state_as_printed() -> None:
    from agent.platform.config_push import render, to_json

    states = [
        ConfigState("gw-1", "applied", 1_765_100_000_000, serial=9, sha256="a" * 64,
                    running_serial=9, running_sha256="a" * 64),
        ConfigState("gw-2", "rolled_back", 1_765_100_000_000, serial=4, sha256="b" * 64,
                    errors=("no device answered a poll within 5 min: m1",),
                    running_sha256="c" * 64, restored_sha256="c" * 64),
    ]
    assert render(states).splitlines() == [
        "gw-1: applied serial 9 sha256 aaaaaaaaaaaa at 2025-12-07T09:33:20Z; runs serial 9 "
        "sha256 aaaaaaaaaaaa",
        "gw-2: rolled_back serial 4 sha256 bbbbbbbbbbbb at 2025-12-07T09:33:20Z; runs local "
        "config file",
        "  restored local config file sha256 cccccccccccc",
        "  error: no device answered a poll within 5 min: m1",
    ]
    assert render([]) == "no config/state found"
    doc = json.loads(to_json(states))
    assert [g["gw"] for g in doc["gateways"]] == ["gw-1", "gw-2"]
    assert doc["gateways"][1]["restored_sha256"] == "c" * 64


@pytest.mark.parametrize(("topic", "expected"), [
    ("ssc/v1/gw-1/config/set", True),
    ("ssc/v1/gw-1/config/state", True),
    ("ssc/v1/gw-1/config", False),
    ("ssc/v1/gw-1/config/other", False),
    ("ssc/v1/gw.1/config/set", False),  # not a gateway id
    ("ssc/v1/gw-1/batch", False),
    ("other/gw-1/config/set", False),
    ("ssc/v1/a/b/config/set", False),
    ("ssc/v1/" + "g" * 65 + "/config/set", False),
])
def test_config_topics_are_told_from_the_rest(topic: str, expected: bool) -> None:
    assert is_config_topic("ssc/v1", topic) is expected
