"""Remote configuration on the wire: the signed ``config/set`` envelope and the retained
``config/state`` report (docs/wire-format.md §13).

Pure: no I/O, no clock, no cryptography. What is signed is :func:`signed_bytes`; signing and
verifying live in :mod:`agent.signing`, which this module does not import, so a receiver or a
test can decode an envelope without the ``cryptography`` package loaded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final, Literal

from agent.errors import WireFormatError
from agent.wire.checks import _kind
from agent.wire.model import _GATEWAY_ID, INT64_MAX

CONFIG_SET_VERSION: Final = 1
# A pushed config's TOML, as UTF-8 bytes. JSON escaping at most doubles TOML text (a quote, a
# backslash or a line end becomes two characters; TOML allows no other control character), so
# a config this large fits the payload bound with room for the envelope's other keys.
MAX_CONFIG_BYTES: Final = 120 * 1024
MAX_CONFIG_SET_BYTES: Final = 256 * 1024
MAX_CONFIG_STATE_BYTES: Final = 64 * 1024
MAX_STATE_ERRORS: Final = 50
MAX_STATE_ERROR_LEN: Final = 300
SIGNATURE_BYTES: Final = 64  # Ed25519
# The first line of the signed byte string: a signature made for anything else (another
# protocol, another version of this one) never verifies as a config push.
SIGNING_CONTEXT: Final = b"ssc-agent config/set v1"

SET_KEYS: Final = ("v", "gw", "serial", "issued", "config", "sig")
CONFIG_STATES: Final = ("applied", "rejected", "rolled_back")
ConfigStateName = Literal["applied", "rejected", "rolled_back"]
CONFIG_TOPIC_KINDS: Final = ("set", "state")
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class ConfigSet:
    """A signed config for one gateway: ``config`` is the TOML text; ``serial`` grows with
    every push to that gateway; ``issued`` is when it was signed (epoch ms, informative)."""

    gw: str
    serial: int
    issued: int
    config: str
    sig: bytes

    @property
    def config_bytes(self) -> bytes:
        return self.config.encode("utf-8")

    @property
    def sha256(self) -> str:
        return config_sha256(self.config_bytes)

    def signed(self) -> bytes:
        """What :attr:`sig` signs (:func:`signed_bytes`)."""
        return signed_bytes(self.gw, self.serial, self.issued, self.config_bytes)


@dataclass(frozen=True, slots=True)
class ConfigState:
    """One ``config/state`` report: what happened to the push ``serial`` / ``sha256`` (both
    None when the payload could not be read), and what the gateway runs now (``running_serial``
    None: its local config file). ``restored_*``: the config a rollback went back to."""

    gw: str
    state: ConfigStateName
    t: int
    serial: int | None = None
    sha256: str | None = None
    errors: tuple[str, ...] = ()
    running_serial: int | None = None
    running_sha256: str | None = None
    restored_serial: int | None = None
    restored_sha256: str | None = None


def config_sha256(config: bytes) -> str:
    """The config hash reported in ``config/state``: sha256 of the TOML bytes, lowercase hex."""
    return hashlib.sha256(config).hexdigest()


def signed_bytes(gw: str, serial: int, issued: int, config: bytes) -> bytes:
    """The exact bytes the platform signs: four header lines, then the TOML bytes as sent::

        ssc-agent config/set v1 LF  GW LF  SERIAL LF  ISSUED LF  CONFIG

    ``SERIAL`` and ``ISSUED`` in decimal ASCII without sign or leading zeros. A gateway id has
    no line end, so the header ends unambiguously, and everything after it is the config."""
    _check_gw(gw, "gw")
    _check_serial(serial, "serial")
    _check_issued(issued, "issued")
    return b"\n".join([SIGNING_CONTEXT, gw.encode("ascii"), str(serial).encode("ascii"),
                       str(issued).encode("ascii"), config])


def encode_config_set(message: ConfigSet) -> bytes:
    """The ``config/set`` payload: one UTF-8 JSON object (:func:`decode_config_set` reads it)."""
    _check_message(message)
    payload = json.dumps({
        "v": CONFIG_SET_VERSION, "gw": message.gw, "serial": message.serial,
        "issued": message.issued, "config": message.config,
        "sig": base64.b64encode(message.sig).decode("ascii"),
    }, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(payload) > MAX_CONFIG_SET_BYTES:
        raise WireFormatError(f"config/set: {len(payload):,} bytes, over the "
                              f"{MAX_CONFIG_SET_BYTES:,} a payload may have")
    return payload


def decode_config_set(payload: bytes) -> ConfigSet:
    """Read a ``config/set`` payload within its bounds; WireFormatError names what is wrong.
    The signature is only decoded here: verify it against :meth:`ConfigSet.signed`."""
    if len(payload) > MAX_CONFIG_SET_BYTES:
        raise WireFormatError(f"config/set: {len(payload):,} bytes, over the "
                              f"{MAX_CONFIG_SET_BYTES:,} a payload may have")
    obj = _json_object(payload, "config/set")
    missing = [k for k in SET_KEYS if k not in obj]
    unknown = sorted(k for k in obj if k not in SET_KEYS)
    if missing:
        raise WireFormatError(f"config/set: missing {', '.join(missing)} (an unsigned or "
                              "incomplete envelope)")
    if unknown:
        raise WireFormatError(f"config/set: unknown key {unknown[0][:40]!r}")
    if type(obj["v"]) is not int or obj["v"] != CONFIG_SET_VERSION:
        raise WireFormatError(f"config/set.v: must be {CONFIG_SET_VERSION}, got "
                              f"{str(obj['v'])[:20]!r}")
    sig = obj["sig"]
    if type(sig) is not str:
        raise WireFormatError(f"config/set.sig: must be a str, got {_kind(sig)}")
    try:
        raw_sig = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise WireFormatError("config/set.sig: not base64") from None
    config = obj["config"]
    if type(config) is not str:
        raise WireFormatError(f"config/set.config: must be a str, got {_kind(config)}")
    message = ConfigSet(gw=obj["gw"], serial=obj["serial"], issued=obj["issued"],
                        config=config, sig=raw_sig)
    _check_message(message)
    return message


def _check_message(message: ConfigSet) -> None:
    _check_gw(message.gw, "config/set.gw")
    _check_serial(message.serial, "config/set.serial")
    _check_issued(message.issued, "config/set.issued")
    if len(message.sig) != SIGNATURE_BYTES:
        raise WireFormatError(f"config/set.sig: {len(message.sig)} bytes, an Ed25519 "
                              f"signature has {SIGNATURE_BYTES}")
    try:
        size = len(message.config_bytes)
    except UnicodeEncodeError:
        raise WireFormatError("config/set.config: not valid Unicode (a lone surrogate)") from None
    if size == 0:
        raise WireFormatError("config/set.config: empty")
    if size > MAX_CONFIG_BYTES:
        raise WireFormatError(f"config/set.config: {size:,} bytes of TOML, over the "
                              f"{MAX_CONFIG_BYTES:,} a pushed config may have")


def _check_gw(gw: object, path: str) -> str:
    if type(gw) is not str or len(gw) > 64 or not _GATEWAY_ID.fullmatch(gw):
        raise WireFormatError(f"{path}: must be a gateway id ([A-Za-z0-9_-], 1 to 64), got "
                              f"{str(gw)[:40]!r}")
    return gw


def _check_serial(serial: object, path: str) -> int:
    if type(serial) is not int or not 1 <= serial <= INT64_MAX:
        raise WireFormatError(f"{path}: must be an int from 1 to 2^63-1, got {str(serial)[:30]}")
    return serial


def _check_issued(issued: object, path: str) -> int:
    if type(issued) is not int or not 0 <= issued <= INT64_MAX:
        raise WireFormatError(f"{path}: must be epoch ms (an int ≥ 0), got {str(issued)[:30]}")
    return issued


def _json_object(payload: bytes, path: str) -> dict[str, Any]:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise WireFormatError(f"{path}: not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise WireFormatError(f"{path}: not JSON ({str(exc)[:80]})") from None
    if not isinstance(obj, dict):
        raise WireFormatError(f"{path}: must be a JSON object, got {_kind(obj)}")
    return obj


# ------------------------------------------------------------------------- config/state


def bounded_errors(errors: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """At most :data:`MAX_STATE_ERRORS` lines of at most :data:`MAX_STATE_ERROR_LEN`
    characters; the last one says how many more there were."""
    lines = [_clip(e) for e in errors]
    if len(lines) > MAX_STATE_ERRORS:
        more = len(lines) - (MAX_STATE_ERRORS - 1)
        lines = [*lines[: MAX_STATE_ERRORS - 1], f"… and {more} more"]
    return tuple(lines)


def _clip(line: str) -> str:
    return line if len(line) <= MAX_STATE_ERROR_LEN else line[: MAX_STATE_ERROR_LEN - 1] + "…"


def encode_config_state(state: ConfigState) -> bytes:
    """The retained ``config/state`` JSON; errors are bounded (:func:`bounded_errors`)."""
    _check_gw(state.gw, "config/state.gw")
    if state.state not in CONFIG_STATES:
        raise WireFormatError(f"config/state.state: must be one of {', '.join(CONFIG_STATES)}")
    obj: dict[str, Any] = {"state": state.state, "gw": state.gw, "t": state.t,
                           "serial": state.serial, "sha256": state.sha256,
                           "errors": list(bounded_errors(state.errors)),
                           "running_serial": state.running_serial,
                           "running_sha256": state.running_sha256}
    if state.state == "rolled_back":
        obj["restored_serial"] = state.restored_serial
        obj["restored_sha256"] = state.restored_sha256
    payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    decode_config_state(payload)  # what is sent must decode
    return payload


def decode_config_state(payload: bytes) -> ConfigState:
    """Read a ``config/state`` payload; unknown keys are ignored (the report may grow)."""
    if len(payload) > MAX_CONFIG_STATE_BYTES:
        raise WireFormatError(f"config/state: {len(payload):,} bytes, over the "
                              f"{MAX_CONFIG_STATE_BYTES:,} a report may have")
    obj = _json_object(payload, "config/state")
    state = obj.get("state")
    if state not in CONFIG_STATES:
        raise WireFormatError(f"config/state.state: must be one of {', '.join(CONFIG_STATES)}, "
                              f"got {str(state)[:30]!r}")
    t = obj.get("t")
    if type(t) is not int or not 0 <= t <= INT64_MAX:
        raise WireFormatError("config/state.t: must be epoch ms (an int ≥ 0)")
    errors = obj.get("errors", [])
    if (not isinstance(errors, list) or len(errors) > MAX_STATE_ERRORS
            or any(type(e) is not str or len(e) > MAX_STATE_ERROR_LEN for e in errors)):
        raise WireFormatError(f"config/state.errors: must be a list of at most "
                              f"{MAX_STATE_ERRORS} strings of at most {MAX_STATE_ERROR_LEN} "
                              "characters")
    return ConfigState(
        gw=_check_gw(obj.get("gw"), "config/state.gw"), state=state, t=t,
        serial=_opt_serial(obj.get("serial"), "config/state.serial"),
        sha256=_opt_hash(obj.get("sha256"), "config/state.sha256"),
        errors=tuple(errors),
        running_serial=_opt_serial(obj.get("running_serial"), "config/state.running_serial"),
        running_sha256=_opt_hash(obj.get("running_sha256"), "config/state.running_sha256"),
        restored_serial=_opt_serial(obj.get("restored_serial"),
                                    "config/state.restored_serial"),
        restored_sha256=_opt_hash(obj.get("restored_sha256"), "config/state.restored_sha256"),
    )


def _opt_serial(value: object, path: str) -> int | None:
    return None if value is None else _check_serial(value, path)


def _opt_hash(value: object, path: str) -> str | None:
    if value is None:
        return None
    if type(value) is not str or len(value) != 64 or not set(value) <= _HEX:
        raise WireFormatError(f"{path}: must be 64 lowercase hex digits (sha256)")
    return value


# ------------------------------------------------------------------------- topics


def config_topic(prefix: str, gw: str, kind: Literal["set", "state"]) -> str:
    """``{prefix}/{gw}/config/set`` or ``{prefix}/{gw}/config/state``."""
    if kind not in CONFIG_TOPIC_KINDS:
        raise ValueError(f"config topic kind must be 'set' or 'state', got {kind!r}")
    if len(gw) > 64 or not _GATEWAY_ID.fullmatch(gw):
        raise ValueError(f"{gw[:40]!r} is not a gateway id ([A-Za-z0-9_-]+)")
    return f"{prefix.rstrip('/')}/{gw}/config/{kind}"


def config_state_gateway(prefix: str, topic: str) -> str | None:
    """The gateway of a ``{prefix}/{gw}/config/state`` topic, else None."""
    head = prefix.rstrip("/") + "/"
    if not topic.startswith(head) or not topic.endswith("/config/state"):
        return None
    gw = topic[len(head): -len("/config/state")]
    return gw if len(gw) <= 64 and _GATEWAY_ID.fullmatch(gw) else None


def is_config_topic(prefix: str, topic: str) -> bool:
    """``{prefix}/{gw}/config/set`` or ``…/config/state``: the platform's and a gateway's
    remote-configuration traffic, which a receiver taking every topic under the prefix (the
    JetStream consumer) passes over rather than setting aside as data it cannot read."""
    head = prefix.rstrip("/") + "/"
    parts = topic[len(head):].split("/") if topic.startswith(head) else []
    return (len(parts) == 3 and parts[1] == "config" and parts[2] in CONFIG_TOPIC_KINDS
            and len(parts[0]) <= 64 and _GATEWAY_ID.fullmatch(parts[0]) is not None)
