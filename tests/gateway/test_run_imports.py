"""What ``ssc-agent run`` imports for a config that does not use a part: nothing of that part
(docs/architecture.md "Footprint"). A fresh interpreter runs the command line's ``run`` until
the runtime is built and prints its modules; the test process has imported everything long ago.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway.conftest import unreachable_agent_config

ROOT = Path(__file__).resolve().parents[2]

# The console script's path: agent.cli.main(["run", ...]); run_agent gets an on_start hook that
# prints the modules once the runtime is built and stops the agent.
_RUN = """
import functools, json, os, signal, sys
import agent.cli, agent.gateway.supervisor as supervisor

def started(_: object) -> None:
    print("MODULES " + json.dumps(sorted(m for m, v in sys.modules.items() if v is not None)),
          flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

supervisor.run_agent = functools.partial(supervisor.run_agent, on_start=started)
sys.exit(agent.cli.main(["--log-level", "error", "run", "--config", sys.argv[1]]))
"""

_KPIS = """
[[kpis]]
name = "energy_hourly"
source = "m1.energy_import"
operator = "counter_delta"
window = "1 h"
sample_interval = "1 s"
"""


def _modules_at_start(tmp_path: Path, extra: str = "") -> set[str]:
    config = unreachable_agent_config(tmp_path, "gw-imp", extra)
    done = subprocess.run([sys.executable, "-c", _RUN, str(config)], check=False,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("MODULES ")]
    assert done.returncode == 0 and len(lines) == 1, done.stdout[-3000:] + done.stderr[-3000:]
    return set(json.loads(lines[0].removeprefix("MODULES ")))


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The modules of an agent with one Modbus meter and nothing else configured."""
    return _modules_at_start(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def with_kpis(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    return _modules_at_start(tmp_path_factory.mktemp("kpis"), _KPIS)


KPI_ENGINE = ["agent.kpi.engine", "agent.kpi.live", "agent.kpi.accumulators",
              "agent.kpi.counter_runners", "agent.kpi.window_runners",
              "agent.kpi.sliding_runners", "agent.kpi.replay"]


def test_without_kpis_the_engine_is_not_imported(plain: set[str]) -> None:
    assert "agent.kpi.registry" in plain  # the operators' names and rules: the config's model
    assert sorted(plain & set(KPI_ENGINE)) == []


def test_with_kpis_the_engine_runs(with_kpis: set[str]) -> None:
    assert {"agent.kpi.engine", "agent.kpi.live", "agent.kpi.counter_runners"} <= with_kpis


def test_built_in_drivers_are_found_without_the_entry_points(plain: set[str]) -> None:
    # importlib.metadata (zipfile, email, csv) only for a driver the agent does not ship
    assert "drivers.modbus.driver" in plain
    assert "importlib.metadata" not in plain


def test_the_commands_in_their_own_modules_are_not_imported(plain: set[str]) -> None:
    tools = ["agent.tools.device_test", "agent.tools.modbus_commands", "agent.tools.status",
             "agent.platform.fleet", "agent.platform.config_push", "agent.platform.report"]
    assert "agent.cli" in plain
    assert sorted(plain & set(tools)) == []


def test_the_clock_finds_adjtimex_without_ctypes_util(plain: set[str]) -> None:
    # ctypes.util.find_library runs ldconfig at start and imports shutil, tempfile and random
    # (paho's urllib.request still brings those two)
    assert "agent.gateway.clock" in plain
    assert "ctypes.util" not in plain


def test_the_gateway_does_not_load_the_wire_decoder(plain: set[str]) -> None:
    assert "agent.wire.encode" in plain
    assert "agent.wire.decode" not in plain


def test_every_name_of_the_wire_package_is_its_modules() -> None:
    import agent.wire

    modules = [importlib.import_module(f"agent.wire.{m}")
               for m in ("model", "encode", "decode", "health", "status")]
    for name in agent.wire.__all__:
        homes = [m for m in modules if name in vars(m)]
        assert len(homes) >= 1, name
        assert getattr(agent.wire, name) is getattr(homes[0], name), name
    with pytest.raises(AttributeError):
        agent.wire.no_such_name  # noqa: B018
