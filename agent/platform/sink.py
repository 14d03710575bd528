"""The receiver's sink: decoded batches into one SQLite file (WAL), one transaction per batch.

URL: ``sqlite:///`` followed by the path exactly as given, so ``sqlite:////var/lib/ssc/r.db`` is
the absolute ``/var/lib/ssc/r.db`` and ``sqlite:///r.db`` is ``r.db`` relative to the working
directory. A plain path (no ``scheme://``) is accepted too.

Delivery is at-least-once, so the same batch can arrive twice: the ``batches`` row, keyed by
``(gw, store, seq)``, is inserted first and, when it already exists, nothing else of that batch
is stored. ``store`` is the batch's optional ``store`` key (the identity of the gateway's store
file; ``''`` for batches without it), so a gateway whose store was replaced (new SD card,
wiped data_dir) starts a new seq series that is stored, not dropped as a reuse of old seqs.

Gaps in ``seq`` are tracked per ``(gw, store)`` in ``seq_gaps``: a batch with ``seq`` beyond the
highest seen so far opens the gap between them; a late batch inside a gap shrinks or splits
it. The first batch ever seen of a ``(gw, store)`` sets the baseline and opens no gap, because a
receiver may be installed (or its database reset) long after the gateway started counting.

A batch more than ``MAX_SEQ_JUMP`` above the highest seq (a forged or broken seq, e.g. 2⁶³−1) is
stored but flagged as a jump (``batches.jump = 1``, logged ``seq_jump``): it opens no gap and
does not move the baseline, so later batches in line are tracked as before. A real jump (a
gateway that dropped that many batches during a long outage) is confirmed by its next batch:
a batch within ``MAX_SEQ_JUMP`` above a flagged one clears the flags of that run and the
baseline moves, with one gap for what lies between.

Clock steps (docs/wire-format.md §7.1): a ``clock_step`` event ``step_ms=S boot=B from_seq=M
before_seq=N`` says that the batches of ``(gw, store)`` in boot ``B`` with ``M <= seq < N`` are
stamped on the clock before the step. The sink corrects them itself: it records each step once
in ``clock_steps``, moves the ``t`` of the readings and events of those batches already stored
by ``S``, and moves those of such a batch arriving later (a gateway sends its backlog after
its live batches) while storing it. Steps of one boot add up. ``batches.clock_shift_ms`` is
what was added to its batch's times, so the time the gateway sent is ``t - clock_shift_ms``.
Aggregates are not moved: a KPI window is a slot of the grid the agent's engine computed on,
which handles the step itself.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agent.errors import ConfigError, WireFormatError
from agent.readings import Quality, Reading
from agent.wire import AGGREGATE_KEYS, INT64_MAX, Batch, BufferHealth, Status, decode_status

SCHEME = "sqlite:///"

# `value` columns have no declared type on purpose: with no type affinity SQLite stores an int
# as INTEGER and a float as REAL, so 230.0 stays a float and 7 stays an int (REAL or NUMERIC
# affinity would convert one into the other).
SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    gw TEXT NOT NULL,
    store TEXT NOT NULL DEFAULT '',
    seq INTEGER NOT NULL,
    boot INTEGER NOT NULL,
    created INTEGER NOT NULL,
    received INTEGER NOT NULL,
    n_readings INTEGER NOT NULL,
    n_aggregates INTEGER NOT NULL,
    jump INTEGER NOT NULL DEFAULT 0,
    clock_synced INTEGER,
    clock_shift_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (gw, store, seq)
);
CREATE TABLE IF NOT EXISTS readings (
    gw TEXT NOT NULL,
    dev TEXT NOT NULL,
    pt TEXT NOT NULL,
    t INTEGER NOT NULL,
    value,
    quality INTEGER NOT NULL,
    unit TEXT,
    seq INTEGER NOT NULL,
    store TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS aggregates (
    gw TEXT NOT NULL,
    kpi TEXT NOT NULL,
    src TEXT NOT NULL,
    "start" INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    value,
    valid INTEGER NOT NULL,
    n INTEGER NOT NULL,
    expected INTEGER NOT NULL,
    unit TEXT,
    extras_json TEXT,
    seq INTEGER NOT NULL,
    store TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS events (
    gw TEXT NOT NULL,
    t INTEGER NOT NULL,
    kind TEXT NOT NULL,
    dev TEXT,
    msg TEXT NOT NULL,
    seq INTEGER NOT NULL,
    store TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS status (
    gw TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    boot INTEGER NOT NULL,
    t INTEGER NOT NULL,
    version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seq_gaps (
    gw TEXT NOT NULL,
    store TEXT NOT NULL DEFAULT '',
    "first" INTEGER NOT NULL,
    "last" INTEGER NOT NULL,
    PRIMARY KEY (gw, store, "first")
);
CREATE TABLE IF NOT EXISTS clock_steps (
    gw TEXT NOT NULL,
    store TEXT NOT NULL,
    boot INTEGER NOT NULL,
    before_seq INTEGER NOT NULL,
    step_ms INTEGER NOT NULL,
    t INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    from_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (gw, store, boot, before_seq, t, step_ms)
);
"""
# after _migrate: an older file's tables gain their columns first
INDEXES = """
CREATE INDEX IF NOT EXISTS readings_by_point ON readings (gw, dev, pt, t);
CREATE INDEX IF NOT EXISTS aggregates_by_kpi ON aggregates (gw, kpi, "start");
-- the clock-step correction's lookups; ``store`` is left out of the readings' key (it would
-- add ~17 bytes a reading): only a replaced store's batches share a gateway's seqs
CREATE INDEX IF NOT EXISTS readings_by_batch ON readings (gw, seq);
CREATE INDEX IF NOT EXISTS events_by_batch ON events (gw, seq);
CREATE INDEX IF NOT EXISTS batches_by_boot ON batches (gw, store, boot, seq);
"""

