"""Which sink a ``--sink`` URL names, and opening it: ``sqlite:///PATH`` (or a plain path) or
``postgresql://USER@HOST:PORT/DB`` (psycopg is imported only then)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, first_line
from agent.platform.sink.base import SinkBase
from agent.platform.sink.pg_schema import MIGRATIONS, is_pg_url, parse_pg_url, pg_sql
from agent.platform.sink.schema import VERSIONED_STEPS, sink_path
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


Select = Callable[[str, Any], list[tuple[Any, ...]]]


@contextlib.contextmanager
def open_read_only(url: str, *, password_file: Path | None = None) -> Iterator[Select]:
    """A read-only query function (``?`` placeholders) on the sink a URL names, for tools
    that look and never write: nothing is created or migrated, and a role that may only read
    will do. ConfigError (one line) when it does not exist, cannot be opened, or its schema
    is older than this release's (the receiver migrates it)."""
    if is_pg_url(url):
        from agent.platform.sink.pg import connect, schema_version

        target = parse_pg_url(url, password_file)
        try:
            conn = connect(target)
        except Exception as exc:
            raise ConfigError(f"sink {target.url}: cannot connect: {first_line(exc)}") from None
        try:
            conn.read_only = True
            try:
                have = schema_version(conn)
            except Exception as exc:
                raise ConfigError(f"sink {target.url}: cannot read: {first_line(exc)}") from None
            _check_version(target.url, have, MIGRATIONS[-1][0])

            def select_pg(sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
                return conn.execute(pg_sql(sql), params or None).fetchall()

            yield select_pg
        finally:
            conn.close()
        return
    path = sink_path(url)
    if not path.is_file():
        # opening would create an empty database: a typo must not look like an empty fleet
        raise ConfigError(f"sink {path}: no such database")
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        db.execute("PRAGMA busy_timeout=10000")
        have = int(db.execute("PRAGMA user_version").fetchone()[0])
        db.execute("SELECT 1 FROM batches LIMIT 1")
    except sqlite3.Error as exc:
        raise ConfigError(f"sink {path}: cannot read the SQLite database: {exc}") from None
    try:
        _check_version(str(path), have, VERSIONED_STEPS[-1][0])

        def select_sqlite(sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in db.execute(sql, params)]

        yield select_sqlite
    finally:
        db.close()


@contextlib.contextmanager
def read_only_sink(url: str, password_file: Path | None) -> Iterator[Select]:
    """:func:`open_read_only` for a command's ``--sink`` flags: the URL checked first, and
    each problem of opening it named as the flag's (ConfigError, exit 2)."""
    from agent.platform.sink import check_sink_url

    stack = contextlib.ExitStack()
    try:
        check_sink_url(url, password_file)
        select = stack.enter_context(open_read_only(url, password_file=password_file))
    except ConfigError as exc:
        stack.close()
        raise ConfigError([f"--sink: {p}" for p in exc.problems]) from None
    with stack:
        yield select


def _check_version(shown: str, have: int, needed: int) -> None:
    if have < needed:
        raise ConfigError(f"sink {shown}: its schema (version {have}) is older than this "
                          f"command needs ({needed}): start the receiver of this release once, "
                          "it migrates the database")
