"""``[uplink] broker`` as one URL or a list of them (a clustered broker tier): every element
checked as a single URL is, a bad one named by its position, all agreeing on TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.endpoints import BrokerAddress, parse_broker_urls

DEVICE = ('[[devices]]\nname = "m"\ndriver = "modbus"\nendpoint = "tcp://127.0.0.1:5020"\n'
          'profile = "ssc-demo-meter"\n')


def validate(tmp_path: Path, broker: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "agent.toml"
    path.write_text(f'[gateway]\nid = "gw"\n[uplink]\nbroker = {broker}\n{DEVICE}')
    status = main(["validate", "--config", str(path)])
    return status, capsys.readouterr().err.strip()


@pytest.mark.parametrize("broker", ['"mqtt://a:1883"', '["mqtt://a:1883"]',
                                    '["mqtts://a", "mqtts://b:8884", "mqtts://c"]'])
def test_one_url_or_a_list_is_valid(tmp_path: Path, broker: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert validate(tmp_path, broker, capsys) == (0, "")


@pytest.mark.parametrize(("broker", "error"), [
    ('["mqtt://a:1883", "http://b"]',
     "uplink.broker: element 2: 'http://b': a broker URL starts with mqtt:// or mqtts://"),
    ('["mqtt://a:1883", 5]', "uplink.broker: element 2: 5 is not a string"),
    ("[]", "uplink.broker: give one broker URL or a non-empty list of them"),
    ('["mqtt://a", "mqtts://b"]', "uplink.broker: mixes mqtt:// and mqtts://"),
    ('["mqtt://a", "mqtt://user:pw@b"]',
     "uplink.broker: element 2: put no credentials in the broker URL"),
    ("5", "uplink.broker: give one broker URL or a list of them"),
])
def test_a_bad_element_is_named(tmp_path: Path, broker: str, error: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    status, err = validate(tmp_path, broker, capsys)
    assert status == 2
    assert error in err
    assert "pw@" not in err


def test_tls_files_follow_the_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ca.pem").write_text("x")
    path = tmp_path / "agent.toml"
    path.write_text(f'[gateway]\nid = "gw"\n[uplink]\nbroker = ["mqtt://a", "mqtt://b"]\n'
                    f'ca_file = "{tmp_path / "ca.pem"}"\n{DEVICE}')
    assert main(["validate", "--config", str(path)]) == 2
    assert "uplink.ca_file: needs TLS" in capsys.readouterr().err


def test_addresses_in_order() -> None:
    assert parse_broker_urls(["mqtt://a", "mqtt://b:1884"]) == (
        BrokerAddress("a", 1883, False), BrokerAddress("b", 1884, False))
    assert parse_broker_urls("mqtts://a") == (BrokerAddress("a", 8883, True),)
