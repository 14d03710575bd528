"""Storing one batch: dedup by ``(gw, store, seq)``, seq gaps and jumps, clock steps.

See the package docstring (``agent.platform.sink``) for the rules."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from agent.platform.sink.schema import SqlCursor, immediate
from agent.platform.sink.summary import StoredBatch, batch_lag_ms, record_gateways
from agent.wire import AGGREGATE_KEYS, INT64_MAX, Batch

# Above anything a real gateway skips in one step (at most SEQ_RESERVE after losing its store
# file) and than the buffer's bounds drop while a receiver keeps up; confirmed jumps move on.
MAX_SEQ_JUMP = 100_000


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


def _gap_rows(cur: SqlCursor, gw: str, store: str, seq: int) -> StoreOutcome:
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


def reading_rows(batch: Batch, shift_ms: int) -> Iterator[tuple[Any, ...]]:
    """The batch's ``readings`` rows: gw, dev, pt, t, value, quality, unit, seq, store."""
    store = batch.store or ""
    for s in batch.series:
        t = s.t0 + shift_ms
        for delta, value, quality in zip(s.dt, s.v, s.q, strict=True):
            t += delta
            yield (batch.gw, s.dev, s.pt, t, value, quality, s.unit, batch.seq, store)


def _record_clock_steps(cur: SqlCursor, batch: Batch) -> tuple[list[AppliedStep], int]:
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
            "INSERT INTO clock_steps (gw, store, boot, before_seq, step_ms, t, seq,"
            " from_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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


def aggregate_row(batch: Batch, a: dict[str, Any]) -> tuple[Any, ...]:
    """An ``aggregates`` row: gw, kpi, src, start, end, value, valid, n, expected, unit,
    extras_json, seq, store."""
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


def begin_batch(cur: SqlCursor, batch: Batch, received: int) -> StoreOutcome:
    """The batch's ``batches`` row, its gaps and jump flag, and the shift the clock steps of
    its boot stored before it ask for (``clock_shift_ms``): the part of storing a batch both
    sinks share. A duplicate ``(gw, store, seq)`` writes nothing (``duplicate=True``); else
    the caller writes its rows (:func:`reading_rows`, :func:`aggregate_row`,
    :func:`event_rows`) and then calls :func:`finish_batch`, in the same transaction."""
    store = batch.store or ""
    cur.execute(
        "INSERT INTO batches (gw, store, seq, boot, created, received,"
        " n_readings, n_aggregates, clock_synced, lag_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
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
            batch_lag_ms(batch, received),
        ),
    )
    if cur.rowcount == 0:
        stored = cur.execute(
            "SELECT boot, created FROM batches WHERE gw = ? AND store = ? AND seq = ?",
            (batch.gw, store, batch.seq),
        ).fetchone()
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
    return replace(outcome, clock_shift_ms=shift_ms)


def finish_batch(cur: SqlCursor, batch: Batch, outcome: StoreOutcome) -> StoreOutcome:
    """After the batch's own rows: record its clock steps (a step naming a before_seq above
    its own seq, not what the agent sends but what the rule says, moves this batch too)."""
    applied, unreadable = _record_clock_steps(cur, batch)
    return replace(outcome, clock_steps=applied, unreadable_clock_steps=unreadable)


def event_rows(batch: Batch, shift_ms: int) -> list[tuple[Any, ...]]:
    """The batch's ``events`` rows: gw, t, kind, dev, msg, seq, store."""
    store = batch.store or ""
    return [(batch.gw, e["t"] + shift_ms, e["kind"], e["dev"], e["msg"], batch.seq, store)
            for e in batch.events]


def store_batch(conn: sqlite3.Connection, batch: Batch, received: int) -> StoreOutcome:
    """Store a batch in one SQLite transaction; a duplicate ``(gw, store, seq)`` stores
    nothing. ``received``: epoch ms, stamped on its ``batches`` row."""
    with immediate(conn) as cur:
        outcome = begin_batch(cur, batch, received)
        if outcome.duplicate:
            cur.execute("ROLLBACK")
            return outcome
        shift_ms = outcome.clock_shift_ms
        cur.executemany(
            "INSERT INTO readings (gw, dev, pt, t, value, quality, unit, seq, store)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            reading_rows(batch, shift_ms),
        )
        cur.executemany(
            'INSERT INTO aggregates (gw, kpi, src, "start", "end", value, valid, n,'
            " expected, unit, extras_json, seq, store)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [aggregate_row(batch, a) for a in batch.aggregates],
        )
        cur.executemany(
            "INSERT INTO events (gw, t, kind, dev, msg, seq, store)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            event_rows(batch, shift_ms),
        )
        outcome = finish_batch(cur, batch, outcome)
        record_gateways(cur, [StoredBatch(batch, outcome.jump is not None, received,
                                          shift_ms)])
        return outcome
