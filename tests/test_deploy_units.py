"""The systemd units in deploy/: systemd itself checks them (``systemd-analyze verify``: unknown
keys, bad values, specifiers), and the receiver's command line is one the CLI accepts."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import _parser, _receive_args_problems

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
INSTALLED = "/opt/ssc-agent/bin/ssc-agent"  # where deploy/README.md installs it


def _entries(unit: str, key: str) -> list[str]:
    """Every ``key=`` value of a unit file, continuation lines joined."""
    text = (DEPLOY / unit).read_text().replace("\\\n", " ")
    return [line.split("=", 1)[1].strip() for line in text.splitlines()
            if line.startswith(f"{key}=")]


@pytest.mark.parametrize("unit", ["ssc-agent.service", "ssc-receiver.service"])
def test_systemd_accepts_the_unit(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("SSC_REQUIRE_INTEROP"):
            pytest.fail("systemd-analyze is not installed (apt install systemd)")
        pytest.skip("systemd-analyze is not installed (apt install systemd)")
    # verify wants ExecStart's program to exist: the one this checkout installed
    program = Path(sys.executable).parent / "ssc-agent"
    assert program.exists(), program
    (tmp_path / unit).write_text((DEPLOY / unit).read_text().replace(INSTALLED, str(program)))
    done = subprocess.run([analyze, "verify", str(tmp_path / unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    # systemd ignores an unknown key or a bad value with a warning and exit status 0
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_receiver_unit_runs_a_receive_the_cli_accepts() -> None:
    (command,) = _entries("ssc-receiver.service", "ExecStart")
    argv = shlex.split(command.replace("%d", "/run/credentials/ssc-receiver.service"))
    assert argv[0] == INSTALLED
    args = _parser().parse_args(argv[1:])
    assert args.command == "receive"
    assert _receive_args_problems(args) == []
    # the passwords are the credentials systemd loads, not files on the command line
    credentials = {c.split(":", 1)[0] for c in _entries("ssc-receiver.service", "LoadCredential")}
    assert {Path(args.password_file).name, Path(args.sink_password_file).name} <= credentials


def test_the_receiver_unit_restarts_after_a_failure_and_is_hardened() -> None:
    settings = {key: _entries("ssc-receiver.service", key) for key in (
        "User", "StateDirectory", "Restart", "KillSignal", "ProtectSystem", "ProtectHome",
        "NoNewPrivileges", "PrivateTmp", "RestrictAddressFamilies")}
    assert settings == {
        "User": ["ssc-receiver"], "StateDirectory": ["ssc-receiver"],
        "Restart": ["on-failure"], "KillSignal": ["SIGTERM"], "ProtectSystem": ["strict"],
        "ProtectHome": ["true"], "NoNewPrivileges": ["true"], "PrivateTmp": ["true"],
        "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"]}
