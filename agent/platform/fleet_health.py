"""``ssc-agent fleet health``: every gateway's retained health summary, read from the broker.

Each gateway keeps one summary retained on ``{prefix}/{gw}/health`` (wire format §8.2,
docs/operations.md "Health and status"); this subscribes to one or all of them, decodes each
within its bounds (:func:`agent.wire.decode_health`) and prints a line per gateway. It only
reads: a broker account allowed to subscribe to ``{prefix}/+/health`` will do.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError
from agent.platform import config_push

if TYPE_CHECKING:
    from agent.wire import HealthSummary

QUIET_SECONDS = 1.0  # no retained message for this long: the broker has sent them all
DESCRIPTION = (
    "Read the retained {prefix}/{gw}/health of one or every gateway (sent by the gateway when "
    "it connects and every minute) and print, per gateway, devices up/down/pending, the "
    "buffer, the last PUBACK's age, KPI windows and the down devices. Exit 0; 1 when the "
    "broker cannot be reached; 2 for bad flags.")


def add_parser(sub: Any) -> None:
    """``fleet health`` on ``ssc-agent fleet``'s subparsers."""
    p = sub.add_parser("health", description=DESCRIPTION,
                       help="each gateway's health summary (devices, buffer, uplink, KPIs)")
    config_push.reader_flags(p, "summaries")


async def read_health(settings: Any, prefix: str, gw: str | None, *,
                      limit: float) -> list[HealthSummary]:
    """The summaries retained under ``prefix`` (one gateway's, or every one's), each checked
    against its topic; a payload that does not decode is reported on stderr and skipped."""
    from agent.mqtt import read_retained
    from agent.wire import decode_health

    head = prefix.rstrip("/")
    topic = f"{head}/{gw or '+'}/health"
    out = []
    for name, payload in await read_retained(settings, topic, quiet=QUIET_SECONDS,
                                             limit=limit):
        try:
            summary = decode_health(payload)
        except Exception as exc:
            print(f"ssc-agent: {name}: {str(exc)[:200]}", file=sys.stderr)
            continue
        if name == f"{head}/{summary.gw}/health":
            out.append(summary)
        else:
            print(f"ssc-agent: {name}: says gateway {summary.gw!r}: skipped", file=sys.stderr)
    return sorted(out, key=lambda s: s.gw)


def _age(seconds: float | None) -> str:
    from agent.platform.fleet import span  # (the platform side imports nothing of gateway/)

    return "-" if seconds is None else span(round(seconds * 1000))


def render(found: list[HealthSummary], *, now_ms: int) -> str:
    """An aligned line per gateway, the down devices under it."""
    if not found:
        return "no health summary found"
    rows = [["GATEWAY", "AT", "UP", "DOWN", "PENDING", "BUFFER", "OLDEST", "LAST ACK", "KPIS"]]
    for s in found:
        at = dt.datetime.fromtimestamp(s.t / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        rows.append([
            s.gw, f"{at} ({_age(max(0, now_ms - s.t) / 1000)} ago)", str(s.devices_up),
            str(s.devices_down), str(s.devices_pending),
            f"{s.buffer_state}: {s.buffer_batches} batches, {s.buffer_readings} readings",
            _age(s.buffer_oldest_age_s), _age(s.uplink_last_ack_age_s),
            f"{s.kpis_open} open, {s.kpis_closed} closed"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    lines = [line(rows[0])]
    for row, s in zip(rows[1:], found, strict=True):
        lines.append(line(row))
        lines.extend(f"    down: {d.name}: {d.failures} failed polls in a row; "
                     f"{d.error or '-'}" for d in s.down)
        if s.devices_down > len(s.down):
            lines.append(f"    and {s.devices_down - len(s.down)} more down")
    return "\n".join(lines)


def to_json(found: list[HealthSummary]) -> str:
    """``--json``: the summaries with the keys of wire format §8.2, one object each."""
    from agent.wire import encode_health

    return json.dumps({"gateways": [json.loads(encode_health(s)) for s in found]}, indent=1)


def main(args: argparse.Namespace) -> int:
    """Run ``fleet health``: 0, 1 when the broker cannot be reached; ConfigError (2)."""
    settings = config_push._settings(args)
    if args.gw is not None:
        from agent.wire.model import _GATEWAY_ID

        if not _GATEWAY_ID.fullmatch(args.gw):
            raise ConfigError(f"--gw: {args.gw[:64]!r} is not a gateway id ([A-Za-z0-9_-]+)")
    ok, found = asyncio.run(config_push._mqtt_call(
        read_health(settings, args.topic_prefix, args.gw, limit=args.timeout)))
    if not ok:
        return 1
    print(to_json(found or []) if args.json else render(found or [],
                                                        now_ms=int(time.time() * 1000)))
    return 0
