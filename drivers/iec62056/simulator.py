"""A simulated IEC 62056-21 mode C meter on a serial path, for tests and
``ssc-agent simulate iec62056 --serial PATH``.

It waits at 300 baud for a sign-on (its own address or none), answers with its identification
after the reaction time, takes the acknowledgement, switches to the baud rate acknowledged,
sends the data block, and falls back to 300 baud. Without an acknowledgement within 1.5 s it
starts over, as a meter does. It talks 7-bit ASCII at 8N1 (a pty refuses 7E1), reading any
bit 7 as noise; with ``parity_bit=True`` it is a strict 7E1 meter seen through an 8N1 port: it
sends every byte with its even-parity bit as bit 7 and drops received bytes whose parity is
wrong, as a 7E1 UART does.
:meth:`Iec62056Simulator.inject` queues faults for the next readouts.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from enum import Enum

import structlog

from drivers.iec62056 import frames
from drivers.serialio import ReadTimeout, SerialLink, SerialSettings, strip_bit7
from drivers.serialsim import serve_port_for

__all__ = ["Fault", "Iec62056Simulator", "simulate"]

log = structlog.get_logger()

ACK_WAIT_SECONDS = 1.5
NOISE = b"\x00\x7f\x02#~\x13"  # a false STX among it


class Fault(Enum):
    """What to do to the next readout."""

    NOISE = "noise"  # junk (with a false STX) before the data block
    PARTIAL = "partial"  # the block cut off before its end
    BAD_BCC = "bad_bcc"
    SILENCE = "silence"  # no answer to the sign-on
    GARBLED_ID = "garbled_id"  # an identification that is not one


DEFAULT_READINGS: dict[str, tuple[str, str | None]] = {
    "0.0.0": ("12345678", None),
    "1.8.0": ("001234.567", "kWh"),
    "2.8.0": ("000012.345", "kWh"),
    "32.7.0": ("230.1", "V"),
    "31.7.0": ("004.12", "A"),
    "16.7.0": ("00.948", "kW"),
}


class Iec62056Simulator:
    """One simulated meter; ``readings`` maps OBIS codes to ``(value text, unit)``."""

    def __init__(
        self,
        port: str,
        *,
        readings: dict[str, tuple[str, str | None]] | None = None,
        manufacturer: str = "ISK",
        baud: str = "5",
        ident: str = "\\2MT382-1000",
        address: str = "",
        reaction: float = 0.2,
        parity_bit: bool = False,
    ) -> None:
        self.link = SerialLink(
            SerialSettings(port, 300),
            name=f"iec62056 simulator ({port})",
            receive_filter=frames.strip_even_parity if parity_bit else strip_bit7,
        )
        self.fixed = readings is not None
        self.readings = dict(readings if readings is not None else DEFAULT_READINGS)
        # What the meter answers a sign-on with; the same every time.
        self.identification = frames.build_identification(manufacturer, baud, ident)
        self.address = address
        self.reaction = reaction
        self.parity_bit = parity_bit
        self.faults: deque[Fault] = deque()
        self.baudrates: list[int] = []  # every rate the simulator's port was set to
        self.readouts = 0
        self._started = time.monotonic()

    def inject(self, *faults: Fault) -> None:
        """Apply these faults to the next readouts, one each."""
        self.faults.extend(faults)

    def _set_baud(self, link: SerialLink, rate: int) -> None:
        link.set_baudrate(rate)
        self.baudrates.append(rate)

    async def _send(self, link: SerialLink, data: bytes) -> None:
        await link.write(frames.add_even_parity(data) if self.parity_bit else data)
        await link.drain()

    def _text(self) -> str:
        if not self.fixed:
            # A live meter: energy counts up at ~1 kW, the rest as configured.
            hours = (time.monotonic() - self._started) / 3600
            self.readings["1.8.0"] = (f"{1234.567 + hours:010.3f}", "kWh")
        lines = [
            f"{code}({value}*{unit})" if unit is not None else f"{code}({value})"
            for code, (value, unit) in self.readings.items()
        ]
        return "\r\n".join([*lines, "!"]) + "\r\n"

    async def _session(self, link: SerialLink) -> None:
        request: bytes | None = None
        self._set_baud(link, 300)
        while True:
            if request is None:
                request = await link.read_until(b"!\r\n", link.deadline(3600.0), limit=1 << 16)
            address = frames.parse_sign_on(request)
            request = None
            if address is None or address not in ("", self.address):
                continue
            fault = self.faults.popleft() if self.faults else None
            if fault is Fault.SILENCE:
                continue
            await asyncio.sleep(self.reaction)
            await self._send(link, b"/?\x7f\x7f garbage\r\n" if fault is Fault.GARBLED_ID
                             else self.identification)
            try:
                ack = await link.read_until(b"\r\n", link.deadline(ACK_WAIT_SECONDS), limit=64)
                baud, mode = frames.parse_ack(ack)
            except ReadTimeout:
                continue  # no acknowledgement: back to waiting for a sign-on
            except frames.Iec62056FrameError:
                if frames.parse_sign_on(ack) is not None:
                    request = ack  # a new sign-on instead: start over with it
                continue
            if mode != "0":
                continue  # programming mode is not simulated
            self._set_baud(link, frames.BAUD_RATES[baud])
            await asyncio.sleep(self.reaction)
            block = frames.build_data_block(self._text())
            if fault is Fault.NOISE:
                block = NOISE + block
            elif fault is Fault.PARTIAL:
                block = block[: len(block) // 2]
            elif fault is Fault.BAD_BCC:
                block = block[:-1] + bytes([block[-1] ^ 0x01])
            await self._send(link, block)
            self.readouts += 1
            self._set_baud(link, 300)  # a readout done, the meter waits for the next sign-on

    async def run(self, duration: float | None = None) -> None:
        """Serve until cancelled (or ``duration`` seconds), reopening the port if it vanishes."""
        log.info("simulator_serving", driver="iec62056", port=self.link.port,
                 identification=self.identification.decode("ascii").strip()[1:])
        await serve_port_for(self.link, self._session, duration)


async def simulate(serial_path: str, duration: float | None) -> None:
    """``ssc-agent simulate iec62056 --serial PATH``: a meter with a running energy counter."""
    await Iec62056Simulator(serial_path).run(duration)
