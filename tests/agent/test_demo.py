"""`ssc-agent demo` end to end, with mosquitto and with the embedded broker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_runs_the_whole_chain(broker: str, tmp_path: Path) -> None:
    # long enough for a whole 10-s KPI window to close (2 s lateness) with mosquitto
    duration = "23" if broker == "mosquitto" else "8"
    args = [sys.executable, "-m", "agent.cli", "demo", "--duration", duration, "--meters", "2",
            "--data-dir", str(tmp_path)]
    if broker == "embedded":
        args += ["--broker", "embedded"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=90,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert ("broker:   mosquitto" in out) == (broker == "mosquitto"), out
    assert ("embedded (amqtt)" in out) == (broker == "embedded"), out
    assert re.search(r"batch gw-demo seq 1: \d+ readings", out), out
    assert "meter-1: voltage_l1=" in out and "meter-2: " in out
    summary = re.search(r"summary: (\d+) readings polled, (\d+) stored by the receiver", out)
    assert summary, out
    polled, stored = int(summary.group(1)), int(summary.group(2))
    assert polled >= 2 * 20 * 6  # 2 meters × 20 points × ≥6 polls
    if broker == "embedded":
        return
    # a 10-s KPI window closed while it ran, with every poll of the window in it
    assert re.search(r"KPI power_10s \[[0-9:]+, [0-9:]+\): [0-9.]+ W \(n 10/10\)", out), out
    assert stored == polled
    assert (tmp_path / "received.db").exists()


def test_demo_without_any_broker_says_what_to_install(tmp_path: Path) -> None:
    # amqtt is an extra (`ssc-edge-agent[demo]`): here it is made unimportable, as in a base
    # install, and the embedded broker is asked for (so an installed mosquitto is not used)
    code = ("import sys; sys.modules['amqtt'] = None; from agent.cli import main; "
            "sys.exit(main(['demo', '--duration', '5', '--meters', '1', '--broker', 'embedded',"
            f" '--data-dir', {str(tmp_path)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "apt-get install mosquitto" in done.stderr, done.stderr
    assert "pip install 'ssc-edge-agent[demo]'" in done.stderr
    assert "Traceback" not in done.stderr
