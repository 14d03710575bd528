"""The driver contract and driver discovery through the ``ssc_agent.drivers`` entry points.

A driver does I/O only: ``connect()``, ``read()``, ``close()``. It never sleeps or schedules;
the scheduler owns timing, retries and backoff. ``read()`` returns one :class:`PointValue` per
point in ``points`` order; a point the device could not deliver comes back with a bad quality
code, never missing. When the device does not answer at all, ``read()`` raises
:class:`~agent.errors.DeviceUnavailable`; when it answers garbage for everything,
:class:`~agent.errors.DeviceProtocolError`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from agent.errors import ConfigError
from agent.readings import PointValue
from agent.schema import ConfigModel, Field
from agent.unit_fields import DeviceDurationField
from agent.units import Duration

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

ENTRY_POINT_GROUP = "ssc_agent.drivers"

# The drivers this package ships, as pyproject.toml registers them (tests/test_driver_folders.py
# checks both agree): a config naming only these loads them without reading the installed
# packages' entry points, whose reader (importlib.metadata, with zipfile and email) costs the
# agent ~0.7 MiB (docs/architecture.md "Footprint"). A built-in name is always this driver.
BUILTIN_DRIVERS: Final[Mapping[str, str]] = {
    "modbus": "drivers.modbus.driver:SPEC",
    "sds011": "drivers.sds011.driver:SPEC",
    "pms5003": "drivers.pms5003.driver:SPEC",
    "iec62056": "drivers.iec62056.driver:SPEC",
}
_DISTRIBUTION = "ssc-edge-agent"


@dataclass(frozen=True, slots=True)
class PointInfo:
    """A point a driver delivers: its name and unit."""

    name: str
    unit: str | None


# What a driver's ``max_poll_seconds`` is when it does not say: no poll longer than the
# scheduler's plain hang guard (twice the interval, at least 20 s).
DEFAULT_MAX_POLL_SECONDS: Final[float | None] = None


class Driver(Protocol):
    """One device's I/O."""

    @property
    def points(self) -> Sequence[PointInfo]: ...

    @property
    def max_poll_seconds(self) -> float | None:
        """The longest a good poll (``connect()`` and ``read()``) may take, in seconds, when
        that can outlast the scheduler's plain hang guard (a 300-baud readout); None
        (:data:`DEFAULT_MAX_POLL_SECONDS`): it never does."""

    async def connect(self) -> None: ...

    async def read(self) -> Sequence[PointValue]: ...

    async def close(self) -> None: ...


def max_poll_seconds(driver: Driver) -> float | None:
    """What ``driver`` says a good poll may take. A driver written before the member was part
    of the contract still loads and runs: it gets the default, as if it had said None."""
    value: object = getattr(driver, "max_poll_seconds", DEFAULT_MAX_POLL_SECONDS)
    return value if isinstance(value, int | float) else DEFAULT_MAX_POLL_SECONDS


class DeviceConfig(ConfigModel):
    """Keys every ``[[devices]]`` table has; a driver's model extends it (:mod:`agent.schema`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=64)
    driver: str
    interval: DeviceDurationField = Duration.parse("15 s")
    enabled: bool = True


@dataclass
class DriverContext:
    """What a driver may need beyond its own device table, shared by every device of a run.

    ``buses`` are the validated ``[[buses]]`` tables by name (``agent.config.BusConfig``).
    ``resources`` holds objects several devices share (e.g. one serial port for every device on
    an RS-485 line), keyed by the driver as it likes (``"modbus:bus:rs485-1"``); a driver that
    puts one there registers its clean-up in ``closers``, run once at shutdown after every
    driver's ``close()``.
    """

    buses: Mapping[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        """Run the registered clean-ups (each once), newest first."""
        while self.closers:
            await self.closers.pop()()


@dataclass(frozen=True)
class DriverSpec:
    """What an entry point of group ``ssc_agent.drivers`` points at."""

    name: str
    version: str
    description: str
    config_model: type[DeviceConfig]
    create: Callable[[DeviceConfig, DriverContext], Driver]
    sample_toml: str = ""
    # ``ssc-agent simulate NAME --serial PATH``: serve a simulated device of this driver on a
    # serial path until cancelled (or for ``duration`` seconds). None: no simulator.
    simulate: Callable[[str, float | None], Coroutine[Any, Any, None]] | None = None


@dataclass(frozen=True)
class DriverEntry:
    """A discovered driver, or the reason it could not be loaded."""

    name: str
    origin: str
    spec: DriverSpec | None
    error: str | None


_C = TypeVar("_C", bound=DeviceConfig)


def expect_config(config: DeviceConfig, model: type[_C]) -> _C:
    """The device table as the driver's own model (what ``DriverSpec.create`` receives)."""
    if not isinstance(config, model):
        raise ConfigError(
            f"devices (name={config.name}, driver={config.driver}): expected "
            f"{model.__name__}, got {type(config).__name__}: validate the table with the "
            f"driver's config model"
        )
    return config


def _origin(ep: EntryPoint) -> str:
    dist = ep.dist
    if dist is None:
        return ep.value
    return f"{dist.metadata['Name']} {dist.version} ({ep.value})"


def _load_builtin(value: str) -> object:
    module, _, attr = value.partition(":")
    return getattr(importlib.import_module(module), attr)


def discover(names: Collection[str] | None = None) -> dict[str, DriverEntry]:
    """Load every installed driver, or only those in ``names`` (a config's drivers: the others
    cost memory for nothing); a broken one is reported, never fatal for the others."""
    if names is not None and set(names) <= BUILTIN_DRIVERS.keys():
        from agent import __version__

        return {name: _entry(name, f"{_DISTRIBUTION} {__version__} ({value})",
                             functools.partial(_load_builtin, value))
                for name, value in BUILTIN_DRIVERS.items() if name in names}
    from importlib.metadata import entry_points

    found: dict[str, DriverEntry] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if names is not None and ep.name not in names:
            continue
        found[ep.name] = _entry(ep.name, _origin(ep), ep.load)
    return found


def _entry(name: str, origin: str, load: Callable[[], object]) -> DriverEntry:
    try:
        spec = load()
    except Exception as exc:  # a third-party import error must not stop the agent
        return DriverEntry(name, origin, None, f"import failed: {exc!r}")
    if not isinstance(spec, DriverSpec):
        return DriverEntry(
            name, origin, None, f"entry point is a {type(spec).__name__}, not a DriverSpec"
        )
    problem = spec_problem(spec)
    if problem is not None:
        return DriverEntry(name, origin, None, problem)
    return DriverEntry(name, origin, spec, None)


def spec_problem(spec: DriverSpec) -> str | None:
    """Why a loaded spec cannot be used (a broken third-party driver), or None."""
    model: object = spec.config_model
    if not (isinstance(model, type) and issubclass(model, DeviceConfig)):
        return (
            f"config_model is {model!r}, not a model extending "
            "agent.driver.DeviceConfig: make the driver's config class subclass DeviceConfig"
        )
    if not callable(spec.create):
        return f"create is a {type(spec.create).__name__}, not a function (config, context)"
    return None
