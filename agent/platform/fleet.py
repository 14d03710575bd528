"""``ssc-agent fleet``: which gateways are online, silent, late or losing data, from the
summaries the receiver keeps in its database (docs/platform.md "Fleet view").

The figures are pure functions of what :func:`agent.platform.sink.summary.read_fleet` reads
and of ``now`` (:func:`gateway_view`, :func:`render_table`, :func:`to_json`); the command
around them opens the sink. Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.platform import config_push, fleet_health, fleet_inventory
from agent.platform.flags import add_sink_flags

if TYPE_CHECKING:
    from agent.platform.sink.summary import GatewayRow

DEFAULT_SILENT_AFTER = "15 min"
WINDOW_MS = 3_600_000  # lag and skew: the batches stored in the last hour

COLUMNS_HELP = """\
columns (one row per gateway that sent a batch or a status; '!' marks a flagged row):
  GATEWAY   the gateway id
  STATE     online / offline as its status topic last said (offline: a clean stop or its
            last will, i.e. the broker lost it); '-' when no status ever came
  LAST SEEN when the receiver stored its latest batch (receiver clock), e.g. '3 min ago'
  SEQ       the highest seq of its current store (a replaced store starts a new series)
  MISSING   batches missing: seqs in the open gaps of its seq series (a late batch closes
            them; a gap the gateway's buffer_drop explains stays open)
  DROPPED   readings its buffer reported dropped (buffer_drop events), since the first batch
  LAG       reading time to storage, p50/p99 over the batches stored in the last hour
            (each batch at its median reading, weighted by its readings)
  SKEW      clock skew estimate: how far the gateway's clock is ahead (+) or behind (-), the
            largest 'created' minus arrival of the last hour's batches (transit delay only
            makes a batch look older, so the largest is the closest)
  KPI       KPI windows received
  FLAGS     silent: no batch for longer than --silent-after (or none ever);
            offline: its status says offline
--json prints the same with stable keys (docs/platform.md)."""


@dataclass(frozen=True, slots=True)
class GatewayView:
    """One gateway's line of the fleet view."""

    gw: str
    state: str | None
    last_seen: int | None
    store: str | None
    last_seq: int | None
    batches: int
    readings: int
    gaps: int
    missing: int
    dropped_batches: int
    dropped_readings: int
    lag_p50_ms: int | None
    lag_p99_ms: int | None
    recent_batches: int
    skew_ms: int | None
    kpi_windows: int
    flags: tuple[str, ...]


def weighted_percentile(values: list[tuple[int, int]], q: float) -> int | None:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of ``(value, weight)`` pairs: the
    smallest value whose cumulative weight reaches ``q``% of the total; None when the total
    weight is 0."""
    total = sum(w for _, w in values)
    if total <= 0:
        return None
    rank = q / 100 * total
    seen = 0
    for value, weight in sorted(values):
        seen += weight
        if seen >= rank:
            return value
    return max(v for v, _ in values)  # rounding: q = 100


def gateway_view(row: GatewayRow, *, now_ms: int, silent_after_ms: int) -> GatewayView:
    """The fleet view's figures of one gateway at ``now_ms``."""
    lags = [(lag, n) for lag, n, _ in row.recent if lag is not None and n > 0]
    skews = [skew for _, _, skew in row.recent]
    flags = []
    if row.last_seen is None or now_ms - row.last_seen > silent_after_ms:
        flags.append("silent")
    if row.state == "offline":
        flags.append("offline")
    return GatewayView(
        gw=row.gw, state=row.state, last_seen=row.last_seen, store=row.store,
        last_seq=row.last_seq, batches=row.batches, readings=row.readings, gaps=row.gaps,
        missing=row.missing, dropped_batches=row.dropped_batches,
        dropped_readings=row.dropped_readings,
        lag_p50_ms=weighted_percentile(lags, 50), lag_p99_ms=weighted_percentile(lags, 99),
        recent_batches=len(row.recent), skew_ms=max(skews) if skews else None,
        kpi_windows=row.kpi_windows, flags=tuple(flags))


# ------------------------------------------------------------------------- output


