"""``ssc-agent kpi replay`` (docs/kpis.md §1): readings as CSV in, closed windows as JSONL out.

The CLI calls :func:`replay` with an :class:`~agent.config.AgentConfig` loaded by
``load_config(path, require_uplink=False, check_sources=False)`` (a ConfigError there is exit
2), or :func:`replay_paths` with file paths.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from agent.kpi.calendar import Calendar, to_epoch_ms
from agent.kpi.engine import TIME_EXTRAS, Engine, KpiOutput

if TYPE_CHECKING:
    from agent.config import AgentConfig

__all__ = ["HEADER", "ReplayInputError", "format_output", "replay", "replay_paths"]

HEADER = ("time", "device", "point", "value")
EXIT_OK, EXIT_BAD_INPUT, EXIT_USAGE = 0, 1, 2
_PROGRESS_EVERY_ROWS = 8192
_BAR_WIDTH = 30


class ReplayInputError(ValueError):
    """A line of the replay CSV is not valid; ``line`` is its 1-based number."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        super().__init__(message)


def format_output(output: KpiOutput, calendar: Calendar) -> dict[str, Any]:
    """One output as its JSON object: instants as ISO 8601 in the site zone."""
    record = output.as_dict()
    record["start"] = calendar.isoformat(output.start)
    record["end"] = calendar.isoformat(output.end)
    for key in TIME_EXTRAS:
        value = record.get(key)
        if isinstance(value, int):
            record[key] = calendar.isoformat(value)
    return record


def _parse_time(text: str, line: int) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ReplayInputError(
            line, f"time {text!r} is not ISO 8601: write e.g. 2025-01-15T08:00:00+01:00"
        ) from None
    if moment.tzinfo is None:
        raise ReplayInputError(line, f"time {text!r} has no UTC offset: add one, e.g. +01:00 or Z")
    return to_epoch_ms(moment)


def _parse_value(text: str, line: int) -> float | None:
    stripped = text.strip()
    if not stripped:
        return None
    problem = f"value {text!r} is not a number: write a decimal number, or leave it empty"
    if "_" in stripped:  # float() takes "1_000"; a CSV number does not
        raise ReplayInputError(line, problem)
    try:
        number = float(stripped)
    except ValueError:
        raise ReplayInputError(line, problem) from None
    return number if math.isfinite(number) else None


class _Progress:
    """A one-line progress bar on a terminal: bytes read of the file's size, rows, rows/s."""

    def __init__(self, stream: TextIO, total_bytes: int | None) -> None:
        self.stream = stream
        self.total = total_bytes
        self.started = time.monotonic()

    def show(self, consumed: int, rows: int, *, final: bool = False) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = f"{rows / elapsed:,.0f} rows/s"
        if self.total:
            share = min(1.0, consumed / self.total)
            filled = round(share * _BAR_WIDTH)
            bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
            line = f"\rkpi replay [{bar}] {share:4.0%}  {rows:,} rows  {rate}"
        else:
            line = f"\rkpi replay  {rows:,} rows  {rate}"
        self.stream.write(line + ("\n" if final else ""))
        self.stream.flush()


def _file_size(stream: TextIO) -> int | None:
    try:
        return os.fstat(stream.fileno()).st_size
    except (OSError, AttributeError, ValueError):
        return None


def _source_name(stream: TextIO) -> str:
    name = getattr(stream, "name", None)
    return name if isinstance(name, str) else "<input>"


def replay(
    config: AgentConfig,
    input_stream: TextIO,
    output_stream: TextIO,
    *,
    progress: bool,
    error_stream: TextIO | None = None,
) -> int:
    """Run the KPIs of ``config`` over a CSV stream; exit code 0 ok, 1 bad input (line named).

    ``progress`` asks for a progress bar; it is drawn only when the error stream is a TTY.
    Open the input with ``newline=""``. Nothing is written when the input is bad.
    """
    errors = sys.stderr if error_stream is None else error_stream
    name = _source_name(input_stream)
    bar = _Progress(errors, _file_size(input_stream)) if progress and errors.isatty() else None
    try:
        outputs, calendar = _run(config, input_stream, bar)
    except ReplayInputError as exc:
        if bar is not None:
            errors.write("\n")
        errors.write(f"{name}:{exc.line}: {exc}\n")
        return EXIT_BAD_INPUT
    write = output_stream.write
    for output in outputs:
        write(json.dumps(format_output(output, calendar), ensure_ascii=False) + "\n")
    output_stream.flush()
    return EXIT_OK


