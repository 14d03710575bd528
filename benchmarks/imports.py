"""What each import of the agent runtime costs in resident memory (VmRSS), printed as a table.

For every step, in the order ``ssc-agent run`` makes them (``python -X importtime`` of a run),
two figures:

- alone: a fresh interpreter's VmRSS before and after that one step;
- cumulative: one interpreter taking every step in turn, its VmRSS after each.

The last step loads and validates a 50-device Modbus config (``agent.config.load_config``).
A second table gives the config's share: every other import of the runtime first, then the
config's models (:mod:`agent.schema`, which replaced pydantic: that cost ~14 MiB) and a load.
Then asyncio with and without ssl (which asyncio, aiomqtt, paho and pymodbus all import), and
the runtime by phase: standard library, third-party packages, the agent's own modules, a
loaded config (docs/architecture.md "Footprint").

Run it with the python of the install to measure. The figures that matter are those of a base
install (no test/dev extras: ``rich``, which the ``demo`` extra brings, makes structlog ~17 MiB
heavier)::

    python3 -m venv /tmp/base && /tmp/base/bin/pip install .
    /tmp/base/bin/python benchmarks/imports.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_RSS = """
def _rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS in /proc/self/status")
"""

# (label, setup, code): the agent's order. "alone" runs setup first and measures code only; a
# step an earlier one already took costs ~0 in the cumulative column.
STEPS: list[tuple[str, str, str]] = [
    ("asyncio", "", "import asyncio"),
    ("ssl", "", "import ssl"),
    ("structlog", "", "import structlog"),
    ("agent.schema (config models)", "", "import agent.schema"),
    ("agent.config (its models)", "", "import agent.config"),
    ("zstandard", "", "import zstandard"),
    ("sqlite3", "", "import sqlite3"),
    ("msgpack", "", "import msgpack"),
    ("agent.gateway.supervisor", "", "import agent.gateway.supervisor"),
    ("drivers.modbus.driver", "", "import drivers.modbus.driver"),
    ("aiomqtt (paho)", "", "import aiomqtt"),
    ("pymodbus client", "", "import pymodbus.client"),
    ("serial_asyncio_fast", "", "import serial_asyncio_fast"),
    ("prometheus_client", "", "import prometheus_client"),
    ("a config loaded ({devices} devices)", "import agent.config",
     "_config = agent.config.load_config(__import__('pathlib').Path({config!r}))"),
]


# The config's share: every other import of the runtime first, then the config's modules and
# what is built with them, so that what they share with the rest is not counted as theirs.
WITHOUT_CONFIG = (
    "import asyncio, ssl, sqlite3, ctypes, tomllib, structlog, zstandard, msgpack, "
    "pymodbus.client"
)
CONFIG_STEPS: list[tuple[str, str]] = [
    ("the runtime's other imports", WITHOUT_CONFIG),
    ("agent.schema imported", "import agent.schema"),
    ("agent.config: the agent's models", "import agent.config"),
    ("a config loaded ({devices} devices)",
     "_config = agent.config.load_config(__import__('pathlib').Path({config!r}))"),
]


# The runtime in phases, one interpreter taking them in turn: what the standard library, the
# third-party packages, the agent's own modules and a loaded config each add.
PHASES: list[tuple[str, str]] = [
    ("standard library (asyncio, ssl, sqlite3, …)",
     # no importlib.metadata: a config of built-in drivers does not read the entry points
     "import asyncio, ssl, sqlite3, ctypes, tomllib, argparse, json, zoneinfo"),
    ("third-party (structlog, pymodbus, …; `run` imports no aiomqtt/paho)",
     "import structlog, zstandard, msgpack, pymodbus.client"),
    ("the agent's run path (cli, supervisor, uplink, modbus)",
     "import agent.cli, agent.gateway.supervisor, agent.gateway.uplink, agent.gateway.allocator, "
     "drivers.modbus.driver"),
    ("a config loaded ({devices} devices)",
     "import agent.config\n"
     "_config = agent.config.load_config(__import__('pathlib').Path({config!r}))"),
]

# asyncio imports ssl (asyncio.base_events, sslproto), and so do aiomqtt, paho and pymodbus's
# transport: here, what asyncio costs with ssl made unimportable (a measurement only).
WITHOUT_SSL = "import sys\nsys.modules['ssl'] = None"


def config_text(devices: int) -> str:
    """An agent config of ``devices`` Modbus TCP meters (the footprint benchmark's shape)."""
    table = "".join(
        f'\n[[devices]]\nname = "meter-{i:02d}"\ndriver = "modbus"\n'
        f'endpoint = "tcp://127.0.0.1:{15000 + i}"\nprofile = "ssc-demo-meter"\n'
        'interval = "1 s"\n'
        for i in range(devices)
    )
    return ('[gateway]\nid = "gw-bench"\ndata_dir = "/tmp/ssc-imports-bench"\n\n'
            '[uplink]\nbroker = "mqtt://127.0.0.1:1883"\n' + table)


def _run(code: str) -> list[int]:
    """Run ``code`` in a fresh interpreter from the repository root; the numbers it printed."""
    out = subprocess.run([sys.executable, "-c", f"{_RSS}\n{code}"], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"failed: {code!r}\n{out.stderr.strip()}")
    return [int(x) for x in out.stdout.split()]


def alone(setup: str, code: str) -> int:
    """VmRSS (kB) that ``code`` adds to a fresh interpreter that ran ``setup`` first."""
    before, after = _run(f"{setup}\nprint(_rss())\n{code}\nprint(_rss())")
    return after - before


def cumulative(steps: list[tuple[str, str]]) -> tuple[int, list[int]]:
    """VmRSS (kB) of one interpreter at its start and after each step (setup, code) in turn."""
    script = ["print(_rss())"]
    for setup, code in steps:
        script += [setup, code, "print(_rss())"]
    start, *after = _run("\n".join(script))
    return start, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50, help="devices in the loaded config")
    args = parser.parse_args()
    mib = 1024.0
    with tempfile.TemporaryDirectory(prefix="ssc-imports-") as tmp:
        config = Path(tmp) / "agent.toml"
        config.write_text(config_text(args.devices))
        where = repr(str(config))
        steps = [
            (label.format(devices=args.devices), setup, code.replace("{config!r}", where))
            for label, setup, code in STEPS
        ]
        start, totals = cumulative([(setup, code) for _, setup, code in steps])
        costs = [alone(setup, code) for _, setup, code in steps]
        config_start, config_totals = cumulative(
            [("", code.replace("{config!r}", where)) for _, code in CONFIG_STEPS]
        )
        phase_start, phase_totals = cumulative(
            [("", code.replace("{config!r}", where)) for _, code in PHASES]
        )
        asyncio_alone = alone("", "import asyncio")
        asyncio_without_ssl = alone(WITHOUT_SSL, "import asyncio")
        ssl_alone = alone("", "import ssl")
        has_rich = _run("import importlib.util\n"
                        "print(int(importlib.util.find_spec('rich') is not None))")[0]
    print(f"python {sys.version.split()[0]} at {sys.executable}")
    print("rich is installed, and structlog imports it: not a base install" if has_rich
          else "rich is not installed (a base install)")
    print(f"bare interpreter: {start / mib:.1f} MiB VmRSS\n")
    print(f"{'step':<36} {'alone':>10} {'cumulative':>12} {'adds':>10}")
    previous = start
    for (label, _, _), cost, total in zip(steps, costs, totals, strict=True):
        print(f"{label:<36} {cost / mib:+6.1f} MiB {total / mib:8.1f} MiB "
              f"{(total - previous) / mib:+6.1f} MiB")
        previous = total
    print(f"\nthe config in the runtime (one interpreter, from {config_start / mib:.1f} MiB):")
    previous = config_start
    for (label, _), total in zip(CONFIG_STEPS, config_totals, strict=True):
        print(f"{label.format(devices=args.devices):<36} {total / mib:8.1f} MiB "
              f"{(total - previous) / mib:+6.1f} MiB")
        previous = total
    share = config_totals[-1] - config_totals[0]
    print(f"{'the config and what is built with it':<36} {share / mib:+8.1f} MiB")
    print(f"\nasyncio: {asyncio_alone / mib:+.1f} MiB alone; with ssl unimportable "
          f"{asyncio_without_ssl / mib:+.1f} MiB, so ssl (libssl, libcrypto) is "
          f"{(asyncio_alone - asyncio_without_ssl) / mib:+.1f} MiB of it (ssl alone "
          f"{ssl_alone / mib:+.1f} MiB). asyncio, aiomqtt, paho and pymodbus all import ssl.")
    print(f"\nby phase (one interpreter, from {phase_start / mib:.1f} MiB bare):")
    previous = phase_start
    for (label, _), total in zip(PHASES, phase_totals, strict=True):
        print(f"{label.format(devices=args.devices):<56} {total / mib:8.1f} MiB "
              f"{(total - previous) / mib:+6.1f} MiB")
        previous = total
    print("then, running at 1,000 readings/s: benchmarks/footprint.py (start-up and peak)")
    print("\nalone: what the step adds to a fresh interpreter that took only its setup (a config"
          "\nloaded: agent.config imported); cumulative:"
          "\nVmRSS after the step, every step above taken first; adds: the difference.")


if __name__ == "__main__":
    main()
