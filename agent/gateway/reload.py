"""Reloading the configuration of a running agent without losing a reading.

SIGHUP (``systemctl reload``) makes the agent read its config file again, with the loader and
rules of ``ssc-agent validate``; remote configuration hands a config in directly. Either way
:meth:`Reloader.reload` applies it:

- a config the loader or a driver refuses, or one that changes a key a running agent cannot
  take over (:data:`~agent.gateway.config_diff.FIXED_KEYS`), is rejected as a whole: one
  ``config_rejected`` line with every problem, and the running config goes on;
- otherwise it is compared with the running one (:func:`~agent.gateway.config_diff.plan_reload`):
  devices, buses and KPIs that did not change are not touched (their poll tasks keep their
  slot grid, their KPI windows stay open); changed ones restart, removed ones stop, new ones
  start; the KPI engine is rebuilt from its own state, so unchanged KPIs keep their open
  windows; an ``[uplink]`` change reconnects the uplink. The store is never touched: sealed
  batches stay, the open batch goes on, seqs continue.

One ``config_reloaded`` line says what changed and how long it took.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import structlog

from agent.config import AgentConfig
from agent.driver import DriverContext
from agent.errors import ConfigError
from agent.fdlimit import prepare_open_files
from agent.gateway.config_diff import Changes, ReloadPlan, plan_reload
from agent.gateway.devices import DeviceSet, create_drivers

if TYPE_CHECKING:
    from agent.gateway.batcher import Batcher
    from agent.gateway.store import BatchStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did.

    ``status``: ``applied`` (the new config runs), ``unchanged`` (it equals the running one)
    or ``rejected`` (the running config goes on; ``problems`` says why, one line each, each
    naming where). For an applied reload, ``devices``, ``buses`` and ``kpis`` name what was
    kept, restarted, stopped and started, and ``uplink_restarted`` whether the uplink
    reconnected. ``seconds``: from the call to the new config running.
    """

    status: Literal["applied", "unchanged", "rejected"]
    problems: tuple[str, ...] = ()
    devices: Changes = field(default_factory=Changes)
    buses: Changes = field(default_factory=Changes)
    kpis: Changes = field(default_factory=Changes)
    uplink_restarted: bool = False
    seconds: float = 0.0

    @property
    def applied(self) -> bool:
        """The new config runs (also when it changed nothing)."""
        return self.status != "rejected"

    def summary(self) -> dict[str, Any]:
        """The outcome as plain JSON values (a log line, a state message)."""
        out: dict[str, Any] = {"status": self.status, "seconds": round(self.seconds, 4)}
        if self.problems:
            out["problems"] = list(self.problems)
        for kind, changes in (("devices", self.devices), ("buses", self.buses),
                              ("kpis", self.kpis)):
            if changes.as_dict():
                out[kind] = changes.as_dict()
        out["uplink_restarted"] = self.uplink_restarted
        return out


