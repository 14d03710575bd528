"""Loading a config: read the TOML file, merge device profiles, validate every table and
what spans tables (names, buses, KPI sources and cycles, batch sizes), and report every
problem at once as a :class:`~agent.errors.ConfigError`, one line each.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.kpi import _field_order, _source_kind, kpi_key_problems, kpi_value_problems
from agent.config.messages import _M, _header, _Item
from agent.config.models import (
    _DEFER_KPI_RULES,
    SECTIONS,
    AgentConfig,
    BufferConfig,
    BusConfig,
    GatewayConfig,
    KpiConfig,
    MetricsConfig,
    RemoteConfigSection,
    StatusPageConfig,
    UplinkConfig,
)
from agent.config.rules import (
    DEVICE_INTERVAL_BOUNDS,
    UNLISTED_POINTS,
    WIRE_MAX_READINGS,
    WIRE_MAX_SERIES,
    _cycle_from,
    _file_problems,
    _kpi_period,
)
from agent.driver import DeviceConfig, discover
from agent.errors import ConfigError
from agent.profiles import Profile, apply_profile, load_profile
from agent.units import Duration, nests_in, parse_kpi_length


def load_config(
    path: Path,
    *,
    driver_models: Mapping[str, type[DeviceConfig]] | None = None,
    require_uplink: bool = True,
    check_sources: bool = True,
) -> AgentConfig:
    """Read and validate a TOML config file; ConfigError lists every problem, one line each."""
    data = read_toml_file(path)
    return config_from_dict(
        data,
        base_dir=path.parent,
        source_path=path,
        driver_models=driver_models,
        require_uplink=require_uplink,
        check_sources=check_sources,
    )


def read_toml_file(path: Path, what: str = "config file") -> dict[str, Any]:
    """The tables of a TOML file; ConfigError in one line when it cannot be read or parsed
    (``FILE:LINE:COLUMN: …`` for TOML syntax). ``what`` names the file's kind in the line."""
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"{what} {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from exc
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_error_line(path, text, exc)) from exc


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
    check_files: bool = True,
) -> AgentConfig:
    """Validate a parsed config table; relative paths resolve against ``base_dir``. Without
    ``check_files``, the files ``[uplink]`` names are not looked at (a config checked on the
    platform for a gateway that holds them: ``ssc-agent fleet push-config``)."""
    drivers = _DriverTable.of(driver_models, _driver_names(data))
    loader = _Loader(data, base_dir, drivers, check_sources=check_sources)
    loader.check_files = check_files
    return loader.run(source_path, require_uplink=require_uplink)


def _driver_names(data: Mapping[str, Any]) -> set[str]:
    """The drivers the device tables name: only these are loaded."""
    devices = data.get("devices")
    if not isinstance(devices, list):
        return set()
    return {t["driver"] for t in devices
            if isinstance(t, dict) and isinstance(t.get("driver"), str)}


