"""The supervisor's shutdown: every poller stops, even one that drops a cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

from structlog.testing import capture_logs

from agent.gateway.devices import cancel_all as _cancel_all
from tests.gateway.conftest import unreachable_agent_config

ROOT = Path(__file__).resolve().parents[2]


async def _drops_one_cancellation(stopped: list[str]) -> None:
    # What Python 3.11's wait_for does when a cancellation meets its inner future's result.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(3600)
    try:
        await asyncio.sleep(3600)
    finally:
        stopped.append("stubborn")


async def _well_behaved(stopped: list[str]) -> None:
    try:
        await asyncio.sleep(3600)
    finally:
        stopped.append("plain")


async def test_a_poller_that_drops_a_cancellation_is_cancelled_again() -> None:
    stopped: list[str] = []
    tasks = [asyncio.create_task(_drops_one_cancellation(stopped)),
             asyncio.create_task(_well_behaved(stopped))]
    await asyncio.sleep(0)
    with capture_logs() as logs:
        async with asyncio.timeout(30):  # a hang would fail here, not block the suite
            await _cancel_all(tasks, every=0.05)
    assert sorted(stopped) == ["plain", "stubborn"]
    assert all(task.cancelled() for task in tasks)
    assert [e["event"] for e in logs] == ["pollers_cancelled_again"]
    assert logs[0]["pollers"] == 1


async def test_pollers_that_stop_at_once_are_cancelled_once() -> None:
    stopped: list[str] = []
    tasks = [asyncio.create_task(_well_behaved(stopped)) for _ in range(3)]
    await asyncio.sleep(0)
    with capture_logs() as logs:
        await _cancel_all(tasks, every=0.05)
    assert stopped == ["plain"] * 3
    assert logs == []


_SIGTERM_AT_START = """
import asyncio, os, signal, sys
from pathlib import Path
from agent.config import load_config
from agent.gateway.supervisor import run_agent

config = load_config(Path(sys.argv[1]))
# SIGTERM the moment the runtime is built, before any task runs: the earliest a service
# manager's stop can land once the agent has said it started.
asyncio.run(run_agent(config, on_start=lambda _: os.kill(os.getpid(), signal.SIGTERM)))
print("stopped cleanly")
"""


def test_a_sigterm_as_the_agent_starts_is_a_clean_stop(tmp_path: Path) -> None:
    config = unreachable_agent_config(tmp_path, "gw-term")
    done = subprocess.run([sys.executable, "-c", _SIGTERM_AT_START, str(config)],
                          check=False, capture_output=True, text=True, timeout=60, cwd=ROOT)
    out = done.stdout + done.stderr  # structlog's default, unconfigured, prints to stdout
    assert done.returncode == 0, out[-3000:]
    assert "agent_stopping" in out, out[-3000:]
    assert done.stdout.rstrip().endswith("stopped cleanly"), out[-3000:]


_DRIVERS_AT_START = """
import asyncio, os, signal, sys
from pathlib import Path
from agent.config import load_config
from agent.gateway.supervisor import run_agent

def loaded() -> str:
    names = (m for m in sys.modules if m.startswith("drivers.") and m.endswith(".driver"))
    return " ".join(sorted(names))

config = load_config(Path(sys.argv[1]))
print("validated:", loaded())

def started(_: object) -> None:
    print("running:", loaded(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

asyncio.run(run_agent(config, on_start=started))
"""


def test_only_the_drivers_a_config_names_are_imported(tmp_path: Path) -> None:
    # Every installed driver costs memory when imported: a Modbus-only agent loads no other.
    config = unreachable_agent_config(tmp_path, "gw-drv")
    done = subprocess.run([sys.executable, "-c", _DRIVERS_AT_START, str(config)],
                          check=False, capture_output=True, text=True, timeout=60, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines()
             if line.startswith(("validated:", "running:"))]
    assert lines == ["validated: drivers.modbus.driver", "running: drivers.modbus.driver"], (
        done.stdout[-3000:] + done.stderr[-3000:])
