"""The fleet's meter inventory (docs/platform.md "Meter inventory"): per kind of meter, the
smart meters the gateways read, those reporting, and their share of the city's meter stock,
the figure of the catalogue's inventory indicators (``smart_electricity_meters``,
``smart_water_meters``: U4SSC EC:ICT:ES:1C, EC:ICT:WS:1C).

Which devices are meters of which kind is the city config's ``[[inventory.meters]]`` (the wire
carries no driver or kind: a gateway's devices are names); what each device sent is the sink's
``devices`` table (:mod:`agent.platform.sink.devices`). A meter *reports* when its newest good
reading is less than ``reporting_window`` before ``at``. Pure: ``at`` is given, nothing is read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.platform.city import STOCK_KINDS, InventorySection
from agent.platform.indicators import Indicator
from agent.platform.sink.devices import DeviceRow

if TYPE_CHECKING:
    from agent.wire import HealthSummary

MAX_LISTED = 20  # meters not reporting listed by name in the table, per kind


@dataclass(frozen=True, slots=True)
class Meter:
    """A device the city config lists as a meter, and what the sink knows of it."""

    gw: str
    dev: str
    kind: str
    seen: bool  # the sink holds readings of it
    last_good_t: int | None  # its newest good reading (gateway clock, epoch ms)
    reporting: bool
    # down in its gateway's newest health summary: (summary's time, failed polls, error)
    down: tuple[int, int, str | None] | None = None


@dataclass(frozen=True, slots=True)
class KindFigures:
    """The inventory of one kind of meter."""

    kind: str
    stock: int | None  # meters installed, smart or not ([inventory] <kind>_meters)
    meters: tuple[Meter, ...]  # the smart meters: devices the gateways read
    reporting: int
    share: float | None  # reporting / stock × 100; None: not computable (``why``)
    why: str

    @property
    def known(self) -> int:
        return len(self.meters)

    @property
    def valid(self) -> bool:
        return self.share is not None


@dataclass(frozen=True, slots=True)
class IndicatorFigure:
    """An inventory indicator of the catalogue and its figure."""

    indicator: Indicator
    figures: KindFigures


@dataclass(frozen=True, slots=True)
class Inventory:
    """The whole inventory at ``at_ms``."""

    at_ms: int
    window_ms: int
    kinds: tuple[KindFigures, ...]
    indicators: tuple[IndicatorFigure, ...]
    unlisted: tuple[DeviceRow, ...]  # devices that sent readings and no kind is given for


def _meters(inventory: InventorySection, devices: Sequence[DeviceRow], *, at_ms: int,
            window_ms: int, health: Mapping[str, HealthSummary]
            ) -> tuple[list[Meter], list[DeviceRow]]:
    by_key = {(d.gw, d.dev): d for d in devices}
    by_gateway: dict[str, list[DeviceRow]] = {}
    for d in devices:
        by_gateway.setdefault(d.gw, []).append(d)
    meters: list[Meter] = []
    listed: set[tuple[str, str]] = set()

    def add(gw: str, dev: str, kind: str) -> None:
        if (gw, dev) in listed:  # the city checks refuse it; a duplicate is counted once
            return
        listed.add((gw, dev))
        row = by_key.get((gw, dev))
        good = None if row is None else row.last_good_t
        summary = health.get(gw)
        down = None if summary is None else next(
            ((summary.t, d.failures, d.error) for d in summary.down if d.name == dev), None)
        meters.append(Meter(gw, dev, kind, row is not None, good,
                            good is not None and good > at_ms - window_ms, down))

    for group in inventory.meters:
        if group.devices:
            for dev in group.devices:
                add(group.gateway, dev, group.kind)
        else:
            for row in by_gateway.get(group.gateway, []):
                add(row.gw, row.dev, group.kind)
    unlisted = [d for d in devices if (d.gw, d.dev) not in listed]
    return meters, unlisted


def _figures(kind: str, stock: int | None, meters: list[Meter]) -> KindFigures:
    reporting = sum(1 for m in meters if m.reporting)
    share: float | None = None
    if stock is None:
        why = (f"not computed: no [inventory] {kind}_meters, the {kind} meters installed in "
               "the city, smart or not (the utility's figure)")
    elif not meters:
        why = (f"not computed: no gateway device is listed as a {kind} meter "
               "([[inventory.meters]])")
    elif reporting > stock:
        why = (f"not valid: {reporting} smart {kind} meters report, more than the "
               f"{stock} installed that [inventory] {kind}_meters states")
    else:
        share = reporting / stock * 100
        why = ""
    return KindFigures(kind, stock, tuple(meters), reporting, share, why)


def compute_inventory(inventory: InventorySection, devices: Sequence[DeviceRow], *,
                      at_ms: int, indicators: Sequence[Indicator] = (),
                      health: Mapping[str, HealthSummary] | None = None) -> Inventory:
    """The inventory at ``at_ms``: a figure for every kind with a stock, a listed meter or an
    indicator (of ``indicators``, those read from the inventory), in a fixed kind order. A
    meter its gateway's health summary (of ``health``, by gateway) lists down is marked so;
    whether it reports is still its readings' say."""
    window_ms = round(inventory.reporting_window.seconds * 1000)
    meters, unlisted = _meters(inventory, devices, at_ms=at_ms, window_ms=window_ms,
                               health=health or {})
    wanted = {m.kind for m in meters} | {k for k in STOCK_KINDS if inventory.stock(k)}
    counted = [i for i in indicators if i.computation.input == "inventory"]
    wanted |= {i.computation.meter for i in counted if i.computation.meter is not None}
    order = [*STOCK_KINDS, *sorted(wanted - set(STOCK_KINDS))]
    kinds = tuple(_figures(kind, inventory.stock(kind), [m for m in meters if m.kind == kind])
                  for kind in order if kind in wanted)
    by_kind = {k.kind: k for k in kinds}
    figures = tuple(IndicatorFigure(i, by_kind[i.computation.meter]) for i in counted
                    if i.computation.meter is not None)
    return Inventory(at_ms, window_ms, kinds, figures, tuple(unlisted))


