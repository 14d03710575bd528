"""Fixtures every chaos case shares: a persistent broker, the receiver as a process, the
agents a test starts, and a tiny filesystem to fill."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import (
    AgentProcess,
    ReceiverProcess,
    persistent_broker_config,
)
from tests.conftest import Mosquitto
from tests.waiting import wait_until


@pytest.fixture
def broker(tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """A broker with persistence, as a platform runs it: sessions survive its restart."""
    return mosquitto_factory(persistent_broker_config(tmp_path / "broker-db"))


@pytest.fixture
def receiver(tmp_path: Path, broker: Mosquitto) -> Iterator[ReceiverProcess]:
    """The receiver subprocess, subscribed (persistent session) before the test starts."""
    rx = ReceiverProcess(broker.url, tmp_path / "received.db", tmp_path / "receiver.log")
    offset = len(broker.log_text())
    rx.start()
    # Once the broker has saved the subscribed session, it survives a SIGKILL of the broker.
    assert wait_until(lambda: "Saving in-memory database" in broker.log_text()[offset:], 10)
    yield rx
    if rx.alive:
        rx.terminate()


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    """Agents a test starts; any still running at the end is SIGKILLed."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        if agent.alive:
            agent.kill()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (needs root; CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                          check=False, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
