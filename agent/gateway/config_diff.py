"""What a reload changes: the running config compared with a new one, without any I/O.

:func:`plan_reload` says, per device, bus and KPI, whether it keeps running untouched, is
restarted, stopped or started, whether the uplink reconnects, and which keys cannot change
while the agent runs (:data:`FIXED_KEYS`). The runtime (:mod:`agent.gateway.reload`) carries
the plan out.

A device restarts when its own table changed or when the ``[[buses]]`` table of its bus did;
a disabled device (``enabled = false``) counts as absent. A KPI restarts when its definition
changed, when the KPI it reads (``kpi:NAME``) restarts or starts, and all of them when
``gateway.timezone`` changes (their windows are local calendar windows).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config import AgentConfig, KpiConfig
from agent.driver import DeviceConfig

# Keys a running agent cannot take over: who it is and where its buffer lives (the store,
# its lock and the seq lineage hang on them), the store's bounds (the buffer is never touched
# by a reload), the metrics and status page listeners, and the log level (loggers are set up
# once at start).
# A change of any of them refuses the whole reload; a restart applies it.
FIXED_KEYS: tuple[str, ...] = (
    "gateway.id",
    "gateway.data_dir",
    "gateway.log_level",
    "buffer.max_bytes",
    "buffer.max_age",
    "buffer.when_full",
    "buffer.sync",
    "metrics.port",
    "metrics.address",
    "status_page.port",
    "status_page.address",
)

# [uplink] keys the batcher uses (it takes them over in place); any other [uplink] key
# reconnects the uplink.
BATCHING_KEYS: frozenset[str] = frozenset(
    {"batch_max_readings", "batch_max_age", "flush_interval", "compression", "zstd_level"}
)

# [gateway] keys of the live KPI engine: it is rebuilt from its own state (windows kept).
KPI_ENGINE_KEYS: frozenset[str] = frozenset(
    {"timezone", "kpi_lateness", "kpi_checkpoint_interval"}
)

_EXCERPT = 40


@dataclass(frozen=True)
class Changes:
    """What happens to one kind of thing (devices, buses, KPIs), by name, sorted."""

    kept: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()
    started: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.restarted or self.stopped or self.started)

    def as_dict(self) -> dict[str, list[str]]:
        """The non-empty lists, for a log line or a JSON report."""
        out = {"kept": self.kept, "restarted": self.restarted, "stopped": self.stopped,
               "started": self.started}
        return {key: list(names) for key, names in out.items() if names}


@dataclass(frozen=True)
class ReloadPlan:
    """:func:`plan_reload`'s answer. ``refused`` non-empty: nothing may be applied."""

    refused: tuple[str, ...] = ()
    devices: Changes = field(default_factory=Changes)
    buses: Changes = field(default_factory=Changes)
    kpis: Changes = field(default_factory=Changes)
    uplink_restart: bool = False
    batching_changed: bool = False
    kpi_engine_changed: bool = False  # timezone, lateness or checkpoint interval

    @property
    def changes_anything(self) -> bool:
        return (self.devices.changed or self.buses.changed or self.kpis.changed
                or self.uplink_restart or self.batching_changed or self.kpi_engine_changed)


def plan_reload(old: AgentConfig, new: AgentConfig) -> ReloadPlan:
    """Compare the running ``old`` config with ``new`` (both validated by the loader)."""
    refused = tuple(_fixed_key_problems(old, new))
    buses = _compare(_tables(old.buses), _tables(new.buses))
    changed_buses = set(buses.restarted) | set(buses.stopped)
    devices = _devices(old, new, changed_buses)
    kpis = _kpis(old, new)
    old_up = _dump(old.uplink) if old.uplink is not None else {}
    new_up = _dump(new.uplink) if new.uplink is not None else {}
    differing = {key for key in old_up.keys() | new_up.keys() if old_up.get(key) != new_up.get(key)}
    gateway_differing = _differing(_dump(old.gateway), _dump(new.gateway))
    return ReloadPlan(
        refused=refused,
        devices=devices,
        buses=buses,
        kpis=kpis,
        uplink_restart=bool(differing - BATCHING_KEYS),
        batching_changed=bool(differing & BATCHING_KEYS),
        kpi_engine_changed=bool(gateway_differing & KPI_ENGINE_KEYS),
    )