# ------------------------------------------------------------------------- output


def _share(k: KindFigures) -> str:
    return "-" if k.share is None else f"{k.share:.1f} %"


def render_inventory(inv: Inventory) -> str:
    """The human table: a line per kind, the meters not reporting under it, then why a
    figure is not computed and the indicators."""
    from agent.platform.fleet import iso, span

    rows = [["KIND", "STOCK", "SMART", "REPORTING", "SHARE"]]
    rows += [[k.kind, "-" if k.stock is None else str(k.stock), str(k.known), str(k.reporting),
              _share(k)] for k in inv.kinds]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            continue
        k = inv.kinds[n - 1]
        silent = [m for m in k.meters if not m.reporting or m.down is not None]
        for m in silent[:MAX_LISTED]:
            when = ("never sent a reading" if not m.seen else "no good reading ever"
                    if m.last_good_t is None else f"last good reading {iso(m.last_good_t)}")
            if m.down is not None:
                when += (f"; down in its gateway's health at {iso(m.down[0])}: {m.down[1]} "
                         f"failed polls, {m.down[2] or '-'}")
            head = "not reporting" if not m.reporting else "reporting"
            lines.append(f"    {head}: {m.gw}/{m.dev}: {when}")
        if len(silent) > MAX_LISTED:
            lines.append(f"    and {len(silent) - MAX_LISTED} more not reporting or down")
        if k.why:
            lines.append(f"    {k.why}")
    for f in inv.indicators:
        code = f" ({f.indicator.u4ssc.code})" if f.indicator.u4ssc else ""
        lines.append(f"{f.indicator.name}{code}: {_share(f.figures)}")
    if inv.unlisted:
        lines.append(f"{len(inv.unlisted)} devices sent readings and are not listed in "
                     "[[inventory.meters]]")
    lines.append(f"at {iso(inv.at_ms)}; a meter reports with a good reading in the last "
                 f"{span(inv.window_ms)}")
    return "\n".join(lines)


def inventory_json(inv: Inventory) -> dict[str, object]:
    """The ``--json`` document's object (keys documented in docs/platform.md, stable)."""
    def kind(k: KindFigures) -> dict[str, object]:
        return {"kind": k.kind, "stock": k.stock, "smart": k.known, "reporting": k.reporting,
                "share_percent": k.share, "valid": k.valid, "why": k.why or None,
                "meters": [{"gw": m.gw, "dev": m.dev, "seen": m.seen,
                            "last_good_ms": m.last_good_t, "reporting": m.reporting,
                            "down": None if m.down is None else {
                                "health_at_ms": m.down[0], "failures": m.down[1],
                                "error": m.down[2]}}
                           for m in k.meters]}

    return {
        "at_ms": inv.at_ms,
        "reporting_window_ms": inv.window_ms,
        "kinds": [kind(k) for k in inv.kinds],
        "indicators": [{"id": f.indicator.id, "name": f.indicator.name,
                        "u4ssc": f.indicator.u4ssc.code if f.indicator.u4ssc else None,
                        "kind": f.figures.kind, "value": f.figures.share,
                        "unit": f.indicator.unit, "valid": f.figures.valid,
                        "why": f.figures.why or None} for f in inv.indicators],
        "unlisted": [{"gw": d.gw, "dev": d.dev} for d in inv.unlisted],
    }


def to_json(inv: Inventory) -> str:
    return json.dumps(inventory_json(inv), indent=1)
