"""Shared fixtures for the Modbus driver tests: quiet pymodbus, free loopback ports."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _quiet_pymodbus() -> Iterator[None]:
    logger = logging.getLogger("pymodbus")
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(before)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def port() -> int:
    return free_port()
