"""The command line registers the commands that live in their own modules (test, probe, fleet,
report, …) only when one of them, or the whole list, is asked for: what argparse prints and
parses must be the same either way."""

from __future__ import annotations

import argparse

import pytest

from agent.cli import COMMANDS, _own_command, _parser, main


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


ALL = _commands(_parser())


@pytest.mark.parametrize(("argv", "own"), [
    (["run", "--config", "a.toml"], "run"),
    (["--log-level", "debug", "run"], "run"),
    (["--log-level=debug", "--log-json", "validate"], "validate"),
    (["--no-log-json", "--log-l", "info", "buffer", "stats"], "buffer"),
    (["--log-level", "run", "run"], "run"),  # "run" as the level: argparse refuses it either way
    (["test", "--config", "a.toml"], None),  # its own module
    (["fleet"], None),
    (["--help", "run"], None),
    (["-h"], None),
    (["--version"], None),
    (["--log", "debug", "run"], None),  # ambiguous abbreviation: argparse's error, full list
    (["--", "run"], None),
    (["nope"], None),
    ([], None),
])
def test_own_command(argv: list[str], own: str | None) -> None:
    assert _own_command(argv) == own


def test_every_command_is_either_here_or_in_its_module() -> None:
    assert set(COMMANDS) < set(ALL)
    assert _commands(_parser(tools=False)) == sorted(COMMANDS)


def _printed(capsys: pytest.CaptureFixture[str], call: object, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        call(argv)  # type: ignore[operator]
    out = capsys.readouterr()
    return f"{exit_.value.code}\n{out.out}\n{out.err}"


@pytest.mark.parametrize("argv", [
    [], ["--help"], ["nope"], ["--log-level", "loud", "run"],
    *([command, "--help"] for command in ALL),
    *(["--log-json", command, "--help"] for command in ALL),
    *([command, "--no-such-flag"] for command in ALL),
    ["kpi", "replay", "--help"], ["fleet", "push-config", "--help"],
], ids=" ".join)
def test_help_and_usage_errors_are_the_whole_command_lines(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    whole = _printed(capsys, _parser().parse_args, argv)
    assert whole.startswith(("0\n", "2\n"))
    assert _printed(capsys, main, argv) == whole
