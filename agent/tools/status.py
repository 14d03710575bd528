"""``ssc-agent status --config FILE [--json]``: the health of the agent running with a config.

It reads what the agent writes into its data_dir every few seconds (``health.json``,
:mod:`agent.gateway.health`) and the store, read-only; it needs neither the uplink nor the
agent's cooperation. Whether an agent runs is the data_dir lock (``agent.lock``, held with
``flock`` while an agent runs), seen in ``/proc/locks`` without taking it, so a status never
keeps an agent from starting. With no agent running it says so and still shows the buffer.

Exit status: 0 the agent runs, every device that has been polled is up, the uplink is connected
and the buffer takes data; 1 it runs but something of that is not so (or its health file is
stale: the agent is stuck); 2 a bad config; 3 no agent runs with this data_dir.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from agent.console import EXIT_FAILURE, EXIT_OK
from agent.errors import StorageError

EXIT_NOT_RUNNING = 3


DESCRIPTION = (
    "Show the health of the agent that runs with this config: devices up or down with their "
    "last good poll and error counts, the buffer, the uplink and the KPI windows. Read from "
    "the agent's data_dir (health.json, written every 5 s, and the buffer, read-only): works "
    "without the uplink. Exit 0 all up; 1 a device down, the uplink down, the buffer "
    "unwritable or the agent not answering; 2 a bad config; 3 no agent runs with this "
    "data_dir (the buffer is still shown).")


def add_parser(sub: Any) -> None:
    """``ssc-agent status`` on the command line's subparsers."""
    p = sub.add_parser("status", description=DESCRIPTION,
                       help="devices, buffer, uplink and KPI windows of the running agent")
    p.add_argument("--config", required=True, type=Path, metavar="FILE", help="TOML config")
    p.add_argument("--json", action="store_true",
                   help="one JSON document: the agent's health snapshot under 'health' (null "
                   "when none), 'running', 'stale', 'problems' and the store's 'buffer'")


def lock_held(lock: Path) -> bool | None:
    """Whether some process holds the flock on ``lock`` (from /proc/locks, without taking
    it); None when that cannot be told."""
    try:
        st = lock.stat()
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        table = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    wanted = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:02:131 0 EOF"; a waiter's line has a "->"
        if len(fields) < 6 or fields[1] != "FLOCK" or "->" in fields:
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == wanted:
                return True
        except ValueError:
            continue
    return False


def read_health(path: Path) -> dict[str, Any] | None:
    """The agent's last health snapshot, or None (no file, or not one)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("devices"), list) else None


def read_buffer(data_dir: Path) -> dict[str, Any] | None:
    """The store's figures, read-only (None when there is no store yet)."""
    from agent.gateway.health import store_figures
    from agent.gateway.store import BatchStore
    from agent.gateway.supervisor import STORE_FILE

    path = data_dir / STORE_FILE
    if not path.exists():
        return None
    store = BatchStore.open_readonly(path)
    try:
        return store_figures(store.stats(), store.drop_totals())
    finally:
        store.close()


def gather(data_dir: Path, *, now: float) -> dict[str, Any]:
    """Everything ``status`` shows, as the ``--json`` document."""
    from agent.gateway.health import HEALTH_FILE, STALE_AFTER_SECONDS, problems

    if data_dir.exists() and not os.access(data_dir, os.R_OK | os.X_OK):
        # else every file in it would look absent: "not running" would be a wrong answer
        raise StorageError(f"data_dir {data_dir}: not readable by this user; run status as "
                           "root or as the agent's user")
    health_path = data_dir / HEALTH_FILE
    health = read_health(health_path)
    running = lock_held(data_dir / "agent.lock")
    try:
        age: float | None = max(0.0, now - health_path.stat().st_mtime)
    except OSError:
        age = None
    if running is None:  # cannot tell from the lock: a fresh file says it runs
        running = age is not None and age < STALE_AFTER_SECONDS
    stale = bool(running) and (health is None or age is None or age >= STALE_AFTER_SECONDS)
    wrong = problems(health) if running and health is not None and not stale else []
    if stale:
        wrong.append("the agent does not update its health file (stuck or starting)")
    if not running:
        wrong = ["no agent runs with this data_dir"]
    return {"running": running, "stale": stale, "health_age_s": age, "problems": wrong,
            "health": health, "buffer": read_buffer(data_dir)}


