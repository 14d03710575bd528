"""The streaming KPI engine (docs/kpis.md §3–§4): readings in, closed windows out.

Pure: no I/O and no clock. Time comes from the readings' timestamps and from explicit
:meth:`Engine.advance` / :meth:`Engine.finish` calls.

Lateness: a reading is accepted if its time is at least ``now − lateness`` (``now`` = the
latest time fed or advanced to); accepted readings wait in a reorder buffer and are released
to the KPIs in time order once ``now − lateness`` has passed them, so every operator sees each
source in time order and the outputs do not depend on arrival order. A window closes once
``now − lateness`` reaches its end (a counter window, which holds the reading on its end,
once it passes it). Readings older than ``now − lateness`` are counted in
:attr:`Engine.late_dropped`, per KPI.

Checkpointing: :meth:`Engine.snapshot` returns a JSON- and msgpack-able dict of all open
state; :meth:`Engine.restore` rebuilds an engine that continues exactly where it stopped.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias
from zoneinfo import ZoneInfo

from agent.kpi.calendar import Calendar
from agent.kpi.context import KpiContext
from agent.kpi.output import TIME_EXTRAS, Emit, KpiOutput, TimeJump
from agent.kpi.registry import REGISTRY
from agent.kpi.runner import Runner
from agent.readings import Quality, Reading

if TYPE_CHECKING:
    from agent.config import AgentConfig, KpiConfig

__all__ = ["TIME_EXTRAS", "Engine", "KpiOutput", "TimeJump"]

SNAPSHOT_VERSION = 1


def _sort_key(output: KpiOutput) -> tuple[int, str]:
    return output.end, output.kpi


def _topological(kpis: Sequence[KpiConfig]) -> list[KpiConfig]:
    """Sources before the KPIs that read them (cycles are rejected by the config loader)."""
    by_name = {kpi.name: kpi for kpi in kpis}
    done: set[str] = set()
    order: list[KpiConfig] = []

    def visit(kpi: KpiConfig, depth: int) -> None:
        if kpi.name in done:
            return
        if depth > len(kpis):
            raise ValueError(f"KPI {kpi.name}: its kpi: sources form a cycle")
        source = by_name.get(kpi.source_kpi or "")
        if source is not None:
            visit(source, depth + 1)
        done.add(kpi.name)
        order.append(kpi)

    for kpi in kpis:
        visit(kpi, 0)
    return order


def _fingerprint(config: KpiConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


Source: TypeAlias = tuple[str, str]


class Engine:
    """Streaming KPI engine: :meth:`feed` readings, :meth:`advance` time, :meth:`finish` at end."""

    def __init__(self, kpis: Sequence[KpiConfig], tz: ZoneInfo, *, lateness_ms: int = 0,
                 max_step_ms: int | None = None) -> None:
        if lateness_ms < 0:
            raise ValueError(f"lateness_ms must be ≥ 0, got {lateness_ms}")
        if max_step_ms is not None and max_step_ms <= 0:
            raise ValueError(f"max_step_ms must be > 0, got {max_step_ms}")
        self.tz = tz
        self.max_step_ms = max_step_ms
        self.calendar = Calendar(tz)
        self.lateness_ms = lateness_ms
        self.configs = _topological(kpis)
        by_name = {kpi.name: kpi for kpi in self.configs}
        self._runners: dict[str, Runner] = {}
        self._by_source: dict[Source, list[Runner]] = {}
        self._dependents: dict[str, list[Runner]] = {}
        for config in self.configs:
            spec = REGISTRY[config.operator]
            kpi = KpiContext(config, self.calendar, self._emitter(config.name), spec.default_unit)
            source = by_name.get(config.source_kpi or "")
            runner = spec.runner(kpi, None if source is None else source.step_duration)
            self._runners[config.name] = runner
            if config.source_kpi is not None:
                self._dependents.setdefault(config.source_kpi, []).append(runner)
            else:
                device = config.source_device
                assert device is not None
                self._by_source.setdefault(device, []).append(runner)
        self._order = [self._runners[config.name] for config in self.configs]
        self._out: list[KpiOutput] = []
        self._now: int | None = None
        self._origin: int | None = None
        self._last: dict[Source, int] = {}
        self._buffer: list[tuple[int, int, str, str, float | None]] = []
        self._buffered: set[tuple[str, str, int]] = set()
        self._seq = 0
        self.late_dropped: dict[str, int] = {config.name: 0 for config in self.configs}
        self.duplicates = 0
        self.discarded: list[str] = []  # KPIs whose saved state did not match (restore)
        self.jumps: list[TimeJump] = []  # taken by the caller (take_jumps)
        self._behind = False  # the clock is behind the engine by more than max_step_ms
        self._finished = False

    @classmethod
    def from_config(cls, config: AgentConfig, *, lateness_ms: int = 0,
                    max_step_ms: int | None = None) -> Engine:
        """An engine for the ``[[kpis]]`` of a loaded config, in the gateway's zone."""
        return cls(config.kpis, config.gateway.tz, lateness_ms=lateness_ms,
                   max_step_ms=max_step_ms)

    @property
    def sources(self) -> frozenset[Source]:
        """The (device, point) pairs some KPI reads."""
        return frozenset(self._by_source)

    @property
    def now(self) -> int | None:
        """The latest time fed or advanced to (epoch ms), None before the first."""
        return self._now

    def _emitter(self, name: str) -> Emit:
        def emit(output: KpiOutput, step_start: int, step_end: int) -> None:
            self._out.append(output)
            value = output.value if output.valid else None
            x = None if value is None else float(value)
            for runner in self._dependents.get(name, ()):
                runner.item(step_start, step_end, x)

        return emit

    def _take(self) -> list[KpiOutput]:
        out, self._out = self._out, []
        out.sort(key=_sort_key)
        return out

    def start(self, origin_ms: int) -> None:
        """Open every KPI's first window: the one holding ``origin_ms``. Idempotent."""
        if self._origin is not None:
            return
        self._origin = origin_ms
        if self._now is None:
            self._now = origin_ms
        for runner in self._order:
            runner.begin(origin_ms)

    def _watermark(self) -> int | None:
        return None if self._now is None else self._now - self.lateness_ms

    def feed(self, reading: Reading) -> list[KpiOutput]:
        """Feed one reading; a bad quality or non-finite value is a present-but-invalid reading."""
        value: float | None = None
        if reading.quality == Quality.GOOD and reading.value is not None:
            number = float(reading.value)
            value = number if math.isfinite(number) else None
        return self.feed_value(reading.device, reading.point, reading.t, value)

    def feed_value(self, device: str, point: str, t: int, value: float | None) -> list[KpiOutput]:
        """Feed one reading as plain values (``value`` None = present but invalid)."""
        self._feed(device, point, t, value)
        return self._take()

    def _feed(self, device: str, point: str, t: int, value: float | None) -> None:
        if self._finished:
            raise RuntimeError("the engine has finished: create a new one")
        key = (device, point)
        runners = self._by_source.get(key)
        if runners is not None:
            self._check_step(t)
        watermark = self._watermark()
        if runners is not None:
            if watermark is not None and t < watermark:
                for runner in runners:
                    self.late_dropped[runner.kpi.name] += 1
                return
            if self.lateness_ms == 0:
                if self._last.get(key) == t:
                    self.duplicates += 1
                    return
                self._last[key] = t
                if self._origin is None:
                    self.start(t)
                for runner in runners:
                    runner.reading(t, value)
            elif (device, point, t) in self._buffered or self._last.get(key) == t:
                self.duplicates += 1
            else:
                self._buffered.add((device, point, t))
                heapq.heappush(self._buffer, (t, self._seq, device, point, value))
                self._seq += 1
        if self._now is None or t > self._now:
            self._now = t
        if self.lateness_ms:
            self._release(self._now - self.lateness_ms)

    def _release(self, upto: float) -> None:
        """Hand buffered readings with ``t ≤ upto`` to their KPIs, in time order."""
        buffer = self._buffer
        while buffer and buffer[0][0] <= upto:
            t, _, device, point, value = heapq.heappop(buffer)
            self._buffered.discard((device, point, t))
            self._last[(device, point)] = t
            if self._origin is None:
                self.start(t)
            for runner in self._by_source[(device, point)]:
                runner.reading(t, value)

    def advance(self, now_ms: int) -> list[KpiOutput]:
        """Move the engine clock to ``now_ms``: close every window ``now − lateness`` completed."""
        if self._finished:
            raise RuntimeError("the engine has finished: create a new one")
        self._check_step(now_ms)
        if self._now is None or now_ms > self._now:
            self._now = now_ms
        watermark = self._now - self.lateness_ms
        self._release(watermark)
        if self._origin is None:
            return self._take()  # no window opens before the first reading
        for runner in self._order:
            runner.advance(watermark)
        return self._take()

    def _check_step(self, t: int) -> None:
        """Handle ``t`` more than ``max_step_ms`` away from the engine's time (a clock step).

        Forward: the open windows close as at the end of input, the windows wholly inside the
        jump are skipped (not emitted), and the windows holding ``t`` open; one
        :class:`TimeJump` is recorded. Backward: nothing moves; the engine keeps its windows
        and counts readings before ``now − lateness`` as late until the clock is back, and
        one :class:`TimeJump` (negative) is recorded when the clock falls behind.
        """
        step = self.max_step_ms
        now = self._now
        if step is None or now is None:
            return
        if t < now - step:
            if not self._behind:
                self._behind = True
                self.jumps.append(TimeJump(now, t, 0))
            return
        if t >= now:
            self._behind = False
        if t - now <= step:
            return
        self._release(math.inf)  # every accepted reading is at or before now
        if self._origin is None:
            return  # nothing was fed: the first reading will open the windows
        to = max(now, t - self.lateness_ms)
        before = len(self._out)
        for runner in self._order:
            runner.jump(now, to)
        self.jumps.append(TimeJump(now, t, len(self._out) - before))
        self._now = t

    def rebase(self, t: int) -> list[KpiOutput]:
        """Give up the engine's time for ``t`` (earlier than it: a clock set back for good):
        the open windows close as at the end of input at the engine's time, and every KPI
        starts afresh at the window holding ``t``. Recorded as a :class:`TimeJump`."""
        if self._finished:
            raise RuntimeError("the engine has finished: create a new one")
        now = self._now
        self._release(math.inf)
        if now is not None and self._origin is not None:
            before = len(self._out)
            for runner in self._order:
                runner.finish(now)
            for runner in self._order:
                runner.begin(t)
            self.jumps.append(TimeJump(now, t, len(self._out) - before))
        self._now = t
        self._last.clear()
        self._behind = False
        return self._take()

    def take_jumps(self) -> list[TimeJump]:
        """The clock steps seen since the last call."""
        jumps, self.jumps = self.jumps, []
        return jumps

    def finish(self, last_ms: int | None = None) -> list[KpiOutput]:
        """Close every window through the one holding ``last_ms`` (default: now); end of input."""
        if self._finished:
            return []
        self._release(math.inf)
        last = self._now if last_ms is None else last_ms
        self._finished = True
        if last is None:
            return []
        self.start(last)
        for runner in self._order:
            runner.finish(last)
        return self._take()

    # ----------------------------------------------------------------------------------------
    # checkpointing

    def snapshot(self) -> dict[str, Any]:
        """All open state as plain lists, dicts, ints, floats, strings and None."""
        return {
            "version": SNAPSHOT_VERSION,
            "timezone": self.tz.key,
            "lateness_ms": self.lateness_ms,
            "now": self._now,
            "origin": self._origin,
            "finished": self._finished,
            "seq": self._seq,
            "last": [[device, point, t] for (device, point), t in self._last.items()],
            "buffer": [list(entry) for entry in sorted(self._buffer)],
            "late_dropped": dict(self.late_dropped),
            "duplicates": self.duplicates,
            "kpis": {
                name: {"config": _fingerprint(runner.kpi.config), "state": runner.state()}
                for name, runner in self._runners.items()
                if self._origin is not None
            },
        }

    @classmethod
    def restore(
        cls, config: AgentConfig, snapshot: Mapping[str, Any], *, lateness_ms: int | None = None
    ) -> Engine:
        """An engine for ``config`` that continues from ``snapshot``.

        A KPI whose definition changed since the snapshot (or that is new) starts afresh at
        the current window and is listed in :attr:`discarded`; so are all of them if the time
        zone changed.
        """
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"KPI snapshot version {snapshot.get('version')!r} is not {SNAPSHOT_VERSION}: "
                "discard the checkpoint"
            )
        lateness = int(snapshot["lateness_ms"]) if lateness_ms is None else lateness_ms
        engine = cls.from_config(config, lateness_ms=lateness)
        same_zone = snapshot.get("timezone") == engine.tz.key
        engine._now = snapshot["now"]
        engine._seq = int(snapshot["seq"])
        engine._finished = bool(snapshot["finished"])
        engine.duplicates = int(snapshot.get("duplicates", 0))
        engine._last = {(str(d), str(p)): int(t) for d, p, t in snapshot["last"]}
        for t, seq, device, point, value in snapshot["buffer"]:
            if (device, point) in engine._by_source:
                entry = (
                    int(t),
                    int(seq),
                    str(device),
                    str(point),
                    None if value is None else float(value),
                )
                engine._buffer.append(entry)
                engine._buffered.add((device, point, int(t)))
        heapq.heapify(engine._buffer)
        for name, count in snapshot["late_dropped"].items():
            if name in engine.late_dropped:
                engine.late_dropped[name] = int(count)
        origin = snapshot["origin"]
        if origin is None:
            return engine
        engine._origin = int(origin)
        saved: Mapping[str, Any] = snapshot["kpis"] if same_zone else {}
        fresh_from = engine._watermark()
        for name, runner in engine._runners.items():
            kept = saved.get(name)
            if kept is not None and kept["config"] == _fingerprint(runner.kpi.config):
                runner.load(kept["state"])
            else:
                engine.discarded.append(name)
                runner.begin(fresh_from if fresh_from is not None else engine._origin)
        return engine
