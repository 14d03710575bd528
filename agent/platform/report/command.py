"""The ``ssc-agent report`` command: options, opening the sink read-only, and writing the
report in the format asked for (docs/reports.md §1)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.platform.flags import add_sink_flags

if TYPE_CHECKING:
    from agent.platform.city import CityConfig
    from agent.platform.indicators import Catalogue
    from agent.platform.inventory import Inventory

__all__ = ["add_parser", "main"]

FORMATS = ("html", "json", "csv")


def add_parser(sub: Any) -> None:
    """``ssc-agent report`` on the command line's subparsers."""
    p = sub.add_parser(
        "report", help="the city's indicators and progress toward its targets (HTML/JSON/CSV)",
        description="Compute the indicators of the catalogue that the city's sites feed, "
        "from the KPI windows the receiver stored, for the local dates --from to --to (the "
        "city's time zone): yearly figures by the directives' rules, each with its validity, "
        "the share of stations meeting each limit, progress toward each target with its trend "
        "and projection, and data capture per station (docs/reports.md). Only reads: a "
        "read-only database role will do. Exit 0; 2 for bad options, a bad city config or a "
        "sink that cannot be opened; 1 when the database fails while it is read.")
    add_sink_flags(p)
    p.add_argument("--city", required=True, type=Path, metavar="FILE",
                   help="the city config (docs/city.md)")
    p.add_argument("--from", dest="first", required=True, metavar="DATE",
                   help="first local date of the period, YYYY-MM-DD")
    p.add_argument("--to", dest="last", required=True, metavar="DATE",
                   help="last local date of the period (included), YYYY-MM-DD")
    p.add_argument("--format", choices=FORMATS, default="html",
                   help="html (default): one self-contained page; json; csv: one row a figure")
    p.add_argument("--out", type=Path, metavar="FILE", help="write here (default: stdout)")


def _date(text: str, flag: str) -> dt.date:
    from agent.errors import ConfigError

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{flag} {text[:40]!r}: write a date as YYYY-MM-DD") from None


def meter_inventory(city: CityConfig, catalogue: Catalogue, select: Any) -> Inventory:
    """The fleet's meter inventory as of now (docs/platform.md §5.1); SinkReadError when the
    database fails while read."""
    import time

    from agent.errors import first_line
    from agent.platform.inventory import compute_inventory
    from agent.platform.report.reader import SinkReadError
    from agent.platform.sink.devices import read_devices

    try:
        devices = read_devices(select)
    except Exception as exc:
        raise SinkReadError(first_line(exc)) from exc
    return compute_inventory(city.inventory, devices, at_ms=int(time.time() * 1000),
                             indicators=[i for _, i in catalogue.indicators])


def main(args: argparse.Namespace) -> int:
    """Run ``ssc-agent report``: 0, or 1 when the database fails while it is read;
    ConfigError (exit 2) for bad options, city config or sink."""
    from agent.errors import ConfigError
    from agent.platform.city import selected_limits
    from agent.platform.city_checks import load_city
    from agent.platform.indicators import load_catalogue
    from agent.platform.report.compute import build_report
    from agent.platform.report.export import render_csv, render_json
    from agent.platform.report.html import render_html
    from agent.platform.report.reader import SinkReadError, WindowReader
    from agent.platform.sink.url import read_only_sink

    first, last = _date(args.first, "--from"), _date(args.last, "--to")
    if last < first:
        raise ConfigError(f"--to {last} is before --from {first}")
    if last.year - first.year > 30:
        raise ConfigError("--from/--to: a report covers 31 years at most")
    catalogue = load_catalogue()
    city = load_city(args.city, catalogue=catalogue)
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with read_only_sink(args.sink, args.sink_password_file) as select:
        try:
            inventory = meter_inventory(city, catalogue, select)
            report = build_report(city, catalogue, WindowReader(select), first, last,
                                  generated=generated,
                                  limits_for=lambda indicator: selected_limits(city, indicator),
                                  inventory=inventory)
        except SinkReadError as exc:  # the database failed while read
            print(f"ssc-agent: --sink: {exc}", file=sys.stderr)
            return 1
    render = {"html": render_html, "json": render_json, "csv": render_csv}[args.format]
    text = render(report)
    if args.out is None:
        sys.stdout.write(text)
    else:
        try:
            args.out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--out {args.out}: cannot write: {exc.strerror}") from None
    return 0
