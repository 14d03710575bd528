"""Helpers for the KPI tests: configs from keyword tables, replay on strings, local times."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.config import AgentConfig, load_config
from agent.kpi.calendar import to_epoch_ms
from agent.kpi.replay import replay

Row = tuple[str, str, str, str]


def config_text(zone: str, kpis: Sequence[Mapping[str, Any]]) -> str:
    """A replay config: [gateway] in ``zone`` and one [[kpis]] table per mapping."""
    text = f'[gateway]\nid = "gw-test"\ntimezone = "{zone}"\n'
    for kpi in kpis:
        text += "\n[[kpis]]\n"
        text += "".join(f"{key} = {json.dumps(value)}\n" for key, value in kpi.items())
    return text


def make_config(tmp_path: Path, zone: str, kpis: Sequence[Mapping[str, Any]]) -> AgentConfig:
    """Write and load a replay config the way the CLI does."""
    path = tmp_path / "kpis.toml"
    path.write_text(config_text(zone, kpis), encoding="utf-8")
    return load_config(path, require_uplink=False, check_sources=False)


def csv_text(rows: Iterable[Row]) -> str:
    return "time,device,point,value\n" + "".join(",".join(row) + "\n" for row in rows)


def run_replay(config: AgentConfig, rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Replay rows; the parsed JSON objects (asserts exit 0 and an empty stderr)."""
    source, out, err = io.StringIO(csv_text(rows)), io.StringIO(), io.StringIO()
    code = replay(config, source, out, progress=False, error_stream=err)
    assert (code, err.getvalue()) == (0, "")
    return [json.loads(line) for line in out.getvalue().splitlines()]


def hourly(zone: str, first: str, values: Sequence[str], *, step_minutes: int = 60) -> list[str]:
    """ISO times (with the zone's offset) every ``step_minutes`` of real time from ``first``."""
    tz = ZoneInfo(zone)
    start = datetime.fromisoformat(first)
    if start.tzinfo is None:
        start = start.replace(tzinfo=tz)
    base = start.astimezone(UTC)
    return [
        (base + timedelta(minutes=step_minutes * i)).astimezone(tz).isoformat()
        for i in range(len(values))
    ]


def rows_of(device: str, point: str, times: Sequence[str], values: Sequence[str]) -> list[Row]:
    return [(t, device, point, v) for t, v in zip(times, values, strict=True)]


def ms(text: str) -> int:
    """An ISO 8601 instant with offset as epoch ms."""
    return to_epoch_ms(datetime.fromisoformat(text))


def by_kpi(records: Iterable[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [record for record in records if record["kpi"] == name]
