"""Shared fixtures for the Modbus driver tests: quiet pymodbus, free loopback ports, ptys."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _die_with_parent, free_port


@pytest.fixture
def port() -> int:
    return free_port()


# --------------------------------------------------------------------------------------------
# Virtual serial lines (docs/protocols.md §3): a socat pty pair, restartable on the same paths.

SOCAT_READY_TIMEOUT = 5.0


class PtyPair:
    """A socat pty pair with links ``a`` (the simulator's end) and ``b`` (the agent's end)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.a = str(workdir / "ttyA")
        self.b = str(workdir / "ttyB")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start socat and wait until both links exist."""
        for link in (self.a, self.b):
            if os.path.lexists(link):  # a SIGKILLed socat leaves dangling links behind
                os.unlink(link)
        log_path = self.workdir / "socat.log"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["socat", "-d", "-d", f"pty,raw,echo=0,link={self.a}",
                 f"pty,raw,echo=0,link={self.b}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509  # nothing but prctl runs there
            )
        deadline = time.monotonic() + SOCAT_READY_TIMEOUT
        while not (os.path.exists(self.a) and os.path.exists(self.b)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log_text = log_path.read_text(errors="replace")
                raise RuntimeError(f"socat made no pty pair: {log_text}")
            time.sleep(0.002)

    def kill(self) -> None:
        """SIGKILL socat: both ends vanish at once, like an unplugged USB adapter."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for link in (self.a, self.b):
            if os.path.lexists(link):
                os.unlink(link)


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[PtyPair]:
    """A started socat pty pair; killed after the test."""
    if shutil.which("socat") is None:
        pytest.skip("socat is not on PATH (apt install socat)")
    pair = PtyPair(tmp_path)
    pair.start()
    yield pair
    pair.kill()
