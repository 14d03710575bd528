"""``ssc-agent test``: poll each device of a config once through its real driver and show what
came back, point by point, with units and quality (a commissioning check, like Telegraf's
``--test``).

The drivers are built exactly as ``run`` builds them (:func:`~agent.gateway.devices.
create_drivers`, every installed driver, third-party ones included), and each poll is what the
scheduler does at a slot: ``connect()`` then ``read()``, bounded by the scheduler's hang guard
(or ``--timeout``). Nothing else of the agent runs: no store, no data_dir lock, no uplink, and
nothing is published. Devices that share a line (an RS-485 bus, a serial port, an endpoint)
are polled one after another; different lines at the same time.

Exit status: 0 when every polled device answered with good (or stale) readings, 1 when one
did not (each named), 2 for a config error (every error) or an unknown ``--device``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from agent.console import EXIT_FAILURE, EXIT_OK, err
from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.driver import DeviceConfig, Driver
    from agent.readings import Value

__all__ = ["DeviceResult", "PointResult", "add_parser", "main", "poll_devices",
           "render_json", "render_text"]

T = TypeVar("T")

# A driver's close() after the poll: it only releases a port or socket.
CLOSE_SECONDS = 5.0
# Cancelling a poll that overran its bound: again every this often, until it has ended
# (Python 3.11's asyncio.wait_for, which pymodbus uses, can drop one cancellation).
CANCEL_AGAIN_SECONDS = 0.5
# An unknown --device lists at most this many of the config's device names.
KNOWN_NAMES_SHOWN = 20
# Qualities of a device that answered well: its values are what it has now.
ANSWERED = frozenset({"good", "stale"})

DESCRIPTION = """\
Poll every enabled device of the config once (or only the --device ones, enabled or not)
through its real driver, and print what each returned: every point with its value, unit and
quality, or the device's error in the driver's words (no answer, a timeout, a CRC error, an
exception code). The config is checked first with the rules of `validate` ([uplink] may be
left out); [uplink], the buffer and the data_dir are not used, and nothing is published.

Each device's poll is bounded by the agent's hang guard (twice its interval, at least 20 s,
longer for a driver that needs it, e.g. a slow IEC 62056-21 readout), or by --timeout.
Devices on one RS-485 bus, serial port or endpoint are polled one after another, as they
share the line; the others at the same time.

A serial port opens exclusively: testing a serial device while the agent runs fails with
"cannot be opened ... stop the other program using it". Stop the agent first
(systemctl stop ssc-agent), or test the TCP devices only (--device).

exit status:
  0  every polled device answered with good readings (or stale ones: a sensor's first
     reading after it is woken, e.g. an SDS011 warming up, is stale)
  1  a device failed, or a reading has an error quality (each device is named)
  2  invalid config (every error is listed) or an unknown --device
"""

EPILOG = """\
examples:
  ssc-agent test --config /etc/ssc-agent/config.toml
  ssc-agent test --config config.toml --device meter-1 meter-2 --timeout 5
  ssc-agent test --config config.toml --json | jq '.devices[] | select(.ok | not) | .name'
"""


def add_parser(sub: Any) -> None:
    """``test`` on the command line's subparsers."""
    p = sub.add_parser("test", help="poll each device once and print its values (commissioning)",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, type=Path, metavar="FILE", help="TOML config")
    p.add_argument("--device", action="extend", nargs="+", metavar="NAME",
                   help="poll only these devices (repeatable; disabled ones too)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document instead of the tables (for scripts)")
    p.add_argument("--timeout", metavar="S",
                   help="bound each device's poll at S seconds ('5', '5 s', '500 ms') instead "
                   "of the hang guard")


# --------------------------------------------------------------------------------------------
# Polling


@dataclass(frozen=True, slots=True)
class PointResult:
    """One point as the driver returned it."""

    name: str
    value: Value
    unit: str | None
    quality: str  # the Quality's name, lower case (good, comm_error, ...)


@dataclass(frozen=True, slots=True)
class DeviceResult:
    """One device's poll: its points, or why it failed."""

    name: str
    driver: str
    via: str  # where the device is reached (endpoint, bus, port, unit), for the reader
    seconds: float  # how long connect() and read() took
    bound: float  # the poll's time bound
    points: tuple[PointResult, ...] = ()
    error: str | None = None  # the driver's words, or the bound that ran out
    kind: str | None = None  # unavailable, protocol, timeout, driver (a driver bug)
    code: int | None = None  # a protocol error's exception code, when the driver names one

    @property
    def ok(self) -> bool:
        """It answered, and no point has an error quality (stale is none: a sensor's first
        reading after a wake, an SDS011 warming up, is stale and the sensor works)."""
        return self.error is None and all(p.quality in ANSWERED for p in self.points)


def _field(device: DeviceConfig, key: str) -> object:
    return getattr(device, key, None)  # a key of some drivers' tables only


