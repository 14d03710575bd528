"""A config pushed by the platform (docs/config.md "Remote configuration"): the rules of
``validate``, and on top of them what a pushed config may not do.

- It may not hold ``[remote_config]``: the trust anchor (the public key) and the rollback
  grace stay what the gateway's local file says, so a pushed config can never widen who may
  push the next one.
- It may not carry a secret: no key that names one (``password``, ``token``, ``secret``,
  ``private…``, ``…key``, other than the ``…_file`` keys that name a file on the gateway), no
  PEM block, no credentials in a URL. Secrets stay in files on the gateway.
- Its relative paths start at the local config file's folder, as the local file's do.

Pure apart from what the loader reads (profiles, the files a config names). No line ever
quotes a value of a secret-looking key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config.loader import config_from_dict
from agent.config.models import AgentConfig
from agent.driver import DeviceConfig
from agent.errors import ConfigError

LOCAL_ONLY_SECTIONS = ("remote_config",)
_SECRET_KEY = re.compile(r"passw|secret|token|credential|private|api_?key|(^|_)key$", re.I)
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*-----")
_URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.I)


def secret_problems(data: Mapping[str, Any], where: str = "") -> list[str]:
    """One line per secret-looking key or value anywhere in a parsed config table."""
    problems: list[str] = []
    for key, value in data.items():
        place = f"{where}.{key}" if where else str(key)
        if _SECRET_KEY.search(str(key)) and not str(key).endswith("_file"):
            problems.append(f"{place}: a pushed config must not carry secrets: name a file on "
                            "the gateway instead (e.g. password_file, key_file)")
            continue
        problems.extend(_value_problems(value, place))
    return problems


def _value_problems(value: object, place: str) -> list[str]:
    if isinstance(value, dict):
        return secret_problems(value, place)
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _value_problems(item, f"{place}[{i}]")]
    if isinstance(value, str):
        if _PEM.search(value):
            return [f"{place}: holds a PEM block (a key or certificate): a pushed config names "
                    "files on the gateway, it never carries them"]
        if _URL_CREDENTIALS.search(value):
            return [f"{place}: a URL with credentials: put no secret in a pushed config"]
    return []


def parse_pushed(text: str) -> dict[str, Any]:
    """The TOML table of a pushed config; ConfigError with ``config:LINE:COL: …`` otherwise."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        # tomllib says "(at line L, column C)": the same place, worded as the loader does
        match = re.match(r"^(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$",
                         message)
        if match is not None:
            raise ConfigError(f"config:{match['line']}:{match['col']}: {match['msg']}") from None
        raise ConfigError(f"config: not TOML: {message[:200]}") from None


def load_pushed(
    text: str,
    *,
    local: AgentConfig | None,
    base_dir: Path | None,
    driver_models: Mapping[str, type[DeviceConfig]] | None = None,
    check_files: bool = True,
) -> AgentConfig:
    """Validate a pushed config's TOML text with the rules of ``validate`` and those of a
    pushed config; ConfigError lists every problem. With ``local`` (the gateway's own file),
    the result carries the local ``[remote_config]`` and the pushed one must keep the
    gateway's id. ``check_files=False`` on the platform, which does not hold the gateway's
    files."""
    data = parse_pushed(text)
    problems = [f"{section}: cannot be pushed: it stays as the gateway's local config file "
                "says (the trust anchor never comes over the network)"
                for section in LOCAL_ONLY_SECTIONS if section in data]
    problems += secret_problems(data)
    cleaned = {k: v for k, v in data.items() if k not in LOCAL_ONLY_SECTIONS}
    config: AgentConfig | None = None
    try:
        config = config_from_dict(cleaned, base_dir=base_dir, driver_models=driver_models,
                                  check_files=check_files)
    except ConfigError as exc:
        problems += exc.problems
    if config is not None and local is not None and config.gateway.id != local.gateway.id:
        problems.append(f"gateway.id: {config.gateway.id!r} is not this gateway "
                        f"({local.gateway.id!r})")
    if problems:
        raise ConfigError(problems)
    assert config is not None
    if local is None:
        return config
    return config.model_copy(update={"remote_config": local.remote_config,
                                     "source_path": local.source_path})
