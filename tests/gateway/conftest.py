"""Fixtures and helpers the gateway's tests share (the pty pair with the drivers' tests)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import free_port
from tests.drivers.modbus.conftest import pty_pair  # noqa: F401  # a socat pty pair


def unreachable_agent_config(tmp_path: Path, gw: str, extra: str = "") -> Path:
    """A config file of one Modbus device and a broker at a port where nothing listens: the
    agent starts with the device down and the broker unreachable (``extra`` appended)."""
    closed = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[gateway]\nid = "{gw}"\ndata_dir = "{tmp_path / "data"}"\nshutdown_timeout = "1 s"\n\n'
        f'[uplink]\nbroker = "mqtt://127.0.0.1:{closed}"\n\n'
        f'[[devices]]\nname = "m1"\ndriver = "modbus"\n'
        f'endpoint = "tcp://127.0.0.1:{closed}"\nprofile = "ssc-demo-meter"\ninterval = "1 s"\n'
        + extra)
    return config
