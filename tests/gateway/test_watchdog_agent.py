"""systemd notifications from a real ``ssc-agent run``: the test binds the notify socket
(an abstract AF_UNIX datagram socket), starts the agent with ``NOTIFY_SOCKET`` and
``WATCHDOG_USEC`` as systemd would, and reads what arrives.

The device is polled by a driver installed for the test only (a ``.dist-info`` with its
entry point on the agent's ``PYTHONPATH``): it answers, until a file appears; then it hangs
the way a broken driver does, swallowing the scheduler's cancellation, so its poller stops
while the event loop, the batcher and the uplink go on. The uplink's broker is a closed port:
the pipeline does not need one to poll and flush.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.chaos.harness import read_events
from tests.conftest import free_port, stop_process
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
WATCHDOG_USEC = 2_000_000  # pings every second

DRIVER = textwrap.dedent('''
    """A driver that answers until its stall file exists, then hangs for good."""
    import asyncio
    from pathlib import Path

    from agent.driver import DeviceConfig, DriverSpec, PointInfo, expect_config
    from agent.readings import PointValue


    class StallConfig(DeviceConfig):
        driver: str = "stall_test"
        stall_file: str


    class StallDriver:
        max_poll_seconds = None

        def __init__(self, config):
            self._stall = Path(config.stall_file)
            self.points = [PointInfo("n", None)]

        async def connect(self):
            pass

        async def read(self):
            if self._stall.exists():
                while True:  # a broken driver: it swallows the hang guard's cancellation
                    try:
                        await asyncio.sleep(3600)
                    except asyncio.CancelledError:
                        continue
            return [PointValue("n", 1)]

        async def close(self):
            pass


    SPEC = DriverSpec(name="stall_test", version="0.1", description="test: hangs on demand",
                      config_model=StallConfig,
                      create=lambda config, context: StallDriver(expect_config(config,
                                                                               StallConfig)))
''')


@pytest.fixture(scope="module")
def driver_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    (site / "ssc_test_stall_driver.py").write_text(DRIVER)
    info = site / "ssc_test_stall_driver-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ssc-test-stall-driver\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[ssc_agent.drivers]\nstall_test = ssc_test_stall_driver:SPEC\n")
    return site


@dataclass
class Notifications:
    """The test's end of NOTIFY_SOCKET: every datagram, with when it arrived."""

    sock: socket.socket
    name: str
    got: list[tuple[float, list[str]]] = field(default_factory=list)

    def receive(self, seconds: float) -> None:
        """Take what arrives within ``seconds``."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            self.got.append((time.monotonic(), data.decode().split("\n")))

    def wait_for(self, line: str, seconds: float) -> int:
        """Receive until a datagram holds ``line``; its index in :attr:`got`."""
        end = time.monotonic() + seconds
        while True:
            for i, (_, lines) in enumerate(self.got):
                if line in lines:
                    return i
            left = end - time.monotonic()
            assert left > 0, f"no {line} within {seconds} s; got {self.got}"
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.got.append((time.monotonic(), data.decode().split("\n")))

    def until(self, predicate: Callable[[], object], seconds: float) -> bool:
        """Receive until ``predicate`` holds (checked at least every half second)."""
        def received_and_holds() -> bool:
            self.receive(0.5)
            return bool(predicate())

        return bool(wait_until(received_and_holds, seconds))

    def count(self, line: str, since: int = 0) -> int:
        return sum(line in lines for _, lines in self.got[since:])

    def statuses(self) -> list[str]:
        return [x.removeprefix("STATUS=") for _, lines in self.got for x in lines
                if x.startswith("STATUS=")]


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[Notifications]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"@ssc-watchdog-test-{os.getpid()}-{tmp_path.name}"
    sock.bind("\0" + name[1:])
    yield Notifications(sock, name)
    sock.close()


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log: Path
    stall_file: Path

    def events(self, name: str) -> list[dict[str, object]]:
        return [e for e in read_events(self.log) if e.get("event") == name]


@pytest.fixture
def agent(tmp_path: Path, driver_site: Path, notify: Notifications) -> Iterator[Agent]:
    data_dir = tmp_path / "data"
    stall_file = tmp_path / "stall"
    config = tmp_path / "agent.toml"
    config.write_text(textwrap.dedent(f"""
        [gateway]
        id = "gw-watchdog"
        data_dir = "{data_dir}"
        shutdown_timeout = "2 s"

        [uplink]
        broker = "mqtt://127.0.0.1:{free_port()}"
        flush_interval = "1 s"

        [[devices]]
        name = "m1"
        driver = "stall_test"
        interval = "1 s"
        stall_file = "{stall_file}"
    """))
    env = dict(os.environ, NOTIFY_SOCKET=notify.name, WATCHDOG_USEC=str(WATCHDOG_USEC),
               PYTHONPATH=os.pathsep.join([str(driver_site), str(ROOT)]))
    env.pop("WATCHDOG_PID", None)
    log = tmp_path / "agent.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--log-json", "run", "--config", str(config)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    yield Agent(proc, data_dir, log, stall_file)
    stop_process(proc, grace=5)


def test_ready_after_the_store_opens_pings_while_it_runs_stopping_at_sigterm(
        agent: Agent, notify: Notifications) -> None:
    ready = notify.wait_for("READY=1", 60)
    # what systemd waits for is there when READY=1 arrives: the store and the running pipeline
    assert (agent.data_dir / "buffer.db").exists()
    assert agent.events("agent_started"), agent.log.read_text()[-2000:]
    assert ready == 0, f"something came before READY=1: {notify.got[:ready]}"
    # the watchdog is fed while it polls and flushes
    assert notify.until(lambda: notify.count("WATCHDOG=1") >= 4, 30)
    assert notify.until(lambda: any(
        s.startswith("1/1 devices up") for s in notify.statuses()), 30), notify.statuses()
    assert not agent.events("watchdog_withheld")
    # systemctl reload: RELOADING=1 while the config is read again, READY=1 when it is done
    agent.proc.send_signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING=1", 30)
    assert notify.until(lambda: any("READY=1" in lines for _, lines in notify.got[reloading:]),
                        30), notify.got[reloading:]
    sent = len(notify.got)
    agent.proc.send_signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1", 30)
    assert agent.proc.wait(30) == 0
    stopping = next(i for i, (_, lines) in enumerate(notify.got) if "STOPPING=1" in lines)
    assert stopping >= sent  # said when the stop began, not before


def test_a_poller_stuck_in_its_driver_stops_the_pings(
        agent: Agent, notify: Notifications) -> None:
    notify.wait_for("READY=1", 60)
    assert notify.until(lambda: notify.count("WATCHDOG=1") >= 2, 30)
    agent.stall_file.touch()
    # The poller may take its interval plus its hang guard (20 s) plus slack before it counts
    # as stalled; the agent says so once, and the pings stop.
    assert notify.until(lambda: agent.events("watchdog_withheld"), 60), (
        agent.log.read_text()[-3000:])
    (withheld,) = agent.events("watchdog_withheld")
    assert withheld["stalled"] == ["poller m1"]
    notify.receive(0.2)  # a ping sent just before the decision may still be on its way
    after = len(notify.got)
    notify.receive(3 * WATCHDOG_USEC / 1_000_000)
    assert notify.count("WATCHDOG=1", since=after) == 0, notify.got[after:]
    assert agent.proc.poll() is None  # still running: systemd is the one to restart it
    assert any("watchdog withheld: poller m1 stalled" in s for s in notify.statuses())
    agent.proc.kill()  # its hung poller would hold a SIGTERM up, as it would under systemd
