"""The receiver's sink: decoded batches into one SQLite file (WAL), one transaction per batch,
or into PostgreSQL (``agent.platform.sink.pg``: many batches per transaction, exactly-once
under receivers racing on a batch; docs/platform.md). Both store by the rules below, with
the same code (``ingest``, ``base``).

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


The package: ``schema`` (SQLite tables, migration of older files, transactions), ``ingest``
(one batch: dedup, gaps, jumps, clock steps), ``summary`` (the fleet view's per-gateway
summaries kept at ingest), ``rejected`` (set-aside messages), ``base``
(what both sinks do alike), ``sqlite`` (:class:`SqliteSink`), ``pg_schema`` and ``pg``
(:class:`PgSink`), ``url`` (:func:`open_sink`: the sink a URL names).
"""

from agent.platform.sink.base import SinkBase, SinkUnavailable
from agent.platform.sink.ingest import (
    MAX_CLOCK_STEP_MS,
    MAX_SEQ_JUMP,
    PENDING_SHIFT,
    SHIFT_BATCHES,
    SHIFT_EVENTS,
    SHIFT_READINGS,
    AppliedStep,
    ClockStep,
    StoreOutcome,
    parse_clock_step,
)
from agent.platform.sink.rejected import (
    REJECTED_KEEP_BYTES,
    REJECTED_KEEP_ROWS,
    REJECTED_TEXT_CHARS,
    RejectedMessage,
)
from agent.platform.sink.schema import SCHEME, sink_path
from agent.platform.sink.sqlite import SqliteSink
from agent.platform.sink.url import check_sink_url, open_sink

__all__ = [
    "MAX_CLOCK_STEP_MS",
    "MAX_SEQ_JUMP",
    "PENDING_SHIFT",
    "REJECTED_KEEP_BYTES",
    "REJECTED_KEEP_ROWS",
    "REJECTED_TEXT_CHARS",
    "SCHEME",
    "SHIFT_BATCHES",
    "SHIFT_EVENTS",
    "SHIFT_READINGS",
    "AppliedStep",
    "ClockStep",
    "RejectedMessage",
    "SinkBase",
    "SinkUnavailable",
    "SqliteSink",
    "StoreOutcome",
    "check_sink_url",
    "open_sink",
    "parse_clock_step",
    "sink_path",
]
