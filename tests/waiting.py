"""Waiting in tests: on the condition a test needs, never for a fixed time.

A test that needs the system in some state (a log event written, rows stored, a status
retained, a port open) polls for that state with :func:`wait_until` (or, in an async test,
:func:`wait_until_async`) and goes on the moment it holds; the timeout is only the bound of a
failure. Both return a :class:`Waited`, true when the condition held, whose text names the
condition (the predicate's source line) and how long was waited, so a bare
``assert wait_until(...)`` says what did not happen.

A fixed sleep is left only where the passing time IS the test's input (an outage of N
seconds, a clock that must move on); such a sleep carries a comment saying so.
"""

from __future__ import annotations

import asyncio
import linecache
import time
from collections.abc import Callable
from dataclasses import dataclass

STEP_S = 0.05
"""How often a condition is checked unless the caller says otherwise."""


@dataclass(frozen=True)
class Waited:
    """The outcome of a wait; true when the condition held within the timeout."""

    held: bool
    what: str
    waited_s: float

    def __bool__(self) -> bool:
        return self.held

    def __repr__(self) -> str:
        outcome = "held" if self.held else "still false"
        return f"<waited {self.waited_s:.1f} s for {self.what}: {outcome}>"


def describe(predicate: Callable[[], object]) -> str:
    """The predicate as a reader finds it: its source line and place, or its name."""
    code = getattr(predicate, "__code__", None)
    name = getattr(predicate, "__qualname__", repr(predicate))
    if code is None:
        return name
    place = f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno}"
    line = linecache.getline(code.co_filename, code.co_firstlineno).strip()
    return f"`{line[:160]}` ({place})" if name == "<lambda>" and line else f"{name} ({place})"


class _Polls:
    """The one waiting loop, stepped by a sync or an async sleeper."""

    def __init__(self, predicate: Callable[[], object], seconds: float, step: float) -> None:
        self.predicate = predicate
        self.step = step
        self.started = time.monotonic()
        self.deadline = self.started + seconds
        self.result: Waited | None = None

    def pending(self) -> bool:
        """Check once; False when the wait is over (held, or the deadline passed)."""
        held = bool(self.predicate())
        now = time.monotonic()
        if held or now >= self.deadline:
            self.result = Waited(held, describe(self.predicate), now - self.started)
            return False
        return True

    def done(self) -> Waited:
        assert self.result is not None
        return self.result


def wait_until(predicate: Callable[[], object], seconds: float, *,
               step: float = STEP_S) -> Waited:
    """Check ``predicate`` every ``step`` s until it holds or ``seconds`` pass (blocking)."""
    polls = _Polls(predicate, seconds, step)
    while polls.pending():
        time.sleep(polls.step)
    return polls.done()


async def wait_until_async(predicate: Callable[[], object], seconds: float, *,
                           step: float = STEP_S) -> Waited:
    """:func:`wait_until` for async tests: the event loop runs on while it waits."""
    polls = _Polls(predicate, seconds, step)
    while polls.pending():
        await asyncio.sleep(polls.step)
    return polls.done()
