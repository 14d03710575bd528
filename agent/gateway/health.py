"""Health at a glance: one snapshot of the running agent, and where it goes.

:func:`build_health` is the one place the snapshot is made, from the live objects (the
pollers' stats, the store's figures and drops, the batcher's buffer health, the uplink, the KPI
engine's windows); everything else reads that snapshot:

- ``data_dir/health.json``, written atomically (temp file + rename, no fsync: it is a view,
  not data) every :data:`WRITE_EVERY_SECONDS` from the event loop, which ``ssc-agent status``
  reads (:mod:`agent.tools.status`). Nothing is counted per reading: the figures are the ones
  the scheduler, batcher, store and uplink keep anyway.
- the retained ``{prefix}/{gw}/health`` summary (:func:`health_summary`, wire format §8.2),
  published through the uplink when a session comes up and every
  :data:`PUBLISH_EVERY_SECONDS` while it lasts;
- the local status page, when configured (:mod:`agent.gateway.status_page`).

Ages are on the monotonic clock (a wall-clock step does not make a poll look a month old);
times of day are the wall clock's epoch ms.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent import __version__
from agent.wire import DownDevice, HealthSummary, encode_health

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.gateway.store import StoreStats
    from agent.gateway.supervisor import AgentRuntime
    from agent.gateway.uplink import Uplink

log = structlog.get_logger(__name__)

HEALTH_FILE = "health.json"
HEALTH_FORMAT = 1  # of the snapshot's JSON (docs/operations.md "Health and status")
WRITE_EVERY_SECONDS = 5.0
PUBLISH_EVERY_SECONDS = 60.0
# the file is stale (the agent is stuck or gone) when older than this many writes
STALE_AFTER_SECONDS = 6 * WRITE_EVERY_SECONDS
KPI_KEYS = ("kpi", "start", "end", "value", "valid", "unit", "n", "expected", "coverage")


# (below this many seconds, shown in this unit of seconds, named so, with these decimals)
_AGE_UNITS = ((120, 1, "s", 0), (7200, 60, "min", 0), (172800, 3600, "h", 1),
              (math.inf, 86400, "d", 1))


def age_text(seconds: float | None) -> str:
    """An age for people: ``42 s``, ``12 min``, ``3.5 h``, ``2.0 d``; ``-`` for none."""
    if seconds is None:
        return "-"
    _, size, unit, digits = next(u for u in _AGE_UNITS if seconds < u[0])
    return f"{seconds / size:.{digits}f} {unit}"


def figure(value: object) -> str:
    """A KPI figure for people: floats to 6 significant digits; ``-`` for none."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else round(max(0.0, now - then), 3)


def build_health(runtime: AgentRuntime, uplink: Uplink | None, *, gw: str, now_ms: int,
                 now_monotonic: float, started_monotonic: float) -> dict[str, Any]:
    """The agent's health now, as plain JSON-ready data (keys: docs/operations.md)."""
    devices = []
    for poller in runtime.pollers:
        s = poller.stats
        state = "down" if s.down else ("up" if s.last_good_ms is not None else "pending")
        devices.append({
            "name": poller.name, "state": state, "polls": s.polls, "failures": s.failures,
            "failures_in_a_row": s.failures_in_a_row, "overruns": s.overruns,
            "skipped_slots": s.skipped_slots, "readings": s.readings,
            "last_good_ms": s.last_good_ms,
            "last_good_age_s": _age(now_monotonic, s.last_good_monotonic),
            "last_error": s.last_error, "last_error_ms": s.last_error_ms,
        })
    return {
        "format": HEALTH_FORMAT, "gw": gw, "boot": runtime.boot, "version": __version__,
        "pid": os.getpid(), "t": now_ms,
        "uptime_s": round(now_monotonic - started_monotonic, 3),
        "devices": devices,
        "buffer": buffer_health(runtime),
        "uplink": _uplink(runtime, uplink, now_monotonic),
        "kpis": _kpis(runtime),
    }


