"""The configuration's models (:mod:`agent.schema`): one per section, :class:`KpiConfig` per
``[[kpis]]`` table, and :class:`AgentConfig` for the whole file. Build them through the loader
(:mod:`agent.config.loader`): it checks what spans tables (names, sources, buses).
"""

from __future__ import annotations

import ipaddress
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from agent.config.kpi import Operator, _source_kind, kpi_key_problems, kpi_value_problems
from agent.config.rules import (
    _HOSTNAME,
    BATCH_MAX_READINGS_LIMIT,
    NAME_PATTERN,
    ClockTime,
    ConfigPath,
    Coverage,
    KpiPeriod,
    KpiWindow,
    Unit,
    _printable,
    known_zone,
    seconds_between,
)
from agent.driver import DeviceConfig
from agent.endpoints import BrokerAddress, parse_broker_urls, topic_prefix_problem
from agent.errors import ConfigError
from agent.kpi.registry import REGISTRY
from agent.password_file import read_password_file
from agent.schema import (
    AfterValidator,
    ConfigModel,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from agent.unit_fields import DurationField, SizeField, duration_range, not_zero
from agent.units import Duration, KpiDuration, Size, parse_clock

SECTIONS = ("gateway", "uplink", "buffer", "metrics", "buses", "devices", "kpis",
            "remote_config", "status_page")
# The loader passes this in the validation context: it reports KPI rule problems itself,
# located per key, instead of as one model-level line.
_DEFER_KPI_RULES = "defer_kpi_rules"


class _Section(ConfigModel):
    pass


# --------------------------------------------------------------------------------------------
# Sections


class GatewayConfig(_Section):
    """``[gateway]``: who this gateway is and where it keeps its data."""

    id: str = Field(pattern=NAME_PATTERN, max_length=64)
    timezone: str = "UTC"
    data_dir: ConfigPath = Path("/var/lib/ssc-agent")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_timeout: Annotated[
        DurationField,
        duration_range("1 s", "10 min", "time to seal and send the open batch on SIGTERM"),
    ] = Duration.parse("10 s")
    # A reading may reach the KPI engine this much after a later one (slow polls, several
    # devices) and still count in its window; later ones are counted and reported.
    kpi_lateness: Annotated[
        DurationField, duration_range("1 s", "1 h", "open KPI windows are held in memory this long")
    ] = Duration.parse("1 min")
    # Open KPI windows saved at least this often.
    kpi_checkpoint_interval: Annotated[
        DurationField,
        duration_range("1 s", "1 h", "a restart replays the journal since the last save"),
    ] = Duration.parse("1 min")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_zone(value)

    @property
    def tz(self) -> ZoneInfo:
        """The site's time zone; KPI windows follow it."""
        return ZoneInfo(self.timezone)


class UplinkConfig(_Section):
    """``[uplink]``: the MQTT broker and how batches are sent to it."""

    broker: str | list[str]  # a list: brokers of a cluster, tried in turn
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
    keepalive: Annotated[
        DurationField, seconds_between(1, 65535, "MQTT keepalive must be between 1 s and 65535 s")
    ] = Duration.parse("30 s")
    publish_timeout: Annotated[
        DurationField,
        duration_range(
            "1 s", "10 min", "the broker's PUBACK comes a round trip after the whole batch"
        ),
    ] = Duration.parse("20 s")
    batch_max_readings: int = Field(default=20000, ge=1, le=BATCH_MAX_READINGS_LIMIT)
    batch_max_age: Annotated[DurationField, duration_range("10 ms", "1 d")] = Duration.parse(
        "10 s"
    )
    flush_interval: Annotated[
        DurationField,
        duration_range(
            "10 ms", "1 min", "each flush is a commit; a power cut loses up to one interval"
        ),
    ] = Field(default=Duration.parse("1 s"), validate_default=True)
    max_inflight: int = Field(default=8, ge=1, le=100)
    # Below one batch per 10 s a backlog of a day's batches takes weeks to drain.
    replay_rate_per_second: float = Field(default=50.0, ge=0.1)
    replay_order: Literal["live_first", "fifo"] = "live_first"
    reconnect_min: Annotated[
        DurationField, seconds_between(0.1, 3600, "must be between 100 ms and 1 h (e.g. '500 ms')")
    ] = Duration.parse("500 ms")
    reconnect_max: Annotated[
        DurationField, seconds_between(0.1, 3600, "must be between 100 ms and 1 h (e.g. '5 s')")
    ] = Field(default=Duration.parse("5 s"), validate_default=True)
    compression: Literal["zstd", "none"] = "zstd"
    zstd_level: int = Field(default=3, ge=1, le=19)

    @field_validator("broker", mode="before")
    @classmethod
    def _broker_url(cls, value: object) -> object:
        if not isinstance(value, str | list):
            # a ValueError is what the config reports as a problem of this key
            raise ValueError("give one broker URL or a list of them")  # noqa: TRY004
        parse_broker_urls(value)
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
        if value is not None and broker is not None and not parse_broker_urls(broker)[0].tls:
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

    @field_validator("flush_interval")
    @classmethod
    def _flush_within_batch_age(cls, value: Duration, info: ValidationInfo) -> Duration:
        age = info.data.get("batch_max_age")
        if isinstance(age, Duration) and value.seconds > age.seconds:
            raise ValueError(
                f"{value.text!r} is longer than batch_max_age ({age.text!r}): make it shorter"
            )
        return value

    @field_validator("reconnect_max")
    @classmethod
    def _reconnect_max_after_min(cls, value: Duration, info: ValidationInfo) -> Duration:
        low = info.data.get("reconnect_min")
        if isinstance(low, Duration) and value.seconds < low.seconds:
            raise ValueError(
                f"{value.text!r} is shorter than reconnect_min ({low.text!r}): make it longer"
            )
        return value

    @property
    def broker_address(self) -> BrokerAddress:
        """Host, port and TLS flag of the (first) broker."""
        return self.broker_addresses[0]

    @property
    def broker_addresses(self) -> tuple[BrokerAddress, ...]:
        """Every broker, in the order the uplink tries them."""
        return parse_broker_urls(self.broker)

    def read_password(self) -> str | None:
        """The password from ``password_file`` (:func:`~agent.password_file.read_password_file`),
        or None without one."""
        if self.password_file is None:
            return None
        return read_password_file(self.password_file)


class BufferConfig(_Section):
    """``[buffer]``: bounds of the store-and-forward buffer."""

    max_bytes: SizeField = Size.parse("256 MiB")
    # At least a minute: batches wait for a batch_max_age before they can be sent at all.
    max_age: Annotated[DurationField, duration_range("1 min", "3650 d")] = Duration.parse("30 d")
    when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    # "full" fsyncs each commit (once per flush_interval): a power cut loses at most that
    # interval, as the delivery contract says. "normal" survives a crash of the agent but a
    # power cut may take back commits since the last WAL checkpoint.
    sync: Literal["normal", "full"] = "full"


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


class RemoteConfigSection(_Section):
    """``[remote_config]``: signed configs pushed by the platform (docs/config.md "Remote
    configuration"); off by default. Only the gateway's local file may hold it."""

    enabled: bool = False
    public_key_file: ConfigPath | None = Field(default=None, validate_default=True)
    rollback_after: Annotated[
        DurationField,
        duration_range("1 s", "1 d", "a pushed config must show it works within this time"),
    ] = Duration.parse("5 min")

    @field_validator("public_key_file")
    @classmethod
    def _key_when_enabled(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if not info.data.get("enabled"):
            return value
        if value is None:
            raise ValueError("required when enabled: the platform's Ed25519 public key "
                             "(`ssc-agent fleet keygen` writes one)")
        from agent.signing import load_public_key  # reads PEM itself: no cryptography

        try:
            load_public_key(value)
        except ConfigError as exc:
            # the path is in the line's place already (and a key file's path is hidden there)
            raise ValueError(exc.problems[0].removeprefix(f"public_key_file {value}")
                             .lstrip(": ")) from None
        return value


class StatusPageConfig(MetricsConfig):
    """``[status_page]``: a read-only status page over HTTP, off unless ``port`` is set. On
    loopback by default: another address shows the page to whoever reaches that network."""


class BusConfig(_Section):
    """``[[buses]]``: one serial line shared by the devices that name it."""

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    port: Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_printable)]
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout: Annotated[
        DurationField,
        duration_range("10 ms", "1 min", "an RTU answer takes milliseconds on the wire"),
    ] = Duration.parse("1 s")
    inter_frame_ms: float = Field(default=5.0, ge=0, le=1000)

    @property
    def inter_frame_seconds(self) -> float:
        return self.inter_frame_ms / 1000.0


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
    scale: Annotated[float, not_zero("every input would become 0")] = 1.0
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
        return self.window.duration

    @property
    def base_duration(self) -> KpiDuration | None:
        return None if self.base is None else self.base.duration

    @property
    def sample_interval_duration(self) -> KpiDuration | None:
        return None if self.sample_interval is None else self.sample_interval.duration

    @property
    def max_hold_seconds(self) -> float | None:
        """``max_hold``, by default 2 × ``sample_interval`` (``time_weighted_mean``)."""
        if self.max_hold is not None:
            return float(self.max_hold.duration.seconds)
        interval = self.sample_interval_duration
        return None if interval is None else 2.0 * interval.seconds

    @property
    def running_window_duration(self) -> KpiDuration | None:
        return None if self.running_window is None else self.running_window.duration

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
        return REGISTRY[self.operator].sliding(self)

    @property
    def step_duration(self) -> KpiDuration:
        """The window an output steps by: its base for sliding operators, else its window."""
        base = self.base_duration
        return base if self.is_sliding and base is not None else self.window_duration

    def clock(self, key: Literal["night_start", "night_end", "day_start", "evening_start"]) -> time:
        """A wall-time key with its per-operator default (docs/kpis.md §2)."""
        value: str | None = getattr(self, key)
        if value is None:
            value = REGISTRY[self.operator].clock_defaults[key]
        return parse_clock(value)


# --------------------------------------------------------------------------------------------
# The whole config


class AgentConfig(_Section):
    """The validated configuration file. Build it with :func:`load_config`."""

    gateway: GatewayConfig
    uplink: UplinkConfig | None = None
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    status_page: StatusPageConfig = Field(default_factory=StatusPageConfig)
    buses: list[BusConfig] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(default_factory=list)
    kpis: list[KpiConfig] = Field(default_factory=list)
    remote_config: RemoteConfigSection = Field(default_factory=RemoteConfigSection)
    source_path: Path | None = None

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


