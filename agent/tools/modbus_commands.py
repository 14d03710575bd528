"""The Modbus technician tools on the command line: ``probe`` (read a register range in every
decoding), ``scan`` (which unit ids answer) and ``simulate`` (serve a simulated device). The
tools themselves are in ``drivers/modbus/`` (probe, scan, simulator); this is their flags and
the glue. Nothing Modbus is imported until a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.console import EXIT_OK, EXIT_USAGE, err
from agent.errors import ConfigError

if TYPE_CHECKING:
    from drivers.modbus.config import Table
    from drivers.modbus.tools import Target


def add_parsers(sub: Any) -> None:
    """``probe``, ``scan`` and ``simulate`` on the command line's subparsers."""
    p = sub.add_parser("probe", help="read registers from a live Modbus device, every decoding",
                       description="Read a register range from a live device and print each\n"
                       "register (hex, u16, i16) and every 2-register window as u32/i32/f32\n"
                       "in all four byte orders (ABCD, CDAB, BADC, DCBA), scaled.\n"
                       "Exit 1 on an exception answer or no answer.",
                       epilog="examples:\n"
                       "  ssc-agent probe --endpoint tcp://10.0.0.5:502 --unit 1 --table input "
                       "--address 0 --count 8\n"
                       "  ssc-agent probe --serial /dev/ttyUSB0 --baudrate 9600 --parity E "
                       "--unit 3 --address 0x48 --count 4",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _modbus_target_args(p)
    p.add_argument("--unit", type=int, default=1, help="Modbus unit (slave) id (default 1)")
    _modbus_read_args(
        p, address="first address, 0-based protocol address, decimal or 0x hex (default 0)",
        timeout="1 s", timeout_help="per request, e.g. '1 s', '500 ms'")
    p.add_argument("--count", type=int, default=10, metavar="C",
                   help="registers (or bits) to read; read in chunks of at most 125 (default 10)")
    p.add_argument("--scale", type=float, default=1.0, metavar="S",
                   help="multiply decoded values by S, e.g. 0.1 (default 1)")
    p.add_argument("--f64", action="store_true",
                   help="also show 4-register windows as f64")

    p = sub.add_parser("scan", help="find which Modbus unit ids answer on a bus",
                       description="Try each unit id with a one-register read. A unit that\n"
                       "answers, even with an exception, is alive and listed; exception 4 from\n"
                       "a Modbus TCP server or gateway for a unit it does not have is not.\n"
                       "Exit 0 when at least one unit answered, 1 when none did.",
                       epilog="examples:\n"
                       "  ssc-agent scan --serial /dev/ttyUSB0 --baudrate 9600 --units 1-247\n"
                       "  ssc-agent scan --endpoint rtu+tcp://10.0.0.9:4001 --units 1-32 "
                       "--timeout 0.3s",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _modbus_target_args(p)
    p.add_argument("--units", default="1-247", metavar="IDS",
                   help="unit ids to try, e.g. 1-247 or 1,3,10-12 (default 1-247)")
    _modbus_read_args(p, address="register to read, decimal or 0x hex (default 0)",
                      timeout="0.2 s", timeout_help="per unit id (default '0.2 s')")

    p = sub.add_parser("simulate", help="serve a simulated Modbus device from a profile",
                       description="Serve a simulated device whose values move plausibly "
                       "(counters increase, power fluctuates), over Modbus TCP (--port) or "
                       "Modbus RTU on a serial line (--serial). PROFILE is a profile name "
                       "(see config/profiles) or a path to a profile file.")
    p.add_argument("profile", metavar="PROFILE")
    p.add_argument("--port", type=int, default=5020, help="TCP port (default 5020)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--units", default="1", metavar="IDS",
                   help="unit ids to serve, e.g. 1-3 or 1,3,10-12 (default 1)")
    p.add_argument("--serial", metavar="PATH",
                   help="serve Modbus RTU on this serial device instead of TCP (e.g. one end "
                   "of a socat pty pair)")
    p.add_argument("--baudrate", type=int, default=9600, help="--serial: default 9600")
    p.add_argument("--parity", choices=["N", "E", "O"], default="N", help="--serial: default N")
    p.add_argument("--silent-units", default="", metavar="IDS",
                   help="--serial: unit ids that never answer (a dead meter on the bus), "
                   "written like --units")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")



def _modbus_target_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", metavar="URL",
                       help="tcp://HOST:PORT (Modbus TCP) or rtu+tcp://HOST:PORT (RTU through "
                       "a serial device server)")
    where.add_argument("--serial", metavar="PATH", help="serial port (RTU), e.g. /dev/ttyUSB0")
    p.add_argument("--baudrate", type=int, default=9600, help="serial only (default 9600)")
    p.add_argument("--parity", choices=["N", "E", "O"], default="N",
                   help="serial only (default N)")
    p.add_argument("--stopbits", type=int, choices=[1, 2], default=1,
                   help="serial only (default 1)")
    p.add_argument("--bytesize", type=int, choices=[7, 8], default=8,
                   help="serial only (default 8)")


def _modbus_read_args(p: argparse.ArgumentParser, *, address: str, timeout: str,
                      timeout_help: str) -> None:
    """What ``probe`` and ``scan`` both take: where to read, how long to wait, how to print."""
    p.add_argument("--table", choices=["holding", "input", "coil", "discrete"],
                   default="holding", help="register table (default holding)")
    p.add_argument("--address", default="0", metavar="A", help=address)
    p.add_argument("--timeout", default=timeout, help=timeout_help)
    p.add_argument("--format", choices=["text", "json"], default="text",
                   help="text for a terminal (default), json for machines")


def _unit_ids(flag: str, text: str) -> list[int]:
    """Unit ids as both ``scan`` and ``simulate`` take them; an error names ``flag``."""
    from drivers.modbus.tools import parse_units

    try:
        return parse_units(text)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from exc


def _cmd_simulate(args: argparse.Namespace) -> int:
    from agent.logs import configure_logging
    from drivers.modbus.simulator import run_simulate

    units = _unit_ids("--units", args.units)
    silent = _unit_ids("--silent-units", args.silent_units) if args.silent_units.strip() else []
    configure_logging(args.log_level or "info", json=args.log_json)
    from agent.driver import discover

    entry = discover().get(args.profile)
    if entry is not None and entry.spec is not None and entry.spec.simulate is not None:
        # A serial sensor driver's own simulator (sds011, pms5003, …), not a Modbus profile.
        if args.serial is None:
            err(f"simulate {args.profile}: give --serial PATH (this device speaks serial)")
            return EXIT_USAGE
        asyncio.run(entry.spec.simulate(args.serial, args.duration))
        return EXIT_OK
    try:
        asyncio.run(run_simulate(args.profile, args.host, args.port, units, args.duration,
                                 serial=args.serial, baudrate=args.baudrate,
                                 parity=args.parity, silent_units=silent))
    except FileNotFoundError as exc:
        err(str(exc))
        return EXIT_USAGE
    return EXIT_OK


def _modbus_tool_args(args: argparse.Namespace) -> tuple[Target, Table, int, float]:
    from agent.units import parse_duration
    from drivers.modbus.config import Table
    from drivers.modbus.tools import parse_address, target_from

    target = target_from(args.endpoint, args.serial, baudrate=args.baudrate,
                         parity=args.parity, stopbits=args.stopbits, bytesize=args.bytesize)
    try:
        address = parse_address(args.address)
    except ValueError as exc:
        raise ConfigError(f"--address: {exc}") from exc
    try:
        timeout = parse_duration(args.timeout)
    except ValueError as exc:
        raise ConfigError(f"--timeout: {exc}") from exc
    return target, Table(args.table), address, timeout


def _tool_logging(args: argparse.Namespace) -> None:
    # Only on request: the tools print their own results, and pymodbus is silenced by them.
    if args.log_level is not None:
        from agent.logs import configure_logging

        configure_logging(args.log_level, json=args.log_json)


def _cmd_probe(args: argparse.Namespace) -> int:
    from drivers.modbus.probe import run_probe

    _tool_logging(args)
    target, table, address, timeout = _modbus_tool_args(args)
    if not 0 <= args.unit <= 255:
        raise ConfigError(f"--unit {args.unit}: a Modbus unit id is 0..255")
    return asyncio.run(run_probe(
        target, unit=args.unit, table=table, address=address, count=args.count,
        scale=args.scale, timeout_seconds=timeout, output=args.format, f64=args.f64, out=sys.stdout,
    ))


def _cmd_scan(args: argparse.Namespace) -> int:
    from drivers.modbus.scan import ScanRequest, run_scan

    _tool_logging(args)
    target, table, address, timeout = _modbus_tool_args(args)
    units = _unit_ids("--units", args.units)
    request = ScanRequest(target, units, table=table, address=address, timeout_seconds=timeout)
    return asyncio.run(run_scan(request, output=args.format, out=sys.stdout, err=sys.stderr))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "probe": _cmd_probe,
    "scan": _cmd_scan,
    "simulate": _cmd_simulate,
}
