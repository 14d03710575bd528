"""The config models and loader: every error at once, one line each, naming where."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import (
    AgentConfig,
    KpiConfig,
    KpiDuration,
    config_from_dict,
    is_day_aligned,
    kpi_key_problems,
    load_config,
    nests_in,
    parse_clock,
    parse_kpi_duration,
)
from agent.errors import ConfigError, shorten
from agent.profiles import available_profiles
from drivers.modbus.config import ModbusDeviceConfig

REPO = Path(__file__).resolve().parents[2]
DRIVERS: dict[str, type[ModbusDeviceConfig]] = {"modbus": ModbusDeviceConfig}

GATEWAY = '[gateway]\nid = "gw-1"\n'
UPLINK = '[uplink]\nbroker = "mqtt://127.0.0.1:1883"\n'
UPLINK_TLS = '[uplink]\nbroker = "mqtts://127.0.0.1:8883"\n'
BUS = '[[buses]]\nname = "rs485-1"\nport = "/dev/ttyUSB0"\n'
DEVICE = """
[[devices]]
name = "m1"
driver = "modbus"
endpoint = "tcp://127.0.0.1:5020"
interval = "1 min"
[[devices.points]]
name = "p"
address = 0
[[devices.points]]
name = "energy"
address = 2
type = "u32"
"""
BASE = GATEWAY + UPLINK
DEV = "devices[0] (name=m1, driver=modbus)"
DEVICE_KEYS = ", ".join(ModbusDeviceConfig.model_fields)
KPI_KEYS = ", ".join(KpiConfig.model_fields)
SECRET = "hunter2-correct-horse"


def kpi(**keys: object) -> str:
    """A [[kpis]] table from keyword arguments (strings quoted, numbers as is)."""
    lines = ["[[kpis]]"]
    for key, value in keys.items():
        lines.append(
            f"{key} = {value!r}".replace("'", '"') if isinstance(value, str) else f"{key} = {value}"
        )
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str, **kwargs: object) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, driver_models=DRIVERS, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


def load_text(tmp_path: Path, text: str, **kwargs: object) -> AgentConfig:
    return load_config(write(tmp_path, text), driver_models=DRIVERS, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """Readable TLS and password files next to the config."""
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("-----BEGIN X-----\n")
    (tmp_path / "pw").write_text(SECRET + "\n")
    return tmp_path


BAD: list[tuple[str, str, list[str]]] = [
    ("gateway id missing", '[gateway]\ntimezone = "UTC"\n' + UPLINK, ["gateway.id: required"]),
    (
        "gateway id characters",
        '[gateway]\nid = "gw 1"\n' + UPLINK,
        ["gateway.id: use only letters, digits, '_' and '-' (at least one)"],
    ),
    (
        "gateway id too long",
        f'[gateway]\nid = "{"g" * 65}"\n' + UPLINK,
        ["gateway.id: must be at most 64 characters"],
    ),
    (
        "time zone unknown",
        GATEWAY + 'timezone = "Europe/Berln"\n' + UPLINK,
        [
            "gateway.timezone: 'Europe/Berln' is not an IANA time zone name: "
            "write e.g. 'Europe/Berlin' or 'UTC'"
        ],
    ),
    (
        "log level",
        GATEWAY + 'log_level = "verbose"\n' + UPLINK,
        ["gateway.log_level: must be one of debug, info, warning, error"],
    ),
    (
        "gateway unknown key",
        GATEWAY + 'name = "x"\n' + UPLINK,
        ["gateway.name: unknown key; known keys: id, timezone, data_dir, log_level, "
         "shutdown_timeout, kpi_lateness, kpi_checkpoint_interval"],
    ),
    ("gateway table missing", UPLINK, ["gateway: required (add a [gateway] table)"]),
    (
        "gateway not a table",
        'gateway = "gw-1"\n' + UPLINK,
        ["gateway: must be a table ([gateway])"],
    ),
    ("uplink table missing", GATEWAY, ["uplink: required (add an [uplink] table)"]),
    (
        "top-level typo",
        BASE + '[[device]]\nname = "m1"\n',
        ["device: unknown key; known keys: gateway, uplink, buffer, metrics, buses, devices, kpis, "
         "remote_config, status_page"],
    ),
    (
        "broker scheme",
        GATEWAY + '[uplink]\nbroker = "http://127.0.0.1"\n',
        ["uplink.broker: 'http://127.0.0.1': a broker URL starts with mqtt:// or mqtts://"],
    ),
    ("broker missing", GATEWAY + '[uplink]\ntopic_prefix = "a"\n', ["uplink.broker: required"]),
    (
        "topic wildcard",
        BASE + 'topic_prefix = "ssc/#"\n',
        ["uplink.topic_prefix: 'ssc/#': MQTT wildcards # and + are not allowed in a topic prefix"],
    ),
    (
        "topic trailing slash",
        BASE + 'topic_prefix = "ssc/v1/"\n',
        ["uplink.topic_prefix: 'ssc/v1/': no leading or trailing '/', e.g. 'ssc/v1'"],
    ),
    (
        "TLS file with mqtt://",
        BASE + 'ca_file = "ca.pem"\n',
        ["uplink.ca_file: needs TLS: use an mqtts:// broker URL, or remove it"],
    ),
    (
        "cert without key",
        GATEWAY + UPLINK_TLS + 'cert_file = "cert.pem"\n',
        ["uplink.key_file: required with cert_file: a client certificate needs its key file"],
    ),
    (
        "key without cert",
        GATEWAY + UPLINK_TLS + 'key_file = "key.pem"\n',
        ["uplink.key_file: needs cert_file too: set both cert_file and key_file, or neither"],
    ),
    (
        "password file without username",
        BASE + 'password_file = "pw"\n',
        ['uplink.password_file: needs username too: set username = "…" or remove password_file'],
    ),
    (
        "flush longer than batch age",
        BASE + 'flush_interval = "20 s"\n',
        ["uplink.flush_interval: '20 s' is longer than batch_max_age ('10 s'): make it shorter"],
    ),
    ("max_inflight zero", BASE + "max_inflight = 0\n", ["uplink.max_inflight: must be at least 1"]),
    ("zstd level", BASE + "zstd_level = 22\n", ["uplink.zstd_level: must be at most 19"]),
    (
        "replay rate",
        BASE + "replay_rate_per_second = 0\n",
        ["uplink.replay_rate_per_second: must be at least 0.1"],
    ),
    (
        "compression",
        BASE + 'compression = "gzip"\n',
        ["uplink.compression: must be one of zstd, none"],
    ),
    (
        "duration as a number",
        BASE + "keepalive = 30\n",
        ["uplink.keepalive: write a duration as a string, e.g. '15 s'"],
    ),
    (
        "batch_max_readings type",
        BASE + 'batch_max_readings = "many"\n',
        ["uplink.batch_max_readings: must be an integer"],
    ),
    (
        "batch_max_readings over what a batch may hold",
        BASE + "batch_max_readings = 100001\n",
        ["uplink.batch_max_readings: must be at most 100000"],
    ),
    (
        "buffer size",
        BASE + '[buffer]\nmax_bytes = "lots"\n',
        [
            "buffer.max_bytes: 'lots' is not a size: write a number and a unit "
            "(B, KB, MB, GB, KiB, MiB, GiB), e.g. '256 MiB'"
        ],
    ),
    (
        "buffer when_full",
        BASE + '[buffer]\nwhen_full = "block"\n',
        ["buffer.when_full: must be one of drop_oldest, drop_newest"],
    ),
    (
        "bus baudrate",
        BASE + BUS + "baudrate = 9601\n",
        [
            "buses[0] (name=rs485-1) → baudrate: must be one of "
            "1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200"
        ],
    ),
    (
        "bus parity and stopbits",
        BASE + BUS + 'parity = "X"\nstopbits = 3\n',
        [
            "buses[0] (name=rs485-1) → parity: must be one of N, E, O",
            "buses[0] (name=rs485-1) → stopbits: must be one of 1, 2",
        ],
    ),
    ("bus port missing", BASE + '[[buses]]\nname = "b"\n', ["buses[0] (name=b) → port: required"]),
    (
        "bus name twice",
        BASE + BUS + '[[buses]]\nname = "rs485-1"\nport = "/dev/ttyUSB1"\n',
        ["buses[1] (name=rs485-1) → name: 'rs485-1' is already used by buses[0]"],
    ),
    (
        "bus negative pause",
        BASE + BUS + "inter_frame_ms = -1\n",
        ["buses[0] (name=rs485-1) → inter_frame_ms: must be at least 0"],
    ),
    (
        "device driver missing",
        BASE + '[[devices]]\nname = "m1"\n',
        ["devices[0] (name=m1) → driver: required; installed drivers: modbus"],
    ),
    (
        "device driver unknown",
        BASE + '[[devices]]\nname = "m1"\ndriver = "bacnet"\n',
        [
            "devices[0] (name=m1, driver=bacnet) → driver: unknown driver 'bacnet'; installed "
            "drivers: modbus"
        ],
    ),
    (
        "point type (the contract's example)",
        BASE + DEVICE.replace('type = "u32"', 'type = "u17"'),
        [f"{DEV} → points[1].type: must be one of u16, i16, u32, i32, u64, i64, f32, f64, bool"],
    ),
    (
        "point unknown key",
        BASE + DEVICE + "colour = 1\n",
        [
            f"{DEV} → points[1].colour: unknown key; known keys: name, address, table, type, "
            "byte_order, scale, offset, unit"
        ],
    ),
    (
        "device unknown key",
        BASE + DEVICE.replace('interval = "1 min"', 'intervall = "1 min"'),
        [f"{DEV} → intervall: unknown key; known keys: {DEVICE_KEYS}"],
    ),
    (
        "endpoint and bus (model-level)",
        BASE + BUS + DEVICE.replace('interval = "1 min"', 'bus = "rs485-1"'),
        [f'{DEV}: give exactly one of endpoint = "tcp://HOST:PORT" or bus = "NAME"'],
    ),
    (
        "bus not defined",
        BASE + DEVICE.replace('endpoint = "tcp://127.0.0.1:5020"', 'bus = "rs485-9"'),
        [f"{DEV} → bus: no bus named 'rs485-9'; add a [[buses]] table for it"],
    ),
    (
        "device name twice",
        BASE + DEVICE + DEVICE,
        ["devices[1] (name=m1, driver=modbus) → name: 'm1' is already used by devices[0]"],
    ),
    (
        "device interval too short",
        BASE + DEVICE.replace('"1 min"', '"50 ms"'),
        [f"{DEV} → interval: '50 ms' is too short: at least 100 ms"],
    ),
    (
        "device interval not a duration",
        BASE + DEVICE.replace('"1 min"', '"often"'),
        [
            f"{DEV} → interval: 'often' is not a duration: write a number and a unit (ms, s, min, "
            "h, d), e.g. '15 s'"
        ],
    ),
    (
        "points empty",
        BASE + '[[devices]]\nname = "m1"\ndriver = "modbus"\nendpoint = "tcp://127.0.0.1:502"\n'
        "points = []\n",
        [f"{DEV} → points: must have at least 1 item"],
    ),
    (
        "device not a table",
        "devices = [1]\n" + BASE,
        ["devices[0]: must be a table"],
    ),
    (
        "kpi key the operator does not take",
        BASE + DEVICE + kpi(name="k", source="m1.p", operator="mean", window="1 h", threshold=3.0),
        [
            "kpis[0] (name=k, operator=mean) → threshold: operator mean does not take threshold; "
            "remove it"
        ],
    ),
    (
        "percentile needs q",
        BASE + DEVICE + kpi(name="k", source="m1.p", operator="percentile", window="1 h"),
        ["kpis[0] (name=k, operator=percentile) → q: required for operator percentile"],
    ),
    (
        "percentile of a year of 1-min values, without a base",
        BASE + DEVICE + kpi(name="k", source="m1.p", operator="percentile", q=90.0,
                            window="1 y"),
        ["kpis[0] (name=k, operator=percentile) → window: a percentile keeps every value of "
         "its window: 1 y at 1 min is 525,600 values (at most 200,000), held in memory and "
         "written with every KPI checkpoint; take a shorter window, or set base to take the "
         "percentile of the base aggregates (e.g. of daily means) instead"],
    ),
    (
        "count takes no base",
        BASE + DEVICE + kpi(name="k", source="m1.p", operator="count", window="1 d", base="1 h"),
        ["kpis[0] (name=k, operator=count) → base: operator count takes no base; remove it"],
    ),
    (
        "base must nest",
        BASE + DEVICE + kpi(name="k", source="m1.p", operator="mean", window="1 h", base="45 min"),
        [
            "kpis[0] (name=k, operator=mean) → base: 45 min does not nest in window 1 h: a window "
            "must hold whole bases"
        ],
    ),
    (
        "window must divide the day",
        BASE + DEVICE + kpi(name="k", source="m1.p", operator="mean", window="7 min"),
        [
            "kpis[0] (name=k, operator=mean) → window: '7 min' does not divide 24 h: "
            "windows must tile the day (e.g. '5 min', '15 min', '1 h')"
        ],
    ),
    (
        "calendar units take 1",
        BASE + DEVICE + kpi(name="k", source="m1.p", operator="mean", window="2 d"),
        [
            "kpis[0] (name=k, operator=mean) → window: '2 d': d, mo and y take only a count of 1 "
            "('1 d')"
        ],
    ),
    (
        "kpi source undefined",
        BASE + kpi(name="k", source="kpi:nope", operator="max", window="1 d"),
        ["kpis[0] (name=k, operator=max) → source: no KPI named 'nope'; defined KPIs: k"],
    ),
    (
        "kpi source cycle",
        BASE
        + kpi(name="a", source="kpi:b", operator="max", window="1 d")
        + kpi(name="b", source="kpi:a", operator="max", window="1 d"),
        ["kpis[0] (name=a, operator=max) → source: kpi:b makes a cycle: a → b → a"],
    ),
    (
        "kpi source of itself",
        BASE + kpi(name="a", source="kpi:a", operator="max", window="1 d"),
        ["kpis[0] (name=a, operator=max) → source: kpi:a makes a cycle: a → a"],
    ),
    (
        "device source unknown",
        BASE
        + DEVICE
        + kpi(name="k", source="m2.p", operator="mean", window="1 h", sample_interval="1 min"),
        [
            "kpis[0] (name=k, operator=mean) → source: no device named 'm2' in [[devices]]; "
            "devices: m1"
        ],
    ),
    (
        "device point unknown",
        BASE + DEVICE + kpi(name="k", source="m1.energie", operator="counter_delta", window="1 h"),
        [
            "kpis[0] (name=k, operator=counter_delta) → source: device 'm1' has no point "
            "'energie'; "
            "did you mean 'energy'? its points: p, energy"
        ],
    ),
    (
        "sample_interval with a kpi: source",
        BASE
        + kpi(name="h", source="aq.no2", operator="mean", window="1 h", sample_interval="1 min")
        + kpi(name="d", source="kpi:h", operator="max", window="1 d", sample_interval="1 h"),
        [
            "kpis[1] (name=d, operator=max) → sample_interval: "
            "a kpi: source takes no sample_interval: the source KPI sets the step"
        ],
    ),
    (
        "device source needs sample_interval (no devices to take it from)",
        BASE + kpi(name="k", source="aq.no2", operator="mean", window="1 h"),
        [
            "kpis[0] (name=k, operator=mean) → sample_interval: "
            'required for a device source: the expected reading period, e.g. "1 min"'
        ],
    ),
    (
        "counter_delta takes no kpi: source",
        BASE
        + kpi(name="h", source="aq.no2", operator="mean", window="1 h", sample_interval="1 min")
        + kpi(name="d", source="kpi:h", operator="counter_delta", window="1 d"),
        [
            "kpis[1] (name=d, operator=counter_delta) → source: "
            "operator counter_delta needs a device source ('device.point'), not kpi:"
        ],
    ),
    (
        "exceedance_count needs a kpi: source and a threshold",
        BASE + kpi(name="k", source="aq.no2", operator="exceedance_count", window="1 y"),
        [
            "kpis[0] (name=k, operator=exceedance_count) → source: "
            'operator exceedance_count counts another KPI\'s outputs: write source = "kpi:NAME"',
            "kpis[0] (name=k, operator=exceedance_count) → threshold: required for operator "
            "exceedance_count",
        ],
    ),
    (
        "demand needs base",
        BASE + DEVICE + kpi(name="k", source="m1.energy", operator="demand", window="1 d"),
        [
            "kpis[0] (name=k, operator=demand) → base: required for operator demand, e.g. base = "
            '"1 h"'
        ],
    ),
    (
        "kpi name twice",
        BASE
        + kpi(name="k", source="aq.no2", operator="mean", window="1 h", sample_interval="1 min")
        + kpi(name="k", source="aq.no2", operator="max", window="1 h", sample_interval="1 min"),
        ["kpis[1] (name=k, operator=max) → name: 'k' is already used by kpis[0]"],
    ),
    (
        "kpi name uppercase",
        BASE
        + kpi(name="NO2", source="aq.no2", operator="mean", window="1 h", sample_interval="1 min"),
        [
            "kpis[0] (name=NO2, operator=mean) → name: use only lowercase letters, digits and '_' "
            "(at least one)"
        ],
    ),
    (
        "kpi operator unknown",
        BASE
        + kpi(name="k", source="aq.no2", operator="median", window="1 h", sample_interval="1 min"),
        [
            "kpis[0] (name=k, operator=median) → operator: must be one of mean, min, max, sum, "
            "count, "
            "percentile, energetic_mean, time_weighted_mean, counter_delta, demand, "
            "exceedance_count, "
            "running_mean, daily_max_running_mean, aqi_us_pm25, min_night_flow, lden"
        ],
    ),
    (
        "kpi unknown key",
        BASE
        + kpi(
            name="k",
            source="aq.no2",
            operator="mean",
            window="1 h",
            sample_interval="1 min",
            colour=1,
        ),
        [f"kpis[0] (name=k, operator=mean) → colour: unknown key; known keys: {KPI_KEYS}"],
    ),
    (
        "kpi source form",
        BASE + kpi(name="k", source="no2", operator="mean", window="1 h", sample_interval="1 min"),
        [
            "kpis[0] (name=k, operator=mean) → source: 'no2' is not a source: write 'device.point' "
            "(e.g. 'meter-1.energy_import') or 'kpi:NAME'"
        ],
    ),
    (
        "coverage above 1",
        BASE
        + kpi(
            name="k",
            source="aq.no2",
            operator="mean",
            window="1 h",
            sample_interval="1 min",
            min_coverage=1.5,
        ),
        ["kpis[0] (name=k, operator=mean) → min_coverage: must be at most 1"],
    ),
    (
        "sample_interval longer than the window",
        BASE + kpi(name="k", source="aq.no2", operator="mean", window="1 h", sample_interval="2 h"),
        ["kpis[0] (name=k, operator=mean) → sample_interval: 2 h is longer than the window (1 h)"],
    ),
    (
        "kpi: steps that do not nest",
        BASE
        + kpi(name="d", source="aq.no2", operator="mean", window="1 d", sample_interval="1 h")
        + kpi(name="h", source="kpi:d", operator="max", window="12 h"),
        [
            "kpis[1] (name=h, operator=max) → source: kpi:d steps by 1 d, which does not nest in "
            "window 12 h"
        ],
    ),
    (
        "aqi window for nowcast",
        BASE
        + kpi(
            name="k",
            source="aq.pm25",
            operator="aqi_us_pm25",
            window="1 d",
            base="1 h",
            sample_interval="1 h",
        ),
        [
            "kpis[0] (name=k, operator=aqi_us_pm25) → window: operator aqi_us_pm25 needs window "
            "'12 h'"
        ],
    ),
    (
        "lden periods out of order",
        BASE
        + kpi(
            name="k",
            source="n.db",
            operator="lden",
            window="1 d",
            sample_interval="1 h",
            day_start="20:00",
        ),
        [
            "kpis[0] (name=k, operator=lden) → evening_start: need day_start < evening_start < "
            "night_start, got 20:00, 19:00, 23:00"
        ],
    ),
    (
        "clock form",
        BASE
        + kpi(
            name="k",
            source="w.flow",
            operator="min_night_flow",
            window="1 d",
            base="1 h",
            sample_interval="1 min",
            night_start="2 am",
        ),
        [
            "kpis[0] (name=k, operator=min_night_flow) → night_start: '2 am' is not a time of day: "
            "write 'HH:MM', e.g. '07:00'"
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in BAD], ids=[c for c, _, _ in BAD]
)
def test_bad_config_lines(tmp_path: Path, files: Path, text: str, expected: list[str]) -> None:
    assert problems_of(tmp_path, text) == expected


def test_table_is_big_enough() -> None:
    assert len(BAD) >= 25


def point_key(line: str) -> str:
    """DEVICE with ``line`` added to its first point."""
    return DEVICE.replace('name = "p"\n', f'name = "p"\n{line}\n')


# Values that validate used to pass and that `run` could not do: each must be refused, located.
PUBACK = "the broker's PUBACK comes a round trip after the whole batch"
RUN_BREAKERS: list[tuple[str, str, list[str]]] = [
    (
        "topic prefix longer than MQTT allows",
        BASE + f'topic_prefix = "{"a" * 70_000}"\n',
        ["uplink.topic_prefix: is 70,000 bytes long: at most 256 bytes of UTF-8"],
    ),
    (
        "topic prefix counted in UTF-8 bytes",
        BASE + f'topic_prefix = "{"é" * 129}"\n',
        ["uplink.topic_prefix: is 258 bytes long: at most 256 bytes of UTF-8"],
    ),
    (
        "topic prefix reserved by the broker",
        BASE + 'topic_prefix = "$SYS/ssc"\n',
        ["uplink.topic_prefix: '$SYS/ssc': topics starting with '$' are reserved by the broker, "
         "e.g. 'ssc/v1'"],
    ),
    (
        "topic prefix with a wildcard",
        BASE + 'topic_prefix = "ssc/+/v1"\n',
        ["uplink.topic_prefix: 'ssc/+/v1': MQTT wildcards # and + are not allowed in a topic "
         "prefix"],
    ),
    (
        "topic prefix with an empty level",
        BASE + 'topic_prefix = "ssc//v1"\n',
        ["uplink.topic_prefix: 'ssc//v1': topic levels must not be empty"],
    ),
    (
        "topic prefix with NUL",
        BASE + 'topic_prefix = "ssc\\u0000v1"\n',
        ["uplink.topic_prefix: 'ssc\\x00v1': control character U+0000 is not allowed here"],
    ),
    (
        "client id with a control character",
        BASE + 'client_id = "gw\\u0007"\n',
        ["uplink.client_id: 'gw\\x07': control character U+0007 is not allowed here"],
    ),
    (
        "broker host longer than DNS allows",
        GATEWAY + f'[uplink]\nbroker = "mqtt://{"h" * 300}:1883"\n',
        [f"uplink.broker: 'mqtt://{'h' * 33}…{'h' * 15}:1883' (312 characters): a host name has "
         "at most 253 characters, 63 per label"],
    ),
    (
        "broker port 0 is not the default port",
        GATEWAY + '[uplink]\nbroker = "mqtt://127.0.0.1:0"\n',
        ["uplink.broker: 'mqtt://127.0.0.1:0': the port must be a number from 1 to 65535"],
    ),
    (
        "device interval never reached",
        BASE + DEVICE.replace('"1 min"', '"1000000000 s"'),
        [f"{DEV} → interval: '1000000000 s' is too long: a duration is at most 3650 d"],
    ),
    (
        "device interval over a day",
        BASE + DEVICE.replace('"1 min"', '"86401 s"'),
        [f"{DEV} → interval: '86401 s' is too long: at most 1 d"],
    ),
    (
        "duration that overflows to infinity",
        BASE + f'[buffer]\nmax_age = "{"9" * 400} d"\n',
        [f"buffer.max_age: '{'9' * 40}…{'9' * 18} d' (402 characters) is too long: a duration "
         "is at most 3650 d"],
    ),
    (
        "data dir with NUL",
        '[gateway]\nid = "gw-1"\ndata_dir = "/var/lib/x\\u0000y"\n' + UPLINK,
        ["gateway.data_dir: a path cannot hold the NUL character (\\u0000)"],
    ),
    (
        "password file with NUL",
        BASE + 'username = "u"\npassword_file = "pw\\u0000"\n',
        ["uplink.password_file: a path cannot hold the NUL character (\\u0000)"],
    ),
    ("point scale nan", BASE + point_key("scale = nan"),
     [f"{DEV} → points[0].scale: must be a finite number"]),
    ("point scale inf", BASE + point_key("scale = -inf"),
     [f"{DEV} → points[0].scale: must be a finite number"]),
    ("point scale 0", BASE + point_key("scale = 0.0"),
     [f"{DEV} → points[0].scale: must not be 0: every value would read 0"]),
    ("point offset nan", BASE + point_key("offset = nan"),
     [f"{DEV} → points[0].offset: must be a finite number"]),
    ("point unit too long", BASE + point_key(f'unit = "{"W" * 33}"'),
     [f"{DEV} → points[0].unit: must be at most 32 characters"]),
    (
        "modbus timeout 1 ms",
        BASE + DEVICE.replace('interval = "1 min"', 'interval = "1 min"\ntimeout = "1 ms"'),
        [f"{DEV} → timeout: '1 ms' is too short: at least 10 ms: an answer takes milliseconds"],
    ),
    (
        "modbus endpoint host too long",
        BASE + DEVICE.replace("127.0.0.1:5020", "h" * 254 + ":502"),
        [f"{DEV} → endpoint: 'tcp://{'h' * 34}…{'h' * 16}:502' (264 characters) is not an "
         "endpoint: write tcp://HOST:PORT (Modbus TCP) or rtu+tcp://HOST:PORT (RTU through a "
         "serial device server), e.g. tcp://10.0.0.5:502"],
    ),
    (
        "publish timeout 1 ms",
        BASE + 'publish_timeout = "1 ms"\n',
        [f"uplink.publish_timeout: '1 ms' is too short: at least 1 s: {PUBACK}"],
    ),
    (
        "publish timeout a year",
        BASE + 'publish_timeout = "365 d"\n',
        [f"uplink.publish_timeout: '365 d' is too long: at most 10 min: {PUBACK}"],
    ),
    (
        "flush interval 1 ms",
        BASE + 'flush_interval = "1 ms"\n',
        ["uplink.flush_interval: '1 ms' is too short: at least 10 ms: each flush is a commit; "
         "a power cut loses up to one interval"],
    ),
    (
        "batch max age 1 ms",
        BASE + 'batch_max_age = "1 ms"\n',
        ["uplink.batch_max_age: '1 ms' is too short: at least 10 ms"],
    ),
    (
        "replay rate that never drains",
        BASE + "replay_rate_per_second = 1e-9\n",
        ["uplink.replay_rate_per_second: must be at least 0.1"],
    ),
    ("buffer max age 1 ms", BASE + '[buffer]\nmax_age = "1 ms"\n',
     ["buffer.max_age: '1 ms' is too short: at least 1 min"]),
    (
        "buffer max age shorter than a batch",
        BASE + 'batch_max_age = "10 min"\n[buffer]\nmax_age = "5 min"\n',
        ["buffer.max_age: '5 min' is not longer than uplink.batch_max_age ('10 min'): every "
         "batch would expire before it is sent"],
    ),
    ("buffer size overflows", BASE + '[buffer]\nmax_bytes = "1e3 GiB"\n',
     ["buffer.max_bytes: '1e3 GiB' is not a size: write a number and a unit (B, KB, MB, GB, "
      "KiB, MiB, GiB), e.g. '256 MiB'"]),
    ("buffer size too large", BASE + '[buffer]\nmax_bytes = "2000 GiB"\n',
     ["buffer.max_bytes: '2000 GiB' is too large: a size is at most 1024 GiB"]),
    (
        "shutdown timeout 1 ms",
        '[gateway]\nid = "gw-1"\nshutdown_timeout = "1 ms"\n' + UPLINK,
        ["gateway.shutdown_timeout: '1 ms' is too short: at least 1 s: time to seal and send the "
         "open batch on SIGTERM"],
    ),
    (
        "kpi lateness 1 ms",
        '[gateway]\nid = "gw-1"\nkpi_lateness = "1 ms"\n' + UPLINK,
        ["gateway.kpi_lateness: '1 ms' is too short: at least 1 s: open KPI windows are held in "
         "memory this long"],
    ),
    (
        "kpi lateness shorter than a flush",
        '[gateway]\nid = "gw-1"\nkpi_lateness = "2 s"\n' + UPLINK + 'flush_interval = "5 s"\n'
        + DEVICE + kpi(name="k", source="m1.p", operator="mean", window="1 h"),
        ["gateway.kpi_lateness: '2 s' is shorter than uplink.flush_interval ('5 s'): readings "
         "reach the KPI engine at each flush, so the last ones of every window would count as "
         "late"],
    ),
    (
        "kpi checkpoint interval 1 ms",
        '[gateway]\nid = "gw-1"\nkpi_checkpoint_interval = "1 ms"\n' + UPLINK,
        ["gateway.kpi_checkpoint_interval: '1 ms' is too short: at least 1 s: a restart replays "
         "the journal since the last save"],
    ),
    (
        "bus timeout 1 ms",
        BASE + BUS + 'timeout = "1 ms"\n',
        ["buses[0] (name=rs485-1) → timeout: '1 ms' is too short: at least 10 ms: an RTU answer "
         "takes milliseconds on the wire"],
    ),
    ("bus pause of hours", BASE + BUS + "inter_frame_ms = 1e9\n",
     ["buses[0] (name=rs485-1) → inter_frame_ms: must be at most 1000"]),
    ("bus port with NUL", BASE + BUS.replace("/dev/ttyUSB0", "/dev/tty\\u0000"),
     ["buses[0] (name=rs485-1) → port: '/dev/tty\\x00': control character U+0000 is not allowed "
      "here"]),
    (
        "metrics address not an address",
        BASE + '[metrics]\nport = 9108\naddress = "every interface"\n',
        ["metrics.address: 'every interface' is not an address to listen on: write an IP "
         "address, e.g. '127.0.0.1', '::1' or '0.0.0.0', or a host name"],
    ),
    (
        "kpi scale 0",
        BASE + DEVICE + kpi(name="k", source="m1.p", operator="mean", window="1 h", scale=0.0),
        ["kpis[0] (name=k, operator=mean) → scale: must not be 0: every input would become 0"],
    ),
    (
        "kpi hold beyond 64-bit milliseconds",
        BASE + DEVICE + kpi(name="k", source="m1.p", operator="time_weighted_mean",
                            window="1 h", max_hold="99999999999999999999 h"),
        ["kpis[0] (name=k, operator=time_weighted_mean) → max_hold: '99999999999999999999 h' is "
         "too long: at most 744 h (31 days)"],
    ),
    (
        "kpi scale nan",
        BASE + DEVICE + kpi(name="k", source="m1.p", operator="mean", window="1 h",
                              scale=float("nan")),
        ["kpis[0] (name=k, operator=mean) → scale: must be a finite number"],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [(t, e) for _, t, e in RUN_BREAKERS],
    ids=[c for c, _, _ in RUN_BREAKERS],
)
def test_values_run_cannot_do_are_refused(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert problems_of(tmp_path, text) == expected


def test_every_duration_key_has_a_floor_and_a_ceiling(tmp_path: Path) -> None:
    """1 ms and 5000 d are refused for every duration key of the agent's own sections."""
    keys = {
        "gateway": ["shutdown_timeout", "kpi_lateness", "kpi_checkpoint_interval"],
        "uplink": ["keepalive", "publish_timeout", "batch_max_age", "flush_interval"],
        "buffer": ["max_age"],
    }
    for section, names in keys.items():
        for name in names:
            for value in ("1 ms", "5000 d"):
                line = f'{name} = "{value}"\n'
                text = {
                    "gateway": GATEWAY + line + UPLINK,
                    "uplink": BASE + line,
                    "buffer": BASE + "[buffer]\n" + line,
                }[section]
                lines = problems_of(tmp_path, text)
                assert any(problem.startswith(f"{section}.{name}: '{value}'")
                           for problem in lines), lines


