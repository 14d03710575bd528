"""The PostgreSQL sink's URL, its versioned migrations and the time partitions of ``readings``.

psycopg is imported by the caller (:mod:`agent.platform.sink.pg`), never at module level here,
so that parsing a URL costs a gateway nothing.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from agent.errors import ConfigError, excerpt
from agent.password_file import PasswordFileProblem, read_password_file
from agent.platform.sink.devices import backfill_devices
from agent.platform.sink.summary import backfill_gateways

if TYPE_CHECKING:
    from agent.platform.sink.schema import SqlCursor

PG_SCHEMES = ("postgresql", "postgres")
# Query parameters a sink URL may carry: libpq's own TLS settings, and two harmless ones.
TLS_PARAMS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl")
URL_PARAMS = (*TLS_PARAMS, "connect_timeout", "application_name")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
DEFAULT_CONNECT_TIMEOUT = "10"

DAY_MS = 86_400_000
PARTITIONS_AHEAD_DAYS = 2  # today and this many days after: a day never starts without one
PARTITION_NAME = re.compile(r"^readings_(\d{8})$")


def is_pg_url(url: str) -> bool:
    """True when a sink URL names PostgreSQL."""
    return url.split("://", 1)[0].lower() in PG_SCHEMES and "://" in url


@dataclass(frozen=True)
class PgTarget:
    """Where the sink connects: from ``postgresql://USER@HOST:PORT/DB?sslmode=…``; the
    password (never in the URL) from a password file, else libpq's PGPASSFILE/~/.pgpass."""

    host: str
    port: int
    dbname: str
    user: str
    params: dict[str, str] = field(default_factory=dict)
    password_file: Path | None = None

    @property
    def url(self) -> str:
        """The URL without secrets (there are none in it), for logs and errors."""
        query = "&".join(f"{k}={v}" for k, v in self.params.items()
                         if k != "connect_timeout")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{self.user}@{host}:{self.port}/{self.dbname}" + (
            f"?{query}" if query else "")

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect``; the password file is read anew each
        time (a rotated password is used at the next connection): PasswordFileProblem."""
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port, "dbname": self.dbname,
                                  "user": self.user, "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
                                  "application_name": "ssc-receiver", **self.params}
        if self.password_file is not None:
            kwargs["password"] = read_password_file(self.password_file)
        return kwargs


def parse_pg_url(url: str, password_file: Path | None = None) -> PgTarget:
    """The target a ``postgresql://`` URL names; ConfigError (never echoing a password) for
    a URL that holds one, lacks a part, or names a file that cannot be read."""
    parts = urlsplit(url)
    if parts.password is not None:
        raise ConfigError(
            "sink: the PostgreSQL URL holds a password; it would show in `ps` and in logs: "
            "remove it and use --sink-password-file FILE or PGPASSFILE")
    # the URL as written (it holds no password: refused above), so the user finds it
    shown = repr(excerpt(url))
    try:
        port = parts.port or 5432
    except ValueError:
        raise ConfigError(f"sink {shown}: the port is not a number 1-65535") from None
    dbname = unquote(parts.path.lstrip("/"))
    if not parts.hostname or not parts.username or not dbname or "/" in dbname:
        raise ConfigError(f"sink {shown}: write postgresql://USER@HOST:PORT/DATABASE")
    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in URL_PARAMS:
            raise ConfigError(f"sink {shown}: unknown URL parameter {key[:40]!r}; allowed: "
                              + ", ".join(URL_PARAMS))
        params[key] = value
    problems = []
    if params.get("sslmode", "prefer") not in SSL_MODES:
        problems.append(f"sink {shown}: sslmode={params['sslmode'][:40]!r}: one of "
                        + ", ".join(SSL_MODES))
    for key in ("sslrootcert", "sslcert", "sslkey", "sslcrl"):
        file = params.get(key)
        if file is None or (key == "sslrootcert" and file == "system"):
            continue
        if not os.access(file, os.R_OK):
            problems.append(f"sink {shown}: {key}={file}: cannot be read")
    source = password_file
    if source is None and os.environ.get("PGPASSFILE"):
        source = Path(os.environ["PGPASSFILE"])  # libpq reads it; fail early and clearly
        if not os.access(source, os.R_OK):
            problems.append(f"PGPASSFILE {source}: cannot be read")
    elif source is not None:
        try:
            read_password_file(source)
        except PasswordFileProblem as problem:
            problems.append(f"--sink-password-file {problem}")
    if problems:
        raise ConfigError(problems)
    return PgTarget(parts.hostname, port, dbname, unquote(parts.username), params,
                    password_file)


@lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """The shared SQL (``?`` and ``:name`` placeholders, as sqlite3 takes them) in psycopg's
    placeholders; the shared SQL holds no ``?``, ``:`` or ``%`` of its own."""
    return re.sub(r":([a-z_]+)", r"%(\1)s", sql.replace("?", "%s"))


# ------------------------------------------------------------------------- migrations

SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied timestamptz NOT NULL DEFAULT now()
)"""