# Messages set aside (``set_aside``): a poison message is kept, bounded, and acknowledged, so it
# cannot block the others. ``rejected`` keeps the most recent ones with the start of their
# payload; ``rejected_totals`` counts every one, per gateway and kind, for good.
REJECTED_SCHEMA = """
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY,
    gw TEXT,
    topic TEXT NOT NULL,
    received INTEGER NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_by_gw ON rejected (gw, received);
CREATE TABLE IF NOT EXISTS rejected_totals (
    gw TEXT NOT NULL,
    kind TEXT NOT NULL,
    n INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    last_received INTEGER NOT NULL,
    PRIMARY KEY (gw, kind)
);
"""
# 64 KiB holds a whole batch of the default 20,000 readings (about 55 kB with zstd level 3).
REJECTED_KEEP_BYTES = 64 * 1024
REJECTED_KEEP_ROWS = 1000  # so at most ~64 MiB of payloads, however many are refused
REJECTED_TEXT_CHARS = 500  # reason and topic are cut to this


@dataclass(frozen=True, slots=True)
class RejectedMessage:
    """A message the receiver set aside: where it came from, why, and its first bytes."""

    gw: str | None
    topic: str
    received: int
    kind: str
    reason: str
    size: int
    payload: bytes


def _cut(text: str) -> str:
    return text if len(text) <= REJECTED_TEXT_CHARS else text[: REJECTED_TEXT_CHARS - 1] + "…"


# A batch further than this above a store's highest seq is a jump (see the module docstring).
# Above anything a real gateway skips in one step (at most SEQ_RESERVE after losing its store
# file) and than the buffer's bounds drop while a receiver keeps up; confirmed jumps move on.
MAX_SEQ_JUMP = 100_000

# Columns added since the first release (ALTER TABLE ADD COLUMN is a schema-only change in
# SQLite, no matter how many rows the table holds).
_ADDED_COLUMNS = {
    # the optional body key ``clock``: NULL when a batch did not say
    "batches": [("clock_synced", "INTEGER"),
                # what the clock-step correction added to the batch's reading and event times
                ("clock_shift_ms", "INTEGER NOT NULL DEFAULT 0")],
    "readings": [("store", "TEXT NOT NULL DEFAULT ''")],
    "aggregates": [("store", "TEXT NOT NULL DEFAULT ''")],
    "events": [("store", "TEXT NOT NULL DEFAULT ''")],
    "clock_steps": [("from_seq", "INTEGER NOT NULL DEFAULT 0")],
    # the status's optional ``buffer`` map: NULL when the last status did not say
    "status": [("buffer_state", "TEXT"), ("buffer_since", "INTEGER"), ("buffer_reason", "TEXT"),
               ("buffer_held_readings", "INTEGER"), ("buffer_dropped_readings", "INTEGER")],
}
# Tables whose primary key gained ``store``: rebuilt once, rows copied with store ''.
_REKEYED = {
    "batches": "gw, '', seq, boot, created, received, n_readings, n_aggregates, 0, NULL, 0",
    "seq_gaps": 'gw, \'\', "first", "last"',
}


