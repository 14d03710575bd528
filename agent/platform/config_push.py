"""``ssc-agent fleet push-config``, ``fleet config-state`` and ``fleet keygen``: remote
configuration from the platform (docs/platform.md "Remote configuration").

push-config validates the config with the rules of ``validate`` and those of a pushed config
(:mod:`agent.config.pushed`) before anything is sent, signs it with the platform's Ed25519 key
(:func:`agent.wire.config_push.signed_bytes`) and publishes it retained, QoS 1, on
``{prefix}/{gw}/config/set``. config-state reads the gateways' retained
``{prefix}/{gw}/config/state``. The private key never appears in a line this prints.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import ConfigError

_T = TypeVar("_T")
DEFAULT_QUIET = 0.5
DEFAULT_TIMEOUT = 3.0


def add_parsers(fleet_parser: argparse.ArgumentParser) -> Any:
    """The three commands under ``ssc-agent fleet``; returns the subparsers (for more)."""
    sub = fleet_parser.add_subparsers(dest="fleet_command", metavar="FLEET_COMMAND")
    p = sub.add_parser(
        "push-config", help="sign a config and publish it to one gateway",
        description="Validate CONFIG (as `validate` does, and what a pushed config may not "
        "hold: [remote_config], secrets), sign it for gateway --gw with --key and publish it "
        "retained on {prefix}/{gw}/config/set. The gateway reports on config/state (see "
        "`fleet config-state`). Exit 0 when published (with --wait: when applied), 1 when the "
        "broker cannot be reached or the gateway did not apply it, 2 for an invalid config "
        "or bad flags.")
    p.add_argument("config", type=Path, metavar="CONFIG", help="the TOML config to push")
    p.add_argument("--gw", required=True, metavar="ID", help="the gateway id")
    p.add_argument("--key", required=True, type=Path, metavar="FILE",
                   help="the platform's Ed25519 private key (PEM; `fleet keygen`)")
    p.add_argument("--serial", type=int, metavar="N",
                   help="the push's serial, larger than any before to this gateway "
                   "(default: now in epoch ms)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for the gateway's config/state of this push and "
                   "print it (default 0: do not wait)")
    _broker_flags(p)

    p = sub.add_parser(
        "config-state", help="what each gateway did with its last pushed config",
        description="Read the retained {prefix}/{gw}/config/state of one or every gateway "
        "and print it: applied, rejected (with the errors) or rolled_back, the config hash "
        "and serial, when, and what the gateway runs now.")
    reader_flags(p, "states")

    p = sub.add_parser(
        "keygen", help="make the platform's Ed25519 key pair for signing configs",
        description="Write PREFIX.key (the private key, mode 0600: keep it on the platform) "
        "and PREFIX.pub (the public key: install it on each gateway as "
        "[remote_config] public_key_file). Never overwrites a file.")
    p.add_argument("--out", required=True, type=Path, metavar="PREFIX",
                   help="e.g. /etc/ssc-platform/config-signing")
    return sub


def reader_flags(p: argparse.ArgumentParser, what: str) -> None:
    """The flags of a command that reads the gateways' retained ``what``: ``--gw``,
    ``--json``, ``--timeout`` and the broker's."""
    p.add_argument("--gw", metavar="ID", help="only this gateway (default: every one)")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"read retained {what} for at most this long (default "
                   f"{DEFAULT_TIMEOUT:g})")
    _broker_flags(p)


def _broker_flags(p: argparse.ArgumentParser) -> None:
    """The broker flags of ``ssc-agent receive``."""
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://HOST:PORT or mqtts://…")
    p.add_argument("--topic-prefix", default="ssc/v1", help="default ssc/v1")
    p.add_argument("--client-id", metavar="ID",
                   help="MQTT client id (default: ssc-fleet- and the process id)")
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path, metavar="FILE")
    p.add_argument("--ca-file", type=Path, metavar="FILE")
    p.add_argument("--cert-file", type=Path, metavar="FILE",
                   help="client certificate (PEM), when the broker wants one")
    p.add_argument("--key-file", type=Path, metavar="FILE",
                   help="its private key (PEM); not the signing --key")


def main(args: argparse.Namespace) -> int:
    """Run one of the commands; ConfigError (exit 2) for a bad config or flags."""
    if args.fleet_command == "keygen":
        return _keygen(args)
    if args.fleet_command == "push-config":
        return _push(args)
    return _config_state(args)


def _keygen(args: argparse.Namespace) -> int:
    from agent.signing import write_keypair

    private, public = write_keypair(args.out)
    print(f"private key: {private} (mode 0600; keep it on the platform, pass it as --key)")
    print(f"public key:  {public} (install on each gateway: [remote_config] public_key_file)")
    return 0


def _settings(args: argparse.Namespace) -> Any:
    import os

    from agent.endpoints import parse_broker_url, topic_prefix_problem
    from agent.mqtt import MqttSettings

    problems = []
    try:
        address = parse_broker_url(args.broker)
    except ValueError as exc:
        problems.append(f"--broker: {exc}")
    problem = topic_prefix_problem(args.topic_prefix)
    if problem is not None:
        problems.append(f"--topic-prefix: {problem}")
    if problems:
        raise ConfigError(problems)
    return MqttSettings(address=address, client_id=args.client_id or f"ssc-fleet-{os.getpid()}",
                        username=args.username, password_file=args.password_file,
                        ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
                        timeout=10.0)


