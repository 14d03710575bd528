"""What the simulated serial sensors share: frame faults, the stream-or-answer session, running.

A particulate sensor (SDS011, PMS5003) streams a data frame every ``period`` seconds while
awake in active mode, and otherwise only answers commands; tests spoil its next frames with
:class:`Fault`. :class:`StreamingSensor` is that sensor's session; :func:`serve_port_for` runs a
session on a port for a while, reopening the port whenever it vanishes.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import ClassVar, Generic, TypeVar

import structlog

from drivers.serialio import ReadTimeout, SerialLink, serve_port

__all__ = ["Fault", "StreamingSensor", "send_frame", "serve_port_for"]

log = structlog.get_logger()

C = TypeVar("C")

_IDLE_WAIT_SECONDS = 3600.0  # not streaming: nothing to do until a command comes


class Fault(Enum):
    """What to do to the next data frame."""

    NOISE = "noise"  # junk bytes (with a false header) before a good frame
    PARTIAL = "partial"  # the first part of the frame, then nothing
    BAD_CHECKSUM = "bad_checksum"
    SILENCE = "silence"  # no answer at all


async def send_frame(
    link: SerialLink,
    frame: bytes,
    faults: deque[Fault],
    *,
    noise: bytes,
    partial: int,
    checksum_at: int,
) -> None:
    """Send ``frame``, spoiled by the next queued fault: ``partial`` bytes of it, its byte at
    ``checksum_at`` (negative: from the end) off by one, ``noise`` before it, or nothing."""
    fault = faults.popleft() if faults else None
    if fault is Fault.SILENCE:
        return
    if fault is Fault.NOISE:
        frame = noise + frame
    elif fault is Fault.PARTIAL:
        frame = frame[:partial]
    elif fault is Fault.BAD_CHECKSUM:
        at = checksum_at % len(frame)
        frame = frame[:at] + bytes([(frame[at] + 1) & 0xFF]) + frame[at + 1 :]
    await link.write(frame)


class StreamingSensor(ABC, Generic[C]):
    """A simulated sensor that streams a data frame every ``period`` seconds while awake in
    active mode and otherwise only answers the commands ``scan_command`` finds.

    A command taken while not streaming restarts the period, so the first streamed frame after
    a switch to active mode comes a whole period later, as from the sensor.
    """

    driver: ClassVar[str]

    def __init__(self, link: SerialLink, period: float) -> None:
        self.link = link
        self.period = period
        self.faults: deque[Fault] = deque()
        self.commands: list[int] = []  # every command taken, in order

    def inject(self, *faults: Fault) -> None:
        """Apply these faults to the next data frames, one each."""
        self.faults.extend(faults)

    @staticmethod
    @abstractmethod
    def scan_command(buffer: bytes) -> tuple[int, C | None]:
        """The frame scanner for the commands the sensor takes."""

    @abstractmethod
    def power_up(self) -> None:
        """The state of a sensor just powered (a port opened, an adapter replugged)."""

    @abstractmethod
    def streaming(self) -> bool:
        """Whether the sensor sends data frames on its own now."""

    @abstractmethod
    async def send_data(self, link: SerialLink) -> None:
        """Send one data frame (spoiled by the next fault, if any)."""

    @abstractmethod
    async def answer(self, link: SerialLink, command: C) -> None:
        """Act on a command, answering it as the sensor does."""

    def serving_fields(self) -> dict[str, str]:
        """What the ``simulator_serving`` line says of this sensor besides driver and port."""
        return {}

    async def _session(self, link: SerialLink) -> None:
        self.power_up()
        loop = asyncio.get_running_loop()
        next_frame = loop.time() + self.period
        while True:
            was_streaming = self.streaming()
            deadline = next_frame if was_streaming else link.deadline(_IDLE_WAIT_SECONDS)
            try:
                command = await link.read_frame(self.scan_command, deadline)
            except ReadTimeout:
                if self.streaming():
                    await self.send_data(link)
                next_frame = loop.time() + self.period
                continue
            await self.answer(link, command)
            if not was_streaming:
                next_frame = loop.time() + self.period

    async def run(self, duration: float | None = None) -> None:
        """Serve until cancelled (or ``duration`` seconds), reopening the port if it vanishes."""
        log.info("simulator_serving", driver=self.driver, port=self.link.port,
                 **self.serving_fields())
        await serve_port_for(self.link, self._session, duration)


async def serve_port_for(
    link: SerialLink,
    session: Callable[[SerialLink], Awaitable[None]],
    duration: float | None,
) -> None:
    """:func:`serve_port` until cancelled, or for ``duration`` seconds."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(duration):
            await serve_port(link, session)