def test_long_values_are_echoed_as_a_short_excerpt(tmp_path: Path) -> None:
    name = "n" * 100_000
    text = BASE + DEVICE.replace('name = "m1"', f'name = "{name}"') + DEVICE.replace(
        'name = "m1"', f'name = "{name}"')
    lines = problems_of(tmp_path, text)
    assert lines, "a 100,000-character name must be refused"
    for line in lines:
        assert len(line) < 400, line[:200]
        assert "n" * 61 not in line
    assert lines[0].startswith(f"devices[0] (name={'n' * 40}…{'n' * 20}, driver=modbus) → name: ")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("short 'value' stays", "short 'value' stays"),
        (f"x {'a' * 100} y", f"x {'a' * 100} y"),
        (f"x {'a' * 101} y", f"x {'a' * 40}…{'a' * 20} (101 characters) y"),
        (f"x: {'b c ' * 50!r}", f"x: '{('b c ' * 10)}…{('b c ' * 5)}' (200 characters)"),
        (f"x: {('it' + chr(39)) * 60!r}",
         f"x: \"{(('it' + chr(39)) * 60)[:40]}…{(('it' + chr(39)) * 60)[-20:]}\" (180 characters)"),
    ],
)
def test_shorten_cuts_long_values(line: str, expected: str) -> None:
    assert shorten(line) == expected


