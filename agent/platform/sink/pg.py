"""The PostgreSQL sink: many batches per transaction, rows by COPY, exactly-once by key.

Exactly-once: a batch's ``batches`` row (primary key ``(gw, store, seq)``) is inserted first,
``ON CONFLICT DO NOTHING``; a batch whose row exists stores nothing else. Two receivers given
the same batch at once (a redelivery after a timeout, two shared-subscription members) run two
transactions: the second waits on the first's lock, and once the first commits it finds the
row and stores nothing; if the first rolls back, the second stores the batch. Every
transaction also takes a lock per ``(gw, store)`` (``pg_advisory_xact_lock``) before its
batches, in one order, so the gap tracking of one gateway sees the batches the others stored
(READ COMMITTED: each statement sees what committed before it) and transactions never wait
on each other in a cycle.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import structlog

from agent.errors import ConfigError
from agent.password_file import PasswordFileProblem
from agent.platform.sink.base import SinkBase, SinkUnavailable
from agent.platform.sink.ingest import (
    StoreOutcome,
    aggregate_row,
    begin_batch,
    event_rows,
    finish_batch,
    reading_rows,
)
from agent.platform.sink.pg_schema import (
    DATA_STEPS,
    DAY_MS,
    MIGRATION_LOCK,
    MIGRATIONS,
    PARTITIONS_AHEAD_DAYS,
    SCHEMA_VERSION_TABLE,
    PgTarget,
    day_start_ms,
    parse_pg_url,
    partition_name,
    partition_start,
    pg_sql,
)
from agent.platform.sink.schema import SqlCursor
from agent.platform.sink.summary import StoredBatch, record_gateways
from agent.wire import Batch

if TYPE_CHECKING:
    import psycopg

log = structlog.get_logger(__name__)

# SQLSTATE classes that blame the database, not the message: connection (08), a transaction
# the server rolled back (40: deadlock, serialization), resources (53: disk full, too many
# connections), object state (55: lock not available), operator intervention (57: shutdown),
# system (58), internal (XX), and the schema or rights (42: a table dropped, no privilege).
_FAULT_CLASSES = frozenset({"08", "40", "42", "53", "55", "57", "58", "XX"})

_COPY_READINGS = ("COPY readings (t, seq, value, value_int, quality, gw, dev, pt, unit, store)"
                  " FROM STDIN (FORMAT BINARY)")
_READING_TYPES = ["int8", "int8", "float8", "int8", "int2", "text", "text", "text", "text",
                  "text"]
_COPY_AGGREGATES = ('COPY aggregates (gw, kpi, src, "start", "end", value, value_int, valid,'
                    " n, expected, unit, extras_json, seq, store) FROM STDIN (FORMAT BINARY)")
_AGGREGATE_TYPES = ["text", "text", "text", "int8", "int8", "float8", "int8", "int2", "int8",
                    "int8", "text", "text", "int8", "text"]
_COPY_EVENTS = ("COPY events (gw, t, kind, dev, msg, seq, store) FROM STDIN (FORMAT BINARY)")
_EVENT_TYPES = ["text", "int8", "text", "text", "text", "int8", "text"]


def _exact(value: Any) -> int | None:
    return value if type(value) is int else None


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


class _Rows:
    """The rows of the batches of one transaction, waiting for their COPY."""

    def __init__(self) -> None:
        self.readings: list[tuple[Any, ...]] = []
        self.aggregates: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []

    def add(self, batch: Batch, shift_ms: int) -> None:
        self.readings.extend(
            (t, seq, _float(v), _exact(v), q, gw, dev, pt, unit, store)
            for gw, dev, pt, t, v, q, unit, seq, store in reading_rows(batch, shift_ms))
        for a in batch.aggregates:
            gw, kpi, src, start, end, v, *rest = aggregate_row(batch, a)
            self.aggregates.append((gw, kpi, src, start, end, _float(v), _exact(v), *rest))
        self.events.extend(event_rows(batch, shift_ms))

    def flush(self, cur: psycopg.Cursor[Any]) -> None:
        for sql, types, rows in ((_COPY_READINGS, _READING_TYPES, self.readings),
                                 (_COPY_AGGREGATES, _AGGREGATE_TYPES, self.aggregates),
                                 (_COPY_EVENTS, _EVENT_TYPES, self.events)):
            if rows:
                with cur.copy(sql) as copy:
                    copy.set_types(types)
                    for row in rows:
                        copy.write_row(row)
                rows.clear()


class PgCursor:
    """A psycopg cursor taking the shared SQL (sqlite3's placeholders)."""

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self.raw = cur

    @property
    def rowcount(self) -> int:
        return self.raw.rowcount

    def execute(self, sql: str, params: Any = (), /) -> Self:
        self.raw.execute(pg_sql(sql), params or None)
        return self

    def executemany(self, sql: str, params: Iterable[Any], /) -> Self:
        rows = list(params)
        if rows:
            self.raw.executemany(pg_sql(sql), rows)
        return self

    def fetchone(self) -> Any:
        return self.raw.fetchone()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.raw.fetchall())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def is_fault(exc: BaseException) -> bool:
    """True when a psycopg error blames the database, not the data."""
    import psycopg

    if isinstance(exc, psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, psycopg.OperationalError)  # the connection went away
    return state[:2] in _FAULT_CLASSES


