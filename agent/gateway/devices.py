"""The running devices: one driver, poller and poll task each, and the driver context they share.

A reload stops and starts single devices while the others keep polling. What drivers share
(a Modbus line: one client and one lock for every device on a bus) lives in
``DriverContext.resources``; :class:`TrackedResources` notes which device uses which entry, so
that an entry is closed and dropped once no running device uses it any more (the last device
of a bus stopped, or a bus whose settings changed: all its devices restart and the next one
builds the line anew), and kept while a device still uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import structlog

from agent.config import AgentConfig
from agent.driver import DeviceConfig, Driver, DriverContext, discover
from agent.errors import ConfigError
from agent.gateway.scheduler import DevicePoller

log = structlog.get_logger(__name__)


class TrackedResources(dict[str, Any]):
    """``DriverContext.resources`` that notes the device on whose behalf each key is used."""

    def __init__(self) -> None:
        super().__init__()
        self.device: str | None = None  # the device being created now
        self.users: dict[str, set[str]] = {}  # key → devices that used it

    def _note(self, key: str) -> None:
        if self.device is not None:
            self.users.setdefault(key, set()).add(self.device)

    def get(self, key: str, default: Any = None) -> Any:
        self._note(key)
        return super().get(key, default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._note(key)
        return super().setdefault(key, default)

    def __getitem__(self, key: str) -> Any:
        self._note(key)
        return super().__getitem__(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self._note(key)
        super().__setitem__(key, value)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self._note(key)
        return super().__contains__(key)


class _Ownership:
    """Per device: the resource keys it uses, and the closers its creation registered."""

    def __init__(self, context: DriverContext) -> None:
        self.context = context
        self.closers: dict[str, list[Callable[[], Awaitable[None]]]] = {}  # key → clean-ups

    @contextlib.contextmanager
    def creating(self, name: str) -> Iterator[None]:
        resources = self.context.resources
        tracked = resources if isinstance(resources, TrackedResources) else None
        before = set(resources)
        closers_before = len(self.context.closers)
        if tracked is not None:
            tracked.device = name
        try:
            yield
        finally:
            if tracked is not None:
                tracked.device = None
            new_keys = sorted(set(resources) - before)
            added = self.context.closers[closers_before:]
            if added:
                # a clean-up belongs to what this creation made; without a new key, to the
                # device itself
                owner = new_keys[0] if new_keys else f"device:{name}"
                self.closers.setdefault(owner, []).extend(added)
                if tracked is not None:
                    tracked.users.setdefault(owner, set()).add(name)

    async def release(self, stopped: Iterable[str]) -> list[str]:
        """Drop ``stopped`` devices as users; close and drop what no one uses any more."""
        resources = self.context.resources
        users = resources.users if isinstance(resources, TrackedResources) else {}
        gone = set(stopped)
        freed = []
        for key in list(users):
            users[key] -= gone
            if users[key]:
                continue
            del users[key]
            dict.pop(resources, key, None)
            for closer in self.closers.pop(key, []):
                with contextlib.suppress(ValueError):
                    self.context.closers.remove(closer)
                try:
                    await closer()
                except Exception as exc:  # closing a broken line must not stop a reload
                    log.debug("driver_resource_close_failed", key=key,
                              error=f"{type(exc).__name__}: {exc}")
            freed.append(key)
        return freed


def create_drivers(
    config: AgentConfig, context: DriverContext, names: Iterable[str] | None = None
) -> list[tuple[DeviceConfig, Driver]]:
    """One driver per enabled device, each from its installed driver spec; with ``names``, one
    per device of those names instead, enabled or not (``ssc-agent test --device``). A
    ConfigError lists every device that could not be created."""
    return _create(config, context, names, None)


def _create(
    config: AgentConfig,
    context: DriverContext,
    names: Iterable[str] | None,
    ownership: _Ownership | None,
) -> list[tuple[DeviceConfig, Driver]]:
    wanted = None if names is None else set(names)
    chosen = [(i, device) for i, device in enumerate(config.devices)
              if (device.enabled if wanted is None else device.name in wanted)]
    # Only the drivers these devices use are imported: the others cost memory for nothing.
    installed = discover({device.driver for _, device in chosen})
    out: list[tuple[DeviceConfig, Driver]] = []
    problems: list[str] = []
    for i, device in chosen:
        entry = installed.get(device.driver)
        where = f"devices[{i}] (name={device.name}, driver={device.driver})"
        if entry is None or entry.spec is None:
            reason = entry.error if entry is not None else "not installed"
            problems.append(f"{where} → driver: {reason}")
            continue
        owning = ownership.creating(device.name) if ownership else contextlib.nullcontext()
        try:
            with owning:
                out.append((device, entry.spec.create(device, context)))
        except ConfigError as exc:
            problems.extend(f"{where}: {p}" for p in exc.problems)
    if problems:
        raise ConfigError(problems)
    return out


async def cancel_all(tasks: Iterable[asyncio.Task[None]], every: float = 0.5) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again those that carry on.

    Python 3.11's ``asyncio.wait_for`` (pymodbus connects and reads with it) drops a
    cancellation that arrives as its inner future completes: the poller then kept polling,
    and the agent never stopped after SIGTERM (until systemd killed it).
    """
    tasks = list(tasks)
    pending = set(tasks)
    rounds = 0
    while pending:
        if rounds == 1:
            log.info("pollers_cancelled_again", pollers=len(pending))
        rounds += 1
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
    await asyncio.gather(*tasks, return_exceptions=True)  # retrieve what they raised


PollerFactory = Callable[[DeviceConfig, Driver], DevicePoller]


class DeviceSet:
    """The devices being polled, by name; ``pollers`` is the runtime's list, kept in step."""

    def __init__(self, context: DriverContext, make_poller: PollerFactory,
                 pollers: list[DevicePoller]) -> None:
        self.context = context
        self._make_poller = make_poller
        self._ownership = _Ownership(context)
        self.pollers = pollers
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None

    def create(self, config: AgentConfig,
               names: Iterable[str] | None = None) -> list[tuple[DeviceConfig, Driver]]:
        """Drivers for ``config``'s enabled devices (or those in ``names``), in the shared
        context, each noted as the user of the resources it takes."""
        return _create(config, self.context, names, self._ownership)

    def add_pollers(self, drivers: Iterable[tuple[DeviceConfig, Driver]]) -> None:
        """Pollers for ``drivers``; they start polling with :meth:`start` (or at once if
        already started)."""
        for device, driver in drivers:
            poller = self._make_poller(device, driver)
            self.pollers.append(poller)
            if self._tg is not None:
                self._spawn(poller)

    def start(self, tg: asyncio.TaskGroup) -> None:
        """Start a poll task per poller in ``tg``."""
        self._tg = tg
        for poller in self.pollers:
            self._spawn(poller)

    def _spawn(self, poller: DevicePoller) -> None:
        assert self._tg is not None
        self.tasks[poller.name] = self._tg.create_task(poller.run(), name=f"poll-{poller.name}")

    async def stop(self, names: Iterable[str]) -> None:
        """Stop polling ``names`` (each poller closes its driver) and close what only they
        used."""
        gone = set(names)
        await cancel_all(self.tasks.pop(name) for name in gone if name in self.tasks)
        self.pollers[:] = [p for p in self.pollers if p.name not in gone]
        freed = await self._ownership.release(gone)
        if freed:
            log.debug("driver_resources_closed", keys=freed)

    async def stop_all(self) -> None:
        """Stop every poller (shutdown); the context's closers run after."""
        await cancel_all(list(self.tasks.values()))
        self.tasks.clear()
