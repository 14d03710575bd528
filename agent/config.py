"""The agent's configuration: pydantic models, KPI duration rules, and a loader that reports
every problem at once.

Entry point: :func:`load_config` (a TOML file) or :func:`config_from_dict` (an already parsed
table). Both raise :class:`~agent.errors.ConfigError` whose ``problems`` hold one line per
problem, each naming where, e.g.::

    devices[2] (name=meter-1, driver=modbus) → points[4].type: must be one of u16, i16, …

Cross-references (a device's ``bus``, a KPI's ``source``, unique names) are checked by the
loader, not by :class:`AgentConfig` itself: build configs through the loader.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from agent.driver import DeviceConfig, discover
from agent.endpoints import BrokerAddress, parse_broker_url, printable_problem, topic_prefix_problem
from agent.errors import ConfigError, excerpt
from agent.profiles import Profile, apply_profile, load_profile
from agent.units import duration_within, parse_duration, parse_size

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

__all__ = [
    "OPERATORS",
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

SECTIONS = ("gateway", "uplink", "buffer", "metrics", "buses", "devices", "kpis")
# A device's poll interval: a scheduler slot every 100 ms at most, and at least once a day (a
# longer interval is a typo, and its first poll would lie far in the future).
DEVICE_INTERVAL_RANGE = ("100 ms", "1 d")
# Units travel with every series and every KPI output: short names ("kWh", "µg/m³").
MAX_UNIT_CHARS = 32
# Keys whose values must never be echoed in an error line.
_SECRET_WORDS = ("password", "secret", "key", "token")
# The loader passes this in the validation context: it reports KPI rule problems itself,
# located per key, instead of as one model-level line.
_DEFER_KPI_RULES = "defer_kpi_rules"


# --------------------------------------------------------------------------------------------
# KPI durations (pure; the KPI engine reuses them)

_KPI_UNITS: dict[str, int] = {"s": 1, "min": 60, "h": 3600}
_CALENDAR_UNITS = ("d", "mo", "y")
# Shortest length of a calendar unit, ignoring DST: for "is X longer than a window" checks.
_CALENDAR_NOMINAL = {"d": 86400, "mo": 28 * 86400, "y": 365 * 86400}
_KPI_DURATION = re.compile(r"^\s*(\d+)\s*([a-z]+)\s*$")
_DAY = 86400


@dataclass(frozen=True, slots=True)
class KpiDuration:
    """A KPI length ``count`` × ``unit``: s, min, h are fixed; d, mo, y follow the calendar."""

    count: int
    unit: str

    @property
    def is_calendar(self) -> bool:
        """True for ``1 d``, ``1 mo``, ``1 y``: their real length follows the calendar."""
        return self.unit in _CALENDAR_UNITS

    @property
    def seconds(self) -> int:
        """The fixed length in seconds; calendar durations have none (ValueError)."""
        if self.is_calendar:
            raise ValueError(f"{self} is a calendar length: it has no fixed number of seconds")
        return self.count * _KPI_UNITS[self.unit]

    @property
    def nominal_seconds(self) -> int:
        """Fixed length, or the shortest calendar length ignoring DST (1 d = 24 h, 1 mo = 28 d)."""
        if self.is_calendar:
            return _CALENDAR_NOMINAL[self.unit]
        return self.seconds

    def __str__(self) -> str:
        return f"{self.count} {self.unit}"


def parse_kpi_duration(text: str) -> KpiDuration:
    """Parse ``"<int> <unit>"`` (units s, min, h, d, mo, y; d/mo/y only with 1)."""
    match = _KPI_DURATION.match(text)
    units = ", ".join([*_KPI_UNITS, *_CALENDAR_UNITS])
    if match is None or match.group(2) not in (*_KPI_UNITS, *_CALENDAR_UNITS):
        raise ValueError(
            f"{text!r} is not a KPI duration: write '<whole number> <unit>' ({units}), "
            "e.g. '15 min'"
        )
    count, unit = int(match.group(1)), match.group(2)
    if count <= 0:
        raise ValueError(f"{text!r}: a duration must be greater than zero")
    if unit in _CALENDAR_UNITS and count != 1:
        raise ValueError(f"{text!r}: d, mo and y take only a count of 1 ('1 {unit}')")
    return KpiDuration(count, unit)


def is_day_aligned(duration: KpiDuration) -> bool:
    """True if windows of this length tile a local day: calendar, or fixed and dividing 24 h."""
    return duration.is_calendar or _DAY % duration.seconds == 0


_CALENDAR_RANK = {"d": 0, "mo": 1, "y": 2}


def nests_in(inner: KpiDuration, outer: KpiDuration) -> bool:
    """True if every boundary of ``outer`` windows is a boundary of ``inner`` windows."""
    if not inner.is_calendar:
        if not is_day_aligned(inner):
            return False
        return outer.is_calendar or outer.seconds % inner.seconds == 0
    if not outer.is_calendar:
        return False
    return _CALENDAR_RANK[inner.unit] <= _CALENDAR_RANK[outer.unit]


_CLOCK = re.compile(r"^(\d{2}):(\d{2})$")


def parse_clock(text: str) -> time:
    """Parse a local wall time ``"HH:MM"`` (00:00 … 23:59)."""
    match = _CLOCK.match(text)
    if match is None or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ValueError(f"{text!r} is not a time of day: write 'HH:MM', e.g. '07:00'")
    return time(int(match.group(1)), int(match.group(2)))


# --------------------------------------------------------------------------------------------
# Annotated field types


def _string_of(what: str, example: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"write {what} as a string, e.g. {example}")  # noqa: TRY004
        return value

    return check


def _duration(value: str) -> str:
    parse_duration(value)
    return value


def _size(value: str) -> str:
    parse_size(value)
    return value


def _within(low: str, high: str, why: str = "") -> AfterValidator:
    """A duration key's range: outside it the agent cannot do what the key asks."""

    def check(value: str) -> str:
        duration_within(value, low, high, why)
        return value

    return AfterValidator(check)


def _printable(value: str | None) -> str | None:
    if value is not None:
        problem = printable_problem(value)
        if problem is not None:
            raise ValueError(problem)
    return value


def _kpi_window(value: str) -> str:
    duration = parse_kpi_duration(value)
    if not is_day_aligned(duration):
        raise ValueError(
            f"{value!r} does not divide 24 h: windows must tile the day "
            "(e.g. '5 min', '15 min', '1 h')"
        )
    return value


# A sample period or hold longer than a month is a typo; unbounded, its milliseconds would
# overflow the 64-bit integers of the KPI journal and the wire format.
MAX_KPI_PERIOD_SECONDS = 31 * 86400


