"""``ssc-agent schema``: the JSON Schema an editor checks a config against."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.config import AgentConfig, KpiConfig, UplinkConfig, load_config
from agent.driver import discover
from agent.schema.json_schema import definition_name
from agent.tools.config_schema import config_schema
from agent.tools.sample_config import sample_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "schema"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    found: dict[str, Any] = json.loads(out.stdout)
    jsonschema.Draft7Validator.check_schema(found)
    return found


def _problems(schema: dict[str, Any], config: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(config)]


def test_the_sample_config_and_every_drivers_sample_satisfy_it(
        schema: dict[str, Any], tmp_path: Path) -> None:
    for driver in [None, *sorted(discover())]:
        text = sample_config(driver)
        path = tmp_path / f"{driver}.toml"
        path.write_text(text, encoding="utf-8")
        load_config(path, check_sources=False)  # valid for validate too
        assert _problems(schema, tomllib.loads(text)) == [], driver


def test_it_names_every_key_of_every_model(schema: dict[str, Any]) -> None:
    definitions = schema["definitions"]
    assert set(schema["properties"]) == set(AgentConfig.model_fields) - {"source_path"}
    for model in (UplinkConfig, KpiConfig):
        assert set(definitions[definition_name(model)]["properties"]) == set(model.model_fields)
    for name, entry in discover().items():
        assert entry.spec is not None
        device = entry.spec.config_model
        found = definitions[definition_name(device)]
        assert set(found["properties"]) == set(device.model_fields)
        assert found["properties"]["driver"]["enum"] == [name]


@pytest.mark.parametrize(("change", "where"), [
    ({"gateway": {"id": "gw", "log_lvl": "info"}}, "gateway"),  # misspelt key
    ({"gateway": {"id": "gw no"}}, "gateway/id"),  # pattern
    ({"uplink": {"broker": "mqtt://h:1", "compression": "gzip"}}, "uplink/compression"),
    ({"uplink": {"broker": "mqtt://h:1", "max_inflight": 0}}, "uplink/max_inflight"),
    ({"uplink": {"broker": 5}}, "uplink/broker"),
    ({"devices": [{"name": "m", "driver": "modbus", "endpoint": "tcp://h:502",
                   "points": [{"name": "p", "address": 1, "type": "u17"}]}]}, "devices/0"),
    ({"devices": [{"name": "m", "driver": "nope"}]}, "devices/0"),
])
def test_it_flags_what_validate_flags_on_a_single_key(
        schema: dict[str, Any], change: dict[str, Any], where: str) -> None:
    config: dict[str, Any] = {"gateway": {"id": "gw"}, "uplink": {"broker": "mqtt://h:1"}}
    config.update(change)
    problems = _problems(schema, config)
    assert problems and all(p.startswith(where) for p in problems), problems


def test_defaults_are_written_as_a_config_writes_them() -> None:
    uplink = config_schema()["definitions"]["agent.config.models.UplinkConfig"]["properties"]
    assert uplink["flush_interval"]["default"] == "1 s"
    assert uplink["compression"] == {"enum": ["zstd", "none"], "default": "zstd"}
    assert uplink["max_inflight"]["minimum"] == 1 and uplink["max_inflight"]["maximum"] == 100
