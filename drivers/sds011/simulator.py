"""A simulated Nova SDS011 on a serial path (one end of a socat pair), for tests and
``ssc-agent simulate sds011 --serial PATH``.

It behaves like the sensor: starts awake in active mode (a data frame every ``period``
seconds), answers the reporting-mode, query, sleep/work and working-period commands with the
sensor's ``AA C5`` echo, ignores queries while asleep, and ignores commands addressed to another
ID. Tests steer it: fixed values, and :meth:`Sds011Simulator.inject` queues faults applied to the
next data frames (noise before the frame, a partial frame, a wrong checksum, silence).
"""

from __future__ import annotations

import random

from drivers.sds011 import frames
from drivers.serialio import SerialLink, SerialSettings
from drivers.serialsim import Fault, StreamingSensor, send_frame

__all__ = ["Fault", "Sds011Simulator", "simulate"]

NOISE = bytes([0x00, 0xFF, 0xAA, 0x55, 0xAA, 0xC5, 0x13])


class Sds011Simulator(StreamingSensor[tuple[int, bytes, int]]):
    """One simulated sensor; ``pm2_5``/``pm10`` fixed values, or None for a plausible walk."""

    driver = "sds011"
    scan_command = staticmethod(frames.scan_command)

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
        link = SerialLink(SerialSettings(port, 9600), name=f"sds011 simulator ({port})")
        super().__init__(link, period)  # commands: D1 of every command taken, in order
        self.device_id = device_id
        self.pm2_5 = pm2_5
        self.pm10 = pm10
        self.awake = True
        self.query_mode = False  # the factory default is active reporting
        self.frames_sent = 0
        self._random = random.Random(seed)
        self._walk = 12.0

    def reset(self) -> None:
        """A power cycle (the adapter replugged): awake, active mode."""
        self.awake = True
        self.query_mode = False

    def _values(self) -> tuple[float, float]:
        if self.pm2_5 is not None and self.pm10 is not None:
            return self.pm2_5, self.pm10
        self._walk = min(300.0, max(1.0, self._walk + self._random.gauss(0, 0.8)))
        return round(self._walk, 1), round(self._walk * 1.45, 1)

    def power_up(self) -> None:
        """As :meth:`reset`."""
        self.reset()

    def streaming(self) -> bool:
        """Awake and in active reporting mode."""
        return self.awake and not self.query_mode

    def serving_fields(self) -> dict[str, str]:
        """The sensor's ID."""
        return {"device_id": f"{self.device_id:04X}"}

    async def send_data(self, link: SerialLink) -> None:
        """One data frame with the current values."""
        frame = frames.build_data_frame(*self._values(), self.device_id)
        self.frames_sent += 1
        await send_frame(link, frame, self.faults, noise=NOISE, partial=5, checksum_at=8)

    async def answer(self, link: SerialLink, command_frame: tuple[int, bytes, int]) -> None:
        """Query or setting commands addressed to this sensor; asleep, only the work command."""
        command, data, target = command_frame
        if target not in (frames.ANY_ID, self.device_id):
            return
        self.commands.append(command)
        if command == frames.Command.QUERY_DATA:
            if self.awake:
                await self.send_data(link)
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


async def simulate(serial_path: str, duration: float | None) -> None:
    """``ssc-agent simulate sds011 --serial PATH``: a sensor with plausible values."""
    await Sds011Simulator(serial_path).run(duration)
