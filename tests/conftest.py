"""Fixtures shared by every test: free ports, a real mosquitto broker, quiet pymodbus.

``free_port()`` is a plain function (``from tests.conftest import free_port``); ``tcp_port`` is
the same as a fixture. ``mosquitto`` is a broker per test (docs/protocols.md §1); tests that need
extra broker settings (TLS, passwords) use ``mosquitto_factory(extra_config, port=None,
per_listener_settings=False)``, which returns a started :class:`Mosquitto`.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# Property tests check every example, they do not time it: hypothesis' default deadline (200 ms
# an example) fails a SQLite or PostgreSQL example on a busy machine (the suite's workers side
# by side, a shared CI runner), which says nothing about the code. Speed is for benchmarks/.
settings.register_profile("ssc", deadline=None)
settings.load_profile("ssc")

READY_TIMEOUT = 5.0
PR_SET_PDEATHSIG = 1


def _port_share() -> range:
    """The ports :func:`free_port` hands out in this process: below the kernel's ephemeral
    range, so no outgoing connection takes one between the test picking it and its server
    binding it, and split between the pytest-xdist workers, so no other worker picks it too.
    Empty when the ephemeral range leaves no room (then the kernel picks)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    first = max(1024, low - 12_000)
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (low - first) // workers
    if size < 100:
        return range(0)
    return range(first + worker * size, first + (worker + 1) * size)


_PORTS = _port_share()
_handed_out: collections.deque[int] = collections.deque(maxlen=len(_PORTS) // 2)
_choose = random.Random()  # its own: the global one may be seeded by a test (hypothesis)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def stop_process(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM ``proc`` if it still runs; SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and that this process has not
    handed out lately (its test may not have bound it yet)."""
    for _ in range(100):
        if not _PORTS:
            break
        port = _choose.choice(_PORTS)
        if port not in _handed_out and _bindable(port):
            _handed_out.append(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def _die_with_parent() -> None:
    # Runs in the child before exec: a crashed or killed test run takes its brokers with it.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Mosquitto:
    """A real mosquitto on 127.0.0.1, started and restarted on one port."""

    def __init__(
        self,
        workdir: Path,
        port: int,
        extra_config: str = "",
        *,
        per_listener_settings: bool = False,
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.url = f"mqtt://127.0.0.1:{port}"
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        # mosquitto insists that per_listener_settings comes before any listener or security
        # option; with it, allow_anonymous below covers only the first (plain) listener.
        lines = ["per_listener_settings true"] if per_listener_settings else []
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to user mosquitto and cannot read /tmp keys
        lines += [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            # The default 1000 drops queued QoS 1 messages of an offline subscriber silently.
            "max_queued_messages 0",
        ]
        self.conf_path.write_text("\n".join(lines) + "\n" + extra_config)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the broker and wait until its log says it is running."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.conf_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509  # nothing but prctl runs there
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if " running" in self.log_text()[offset:]:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self.proc.returncode}: {self.log_text()[offset:]}"
                )
            time.sleep(0.002)
        raise RuntimeError(f"mosquitto not running after {READY_TIMEOUT} s: {self.log_text()}")

    def log_text(self) -> str:
        """Everything the broker logged so far (all its runs)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        """Freeze the broker (SIGSTOP): TCP stays up, nothing is answered."""
        self._signal(signal.SIGSTOP)

    def cont(self) -> None:
        """Let a stopped broker run again (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the broker and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> None:
        """Shut the broker down: SIGCONT (a stopped one holds SIGTERM), SIGTERM, then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        stop_process(self.proc, 2)

    def restart(self) -> None:
        """Stop the broker if it runs and start it again on the same port."""
        self.terminate()
        self.start()


def _require_mosquitto() -> None:
    if shutil.which("mosquitto") is not None:
        return
    reason = "mosquitto is not on PATH (apt install mosquitto mosquitto-clients)"
    if os.environ.get("SSC_REQUIRE_MOSQUITTO"):
        pytest.fail(f"{reason}, and SSC_REQUIRE_MOSQUITTO is set")
    pytest.skip(reason)


def require_chromium() -> str:
    """The headless browser the status page is checked with (Debian ``chromium``): a test
    without it is skipped, or fails when SSC_REQUIRE_CHROMIUM is set (CI)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is not None:
        return path
    reason = "chromium is not on PATH (apt install chromium)"
    if os.environ.get("SSC_REQUIRE_CHROMIUM"):
        pytest.fail(f"{reason}, and SSC_REQUIRE_CHROMIUM is set")
    pytest.skip(reason)


@pytest.fixture
def tcp_port() -> int:
    """A free TCP port on 127.0.0.1."""
    return free_port()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Start brokers with extra config lines; all are shut down after the test."""
    _require_mosquitto()
    brokers: list[Mosquitto] = []

    def make(
        extra_config: str = "", *, port: int | None = None, per_listener_settings: bool = False
    ) -> Mosquitto:
        workdir = tmp_path / f"mosquitto-{len(brokers)}"
        workdir.mkdir()
        broker = Mosquitto(
            workdir, port or free_port(), extra_config, per_listener_settings=per_listener_settings
        )
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.terminate()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """A plain broker on a free 127.0.0.1 port, anonymous, no persistence."""
    return mosquitto_factory()


@pytest.fixture(autouse=True)
def _quiet_pymodbus() -> None:
    # pymodbus logs frame dumps for every failed request; the tests provoke many on purpose.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], Callable[[], None]]]:
    """Make a directory read-only while processes have files open in it: a read-only bind
    mount over itself (root ignores permission bits; a tmpfs with open files refuses
    ``remount,ro``). Returns the undo; every mount is undone at the end."""
    if os.geteuid() != 0:
        pytest.skip("a bind mount needs root (CI runs as root)")
    mounted: list[Path] = []

    def make(path: Path) -> Callable[[], None]:
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
        mounted.append(path)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)

        def undo() -> None:
            subprocess.run(["umount", str(path)], check=True)
            mounted.remove(path)

        return undo

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)
