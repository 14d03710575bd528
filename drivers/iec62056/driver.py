"""IEC 62056-21 mode C driver: one data readout per poll, OBIS codes mapped to points.

A poll: at ``initial_baudrate`` (300) send the sign-on, read the identification, acknowledge
with the offered baud rate (capped by ``max_baudrate``; 300 when ``baud_switch`` is off), switch
the port once the acknowledgement has left it, read ``STX data ETX BCC``, check the BCC, switch
back (the meter does so after a readout) and look up every configured OBIS code.

Received bytes always lose bit 7 (the protocol is 7-bit ASCII, so a parity bit that reaches us,
e.g. through a transparent device server, is dropped). ``framing = "8N1"`` does 7E1 in software:
the port runs 8N1 and every byte sent carries its even-parity bit as bit 7 — for ptys (which
refuse 7E1) and adapters without 7-bit support. Real heads use the default 7E1.

Errors: no answer to the sign-on → DeviceUnavailable. A garbled identification, no or a cut
data block, or a wrong BCC → DeviceProtocolError (nothing usable). A code missing from the
readout, a value that is not a number, or a unit other than the configured one gives that
point PROTOCOL_ERROR; such a problem is logged when it appears and when it clears, never per
poll.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import structlog

from agent.driver import PointInfo
from agent.errors import DeviceProtocolError, DeviceUnavailable
from agent.readings import PointValue, Quality
from drivers.iec62056 import frames
from drivers.iec62056.config import Iec62056Config, ObisPoint
from drivers.serialdriver import SerialDriver, serial_driver_spec
from drivers.serialio import (
    PortGone,
    ReadTimeout,
    SerialLink,
    SerialSettings,
    parse_framing,
    strip_bit7,
)

__all__ = ["SPEC", "Iec62056Driver", "create_driver"]

log = structlog.get_logger()

SAMPLE_TOML = (Path(__file__).parent / "sample.toml").read_text(encoding="utf-8")


class Iec62056Driver(SerialDriver):
    """One meter behind one optical head (or serial port)."""

    def __init__(self, config: Iec62056Config) -> None:
        self._config = config
        self._where = f"{config.name} (iec62056 on {config.port})"
        bytesize, parity, stopbits = parse_framing(config.framing)
        settings = SerialSettings(
            config.port, config.initial_baudrate, bytesize, parity, stopbits
        )
        super().__init__(SerialLink(settings, name=self._where, receive_filter=strip_bit7))
        self._soft_parity = config.framing == "8N1"
        self._points = tuple(PointInfo(p.name, p.unit) for p in config.points)
        self._problems: dict[str, str] = {}
        self.identification: frames.Identification | None = None
        self._log = log.bind(device=config.name, port=config.port)

    @property
    def points(self) -> Sequence[PointInfo]:
        """The configured points, in config order."""
        return self._points

    @property
    def max_poll_seconds(self) -> float:
        """The longest a good readout may take (sign-on and identification, the baud switch,
        the data block): the scheduler's hang guard is never shorter than this."""
        return self._config.timeout.seconds + self._config.readout_timeout.seconds + 2.0

    # ------------------------------------------------------------------ exchange

    async def _write(self, data: bytes) -> None:
        await self._link.write(frames.add_even_parity(data) if self._soft_parity else data)

    def _chosen_baud(self, ident: frames.Identification) -> str:
        if not self._config.baud_switch:
            return frames.baud_code(self._config.initial_baudrate)
        cap = self._config.max_baudrate
        if cap is not None and ident.baudrate > cap:
            return frames.baud_code(cap)
        return ident.baud_code

    async def _identify(self, sign_on: bytes) -> frames.Identification:
        deadline = self._link.deadline(self._config.timeout.seconds)
        while True:
            line = await self._link.read_until(b"\r\n", deadline, limit=256)
            if line.endswith(sign_on):
                continue  # a head or converter that echoes what it sends
            return frames.parse_identification(line)

    async def _readout(self) -> str:
        link = self._link
        link.set_baudrate(self._config.initial_baudrate)
        link.discard()
        sign_on = frames.build_sign_on(self._config.address)
        await self._write(sign_on)
        try:
            ident = await self._identify(sign_on)
        except ReadTimeout as exc:
            if exc.silent:
                raise DeviceUnavailable(
                    f"{self._where}: no answer to the sign-on within "
                    f"{self._config.timeout.seconds:g} s: check that the optical head sits on "
                    "the meter's port, is powered, and that address and framing are right"
                ) from None
            raise frames.Iec62056FrameError(
                f"garbled answer to the sign-on ({exc.partial[:48]!r}): check the framing "
                f"({self._config.framing}) and the head's position"
            ) from None
        self.identification = ident
        chosen = self._chosen_baud(ident)
        await self._write(frames.build_ack(chosen))
        await link.drain()
        link.set_baudrate(frames.BAUD_RATES[chosen])
        scanner = frames.BlockScanner()
        try:
            return await link.read_frame(
                scanner, link.deadline(self._config.readout_timeout.seconds)
            )
        except ReadTimeout as exc:
            got = len(exc.partial)
            hint = (
                "the meter did not follow the baud switch: try baud_switch = false or a lower "
                "max_baudrate" if got == 0 and scanner.noise == 0
                else "the readout was cut off: check the head's position, or raise "
                "readout_timeout"
            )
            raise frames.Iec62056FrameError(
                f"no complete data block within {self._config.readout_timeout.seconds:g} s after "
                f"the acknowledgement at {frames.BAUD_RATES[chosen]} baud ({got} byte(s) "
                f"pending, {scanner.noise} skipped): {hint}"
            ) from None

    async def read(self) -> Sequence[PointValue]:
        """One readout: a value per configured OBIS code, in config order."""
        await self._link.open()
        try:
            text = await self._readout()
            datasets = frames.parse_data(text)
        except PortGone:
            await self._link.close()
            raise
        except frames.Iec62056FrameError as exc:
            raise frames.Iec62056FrameError(f"{self._where}: {exc}") from exc
        finally:
            if self._link.is_open:
                # The meter falls back to its initial rate after a readout or an error.
                with contextlib.suppress(DeviceUnavailable):
                    self._link.set_baudrate(self._config.initial_baudrate)
        return [self._value(point, datasets) for point in self._config.points]

    # ------------------------------------------------------------------ values

    def _value(self, point: ObisPoint, datasets: list[frames.DataSet]) -> PointValue:
        dataset = frames.find_dataset(datasets, point.obis)
        problem: str | None = None
        value: int | float | None = None
        if dataset is None:
            problem = f"OBIS code {point.obis} is not in the readout"
        else:
            try:
                raw = frames.parse_number(dataset.value)
            except DeviceProtocolError as exc:
                problem = f"OBIS code {point.obis}: {exc}"
            else:
                problem = self._unit_problem(point, dataset)
                if problem is None:
                    value = raw if point.scale == 1 else raw * point.scale
        self._note(point.name, problem)
        if problem is not None:
            return PointValue(point.name, None, Quality.PROTOCOL_ERROR)
        return PointValue(point.name, value, Quality.GOOD)

    @staticmethod
    def _unit_problem(point: ObisPoint, dataset: frames.DataSet) -> str | None:
        if point.unit is None or point.scale != 1 or dataset.unit is None:
            return None
        if dataset.unit.casefold() == point.unit.casefold():
            return None
        return (
            f"OBIS code {point.obis} comes in {dataset.unit!r}, configured unit {point.unit!r}: "
            "fix unit, or set scale to convert"
        )

    def _note(self, name: str, problem: str | None) -> None:
        """Log a point's problem when it appears or changes, and when it clears."""
        before = self._problems.get(name)
        if problem == before:
            return
        if problem is None:
            del self._problems[name]
            self._log.info("iec62056_point_recovered", point=name)
            return
        self._problems[name] = problem
        self._log.warning("iec62056_point_unreadable", point=name, problem=problem)


SPEC = serial_driver_spec(
    "iec62056",
    "IEC 62056-21 mode C meter readout (optical head), OBIS codes as points",
    Iec62056Config,
    Iec62056Driver,
    sample_toml=SAMPLE_TOML,
    simulator="drivers.iec62056.simulator",
)
create_driver = SPEC.create
"""Build the driver for a validated IEC 62056-21 device table."""
