"""The rules a config value must follow on its own: the annotated field types the models use,
the limits they check against, and the uplink file checks (which never echo a file's content).

Rules that need several sections or tables at once run in the loader (:mod:`agent.config.loader`);
a KPI's rules are applied in :mod:`agent.config.kpi`, its operator's own taken from
:data:`agent.kpi.registry.REGISTRY`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from agent.endpoints import printable_problem
from agent.password_file import PasswordFileProblem, read_password_file
from agent.schema import AfterValidator, BeforeValidator, Field, ValidationInfo
from agent.unit_fields import KpiLengthField
from agent.units import (
    Duration,
    KpiLength,
    is_day_aligned,
    parse_clock,
)

# Half the wire format's readings per batch (agent.wire.MAX_BATCH_READINGS, not imported: it
# would load msgpack and zstd for `validate`): a batch is sealed at the flush after it fills
# up, so it may hold up to one flush interval's readings more.
BATCH_MAX_READINGS_LIMIT = 100_000
# The wire format's limits per batch (agent.wire.MAX_BATCH_READINGS / MAX_BATCH_SERIES): a
# config whose batches could exceed them is refused, as every receiver would refuse them.
WIRE_MAX_READINGS = 2 * BATCH_MAX_READINGS_LIMIT
WIRE_MAX_SERIES = 50_000
# Points of a device whose driver does not list them in its config (counted generously).
UNLISTED_POINTS = 64

# A device's poll interval: a scheduler slot every 100 ms at most, and at least once a day (a
# longer interval is a typo, and its first poll would lie far in the future).
DEVICE_INTERVAL_BOUNDS = (Duration.parse("100 ms"), Duration.parse("1 d"))
# Units travel with every series and every KPI output: short names ("kWh", "µg/m³").
MAX_UNIT_CHARS = 32


# --------------------------------------------------------------------------------------------
# Annotated field types


def _string_of(what: str, example: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"write {what} as a string, e.g. {example}")  # noqa: TRY004
        return value

    return check


def seconds_between(low: float, high: float, words: str) -> AfterValidator:
    """A duration key whose range is worded as one sentence after the value (``words``)."""

    def check(value: Duration) -> Duration:
        if not low <= value.seconds <= high:
            raise ValueError(f"{value.text!r}: {words}")
        return value

    return AfterValidator(check)


def _printable(value: str | None) -> str | None:
    if value is not None:
        problem = printable_problem(value)
        if problem is not None:
            raise ValueError(problem)
    return value


def _kpi_window(value: KpiLength) -> KpiLength:
    if not is_day_aligned(value.duration):
        raise ValueError(
            f"{value.text!r} does not divide 24 h: windows must tile the day "
            "(e.g. '5 min', '15 min', '1 h')"
        )
    return value


# A sample period or hold longer than a month is a typo; unbounded, its milliseconds would
# overflow the 64-bit integers of the KPI journal and the wire format.
MAX_KPI_PERIOD_SECONDS = 31 * 86400


def _kpi_period(value: KpiLength) -> KpiLength:
    duration = value.duration
    if duration.is_calendar:
        raise ValueError(f"{value.text!r}: use s, min or h here (e.g. '24 h' instead of '1 d')")
    if duration.seconds > MAX_KPI_PERIOD_SECONDS:
        raise ValueError(f"{value.text!r} is too long: at most 744 h (31 days)")
    return value


def _clock(value: str) -> str:
    parse_clock(value)
    return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = info.context.get("base_dir") if isinstance(info.context, dict) else None
    if not value.is_absolute() and isinstance(base, Path):
        return base / value
    return value


def _non_empty_path(value: object) -> object:
    if value == "":
        raise ValueError("must not be empty: write a path")
    if isinstance(value, str) and "\0" in value:
        raise ValueError("a path cannot hold the NUL character (\\u0000)")
    return value


KpiWindow = Annotated[KpiLengthField, AfterValidator(_kpi_window)]
KpiPeriod = Annotated[KpiLengthField, AfterValidator(_kpi_period)]
ClockTime = Annotated[
    str, BeforeValidator(_string_of("a time of day", "'07:00'")), AfterValidator(_clock)
]
ConfigPath = Annotated[
    Path, BeforeValidator(_non_empty_path), AfterValidator(_resolve_path)
]
Coverage = Annotated[float, Field(ge=0.0, le=1.0)]
Unit = Annotated[str, Field(max_length=MAX_UNIT_CHARS)]

NAME_PATTERN = r"^[A-Za-z0-9_-]+$"


def known_zone(value: str) -> str:
    """``value`` when it names an IANA time zone (a gateway's, a city's); ValueError says how
    to write one."""
    try:
        ZoneInfo(value)
    except (ValueError, KeyError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ValueError(
            f"{value!r} is not an IANA time zone name: write e.g. 'Europe/Berlin' or 'UTC'"
        ) from exc
    return value

_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def _file_problems(raw: Mapping[str, Any], base_dir: Path | None) -> list[tuple[str, str]]:
    """Uplink files that are missing or unreadable; never puts a file's content in a message."""
    problems: list[tuple[str, str]] = []
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        value = raw.get(key)
        if not isinstance(value, str) or not value or "\0" in value:
            continue  # absent, or an error that validation reports
        path = Path(value)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.exists():
            where = "a relative path starts at the config file's folder"
            problems.append((key, f"file {path} does not exist ({where})"))
            continue
        if not path.is_file():
            problems.append((key, f"{path} is not a file"))
            continue
        try:
            if key == "password_file":
                read_password_file(path)  # the rule the uplink and the receiver follow
            else:
                path.read_bytes()
        except PasswordFileProblem as problem:
            problems.append((key, str(problem)))
        except OSError as exc:
            problems.append((key, f"file {path} cannot be read: {exc.strerror}"))
    return problems


def _cycle_from(start: object, graph: Mapping[str, str]) -> list[str]:
    """The cycle that ``start`` lies on in the graph of kpi: sources, or []."""
    if not isinstance(start, str):
        return []
    path = [start]
    node = graph.get(start)
    while node is not None and node not in path:
        path.append(node)
        node = graph.get(node)
    return path if node == start else []
