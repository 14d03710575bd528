"""The agent's configuration, one module a job: ``models`` (the models, :mod:`agent.schema`),
``rules`` (what a value must be on its own), ``kpi`` (the rules of a ``[[kpis]]`` entry),
``messages`` (how a problem is worded with its place) and ``loader`` (TOML, profiles, every
problem at once).

Entry point: :func:`load_config` (a TOML file) or :func:`config_from_dict` (an already parsed
table). Both raise :class:`~agent.errors.ConfigError` whose ``problems`` hold one line per
problem, each naming where, e.g.::

    devices[2] (name=meter-1, driver=modbus) → points[4].type: must be one of u16, i16, …

Cross-references (a device's ``bus``, a KPI's ``source``, unique names) are checked by the
loader, not by :class:`AgentConfig` itself: build configs through the loader.
"""

from agent.config.kpi import OPERATORS, kpi_key_problems, kpi_value_problems
from agent.config.loader import config_from_dict, load_config
from agent.config.models import (
    AgentConfig,
    BufferConfig,
    BusConfig,
    GatewayConfig,
    KpiConfig,
    UplinkConfig,
)
from agent.config.rules import BATCH_MAX_READINGS_LIMIT, WIRE_MAX_READINGS, WIRE_MAX_SERIES
from agent.units import KpiDuration, is_day_aligned, nests_in, parse_clock, parse_kpi_duration

__all__ = [
    "BATCH_MAX_READINGS_LIMIT",
    "OPERATORS",
    "WIRE_MAX_READINGS",
    "WIRE_MAX_SERIES",
    "AgentConfig",
    "BufferConfig",
    "BusConfig",
    "GatewayConfig",
    "KpiConfig",
    "KpiDuration",
    "UplinkConfig",
    "config_from_dict",
    "is_day_aligned",
    "kpi_key_problems",
    "kpi_value_problems",
    "load_config",
    "nests_in",
    "parse_clock",
    "parse_kpi_duration",
]
