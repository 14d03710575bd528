"""Fixtures the gateway's tests share with the drivers' tests."""

from tests.drivers.modbus.conftest import pty_pair  # noqa: F401  # a socat pty pair
