"""systemd supervision of a running agent: READY, STATUS and a watchdog fed only on progress.

Under ``Type=notify`` the agent says ``READY=1`` once its store is open and its pipeline tasks
run, keeps a ``STATUS=`` line (devices up, uplink, backlog) current, and says ``STOPPING=1``
when it starts to shut down and ``RELOADING=1`` … ``READY=1`` around a reload.

With ``WatchdogSec=`` set, ``WATCHDOG=1`` goes out every half period, but only while the
pipeline really moves (:class:`ProgressGate`): every poller went through its slots (a poll
that succeeded, failed or was skipped by backoff all count: a device that is down is not a
hung agent) and the batcher's flush loop ran. A poller stuck in a driver that ignores its
hang guard, or a flush loop that stopped, withholds the pings and systemd restarts the agent;
an event loop that is blocked outright sends nothing either.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from agent.errors import AgentError
from agent.sdnotify import Notifier, watchdog_seconds

if TYPE_CHECKING:
    from agent.gateway.supervisor import AgentRuntime

log = structlog.get_logger(__name__)

# Without a watchdog the STATUS= line is refreshed this often (seconds).
STATUS_EVERY = 30.0
# A poller goes through one slot per interval, plus a poll that may last its hang guard;
# this much more is allowed for a busy event loop (seconds).
POLLER_SLACK = 5.0


@dataclass(frozen=True, slots=True)
class Progress:
    """One component's progress counter as seen at one look."""

    key: Hashable  # the component itself: a replaced poller (reload) is a new one
    name: str  # how the log names it
    count: int  # moves whenever the component completes a round
    quiet_allowed: float  # the longest it may stay still while working (seconds)


class ProgressGate:
    """Decides, look by look, whether the pipeline moves: which components stood still too long.

    A component stands still too long when its counter has not moved for more than its
    ``quiet_allowed`` and more than one watchdog ``period``. A component seen for the first
    time counts as having just moved; one no longer listed is forgotten. Pure: time is the
    ``now`` given to :meth:`stalled`.
    """

    def __init__(self, period: float) -> None:
        self._period = period
        self._moved: dict[Hashable, tuple[int, float]] = {}  # key → (count, when it moved)

    def stalled(self, now: float, progress: Iterable[Progress]) -> list[str]:
        """The names of the components that stood still too long, in the order given."""
        moved: dict[Hashable, tuple[int, float]] = {}
        stalled: list[str] = []
        for p in progress:
            before = self._moved.get(p.key)
            if before is None or before[0] != p.count:
                moved[p.key] = (p.count, now)
                continue
            moved[p.key] = before
            if now - before[1] > max(self._period, p.quiet_allowed):
                stalled.append(p.name)
        self._moved = moved
        return stalled


def pipeline_progress(runtime: AgentRuntime, flush_interval: float) -> list[Progress]:
    """The pollers' slot counters and the batcher's flush-loop rounds, as the gate sees them."""
    out = [Progress(p, f"poller {p.name}", p.stats.slots,
                    p.interval + p.guard + POLLER_SLACK)
           for p in runtime.pollers]
    out.append(Progress(runtime.batcher, "batcher", runtime.batcher.stats.rounds,
                        max(flush_interval, runtime.batcher.flush_interval) + POLLER_SLACK))
    return out


def status_line(*, up: int, devices: int, connected: bool, backlog_batches: int,
                backlog_readings: int, stalled: Sequence[str] = ()) -> str:
    """What ``systemctl status`` shows under ``Status:``."""
    text = (f"{up}/{devices} devices up, uplink {'connected' if connected else 'down'}, "
            f"backlog {backlog_batches} batches ({backlog_readings} readings)")
    if stalled:
        text += f"; watchdog withheld: {', '.join(stalled)} stalled"
    return text


class ServiceWatch:
    """The agent's side of its systemd unit: one object per run, a no-op outside systemd."""

    def __init__(self, notifier: Notifier, watchdog: float | None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier
        self.watchdog = watchdog if notifier.enabled else None
        self._monotonic = monotonic
        self._gate = ProgressGate(watchdog or STATUS_EVERY)
        self._withheld: list[str] = []
        self._status = ""
        self._stopping = False  # pollers stop first at shutdown: that is no stall
        self._runtime: AgentRuntime | None = None
        self._connected: Callable[[], bool] = lambda: False

    @classmethod
    def from_environment(cls) -> ServiceWatch:
        return cls(Notifier.from_environment(), watchdog_seconds(os.environ, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled

    async def run(self, runtime: AgentRuntime, connected: Callable[[], bool],
                  flush_interval: float) -> None:
        """Say READY, then feed the watchdog and refresh STATUS until cancelled."""
        self._runtime, self._connected = runtime, connected
        await asyncio.sleep(0)  # the pipeline tasks created before this one take their first step
        self._status = self._status_now()
        self.notifier.ready(self._status)
        log.info("service_ready", watchdog_seconds=self.watchdog)
        every = self.watchdog / 2 if self.watchdog else STATUS_EVERY
        while True:
            await asyncio.sleep(every)
            self.look(pipeline_progress(runtime, flush_interval))

    def look(self, progress: Iterable[Progress]) -> bool:
        """One round: ping the watchdog if the pipeline moves, refresh STATUS if it changed."""
        if self._stopping:
            return False
        stalled = self._gate.stalled(self._monotonic(), progress)
        if stalled and stalled != self._withheld:
            log.error("watchdog_withheld", stalled=stalled,
                      hint="systemd restarts the agent once WatchdogSec passes without a ping")
        elif not stalled and self._withheld:
            log.info("watchdog_fed_again", was_stalled=self._withheld)
        self._withheld = stalled
        lines = []
        if self.watchdog and not stalled:
            lines.append("WATCHDOG=1")
        status = self._status_now()
        if status != self._status:
            self._status = status
            lines.append(f"STATUS={status}")
        return self.notifier.send(*lines) if lines else False

    def _status_now(self) -> str:
        runtime = self._runtime
        if runtime is None:
            return "starting"
        try:
            backlog = runtime.store.stats()
        except (sqlite3.Error, OSError, AgentError):  # the buffer's own checks report it
            return self._status
        return status_line(up=sum(not p.stats.down for p in runtime.pollers),
                           devices=len(runtime.pollers), connected=self._connected(),
                           backlog_batches=backlog.batches, backlog_readings=backlog.readings,
                           stalled=self._withheld)

    def reloading(self) -> None:
        """A reload starts (SIGHUP): systemd shows the unit reloading until :meth:`reloaded`."""
        self.notifier.reloading()

    def reloaded(self) -> None:
        """The reload is done (applied or rejected): the unit is running again."""
        self._status = self._status_now()
        self.notifier.ready(self._status)

    def stopping(self) -> None:
        self._stopping = True
        self.notifier.stopping()

    def close(self) -> None:
        self.notifier.close()
