"""The systemd units in deploy/: systemd itself checks them (``systemd-analyze verify``: unknown
keys, bad values, specifiers), and the receiver's command line is one the CLI accepts."""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import _parser, _receive_args_problems
from tests.chaos.harness import read_events, store_meta
from tests.conftest import Mosquitto, free_port, stop_process
from tests.gateway.test_watchdog_agent import Notifications

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
INSTALLED = "/opt/ssc-agent/bin/ssc-agent"  # where docs/install.md installs it


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


# What `systemd-analyze security` said of ssc-agent.service before it was hardened: 8.5.
EXPOSURE_LIMIT = 3.0


def _analyze() -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("SSC_REQUIRE_INTEROP"):
            pytest.fail("systemd-analyze is not installed (apt install systemd)")
        pytest.skip("systemd-analyze is not installed (apt install systemd)")
    return analyze


def exposure(analyze: str, unit: Path) -> float:
    """The overall exposure ``systemd-analyze security`` gives a unit file (0 safe … 10)."""
    done = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert found, f"no exposure figure in:\n{done.stdout[-2000:]}\n{done.stderr}"
    return float(found.group(1))


def test_the_agent_unit_is_hardened_well_below_the_old_exposure(tmp_path: Path) -> None:
    analyze = _analyze()
    unit = tmp_path / "ssc-agent.service"
    program = Path(sys.executable).parent / "ssc-agent"
    unit.write_text((DEPLOY / unit.name).read_text().replace(INSTALLED, str(program)))
    assert exposure(analyze, unit) < EXPOSURE_LIMIT
    # the figure is the tool's: the unit as it was before scores what it scored then
    bare = tmp_path / "bare.service"
    bare.write_text(f"[Service]\nType=notify\nExecStart={program} run\n")
    assert exposure(analyze, bare) > 8


def test_the_agent_unit_notifies_reloads_and_keeps_serial_lines() -> None:
    unit = "ssc-agent.service"
    settings = {key: _entries(unit, key) for key in (
        "Type", "NotifyAccess", "ExecReload", "User", "SupplementaryGroups", "StateDirectory",
        "ProtectSystem", "ProtectHome", "NoNewPrivileges", "PrivateTmp", "PrivateDevices",
        "RestrictAddressFamilies", "MemoryDenyWriteExecute", "CapabilityBoundingSet",
        "DevicePolicy")}
    assert settings == {
        "Type": ["notify"], "NotifyAccess": ["main"], "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "User": ["ssc-agent"], "SupplementaryGroups": ["dialout"],
        "StateDirectory": ["ssc-agent"], "ProtectSystem": ["strict"], "ProtectHome": ["true"],
        "NoNewPrivileges": ["true"], "PrivateTmp": ["true"],
        # PrivateDevices= would hide /dev/ttyUSB* and /dev/serial/by-id
        "PrivateDevices": [],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "MemoryDenyWriteExecute": ["true"], "CapabilityBoundingSet": [""],
        "DevicePolicy": ["closed"]}
    # serial adapters by the names the kernel gives their majors (/proc/devices)
    assert {"char-ttyUSB rw", "char-ttyACM rw", "char-ttyAMA rw"} <= set(
        _entries(unit, "DeviceAllow"))
    watchdog = _entries(unit, "WatchdogSec")
    assert len(watchdog) == 1 and watchdog[0].endswith("s") and int(watchdog[0][:-1]) >= 30
    (command,) = _entries(unit, "ExecStart")
    argv = shlex.split(command)
    assert argv[0] == INSTALLED
    assert _parser().parse_args(argv[1:]).command == "run"


# MemoryDenyWriteExecute=yes: no memory both writable and executable, none made executable
# later. Linux 6.3+ has it as a process flag (PR_SET_MDWE, kept across exec), the same rule
# systemd sets up; the agent runs under it here as it would under the unit.
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
_SET_MDWE = (f"import ctypes, os, sys\n"
             f"if ctypes.CDLL(None).prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0):"
             f" sys.exit(97)\n")
_WRITE_EXECUTE = ("import mmap\n"
                  "mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n")


def _refuse_write_execute() -> None:
    # runs in the agent's process before exec (prctl only)
    if ctypes.CDLL(None).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0):
        os._exit(97)


def test_the_agent_runs_without_writable_executable_memory(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    probe = subprocess.run([sys.executable, "-c", _SET_MDWE + _WRITE_EXECUTE],
                           capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode == 97:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert probe.returncode != 0 and "PermissionError" in probe.stderr  # the rule bites
    port = free_port()
    meter = subprocess.Popen([sys.executable, "-m", "agent.cli", "simulate", "ssc-demo-meter",
                              "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    data_dir = tmp_path / "data"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[gateway]\nid = "gw-mdwe"\ndata_dir = "{data_dir}"\n\n'
        f'[uplink]\nbroker = "{mosquitto.url}"\nbatch_max_age = "1 s"\ncompression = "zstd"\n\n'
        f'[[devices]]\nname = "m1"\ndriver = "modbus"\nendpoint = "tcp://127.0.0.1:{port}"\n'
        f'profile = "ssc-demo-meter"\ninterval = "1 s"\n')
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"@ssc-mdwe-test-{os.getpid()}"
    sock.bind("\0" + name[1:])
    notify = Notifications(sock, name)
    log = tmp_path / "agent.log"
    try:
        with log.open("wb") as err:
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "--log-json", "run", "--config", str(config)],
                cwd=ROOT, env=dict(os.environ, NOTIFY_SOCKET=name, WATCHDOG_USEC="2000000"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err,
                preexec_fn=_refuse_write_execute)  # noqa: PLW1509  # prctl only
        try:
            notify.wait_for("READY=1", 60)
            # polled through pymodbus, compressed with zstd, published through aiomqtt
            assert notify.until(lambda: any(
                s.startswith("1/1 devices up, uplink connected") for s in notify.statuses()),
                60), (notify.statuses(), log.read_text()[-3000:])
            assert notify.until(lambda: notify.count("WATCHDOG=1") >= 3, 30)  # polls at 1 s
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(30) == 0, log.read_text()[-3000:]
        finally:
            stop_process(agent, 5)
    finally:
        sock.close()
        stop_process(meter, 5)
    (stopped,) = [e for e in read_events(log) if e.get("event") == "agent_stopped"]
    assert stopped["unsent_batches"] == 0
    assert store_meta(data_dir)["next_seq"] > 1  # batches were sealed, and acknowledged
    assert not [e for e in read_events(log) if e.get("level") in ("warning", "error", "critical")
                and e.get("event") != "clock_not_synchronised"]
