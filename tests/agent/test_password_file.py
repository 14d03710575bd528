"""One password-file rule (agent.password_file) for `validate`, the uplink and the receiver:
the first line without its line end; a file without one names the file, never its content."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from agent.config import config_from_dict
from agent.endpoints import parse_broker_url
from agent.errors import ConfigError, UplinkError
from agent.mqtt import MqttSettings, new_client
from agent.password_file import PasswordFileProblem, read_password_file
from agent.platform.receiver import ReceiverSettings, check_settings
from tests.conftest import Mosquitto, free_port

SECRET = "Tr0ub4dor-&3-pw"


@pytest.mark.parametrize(
    ("content", "password"),
    [
        (SECRET.encode(), SECRET),
        (SECRET.encode() + b"\n", SECRET),
        (SECRET.encode() + b"\r\n", SECRET),
        (SECRET.encode() + b"\nsecond line\n", SECRET),
        (SECRET.encode() + b"\r\nsecond line", SECRET),
        (b" spaced pw \n", " spaced pw "),
        ("pässwörd\n".encode(), "pässwörd"),
    ],
)
def test_the_password_is_the_first_line(tmp_path: Path, content: bytes, password: str) -> None:
    path = tmp_path / "pw"
    path.write_bytes(content)
    assert read_password_file(path) == password


@pytest.mark.parametrize(
    ("content", "kind", "reason"),
    [
        (b"", "empty", "is empty: put the password on its first line"),
        (b"\n", "empty", "is empty: put the password on its first line"),
        (b"\r\n" + SECRET.encode(), "empty", "is empty: put the password on its first line"),
        (b"\n" + SECRET.encode() + b"\n", "empty", "is empty: put the password on its first line"),
        (SECRET.encode() + b"\xff\n", "not_utf8", "is not UTF-8 text"),
        (None, "unreadable", "cannot be read: No such file or directory"),
    ],
)
def test_a_file_without_a_password_is_named_never_shown(
    tmp_path: Path, content: bytes | None, kind: str, reason: str
) -> None:
    path = tmp_path / "pw"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PasswordFileProblem) as info:
        read_password_file(path)
    assert (info.value.kind, info.value.reason) == (kind, reason)
    assert str(info.value) == f"file {path} {reason}"
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("content", "validate", "receiver"),
    [
        (SECRET + "\nsecond line\n", None, None),
        ("\n" + SECRET, "is empty: put the password on its first line", "is empty"),
        ("", "is empty: put the password on its first line", "is empty"),
    ],
)
def test_validate_and_the_receiver_follow_the_rule(
    tmp_path: Path, content: str, validate: str | None, receiver: str | None
) -> None:
    path = tmp_path / "pw"
    path.write_text(content)
    table = {"gateway": {"id": "g"},
             "uplink": {"broker": "mqtt://127.0.0.1", "username": "u", "password_file": "pw"}}
    settings = ReceiverSettings(broker=parse_broker_url("mqtt://127.0.0.1"),
                                sink_url="sqlite:///x", username="u", password_file=path)
    if validate is None:
        config = config_from_dict(table, base_dir=tmp_path)
        assert config.uplink is not None and config.uplink.read_password() == SECRET
        check_settings(settings)
        return
    with pytest.raises(ConfigError) as validated:
        config_from_dict(table, base_dir=tmp_path)
    assert validated.value.problems == [f"uplink.password_file: file {path} {validate}"]
    with pytest.raises(ConfigError) as checked:
        check_settings(settings)
    assert checked.value.problems == [f"--password-file {path}: {receiver}"]


@pytest.fixture
def password_broker(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> tuple[Mosquitto, int]:
    """A broker that lets in only user "gw" with SECRET."""
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "gw", SECRET],
                   check=True, capture_output=True)
    port = free_port()
    broker = mosquitto_factory(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n",
        per_listener_settings=True,
    )
    return broker, port


async def test_the_runtime_logs_in_with_the_first_line_only(
    tmp_path: Path, password_broker: tuple[Mosquitto, int]
) -> None:
    """The uplink and the receiver (both through agent.mqtt) send what `validate` checked: a
    second line in the file is not part of the password."""
    _, port = password_broker
    path = tmp_path / "pw"
    path.write_text(SECRET + "\nrotated on 2026-01-01 by ops\n")
    settings = MqttSettings(parse_broker_url(f"mqtt://127.0.0.1:{port}"), "gw-pw",
                            username="gw", password_file=path, keepalive=5, timeout=5)
    async with new_client(settings) as client:
        await client.publish("ssc/v1/gw/probe", b"x", qos=1)

    path.write_text("wrong-" + SECRET + "\n")
    with pytest.raises(aiomqtt.MqttError):
        async with new_client(settings):
            pass

    path.write_text("\n" + SECRET + "\n")
    with pytest.raises(UplinkError) as info:
        new_client(settings)
    assert str(info.value) == (
        f"password_file {path} is empty: put the password on its first line"
    )
    assert SECRET not in str(info.value)
