"""Open files: the agent raises its soft limit, and says once, clearly, when it runs out.

Real processes: ``ssc-agent simulate`` serves a meter, ``ssc-agent run`` polls it from many
devices (each device its own TCP connection) with RLIMIT_NOFILE set low in the child.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.fdlimit import fds_exhausted, raise_open_files_limit
from tests.conftest import Mosquitto, free_port
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
DEVICES = 80


def limit_open_files(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


@pytest.fixture
def meter_port() -> Iterator[int]:
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "simulate", "ssc-demo-meter", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        yield port
    finally:
        sim.terminate()
        sim.wait(10)


def config_for(tmp_path: Path, broker: str, meter_port: int) -> Path:
    devices = "".join(
        f'[[devices]]\nname = "m{i:03d}"\ndriver = "modbus"\n'
        f'endpoint = "tcp://127.0.0.1:{meter_port}"\nprofile = "ssc-demo-meter"\n'
        'interval = "1 s"\n'
        for i in range(DEVICES)
    )
    path = tmp_path / "agent.toml"
    path.write_text(f'[gateway]\nid = "gw-fd"\ndata_dir = "{tmp_path / "data"}"\n\n'
                    f'[uplink]\nbroker = "{broker}"\n\n{devices}')
    return path


def events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            out.append(event)
    return out


def start_agent(config: Path, log: Path, soft: int, hard: int) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--log-json", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT,
            preexec_fn=limit_open_files(soft, hard))  # noqa: PLW1509 - only setrlimit


def stop(agent: subprocess.Popen[bytes]) -> int:
    agent.send_signal(signal.SIGTERM)
    try:
        return agent.wait(30)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()
        raise


def test_out_of_file_descriptors_is_said_once_and_named(
    tmp_path: Path, mosquitto: Mosquitto, meter_port: int
) -> None:
    """80 devices under a hard limit of 64 open files: not 'connection refused' per device."""
    log = tmp_path / "agent.log"
    agent = start_agent(config_for(tmp_path, mosquitto.url, meter_port), log, 64, 64)
    try:
        assert wait_until(lambda: bool(events(log, "fd_limit_reached")) or agent.poll() is not None,
                        60), log.read_text()[-3000:]
        assert agent.poll() is None, log.read_text()[-3000:]
    finally:
        status = stop(agent)
    assert status == 0, log.read_text()[-3000:]
    low = events(log, "fd_limit_low")
    assert len(low) == 1, low
    assert (low[0]["limit"], low[0]["devices"]) == (64, DEVICES)
    reached = events(log, "fd_limit_reached")
    assert len(reached) == 1, reached  # once, not once per device or per poll
    assert reached[0]["limit"] == 64
    down = [e for e in events(log, "device_unavailable") if e.get("device", "").startswith("m")]
    assert down, "some devices must have found no descriptor"
    assert all("open files limit, 64" in e["error"] for e in down), down[:3]
    assert not any("refused" in e["error"] for e in down), down[:3]
    assert "Traceback" not in log.read_text()


def test_the_soft_limit_is_raised_to_the_hard_one(
    tmp_path: Path, mosquitto: Mosquitto, meter_port: int
) -> None:
    log = tmp_path / "agent.log"
    agent = start_agent(config_for(tmp_path, mosquitto.url, meter_port), log, 64, 4096)
    try:
        assert wait_until(lambda: bool(events(log, "agent_started")) or agent.poll() is not None,
                        60), log.read_text()[-3000:]
        limits = Path(f"/proc/{agent.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line
    finally:
        status = stop(agent)
    assert status == 0
    raised = events(log, "open_files_limit_raised")
    assert [(e["was"], e["soft"], e["hard"]) for e in raised] == [(64, 4096, 4096)]
    assert not events(log, "fd_limit_low")
    assert not events(log, "fd_limit_reached")


def test_fds_exhausted_tells_emfile_from_a_free_slot() -> None:
    """In a child limited to what it has open, one more socket is refused with EMFILE."""
    code = (
        "import os, resource, socket\n"
        "from agent.fdlimit import fds_exhausted\n"
        "before = fds_exhausted()\n"
        "n = len(os.listdir('/proc/self/fd'))\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))\n"
        "held = []\n"
        "try:\n"
        "    while True:\n"
        "        held.append(socket.socket())\n"
        "except OSError:\n"
        "    pass\n"
        "print(before, fds_exhausted())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)
    assert done.stdout.split() == ["False", "True"], done.stderr
    assert not fds_exhausted()


def test_raising_never_lowers_the_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = raise_open_files_limit()
    assert limits.soft >= soft
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == limits.soft
    assert limits.hard == hard