def _kpi_period(value: str) -> str:
    duration = parse_kpi_duration(value)
    if duration.is_calendar:
        raise ValueError(f"{value!r}: use s, min or h here (e.g. '24 h' instead of '1 d')")
    if duration.seconds > MAX_KPI_PERIOD_SECONDS:
        raise ValueError(f"{value!r} is too long: at most 744 h (31 days)")
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


_AS_DURATION = BeforeValidator(_string_of("a duration", "'15 s'"))
Duration = Annotated[str, _AS_DURATION, AfterValidator(_duration)]
Size = Annotated[str, BeforeValidator(_string_of("a size", "'256 MiB'")), AfterValidator(_size)]
KpiWindow = Annotated[str, _AS_DURATION, AfterValidator(_kpi_window)]
KpiPeriod = Annotated[str, _AS_DURATION, AfterValidator(_kpi_period)]
ClockTime = Annotated[
    str, BeforeValidator(_string_of("a time of day", "'07:00'")), AfterValidator(_clock)
]
ConfigPath = Annotated[
    Path, BeforeValidator(_non_empty_path), Field(strict=False), AfterValidator(_resolve_path)
]
Coverage = Annotated[float, Field(ge=0.0, le=1.0)]
Unit = Annotated[str, Field(max_length=MAX_UNIT_CHARS)]

NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
_M = TypeVar("_M", bound=BaseModel)
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# --------------------------------------------------------------------------------------------
# Sections


class GatewayConfig(_Section):
    """``[gateway]``: who this gateway is and where it keeps its data."""

    id: str = Field(pattern=NAME_PATTERN, max_length=64)
    timezone: str = "UTC"
    data_dir: ConfigPath = Path("/var/lib/ssc-agent")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_timeout: Annotated[
        Duration, _within("1 s", "10 min", "time to seal and send the open batch on SIGTERM")
    ] = "10 s"
    # A reading may reach the KPI engine this much after a later one (slow polls, several
    # devices) and still count in its window; later ones are counted and reported.
    kpi_lateness: Annotated[
        Duration, _within("1 s", "1 h", "open KPI windows are held in memory this long")
    ] = "1 min"
    # Open KPI windows saved at least this often.
    kpi_checkpoint_interval: Annotated[
        Duration, _within("1 s", "1 h", "a restart replays the journal since the last save")
    ] = "1 min"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, KeyError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(
                f"{value!r} is not an IANA time zone name: write e.g. 'Europe/Berlin' or 'UTC'"
            ) from exc
        return value

    @property
    def tz(self) -> ZoneInfo:
        """The site's time zone; KPI windows follow it."""
        return ZoneInfo(self.timezone)


