"""``ssc-agent``: the command line (a contract: docs/architecture.md "Command line").

Exit status 0 on success, 1 on failure, 2 on bad usage or an invalid config, and for ``run``
when its data_dir cannot be used (cannot be created, not writable, in use by another agent,
store locked); errors go to stderr, one line each, naming where. When the reader of stdout
goes away (``… | head``), a command stops quietly with status 141, as a shell tool killed by
SIGPIPE does, so that ``set -o pipefail`` scripts see the same status as for ``cat``. Heavy
modules are imported per command so that ``validate`` and ``--help`` stay quick on a Pi.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__
from agent.console import EXIT_BROKEN_PIPE, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, err
from agent.errors import AgentError, ConfigError, StorageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.config import AgentConfig

EPILOG = """\
commissioning a site:
  ssc-agent sample-config > /etc/ssc-agent/config.toml   # start from a commented config
  ssc-agent validate --config /etc/ssc-agent/config.toml # every error at once, with where
  ssc-agent test --config /etc/ssc-agent/config.toml     # poll each device once, show values
  ssc-agent run --config /etc/ssc-agent/config.toml      # under systemd: deploy/ssc-agent.service
trying it out:
  ssc-agent demo --duration 30                            # the whole chain on this machine
"""


def _parser(tools: bool = True) -> argparse.ArgumentParser:
    """The command line; without ``tools``, only the commands whose bodies are in this module
    (see :func:`_own_command`)."""
    parser = argparse.ArgumentParser(
        prog="ssc-agent",
        description="Edge agent for smart-city gateways: polls meters and sensors, computes "
        "city KPIs and forwards batches over MQTT with store-and-forward buffering.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ssc-agent {__version__}")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="override [gateway] log_level (default info)")
    parser.add_argument("--log-json", action=argparse.BooleanOptionalAction, default=None,
                        help="JSON log lines (default: when stderr is not a terminal)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the agent (what systemd starts)",
                       description="Poll the configured devices and forward batches upstream.")
    p.add_argument("--config", required=True, type=Path, metavar="FILE", help="TOML config")

    p = sub.add_parser("validate", help="check a config and report every error at once",
                       description="Check a config without opening a port or the network. "
                       "Exit 0 when valid, 2 with one line per error otherwise.")
    checked = p.add_mutually_exclusive_group(required=True)
    checked.add_argument("--config", type=Path, metavar="FILE", help="TOML config")
    checked.add_argument("--city", type=Path, metavar="FILE", help="a city config instead: "
                         "sites and targets on the indicator catalogue (docs/city.md)")

    p = sub.add_parser("sample-config", help="print a commented config that validates")
    p.add_argument("--driver", metavar="NAME", help="show the device part of this driver")

    sub.add_parser("drivers", help="list installed drivers with version and origin")

    p = sub.add_parser("schema", help="print the config's JSON Schema (editor completion)",
                       description="Print the JSON Schema (draft-07) of the config file, with "
                       "the [[devices]] tables of every installed driver. Editors that check "
                       "TOML against a schema (Taplo, Even Better TOML) then complete keys and "
                       "show types, ranges, choices and defaults; docs/config.md says how to "
                       "point them at it. `validate` still checks what spans keys and tables.")
    p.add_argument("--city", action="store_true", help="the city config's schema instead")

    if tools:
        from agent.tools import device_test, modbus_commands, status

        device_test.add_parser(sub)
        modbus_commands.add_parsers(sub)
        status.add_parser(sub)

    p = sub.add_parser("receive",
                       help="the central platform side: store batches in SQLite or PostgreSQL",
                       description="Subscribe to every gateway's batches, decode them, drop "
                       "duplicates by (gw, seq), report seq gaps and store readings.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--broker", metavar="URL", help="mqtt://HOST:PORT or mqtts://…")
    source.add_argument("--source", metavar="URLS",
                        help="nats://HOST:PORT[,nats://HOST:PORT…]: read the gateways' MQTT "
                        "batches from a NATS cluster through a durable JetStream consumer "
                        "(named by --group, default ssc-receiver; docs/platform.md)")
    p.add_argument("--sink", required=True, metavar="URL",
                   help="sqlite:///relative.db, sqlite:////absolute/path.db or "
                   "postgresql://USER@HOST:PORT/DB[?sslmode=verify-full&sslrootcert=FILE…] "
                   "(no password in it)")
    p.add_argument("--sink-password-file", type=Path, metavar="FILE",
                   help="PostgreSQL password (first line); default: libpq's PGPASSFILE or "
                   "~/.pgpass")
    p.add_argument("--keep-readings", metavar="DURATION",
                   help="delete readings older than this (e.g. 90d); default: keep")
    p.add_argument("--keep-aggregates", metavar="DURATION",
                   help="delete aggregates that ended longer ago than this; default: keep")
    p.add_argument("--topic-prefix", default="ssc/v1", help="default ssc/v1")
    p.add_argument("--client-id", default="ssc-receiver",
                   help="MQTT client id; its persistent session keeps batches while away")
    p.add_argument("--group", metavar="NAME", help="shared-subscription group to scale out "
                   "(with --source: the durable consumer the receivers share)")
    session = p.add_mutually_exclusive_group()
    session.add_argument("--create-session", action="store_true",
                         help="subscribe once with --client-id's persistent session and exit: "
                         "run at deploy time so the broker keeps batches published before the "
                         "receiver first runs (with --source: create the durable consumer; "
                         "docs/platform.md)")
    session.add_argument("--retire-session", action="store_true",
                         help="remove this --client-id from its --group for good: unsubscribe, "
                         "store what the broker queued for it, then delete its session")
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path, metavar="FILE")
    p.add_argument("--ca-file", type=Path, metavar="FILE")
    p.add_argument("--cert-file", type=Path, metavar="FILE",
                   help="client certificate (PEM), when the broker wants one")
    p.add_argument("--key-file", type=Path, metavar="FILE", help="its private key (PEM)")

    if tools:
        from agent.platform import fleet
        from agent.platform.report import command as report_command

        fleet.add_parser(sub)
        report_command.add_parser(sub)
    p = sub.add_parser("kpi", help="KPI tools: replay recorded readings through the engine")
    kpi_sub = p.add_subparsers(dest="kpi_command", metavar="KPI_COMMAND", required=True)
    r = kpi_sub.add_parser(
        "replay", help="run the KPI engine over a CSV of readings, print JSON Lines",
        description="Run the [[kpis]] of a config over recorded readings. Input: UTF-8 CSV "
        "with the header time,device,point,value (time ISO 8601 with offset or Z; empty value "
        "= a missing reading). Output: one JSON object per closed window, ordered by end, "
        "then kpi. Only [gateway] (id, timezone) and [[kpis]] are needed. Exit 0 ok, 1 bad "
        "input (the error names the line), 2 bad usage or invalid config.")
    r.add_argument("--config", required=True, type=Path, metavar="FILE", help="TOML config")
    r.add_argument("--input", required=True, type=Path, metavar="CSV", help="readings")
    r.add_argument("--output", type=Path, metavar="JSONL", help="default: stdout")

    p = sub.add_parser("buffer", help="inspect the store-and-forward buffer")
    p.add_argument("action", choices=["stats", "export"])
    p.add_argument("--config", required=True, type=Path, metavar="FILE", help="TOML config")
    p.add_argument("--output", type=Path, metavar="DIR",
                   help="export: write one .ssc1 payload file per batch here (default: "
                   "one JSON line per batch on stdout)")

    p = sub.add_parser("demo", help="the whole chain on this machine, no hardware",
                       description="Simulated meters, a local broker (mosquitto when on PATH, "
                       "else an embedded one), the agent and the receiver, printing readings "
                       "and batches as they arrive.")
    p.add_argument("--duration", type=float, default=60.0, metavar="SECONDS",
                   help="stop after this long (default 60; 0 = until Ctrl-C)")
    p.add_argument("--meters", type=int, default=3, help="simulated meters (default 3)")
    p.add_argument("--interval", default="1 s", help="poll interval (default '1 s')")
    p.add_argument("--broker", metavar="URL",
                   help="use this broker instead of starting one; 'embedded' starts the "
                   "pure-Python broker even when mosquitto is installed")
    p.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="keep the agent's buffer and the receiver's database here")
    p.add_argument("--status-page", type=int, metavar="PORT",
                   help="serve the agent's status page on http://127.0.0.1:PORT/")
    return parser


def _load(path: Path, *, require_uplink: bool = True, check_sources: bool = True) -> AgentConfig:
    from agent.config import load_config

    return load_config(path, require_uplink=require_uplink, check_sources=check_sources)


def _cmd_validate(args: argparse.Namespace) -> int:
    if args.city is not None:
        from agent.platform.city_checks import describe, load_city

        print(describe(args.city, load_city(args.city)))
        return EXIT_OK
    config = _load(args.config)
    print(f"{args.config}: valid ({len(config.devices)} devices, {len(config.kpis)} kpis, "
          f"{len(config.buses)} buses)")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from agent.gateway.allocator import tune_allocator
    from agent.gateway.supervisor import run_agent
    from agent.logs import configure_logging

    tune_allocator()

    config = _load(args.config)
    configure_logging(args.log_level or config.gateway.log_level, json=args.log_json)
    try:
        # SIGHUP reads the file again, with the same rules as validate
        asyncio.run(run_agent(config, config_source=lambda: _load(args.config)))
    except StorageError as exc:
        # as a config error: systemd's restarts do not help until someone fixes the place
        err(str(exc))
        return EXIT_USAGE
    return EXIT_OK


def _cmd_sample(args: argparse.Namespace) -> int:
    from agent.tools.sample_config import sample_config

    sys.stdout.write(sample_config(args.driver))
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    import json

    if args.city:
        from agent.platform.city import city_schema

        schema = city_schema()
    else:
        from agent.tools.config_schema import config_schema

        schema = config_schema()
    print(json.dumps(schema, indent=2, ensure_ascii=False))
    return EXIT_OK


def _cmd_drivers(_: argparse.Namespace) -> int:
    from agent.driver import discover

    entries = discover()
    if not entries:
        err("no drivers installed (reinstall ssc-edge-agent)")
        return EXIT_FAILURE
    width = max(len(n) for n in entries)
    broken = 0
    for name in sorted(entries):
        entry = entries[name]
        if entry.spec is None:
            broken += 1
            print(f"{name:<{width}}  BROKEN   {entry.origin}: {entry.error}")
        else:
            print(f"{name:<{width}}  {entry.spec.version:<8} {entry.origin}  "
                  f"{entry.spec.description}")
    return EXIT_FAILURE if broken else EXIT_OK


def _receive_args_problems(args: argparse.Namespace) -> list[str]:
    """What in receive's flags cannot be subscribed to (the agent's config rules, as flags)."""
    from agent.endpoints import printable_problem, topic_prefix_problem

    problems: list[str] = []
    problem = topic_prefix_problem(args.topic_prefix)
    if problem is not None:
        problems.append(f"--topic-prefix: {problem}")
    problem = printable_problem(args.client_id) if args.client_id else "must not be empty"
    if problem is not None:
        problems.append(f"--client-id: {problem}")
    if args.group is not None and (not args.group or any(c in args.group for c in "/+#")
                                   or printable_problem(args.group) is not None):
        problems.append(f"--group: {args.group!r}: a shared-subscription group is one topic "
                        "level: no '/', '+' or '#', not empty")
    if args.source is not None:
        # NATS names: a durable consumer has no . * > or blanks; MQTT '/' becomes '.'
        if args.group is not None and any(c in args.group for c in ".*> \t"):
            problems.append(f"--group: {args.group[:64]!r}: with --source it names a JetStream "
                            "consumer: no '.', '*', '>' or blanks")
        if "." in args.topic_prefix:
            problems.append(f"--topic-prefix: {args.topic_prefix[:64]!r}: with --source no '.' "
                            "(NATS maps MQTT topic levels to subject tokens split by '.')")
    for flag, value in (("--keep-readings", args.keep_readings),
                        ("--keep-aggregates", args.keep_aggregates)):
        if value is not None:
            try:
                _retention_ms(value)
            except ValueError as exc:
                problems.append(f"{flag}: {exc}")
    return problems


def _retention_ms(text: str | None) -> int | None:
    from agent.units import parse_duration

    return None if text is None else int(parse_duration(text) * 1000)


def _cmd_receive(args: argparse.Namespace) -> int:
    from agent.endpoints import parse_broker_url
    from agent.logs import configure_logging
    from agent.platform.receiver import ReceiverSettings, check_settings, run_until_signalled
    from agent.platform.sink import check_sink_url

    problems = _receive_args_problems(args)
    if problems:
        raise ConfigError(problems)
    configure_logging(args.log_level or "info", json=args.log_json)
    from agent.platform.jetstream import client_missing, parse_source

    try:
        broker = parse_broker_url(args.broker) if args.broker is not None else None
    except ValueError as exc:
        err(f"--broker: {exc}")
        return EXIT_USAGE
    try:
        servers = parse_source(args.source) if args.source is not None else ()
    except ValueError as exc:
        err(f"--source: {exc}")
        return EXIT_USAGE
    if servers and (missing := client_missing()) is not None:
        err(f"--source: {missing}")
        return EXIT_USAGE
    settings = ReceiverSettings(
        broker=broker,
        nats_servers=servers,
        sink_url=args.sink,
        topic_prefix=args.topic_prefix,
        client_id=args.client_id,
        username=args.username,
        password_file=args.password_file,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        shared_group=args.group,
        sink_password_file=args.sink_password_file,
        keep_readings_ms=_retention_ms(args.keep_readings),
        keep_aggregates_ms=_retention_ms(args.keep_aggregates),
    )
    try:
        check_sink_url(args.sink, args.sink_password_file)
    except ConfigError as exc:
        raise ConfigError([f"--sink: {p}" for p in exc.problems]) from None
    check_settings(settings)
    if args.retire_session:
        if settings.broker is None:
            raise ConfigError("--retire-session: with --source the receivers share one durable "
                              "consumer and keep no session of their own: just stop it")
        from agent.platform.receiver import retire_session

        drained = asyncio.run(retire_session(settings))
        print(f"session {args.client_id!r} retired; {drained} queued messages stored")
        return EXIT_OK
    if args.create_session:
        from agent.platform.receiver import create_session

        topics = asyncio.run(create_session(settings))
        print(f"session {args.client_id!r} subscribed to {', '.join(topics)}")
        return EXIT_OK
    # SIGTERM/SIGINT stop it cleanly (exit 0, a receiver_stopped line), as `run` does.
    asyncio.run(run_until_signalled(settings))
    return EXIT_OK


def _cmd_kpi(args: argparse.Namespace) -> int:
    from agent.kpi.replay import replay_paths

    config = _load(args.config, require_uplink=False, check_sources=False)
    return replay_paths(config, args.input, args.output, progress=True)


def _cmd_buffer(args: argparse.Namespace) -> int:
    import json

    from agent.gateway.store import BatchStore
    from agent.gateway.supervisor import STORE_FILE

    config = _load(args.config)
    path = Path(config.gateway.data_dir) / STORE_FILE
    if not path.exists():
        err(f"buffer {path} does not exist yet (the agent has not run with this data_dir)")
        return EXIT_FAILURE
    store = BatchStore.open_readonly(path)  # no writes, no salvage: safe while the agent runs
    try:
        if args.action == "stats":
            s = store.stats()
            age = "-" if s.oldest_age_ms is None else f"{s.oldest_age_ms / 1000:.0f} s"
            print(f"buffer:          {s.path}" + (f" (store {s.identity})" if s.identity
                                                          else ""))
            print(f"batches unsent:  {s.batches} ({s.readings} readings, "
                  f"{s.payload_bytes} payload bytes)")
            print(f"oldest unsent:   {age}")
            print(f"pending rows:    {s.pending_rows} (open batch, committed)")
            print(f"file size:       {s.file_bytes} bytes")
            print(f"boot / next seq: {s.boot} / {s.next_seq}")
            print(f"dropped:         {s.dropped_batches} batches, {s.dropped_readings} readings"
                  + "".join(f"; {reason or 'other'}: {b} batches, {r} readings"
                            for reason, (b, r) in sorted(store.drop_totals().items()))
                  + f"; with them {s.dropped_events} events, {s.dropped_aggregates} KPI windows")
            return EXIT_OK
        rows = store.iter_batches()
        if args.output is not None:
            args.output.mkdir(parents=True, exist_ok=True)
            for seq, _, _, payload in rows:
                (args.output / f"{config.gateway.id}-{seq:010d}.ssc1").write_bytes(payload)
            print(f"exported {len(rows)} batches to {args.output}")
        else:
            for seq, created, n, payload in rows:
                print(json.dumps({"seq": seq, "created": created, "readings": n,
                                  "bytes": len(payload)}))
        return EXIT_OK
    finally:
        store.close()


def _cmd_demo(args: argparse.Namespace) -> int:
    from agent.tools.demo import run_demo

    return asyncio.run(run_demo(
        duration=args.duration or None,
        meters=args.meters,
        interval=args.interval,
        broker_url=args.broker,
        data_dir=args.data_dir,
        status_page=args.status_page,
    ))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run,
    "validate": _cmd_validate,
    "sample-config": _cmd_sample,
    "drivers": _cmd_drivers,
    "schema": _cmd_schema,
    "receive": _cmd_receive,
    "kpi": _cmd_kpi,
    "buffer": _cmd_buffer,
    "demo": _cmd_demo,
}
# The options before a command, and whether each takes a value.
_GLOBAL_OPTIONS = {"--log-level": True, "--log-json": False, "--no-log-json": False}


def _own_command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs when it is one of :data:`COMMANDS` and nothing before it asks
    for the whole command line (help, version, anything unexpected); else None. The other
    commands (test, probe, fleet, report, …) live in their own modules: ``run`` should not
    hold them in memory (docs/architecture.md "Footprint")."""
    words = iter(argv)
    for word in words:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
        name = word.partition("=")[0]
        known = [o for o in _GLOBAL_OPTIONS if o.startswith(name)]  # argparse's abbreviations
        if len(name) < 3 or len(known) != 1:
            return None
        if _GLOBAL_OPTIONS[known[0]] and "=" not in word:
            next(words, None)
    return None


def _tool_commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    from agent.platform import fleet
    from agent.platform.report import command as report_command
    from agent.tools import device_test, modbus_commands, status

    return {
        "test": device_test.main,
        **modbus_commands.COMMANDS,
        "fleet": fleet.main,
        "report": report_command.main,
        "status": status.main,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ssc-agent`` console script."""
    words = sys.argv[1:] if argv is None else list(argv)
    try:
        own = _own_command(words)
        args = _parser(tools=own is None).parse_args(words)  # --help and --version print too
        command = COMMANDS.get(args.command) or _tool_commands()[args.command]
        status = command(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        return _stdout_gone()
    except BaseExceptionGroup as group:  # a task of a command's TaskGroup wrote to the pipe
        if group.subgroup(BrokenPipeError) is None:
            raise
        return _stdout_gone()
    except ConfigError as exc:
        for problem in exc.problems:
            err(problem)
        return EXIT_USAGE
    except AgentError as exc:
        err(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


def _stdout_gone() -> int:
    # Python flushes stdout once more at exit: point it at /dev/null so that flush has nowhere
    # to fail and prints no "Exception ignored" lines.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