def read_config_text(path: Path) -> str:
    """The config file's text, within the size a pushed config may have."""
    from agent.wire.config_push import MAX_CONFIG_BYTES

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {len(data):,} bytes, over the {MAX_CONFIG_BYTES:,} a "
                          "pushed config may have")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


def _push(args: argparse.Namespace) -> int:
    from agent.config.pushed import load_pushed
    from agent.signing import load_private_key
    from agent.wire.config_push import ConfigSet, config_topic, encode_config_set

    settings = _settings(args)
    try:
        topic = config_topic(args.topic_prefix, args.gw, "set")
    except ValueError as exc:
        raise ConfigError(f"--gw: {exc}") from None
    text = read_config_text(args.config)
    try:
        config = load_pushed(text, local=None, base_dir=args.config.parent, check_files=False)
    except ConfigError as exc:
        raise ConfigError([f"{args.config}: {p}" for p in exc.problems]
                          + [f"{args.config}: not pushed"]) from None
    if config.gateway.id != args.gw:
        raise ConfigError(f"{args.config}: gateway.id is {config.gateway.id!r}, not --gw "
                          f"{args.gw!r}: not pushed")
    key = load_private_key(args.key)
    now_ms = int(time.time() * 1000)
    serial = args.serial if args.serial is not None else now_ms
    if not 1 <= serial < 2**63:
        raise ConfigError("--serial: must be from 1 to 2^63-1")
    unsigned = ConfigSet(args.gw, serial, now_ms, text, bytes(64))
    message = ConfigSet(args.gw, serial, now_ms, text, key.sign(unsigned.signed()))
    payload = encode_config_set(message)
    return asyncio.run(_publish(settings, topic, payload, message, args))


async def _publish(settings: Any, topic: str, payload: bytes, message: Any,
                   args: argparse.Namespace) -> int:
    from agent.mqtt import publish_once

    ok, _ = await _mqtt_call(publish_once(settings, topic, payload, retain=True))
    if not ok:
        return 1
    print(f"pushed {args.config} to {args.gw}: serial {message.serial}, sha256 "
          f"{message.sha256}, {len(payload):,} bytes on {topic}")
    if args.wait <= 0:
        return 0
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        ok, states = await _mqtt_call(_states(settings, args.topic_prefix, args.gw, limit=2.0))
        if not ok:
            return 1
        state = next((s for s in states or [] if s.serial == message.serial), None)
        if state is not None:
            print(render([state]))
            return 0 if state.state == "applied" else 1
        await asyncio.sleep(0.5)
    print(f"{args.gw}: no config/state for serial {message.serial} within {args.wait:g} s",
          file=sys.stderr)
    return 1


async def _mqtt_call(call: Awaitable[_T]) -> tuple[bool, _T | None]:
    """Await an MQTT call: (True, its result), or (False, None) after printing why it failed."""
    from agent.errors import UplinkError

    try:
        return True, await call
    except UplinkError as exc:
        print(f"ssc-agent: --broker: {exc}", file=sys.stderr)
        return False, None


async def _states(settings: Any, prefix: str, gw: str | None, *, limit: float) -> list[Any]:
    from agent.mqtt import read_retained
    from agent.wire.config_push import config_state_gateway, config_topic, decode_config_state

    topic = config_topic(prefix, gw, "state") if gw else f"{prefix.rstrip('/')}/+/config/state"
    out = []
    for name, payload in await read_retained(settings, topic, quiet=DEFAULT_QUIET, limit=limit):
        try:
            state = decode_config_state(payload)
        except Exception as exc:
            print(f"ssc-agent: {name}: {str(exc)[:200]}", file=sys.stderr)
            continue
        if config_state_gateway(prefix, name) == state.gw:
            out.append(state)
    return sorted(out, key=lambda s: s.gw)


def _config_state(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.gw is not None:
        from agent.wire.config_push import config_topic

        try:
            config_topic(args.topic_prefix, args.gw, "state")
        except ValueError as exc:
            raise ConfigError(f"--gw: {exc}") from None
    ok, found = asyncio.run(_mqtt_call(_states(settings, args.topic_prefix, args.gw,
                                               limit=args.timeout)))
    if not ok:
        return 1
    print(to_json(found or []) if args.json else render(found or []))
    return 0


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(sha: str | None) -> str:
    return "-" if sha is None else sha[:12]


def render(states: list[Any]) -> str:
    """One block per gateway: state, push, when, what runs, errors."""
    if not states:
        return "no config/state found"
    lines = []
    for s in states:
        push = "-" if s.serial is None else f"serial {s.serial} sha256 {_short(s.sha256)}"
        running = ("local config file" if s.running_serial is None
                   else f"serial {s.running_serial} sha256 {_short(s.running_sha256)}")
        lines.append(f"{s.gw}: {s.state} {push} at {_iso(s.t)}; runs {running}")
        if s.state == "rolled_back":
            restored = ("local config file" if s.restored_serial is None
                        else f"serial {s.restored_serial}")
            lines.append(f"  restored {restored} sha256 {_short(s.restored_sha256)}")
        lines.extend(f"  error: {e}" for e in s.errors)
    return "\n".join(lines)


def to_json(states: list[Any]) -> str:
    """``--json``: the states as the gateways sent them, keys as in docs/wire-format.md."""
    return json.dumps({"gateways": [{
        "gw": s.gw, "state": s.state, "t": s.t, "serial": s.serial, "sha256": s.sha256,
        "errors": list(s.errors), "running_serial": s.running_serial,
        "running_sha256": s.running_sha256, "restored_serial": s.restored_serial,
        "restored_sha256": s.restored_sha256} for s in states]}, indent=1)