def exit_code(report: dict[str, Any]) -> int:
    """0 all well, 1 something wrong with a running agent, 3 none runs."""
    if not report["running"]:
        return EXIT_NOT_RUNNING
    return EXIT_FAILURE if report["problems"] else EXIT_OK


# ------------------------------------------------------------------------- human output


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"


def _utc(ms: int | None) -> str:
    if ms is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000))


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def render(report: dict[str, Any], config_path: Path) -> str:
    """The short human table."""
    from agent.gateway.health import age_text as _age
    from agent.gateway.health import figure

    health = report["health"]
    lines: list[str] = []
    if not report["running"]:
        lines.append(f"agent    not running (no agent holds the data_dir of {config_path})")
        if health is not None:
            lines.append(f"         last health: {_utc(health['t'])}, "
                         f"{_age(report['health_age_s'])} ago")
    else:
        state = "running" if not report["stale"] else "running, NOT ANSWERING"
        extra = ""
        if health is not None:
            extra = (f" (pid {health['pid']}, boot {health['boot']}, up "
                     f"{_age(health['uptime_s'])}, version {health['version']})")
        lines.append(f"agent    {state}{extra}; health {_age(report['health_age_s'])} old")
    if health is not None and report["running"]:
        u = health["uplink"]
        lines.append(f"uplink   {'connected' if u['connected'] else 'NOT CONNECTED'} "
                     f"{u['broker'] or '-'}; last ack {_age(u['last_ack_age_s'])} ago; "
                     f"{u['in_flight']} in flight")
    b = report["buffer"]
    if b is None:
        lines.append("buffer   none yet (the agent has not run with this data_dir)")
    else:
        said = health["buffer"]["state"] if health is not None and report["running"] else None
        lines.append(
            f"buffer   {said + ': ' if said else ''}{b['batches']} batches, {b['readings']} "
            f"readings, {_size(b['bytes'])}, oldest {_age(b['oldest_age_s'])}; dropped "
            f"{b['dropped_batches']} batches, {b['dropped_readings']} readings")
    if health is not None:
        rows = [["DEVICE", "STATE", "LAST GOOD POLL", "AGE", "POLLS", "FAILED", "IN A ROW",
                 "LAST ERROR"]]
        for d in health["devices"]:
            rows.append([d["name"], d["state"].upper() if d["state"] == "down" else d["state"],
                         _utc(d["last_good_ms"]), _age(d["last_good_age_s"]), str(d["polls"]),
                         str(d["failures"]), str(d["failures_in_a_row"]),
                         (d["last_error"] or "-")[:70]])
        if len(rows) > 1:
            lines.append("")
            lines.extend(_aligned(rows))
        kpis = health["kpis"]
        if kpis["open"] or kpis["latest"]:
            latest = {k["kpi"]: k for k in kpis["latest"]}
            rows = [["KPI", "OPEN WINDOW", "LATEST CLOSED", "VALUE"]]
            for k in kpis["open"]:
                last = latest.get(k["kpi"])
                closed = "-" if last is None else f"{_utc(last['start'])[11:]}-" \
                    f"{_utc(last['end'])[11:]}"
                value = "-" if last is None else (
                    f"{figure(last['value'])} {last['unit'] or ''}".strip() if last["valid"]
                    else "not valid")
                rows.append([k["kpi"], f"{_utc(k['start'])[11:]}-{_utc(k['end'])[11:]}",
                             closed, value])
            lines.append("")
            lines.extend(_aligned(rows))
    if report["problems"] and report["running"]:
        lines.append("")
        lines.extend(f"problem: {p}" for p in report["problems"])
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Run ``ssc-agent status``."""
    from agent.config import load_config

    config = load_config(args.config, require_uplink=False, check_sources=False)
    report = gather(Path(config.gateway.data_dir), now=time.time())
    if args.json:
        print(json.dumps(report, indent=1, ensure_ascii=False))
    else:
        print(render(report, args.config))
    return exit_code(report)
