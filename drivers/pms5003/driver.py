"""Plantower PMS5003-family driver: the values of a data frame over a UART.

``model`` selects what the frame's words mean (``frames.MODELS``): a PMS5003 / PMS7003 /
PMSA003 sends 12 values; a PMS5003T sends temperature and humidity in the words of the two
largest particle counts; a PMS5003S adds formaldehyde; a PMS5003ST sends a longer frame with
formaldehyde, temperature and humidity after the 12 values.

Passive mode (default): after a (re)open the driver sends the passive-mode command, then at
every poll drops whatever was buffered, sends the read command and takes the data frame. Active
mode: it drops the buffer and takes the next streamed frame (about one a second), sliding past
noise and false ``42 4D`` headers until the frame's length and sum check out.

Errors: no byte within ``timeout`` → DeviceUnavailable; a partial, garbled or wrong-sum frame →
DeviceProtocolError (nothing in it is usable; the scheduler records PROTOCOL_ERROR for every
point and logs once). The mode command is sent again after any failure: a replugged sensor
powers up in active mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.driver import PointInfo
from agent.readings import PointValue, Quality
from drivers.pms5003 import frames
from drivers.pms5003.config import Pms5003Config
from drivers.serialdriver import SerialDriver, read_timeout_error, serial_driver_spec
from drivers.serialio import PortGone, ReadTimeout, SerialLink, SerialSettings

__all__ = ["SPEC", "UNITS", "Pms5003Driver", "create_driver"]

SAMPLE_TOML = (Path(__file__).parent / "sample.toml").read_text(encoding="utf-8")

UNITS = {f.name: f.unit for f in frames.MODELS["pms5003"].fields}
"""Units of the PMS5003's values (every model: ``frames.MODELS[...].fields``)."""


class Pms5003Driver(SerialDriver):
    """One PMS5003-family sensor on its own serial port."""

    # driver contract: a frame a second or less, so the scheduler's plain hang guard covers a poll
    max_poll_seconds: float | None = None

    def __init__(self, config: Pms5003Config) -> None:
        self._config = config
        self._model = config.sensor
        self._timeout = config.timeout.seconds
        self._passive = config.mode == "passive"
        self._where = f"{config.name} ({config.model} on {config.port})"
        super().__init__(SerialLink(SerialSettings(config.port, config.baudrate), name=self._where))
        self._points = tuple(
            PointInfo(name, self._model.field(name).unit) for name in config.point_names
        )
        self._mode_set = False

    @property
    def points(self) -> Sequence[PointInfo]:
        """The configured values, in config order."""
        return self._points

    def _port_opened(self) -> None:
        self._mode_set = False  # a replugged sensor powers up in active mode

    async def _frame(self, scanner: frames.FrameScanner) -> frames.DataFrame:
        if not self._mode_set:
            await self._link.write(frames.PASSIVE if self._passive else frames.ACTIVE)
            self._mode_set = True
        self._link.discard()
        if self._passive:
            await self._link.write(frames.READ)
        return await self._link.read_frame(scanner, self._link.deadline(self._timeout))

    async def read(self) -> Sequence[PointValue]:
        """Every configured value once, from one data frame."""
        await self._open()
        what = "the read command" if self._passive else "a data frame"
        scanner = frames.FrameScanner(self._model.data_length)
        try:
            frame = await self._frame(scanner)
        except ReadTimeout as exc:
            self._mode_set = False
            if scanner.rejected is not None:
                raise frames.Pms5003FrameError(
                    f"{self._where}: no good frame within {self._timeout:g} s; last candidate: "
                    f"{scanner.rejected}"
                ) from None
            raise read_timeout_error(
                self._where,
                self._timeout,
                what,
                exc,
                check="check the wiring (sensor TX → adapter RX, RX → TX), the 5 V supply, and "
                "that SET is high (not asleep)",
                shown=32,
            ) from None
        except PortGone:
            await self._link.close()
            raise
        values = frames.decode(frame, self._model)
        return [PointValue(p.name, values[p.name], Quality.GOOD) for p in self._points]


SPEC = serial_driver_spec(
    "pms5003",
    "Plantower PMS5003-family particulate sensor (PM1/2.5/10, counts; T/ST models: "
    "temperature, humidity, formaldehyde) over a UART",
    Pms5003Config,
    Pms5003Driver,
    sample_toml=SAMPLE_TOML,
    simulator="drivers.pms5003.simulator",
)
create_driver = SPEC.create
"""Build the driver for a validated PMS5003 device table."""