# The same tables and columns as the SQLite sink, with two differences: ``value`` is a
# ``double precision`` and ``value_int`` holds the value when the gateway sent an int (int64
# exactly, and read back as an int; NULL otherwise, which costs a bit of the row's null map),
# and ``id`` columns give the arrival order that SQLite's rowid gives. Times stay epoch ms
# (bigint), so the clock-step correction is the same SQL on both.
_V1 = """
CREATE TABLE batches (
    id bigint GENERATED ALWAYS AS IDENTITY,
    gw text NOT NULL,
    store text NOT NULL DEFAULT '',
    seq bigint NOT NULL,
    boot bigint NOT NULL,
    created bigint NOT NULL,
    received bigint NOT NULL,
    n_readings integer NOT NULL,
    n_aggregates integer NOT NULL,
    jump smallint NOT NULL DEFAULT 0,
    clock_synced smallint,
    clock_shift_ms bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (gw, store, seq)
);
CREATE INDEX batches_by_boot ON batches (gw, store, boot, seq);
-- fixed-width columns first: no alignment padding between them
CREATE TABLE readings (
    t bigint NOT NULL,
    seq bigint NOT NULL,
    value double precision,
    value_int bigint,
    quality smallint NOT NULL,
    gw text NOT NULL,
    dev text NOT NULL,
    pt text NOT NULL,
    unit text,
    store text NOT NULL DEFAULT ''
) PARTITION BY RANGE (t);
-- readings of a day without a partition (a gateway's clock far off, a backlog older than the
-- first partition) land here, and retention deletes them by t
CREATE TABLE readings_default PARTITION OF readings DEFAULT;
CREATE INDEX readings_by_point ON readings (gw, dev, pt, t);
CREATE INDEX readings_by_batch ON readings (gw, seq);
CREATE TABLE aggregates (
    id bigint GENERATED ALWAYS AS IDENTITY,
    gw text NOT NULL,
    kpi text NOT NULL,
    src text NOT NULL,
    "start" bigint NOT NULL,
    "end" bigint NOT NULL,
    value double precision,
    value_int bigint,
    valid smallint NOT NULL,
    n bigint NOT NULL,
    expected bigint NOT NULL,
    unit text,
    extras_json text,
    seq bigint NOT NULL,
    store text NOT NULL DEFAULT ''
);
CREATE INDEX aggregates_by_kpi ON aggregates (gw, kpi, "start");
CREATE INDEX aggregates_by_end ON aggregates ("end");
CREATE TABLE events (
    id bigint GENERATED ALWAYS AS IDENTITY,
    gw text NOT NULL,
    t bigint NOT NULL,
    kind text NOT NULL,
    dev text,
    msg text NOT NULL,
    seq bigint NOT NULL,
    store text NOT NULL DEFAULT ''
);
CREATE INDEX events_by_batch ON events (gw, seq);
CREATE TABLE status (
    gw text PRIMARY KEY,
    state text NOT NULL,
    boot bigint NOT NULL,
    t bigint NOT NULL,
    version text NOT NULL,
    buffer_state text,
    buffer_since bigint,
    buffer_reason text,
    buffer_held_readings bigint,
    buffer_dropped_readings bigint
);
CREATE TABLE seq_gaps (
    gw text NOT NULL,
    store text NOT NULL DEFAULT '',
    "first" bigint NOT NULL,
    "last" bigint NOT NULL,
    PRIMARY KEY (gw, store, "first")
);
CREATE TABLE clock_steps (
    gw text NOT NULL,
    store text NOT NULL,
    boot bigint NOT NULL,
    before_seq bigint NOT NULL,
    step_ms bigint NOT NULL,
    t bigint NOT NULL,
    seq bigint NOT NULL,
    from_seq bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (gw, store, boot, before_seq, t, step_ms)
)"""

