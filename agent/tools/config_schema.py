"""``ssc-agent schema``: the config file's JSON Schema, with every installed driver's devices.

Point an editor at it for completion and checks while writing a config (docs/config.md,
"Editor support"). ``validate`` stays the judge: it also checks what spans keys and tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.config import AgentConfig
from agent.driver import DriverEntry, discover
from agent.schema.json_schema import DRAFT, SchemaWriter, definition_name


def config_schema(entries: Mapping[str, DriverEntry] | None = None) -> dict[str, Any]:
    """The schema of a whole config file; ``[[devices]]`` are one of the drivers' tables,
    told apart by ``driver``."""
    writer = SchemaWriter()
    drivers = entries if entries is not None else discover()
    devices = [
        writer.ref(entry.spec.config_model, extra={"driver": {
            "enum": [name], "description": f"{entry.spec.description} (driver {name})"}})
        for name, entry in sorted(drivers.items())
        if entry.spec is not None
    ]
    for entry in drivers.values():
        if entry.spec is not None:
            _points_or_profile(writer.definitions[definition_name(entry.spec.config_model)])
    top = writer.model(AgentConfig, skip=("source_path",), extra={"devices": {
        "type": "array", "items": {"oneOf": devices},
        "description": "[[devices]]: one table per device"}})
    top["required"] = ["gateway", "uplink"]
    return {"$schema": DRAFT, "title": "ssc-edge-agent config", **top,
            "definitions": writer.definitions}


def _points_or_profile(device: dict[str, Any]) -> None:
    """A device with a ``profile`` takes its points from it (the loader merges them)."""
    required = device.get("required", [])
    if "profile" in device["properties"] and "points" in required:
        device["required"] = [key for key in required if key != "points"]
        device["anyOf"] = [{"required": ["points"]}, {"required": ["profile"]}]
