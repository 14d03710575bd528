"""benchmarks/receiver.py with tiny settings, so it keeps running as the receiver changes: its
figures are not checked, only that every published reading was stored and reported."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import _require_mosquitto

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


def test_the_receiver_benchmark_runs_and_counts_every_reading() -> None:
    _require_mosquitto()
    # 5 gateways, one batch each every 10 s: two are due in 3 s (at 0 and 2 s)
    done = subprocess.run(
        [sys.executable, "benchmarks/receiver.py", "--gateways", "5", "--duration", "3",
         "--drain", "20", "--brokers", "mosquitto", "--sinks", "sqlite", "--receivers", "1",
         "--modes", "paced"],
        cwd=ROOT, capture_output=True, text=True, timeout=50, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("mosquitto")]
    assert re.search(r"1 rx paced:\s+400 readings in .* per receiver CPU-s .* lag p50 \d+ ms"
                     r" p99 \d+ ms; [\d.]+ B/reading; generator", line), line
    assert "NOT DRAINED" not in line