class UplinkConfig(_Section):
    """``[uplink]``: the MQTT broker and how batches are sent to it."""

    broker: str
    topic_prefix: str = "ssc/v1"
    client_id: Annotated[
        str | None, Field(default=None, min_length=1, max_length=128), AfterValidator(_printable)
    ] = None
    username: Annotated[
        str | None, Field(default=None, min_length=1, max_length=256), AfterValidator(_printable)
    ] = None
    password_file: ConfigPath | None = None
    ca_file: ConfigPath | None = None
    cert_file: ConfigPath | None = None
    key_file: ConfigPath | None = Field(default=None, validate_default=True)
    keepalive: Duration = "30 s"
    publish_timeout: Annotated[
        Duration,
        _within("1 s", "10 min", "the broker's PUBACK comes a round trip after the whole batch"),
    ] = "20 s"
    batch_max_readings: int = Field(default=20000, ge=1, le=BATCH_MAX_READINGS_LIMIT)
    batch_max_age: Annotated[Duration, _within("10 ms", "1 d")] = "10 s"
    flush_interval: Annotated[
        Duration,
        _within("10 ms", "1 min", "each flush is a commit; a power cut loses up to one interval"),
    ] = Field(default="1 s", validate_default=True)
    max_inflight: int = Field(default=8, ge=1, le=100)
    # Below one batch per 10 s a backlog of a day's batches takes weeks to drain.
    replay_rate_per_second: float = Field(default=50.0, ge=0.1)
    replay_order: Literal["live_first", "fifo"] = "live_first"
    reconnect_min: Duration = "500 ms"
    reconnect_max: Duration = Field(default="5 s", validate_default=True)
    compression: Literal["zstd", "none"] = "zstd"
    zstd_level: int = Field(default=3, ge=1, le=19)

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        # parse_broker_url quotes the URL in some messages: refuse credentials before that.
        try:
            has_credentials = "@" in urlsplit(value).netloc
        except ValueError:
            has_credentials = False
        if has_credentials:
            raise ValueError("put no credentials in the broker URL: use username and password_file")
        parse_broker_url(value)
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        problem = topic_prefix_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("password_file")
    @classmethod
    def _password_needs_username(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # "username" absent from info.data means it failed validation: reported there.
        if value is not None and "username" in info.data and info.data["username"] is None:
            raise ValueError('needs username too: set username = "…" or remove password_file')
        return value

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _tls_needs_mqtts(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        broker = info.data.get("broker")
        if value is not None and isinstance(broker, str) and not parse_broker_url(broker).tls:
            raise ValueError("needs TLS: use an mqtts:// broker URL, or remove it")
        return value

    @field_validator("key_file")
    @classmethod
    def _cert_and_key_together(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "cert_file" not in info.data:
            return value
        if info.data["cert_file"] is not None and value is None:
            raise ValueError("required with cert_file: a client certificate needs its key file")
        if info.data["cert_file"] is None and value is not None:
            raise ValueError("needs cert_file too: set both cert_file and key_file, or neither")
        return value

    @field_validator("keepalive")
    @classmethod
    def _keepalive_range(cls, value: str) -> str:
        if not 1 <= parse_duration(value) <= 65535:
            raise ValueError(f"{value!r}: MQTT keepalive must be between 1 s and 65535 s")
        return value

    @field_validator("flush_interval")
    @classmethod
    def _flush_within_batch_age(cls, value: str, info: ValidationInfo) -> str:
        age = info.data.get("batch_max_age")
        if isinstance(age, str) and parse_duration(value) > parse_duration(age):
            raise ValueError(f"{value!r} is longer than batch_max_age ({age!r}): make it shorter")
        return value

    @field_validator("reconnect_min")
    @classmethod
    def _reconnect_min_range(cls, value: str) -> str:
        if not 0.1 <= parse_duration(value) <= 3600:
            raise ValueError(f"{value!r}: must be between 100 ms and 1 h (e.g. '500 ms')")
        return value

    @field_validator("reconnect_max")
    @classmethod
    def _reconnect_max_range(cls, value: str, info: ValidationInfo) -> str:
        seconds = parse_duration(value)
        if not 0.1 <= seconds <= 3600:
            raise ValueError(f"{value!r}: must be between 100 ms and 1 h (e.g. '5 s')")
        low = info.data.get("reconnect_min")
        if isinstance(low, str) and seconds < parse_duration(low):
            raise ValueError(f"{value!r} is shorter than reconnect_min ({low!r}): make it longer")
        return value

    @property
    def broker_address(self) -> BrokerAddress:
        """Host, port and TLS flag of the broker."""
        return parse_broker_url(self.broker)

    @property
    def keepalive_seconds(self) -> float:
        return parse_duration(self.keepalive)

    @property
    def publish_timeout_seconds(self) -> float:
        return parse_duration(self.publish_timeout)

    @property
    def batch_max_age_seconds(self) -> float:
        return parse_duration(self.batch_max_age)

    @property
    def flush_interval_seconds(self) -> float:
        return parse_duration(self.flush_interval)

    def read_password(self) -> str | None:
        """The password from ``password_file`` (first line, newline stripped), or None."""
        if self.password_file is None:
            return None
        text = self.password_file.read_text(encoding="utf-8")
        return text.splitlines()[0] if text else ""


class BufferConfig(_Section):
    """``[buffer]``: bounds of the store-and-forward buffer."""

    max_bytes: Size = "256 MiB"
    # At least a minute: batches wait for a batch_max_age before they can be sent at all.
    max_age: Annotated[Duration, _within("1 min", "3650 d")] = "30 d"
    when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    # "full" fsyncs each commit (once per flush_interval): a power cut loses at most that
    # interval, as the delivery contract says. "normal" survives a crash of the agent but a
    # power cut may take back commits since the last WAL checkpoint.
    sync: Literal["normal", "full"] = "full"

    @property
    def max_size_bytes(self) -> int:
        """``max_bytes`` parsed, in bytes."""
        return parse_size(self.max_bytes)

    @property
    def max_age_seconds(self) -> float:
        return parse_duration(self.max_age)


class MetricsConfig(_Section):
    """``[metrics]``: Prometheus ``/metrics`` over HTTP, off unless ``port`` is set."""

    port: int | None = Field(default=None, ge=1, le=65535)
    address: str = "127.0.0.1"  # loopback: scrape through an SSH tunnel or a local agent

    @field_validator("address")
    @classmethod
    def _address_form(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOSTNAME.fullmatch(value):
                raise ValueError(
                    f"{value!r} is not an address to listen on: write an IP address, e.g. "
                    "'127.0.0.1', '::1' or '0.0.0.0', or a host name"
                ) from None
        return value


class BusConfig(_Section):
    """``[[buses]]``: one serial line shared by the devices that name it."""

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    port: Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_printable)]
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout: Annotated[
        Duration, _within("10 ms", "1 min", "an RTU answer takes milliseconds on the wire")
    ] = "1 s"
    inter_frame_ms: float = Field(default=5.0, ge=0, le=1000)

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout)

    @property
    def inter_frame_seconds(self) -> float:
        return self.inter_frame_ms / 1000.0


# --------------------------------------------------------------------------------------------
# KPIs

Operator = Literal[
    "mean",
    "min",
    "max",
    "sum",
    "count",
    "percentile",
    "energetic_mean",
    "time_weighted_mean",
    "counter_delta",
    "demand",
    "exceedance_count",
    "running_mean",
    "daily_max_running_mean",
    "aqi_us_pm25",
    "min_night_flow",
    "lden",
]
OPERATORS: tuple[str, ...] = get_args(Operator)


@dataclass(frozen=True)
class _OperatorRule:
    keys: frozenset[str] = frozenset()  # operator-specific keys it takes
    required: frozenset[str] = frozenset()
    # "device": required with a device source (a kpi: source never takes a base)
    base: Literal["no", "optional", "required", "device"] = "optional"
    kpi_source: Literal["no", "allowed", "only"] = "allowed"
    takes_min_coverage: bool = True


_COUNTER_KEYS = frozenset({"modulus", "max_delta"})
_RULES: dict[str, _OperatorRule] = {
    "mean": _OperatorRule(),
    "min": _OperatorRule(),
    "max": _OperatorRule(),
    "sum": _OperatorRule(),
    "count": _OperatorRule(base="no", takes_min_coverage=False),
    "percentile": _OperatorRule(keys=frozenset({"q"}), required=frozenset({"q"})),
    "energetic_mean": _OperatorRule(),
    "time_weighted_mean": _OperatorRule(keys=frozenset({"max_hold"}), base="no", kpi_source="no"),
    "counter_delta": _OperatorRule(keys=_COUNTER_KEYS, base="no", kpi_source="no"),
    "demand": _OperatorRule(keys=_COUNTER_KEYS, base="required", kpi_source="no"),
    "exceedance_count": _OperatorRule(
        keys=frozenset({"threshold"}),
        required=frozenset({"threshold"}),
        base="no",
        kpi_source="only",
    ),
    "running_mean": _OperatorRule(base="required", kpi_source="no"),
    "daily_max_running_mean": _OperatorRule(
        keys=frozenset({"running_window", "running_min_coverage"}),
        required=frozenset({"running_window"}),
        base="required",
        kpi_source="no",
    ),
    "aqi_us_pm25": _OperatorRule(keys=frozenset({"averaging"}), base="required", kpi_source="no"),
    "min_night_flow": _OperatorRule(keys=frozenset({"night_start", "night_end"}), base="device"),
    "lden": _OperatorRule(keys=frozenset({"day_start", "evening_start", "night_start"})),
}
# A percentile without a base keeps every value of its window (nearest rank needs them all):
# a day of 1-s samples (86,400) is fine; a year of 1-min samples (525,600: ~5 MB in memory and
# in each checkpoint, every minute) is not, on a gateway with an SD card.
MAX_PERCENTILE_VALUES = 200_000
_OPERATOR_KEYS = frozenset().union(*(rule.keys for rule in _RULES.values()))
_KPI_NAME = re.compile(r"^[a-z0-9_]+$")


def _source_kind(source: object) -> Literal["kpi", "device"] | None:
    if not isinstance(source, str):
        return None
    if source.startswith("kpi:"):
        return "kpi" if _KPI_NAME.match(source[4:]) else None
    device, dot, point = source.partition(".")
    return "device" if dot and device and point else None


class KpiConfig(_Section):
    """``[[kpis]]``: one KPI (docs/kpis.md §2); per-operator key rules: :func:`kpi_key_problems`."""

    name: str = Field(pattern=r"^[a-z0-9_]+$", max_length=64)
    source: str
    operator: Operator
    window: KpiWindow
    base: KpiWindow | None = None
    sample_interval: KpiPeriod | None = None
    min_coverage: Coverage = 0.75
    base_min_coverage: Coverage = 0.75
    scale: float = 1.0
    unit: Unit | None = None
    threshold: float | None = None
    q: float | None = Field(default=None, gt=0, le=100)
    max_hold: KpiPeriod | None = None
    modulus: float | None = Field(default=None, gt=0)
    max_delta: float | None = Field(default=None, gt=0)
    running_window: KpiWindow | None = None
    running_min_coverage: Coverage = 0.75
    averaging: Literal["nowcast", "daily"] = "nowcast"
    night_start: ClockTime | None = None
    night_end: ClockTime | None = None
    day_start: ClockTime | None = None
    evening_start: ClockTime | None = None

    @field_validator("scale")
    @classmethod
    def _scale_not_zero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("must not be 0: every input would become 0")
        return value

    @field_validator("source")
    @classmethod
    def _source_form(cls, value: str) -> str:
        if _source_kind(value) is None:
            raise ValueError(
                f"{value!r} is not a source: write 'device.point' (e.g. 'meter-1.energy_import') "
                "or 'kpi:NAME'"
            )
        return value

    @model_validator(mode="after")
    def _operator_rules(self, info: ValidationInfo) -> KpiConfig:
        if isinstance(info.context, dict) and info.context.get(_DEFER_KPI_RULES):
            return self
        problems = kpi_key_problems(self.operator, self.source, self.model_fields_set)
        problems += kpi_value_problems(self)
        if problems:
            raise ValueError("; ".join(f"{key}: {message}" for key, message in problems))
        return self

    @property
    def window_duration(self) -> KpiDuration:
        return parse_kpi_duration(self.window)

    @property
    def base_duration(self) -> KpiDuration | None:
        return None if self.base is None else parse_kpi_duration(self.base)

    @property
    def sample_interval_duration(self) -> KpiDuration | None:
        return None if self.sample_interval is None else parse_kpi_duration(self.sample_interval)

    @property
    def max_hold_seconds(self) -> float | None:
        """``max_hold``, by default 2 × ``sample_interval`` (``time_weighted_mean``)."""
        if self.max_hold is not None:
            return float(parse_kpi_duration(self.max_hold).seconds)
        interval = self.sample_interval_duration
        return None if interval is None else 2.0 * interval.seconds

    @property
    def running_window_duration(self) -> KpiDuration | None:
        return None if self.running_window is None else parse_kpi_duration(self.running_window)

    @property
    def source_kpi(self) -> str | None:
        """NAME of a ``kpi:NAME`` source, else None."""
        return self.source[4:] if self.source.startswith("kpi:") else None

    @property
    def source_device(self) -> tuple[str, str] | None:
        """(device, point) of a device source, else None."""
        if self.source_kpi is not None:
            return None
        device, _, point = self.source.partition(".")
        return device, point

    @property
    def is_sliding(self) -> bool:
        """Sliding operators emit one output per base window (docs/kpis.md §4)."""
        return self.operator == "running_mean" or (
            self.operator == "aqi_us_pm25" and self.averaging == "nowcast"
        )

    @property
    def step_duration(self) -> KpiDuration:
        """The window an output steps by: its base for sliding operators, else its window."""
        base = self.base_duration
        return base if self.is_sliding and base is not None else self.window_duration

    def clock(self, key: Literal["night_start", "night_end", "day_start", "evening_start"]) -> time:
        """A wall-time key with its per-operator default (docs/kpis.md §2)."""
        value: str | None = getattr(self, key)
        if value is None:
            defaults = _LDEN_CLOCK if self.operator == "lden" else _NIGHT_FLOW_CLOCK
            value = defaults[key]
        return parse_clock(value)


_NIGHT_FLOW_CLOCK = {
    "night_start": "02:00",
    "night_end": "04:00",
    "day_start": "07:00",
    "evening_start": "19:00",
}
_LDEN_CLOCK = {**_NIGHT_FLOW_CLOCK, "night_start": "23:00"}


def _field_order(key: str) -> int:
    names = list(KpiConfig.model_fields)
    return names.index(key) if key in names else len(names)


def kpi_key_problems(
    operator: str, source: object, given: Collection[str]
) -> list[tuple[str, str]]:
    """(key, message) for keys ``operator`` does not take or needs, given the keys set."""
    rule = _RULES.get(operator)
    if rule is None:
        return []  # the operator itself is reported by field validation
    kind = _source_kind(source)
    problems: list[tuple[str, str]] = []
    for key in sorted(_OPERATOR_KEYS & set(given) - rule.keys):
        problems.append((key, f"operator {operator} does not take {key}; remove it"))
    if "min_coverage" in given and not rule.takes_min_coverage:
        message = f"operator {operator} is always valid and takes no min_coverage; remove it"
        problems.append(("min_coverage", message))
    for key in sorted(rule.required - set(given)):
        problems.append((key, f"required for operator {operator}"))
    if rule.base == "no":
        for key in ("base", "base_min_coverage"):
            if key in given:
                problems.append((key, f"operator {operator} takes no {key}; remove it"))
    elif kind == "kpi":
        for key in ("base", "base_min_coverage"):
            if key in given:
                message = f"a kpi: source takes no {key}: its items are the source KPI's outputs"
                problems.append((key, message))
    elif "base" not in given:
        if rule.base == "required" or (rule.base == "device" and kind == "device"):
            problems.append(("base", f'required for operator {operator}, e.g. base = "1 h"'))
        elif "base_min_coverage" in given:
            message = "takes effect only with base: set base or remove it"
            problems.append(("base_min_coverage", message))
    if kind == "kpi" and rule.kpi_source == "no":
        message = f"operator {operator} needs a device source ('device.point'), not kpi:"
        problems.append(("source", message))
    if kind == "device" and rule.kpi_source == "only":
        message = f'operator {operator} counts another KPI\'s outputs: write source = "kpi:NAME"'
        problems.append(("source", message))
    if kind == "kpi" and "sample_interval" in given:
        message = "a kpi: source takes no sample_interval: the source KPI sets the step"
        problems.append(("sample_interval", message))
    if kind == "device" and rule.kpi_source != "only" and "sample_interval" not in given:
        message = 'required for a device source: the expected reading period, e.g. "1 min"'
        problems.append(("sample_interval", message))
    problems.sort(key=lambda item: _field_order(item[0]))
    return problems


def kpi_value_problems(kpi: KpiConfig) -> list[tuple[str, str]]:
    """(key, message) for lengths and times that do not fit together (nesting, operator windows)."""
    problems: list[tuple[str, str]] = []
    window = kpi.window_duration
    base = kpi.base_duration
    op = kpi.operator

    def need_window(*allowed: str) -> None:
        if str(window) not in allowed:
            choices = " or ".join(repr(a) for a in allowed)
            problems.append(("window", f"operator {op} needs window {choices}"))

    def need_fixed(key: str, duration: KpiDuration | None) -> None:
        if duration is not None and duration.is_calendar:
            problems.append((key, f"operator {op} needs a fixed length here (s, min or h)"))

    if base is not None and not nests_in(base, window):
        message = f"{base} does not nest in window {window}: a window must hold whole bases"
        problems.append(("base", message))
    interval = kpi.sample_interval_duration
    finest, level = (base, "base") if base is not None else (window, "window")
    if interval is not None and interval.nominal_seconds > finest.nominal_seconds:
        problems.append(("sample_interval", f"{interval} is longer than the {level} ({finest})"))
    if op == "percentile" and base is None and interval is not None:
        kept = window.nominal_seconds // max(1, interval.nominal_seconds)
        if kept > MAX_PERCENTILE_VALUES:
            problems.append(("window", (
                f"a percentile keeps every value of its window: {window} at {interval} is "
                f"{kept:,} values (at most {MAX_PERCENTILE_VALUES:,}), held in memory and "
                "written with every KPI checkpoint; take a shorter window, or set base to take "
                "the percentile of the base aggregates (e.g. of daily means) instead")))

    if op == "running_mean":
        need_fixed("window", window)
        need_fixed("base", base)
    elif op == "daily_max_running_mean":
        need_window("1 d")
        need_fixed("base", base)
        running = kpi.running_window_duration
        need_fixed("running_window", running)
        if running is not None and base is not None and not nests_in(base, running):
            problems.append(("running_window", f"{running} does not hold whole bases ({base})"))
    elif op == "aqi_us_pm25":
        need_window("12 h" if kpi.averaging == "nowcast" else "1 d")
        if base is not None and str(base) != "1 h":
            problems.append(("base", 'operator aqi_us_pm25 works on hourly means: base = "1 h"'))
    elif op == "min_night_flow":
        need_window("1 d")
        need_fixed("base", base)
        if kpi.clock("night_start") == kpi.clock("night_end"):
            problems.append(("night_end", "must differ from night_start"))
    elif op == "lden":
        need_window("1 d", "1 mo", "1 y")
        need_fixed("base", base)
        day, evening = kpi.clock("day_start"), kpi.clock("evening_start")
        night = kpi.clock("night_start")
        if not day < evening < night:
            message = (
                "need day_start < evening_start < night_start, "
                f"got {day:%H:%M}, {evening:%H:%M}, {night:%H:%M}"
            )
            problems.append(("evening_start", message))
    elif op == "demand":
        need_fixed("base", base)
    return problems


# --------------------------------------------------------------------------------------------
# The whole config


class AgentConfig(_Section):
    """The validated configuration file. Build it with :func:`load_config`."""

    gateway: GatewayConfig
    uplink: UplinkConfig | None = None
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    buses: list[BusConfig] = Field(default_factory=list)
    devices: list[SerializeAsAny[DeviceConfig]] = Field(default_factory=list)
    kpis: list[KpiConfig] = Field(default_factory=list)
    source_path: Annotated[Path, Field(strict=False)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _client_id_defaults_to_gateway(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        gateway, uplink = data.get("gateway"), data.get("uplink")
        gateway_id = gateway.id if isinstance(gateway, GatewayConfig) else None
        if isinstance(gateway, dict) and isinstance(gateway.get("id"), str):
            gateway_id = gateway["id"]
        if gateway_id is None:
            return data
        if isinstance(uplink, UplinkConfig) and uplink.client_id is None:
            return {**data, "uplink": uplink.model_copy(update={"client_id": gateway_id})}
        if isinstance(uplink, dict) and "client_id" not in uplink:
            return {**data, "uplink": {**uplink, "client_id": gateway_id}}
        return data

    @property
    def devices_by_name(self) -> dict[str, DeviceConfig]:
        return {device.name: device for device in self.devices}

    @property
    def buses_by_name(self) -> dict[str, BusConfig]:
        return {bus.name: bus for bus in self.buses}


# --------------------------------------------------------------------------------------------
# Error lines

_Loc = tuple[str | int, ...]


def _render_loc(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


_PATTERN_WORDS = {
    r"^[A-Za-z0-9_-]+$": "use only letters, digits, '_' and '-' (at least one)",
    r"^[A-Za-z0-9_]+$": "use only letters, digits and '_' (at least one)",
    r"^[a-z0-9_]+$": "use only lowercase letters, digits and '_' (at least one)",
}
_TYPE_WORDS = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "string_sub_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "set_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "path_type": "must be a path (a string)",
    "missing": "required",
}


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that holds the key at ``loc`` (for listing its known keys)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        if current is None or part not in current.model_fields:
            return None
        current = _inner_model(current.model_fields[part].annotation)
    return current


def _inner_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _choices(expected: str) -> str:
    return ", ".join(part.strip().strip("'") for part in re.split(r", | or ", expected))


def _humanize(error: ErrorDetails, model: type[BaseModel]) -> str:
    """One pydantic error as a message for people; never echoes a secret's value."""
    kind = error["type"]
    ctx = error.get("ctx", {})
    loc = error["loc"]
    if kind == "extra_forbidden":
        holder = _model_at(model, loc[:-1])
        known = ", ".join(holder.model_fields) if holder is not None else ""
        return f"unknown key; known keys: {known}" if known else "unknown key"
    if kind in ("literal_error", "enum"):
        return f"must be one of {_choices(str(ctx.get('expected', '')))}"
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind]
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        message = str(ctx["error"])
    elif kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        message = _PATTERN_WORDS.get(pattern, f"must match the pattern {pattern}")
    elif kind == "string_too_short":
        minimum = int(ctx.get("min_length", 1))
        message = "must not be empty" if minimum <= 1 else f"must be at least {minimum} characters"
    elif kind == "string_too_long":
        message = f"must be at most {ctx.get('max_length')} characters"
    elif kind in ("too_short", "too_long"):
        bound = int(ctx.get("min_length" if kind == "too_short" else "max_length", 0))
        word = "at least" if kind == "too_short" else "at most"
        message = f"must have {word} {bound} item{'' if bound == 1 else 's'}"
    elif kind in _BOUND_WORDS:
        word, ctx_key = _BOUND_WORDS[kind]
        message = f"must be {word} {_number(ctx.get(ctx_key))}"
    else:
        message = error["msg"]
    return _redact(message, loc, error.get("input"))


_BOUND_WORDS = {
    "greater_than": ("greater than", "gt"),
    "greater_than_equal": ("at least", "ge"),
    "less_than": ("less than", "lt"),
    "less_than_equal": ("at most", "le"),
}


def _redact(message: str, loc: Sequence[str | int], value: object) -> str:
    secret = any(word in str(part).lower() for part in loc for word in _SECRET_WORDS)
    if secret and isinstance(value, str) and value:
        message = message.replace(repr(value), "(hidden)").replace(value, "(hidden)")
    return message


class _Item:
    """The problems of one table or list item: ``where`` is how its lines start."""

    def __init__(self, where: str, *, listed: bool) -> None:
        self.where = where  # "gateway", "devices[2] (name=meter-1, driver=modbus)", or ""
        self.separator = " → " if listed else "."
        self.lines: list[str] = []
        self.located: set[_Loc] = set()

    def add(self, loc: Sequence[str | int], message: str) -> None:
        """One line; a key gets its first, clearest line only once from validation."""
        path = _render_loc(loc)
        if not path:
            self.lines.append(f"{self.where}: {message}")
        elif not self.where:
            self.lines.append(f"{path}: {message}")
        else:
            self.lines.append(f"{self.where}{self.separator}{path}: {message}")
        self.located.add(tuple(loc))

    def validate(self, model: type[_M], data: object, context: dict[str, Any]) -> _M | None:
        """The model, or None after adding a line per error (keys already located skipped)."""
        try:
            return model.model_validate(data, context=context)
        except ValidationError as exc:
            located = set(self.located)
            for error in exc.errors():
                if tuple(error["loc"]) not in located:
                    self.add(error["loc"], _humanize(error, model))
            return None


def _header(**parts: object) -> str:
    shown = [f"{key}={excerpt(value)}" for key, value in parts.items() if isinstance(value, str)]
    return f" ({', '.join(shown)})" if shown else ""


# --------------------------------------------------------------------------------------------
# Loading


def load_config(
    path: Path,
    *,
    driver_models: Mapping[str, type[DeviceConfig]] | None = None,
    require_uplink: bool = True,
    check_sources: bool = True,
) -> AgentConfig:
    """Read and validate a TOML config file; ConfigError lists every problem, one line each."""
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_error_line(path, text, exc)) from exc
    return config_from_dict(
        data,
        base_dir=path.parent,
        source_path=path,
        driver_models=driver_models,
        require_uplink=require_uplink,
        check_sources=check_sources,
    )


_TOML_AT = re.compile(r"^(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")
_TOML_AT_END = " (at end of document)"


def _toml_error_line(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    match = _TOML_AT.match(message)
    if match is not None:
        return f"{path}:{match['line']}:{match['col']}: {match['msg']}"
    if message.endswith(_TOML_AT_END):
        lines = text.split("\n")
        return f"{path}:{len(lines)}:{len(lines[-1]) + 1}: {message.removesuffix(_TOML_AT_END)}"
    return f"{path}:1:1: {message}"


def config_from_dict(
    data: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    source_path: Path | None = None,
    driver_models: Mapping[str, type[DeviceConfig]] | None = None,
    require_uplink: bool = True,
    check_sources: bool = True,
) -> AgentConfig:
    """Validate a parsed config table; relative paths resolve against ``base_dir``."""
    loader = _Loader(data, base_dir, _DriverTable.of(driver_models), check_sources=check_sources)
    return loader.run(source_path, require_uplink=require_uplink)


@dataclass(frozen=True)
class _DriverTable:
    models: Mapping[str, type[DeviceConfig]]
    broken: Mapping[str, str]  # driver name → why it could not be loaded

    @classmethod
    def of(cls, driver_models: Mapping[str, type[DeviceConfig]] | None) -> _DriverTable:
        if driver_models is not None:
            return cls(driver_models, {})
        models: dict[str, type[DeviceConfig]] = {}
        broken: dict[str, str] = {}
        for name, entry in discover().items():
            if entry.spec is not None:
                models[name] = entry.spec.config_model
            else:
                broken[name] = entry.error or "unknown error"
        return cls(models, broken)

    @property
    def installed(self) -> str:
        return "installed drivers: " + (", ".join(sorted(self.models)) or "none")


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
            content = path.read_bytes()
        except OSError as exc:
            problems.append((key, f"file {path} cannot be read: {exc.strerror}"))
            continue
        if key == "password_file":
            try:
                lines = content.decode("utf-8").splitlines()
            except UnicodeDecodeError:
                problems.append((key, f"file {path} is not UTF-8 text"))
                continue
            if not lines or not lines[0]:
                problems.append((key, f"file {path} is empty: put the password on its first line"))
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


class _Loader:
    """One validation run: walks the sections in file order and collects every problem."""

    def __init__(
        self,
        data: Mapping[str, Any],
        base_dir: Path | None,
        drivers: _DriverTable,
        *,
        check_sources: bool,
    ) -> None:
        self.data = data
        self.base_dir = base_dir
        self.drivers = drivers
        self.check_sources = check_sources
        self.items: list[_Item] = []
        self.context: dict[str, Any] = {"base_dir": base_dir, _DEFER_KPI_RULES: True}
        # Device tables after profile merging, by name: KPI sources are checked against them.
        self.device_tables: dict[str, dict[str, Any]] = {}
        self.device_models: dict[str, DeviceConfig] = {}
        self.profiles: dict[str, Profile | OSError | ValueError] = {}

    def item(self, where: str, *, listed: bool) -> _Item:
        item = _Item(where, listed=listed)
        self.items.append(item)
        return item

    def run(self, source_path: Path | None, *, require_uplink: bool) -> AgentConfig:
        top = self.item("", listed=False)
        for key in self.data:
            if key not in SECTIONS:
                top.add((key,), f"unknown key; known keys: {', '.join(SECTIONS)}")
        gateway = self._table("gateway", GatewayConfig, required=True)
        uplink = self._table("uplink", UplinkConfig, required=require_uplink)
        buffer = self._table("buffer", BufferConfig, required=False)
        metrics = self._table("metrics", MetricsConfig, required=False)
        buses = self._buses()
        devices = self._devices({bus.name for bus in buses} | self._raw_names("buses"))
        kpis = self._kpis()
        self._across_sections(gateway, uplink, buffer, has_kpis=bool(self._peek("kpis")))
        self._batches_fit(uplink, devices)
        lines = [line for item in self.items for line in item.lines]
        if lines:
            raise ConfigError(lines)
        assert gateway is not None  # a missing gateway is a line above
        return AgentConfig(
            gateway=gateway,
            uplink=uplink,
            buffer=buffer or BufferConfig(),
            metrics=metrics or MetricsConfig(),
            buses=buses,
            devices=devices,
            kpis=kpis,
            source_path=source_path,
        )

    def _across_sections(
        self,
        gateway: GatewayConfig | None,
        uplink: UplinkConfig | None,
        buffer: BufferConfig | None,
        *,
        has_kpis: bool,
    ) -> None:
        """Durations of different sections that only make sense together."""
        if uplink is None:
            return
        if buffer is not None and buffer.max_age_seconds <= uplink.batch_max_age_seconds:
            self.item("buffer", listed=False).add(("max_age",), (
                f"{buffer.max_age!r} is not longer than uplink.batch_max_age "
                f"({uplink.batch_max_age!r}): every batch would expire before it is sent"))
        if has_kpis and gateway is not None:
            lateness = parse_duration(gateway.kpi_lateness)
            if lateness < uplink.flush_interval_seconds:
                self.item("gateway", listed=False).add(("kpi_lateness",), (
                    f"{gateway.kpi_lateness!r} is shorter than uplink.flush_interval "
                    f"({uplink.flush_interval!r}): readings reach the KPI engine at each flush, "
                    "so the last ones of every window would count as late"))

    def _batches_fit(self, uplink: UplinkConfig | None, devices: list[DeviceConfig]) -> None:
        """A batch is sealed at the first flush after it holds batch_max_readings, so it may
        hold one flush interval's readings more; both must fit the wire format's limits."""
        if uplink is None:
            return
        points = per_flush = 0
        for device in devices:
            if not device.enabled:
                continue
            listed = getattr(device, "points", None)
            n = len(listed) if isinstance(listed, list) else UNLISTED_POINTS
            points += n
            try:
                interval = parse_duration(device.interval)
            except ValueError:
                continue  # reported with the device
            per_flush += n * (int(uplink.flush_interval_seconds // max(interval, 1e-3)) + 1)
        if points > WIRE_MAX_SERIES:
            self.item("devices", listed=False).add((), (
                f"{points:,} points over all devices: a batch may carry at most "
                f"{WIRE_MAX_SERIES:,} series (docs/wire-format.md §11.1); split the gateway"))
        worst = uplink.batch_max_readings + per_flush
        if worst > WIRE_MAX_READINGS:
            self.item("uplink", listed=False).add(("batch_max_readings",), (
                f"{uplink.batch_max_readings:,} plus up to {per_flush:,} readings of one "
                f"flush_interval ({uplink.flush_interval}) makes batches of up to {worst:,} "
                f"readings, over the {WIRE_MAX_READINGS:,} a batch may carry: lower "
                "batch_max_readings or flush_interval"))

    def _table(self, section: str, model: type[_M], *, required: bool) -> _M | None:
        value = self.data.get(section)
        item = self.item(section, listed=False)
        if value is None:
            if required:
                article = "an" if section[0] in "aeiou" else "a"
                item.add((), f"required (add {article} [{section}] table)")
            return None
        if not isinstance(value, dict):
            item.add((), f"must be a table ([{section}])")
            return None
        result = item.validate(model, value, self.context)
        if section == "uplink":
            for key, message in _file_problems(value, self.base_dir):
                item.add((key,), message)
        return result

    def _list(self, section: str) -> list[object]:
        value = self.data.get(section, [])
        if not isinstance(value, list):
            self.item(section, listed=False).add((), f"must be a list of tables ([[{section}]])")
            return []
        return value

    def _raw_names(self, section: str) -> set[str]:
        return {
            raw["name"]
            for raw in self._peek(section)
            if isinstance(raw, dict) and isinstance(raw.get("name"), str)
        }

    def _peek(self, section: str) -> list[object]:
        value = self.data.get(section, [])
        return value if isinstance(value, list) else []

    def _buses(self) -> list[BusConfig]:
        out: list[BusConfig] = []
        names: dict[str, int] = {}
        ports: dict[str, int] = {}
        for i, raw in enumerate(self._list("buses")):
            if not isinstance(raw, dict):
                self.item(f"buses[{i}]", listed=True).add((), "must be a table")
                continue
            name, port = raw.get("name"), raw.get("port")
            item = self.item(f"buses[{i}]{_header(name=name)}", listed=True)
            bus = item.validate(BusConfig, raw, self.context)
            if isinstance(name, str):
                if name in names:
                    item.add(("name",), f"{name!r} is already used by buses[{names[name]}]")
                names.setdefault(name, i)
            if isinstance(port, str):
                if port in ports:
                    item.add(
                        ("port",),
                        f"{port} is already used by buses[{ports[port]}]: "
                        "one [[buses]] table per serial port",
                    )
                ports.setdefault(port, i)
            if bus is not None:
                out.append(bus)
        return out

    def _devices(self, bus_names: set[str]) -> list[DeviceConfig]:
        out: list[DeviceConfig] = []
        first: dict[str, int] = {}
        for i, raw in enumerate(self._list("devices")):
            if not isinstance(raw, dict):
                self.item(f"devices[{i}]", listed=True).add((), "must be a table")
                continue
            name, driver = raw.get("name"), raw.get("driver")
            item = self.item(f"devices[{i}]{_header(name=name, driver=driver)}", listed=True)
            model = self._driver_model(driver, item)
            table = self._merge_profile(raw, driver, model, item)
            interval = table.get("interval")
            if isinstance(interval, str):
                try:
                    duration_within(interval, *DEVICE_INTERVAL_RANGE)
                except ValueError as exc:
                    item.add(("interval",), str(exc))
            bus = table.get("bus")
            if isinstance(bus, str) and bus not in bus_names:
                defined = ", ".join(sorted(bus_names))
                hint = f"defined buses: {defined}" if defined else "add a [[buses]] table for it"
                item.add(("bus",), f"no bus named {bus!r}; {hint}")
            is_first = False
            if isinstance(name, str):
                if name in first:
                    item.add(("name",), f"{name!r} is already used by devices[{first[name]}]")
                else:
                    first[name], is_first = i, True
                    self.device_tables[name] = table
            device = item.validate(model, table, self.context) if model is not None else None
            if device is not None:
                out.append(device)
                if is_first:
                    self.device_models[device.name] = device
        return out

    def _driver_model(self, driver: object, item: _Item) -> type[DeviceConfig] | None:
        if driver is None:
            item.add(("driver",), f"required; {self.drivers.installed}")
        elif not isinstance(driver, str):
            item.add(("driver",), f"must be a string; {self.drivers.installed}")
        elif driver in self.drivers.models:
            return self.drivers.models[driver]
        elif driver in self.drivers.broken:
            why = self.drivers.broken[driver]
            item.add(("driver",), f"driver {driver!r} could not be loaded: {why}")
        else:
            item.add(("driver",), f"unknown driver {driver!r}; {self.drivers.installed}")
        return None

    def _profile(self, name: str) -> Profile:
        """A profile, read once per load however many devices name it."""
        if name not in self.profiles:
            try:
                self.profiles[name] = load_profile(name, self.base_dir)
            except (OSError, ValueError) as exc:  # reported at every device that names it
                self.profiles[name] = exc
        found = self.profiles[name]
        if isinstance(found, Exception):
            raise found
        return found

    def _merge_profile(
        self, raw: dict[str, Any], driver: object, model: type[DeviceConfig] | None, item: _Item
    ) -> dict[str, Any]:
        table = dict(raw)
        name = raw.get("profile")
        if isinstance(name, str):
            try:
                profile = self._profile(name)
            except (FileNotFoundError, ValueError) as exc:
                item.add(("profile",), str(exc))
            except OSError as exc:
                item.add(("profile",), f"profile {name!r} cannot be read: {exc.strerror}")
            else:
                if isinstance(driver, str) and profile.driver != driver:
                    item.add(
                        ("profile",),
                        f"profile {profile.name!r} is for driver "
                        f"{profile.driver!r}, not {driver!r}",
                    )
                elif isinstance(table.get("points", []), list):
                    table = apply_profile(table, profile)
        elif name is not None:
            item.add(("profile",), "must be a string: a profile name or a path to a .toml file")
        if model is not None and "profile" not in model.model_fields:
            table.pop("profile", None)  # a driver without profiles in its model: merged here
        return table

    def _kpis(self) -> list[KpiConfig]:
        raws = self._list("kpis")
        # From the raw tables, so that one bad KPI does not hide a cycle through it.
        first: dict[str, int] = {}
        graph: dict[str, str] = {}
        for i, raw in enumerate(raws):
            if isinstance(raw, dict) and isinstance(raw.get("name"), str):
                first.setdefault(raw["name"], i)
                source = raw.get("source")
                if isinstance(source, str) and source.startswith("kpi:"):
                    graph.setdefault(raw["name"], source[4:])
        parsed: list[tuple[KpiConfig, _Item]] = []
        for i, raw in enumerate(raws):
            if not isinstance(raw, dict):
                self.item(f"kpis[{i}]", listed=True).add((), "must be a table")
                continue
            name = raw.get("name")
            header = _header(name=name, operator=raw.get("operator"))
            item = self.item(f"kpis[{i}]{header}", listed=True)
            table, derived = self._with_sample_interval(raw)
            problems = kpi_key_problems(str(raw.get("operator")), raw.get("source"), set(table))
            problems += self._kpi_source_problems(i, raw, first, graph)
            if isinstance(name, str) and first[name] != i:
                problems.append(("name", f"{name!r} is already used by kpis[{first[name]}]"))
            for key, message in sorted(problems, key=lambda problem: _field_order(problem[0])):
                item.add((key,), message)
            kpi = item.validate(KpiConfig, table, self.context)
            if kpi is None:
                continue
            for key, message in kpi_value_problems(kpi):
                if (key,) not in item.located:
                    item.add((key,), message + (derived if key == "sample_interval" else ""))
            parsed.append((kpi, item))
        by_name = {kpi.name: kpi for kpi, _ in reversed(parsed)}
        for kpi, item in parsed:
            source = by_name.get(kpi.source_kpi or "")
            if source is not None and not nests_in(source.step_duration, kpi.window_duration):
                item.add(
                    ("source",),
                    f"kpi:{source.name} steps by {source.step_duration}, "
                    f"which does not nest in window {kpi.window}",
                )
        return [kpi for kpi, _ in parsed]

    def _with_sample_interval(self, raw: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """A device KPI without sample_interval expects one reading per poll of its device."""
        if _source_kind(raw.get("source")) != "device" or "sample_interval" in raw:
            return raw, ""
        device = str(raw["source"]).partition(".")[0]
        table = self.device_tables.get(device)
        if table is None:
            return raw, ""
        model = self.device_models.get(device)
        default = DeviceConfig.model_fields["interval"].default
        interval = model.interval if model is not None else table.get("interval", default)
        try:
            _kpi_period(interval)
        except (ValueError, TypeError):
            return raw, ""  # not a KPI duration ("500 ms"): sample_interval stays required
        return {**raw, "sample_interval": interval}, f" (the interval of device {device})"

    def _kpi_source_problems(
        self, index: int, raw: dict[str, Any], first: Mapping[str, int], graph: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        source = raw.get("source")
        kind = _source_kind(source)
        if kind is None or not isinstance(source, str):
            return []
        if kind == "kpi":
            target = source[4:]
            if target not in first:
                known = ", ".join(sorted(first)) or "none"
                return [("source", f"no KPI named {target!r}; defined KPIs: {known}")]
            cycle = _cycle_from(raw.get("name"), graph)
            # Reported once, at the cycle's first KPI in the file.
            if cycle and min(first[name] for name in cycle) == index:
                return [("source", f"{source} makes a cycle: {' → '.join([*cycle, cycle[0]])}")]
            return []
        if not self.check_sources or not self.device_tables:
            return []
        device_name, _, point = source.partition(".")
        if device_name not in self.device_tables:
            known = ", ".join(sorted(self.device_tables))
            return [("source", f"no device named {device_name!r} in [[devices]]; devices: {known}")]
        points = getattr(self.device_models.get(device_name), "points", None)
        if isinstance(points, list):
            names = [str(getattr(p, "name", "")) for p in points]
            if point not in names:
                close = difflib.get_close_matches(point, names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                return [
                    (
                        "source",
                        f"device {device_name!r} has no point {point!r}; "
                        f"{hint}its points: {', '.join(names)}",
                    )
                ]
        return []
