"""What the drivers of one device on its own serial port share (SDS011, PMS5003, IEC 62056-21).

:class:`SerialDriver` holds the port: opening it on demand (with a hook for what a new port
makes unknown), closing it, and the link for tests and tools. :func:`read_timeout_error` says
what a read that timed out means. :func:`serial_driver_spec` builds the ``DriverSpec``: such a
driver shares nothing through the context.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import agent
from agent.driver import DeviceConfig, Driver, DriverContext, DriverSpec, expect_config
from agent.errors import DeviceProtocolError, DeviceUnavailable
from drivers.serialio import ReadTimeout, SerialLink

__all__ = ["SerialDriver", "read_timeout_error", "serial_driver_spec"]

C = TypeVar("C", bound=DeviceConfig)
Simulate = Callable[[str, float | None], Coroutine[Any, Any, None]]


class SerialDriver:
    """A driver's hold on its serial port."""

    def __init__(self, link: SerialLink) -> None:
        self._link = link

    @property
    def link(self) -> SerialLink:
        """The serial link (for tests and tools)."""
        return self._link

    async def connect(self) -> None:
        """Open the port; raise DeviceUnavailable naming it when it cannot be opened."""
        await self._open()

    async def _open(self) -> None:
        if self._link.is_open:
            return
        await self._link.open()
        self._port_opened()

    def _port_opened(self) -> None:
        """A new port (or the device replugged, i.e. power-cycled): forget its mode and state."""

    async def close(self) -> None:
        """Close the port. Idempotent."""
        await self._link.close()


def read_timeout_error(
    where: str, timeout: float, what: str, exc: ReadTimeout, *, check: str, shown: int
) -> DeviceUnavailable | DeviceProtocolError:
    """The error a read that timed out is: silence (``check`` says what to look at), or an
    incomplete answer (its first ``shown`` bytes in the message)."""
    if exc.silent:
        return DeviceUnavailable(f"{where}: no answer within {timeout:g} s to {what}: {check}")
    return DeviceProtocolError(
        f"{where}: incomplete answer to {what} ({len(exc.partial)} byte(s) pending "
        f"[{exc.partial[:shown].hex(' ')}], {exc.skipped} skipped as noise): check the wiring "
        "and ground; the next poll starts afresh"
    )


def serial_driver_spec(
    name: str,
    description: str,
    config_model: type[C],
    driver: Callable[[C], Driver],
    *,
    sample_toml: str,
    simulator: str,
) -> DriverSpec:
    """The ``DriverSpec`` of a driver of one device per port; ``simulator`` names the module
    whose ``simulate(serial_path, duration)`` serves a simulated device."""

    def create(config: DeviceConfig, context: DriverContext) -> Driver:
        del context  # one device per port: nothing to share
        return driver(expect_config(config, config_model))

    async def simulate(serial_path: str, duration: float | None) -> None:
        # A technician's tool: imported when it runs, so that the agent never loads it.
        run: Simulate = importlib.import_module(simulator).simulate
        await run(serial_path, duration)

    return DriverSpec(
        name=name,
        version=agent.__version__,
        description=description,
        config_model=config_model,
        create=create,
        sample_toml=sample_toml,
        simulate=simulate,
    )
