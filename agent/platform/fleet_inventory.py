"""``ssc-agent fleet inventory``: per kind of meter, the smart meters the gateways read, those
reporting, and their share of the city's meter stock (:mod:`agent.platform.inventory`), from
the sink's ``devices`` table and the city config's ``[inventory]``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from agent.platform.flags import add_sink_flags


def add_parser(sub: Any) -> None:
    """``fleet inventory`` on ``ssc-agent fleet``'s subparsers."""
    p = sub.add_parser(
        "inventory", help="smart meters read and reporting, and their share of the stock",
        description="Per kind of meter (the city config's [[inventory.meters]]): the smart "
        "meters the gateways read, those with a good reading within [inventory] "
        "reporting_window, and their share of the meters installed ([inventory] "
        "<kind>_meters): the catalogue's smart meter indicators (docs/platform.md). Only "
        "reads: a read-only database role will do. Exit 0; 2 for a bad city config or a sink "
        "that cannot be opened or is not migrated yet; 1 when the database fails while read.")
    add_sink_flags(p)
    p.add_argument("--city", required=True, type=Path, metavar="FILE",
                   help="the city config (docs/city.md)")
    p.add_argument("--json", action="store_true", help="one JSON document (stable keys)")


def main(args: argparse.Namespace) -> int:
    """Run ``fleet inventory``: 0, 1 (the database failed while read); ConfigError (exit 2)."""
    from agent.errors import first_line
    from agent.platform.city_checks import load_city
    from agent.platform.indicators import load_catalogue
    from agent.platform.inventory import compute_inventory, render_inventory, to_json
    from agent.platform.sink.devices import read_devices, read_health
    from agent.platform.sink.url import read_only_sink

    catalogue = load_catalogue()
    city = load_city(args.city, catalogue=catalogue)
    now_ms = int(time.time() * 1000)
    with read_only_sink(args.sink, args.sink_password_file) as select:
        try:
            devices = read_devices(select)
            health = read_health(select)
        except Exception as exc:  # the database failed while read: not the flags' fault
            print(f"ssc-agent: --sink: {first_line(exc)}", file=sys.stderr)
            return 1
    inventory = compute_inventory(city.inventory, devices, at_ms=now_ms,
                                  indicators=[i for _, i in catalogue.indicators], health=health)
    print(to_json(inventory) if args.json else render_inventory(inventory))
    return 0