_V2 = """
CREATE TABLE rejected (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gw text,
    topic text NOT NULL,
    received bigint NOT NULL,
    kind text NOT NULL,
    reason text NOT NULL,
    size integer NOT NULL,
    payload bytea NOT NULL
);
CREATE INDEX rejected_by_gw ON rejected (gw, received);
CREATE TABLE rejected_totals (
    gw text NOT NULL,
    kind text NOT NULL,
    n bigint NOT NULL,
    bytes bigint NOT NULL,
    last_received bigint NOT NULL,
    PRIMARY KEY (gw, kind)
)"""

# the fleet view's summaries (agent.platform.sink.summary); the data step runs after these
_V3 = """
ALTER TABLE batches ADD COLUMN lag_ms bigint;
CREATE INDEX batches_by_received ON batches (received);
CREATE TABLE gateways (
    gw text PRIMARY KEY,
    first_seen bigint NOT NULL,
    last_seen bigint NOT NULL,
    store text,
    last_seq bigint,
    last_created bigint,
    batches bigint NOT NULL,
    readings bigint NOT NULL,
    kpi_windows bigint NOT NULL,
    dropped_batches bigint NOT NULL,
    dropped_readings bigint NOT NULL
)"""

# the meter inventory's devices (agent.platform.sink.devices); the data step fills it
_V4 = """
CREATE TABLE devices (
    gw text NOT NULL,
    dev text NOT NULL,
    first_seen bigint NOT NULL,
    last_seen bigint NOT NULL,
    last_t bigint,
    last_good_t bigint,
    readings bigint NOT NULL,
    good_readings bigint NOT NULL,
    PRIMARY KEY (gw, dev)
)"""

# the gateways' retained health summaries, the newest of each (agent.platform.sink.base)
_V5 = """
CREATE TABLE health (
    gw text PRIMARY KEY,
    t bigint NOT NULL,
    received bigint NOT NULL,
    summary text NOT NULL
)"""

# Append only: a database records each version it applied in ``schema_version``, and the
# receiver applies the ones above it at start, in one transaction.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "the sink's tables; readings partitioned by day", _V1),
    (2, "set-aside messages: rejected, rejected_totals", _V2),
    (3, "fleet view: gateways, batches.lag_ms", _V3),
    (4, "meter inventory: devices", _V4),
    (5, "health summaries: health", _V5),
)
# Steps that move data, run in the same transaction right after their version's SQL.
DATA_STEPS: dict[int, Callable[[SqlCursor], None]] = {3: backfill_gateways,
                                                       4: backfill_devices}
# one receiver migrates at a time (an arbitrary constant: 'ssc' 'mig')
MIGRATION_LOCK = 0x5353_4D49_47


def day_start_ms(ms: int) -> int:
    """The start (UTC midnight) of the day holding epoch ``ms``."""
    return ms - ms % DAY_MS


def partition_name(lo_ms: int) -> str:
    """The name of the ``readings`` partition of the day starting at ``lo_ms``."""
    day = dt.datetime.fromtimestamp(lo_ms / 1000, dt.UTC)
    return f"readings_{day:%Y%m%d}"


def partition_start(name: str) -> int | None:
    """The first ms of the day a partition of ours holds (None: not one of ours)."""
    match = PARTITION_NAME.match(name)
    if match is None:
        return None
    day = dt.datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=dt.UTC)
    return int(day.timestamp()) * 1000