@dataclass(frozen=True)
class _DriverTable:
    models: Mapping[str, type[DeviceConfig]]
    broken: Mapping[str, str]  # driver name → why it could not be loaded
    complete: bool = True  # False: only the drivers the config names were loaded

    @classmethod
    def of(cls, driver_models: Mapping[str, type[DeviceConfig]] | None,
           names: set[str] | None = None) -> _DriverTable:
        if driver_models is not None:
            return cls(driver_models, {})
        models: dict[str, type[DeviceConfig]] = {}
        broken: dict[str, str] = {}
        for name, entry in discover(names).items():
            if entry.spec is not None:
                models[name] = entry.spec.config_model
            else:
                broken[name] = entry.error or "unknown error"
        return cls(models, broken, names is None)

    @property
    def installed(self) -> str:
        # An error message only: this is where a config naming no installed driver pays for
        # loading every driver.
        models = self.models if self.complete else _DriverTable.of(None).models
        return "installed drivers: " + (", ".join(sorted(models)) or "none")


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
        self.check_files = True
        self.items: list[_Item] = []
        self.context: dict[str, Any] = {"base_dir": base_dir, _DEFER_KPI_RULES: True}
        # Device tables after profile merging, by name: KPI sources are checked against them.
        self.device_tables: dict[str, dict[str, Any]] = {}
        self.device_models: dict[str, DeviceConfig] = {}
        self.profiles: dict[str, Profile | OSError | ValueError] = {}
        # Devices validated without their interval, which did not parse (reported with them).
        self.without_interval: set[int] = set()

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
        status_page = self._table("status_page", StatusPageConfig, required=False)
        buses = self._buses()
        devices = self._devices({bus.name for bus in buses} | self._raw_names("buses"))
        kpis = self._kpis()
        remote = self._table("remote_config", RemoteConfigSection, required=False)
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
            status_page=status_page or StatusPageConfig(),
            buses=buses,
            devices=devices,
            kpis=kpis,
            remote_config=remote or RemoteConfigSection(),
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
        if buffer is not None and buffer.max_age.seconds <= uplink.batch_max_age.seconds:
            self.item("buffer", listed=False).add(("max_age",), (
                f"{buffer.max_age.text!r} is not longer than uplink.batch_max_age "
                f"({uplink.batch_max_age.text!r}): every batch would expire before it is sent"))
        lateness = gateway.kpi_lateness if has_kpis and gateway is not None else None
        if lateness is not None and lateness.seconds < uplink.flush_interval.seconds:
            self.item("gateway", listed=False).add(("kpi_lateness",), (
                f"{lateness.text!r} is shorter than uplink.flush_interval "
                f"({uplink.flush_interval.text!r}): readings reach the KPI engine at each flush, "
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
            if id(device) in self.without_interval:
                continue  # its interval is reported with the device
            interval = device.interval.seconds
            per_flush += n * (int(uplink.flush_interval.seconds // max(interval, 1e-3)) + 1)
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
        if section == "uplink" and self.check_files:
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

    def _tables(self, section: str, raws: list[object]) -> Iterator[tuple[int, dict[str, Any]]]:
        """The items of ``[[section]]`` that are tables, by index; a line for each other one."""
        for i, raw in enumerate(raws):
            if isinstance(raw, dict):
                yield i, raw
            else:
                self.item(f"{section}[{i}]", listed=True).add((), "must be a table")

    def _buses(self) -> list[BusConfig]:
        out: list[BusConfig] = []
        names: dict[str, int] = {}
        ports: dict[str, int] = {}
        for i, raw in self._tables("buses", self._list("buses")):
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
        for i, raw in self._tables("devices", self._list("devices")):
            name, driver = raw.get("name"), raw.get("driver")
            item = self.item(f"devices[{i}]{_header(name=name, driver=driver)}", listed=True)
            model = self._driver_model(driver, item)
            table = self._merge_profile(raw, driver, model, item)
            checked = self._interval_checked(table, item)
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
            device = item.validate(model, checked, self.context) if model is not None else None
            if device is not None:
                out.append(device)
                if "interval" in table and "interval" not in checked:
                    self.without_interval.add(id(device))
                if is_first:
                    self.device_models[device.name] = device
        return out

    def _interval_checked(self, table: dict[str, Any], item: _Item) -> dict[str, Any]:
        """``table`` to validate, after a line for an interval that does not parse or is out of
        range: with the interval parsed (the model keeps it), or without one that does not
        parse, so that the device and the KPIs on it are still checked."""
        interval = table.get("interval")
        if not isinstance(interval, str):
            return table  # absent, or a type error the model reports
        try:
            duration = Duration.parse(interval)
        except ValueError as exc:
            item.add(("interval",), str(exc))
            return {key: value for key, value in table.items() if key != "interval"}
        try:
            duration.check_within(*DEVICE_INTERVAL_BOUNDS)
        except ValueError as exc:
            item.add(("interval",), str(exc))
        return {**table, "interval": duration}

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
        for i, raw in self._tables("kpis", raws):
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
        if "interval" in table or model is None:
            interval = table.get("interval", DeviceConfig.model_fields["interval"].default.text)
        else:
            interval = model.interval.text  # the driver's default
        try:
            length = _kpi_period(parse_kpi_length(interval))
        except (ValueError, TypeError):
            return raw, ""  # not a KPI duration ("500 ms"): sample_interval stays required
        return {**raw, "sample_interval": length}, f" (the interval of device {device})"

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
                import difflib  # only for a point no device has: not in every agent

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
