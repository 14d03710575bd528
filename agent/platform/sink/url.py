"""Which sink a ``--sink`` URL names, and opening it: ``sqlite:///PATH`` (or a plain path) or
``postgresql://USER@HOST:PORT/DB`` (psycopg is imported only then)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from agent.errors import ConfigError
from agent.platform.sink.base import SinkBase
from agent.platform.sink.pg_schema import is_pg_url, parse_pg_url
from agent.platform.sink.schema import sink_path
from agent.platform.sink.sqlite import SqliteSink


def check_sink_url(url: str, password_file: Path | None = None) -> None:
    """ConfigError (one line per problem) for a sink URL that names no usable sink, before
    anything is opened."""
    if is_pg_url(url):
        parse_pg_url(url, password_file)
        return
    sink_path(url)
    if password_file is not None:
        raise ConfigError(f"--sink-password-file {password_file}: only a postgresql:// sink "
                          "takes a password")


def open_sink(url: str, *, password_file: Path | None = None,
              clock: Callable[[], float] = time.time) -> SinkBase:
    """Open (creating or migrating its schema) the sink a URL names; ConfigError when it
    cannot be used now (unreachable database, unwritable file)."""
    if is_pg_url(url):
        from agent.platform.sink.pg import PgSink

        return PgSink.open(url, password_file=password_file, clock=clock)
    return SqliteSink.open(url, clock=clock)
