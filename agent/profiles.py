"""Device profiles: TOML files under ``config/profiles/``, loaded by name or path.

A profile file has a ``[profile]`` table (``name``, ``description``, ``driver``), optional
``[defaults]`` (device keys such as request limits), ``[[points]]``, and optional
``[simulate]`` hints for ``ssc-agent simulate``. A device that names a profile gets the
profile's defaults under its own keys and the profile's points, each overridable key by key
by an inline point of the same name; inline points with new names are added.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import agent

_PACKAGED = Path(agent.__file__).parent / "_data" / "config" / "profiles"
_SOURCE_TREE = Path(agent.__file__).parent.parent / "config" / "profiles"


def profile_dirs() -> list[Path]:
    """Folders searched for profiles by name: the installed copy, then the source tree."""
    return [d for d in (_PACKAGED, _SOURCE_TREE) if d.is_dir()]


@dataclass(frozen=True)
class Profile:
    """A loaded profile file."""

    name: str
    path: Path
    description: str
    driver: str
    defaults: dict[str, Any] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    simulate: dict[str, Any] = field(default_factory=dict)


def available_profiles() -> list[str]:
    """Names of the profiles shipped with the agent."""
    names = {p.stem for d in profile_dirs() for p in d.glob("*.toml")}
    return sorted(names)


def resolve_profile(name_or_path: str, base_dir: Path | None = None) -> Path:
    """Find a profile by name (``eastron-sdm630``) or by path (``./my-meter.toml``)."""
    looks_like_path = "/" in name_or_path or name_or_path.endswith(".toml")
    if looks_like_path:
        path = Path(name_or_path)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if path.is_file():
            return path
        raise FileNotFoundError(f"profile file {str(path)!r} does not exist")
    for folder in profile_dirs():
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    known = ", ".join(available_profiles()) or "none installed"
    raise FileNotFoundError(f"no profile named {name_or_path!r} (known: {known})")


def load_profile(name_or_path: str, base_dir: Path | None = None) -> Profile:
    """Load and shape-check a profile; errors name the file."""
    path = resolve_profile(name_or_path, base_dir)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"profile {path}: not valid TOML: {exc}") from exc
    head = data.get("profile", {})
    points = data.get("points", [])
    if not isinstance(head, dict) or not isinstance(points, list):
        raise ValueError(f"profile {path}: needs a [profile] table and [[points]] tables")  # noqa: TRY004
    unknown = set(data) - {"profile", "defaults", "points", "simulate"}
    if unknown:
        raise ValueError(f"profile {path}: unknown top-level keys {sorted(unknown)}")
    return Profile(
        name=str(head.get("name", path.stem)),
        path=path,
        description=str(head.get("description", "")),
        driver=str(head.get("driver", "modbus")),
        defaults=dict(data.get("defaults", {})),
        points=[dict(p) for p in points],
        simulate=dict(data.get("simulate", {})),
    )


def apply_profile(device: dict[str, Any], profile: Profile) -> dict[str, Any]:
    """The device table with the profile merged under it (device keys win)."""
    merged: dict[str, Any] = {**profile.defaults, **device}
    by_name: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for point in profile.points:
        name = str(point.get("name"))
        by_name[name] = dict(point)
        order.append(name)
    for point in device.get("points", []):
        if not isinstance(point, dict):
            order.append(f"\0{len(order)}")
            by_name[order[-1]] = point
            continue
        name = str(point.get("name"))
        if name in by_name:
            by_name[name] = {**by_name[name], **point}
        else:
            by_name[name] = dict(point)
            order.append(name)
    merged["points"] = [by_name[n] for n in order]
    return merged