def test_shorten_caps_a_line_of_many_short_words() -> None:
    line = shorten("word " * 1000)
    assert len(line) < 700
    assert line.endswith("… (5,000 characters)")


def test_four_independent_errors_four_lines(tmp_path: Path) -> None:
    text = (
        '[gateway]\nid = "gw 1"\n'
        + UPLINK
        + "max_inflight = 500\n"
        + DEVICE.replace('type = "u32"', 'type = "u17"')
        + kpi(name="k", source="m1.p", operator="mean", window="1 h", threshold=1.0)
    )
    assert problems_of(tmp_path, text) == [
        "gateway.id: use only letters, digits, '_' and '-' (at least one)",
        "uplink.max_inflight: must be at most 100",
        f"{DEV} → points[1].type: must be one of u16, i16, u32, i32, u64, i64, f32, f64, bool",
        "kpis[0] (name=k, operator=mean) → threshold: operator mean does not take threshold; "
        "remove it",
    ]


def test_toml_syntax_error_is_one_line_with_position(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nid = "gw-1"\ntimezone = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path, driver_models=DRIVERS)
    assert info.value.problems == [f"{path}:3:12: Invalid value"]


def test_toml_error_at_end_of_document(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nid = "gw-1"\nx = [1,')
    with pytest.raises(ConfigError) as info:
        load_config(path, driver_models=DRIVERS)
    [line] = info.value.problems
    assert line.startswith(f"{path}:3:8: ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"config file {path} does not exist"]


def test_driver_that_failed_to_load_is_named_at_the_device(tmp_path: Path) -> None:
    from agent.config.loader import _DriverTable, _Loader

    loader = _Loader(
        {"gateway": {"id": "g"}, "devices": [{"name": "m", "driver": "broken"}]},
        None,
        _DriverTable({}, {"broken": "import failed: ModuleNotFoundError('x')"}),
        check_sources=True,
    )
    with pytest.raises(ConfigError) as info:
        loader.run(None, require_uplink=False)
    assert info.value.problems == [
        "devices[0] (name=m, driver=broken) → driver: driver 'broken' could not be loaded: "
        "import failed: ModuleNotFoundError('x')"
    ]


# --- the examples of the docs ----------------------------------------------------------------


def test_example_config_validates_with_installed_drivers() -> None:
    config = load_config(REPO / "config" / "example.toml")  # discover(): the real modbus driver
    assert config.gateway.id == "gw-017"
    assert config.uplink is not None
    assert config.uplink.broker_address.tls
    assert config.uplink.client_id == "gw-017"
    [device] = config.devices
    assert isinstance(device, ModbusDeviceConfig)
    assert device.endpoint == "tcp://10.0.0.5:502"
    assert "energy_import" in [p.name for p in device.points]  # from the eastron-sdm630 profile
    [bus] = config.buses
    assert bus.name == "rs485-1"
    [energy] = config.kpis
    assert str(energy.sample_interval) == "15 s"  # the device's interval


KPIS_MD_SECTION_5 = """
[gateway]
id = "gw-017"
timezone = "Europe/Berlin"

[[kpis]]
name = "no2_1h"
source = "aq-1.no2"
operator = "mean"
window = "1 h"
sample_interval = "1 min"
scale = 1.912513
unit = "µg/m³"

[[kpis]]
name = "no2_hours_over_200"
source = "kpi:no2_1h"
operator = "exceedance_count"
window = "1 y"
threshold = 200.0
min_coverage = 0.9
"""


def test_kpis_md_example_validates_for_replay(tmp_path: Path) -> None:
    config = load_text(tmp_path, KPIS_MD_SECTION_5, require_uplink=False)
    assert config.uplink is None
    assert [k.name for k in config.kpis] == ["no2_1h", "no2_hours_over_200"]
    assert config.kpis[1].source_kpi == "no2_1h"
    assert config.kpis[0].source_device == ("aq-1", "no2")
    assert config.gateway.tz.key == "Europe/Berlin"


# Every worked example of docs/kpis.md §6 and the city KPIs of §5, as [[kpis]] tables.
GOOD_KPIS: list[tuple[str, str]] = [
    (
        "E1 mean",
        kpi(name="e1", source="s.x", operator="mean", window="1 h", sample_interval="15 min"),
    ),
    (
        "E2 counter",
        kpi(
            name="e2",
            source="s.x",
            operator="counter_delta",
            window="1 h",
            sample_interval="15 min",
            modulus=1000.0,
            max_delta=50.0,
        ),
    ),
    (
        "E3 energetic",
        kpi(
            name="e3",
            source="s.x",
            operator="energetic_mean",
            window="1 h",
            sample_interval="10 min",
        ),
    ),
    ("E4 lden", kpi(name="e4", source="s.x", operator="lden", window="1 d", sample_interval="1 h")),
    (
        "E5 running",
        kpi(
            name="e5",
            source="s.x",
            operator="running_mean",
            window="8 h",
            base="1 h",
            sample_interval="1 h",
        ),
    ),
    (
        "E6 nowcast",
        kpi(
            name="e6",
            source="s.x",
            operator="aqi_us_pm25",
            averaging="nowcast",
            window="12 h",
            base="1 h",
            sample_interval="1 h",
        ),
    ),
    (
        "E7 exceedance",
        kpi(name="pm10_day", source="s.x", operator="mean", window="1 d", sample_interval="24 h")
        + kpi(
            name="pm10_days_over_50",
            source="kpi:pm10_day",
            operator="exceedance_count",
            window="1 mo",
            threshold=50.0,
            min_coverage=0.0,
        ),
    ),
    (
        "E8 demand",
        kpi(
            name="e8",
            source="s.x",
            operator="demand",
            window="30 min",
            base="15 min",
            sample_interval="5 min",
        ),
    ),
    (
        "E9 time-weighted",
        kpi(
            name="e9",
            source="s.x",
            operator="time_weighted_mean",
            window="1 h",
            sample_interval="5 min",
            max_hold="15 min",
            min_coverage=0.5,
        ),
    ),
    (
        "PM10 year",
        kpi(
            name="pm10_y",
            source="s.x",
            operator="mean",
            window="1 y",
            base="1 h",
            sample_interval="1 min",
            min_coverage=0.9,
        ),
    ),
    (
        "O3",
        kpi(
            name="o3",
            source="s.x",
            operator="daily_max_running_mean",
            window="1 d",
            base="1 h",
            running_window="8 h",
            sample_interval="1 min",
            scale=1.995352,
        )
        + kpi(
            name="o3_days",
            source="kpi:o3",
            operator="exceedance_count",
            window="1 y",
            threshold=120.0,
        ),
    ),
    (
        "AQI daily",
        kpi(
            name="aqi_d",
            source="s.x",
            operator="aqi_us_pm25",
            averaging="daily",
            window="1 d",
            base="1 h",
            sample_interval="1 min",
        ),
    ),
    (
        "percentile of a day of 1-s values, no base (86,400 kept)",
        kpi(name="l90", source="s.x", operator="percentile", q=90.0, window="1 d",
            sample_interval="1 s"),
    ),
    (
        "percentile of a year of 1-min values over daily bases",
        kpi(name="p99y", source="s.x", operator="percentile", q=99.0, window="1 y",
            base="1 d", sample_interval="1 min"),
    ),
    (
        "percentile",
        kpi(
            name="p99",
            source="s.x",
            operator="percentile",
            q=99.0,
            window="1 d",
            base="1 h",
            sample_interval="1 min",
        ),
    ),
    ("count", kpi(name="n", source="s.x", operator="count", window="1 d", sample_interval="1 min")),
    (
        "water night flow",
        kpi(
            name="water_h",
            source="s.x",
            operator="counter_delta",
            window="1 h",
            sample_interval="1 min",
        )
        + kpi(
            name="mnf",
            source="kpi:water_h",
            operator="min_night_flow",
            window="1 d",
            night_start="01:00",
            night_end="05:00",
        ),
    ),
    (
        "noise lden year",
        kpi(
            name="lden_y",
            source="s.x",
            operator="lden",
            window="1 y",
            base="1 h",
            sample_interval="1 s",
        ),
    ),
    (
        "climate",
        kpi(name="tmax", source="s.x", operator="max", window="1 d", sample_interval="10 min")
        + kpi(
            name="hot_days",
            source="kpi:tmax",
            operator="exceedance_count",
            window="1 y",
            threshold=30.0,
        ),
    ),
    (
        "sum with base",
        kpi(
            name="rain",
            source="s.x",
            operator="sum",
            window="1 mo",
            base="1 d",
            base_min_coverage=0.5,
            sample_interval="10 min",
        ),
    ),
]


@pytest.mark.parametrize("table", [t for _, t in GOOD_KPIS], ids=[n for n, _ in GOOD_KPIS])
def test_good_kpi_combinations_validate(tmp_path: Path, table: str) -> None:
    config = load_text(tmp_path, GATEWAY + table, require_uplink=False)
    assert config.kpis


def test_sample_interval_defaults_to_the_device_interval(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, BASE + DEVICE + kpi(name="k", source="m1.p", operator="mean", window="1 h")
    )
    assert str(config.kpis[0].sample_interval) == "1 min"
    assert config.kpis[0].sample_interval_duration == KpiDuration(1, "min")


def test_check_sources_off_skips_the_device_check(tmp_path: Path) -> None:
    text = (
        BASE
        + DEVICE
        + kpi(name="k", source="other.x", operator="mean", window="1 h", sample_interval="1 min")
    )
    assert problems_of(tmp_path, text)[0].startswith(
        "kpis[0] (name=k, operator=mean) → source: no device"
    )
    assert load_text(tmp_path, text, check_sources=False).kpis[0].source == "other.x"


def test_kpi_model_checks_rules_without_the_loader() -> None:
    with pytest.raises(ValueError, match="threshold: operator mean does not take threshold"):
        KpiConfig.model_validate(
            {
                "name": "k",
                "source": "a.b",
                "operator": "mean",
                "window": "1 h",
                "sample_interval": "1 min",
                "threshold": 1.0,
            }
        )


@pytest.mark.parametrize(
    ("operator", "source", "given", "keys"),
    [
        ("mean", "a.b", {"sample_interval"}, []),
        ("mean", "a.b", set(), ["sample_interval"]),
        ("count", "a.b", {"sample_interval", "base", "min_coverage"}, ["base", "min_coverage"]),
        ("time_weighted_mean", "kpi:x", {"base"}, ["source", "base"]),
        ("counter_delta", "a.b", {"sample_interval", "q", "threshold"}, ["threshold", "q"]),
        ("running_mean", "a.b", {"sample_interval"}, ["base"]),
        ("daily_max_running_mean", "a.b", {"sample_interval", "base"}, ["running_window"]),
        ("aqi_us_pm25", "kpi:x", set(), ["source"]),
        ("min_night_flow", "kpi:x", {"night_start"}, []),
        ("min_night_flow", "a.b", {"sample_interval"}, ["base"]),
        ("lden", "kpi:x", {"base"}, ["base"]),
        ("mean", "kpi:x", {"base_min_coverage"}, ["base_min_coverage"]),
        ("mean", "a.b", {"sample_interval", "base_min_coverage"}, ["base_min_coverage"]),
        ("exceedance_count", "kpi:x", {"threshold"}, []),
        ("percentile", "kpi:x", {"q", "averaging"}, ["averaging"]),
    ],
)
def test_kpi_key_rules(operator: str, source: str, given: set[str], keys: list[str]) -> None:
    assert [key for key, _ in kpi_key_problems(operator, source, given)] == keys


# --- KPI durations (pure) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15 min", KpiDuration(15, "min")),
        ("1 d", KpiDuration(1, "d")),
        ("1 mo", KpiDuration(1, "mo")),
        ("1 y", KpiDuration(1, "y")),
        ("24 h", KpiDuration(24, "h")),
        ("30s", KpiDuration(30, "s")),
    ],
)
def test_parse_kpi_duration(text: str, expected: KpiDuration) -> None:
    assert parse_kpi_duration(text) == expected


@pytest.mark.parametrize("text", ["", "15", "1.5 h", "0 min", "2 d", "3 mo", "1 w", "1 ms", "-1 s"])
def test_parse_kpi_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text).replace("(", r"\(")):
        parse_kpi_duration(text)


