"""The receiver's sink: decoded batches into one SQLite file (WAL), one transaction per batch.

URL: ``sqlite:///`` followed by the path exactly as given, so ``sqlite:////var/lib/ssc/r.db`` is
the absolute ``/var/lib/ssc/r.db`` and ``sqlite:///r.db`` is ``r.db`` relative to the working
directory. A plain path (no ``scheme://``) is accepted too.

Delivery is at-least-once, so the same batch can arrive twice: the ``batches`` row, keyed by
``(gw, seq)``, is inserted first and, when it already exists, nothing else of that batch is
stored. Gaps in ``seq`` are tracked per gateway in ``seq_gaps``: a batch with ``seq`` beyond the
highest seen so far opens the gap between them; a late batch inside a gap shrinks or splits
it. The first batch ever seen from a gateway sets the baseline and opens no gap, because a
receiver may be installed (or its database reset) long after the gateway started counting.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agent.errors import ConfigError, WireFormatError
from agent.readings import Quality, Reading
from agent.wire import AGGREGATE_KEYS, Batch, Status, decode_status

SCHEME = "sqlite:///"

# `value` columns have no declared type on purpose: with no type affinity SQLite stores an int
# as INTEGER and a float as REAL, so 230.0 stays a float and 7 stays an int (REAL or NUMERIC
# affinity would convert one into the other).
SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    gw TEXT NOT NULL,
    seq INTEGER NOT NULL,
    boot INTEGER NOT NULL,
    created INTEGER NOT NULL,
    received INTEGER NOT NULL,
    n_readings INTEGER NOT NULL,
    n_aggregates INTEGER NOT NULL,
    PRIMARY KEY (gw, seq)
);
CREATE TABLE IF NOT EXISTS readings (
    gw TEXT NOT NULL,
    dev TEXT NOT NULL,
    pt TEXT NOT NULL,
    t INTEGER NOT NULL,
    value,
    quality INTEGER NOT NULL,
    unit TEXT,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_by_point ON readings (gw, dev, pt, t);
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
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS aggregates_by_kpi ON aggregates (gw, kpi, "start");
CREATE TABLE IF NOT EXISTS events (
    gw TEXT NOT NULL,
    t INTEGER NOT NULL,
    kind TEXT NOT NULL,
    dev TEXT,
    msg TEXT NOT NULL,
    seq INTEGER NOT NULL
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
    "first" INTEGER NOT NULL,
    "last" INTEGER NOT NULL,
    PRIMARY KEY (gw, "first")
);
"""


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


def _gap_rows(cur: sqlite3.Cursor, gw: str, seq: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Update ``seq_gaps`` for a new (not duplicate) batch; returns (new gaps, filled seqs)."""
    # The batch's own row is already in: the highest *other* seq is what came before.
    (highest,) = cur.execute(
        "SELECT MAX(seq) FROM batches WHERE gw = ? AND seq <> ?", (gw, seq)
    ).fetchone()
    if highest is None:
        return [], []  # first batch from this gateway: the baseline
    top = int(highest)
    if seq > top + 1:
        cur.execute(
            'INSERT INTO seq_gaps (gw, "first", "last") VALUES (?, ?, ?)', (gw, top + 1, seq - 1)
        )
        return [(top + 1, seq - 1)], []
    row = cur.execute(
        'SELECT "first", "last" FROM seq_gaps WHERE gw = ? AND "first" <= ? AND "last" >= ?',
        (gw, seq, seq),
    ).fetchone()
    if row is None:
        return [], []  # next in line, or older than the baseline
    first, last = int(row[0]), int(row[1])
    cur.execute('DELETE FROM seq_gaps WHERE gw = ? AND "first" = ?', (gw, first))
    for a, b in ((first, seq - 1), (seq + 1, last)):
        if a <= b:
            cur.execute('INSERT INTO seq_gaps (gw, "first", "last") VALUES (?, ?, ?)', (gw, a, b))
    return [], [seq]


def _reading_rows(batch: Batch) -> Iterator[tuple[Any, ...]]:
    for s in batch.series:
        t = s.t0
        for delta, value, quality in zip(s.dt, s.v, s.q, strict=True):
            t += delta
            yield (batch.gw, s.dev, s.pt, t, value, quality, s.unit, batch.seq)


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
    )


class SqliteSink:
    """Stores decoded batches and gateway status; dedups by ``(gw, seq)`` and tracks gaps."""

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
            conn.executescript(SCHEMA)
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
        """Store a batch in one transaction; a duplicate ``(gw, seq)`` stores nothing."""
        received = int(self._clock() * 1000)
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute(
                "INSERT OR IGNORE INTO batches (gw, seq, boot, created, received, n_readings,"
                " n_aggregates) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    batch.gw,
                    batch.seq,
                    batch.boot,
                    batch.created,
                    received,
                    batch.n_readings,
                    len(batch.aggregates),
                ),
            )
            if cur.rowcount == 0:
                stored = cur.execute(
                    "SELECT boot, created FROM batches WHERE gw = ? AND seq = ?",
                    (batch.gw, batch.seq),
                ).fetchone()
                cur.execute("ROLLBACK")
                conflict = tuple(stored) != (batch.boot, batch.created)
                return StoreOutcome(duplicate=True, conflict=conflict)
            new_gaps, filled = _gap_rows(cur, batch.gw, batch.seq)
            cur.executemany(
                "INSERT INTO readings (gw, dev, pt, t, value, quality, unit, seq)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                _reading_rows(batch),
            )
            cur.executemany(
                'INSERT INTO aggregates (gw, kpi, src, "start", "end", value, valid, n,'
                " expected, unit, extras_json, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_aggregate_row(batch, a) for a in batch.aggregates],
            )
            cur.executemany(
                "INSERT INTO events (gw, t, kind, dev, msg, seq) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (batch.gw, e["t"], e["kind"], e["dev"], e["msg"], batch.seq)
                    for e in batch.events
                ],
            )
            cur.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                cur.execute("ROLLBACK")
            raise
        return StoreOutcome(duplicate=False, new_gaps=new_gaps, filled=filled)

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

    def seqs(self, gw: str) -> list[int]:
        """The batch seqs stored for a gateway, ascending."""
        rows = self._conn.execute("SELECT seq FROM batches WHERE gw = ? ORDER BY seq", (gw,))
        return [int(r[0]) for r in rows]

    def gaps(self, gw: str) -> list[tuple[int, int]]:
        """A gateway's open seq gaps as inclusive (first, last) ranges, ascending."""
        rows = self._conn.execute(
            'SELECT "first", "last" FROM seq_gaps WHERE gw = ? ORDER BY "first"', (gw,)
        )
        return [(int(a), int(b)) for a, b in rows]

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
        """The last status stored for a gateway."""
        row = self._conn.execute(
            "SELECT state, gw, boot, t, version FROM status WHERE gw = ?", (gw,)
        ).fetchone()
        return None if row is None else Status(*row)
