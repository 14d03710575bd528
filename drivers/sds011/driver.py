"""Nova SDS011 driver: PM2.5 and PM10 over a UART, query or active reporting, duty cycle.

Per poll (see ``duty.py``): wake the sensor when its sleep is over (and, after a (re)open, set
its reporting mode), read one data frame, and put it to sleep when its work phase is over.
Query mode sends the query command and takes the ``AA C0`` answer; active mode drops what was
buffered and takes the next streamed frame, resynchronising on ``AA C0`` past noise and false
headers. Warm-up readings come back STALE (values kept, so they can be inspected); polls while
the sensor sleeps do no I/O and repeat the last value as STALE.

Errors: no byte at all within ``timeout`` → DeviceUnavailable; a partial, garbled or
wrong-checksum answer → DeviceProtocolError (nothing in it is usable: the scheduler records
PROTOCOL_ERROR for both points and logs once). The next poll starts from a clean buffer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from agent.driver import PointInfo
from agent.errors import DeviceProtocolError, DeviceUnavailable
from agent.readings import PointValue, Quality
from drivers.sds011 import frames
from drivers.sds011.config import Sds011Config
from drivers.sds011.duty import Action, DutyCycle
from drivers.serialdriver import SerialDriver, read_timeout_error, serial_driver_spec
from drivers.serialio import PortGone, ReadTimeout, SerialLink, SerialSettings

__all__ = ["POINTS", "SPEC", "Sds011Driver", "create_driver"]

log = structlog.get_logger()

SAMPLE_TOML = (Path(__file__).parent / "sample.toml").read_text(encoding="utf-8")

POINTS = (PointInfo("pm2_5", "µg/m³"), PointInfo("pm10", "µg/m³"))


class Sds011Driver(SerialDriver):
    """One SDS011 on its own serial port."""

    # driver contract: a frame a second, so the scheduler's plain hang guard covers a poll
    max_poll_seconds: float | None = None

    def __init__(
        self, config: Sds011Config, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._clock = clock
        self._id = config.device_id_value
        self._timeout = config.timeout.seconds
        self._where = f"{config.name} (sds011 on {config.port})"
        super().__init__(SerialLink(SerialSettings(config.port, config.baudrate), name=self._where))
        duty = config.duty
        self._duty = DutyCycle(
            config.warmup.seconds,
            duty.work.seconds if duty else None,
            duty.sleep.seconds if duty else None,
        )
        self._mode_set = False
        self._last: tuple[float, float] | None = None
        self._log = log.bind(device=config.name, port=config.port)

    @property
    def points(self) -> Sequence[PointInfo]:
        """PM2.5 and PM10, µg/m³."""
        return POINTS

    @property
    def duty(self) -> DutyCycle:
        """The sleep/work state machine."""
        return self._duty

    def _port_opened(self) -> None:
        self._mode_set = False
        self._duty.reset()

    # ------------------------------------------------------------------ exchanges

    def _check_id(self, reply: frames.Reply) -> None:
        if self._id not in (frames.ANY_ID, reply.device_id):
            raise frames.Sds011FrameError(
                f"answer from sensor {reply.device_id:04X}, configured "
                f"device_id {self._id:04X}: fix device_id (or write 'any')"
            )

    async def _reply(self, command: int, deadline: float) -> frames.Reply:
        """The next good ``AA <command>`` reply; a rejected candidate is the reason on timeout."""
        scanner = frames.ReplyScanner(command)
        try:
            return await self._link.read_frame(scanner, deadline)
        except ReadTimeout:
            if scanner.rejected is not None:
                raise frames.Sds011FrameError(
                    f"no good reply within {self._timeout:g} s; last candidate: "
                    f"{scanner.rejected}"
                ) from None
            raise

    async def _setting(self, command: bytes, what: str) -> None:
        """Send a setting command and wait for its ``AA C5`` echo."""
        self._link.discard()
        await self._link.write(command)
        deadline = self._link.deadline(self._timeout)
        while True:
            reply = await self._reply(frames.SETTING_REPLY, deadline)
            if reply.data[0] == command[2]:  # the echo of this command, not an older one
                break
        self._check_id(reply)
        if reply.data[2] != command[4]:
            raise frames.Sds011FrameError(
                f"the sensor did not take the {what} command (answered "
                f"{reply.data[2]:02X}, sent {command[4]:02X})"
            )

    async def _measure(self) -> frames.DataFrame:
        self._link.discard()
        if self._config.mode == "query":
            await self._link.write(frames.query_data(self._id))
        reply = await self._reply(frames.DATA_REPLY, self._link.deadline(self._timeout))
        self._check_id(reply)
        return frames.data_from_reply(reply)

    def _failed(self, exc: ReadTimeout, what: str) -> DeviceUnavailable | DeviceProtocolError:
        return read_timeout_error(
            self._where,
            self._timeout,
            what,
            exc,
            check="check the wiring (sensor TX → adapter RX, RX → TX), the 5 V supply and the "
            "baud rate",
            shown=24,
        )

    # ------------------------------------------------------------------ read

    def _values(self, pm: tuple[float, float] | None, quality: Quality) -> list[PointValue]:
        if pm is None:
            return [PointValue(p.name, None, quality) for p in POINTS]
        return [PointValue("pm2_5", pm[0], quality), PointValue("pm10", pm[1], quality)]

    async def read(self) -> Sequence[PointValue]:
        """PM2.5 and PM10 once: GOOD, or STALE while warming up or asleep."""
        await self._open()
        now = self._clock()
        step = self._duty.step(now)
        if step.action is Action.SKIP:
            return self._values(self._last, Quality.STALE)
        what = "the query command" if self._config.mode == "query" else "waiting for a frame"
        try:
            if step.action is Action.WAKE_AND_READ:
                what = "the work (wake) command"
                await self._setting(frames.set_working(True, self._id), "work")
                self._duty.woke(now)
                if not self._mode_set:
                    what = "the reporting-mode command"
                    await self._setting(
                        frames.set_reporting_mode(self._config.mode == "query", self._id),
                        "reporting-mode",
                    )
                    self._mode_set = True
                what = "the query command" if self._config.mode == "query" else "a data frame"
            frame = await self._measure()
        except ReadTimeout as exc:
            raise self._failed(exc, what) from None
        except PortGone:
            await self._link.close()
            raise
        except frames.Sds011FrameError as exc:
            raise frames.Sds011FrameError(f"{self._where}: {exc}") from exc
        self._last = (frame.pm2_5, frame.pm10)
        if step.sleep_after:
            await self._sleep_sensor()
        return self._values(self._last, step.quality)

    async def _sleep_sensor(self) -> None:
        """End the work phase; a failure only delays it to the next poll."""
        try:
            await self._setting(frames.set_working(False, self._id), "sleep")
        except (ReadTimeout, DeviceProtocolError) as exc:
            self._log.debug("sds011_sleep_not_acknowledged", error=str(exc))
            return
        except PortGone:
            await self._link.close()
            return
        self._duty.slept(self._clock())


SPEC = serial_driver_spec(
    "sds011",
    "Nova SDS011 particulate sensor (PM2.5, PM10) over a UART",
    Sds011Config,
    Sds011Driver,
    sample_toml=SAMPLE_TOML,
    simulator="drivers.sds011.simulator",
)
create_driver = SPEC.create
"""Build the driver for a validated SDS011 device table."""