def buffer_health(runtime: AgentRuntime) -> dict[str, Any]:
    """The store's figures and the batcher's view of whether it takes data."""
    store, batcher = runtime.store, runtime.batcher
    s = store.stats()
    said = batcher.health()
    return {
        "state": said.state, "reason": said.reason,
        "held_readings": said.held_readings or 0,
        **store_figures(s, store.drop_totals()),
        "lost_in_memory": batcher.stats.lost_in_memory,
        "write_errors": batcher.stats.write_errors,
    }


def store_figures(s: StoreStats, drops: Mapping[str, tuple[int, int]]) -> dict[str, Any]:
    """What the store itself says (also read by ``status`` when no agent runs)."""
    return {
        "batches": s.batches, "readings": s.readings, "bytes": s.payload_bytes,
        "file_bytes": s.file_bytes, "pending_rows": s.pending_rows,
        "oldest_age_s": None if s.oldest_age_ms is None else s.oldest_age_ms / 1000,
        "dropped_batches": s.dropped_batches, "dropped_readings": s.dropped_readings,
        "drops": {reason or "other": {"batches": b, "readings": r}
                  for reason, (b, r) in sorted(drops.items())},
        "next_seq": s.next_seq,
    }


def _uplink(runtime: AgentRuntime, uplink: Uplink | None,
            now_monotonic: float) -> dict[str, Any]:
    if uplink is None:
        return {"connected": False, "broker": None, "last_ack_age_s": None, "in_flight": 0,
                "acknowledged": 0, "disconnects": 0}
    u = uplink.stats
    return {"connected": u.connected, "broker": uplink.broker_url,
            "last_ack_age_s": _age(now_monotonic, u.last_ack_monotonic),
            "in_flight": len(runtime.store.in_flight()), "acknowledged": u.acknowledged,
            "disconnects": u.disconnects}


def _kpis(runtime: AgentRuntime) -> dict[str, Any]:
    live = runtime.batcher.kpis
    if live is None:
        return {"open": [], "latest": []}
    engine = live.engine
    opened = []
    if engine.now is not None:
        # the window that holds the engine's watermark: the next one to close
        mark = engine.now - engine.lateness_ms
        for config in engine.configs:
            start, end = engine.calendar.window_at(config.window_duration, mark)
            opened.append({"kpi": config.name, "start": start, "end": end})
    latest = [{k: window.get(k) for k in KPI_KEYS}
              for _, window in sorted(live.latest.items())]
    return {"open": opened, "latest": latest}


def problems(snapshot: dict[str, Any]) -> list[str]:
    """What is wrong, one short line each; empty when all is well."""
    out = [f"device {d['name']} is down" for d in snapshot["devices"] if d["state"] == "down"]
    if not snapshot["uplink"]["connected"]:
        out.append("the uplink is not connected")
    if snapshot["buffer"]["state"] != "ok":
        out.append(f"the buffer is {snapshot['buffer']['state']}")
    return out


def health_summary(snapshot: dict[str, Any]) -> HealthSummary:
    """The retained topic's summary of a snapshot (wire format §8.2)."""
    devices = snapshot["devices"]
    down = [d for d in devices if d["state"] == "down"]
    buffer, uplink, kpis = snapshot["buffer"], snapshot["uplink"], snapshot["kpis"]
    return HealthSummary(
        gw=snapshot["gw"], boot=snapshot["boot"], t=snapshot["t"],
        version=snapshot["version"],
        devices_up=sum(1 for d in devices if d["state"] == "up"),
        devices_down=len(down),
        devices_pending=sum(1 for d in devices if d["state"] == "pending"),
        buffer_state=buffer["state"], buffer_batches=buffer["batches"],
        buffer_readings=buffer["readings"], buffer_bytes=buffer["bytes"],
        buffer_oldest_age_s=buffer["oldest_age_s"],
        buffer_dropped_readings=buffer["dropped_readings"],
        uplink_in_flight=uplink["in_flight"], uplink_last_ack_age_s=uplink["last_ack_age_s"],
        kpis_open=len(kpis["open"]), kpis_closed=len(kpis["latest"]),
        down=tuple(DownDevice(d["name"], d["failures_in_a_row"], d["last_good_ms"],
                              d["last_error"]) for d in down),
    )