class Reloader:
    """Applies new configs to a running agent, one at a time (built by the supervisor).

    ``on_reload_start`` and ``on_reload_done`` are called around each reload (e.g. to tell
    systemd ``RELOADING=1`` and ``READY=1``); ``done`` gets the outcome.
    """

    def __init__(
        self,
        config: AgentConfig,
        devices: DeviceSet,
        batcher: Batcher,
        store: BatchStore,
        *,
        restart_uplink: Callable[[AgentConfig], Awaitable[None]],
        clock: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._devices = devices
        self._batcher = batcher
        self._store = store
        self._restart_uplink = restart_uplink
        self._clock = clock
        self._monotonic = monotonic
        self._lock = asyncio.Lock()
        self._closed = False
        self.on_reload_start: list[Callable[[], None]] = []
        self.on_reload_done: list[Callable[[ReloadOutcome], None]] = []

    async def reload(self, new: AgentConfig) -> ReloadOutcome:
        """Apply ``new`` (a config validated by the loader), or reject it and keep the
        running one. Never raises for a bad config; reloads queue behind each other."""
        return await self._reload(lambda: new, in_thread=False)

    async def reload_from(self, source: Callable[[], AgentConfig]) -> ReloadOutcome:
        """Load a config with ``source`` (in a thread: the pollers go on meanwhile) and
        :meth:`reload` it; a config the loader refuses is rejected with all its problems."""
        log.info("config_reload_requested")
        return await self._reload(source, in_thread=True)

    async def _reload(self, source: Callable[[], AgentConfig], *,
                      in_thread: bool) -> ReloadOutcome:
        async with self._lock:
            started = self._monotonic()
            for hook in self.on_reload_start:
                hook()
            outcome = ReloadOutcome("rejected", ("the agent is stopping",))
            try:
                if not self._closed:
                    try:
                        new = await asyncio.to_thread(source) if in_thread else source()
                    except ConfigError as exc:
                        outcome = self._rejected(exc.problems, started, reason="invalid")
                    else:
                        outcome = await self._apply(new, started)
            except Exception as exc:  # a bug: the caller gets it; the hooks hear it failed
                outcome = ReloadOutcome("rejected", (f"the reload failed: {exc!r}"[:300],))
                raise
            finally:
                for done in self.on_reload_done:
                    done(outcome)
            return outcome

    async def close(self) -> None:
        """No reload after this one (shutdown); waits for one in progress."""
        async with self._lock:
            self._closed = True

    def _rejected(self, problems: list[str] | tuple[str, ...], started: float, *,
                  reason: str) -> ReloadOutcome:
        outcome = ReloadOutcome("rejected", tuple(problems),
                                seconds=self._monotonic() - started)
        log.error("config_rejected", reason=reason, problems=list(problems),
                  kept="the running config")
        return outcome

    async def _apply(self, new: AgentConfig, started: float) -> ReloadOutcome:
        plan = plan_reload(self.config, new)
        if plan.refused:
            return self._rejected(plan.refused, started, reason="fixed_keys")
        problems = await _driver_problems(new)
        if problems:
            return self._rejected(problems, started, reason="drivers")
        if not plan.changes_anything:
            self.config = new
            outcome = ReloadOutcome("unchanged", seconds=self._monotonic() - started,
                                    devices=plan.devices, buses=plan.buses, kpis=plan.kpis)
            log.info("config_reloaded", **outcome.summary())
            return outcome
        await self._apply_devices(new, plan)
        self._apply_kpis(new, plan)
        if plan.batching_changed and new.uplink is not None:
            up = new.uplink
            self._batcher.retune(max_readings=up.batch_max_readings,
                                 max_age=up.batch_max_age.seconds,
                                 codec=1 if up.compression == "zstd" else 0,
                                 level=up.zstd_level, flush_interval=up.flush_interval.seconds)
        if plan.uplink_restart:
            await self._restart_uplink(new)
        self.config = new
        outcome = ReloadOutcome(
            "applied", devices=plan.devices, buses=plan.buses, kpis=plan.kpis,
            uplink_restarted=plan.uplink_restart, seconds=self._monotonic() - started,
        )
        log.info("config_reloaded", **outcome.summary())
        return outcome

    async def _apply_devices(self, new: AgentConfig, plan: ReloadPlan) -> None:
        devices = plan.devices
        leaving = devices.restarted + devices.stopped
        coming = devices.restarted + devices.started
        if not (leaving or coming or plan.buses.changed):
            return
        await self._devices.stop(leaving)
        self._devices.context.buses = new.buses_by_name
        if not coming:
            return
        prepare_open_files(sum(1 for device in new.devices if device.enabled))
        try:
            created = self._devices.create(new, coming)
        except ConfigError as exc:  # checked before anything stopped; a driver changed its mind
            log.error("devices_not_started", problems=exc.problems)
            return
        self._devices.add_pollers(created)

    def _apply_kpis(self, new: AgentConfig, plan: ReloadPlan) -> None:
        if not (plan.kpis.changed or plan.kpi_engine_changed):
            return
        from agent.kpi.live import LiveKpis

        current = self._batcher.kpis
        if not new.kpis:
            self._batcher.replace_kpis(None)
            return
        lateness_ms = int(new.gateway.kpi_lateness.seconds * 1000)
        checkpoint = new.gateway.kpi_checkpoint_interval.seconds
        if current is None:
            live = LiveKpis.fresh(new, self._store, self._clock, lateness_ms, checkpoint)
        else:
            live = current.reconfigured(new, plan.kpis.restarted, lateness_ms, checkpoint)
        self._batcher.replace_kpis(live)


async def _driver_problems(config: AgentConfig) -> list[str]:
    """What the drivers say about ``config``'s devices, checked in a context of its own before
    anything running is touched (drivers do no I/O until they connect)."""
    scratch = DriverContext(buses=config.buses_by_name)
    try:
        create_drivers(config, scratch)
    except ConfigError as exc:
        return list(exc.problems)
    finally:
        await scratch.close()
    return []