# A clock_step event's words (docs/wire-format.md §6/§7.1); other words (``synced=``) are
# informative. A step is at most this big (about 3,000 years): a bigger one is not a clock
# being set but a broken or forged event, stored as an event and applied to nothing.
CLOCK_STEP_WORDS = re.compile(
    r"(?:^|\s)(step_ms|boot|from_seq|before_seq)=(-?\d{1,19})(?=\s|$)")
MAX_CLOCK_STEP_MS = 10**14


@dataclass(frozen=True, slots=True)
class ClockStep:
    """A ``clock_step`` event as the sink applies it: the batches of ``boot`` with
    ``from_seq <= seq < before_seq`` are moved by ``step_ms``."""

    boot: int
    before_seq: int
    step_ms: int
    t: int
    # below it, what a previous run left pending, sealed in this boot (not corrected)
    from_seq: int = 0


def parse_clock_step(t: int, msg: str) -> ClockStep | None:
    """The step a ``clock_step`` event's message names, or None when its words are missing,
    repeated, out of range or not integers (``from_seq`` may be absent: 0)."""
    words: dict[str, int] = {}
    for name, value in CLOCK_STEP_WORDS.findall(msg):
        if name in words:
            return None
        words[name] = int(value)
    words.setdefault("from_seq", 0)
    if len(words) != 4 or abs(words["step_ms"]) > MAX_CLOCK_STEP_MS:
        return None
    if not all(0 <= words[k] <= INT64_MAX for k in ("boot", "from_seq", "before_seq")):
        return None
    return ClockStep(words["boot"], words["before_seq"], words["step_ms"], t, words["from_seq"])


@dataclass(frozen=True, slots=True)
class AppliedStep:
    """A clock step recorded for the first time, and what it moved that was already stored."""

    step: ClockStep
    batches: int
    readings: int


# The correction of the batches already stored, each an indexed lookup: ``batches_by_boot``
# finds the batches of the boot below ``before_seq``, ``readings_by_batch`` and
# ``events_by_batch`` their rows (never a scan of all readings).
_STEPPED_BATCHES = (
    "SELECT seq FROM batches WHERE gw = :gw AND store = :store AND boot = :boot"
    " AND seq >= :from_seq AND seq < :before_seq"
)
SHIFT_READINGS = (
    "UPDATE readings SET t = t + :step_ms WHERE gw = :gw AND store = :store"
    f" AND seq IN ({_STEPPED_BATCHES})"
)
SHIFT_EVENTS = (
    "UPDATE events SET t = t + :step_ms WHERE gw = :gw AND store = :store"
    f" AND seq IN ({_STEPPED_BATCHES})"
)
SHIFT_BATCHES = (
    "UPDATE batches SET clock_shift_ms = clock_shift_ms + :step_ms WHERE gw = :gw"
    " AND store = :store AND boot = :boot AND seq >= :from_seq AND seq < :before_seq"
)
# What a batch arriving after the steps of its boot must be moved by.
PENDING_SHIFT = (
    "SELECT COALESCE(SUM(step_ms), 0) FROM clock_steps WHERE gw = ? AND store = ? AND boot = ?"
    " AND before_seq > ? AND from_seq <= ?"
)


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """What storing one batch did.

    ``conflict`` marks a duplicate ``(gw, seq)`` whose ``boot``/``created`` differ from the
    stored batch: not a resend but a gateway whose counter went back (its data_dir was reset).
    """

    duplicate: bool
    new_gaps: list[tuple[int, int]] = field(default_factory=list)
    filled: list[int] = field(default_factory=list)
    conflict: bool = False
    # ``(highest seq in line, this seq)`` when the batch was stored as a jump
    jump: tuple[int, int] | None = None
    # the seq a confirmed jump moved the baseline to (its run's lowest seq)
    jump_confirmed: int | None = None
    # ms added to this batch's reading and event times: the clock steps of its boot already
    # stored whose ``before_seq`` is above its seq
    clock_shift_ms: int = 0
    # clock_step events of this batch recorded for the first time, and what they moved
    clock_steps: list[AppliedStep] = field(default_factory=list)
    # clock_step events whose words could not be read: stored as events, applied to nothing
    unreadable_clock_steps: int = 0