def _via(device: DeviceConfig) -> str:
    parts = [text for key in ("endpoint", "port")
             if isinstance(text := _field(device, key), str)]
    if isinstance(bus := _field(device, "bus"), str):
        parts.append(f"bus {bus}")
    if isinstance(unit := _field(device, "unit"), int):
        parts.append(f"unit {unit}")
    return ", ".join(parts)


def _line(device: DeviceConfig, config: AgentConfig) -> str:
    """What the device shares with others it must not be polled at the same time as: its bus's
    serial port, its own port, or its endpoint; else its name (a line of its own)."""
    bus, port, endpoint = (_field(device, key) for key in ("bus", "port", "endpoint"))
    if isinstance(bus, str) and bus in config.buses_by_name:
        return f"serial:{config.buses_by_name[bus].port}"
    if isinstance(port, str):
        return f"serial:{port}"
    if isinstance(endpoint, str):
        return f"endpoint:{endpoint}"
    return f"device:{device.name}"


async def _within(coroutine: Awaitable[T], seconds: float) -> T:
    """``coroutine``'s result, or TimeoutError once it has run ``seconds`` (then it is
    cancelled, again and again until it has ended: a dead device never holds the command)."""
    task = asyncio.ensure_future(coroutine)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        return task.result()
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_AGAIN_SECONDS)
    if not task.cancelled():
        return task.result()  # it ended on its own (an answer, or the driver's error) meanwhile
    raise TimeoutError


async def _connect_and_read(driver: Driver) -> Sequence[Any]:
    await driver.connect()
    return await driver.read()


async def _poll(device: DeviceConfig, driver: Driver, bound: float,
                clock: Callable[[], float]) -> DeviceResult:
    from agent.errors import DeviceProtocolError, DeviceUnavailable
    from agent.readings import Quality

    units = {p.name: p.unit for p in driver.points}
    started = clock()
    took = 0.0

    def result(points: tuple[PointResult, ...] = (), kind: str | None = None,
               error: str | None = None, code: int | None = None) -> DeviceResult:
        return DeviceResult(device.name, device.driver, _via(device), took, bound, points,
                            error, kind, code)

    try:
        try:
            values = await _within(_connect_and_read(driver), bound)
        finally:
            took = clock() - started
            await _close(device.name, driver)
    except TimeoutError:
        return result(kind="timeout", error=f"{device.name}: no result within {bound:g} s "
                      "(the poll's bound: the hang guard, or --timeout)")
    except DeviceUnavailable as exc:
        return result(kind="unavailable", error=str(exc))
    except DeviceProtocolError as exc:
        return result(kind="protocol", error=str(exc), code=exc.code)
    except Exception as exc:  # a driver bug is this device's result, not the command's end
        return result(kind="driver", error=f"{device.name}: the driver failed: "
                      f"{type(exc).__name__}: {exc}")
    return result(tuple(PointResult(v.point, v.value, units.get(v.point),
                                    Quality(v.quality).name.lower()) for v in values))


async def _close(name: str, driver: Driver) -> None:
    try:
        await _within(driver.close(), CLOSE_SECONDS)
    except TimeoutError:
        err(f"{name}: the driver did not close within {CLOSE_SECONDS:g} s")
    except Exception as exc:  # closing a broken connection may fail too; the result stands
        err(f"{name}: closing the driver failed: {type(exc).__name__}: {exc}")


def _bound(device: DeviceConfig, driver: Driver, timeout: float | None) -> float:
    from agent.driver import max_poll_seconds
    from agent.gateway.scheduler import hang_guard

    if timeout is not None:
        return timeout
    return hang_guard(device.interval.seconds, max_poll_seconds(driver))


def select(config: AgentConfig, names: Sequence[str] | None) -> list[str] | None:
    """The device names ``--device`` asks for, all known; None: every enabled device."""
    if names is None:
        return None
    known = [device.name for device in config.devices]
    unknown = [name for name in dict.fromkeys(names) if name not in known]
    if unknown:
        shown = ", ".join(known[:KNOWN_NAMES_SHOWN])
        if len(known) > KNOWN_NAMES_SHOWN:
            shown += f", … ({len(known) - KNOWN_NAMES_SHOWN} more)"
        where = config.source_path or "the config"
        raise ConfigError([f"--device {name!r}: no such device in {where}; known devices: "
                           f"{shown or 'none'}" for name in unknown])
    return list(dict.fromkeys(names))