def _run(
    config: AgentConfig, input_stream: TextIO, bar: _Progress | None
) -> tuple[list[KpiOutput], Calendar]:
    engine = Engine.from_config(config, lateness_ms=0)
    sources = engine.sources
    consumed = 0

    def lines() -> Iterator[str]:
        nonlocal consumed
        for text in input_stream:
            consumed += len(text)
            yield text

    reader = csv.reader(lines())
    outputs: list[KpiOutput] = []
    try:
        header = next(reader, None)
        if header is None:
            raise ReplayInputError(1, f"empty input: the first line must be {','.join(HEADER)}")
        if header and header[0].startswith("\ufeff"):
            header[0] = header[0][1:]
        if tuple(header) != HEADER:
            raise ReplayInputError(
                1, f"header is {','.join(header)!r}: it must be exactly {','.join(HEADER)}"
            )
        last_text = ""
        t = previous = first = 0
        rows = 0
        last_seen: dict[tuple[str, str], int] = {}
        feed = engine.feed_value
        for row in reader:
            line = reader.line_num
            if len(row) != len(HEADER):
                if not row:
                    continue  # a blank line
                raise ReplayInputError(
                    line, f"has {len(row)} fields: write time,device,point,value"
                )
            text, device, point, value_text = row
            if text != last_text:
                t = _parse_time(text, line)
                last_text = text
                if rows and t < previous:
                    raise ReplayInputError(
                        line,
                        f"time {text} is before the previous row's: "
                        "sort the rows by time (non-decreasing)",
                    )
                previous = t
            if not device or not point:
                raise ReplayInputError(line, "device and point must not be empty")
            value = _parse_value(value_text, line)
            if rows == 0:
                first = t
                engine.start(first)
            rows += 1
            key = (device, point)
            if key in sources and last_seen.get(key) != t:
                last_seen[key] = t
                outputs.extend(feed(device, point, t, value))
            if bar is not None and rows % _PROGRESS_EVERY_ROWS == 0:
                bar.show(consumed, rows)
    except csv.Error as exc:
        raise ReplayInputError(reader.line_num, f"is not valid CSV: {exc}") from None
    except UnicodeDecodeError:
        raise ReplayInputError(reader.line_num + 1, "is not UTF-8 text") from None
    if rows:
        outputs.extend(engine.finish(previous))
    if bar is not None:
        bar.show(consumed, rows, final=True)
    outputs.sort(key=lambda output: (output.end, output.kpi))
    return outputs, engine.calendar


def replay_paths(
    config: AgentConfig,
    input_path: Path,
    output_path: Path | None,
    *,
    progress: bool = True,
    error_stream: TextIO | None = None,
) -> int:
    """:func:`replay` on files (stdout without ``output_path``); 2 if a file cannot be opened."""
    errors = sys.stderr if error_stream is None else error_stream
    try:
        source = input_path.open(encoding="utf-8", newline="")
    except OSError as exc:
        errors.write(f"{input_path}: cannot read the input: {exc.strerror}\n")
        return EXIT_USAGE
    with source:
        if output_path is None:
            return replay(config, source, sys.stdout, progress=progress, error_stream=errors)
        try:
            target = output_path.open("w", encoding="utf-8")
        except OSError as exc:
            errors.write(f"{output_path}: cannot write the output: {exc.strerror}\n")
            return EXIT_USAGE
        with target:
            return replay(config, source, target, progress=progress, error_stream=errors)