def sink_path(url_or_path: str | Path) -> Path:
    """The file a sink URL (``sqlite:///PATH``) or plain path names."""
    if isinstance(url_or_path, Path):
        return url_or_path
    if url_or_path.startswith(SCHEME):
        rest = url_or_path[len(SCHEME) :]
        if rest:
            return Path(rest)
    elif "://" not in url_or_path and url_or_path:
        return Path(url_or_path)
    raise ConfigError(
        f"sink {url_or_path!r}: write sqlite:///relative/file.db or sqlite:////absolute/file.db"
    )


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the tables, and bring a sink file written by an earlier release up to them."""
    statements = [x for x in SCHEMA.split(";") if x.strip()]
    conn.execute("BEGIN IMMEDIATE")
    try:
        renamed = []
        for table in _REKEYED:
            have = _columns(conn, table)
            if have and "store" not in have:
                conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v0")
                renamed.append(table)
        for statement in statements:
            conn.execute(statement)
        for table in renamed:
            conn.execute(f"INSERT INTO {table} SELECT {_REKEYED[table]} FROM {table}_v0")
            conn.execute(f"DROP TABLE {table}_v0")
        for table, wanted in _ADDED_COLUMNS.items():
            have = _columns(conn, table)
            for name, decl in wanted:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.executescript(INDEXES)


def _seq_runs(seqs: list[int], first: int, last: int) -> list[tuple[int, int]]:
    """The ranges of ``first..last`` that ``seqs`` (sorted) do not hold."""
    holes: list[tuple[int, int]] = []
    expect = first
    for seq in seqs:
        if seq > expect:
            holes.append((expect, seq - 1))
        expect = max(expect, seq + 1)
    if expect <= last:
        holes.append((expect, last))
    return holes


def _gap_rows(cur: sqlite3.Cursor, gw: str, store: str, seq: int) -> StoreOutcome:
    """Update ``seq_gaps`` for a new (not duplicate) batch, flag it when it is a jump."""
    # The batch's own row is already in: the highest *other* seq in line is what came before.
    (highest,) = cur.execute(
        "SELECT MAX(seq) FROM batches WHERE gw = ? AND store = ? AND seq <> ? AND jump = 0",
        (gw, store, seq),
    ).fetchone()
    if highest is None:
        return StoreOutcome(duplicate=False)  # first batch of this store: the baseline
    top = int(highest)
    if seq > top + MAX_SEQ_JUMP:
        (run_start,) = cur.execute(
            "SELECT MIN(seq) FROM batches WHERE gw = ? AND store = ? AND jump = 1"
            " AND seq >= ? AND seq < ?",
            (gw, store, seq - MAX_SEQ_JUMP, seq),
        ).fetchone()
        if run_start is None:
            cur.execute(
                "UPDATE batches SET jump = 1 WHERE gw = ? AND store = ? AND seq = ?",
                (gw, store, seq),
            )
            return StoreOutcome(duplicate=False, jump=(top, seq))
        # the gateway really is up there: every flagged batch up to this one is in line again
        # (above the line, only flagged batches exist), with gaps for the seqs between them
        run = [int(r[0]) for r in cur.execute(
            "SELECT seq FROM batches WHERE gw = ? AND store = ? AND seq > ? AND seq <= ?"
            " ORDER BY seq", (gw, store, top, seq))]
        cur.execute(
            "UPDATE batches SET jump = 0 WHERE gw = ? AND store = ? AND seq > ? AND seq <= ?",
            (gw, store, top, seq),
        )
        gaps = _seq_runs(run, top + 1, seq)
        cur.executemany(
            'INSERT INTO seq_gaps (gw, store, "first", "last") VALUES (?, ?, ?, ?)',
            [(gw, store, a, b) for a, b in gaps],
        )
        return StoreOutcome(duplicate=False, new_gaps=gaps, jump_confirmed=int(run_start))
    if seq > top + 1:
        # flagged jumps the line has now caught up with are in line again
        flagged = [int(r[0]) for r in cur.execute(
            "SELECT seq FROM batches WHERE gw = ? AND store = ? AND jump = 1 AND seq > ?"
            " AND seq < ? ORDER BY seq", (gw, store, top, seq))]
        if flagged:
            cur.execute(
                "UPDATE batches SET jump = 0 WHERE gw = ? AND store = ? AND jump = 1"
                " AND seq > ? AND seq < ?", (gw, store, top, seq))
        gaps = _seq_runs(flagged, top + 1, seq - 1)
        cur.executemany(
            'INSERT INTO seq_gaps (gw, store, "first", "last") VALUES (?, ?, ?, ?)',
            [(gw, store, a, b) for a, b in gaps],
        )
        return StoreOutcome(duplicate=False, new_gaps=gaps)
    row = cur.execute(
        'SELECT "first", "last" FROM seq_gaps WHERE gw = ? AND store = ? AND "first" <= ?'
        ' AND "last" >= ?',
        (gw, store, seq, seq),
    ).fetchone()
    if row is None:
        return StoreOutcome(duplicate=False)  # next in line, or older than the baseline
    first, last = int(row[0]), int(row[1])
    cur.execute(
        'DELETE FROM seq_gaps WHERE gw = ? AND store = ? AND "first" = ?', (gw, store, first)
    )
    for a, b in ((first, seq - 1), (seq + 1, last)):
        if a <= b:
            cur.execute(
                'INSERT INTO seq_gaps (gw, store, "first", "last") VALUES (?, ?, ?, ?)',
                (gw, store, a, b),
            )
    return StoreOutcome(duplicate=False, filled=[seq])


def _reading_rows(batch: Batch, shift_ms: int) -> Iterator[tuple[Any, ...]]:
    store = batch.store or ""
    for s in batch.series:
        t = s.t0 + shift_ms
        for delta, value, quality in zip(s.dt, s.v, s.q, strict=True):
            t += delta
            yield (batch.gw, s.dev, s.pt, t, value, quality, s.unit, batch.seq, store)


def _record_clock_steps(cur: sqlite3.Cursor, batch: Batch) -> tuple[list[AppliedStep], int]:
    """Record the batch's clock_step events and move what they correct that is stored
    already; a step recorded before (the same event sent again) moves nothing twice."""
    applied: list[AppliedStep] = []
    unreadable = 0
    store = batch.store or ""
    for event in batch.events:
        if event["kind"] != "clock_step":
            continue
        step = parse_clock_step(event["t"], event["msg"])
        if step is None:
            unreadable += 1
            continue
        cur.execute(
            "INSERT OR IGNORE INTO clock_steps (gw, store, boot, before_seq, step_ms, t, seq,"
            " from_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (batch.gw, store, step.boot, step.before_seq, step.step_ms, step.t, batch.seq,
             step.from_seq),
        )
        if cur.rowcount == 0:
            continue
        args = {"gw": batch.gw, "store": store, "boot": step.boot,
                "from_seq": step.from_seq, "before_seq": step.before_seq,
                "step_ms": step.step_ms}
        cur.execute(SHIFT_READINGS, args)
        readings = cur.rowcount
        cur.execute(SHIFT_EVENTS, args)
        cur.execute(SHIFT_BATCHES, args)
        applied.append(AppliedStep(step, cur.rowcount, readings))
    return applied, unreadable


def _aggregate_row(batch: Batch, a: dict[str, Any]) -> tuple[Any, ...]:
    extras = {k: v for k, v in a.items() if k not in AGGREGATE_KEYS}
    extras_json = json.dumps(extras, sort_keys=True, separators=(",", ":")) if extras else None
    return (
        batch.gw,
        a["kpi"],
        a["src"],
        a["start"],
        a["end"],
        a["value"],
        int(a["valid"]),
        a["n"],
        a["expected"],
        a["unit"],
        extras_json,
        batch.seq,
        batch.store or "",
    )


class SqliteSink:
    """Stores decoded batches and gateway status; dedups by ``(gw, store, seq)`` and tracks
    gaps per ``(gw, store)``."""

    def __init__(self, conn: sqlite3.Connection, path: Path, clock: Callable[[], float]) -> None:
        self._conn = conn
        self.path = path
        self._clock = clock

    @classmethod
    def open(cls, url_or_path: str | Path, *, clock: Callable[[], float] = time.time) -> Self:
        """Open (creating if needed) the sink database; ``clock`` stamps ``received``."""
        path = sink_path(url_or_path)
        try:
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE … COMMIT) below.
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL, not NORMAL: the broker gets its PUBACK once store() returns, so a commit
            # must survive a power cut, not only a crash of this process.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")  # several receivers may share a file
            _migrate(conn)
            conn.executescript(REJECTED_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"sink {path}: cannot open the SQLite database: {exc}") from exc
        return cls(conn, path, clock)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the database."""
        self._conn.close()

    def store(self, batch: Batch) -> StoreOutcome:
        """Store a batch in one transaction; a duplicate ``(gw, store, seq)`` stores nothing."""
        received = int(self._clock() * 1000)
        store = batch.store or ""
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute(
                "INSERT OR IGNORE INTO batches (gw, store, seq, boot, created, received,"
                " n_readings, n_aggregates, clock_synced) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch.gw,
                    store,
                    batch.seq,
                    batch.boot,
                    batch.created,
                    received,
                    batch.n_readings,
                    len(batch.aggregates),
                    # the optional body key `clock`: NULL when the gateway did not say
                    None if batch.clock is None else int(batch.clock["synced"]),
                ),
            )
            if cur.rowcount == 0:
                stored = cur.execute(
                    "SELECT boot, created FROM batches WHERE gw = ? AND store = ? AND seq = ?",
                    (batch.gw, store, batch.seq),
                ).fetchone()
                cur.execute("ROLLBACK")
                conflict = tuple(stored) != (batch.boot, batch.created)
                return StoreOutcome(duplicate=True, conflict=conflict)
            outcome = _gap_rows(cur, batch.gw, store, batch.seq)
            # steps of this boot stored before this batch, sealed before them, arrived
            (shift_ms,) = cur.execute(
                PENDING_SHIFT, (batch.gw, store, batch.boot, batch.seq, batch.seq)).fetchone()
            shift_ms = int(shift_ms)
            if shift_ms:
                cur.execute(
                    "UPDATE batches SET clock_shift_ms = ? WHERE gw = ? AND store = ?"
                    " AND seq = ?", (shift_ms, batch.gw, store, batch.seq))
            cur.executemany(
                "INSERT INTO readings (gw, dev, pt, t, value, quality, unit, seq, store)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _reading_rows(batch, shift_ms),
            )
            cur.executemany(
                'INSERT INTO aggregates (gw, kpi, src, "start", "end", value, valid, n,'
                " expected, unit, extras_json, seq, store)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_aggregate_row(batch, a) for a in batch.aggregates],
            )
            cur.executemany(
                "INSERT INTO events (gw, t, kind, dev, msg, seq, store)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (batch.gw, e["t"] + shift_ms, e["kind"], e["dev"], e["msg"], batch.seq,
                     store)
                    for e in batch.events
                ],
            )
            # after this batch's own rows: a step naming a before_seq above its own seq
            # (not what the agent sends, but what the rule says) moves this batch too
            applied, unreadable = _record_clock_steps(cur, batch)
            cur.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                cur.execute("ROLLBACK")
            raise
        return replace(outcome, clock_shift_ms=shift_ms, clock_steps=applied,
                                   unreadable_clock_steps=unreadable)

    def store_status(self, gw: str, payload: bytes | str) -> Status:
        """Store a gateway's status JSON (the last one received wins); returns it parsed.

        No ordering by ``t``: the offline last will is prepared at connect time, so it is
        older than the online birth it follows, and it must still win.
        """
        status = decode_status(payload)
        if status.gw != gw:
            raise WireFormatError(f"status: topic names gateway {gw!r}, the payload {status.gw!r}")
        self._conn.execute(
            "INSERT INTO status (gw, state, boot, t, version) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (gw) DO UPDATE SET state = excluded.state, boot = excluded.boot,"
            " t = excluded.t, version = excluded.version",
            (status.gw, status.state, status.boot, status.t, status.version),
        )
        b = status.buffer
        if b is not None:
            # A status that does not say (the last will, an older agent) leaves the last
            # buffer state said: a gateway that died with its SD card read-only stays shown so.
            self._conn.execute(
                "UPDATE status SET buffer_state = ?, buffer_since = ?, buffer_reason = ?,"
                " buffer_held_readings = ?, buffer_dropped_readings = ? WHERE gw = ?",
                (b.state, b.since, b.reason, b.held_readings, b.dropped_readings, status.gw),
            )
        return status

    # ----------------------------------------------------------------------- read helpers

    def count_readings(self, gw: str | None = None) -> int:
        """How many readings are stored, for one gateway or all."""
        if gw is None:
            row = self._conn.execute("SELECT COUNT(*) FROM readings").fetchone()
        else:
            row = self._conn.execute("SELECT COUNT(*) FROM readings WHERE gw = ?", (gw,)).fetchone()
        return int(row[0])

    def readings_for(self, gw: str) -> list[Reading]:
        """A gateway's readings ordered by device, point and time."""
        rows = self._conn.execute(
            "SELECT dev, pt, unit, t, value, quality FROM readings WHERE gw = ?"
            " ORDER BY dev, pt, t, rowid",
            (gw,),
        )
        return [Reading(d, p, u, t, v, Quality(q)) for d, p, u, t, v, q in rows]

    def seqs(self, gw: str, store: str | None = None) -> list[int]:
        """The batch seqs stored for a gateway (of one store, or of all), ascending."""
        rows = self._conn.execute(
            "SELECT seq FROM batches WHERE gw = ? AND (? IS NULL OR store = ?) ORDER BY seq",
            (gw, store, store),
        )
        return [int(r[0]) for r in rows]

    def clock_synced(self, gw: str) -> list[tuple[int, bool | None]]:
        """``(seq, synced)`` per stored batch in arrival order: what its optional ``clock``
        key said (None: the key was absent)."""
        rows = self._conn.execute(
            "SELECT seq, clock_synced FROM batches WHERE gw = ? ORDER BY rowid", (gw,))
        return [(int(seq), None if c is None else bool(c)) for seq, c in rows]

    def clock_shifts(self, gw: str) -> dict[tuple[str, int], int]:
        """``(store, seq) -> ms`` the clock-step correction added to a batch's reading and
        event times, for the batches it moved."""
        rows = self._conn.execute(
            "SELECT store, seq, clock_shift_ms FROM batches WHERE gw = ? AND clock_shift_ms <> 0",
            (gw,))
        return {(str(a), int(b)): int(c) for a, b, c in rows}

    def clock_steps(self, gw: str) -> list[tuple[str, ClockStep]]:
        """A gateway's recorded clock steps as ``(store, step)``, by store, boot and seq."""
        rows = self._conn.execute(
            "SELECT store, boot, before_seq, step_ms, t, from_seq FROM clock_steps WHERE gw = ?"
            " ORDER BY store, boot, before_seq, t", (gw,))
        return [(str(s), ClockStep(int(b), int(n), int(ms), int(t), int(f)))
                for s, b, n, ms, t, f in rows]

    def stores(self, gw: str) -> list[str]:
        """The store ids a gateway's batches came from (``''``: batches without one), in the
        order their first batch arrived."""
        rows = self._conn.execute(
            "SELECT store FROM batches WHERE gw = ? GROUP BY store ORDER BY min(received),"
            " min(rowid)",
            (gw,),
        )
        return [str(r[0]) for r in rows]

    def gaps(self, gw: str, store: str | None = None) -> list[tuple[int, int]]:
        """A gateway's open seq gaps (of one store, or of all) as inclusive (first, last)
        ranges, ascending."""
        rows = self._conn.execute(
            'SELECT "first", "last" FROM seq_gaps WHERE gw = ? AND (? IS NULL OR store = ?)'
            ' ORDER BY "first"',
            (gw, store, store),
        )
        return [(int(a), int(b)) for a, b in rows]

    def jumps(self, gw: str) -> list[tuple[str, int]]:
        """A gateway's batches stored as seq jumps (not confirmed), as (store, seq)."""
        rows = self._conn.execute(
            "SELECT store, seq FROM batches WHERE gw = ? AND jump = 1 ORDER BY store, seq", (gw,)
        )
        return [(str(a), int(b)) for a, b in rows]

    def aggregates_for(self, gw: str) -> list[dict[str, Any]]:
        """A gateway's aggregates as wire maps (extras merged back), ordered by kpi and start."""
        rows = self._conn.execute(
            'SELECT kpi, src, "start", "end", value, valid, n, expected, unit, extras_json'
            ' FROM aggregates WHERE gw = ? ORDER BY kpi, "start", rowid',
            (gw,),
        )
        out: list[dict[str, Any]] = []
        for *known, extras_json in rows:
            item = dict(zip(AGGREGATE_KEYS, known, strict=True))
            item["valid"] = bool(item["valid"])
            item.update(json.loads(extras_json) if extras_json else {})
            out.append(item)
        return out

    def events_for(self, gw: str) -> list[dict[str, Any]]:
        """A gateway's events as wire maps, in arrival order."""
        rows = self._conn.execute(
            "SELECT t, kind, dev, msg FROM events WHERE gw = ? ORDER BY rowid", (gw,)
        )
        return [{"t": t, "kind": k, "dev": d, "msg": m} for t, k, d, m in rows]

    def status_for(self, gw: str) -> Status | None:
        """The last status stored for a gateway, with the last ``buffer`` a status said (None:
        none did)."""
        row = self._conn.execute(
            "SELECT state, gw, boot, t, version, buffer_state, buffer_since, buffer_reason,"
            " buffer_held_readings, buffer_dropped_readings FROM status WHERE gw = ?", (gw,)
        ).fetchone()
        if row is None:
            return None
        buffer = None if row[5] is None else BufferHealth(*row[5:])
        state, gateway, boot, t, version = row[:5]
        return Status(state, gateway, boot, t, version, buffer=buffer)

    # ----------------------------------------------------------------------- set aside

    def set_aside(
        self, gw: str | None, topic: str, kind: str, reason: str, payload: bytes
    ) -> None:
        """Keep a message that cannot be stored (cut to ``REJECTED_KEEP_BYTES``) and count it;
        only the most recent ``REJECTED_KEEP_ROWS`` are kept, the counts for good."""
        received = int(self._clock() * 1000)
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute(
                "INSERT INTO rejected (gw, topic, received, kind, reason, size, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (gw, _cut(topic), received, kind, _cut(reason), len(payload),
                 bytes(payload[:REJECTED_KEEP_BYTES])),
            )
            cur.execute(
                "DELETE FROM rejected WHERE id <= ?", ((cur.lastrowid or 0) - REJECTED_KEEP_ROWS,)
            )
            cur.execute(
                "INSERT INTO rejected_totals (gw, kind, n, bytes, last_received)"
                " VALUES (?, ?, 1, ?, ?) ON CONFLICT (gw, kind) DO UPDATE SET n = n + 1,"
                " bytes = bytes + excluded.bytes, last_received = excluded.last_received",
                (gw or "", kind, len(payload), received),
            )
            cur.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                cur.execute("ROLLBACK")
            raise

    def rejected(self, gw: str | None = None, limit: int = 100) -> list[RejectedMessage]:
        """The most recent messages set aside (of one gateway, or all), newest first."""
        where, args = ("WHERE gw = ?", (gw,)) if gw is not None else ("", ())
        rows = self._conn.execute(
            "SELECT gw, topic, received, kind, reason, size, payload FROM rejected"
            f" {where} ORDER BY id DESC LIMIT ?",
            (*args, limit),
        )
        return [RejectedMessage(*row) for row in rows]

    def rejected_totals(self) -> dict[tuple[str, str], int]:
        """How many messages were set aside, per (gateway, kind); gateway '' when the topic
        named none."""
        rows = self._conn.execute("SELECT gw, kind, n FROM rejected_totals")
        return {(str(g), str(k)): int(n) for g, k, n in rows}
