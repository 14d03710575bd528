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
    # the banner states the cadence the config gives (batch_max_age), which the batcher keeps
    config = (tmp_path / "agent.toml").read_text()
    age = re.search(r'batch_max_age = "([^"]+)"', config)
    assert age, config
    assert f"batches are sealed every {age.group(1)} (Ctrl-C stops)" in out, out
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


def test_demo_embedded_broker_missing_says_so_not_mosquitto(tmp_path: Path) -> None:
    # amqtt is an extra (`[demo]`): here it is made unimportable, as in a base install, and the
    # embedded broker is asked for. mosquitto is installed: the message must not claim it is
    # missing, and must point at it instead.
    code = ("import sys; sys.modules['amqtt'] = None; from agent.cli import main; "
            "sys.exit(main(['demo', '--duration', '5', '--meters', '1', '--broker', 'embedded',"
            f" '--data-dir', {str(tmp_path)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ssc-agent: demo --broker embedded: the embedded broker (amqtt) "
                               "is not installed (pip install '.[demo]' in a checkout"), lines
    assert "or leave --broker out to use mosquitto (" in lines[0]
    assert "mosquitto is not installed" not in done.stderr
    assert "Traceback" not in done.stderr


def test_demo_with_embedded_broker_does_not_say_mosquitto_is_missing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "demo", "--duration", "3", "--meters", "1",
         "--broker", "embedded", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert "embedded (amqtt) on mqtt://127.0.0.1:" in done.stdout, done.stdout + done.stderr
    assert "(as asked)" in done.stdout
    assert "mosquitto not found" not in done.stdout


def test_demo_into_head_stops_quietly(tmp_path: Path) -> None:
    """`ssc-agent demo | head -8`: the reader goes away mid-run; the demo stops with 141."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "demo", "--duration", "60", "--meters", "1",
         "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    lines = [proc.stdout.readline() for _ in range(8)]
    assert any(b"batch gw-demo seq 1:" in line for line in lines), lines
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "on_batch_failed" not in err, err