def connect(target: PgTarget) -> psycopg.Connection[Any]:
    """A connection in autocommit mode (writes open explicit transactions)."""
    import psycopg

    return psycopg.connect(**target.connect_kwargs(), autocommit=True)


def migrate(conn: psycopg.Connection[Any], upto: int | None = None) -> list[int]:
    """Apply the migrations above the database's version (up to ``upto``), in one
    transaction, each recorded in ``schema_version``; returns the versions applied."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(SCHEMA_VERSION_TABLE)
        row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        have = int(row[0]) if row else 0
        for version, description, sql in MIGRATIONS:
            if version <= have or (upto is not None and version > upto):
                continue
            for statement in (x for x in sql.split(";") if x.strip()):
                conn.execute(statement)  # a constant of this module's
            if version in DATA_STEPS:
                with conn.cursor() as cur:
                    DATA_STEPS[version](PgCursor(cur))
            conn.execute("INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                         (version, description))
            applied.append(version)
    return applied


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The highest migration a database has applied."""
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0


class PgSink(SinkBase):
    """The sink in a PostgreSQL database (see the module docstring)."""

    _ARRIVAL = "id"
    _READING_ARRIVAL = "ctid"
    _VALUE = "value, value_int"

    def __init__(self, target: PgTarget, conn: psycopg.Connection[Any],
                 clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self.target = target
        self._conn: psycopg.Connection[Any] | None = conn

    @classmethod
    def open(cls, url: str, *, password_file: Path | None = None,
             clock: Callable[[], float] = time.time) -> Self:
        """Connect, migrate the schema and create the partitions ahead; ConfigError (one
        line, no secret) when the database cannot be reached or used now."""
        target = parse_pg_url(url, password_file)
        try:
            conn = connect(target)
        except Exception as exc:
            raise ConfigError(f"sink {target.url}: cannot connect: {_first_line(exc)}") from None
        sink = cls(target, conn, clock)
        try:
            applied = migrate(conn)
            sink.create_partitions()
        except Exception as exc:
            conn.close()
            raise ConfigError(f"sink {target.url}: cannot set up the schema: "
                              f"{_first_line(exc)}") from None
        if applied:
            log.info("sink_schema_migrated", sink=target.url, versions=applied)
        return sink

    @property
    def description(self) -> str:
        """What the sink is, for log lines."""
        return self.target.url

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ----------------------------------------------------------------------- connection

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self.close()
        try:
            self._conn = connect(self.target)
        except PasswordFileProblem as problem:  # the settings' fault, not a message's
            raise SinkUnavailable(f"sink {self.target.url}: --sink-password-file "
                                  f"{problem}") from None
        return self._conn

    @contextlib.contextmanager
    def _faults(self) -> Iterator[None]:
        """psycopg errors that blame the database become SinkUnavailable (the connection
        is dropped, the next call connects anew); the others (bad data) pass."""
        try:
            yield
        except Exception as exc:
            if not is_fault(exc):
                raise
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self.close()
            raise SinkUnavailable(f"sink {self.target.url}: {_first_line(exc)}") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[PgCursor]:
        with self._faults():
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                yield PgCursor(cur)

    def _write(self) -> contextlib.AbstractContextManager[SqlCursor]:
        return self._transaction()

    def _select(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with self._faults():
            return self._connection().execute(pg_sql(sql), params or None).fetchall()

    # ----------------------------------------------------------------------- ingest

    def store_many(self, batches: list[Batch]) -> list[StoreOutcome]:
        """Store batches in one transaction, outcomes in their order; all committed when it
        returns, nothing when it raises."""
        with self._transaction() as cur:
            return self.store_in(cur, batches)

    def store_in(self, cur: PgCursor, batches: list[Batch]) -> list[StoreOutcome]:
        """:meth:`store_many` inside the caller's transaction."""
        received = self._now_ms()
        # one lock order for every receiver, so that none waits on another in a cycle
        order = sorted(range(len(batches)), key=lambda i: (batches[i].gw, batches[i].store or ""))
        outcomes: dict[int, StoreOutcome] = {}
        rows = _Rows()
        locked: set[tuple[str, str]] = set()
        stored: list[StoredBatch] = []
        for i in order:
            batch = batches[i]
            key = (batch.gw, batch.store or "")
            if key not in locked:
                # a gateway id holds no '/' (it is a topic level)
                cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))",
                            (f"{key[0]}/{key[1]}",))
                locked.add(key)
            outcome = begin_batch(cur, batch, received)
            if outcome.duplicate:
                outcomes[i] = outcome
                continue
            rows.add(batch, outcome.clock_shift_ms)
            if any(e["kind"] == "clock_step" for e in batch.events):
                rows.flush(cur.raw)  # the step moves rows stored so far, these included
            outcomes[i] = finish_batch(cur, batch, outcome)
            stored.append(StoredBatch(batch, outcome.jump is not None, received,
                                      outcome.clock_shift_ms))
        rows.flush(cur.raw)
        record_gateways(cur, stored)
        return [outcomes[i] for i in range(len(batches))]

    # ----------------------------------------------------------------------- partitions

    def partitions(self) -> dict[str, int]:
        """The day partitions of ``readings`` (name -> first ms of the day)."""
        rows = self._select(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = CAST('readings' AS regclass)")
        out = {}
        for (name,) in rows:
            start = partition_start(str(name))
            if start is not None:
                out[str(name)] = start
        return out

    def maintain(self, *, keep_readings_ms: int | None = None,
                 keep_aggregates_ms: int | None = None) -> dict[str, int]:
        """Create the day partitions ahead, then apply retention."""
        created = self.create_partitions()
        gone = self.apply_retention(readings_ms=keep_readings_ms,
                                    aggregates_ms=keep_aggregates_ms)
        return {"partitions_created": len(created), **gone}

    @staticmethod
    def partition_name_of(day_ms: int) -> str:
        """The name of the partition of the day starting at ``day_ms``."""
        return partition_name(day_ms)

    def create_partitions(self, days_ahead: int = PARTITIONS_AHEAD_DAYS) -> list[str]:
        """Create the partitions of today and the next ``days_ahead`` days that are missing;
        rows of those days already in ``readings_default`` move into them."""
        have = set(self.partitions().values())
        today = day_start_ms(self._now_ms())
        created = []
        for lo in (today + n * DAY_MS for n in range(days_ahead + 1)):
            if lo in have:
                continue
            name = partition_name(lo)
            with self._transaction() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
                exists = cur.execute("SELECT to_regclass(?)", (name,)).fetchone()
                if exists[0] is not None:
                    continue
                cur.raw.execute(
                    f"CREATE TABLE {name} (LIKE readings INCLUDING DEFAULTS INCLUDING"
                    " CONSTRAINTS)")
                # the default partition may hold rows of this day (a clock running ahead)
                cur.raw.execute(
                    f"WITH moved AS (DELETE FROM readings_default WHERE t >= {lo}"
                    f" AND t < {lo + DAY_MS} RETURNING *) INSERT INTO {name} SELECT * FROM moved")
                cur.raw.execute(f"ALTER TABLE readings ATTACH PARTITION {name}"
                                f" FOR VALUES FROM ({lo}) TO ({lo + DAY_MS})")
            created.append(name)
        if created:
            log.info("sink_partitions_created", partitions=created)
        return created

    def apply_retention(self, *, readings_ms: int | None = None,
                        aggregates_ms: int | None = None) -> dict[str, int]:
        """Drop the day partitions wholly older than now minus ``readings_ms`` (and delete
        such rows from ``readings_default``), delete aggregates that ended before now minus
        ``aggregates_ms``; returns how many partitions and rows went."""
        now = self._now_ms()
        gone: dict[str, int] = {}
        if readings_ms is not None:
            cutoff = now - readings_ms
            dropped = [name for name, lo in self.partitions().items() if lo + DAY_MS <= cutoff]
            for name in sorted(dropped):
                with self._transaction() as cur:
                    cur.raw.execute(f"DROP TABLE {name}")
            with self._transaction() as cur:
                cur.execute("DELETE FROM readings_default WHERE t < ?", (cutoff,))
                gone["readings_default"] = cur.rowcount
            gone["partitions"] = len(dropped)
            if dropped:
                log.info("sink_partitions_dropped", partitions=sorted(dropped))
        if aggregates_ms is not None:
            with self._transaction() as cur:
                cur.execute('DELETE FROM aggregates WHERE "end" < ?', (now - aggregates_ms,))
                gone["aggregates"] = cur.rowcount
        return gone