@pytest.mark.parametrize(
    ("inner", "outer", "nests"),
    [
        ("1 h", "1 d", True),
        ("15 min", "1 h", True),
        ("45 min", "1 h", False),
        ("1 h", "1 h", True),
        ("1 d", "1 mo", True),
        ("1 mo", "1 y", True),
        ("1 y", "1 mo", False),
        ("1 d", "12 h", False),
        ("7 min", "1 d", False),
    ],
)
def test_nests_in(inner: str, outer: str, nests: bool) -> None:
    assert nests_in(parse_kpi_duration(inner), parse_kpi_duration(outer)) is nests


@given(st.integers(1, 86400), st.sampled_from(["s", "min", "h"]))
def test_fixed_durations_round_trip_and_align(count: int, unit: str) -> None:
    duration = parse_kpi_duration(f"{count} {unit}")
    assert parse_kpi_duration(str(duration)) == duration
    assert is_day_aligned(duration) == (86400 % duration.seconds == 0)


@given(
    st.sampled_from([d for d in range(1, 86401) if 86400 % d == 0]),
    st.sampled_from([d for d in range(1, 86401) if 86400 % d == 0]),
)
def test_nesting_of_day_aligned_lengths_is_divisibility(a: int, b: int) -> None:
    inner, outer = KpiDuration(a, "s"), KpiDuration(b, "s")
    assert nests_in(inner, outer) == (b % a == 0)
    assert nests_in(inner, KpiDuration(1, "d"))


