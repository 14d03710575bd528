"""What the serial drivers share (drivers/serialdriver.py): the agent loads a driver's SPEC
without its simulator (each driver's tests run ``SPEC.simulate``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]
SERIAL_DRIVERS = ["iec62056", "pms5003", "sds011"]


def test_loading_the_serial_drivers_leaves_their_simulators_out() -> None:
    # A fresh interpreter: this test process has imported the simulators long ago.
    code = (
        "import json, sys\n"
        + "".join(f"import drivers.{name}.driver\n" for name in SERIAL_DRIVERS)
        + "print(json.dumps(sorted(m for m in sys.modules if m.startswith('drivers.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    loaded = json.loads(out.stdout)
    assert {f"drivers.{name}.driver" for name in SERIAL_DRIVERS} <= set(loaded)
    assert [m for m in loaded if m.endswith((".simulator", "serialsim"))] == []

