"""``kpi replay`` input rules (docs/kpis.md §1): errors name a line; span, duplicates, progress."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.kpi.replay import replay, replay_paths
from tests.kpi.support import by_kpi, csv_text, make_config, run_replay

BERLIN = "Europe/Berlin"
HOURLY = [
    {
        "name": "h",
        "source": "s.x",
        "operator": "mean",
        "window": "1 h",
        "sample_interval": "15 min",
        "min_coverage": 0.25,
    }
]
GOOD = "2025-01-15T08:00:00+01:00,s,x,1.0\n"


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    return make_config(tmp_path, BERLIN, HOURLY)


def replay_file(config: AgentConfig, path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with path.open(encoding="utf-8", newline="") as source:
        code = replay(config, source, out, progress=False, error_stream=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", 1, "empty input"),
        ("time,device,point\n" + GOOD, 1, "it must be exactly time,device,point,value"),
        ("Time,Device,Point,Value\n", 1, "it must be exactly"),
        (
            "time,device,point,value\n" + GOOD + "2025-01-15T08:15:00,s,x,1.0\n",
            3,
            "has no UTC offset",
        ),
        ("time,device,point,value\n" + GOOD + "yesterday,s,x,1.0\n", 3, "is not ISO 8601"),
        (
            "time,device,point,value\n" + GOOD + GOOD + "2025-01-15T08:30:00+01:00,s,x,abc\n",
            4,
            "value 'abc' is not a number",
        ),
        (
            "time,device,point,value\n" + GOOD + "2025-01-15T08:30:00+01:00,s,x,1_000\n",
            3,
            "is not a number",
        ),
        (
            "time,device,point,value\n" + "2025-01-15T08:30:00+01:00,s,x,1\n" + GOOD,
            3,
            "is before the previous row's",
        ),
        ("time,device,point,value\n" + GOOD + "2025-01-15T08:15:00+01:00,s,x\n", 3, "has 3 fields"),
        (
            "time,device,point,value\n" + GOOD + "2025-01-15T08:15:00+01:00,,x,1\n",
            3,
            "device and point must not be empty",
        ),
    ],
)
def test_bad_input_names_the_line(
    tmp_path: Path, config: AgentConfig, text: str, line: int, message: str
) -> None:
    path = tmp_path / "input.csv"
    path.write_text(text, encoding="utf-8")
    code, out, err = replay_file(config, path)
    assert code == 1
    assert out == ""
    assert err.startswith(f"{path}:{line}: ")
    assert message in err
    assert err.count("\n") == 1


def test_not_utf8_names_the_line(tmp_path: Path, config: AgentConfig) -> None:
    path = tmp_path / "input.csv"
    path.write_bytes(
        b"time,device,point,value\n" + GOOD.encode() + b"2025-01-15T08:15:00+01:00,s,x,\xff\n"
    )
    code, _, err = replay_file(config, path)
    assert code == 1
    assert "is not UTF-8" in err and err.startswith(f"{path}:")


def test_out_of_order_across_sources_is_an_error(tmp_path: Path, config: AgentConfig) -> None:
    path = tmp_path / "input.csv"
    path.write_text(
        csv_text(
            [
                ("2025-01-15T08:10:00+01:00", "other", "p", "1"),
                ("2025-01-15T08:05:00+01:00", "s", "x", "1"),
            ]
        ),
        encoding="utf-8",
    )
    code, _, err = replay_file(config, path)
    assert code == 1 and err.startswith(f"{path}:3: ")


def test_empty_nan_and_inf_are_present_but_invalid(config: AgentConfig) -> None:
    rows = [
        (f"2025-01-15T08:{m}:00+01:00", "s", "x", v)
        for m, v in (("00", "4"), ("15", ""), ("30", "NaN"), ("45", "inf"))
    ]
    [hour] = run_replay(config, rows)
    assert (hour["n"], hour["value"], hour["valid"]) == (1, 4.0, True)


def test_a_second_row_for_the_same_source_and_time_is_ignored(config: AgentConfig) -> None:
    rows = [
        ("2025-01-15T08:00:00+01:00", "s", "x", "4"),
        ("2025-01-15T07:00:00Z", "s", "x", "100"),  # the same instant, written in UTC
        ("2025-01-15T08:15:00+01:00", "s", "x", "6"),
    ]
    [hour] = run_replay(config, rows)
    assert (hour["n"], hour["value"]) == (2, 5.0)


def test_span_runs_from_t_first_to_t_last_of_all_rows(config: AgentConfig) -> None:
    rows = [
        ("2025-01-15T06:59:59+01:00", "unused", "p", "1"),  # sets T_first
        ("2025-01-15T08:00:00+01:00", "s", "x", "4"),
        ("2025-01-15T10:00:00+01:00", "unused", "p", ""),
    ]  # sets T_last
    records = run_replay(config, rows)
    assert [(r["start"][11:16], r["n"]) for r in records] == [
        ("06:00", 0),
        ("07:00", 0),
        ("08:00", 1),
        ("09:00", 0),
        ("10:00", 0),
    ]
    assert all(r["value"] is None for r in records if r["n"] == 0)


def test_header_only_gives_no_output(config: AgentConfig) -> None:
    assert run_replay(config, []) == []


def test_z_and_utf8_bom_are_accepted(tmp_path: Path, config: AgentConfig) -> None:
    path = tmp_path / "input.csv"
    path.write_text(
        "\ufefftime,device,point,value\n2025-01-15T07:00:00Z,s,x,3.5\n", encoding="utf-8"
    )
    code, out, err = replay_file(config, path)
    assert (code, err) == (0, "")
    [record] = [json.loads(line) for line in out.splitlines()]
    assert (record["start"], record["value"]) == ("2025-01-15T08:00:00+01:00", 3.5)


def test_replay_paths_writes_the_output_file(tmp_path: Path, config: AgentConfig) -> None:
    source = tmp_path / "input.csv"
    source.write_text("time,device,point,value\n" + GOOD, encoding="utf-8")
    target = tmp_path / "out.jsonl"
    err = io.StringIO()
    assert replay_paths(config, source, target, error_stream=err) == 0
    assert json.loads(target.read_text(encoding="utf-8"))["value"] == 1.0
    assert replay_paths(config, tmp_path / "missing.csv", target, error_stream=err) == 2
    assert "missing.csv: cannot read the input" in err.getvalue()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(config: AgentConfig) -> None:
    text = "time,device,point,value\n" + GOOD
    quiet = io.StringIO()
    assert replay(config, io.StringIO(text), io.StringIO(), progress=True, error_stream=quiet) == 0
    assert quiet.getvalue() == ""
    terminal = _Terminal()
    out = io.StringIO()
    assert replay(config, io.StringIO(text), out, progress=True, error_stream=terminal) == 0
    assert "kpi replay" in terminal.getvalue() and "1 rows" in terminal.getvalue()
    assert "kpi replay" not in out.getvalue()


def test_unknown_sources_and_their_bad_values_are_ignored_but_checked(
    tmp_path: Path, config: AgentConfig
) -> None:
    rows = [
        ("2025-01-15T08:00:00+01:00", "s", "x", "2"),
        ("2025-01-15T08:01:00+01:00", "meter", "kwh", ""),
    ]
    assert [r["value"] for r in by_kpi(run_replay(config, rows), "h")] == [2.0]
    path = tmp_path / "input.csv"
    path.write_text(
        csv_text([*rows, ("2025-01-15T08:02:00+01:00", "meter", "kwh", "x")]), encoding="utf-8"
    )
    assert replay_file(config, path)[0] == 1