def test_parse_clock() -> None:
    assert parse_clock("07:30").hour == 7
    with pytest.raises(ValueError, match="HH:MM"):
        parse_clock("24:00")


# --- profiles --------------------------------------------------------------------------------

PROFILE = """
[profile]
name = "test-meter"
driver = "modbus"

[defaults]
max_gap = 4
retries = 3

[[points]]
name = "voltage"
address = 0
table = "input"
type = "f32"
scale = 1.0
unit = "V"

[[points]]
name = "current"
address = 2
table = "input"
type = "f32"
unit = "A"
"""


def test_profile_merge_inline_point_overrides_key_by_key(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "test-meter.toml").write_text(PROFILE)
    text = (
        BASE
        + """
[[devices]]
name = "m1"
driver = "modbus"
endpoint = "tcp://127.0.0.1:5020"
profile = "profiles/test-meter.toml"
retries = 0
[[devices.points]]
name = "voltage"
scale = 0.1
[[devices.points]]
name = "status"
address = 10
"""
    )
    [device] = load_text(tmp_path, text).devices
    assert isinstance(device, ModbusDeviceConfig)
    assert [p.name for p in device.points] == ["voltage", "current", "status"]
    voltage = device.points[0]
    assert (voltage.scale, voltage.unit, voltage.address, voltage.type.value) == (
        0.1,
        "V",
        0,
        "f32",
    )
    assert device.max_gap == 4  # from the profile's defaults
    assert device.retries == 0  # the device's own key wins


