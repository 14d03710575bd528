"""A simulated Nova SDS011 on a serial path (one end of a socat pair), for tests and
``ssc-agent simulate sds011 --serial PATH``.

It behaves like the sensor: starts awake in active mode (a data frame every ``period``
seconds), answers the reporting-mode, query, sleep/work and working-period commands with the
sensor's ``AA C5`` echo, ignores queries while asleep, and ignores commands addressed to another
ID. Tests steer it: fixed values, and :meth:`Sds011Simulator.inject` queues faults applied to the
next data frames (noise before the frame, a partial frame, a wrong checksum, silence).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from enum import Enum

import structlog

from drivers.sds011 import frames
from drivers.serialio import ReadTimeout, SerialLink, SerialSettings, serve_port

__all__ = ["Fault", "Sds011Simulator", "simulate"]

log = structlog.get_logger()

NOISE = bytes([0x00, 0xFF, 0xAA, 0x55, 0xAA, 0xC5, 0x13])


class Fault(Enum):
    """What to do to the next data frame."""

    NOISE = "noise"  # junk bytes (with a false header) before a good frame
    PARTIAL = "partial"  # the first half of the frame, then nothing
    BAD_CHECKSUM = "bad_checksum"
    SILENCE = "silence"  # no answer at all


class Sds011Simulator:
    """One simulated sensor; ``pm2_5``/``pm10`` fixed values, or None for a plausible walk."""

    def __init__(
        self,
        port: str,
        *,
        device_id: int = 0xBCF9,
        pm2_5: float | None = None,
        pm10: float | None = None,
        period: float = 1.0,
        seed: int | None = None,
    ) -> None:
        self.link = SerialLink(SerialSettings(port, 9600), name=f"sds011 simulator ({port})")
        self.device_id = device_id
        self.pm2_5 = pm2_5
        self.pm10 = pm10
        self.period = period
        self.faults: deque[Fault] = deque()
        self.awake = True
        self.query_mode = False  # the factory default is active reporting
        self.commands: list[int] = []  # D1 of every command taken, in order
        self.frames_sent = 0
        self._random = random.Random(seed)
        self._walk = 12.0

    def inject(self, *faults: Fault) -> None:
        """Apply these faults to the next data frames, one each."""
        self.faults.extend(faults)

    def reset(self) -> None:
        """A power cycle (the adapter replugged): awake, active mode."""
        self.awake = True
        self.query_mode = False

    def _values(self) -> tuple[float, float]:
        if self.pm2_5 is not None and self.pm10 is not None:
            return self.pm2_5, self.pm10
        self._walk = min(300.0, max(1.0, self._walk + self._random.gauss(0, 0.8)))
        return round(self._walk, 1), round(self._walk * 1.45, 1)

    async def _send_data(self, link: SerialLink) -> None:
        frame = frames.build_data_frame(*self._values(), self.device_id)
        fault = self.faults.popleft() if self.faults else None
        self.frames_sent += 1
        if fault is Fault.SILENCE:
            return
        if fault is Fault.NOISE:
            frame = NOISE + frame
        elif fault is Fault.PARTIAL:
            frame = frame[:5]
        elif fault is Fault.BAD_CHECKSUM:
            frame = frame[:8] + bytes([(frame[8] + 1) & 0xFF]) + frame[9:]
        await link.write(frame)

    async def _answer(self, link: SerialLink, command: int, data: bytes, target: int) -> None:
        if target not in (frames.ANY_ID, self.device_id):
            return
        self.commands.append(command)
        if command == frames.Command.QUERY_DATA:
            if self.awake:
                await self._send_data(link)
            return
        if not self.awake and command != frames.Command.SLEEP_WORK:
            return  # asleep, the sensor only listens for the work command
        is_set, value = data[0], data[1]
        if command == frames.Command.REPORTING_MODE:
            if is_set:
                self.query_mode = bool(value)
            value = int(self.query_mode)
        elif command == frames.Command.SLEEP_WORK:
            if is_set:
                self.awake = bool(value)
            value = int(self.awake)
        elif command not in (frames.Command.WORKING_PERIOD, frames.Command.DEVICE_ID):
            return
        echo = bytes([command, is_set, value, 0])
        await link.write(frames.build_reply(frames.SETTING_REPLY, echo, self.device_id))

    async def _session(self, link: SerialLink) -> None:
        self.reset()
        next_frame = asyncio.get_running_loop().time() + self.period
        while True:
            streaming = self.awake and not self.query_mode
            deadline = next_frame if streaming else link.deadline(3600.0)
            try:
                command, data, target = await link.read_frame(frames.scan_command, deadline)
            except ReadTimeout:
                if self.awake and not self.query_mode:
                    await self._send_data(link)
                next_frame = asyncio.get_running_loop().time() + self.period
                continue
            await self._answer(link, command, data, target)
            if not streaming:
                next_frame = asyncio.get_running_loop().time() + self.period

    async def run(self, duration: float | None = None) -> None:
        """Serve until cancelled (or ``duration`` seconds), reopening the port if it vanishes."""
        log.info("simulator_serving", driver="sds011", port=self.link.port,
                 device_id=f"{self.device_id:04X}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await serve_port(self.link, self._session)


async def simulate(serial_path: str, duration: float | None) -> None:
    """``ssc-agent simulate sds011 --serial PATH``: a sensor with plausible values."""
    await Sds011Simulator(serial_path).run(duration)