def write_health_file(path: Path, snapshot: dict[str, Any]) -> None:
    """Replace ``path`` with the snapshot at once: a reader sees the old file or the new."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(snapshot, separators=(",", ":"), ensure_ascii=False) + "\n",
                    encoding="utf-8")
    os.replace(temp, path)


class HealthReporter:
    """Builds the snapshot for the page and keeps ``health.json`` and the retained summary
    current (:meth:`run`, a task of the supervisor)."""

    def __init__(self, runtime: AgentRuntime, uplink: Callable[[], Uplink | None], *,
                 gw: str, topic_prefix: str, data_dir: Path,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.runtime = runtime
        self._uplink = uplink  # a reload may replace the uplink: asked for each time
        self._gw = gw
        self._prefix = topic_prefix
        self.path = data_dir / HEALTH_FILE
        self._clock = clock
        self._monotonic = monotonic
        self._started = monotonic()
        self._write_failed = False

    def _topic(self) -> str:
        config = self.runtime.config  # a reload may change the prefix
        prefix = config.uplink.topic_prefix if config is not None and config.uplink \
            is not None else self._prefix
        return f"{prefix}/{self._gw}/health"

    def snapshot(self) -> dict[str, Any]:
        """The health now (:func:`build_health`)."""
        return build_health(self.runtime, self._uplink(), gw=self._gw,
                            now_ms=int(self._clock() * 1000),
                            now_monotonic=self._monotonic(), started_monotonic=self._started)

    def write(self, snapshot: dict[str, Any]) -> None:
        """Write health.json; a failure is logged once per episode (the buffer's own
        checks say why the data_dir is unusable)."""
        try:
            write_health_file(self.path, snapshot)
        except OSError as exc:
            if not self._write_failed:
                log.warning("health_file_unwritable", path=str(self.path), error=str(exc))
            self._write_failed = True
            return
        if self._write_failed:
            log.info("health_file_writable_again", path=str(self.path))
        self._write_failed = False

    async def run(self, tick: float = 1.0) -> None:
        """Write the file every WRITE_EVERY_SECONDS; publish the summary when a session comes
        up and every PUBLISH_EVERY_SECONDS while it lasts."""
        written_at: float | None = None
        published_at: float | None = None
        published_session = 0
        while True:
            now = self._monotonic()
            uplink = self._uplink()
            session = uplink.stats.connects if uplink is not None and uplink.stats.connected \
                else 0
            publish = bool(session) and (session != published_session or published_at is None
                                   or now - published_at >= PUBLISH_EVERY_SECONDS)
            if publish or written_at is None or now - written_at >= WRITE_EVERY_SECONDS:
                snapshot = self.snapshot()
                self.write(snapshot)
                written_at = now
                if publish and uplink is not None:
                    payload = encode_health(health_summary(snapshot))
                    if await uplink.publish_retained(self._topic(), payload):
                        published_at, published_session = now, session
            await asyncio.sleep(tick)


def start_health(tg: asyncio.TaskGroup, config: AgentConfig, runtime: AgentRuntime,
                 uplink: Callable[[], Uplink | None],
                 monotonic: Callable[[], float]) -> list[asyncio.Task[None]]:
    """The supervisor's health tasks: the reporter, and the status page when configured."""
    prefix = config.uplink.topic_prefix if config.uplink is not None else "ssc/v1"
    reporter = HealthReporter(runtime, uplink, gw=config.gateway.id, topic_prefix=prefix,
                              data_dir=Path(config.gateway.data_dir), monotonic=monotonic)
    tasks = [tg.create_task(reporter.run(), name="health")]
    page = config.status_page
    if page.port is not None:
        from agent.gateway.status_page import serve_status_page

        tasks.append(tg.create_task(serve_status_page(reporter.snapshot, page.address,
                                                      page.port), name="status-page"))
    return tasks