def test_profile_errors_are_located_after_merge(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(
        PROFILE.replace('type = "f32"\nunit = "A"', 'type = "f33"\nunit = "A"')
    )
    text = (
        BASE + '[[devices]]\nname = "m1"\ndriver = "modbus"\nendpoint = "tcp://127.0.0.1:502"\n'
        'profile = "p.toml"\n'
    )
    assert problems_of(tmp_path, text) == [
        f"{DEV} → points[1].type: must be one of u16, i16, u32, i32, u64, i64, f32, f64, bool"
    ]


def test_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    text = (
        BASE + '[[devices]]\nname = "m1"\ndriver = "modbus"\nendpoint = "tcp://127.0.0.1:502"\n'
        'profile = "nope"\n'
    )
    known = available_profiles()
    assert "eastron-sdm630" in known
    [line, *rest] = problems_of(tmp_path, text)
    assert line == f"{DEV} → profile: no profile named 'nope' (known: {', '.join(known)})"
    assert rest == [f"{DEV} → points: required"]  # nothing to merge: both errors at once


def test_profile_for_another_driver(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(PROFILE.replace('driver = "modbus"', 'driver = "mbus"'))
    text = BASE + DEVICE.replace('interval = "1 min"', 'profile = "p.toml"')
    assert problems_of(tmp_path, text) == [
        f"{DEV} → profile: profile 'test-meter' is for driver 'mbus', not 'modbus'"
    ]


# --- paths, files and secrets ----------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, files: Path) -> None:
    text = (
        '[gateway]\nid = "gw-1"\ndata_dir = "state"\n'
        + UPLINK_TLS
        + 'username = "gw"\npassword_file = "pw"\nca_file = "ca.pem"\ncert_file = "cert.pem"\n'
        'key_file = "key.pem"\n'
    )
    config = load_text(tmp_path, text)
    assert config.gateway.data_dir == tmp_path / "state"
    assert not (tmp_path / "state").exists()  # validation creates nothing
    assert config.uplink is not None
    assert config.uplink.ca_file == tmp_path / "ca.pem"
    assert config.uplink.read_password() == SECRET
    assert config.source_path == tmp_path / "config.toml"


def test_missing_tls_files_are_named(tmp_path: Path) -> None:
    text = GATEWAY + UPLINK_TLS + 'ca_file = "certs/ca.pem"\n'
    assert problems_of(tmp_path, text) == [
        f"uplink.ca_file: file {tmp_path / 'certs/ca.pem'} does not exist "
        "(a relative path starts at the config file's folder)"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_password_file_is_named_not_shown(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SECRET)
    pw.chmod(0)
    text = BASE + 'username = "gw"\npassword_file = "pw"\n'
    problems = problems_of(tmp_path, text)
    assert problems == [f"uplink.password_file: file {pw} cannot be read: Permission denied"]


@pytest.mark.parametrize(
    ("content", "extra", "expected_part"),
    [
        (SECRET.encode() + b"\xff\xfe", 'username = "gw"\n', "is not UTF-8 text"),
        (b"\n" + SECRET.encode(), 'username = "gw"\n', "is empty"),
        (SECRET.encode(), "", "needs username too"),
        (SECRET.encode(), f'username = "gw"\npassword = "{SECRET}"\n', "password: unknown key"),
        (SECRET.encode(), 'username = "gw"\nbroker = "x"\n', None),
    ],
)
def test_password_never_appears_in_errors(
    tmp_path: Path, content: bytes, extra: str, expected_part: str | None
) -> None:
    (tmp_path / "pw").write_bytes(content)
    text = GATEWAY + '[uplink]\npassword_file = "pw"\n' + extra
    if "broker" not in extra:
        text += 'broker = "mqtt://127.0.0.1"\n'
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, driver_models=DRIVERS)
    joined = "\n".join(info.value.problems)
    assert SECRET not in joined
    assert SECRET not in str(info.value)
    if expected_part is not None:
        assert expected_part in joined


def test_credentials_in_the_broker_url_are_not_echoed(tmp_path: Path) -> None:
    for broker in (f"mqtt://gw:{SECRET}@127.0.0.1", f"tcp://gw:{SECRET}@127.0.0.1"):
        problems = problems_of(tmp_path, GATEWAY + f'[uplink]\nbroker = "{broker}"\n')
        assert problems == [
            "uplink.broker: put no credentials in the broker URL: use username and password_file"
        ]


# --- the loaded model ------------------------------------------------------------------------


def test_defaults_and_parsed_helpers(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE + BUS + DEVICE)
    assert config.gateway.timezone == "UTC"
    assert config.gateway.log_level == "info"
    up = config.uplink
    assert up is not None
    assert up.client_id == "gw-1"
    assert up.broker_address.port == 1883
    assert not up.broker_address.tls
    assert (up.keepalive.seconds, up.publish_timeout.seconds) == (30.0, 20.0)
    assert (up.batch_max_age.seconds, up.flush_interval.seconds) == (10.0, 1.0)
    assert (up.batch_max_readings, up.max_inflight, up.replay_rate_per_second) == (20000, 8, 50.0)
    assert (up.compression, up.zstd_level) == ("zstd", 3)
    assert config.buffer.max_bytes.bytes == 256 * 1024**2
    assert config.buffer.max_age.seconds == 30 * 86400
    assert (config.buffer.when_full, config.buffer.sync) == ("drop_oldest", "full")
    bus = config.buses_by_name["rs485-1"]
    assert (bus.baudrate, bus.parity, bus.stopbits, bus.bytesize) == (9600, "N", 1, 8)
    assert (bus.timeout.seconds, bus.inter_frame_seconds) == (1.0, 0.005)
    assert isinstance(config.devices_by_name["m1"], ModbusDeviceConfig)


def test_models_are_frozen(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE)
    with pytest.raises(AttributeError, match="frozen"):
        config.gateway.id = "other"  # type: ignore[misc]


def test_config_from_dict_matches_the_file_loader(tmp_path: Path) -> None:
    data = {"gateway": {"id": "g"}, "uplink": {"broker": "mqtt://h"}, "buffer": {"when_full": "x"}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, driver_models=DRIVERS)
    assert info.value.problems == ["buffer.when_full: must be one of drop_oldest, drop_newest"]


def test_batch_max_readings_limit_is_half_the_wire_limit() -> None:
    from agent.config import BATCH_MAX_READINGS_LIMIT, WIRE_MAX_READINGS, WIRE_MAX_SERIES
    from agent.wire import MAX_BATCH_READINGS, MAX_BATCH_SERIES

    assert BATCH_MAX_READINGS_LIMIT == MAX_BATCH_READINGS // 2
    assert (WIRE_MAX_READINGS, WIRE_MAX_SERIES) == (MAX_BATCH_READINGS, MAX_BATCH_SERIES)


def test_devices_of_one_profile_share_its_point_models(tmp_path: Path) -> None:
    """1,000 meters of one profile hold one copy of its points, not 1,000 (memory per device)."""
    devices = "".join(
        f'[[devices]]\nname = "m{i}"\ndriver = "modbus"\nendpoint = "tcp://127.0.0.1:502"\n'
        'profile = "ssc-demo-meter"\n'
        for i in range(3)
    ) + ('[[devices.points]]\nname = "voltage_l1"\nscale = 0.5\n')
    config = load_text(tmp_path, BASE + devices)
    a, b, c = (d.points for d in config.devices)  # type: ignore[attr-defined]
    assert a == b and all(p is q for p, q in zip(a, b, strict=True))
    overridden = {p.name: p for p in c}["voltage_l1"]
    assert overridden.scale == 0.5
    assert overridden is not {p.name: p for p in a}["voltage_l1"]
    assert sum(p is q for p, q in zip(a, c, strict=True)) == len(a) - 1


def test_a_missing_profile_is_reported_at_every_device_that_names_it(tmp_path: Path) -> None:
    devices = "".join(
        f'[[devices]]\nname = "m{i}"\ndriver = "modbus"\nendpoint = "tcp://127.0.0.1:502"\n'
        'profile = "no-such-meter"\n'
        for i in range(2)
    )
    lines = [line for line in problems_of(tmp_path, BASE + devices) if "→ profile:" in line]
    assert [line.split(" → ")[0] for line in lines] == [
        "devices[0] (name=m0, driver=modbus)", "devices[1] (name=m1, driver=modbus)"]
    assert all("no profile named 'no-such-meter'" in line for line in lines)


# --- reconnect bounds --------------------------------------------------------------------------


def test_reconnect_bounds_default_and_parse(tmp_path: Path) -> None:
    up = load_text(tmp_path, BASE + BUS + DEVICE).uplink
    assert up is not None and (up.reconnect_min.text, up.reconnect_max.text) == ("500 ms", "5 s")
    text = GATEWAY + UPLINK + 'reconnect_min = "2 s"\nreconnect_max = "30 s"\n' + BUS + DEVICE
    up = load_text(tmp_path, text).uplink
    assert up is not None and (up.reconnect_min.text, up.reconnect_max.text) == ("2 s", "30 s")


@pytest.mark.parametrize(("keys", "problem"), [
    ('reconnect_min = "50 ms"\n',
     "uplink.reconnect_min: '50 ms': must be between 100 ms and 1 h"),
    ('reconnect_max = "2 h"\n', "uplink.reconnect_max: '2 h': must be between 100 ms and 1 h"),
    ('reconnect_min = "10 s"\n',
     "uplink.reconnect_max: '5 s' is shorter than reconnect_min ('10 s'): make it longer"),
    ('reconnect_max = "soon"\n', "uplink.reconnect_max:"),
])
def test_reconnect_bounds_are_checked_and_located(tmp_path: Path, keys: str,
                                                  problem: str) -> None:
    problems = problems_of(tmp_path, GATEWAY + UPLINK + keys + BUS + DEVICE)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def _devices(n: int, points: int, interval: str) -> str:
    point_tables = "".join(f'[[devices.points]]\nname = "p{j}"\naddress = {j}\n'
                           for j in range(points))
    return "".join(f'[[devices]]\nname = "m{i}"\ndriver = "modbus"\n'
                   f'endpoint = "tcp://127.0.0.1:{5020 + i}"\ninterval = "{interval}"\n'
                   + point_tables for i in range(n))


def test_configs_whose_batches_exceed_the_wire_limits_are_refused(tmp_path: Path) -> None:
    # 100 devices × 200 points at 1 s, flushed every 9 s: up to 200,000 readings per flush.
    fleet = _devices(100, 200, "1 s")
    text = GATEWAY + UPLINK + 'flush_interval = "9 s"\nbatch_max_age = "10 s"\n' + fleet
    assert problems_of(tmp_path, text) == [
        "uplink.batch_max_readings: 20,000 plus up to 200,000 readings of one flush_interval "
        "(9 s) makes batches of up to 220,000 readings, over the 200,000 a batch may carry: "
        "lower batch_max_readings or flush_interval"
    ]
    # The same fleet flushed every second fits (40,000 readings per flush).
    assert load_text(tmp_path, GATEWAY + UPLINK + fleet).devices[99].name == "m99"
    assert problems_of(tmp_path, GATEWAY + UPLINK + _devices(251, 200, "1 min")) == [
        "devices: 50,200 points over all devices: a batch may carry at most 50,000 series "
        "(docs/wire-format.md §11.1); split the gateway"
    ]


POINT_LINE = ("kpis[0] (name=k, operator=mean) → source: device 'm1' has no point 'enrgy'; "
              "did you mean 'energy'? its points: p, energy")


@pytest.mark.parametrize(
    ("interval", "sample_interval", "kpi_lines"),
    [
        # The interval does not parse: the device and the KPIs on it are still checked.
        ('"often"', 'sample_interval = "1 min"\n', [POINT_LINE]),
        # Nor is a sample_interval taken from it.
        ('"often"', "", [POINT_LINE,
                         "kpis[0] (name=k, operator=mean) → sample_interval: required for a "
                         'device source: the expected reading period, e.g. "1 min"']),
    ],
)
def test_a_device_interval_that_does_not_parse_hides_no_other_problem(
    tmp_path: Path, interval: str, sample_interval: str, kpi_lines: list[str]
) -> None:
    text = BASE + DEVICE.replace('interval = "1 min"', f"interval = {interval}") + (
        '[[kpis]]\nname = "k"\nsource = "m1.enrgy"\noperator = "mean"\nwindow = "1 h"\n'
        + sample_interval
    )
    assert problems_of(tmp_path, text) == [
        f"{DEV} → interval: 'often' is not a duration: write a number and a unit "
        "(ms, s, min, h, d), e.g. '15 s'",
        *kpi_lines,
    ]