async def poll_devices(
    config: AgentConfig,
    names: Sequence[str] | None = None,
    *,
    bound: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[DeviceResult]:
    """Poll every enabled device of ``config`` (or those named) once; results in config order.
    ``bound``: each poll's time bound in seconds (default: the device's hang guard).

    Raises ConfigError for an unknown name, or when a driver refuses its device table."""
    from agent.driver import DriverContext
    from agent.fdlimit import prepare_open_files
    from agent.gateway.devices import create_drivers

    chosen = select(config, names)
    context = DriverContext(buses=config.buses_by_name)
    try:
        drivers = create_drivers(config, context, chosen)
        prepare_open_files(len(drivers))
        lines: dict[str, list[tuple[DeviceConfig, Driver]]] = {}
        for device, driver in drivers:
            lines.setdefault(_line(device, config), []).append((device, driver))

        async def one_line(devices: list[tuple[DeviceConfig, Driver]]) -> list[DeviceResult]:
            return [await _poll(device, driver, _bound(device, driver, bound), clock)
                    for device, driver in devices]

        polled = await asyncio.gather(*(one_line(group) for group in lines.values()))
    finally:
        await context.close()
    by_name = {result.name: result for group in polled for result in group}
    return [by_name[device.name] for device, _ in drivers]


# --------------------------------------------------------------------------------------------
# Output


def _f32(value: float) -> float | None:
    """``value`` as a 32-bit float has it (None: beyond its range)."""
    try:
        return float(struct.unpack("<f", struct.pack("<f", value))[0])
    except OverflowError:
        return None


def _shown(value: Value) -> str:
    if value is None:
        return "-"
    if not isinstance(value, float):
        return str(value)
    # A 32-bit float (an f32 register) gets the digits it has: 229.1, not 229.10000610351562;
    # any other float loses only a scale's noise (12.34, not 12.340000000000002). --json is exact.
    if _f32(value) == value:
        for digits in range(1, 10):
            text = f"{value:.{digits}g}"
            if _f32(float(text)) == value:
                return repr(float(text))
    rounded = float(f"{value:.15g}")
    return repr(rounded if math.isfinite(rounded) else value)  # near the largest float


def _status(result: DeviceResult) -> str:
    if result.error is not None:
        return f"FAILED ({result.kind})"
    n = len(result.points)
    bad = sum(p.quality not in ANSWERED for p in result.points)
    if bad:
        return f"NOT GOOD ({bad} of {n} points)"
    stale = sum(p.quality == "stale" for p in result.points)
    return "good" if not stale else f"good ({stale} of {n} points stale: not fresh yet)"


def render_text(results: Sequence[DeviceResult]) -> str:
    """One block per device (a header line, then the points in aligned columns, or the error)
    and a summary line."""
    out: list[str] = []
    for r in results:
        via = f", {r.via}" if r.via else ""
        out.append(f"{r.name}  ({r.driver}{via})  {_status(r)} in {r.seconds:.3f} s")
        if r.error is not None:
            out.append(f"  error: {r.error}")
        rows = [("point", "value", "unit", "quality")] + [
            (p.name, _shown(p.value), p.unit or "-", p.quality) for p in r.points]
        if len(rows) > 1:
            widths = [max(len(row[i]) for row in rows) for i in range(3)]
            out.extend("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                       + "  " + row[3] for row in rows)
        out.append("")
    failed = [r.name for r in results if not r.ok]
    summary = f"{len(results) - len(failed)} of {len(results)} devices good"
    out.append(summary + (f"; not good: {', '.join(failed)}" if failed else ""))
    return "\n".join(out) + "\n"


def render_json(config_path: Path, results: Sequence[DeviceResult]) -> dict[str, Any]:
    """The results as one JSON-ready document."""
    return {
        "config": str(config_path),
        "ok": all(r.ok for r in results),
        "failed": [r.name for r in results if not r.ok],
        "devices": [{
            "name": r.name,
            "driver": r.driver,
            "via": r.via,
            "ok": r.ok,
            "seconds": round(r.seconds, 6),
            "bound_seconds": r.bound,
            "error": None if r.error is None else {"kind": r.kind, "message": r.error,
                                                   "code": r.code},
            "points": [{"point": p.name, "value": p.value, "unit": p.unit,
                        "quality": p.quality} for p in r.points],
        } for r in results],
    }


# --------------------------------------------------------------------------------------------
# The command


def _timeout(text: str | None) -> float | None:
    from agent.units import parse_duration

    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise ConfigError(f"--timeout: {exc}") from None
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"--timeout: {text!r}: seconds greater than zero")
    return seconds


def main(args: argparse.Namespace) -> int:
    """``ssc-agent test``."""
    from agent.config import load_config
    from agent.logs import configure_logging

    timeout = _timeout(args.timeout)
    config = load_config(args.config, require_uplink=False)
    select(config, args.device)  # an unknown name is an error before any port is opened
    # Driver warnings (an exception answer to one request, ...) go to stderr, not in the table.
    configure_logging(args.log_level or "warning", json=args.log_json)
    results = asyncio.run(poll_devices(config, args.device, bound=timeout))
    if args.json:
        json.dump(render_json(args.config, results), sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(results))
    failed = [r.name for r in results if not r.ok]
    if failed:
        err(f"{len(failed)} of {len(results)} devices not good: {', '.join(failed)}")
        return EXIT_FAILURE
    if not results:
        err(f"{args.config}: no enabled devices to test")
    return EXIT_OK