def iso(ms: int) -> str:
    """Epoch ms as UTC ISO 8601 to the second."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def span(ms: int) -> str:
    """A duration for people: ``350 ms``, ``4.2 s``, ``12 min``, ``3.5 h``, ``2.0 d``."""
    a = abs(ms)
    if a < 1000:
        return f"{ms} ms"
    if a < 60_000:
        return f"{ms / 1000:.1f} s"
    if a < 3_600_000:
        return f"{ms / 60_000:.0f} min"
    if a < 86_400_000:
        return f"{ms / 3_600_000:.1f} h"
    return f"{ms / 86_400_000:.1f} d"


def ago(ms: int | None, now_ms: int) -> str:
    """When, relative to now within a week (``3 min ago``), else the UTC date and time."""
    if ms is None:
        return "never"
    if now_ms - ms > 7 * 86_400_000 or ms > now_ms + 60_000:
        return iso(ms)
    return f"{span(max(0, now_ms - ms))} ago"


def _cells(v: GatewayView, now_ms: int) -> list[str]:
    lag = "-" if v.lag_p50_ms is None else f"{span(v.lag_p50_ms)} / {span(v.lag_p99_ms or 0)}"
    skew = "-" if v.skew_ms is None else ("+" if v.skew_ms > 0 else "") + span(v.skew_ms)
    return ["!" if v.flags else "", v.gw, v.state or "-", ago(v.last_seen, now_ms),
            "-" if v.last_seq is None else str(v.last_seq), str(v.missing),
            str(v.dropped_readings), lag, skew, str(v.kpi_windows), ",".join(v.flags)]


HEADER = ["", "GATEWAY", "STATE", "LAST SEEN", "SEQ", "MISSING", "DROPPED", "LAG p50 / p99",
          "SKEW", "KPI", "FLAGS"]
_RIGHT = {"SEQ", "MISSING", "DROPPED", "KPI"}


def render_table(views: list[GatewayView], *, now_ms: int, silent_after_ms: int) -> str:
    """The human table: aligned columns, flagged rows marked ``!``, a summary line."""
    rows = [HEADER, *(_cells(v, now_ms) for v in views)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if h in _RIGHT else c.ljust(w)
                 for c, w, h in zip(r, widths, HEADER, strict=True)]
        lines.append(" ".join(cells).rstrip())
    flagged = sum(1 for v in views if v.flags)
    lines.append(f"{len(views)} gateways, {flagged} flagged; at {iso(now_ms)}; silent after "
                 f"{span(silent_after_ms)}; lag and skew over the last hour")
    return "\n".join(lines)


def to_json(views: list[GatewayView], *, now_ms: int, silent_after_ms: int) -> str:
    """The ``--json`` document (keys documented in docs/platform.md, stable)."""
    return json.dumps({
        "now_ms": now_ms,
        "silent_after_ms": silent_after_ms,
        "window_ms": WINDOW_MS,
        "gateways": [{
            "gw": v.gw,
            "state": v.state,
            "last_seen_ms": v.last_seen,
            "store": v.store,
            "last_seq": v.last_seq,
            "batches": v.batches,
            "readings": v.readings,
            "gaps": v.gaps,
            "batches_missing": v.missing,
            "dropped_batches": v.dropped_batches,
            "dropped_readings": v.dropped_readings,
            "lag_p50_ms": v.lag_p50_ms,
            "lag_p99_ms": v.lag_p99_ms,
            "recent_batches": v.recent_batches,
            "skew_ms": v.skew_ms,
            "kpi_windows": v.kpi_windows,
            "silent": "silent" in v.flags,
            "flags": list(v.flags),
        } for v in views],
    }, indent=1)


# ------------------------------------------------------------------------- the command


def add_parser(sub: Any) -> None:
    """``ssc-agent fleet`` on the command line's subparsers."""
    p = sub.add_parser(
        "fleet", help="which gateways are online, silent, late or losing data",
        description="Print, per gateway, what the receiver's database says about it, from "
        "summaries kept at ingest (never a scan of the readings). Only reads: a read-only "
        "database role will do. Exit 0; 2 when the sink does not exist, cannot be opened or "
        "has not been migrated by this release's receiver yet; 1 when the database fails "
        "while it is read.",
        epilog=COLUMNS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sink_flags(p, required=False)
    p.add_argument("--silent-after", default=DEFAULT_SILENT_AFTER, metavar="DURATION",
                   help="flag gateways without a batch for longer (default "
                   f"{DEFAULT_SILENT_AFTER!r})")
    p.add_argument("--json", action="store_true", help="one JSON document (stable keys)")
    commands = config_push.add_parsers(p)  # push-config, config-state, keygen
    fleet_health.add_parser(commands)
    fleet_inventory.add_parser(commands)


def main(args: argparse.Namespace) -> int:
    """Run ``ssc-agent fleet``: 0, 1 (the database failed while read); ConfigError (exit 2)
    for bad flags or a sink that does not exist or cannot be opened."""
    from agent.errors import ConfigError

    if args.fleet_command == "health":
        return fleet_health.main(args)
    if args.fleet_command == "inventory":
        return fleet_inventory.main(args)
    if args.fleet_command is not None:
        return config_push.main(args)
    if args.sink is None:
        raise ConfigError("fleet: --sink is required (or a command: push-config, "
                          "config-state, keygen)")
    from agent.errors import first_line
    from agent.platform.sink.summary import read_fleet
    from agent.platform.sink.url import read_only_sink
    from agent.units import parse_duration

    try:
        silent_after_ms = int(parse_duration(args.silent_after) * 1000)
    except ValueError as exc:
        raise ConfigError(f"--silent-after: {exc}") from None
    now_ms = int(time.time() * 1000)
    with read_only_sink(args.sink, args.sink_password_file) as select:
        try:
            rows = read_fleet(select, now_ms - WINDOW_MS)
        except Exception as exc:  # the database failed while read: not the flags' fault
            print(f"ssc-agent: --sink: {first_line(exc)}", file=sys.stderr)
            return 1
    views = [gateway_view(r, now_ms=now_ms, silent_after_ms=silent_after_ms) for r in rows]
    render = to_json if args.json else render_table
    print(render(views, now_ms=now_ms, silent_after_ms=silent_after_ms))
    return 0
