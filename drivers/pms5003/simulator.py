"""A simulated Plantower PMS5003-family sensor on a serial path, for tests and
``ssc-agent simulate pms5003 --serial PATH`` (a PMS5003).

``model`` (``frames.MODELS``) sets the frame it sends: a PMS5003T puts temperature and humidity
in the words of the two largest particle counts, a PMS5003ST sends a 40-byte frame with
formaldehyde, temperature and humidity after the 12 values.

Like the sensor it powers up in active mode (a frame every ``period`` seconds), switches to
passive mode on command (answering with the 8-byte mode answer), sends one frame per read
command in passive mode, and stops talking while asleep. :meth:`Pms5003Simulator.inject` queues
faults for the next data frames.
"""

from __future__ import annotations

import random

from drivers.pms5003 import frames
from drivers.serialio import SerialLink, SerialSettings
from drivers.serialsim import Fault, StreamingSensor, send_frame

__all__ = ["Fault", "Pms5003Simulator", "simulate"]

# Noise with a false header (42 4D and a length of 0x1C) that a careless parser would take.
NOISE = bytes([0x00, 0xFF, 0x42, 0x4D, 0x00, 0x1C, 0x55, 0x42])


class Pms5003Simulator(StreamingSensor[tuple[int, int]]):
    """One simulated sensor; ``values`` fixed (12 ints in ``frames.FIELDS`` order) or a walk.

    ``climate`` gives the temperature (°C), relative humidity (%) and formaldehyde (mg/m³) the
    T, S and ST models send.
    """

    driver = "pms5003"
    scan_command = staticmethod(frames.scan_command)

    def __init__(
        self,
        port: str,
        *,
        model: str = "pms5003",
        values: tuple[int, ...] | None = None,
        climate: tuple[float, float, float] = (21.4, 48.5, 0.012),
        period: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if model not in frames.MODELS:
            raise ValueError(f"model {model!r}: one of {', '.join(frames.MODELS)}")
        self.model = frames.MODELS[model]
        link = SerialLink(SerialSettings(port, 9600), name=f"{model} simulator ({port})")
        super().__init__(link, period)
        self.values = values
        self.climate = climate
        self.passive = False
        self.awake = True
        self._random = random.Random(seed)
        self._walk = 9.0

    def _frame_values(self) -> tuple[int, ...]:
        if self.values is not None:
            return self.values
        self._walk = min(500.0, max(1.0, self._walk + self._random.gauss(0, 0.7)))
        pm25 = self._walk
        pm1, pm10 = pm25 * 0.6, pm25 * 1.3
        mass = [round(pm1), round(pm25), round(pm10)]
        counts = [round(pm25 * k) for k in (130.0, 38.0, 7.0, 0.9, 0.25, 0.1)]
        return tuple(mass + mass + counts)

    def frame(self) -> bytes:
        """The next data frame of this model."""
        words = [*self._frame_values(), 0x9700, 0, 0, 0, 0][: self.model.words]
        temperature, humidity, formaldehyde = self.climate
        for name, value in (("temperature", temperature), ("humidity", humidity),
                            ("formaldehyde", formaldehyde)):
            try:
                field = self.model.field(name)
            except KeyError:
                continue
            words[field.word] = frames.encode_word(field, value)
        if self.model.name == "pms5003t":
            words[11] = 0  # reserved; the counts above 10 µm are not sent
        return frames.build_data_frame(tuple(words[:12]), words[12], tuple(words[13:]))

    def power_up(self) -> None:
        """Active mode, awake."""
        self.passive, self.awake = False, True

    def streaming(self) -> bool:
        """Awake and in active mode."""
        return self.awake and not self.passive

    async def send_data(self, link: SerialLink) -> None:
        """One data frame of this model."""
        await send_frame(link, self.frame(), self.faults, noise=NOISE, partial=13, checksum_at=-1)

    async def answer(self, link: SerialLink, command_frame: tuple[int, int]) -> None:
        """Sleep/wake; awake, the mode command (answered) and the read command (passive)."""
        command, data = command_frame
        self.commands.append(command)
        if command == frames.Command.SLEEP:
            self.awake = bool(data)
            return
        if not self.awake:
            return
        if command == frames.Command.MODE:
            self.passive = data == 0
            await link.write(frames.build_answer(command, data))
        elif command == frames.Command.READ and self.passive:
            await self.send_data(link)


async def simulate(serial_path: str, duration: float | None) -> None:
    """``ssc-agent simulate pms5003 --serial PATH``: a sensor with plausible values."""
    await Pms5003Simulator(serial_path).run(duration)