def _dump(model: Any) -> dict[str, Any]:
    """A table as comparable JSON values, with the model's type (a device's driver model)."""
    dumped: dict[str, Any] = model.model_dump(mode="json")
    dumped["__type__"] = f"{type(model).__module__}.{type(model).__qualname__}"
    return dumped


def _differing(old: Mapping[str, Any], new: Mapping[str, Any]) -> set[str]:
    return {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 1] + "…"


def _fixed_key_problems(old: AgentConfig, new: AgentConfig) -> list[str]:
    sections = {
        "gateway": (_dump(old.gateway), _dump(new.gateway)),
        "buffer": (_dump(old.buffer), _dump(new.buffer)),
        "metrics": (_dump(old.metrics), _dump(new.metrics)),
        "status_page": (_dump(old.status_page), _dump(new.status_page)),
    }
    problems = []
    for dotted in FIXED_KEYS:
        section, _, key = dotted.partition(".")
        before, after = sections[section]
        if before.get(key) != after.get(key):
            problems.append(
                f"{dotted}: cannot change while the agent runs ({_short(before.get(key))} → "
                f"{_short(after.get(key))}); restart the agent to apply it"
            )
    return problems


def _tables(items: Iterable[Any]) -> dict[str, dict[str, Any]]:
    return {item.name: _dump(item) for item in items}


def _compare(old: Mapping[str, Any], new: Mapping[str, Any],
             also_restart: Iterable[str] = ()) -> Changes:
    forced = set(also_restart)
    both = old.keys() & new.keys()
    restarted = {name for name in both if old[name] != new[name] or name in forced}
    return Changes(
        kept=tuple(sorted(both - restarted)),
        restarted=tuple(sorted(restarted)),
        stopped=tuple(sorted(old.keys() - new.keys())),
        started=tuple(sorted(new.keys() - old.keys())),
    )


def _running(config: AgentConfig) -> dict[str, DeviceConfig]:
    return {device.name: device for device in config.devices if device.enabled}


def _devices(old: AgentConfig, new: AgentConfig, changed_buses: set[str]) -> Changes:
    before, after = _running(old), _running(new)
    on_changed_bus = {name for name, device in before.items()
                      if getattr(device, "bus", None) in changed_buses}
    return _compare({name: _dump(d) for name, d in before.items()},
                    {name: _dump(d) for name, d in after.items()},
                    also_restart=on_changed_bus)


def _kpis(old: AgentConfig, new: AgentConfig) -> Changes:
    before = {kpi.name: _dump(kpi) for kpi in old.kpis}
    after = {kpi.name: _dump(kpi) for kpi in new.kpis}
    first = _compare(before, after)
    fresh = set(first.restarted) | set(first.started)
    if old.gateway.timezone != new.gateway.timezone:
        fresh |= set(first.kept)
    fresh |= _readers_of(new.kpis, fresh)
    return _compare(before, after, also_restart=fresh & set(first.kept))


def _readers_of(kpis: Iterable[KpiConfig], fresh: set[str]) -> set[str]:
    """The KPIs that read (through ``kpi:`` chains) one in ``fresh``: their open windows hold
    outputs of the old definition."""
    source_of = {kpi.name: kpi.source_kpi for kpi in kpis}
    out: set[str] = set()
    grew = True
    while grew:
        grew = False
        for name, source in source_of.items():
            if name not in out and source is not None and (source in fresh or source in out):
                out.add(name)
                grew = True
    return out
