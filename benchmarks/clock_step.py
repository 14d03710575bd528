"""Polls during a backward step of the wall clock: the agent under libfaketime.

One simulated ``ssc-demo-meter`` polled every second by ``ssc-agent run`` whose wall clock is
faked by libfaketime (``FAKETIME_DONT_FAKE_MONOTONIC=1``: only the wall clock; the offset is
re-read from a file within a second of a change, so rewriting it steps the running agent;
``tests/chaos/test_clock.py``). After the agent
has polled for a few seconds, its clock is stepped back by each ``--steps`` value, and the polls
the meter serves in the ``--window`` seconds after the step are counted (the interval allows
one per second). No broker is needed: the agent stores batches while it cannot connect.

Prints one line per step; asserts nothing. Needs libfaketime (``apt-get install faketime
libfaketime``).

    .venv/bin/python benchmarks/clock_step.py                     # -90 s and -1 h, 60 s each
    .venv/bin/python benchmarks/clock_step.py --steps -90s --window 30
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos.harness import MeterFleet, write_agent_config  # noqa: E402
from tests.chaos.test_clock import FakeTimeAgent  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.waiting import wait_until  # noqa: E402


def polls_after_step(step: str, window: float, workdir: Path) -> tuple[int, int]:
    """(polls in the window before the step, polls in the window after it)."""
    with MeterFleet([1000]) as fleet:
        config = write_agent_config(workdir / "agent.toml", gw="gw-step", data_dir=workdir / "d",
                                    broker_url=f"mqtt://127.0.0.1:{free_port()}",
                                    devices=fleet.devices)
        agent = FakeTimeAgent(config, workdir / "agent.log", workdir / "faketime")
        agent.set_offset("+0")
        agent.start()
        try:
            agent.wait_started(1)
            name = fleet.devices[0].name
            assert wait_until(lambda: len(fleet.requests(name)) >= 10, 30)
            stepped = agent.set_offset(step)
            time.sleep(window)
            served = fleet.requests(name)
            before = len({round(r) for r in served if stepped - window <= r < stepped})
            after = len({round(r) for r in served if stepped <= r < stepped + window})
        finally:
            agent.kill()
    return before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", nargs="+", default=["-90s", "-3600s"])
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    for step in args.steps:
        with tempfile.TemporaryDirectory(prefix="ssc-clock-step-") as tmp:
            _, after = polls_after_step(step, args.window, Path(tmp))
        print(f"step {step}: {after} polls in the {args.window:.0f} s after the step "
              f"(interval 1 s: {args.window:.0f} expected)", flush=True)


if __name__ == "__main__":
    main()
