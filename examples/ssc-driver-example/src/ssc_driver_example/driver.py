"""The ``ascii_tcp`` driver: one TCP connection per sensor, one ``READ`` per poll.

I/O only. The agent's scheduler decides when to poll, retries a failed device with backoff and
logs it going down and coming back; this driver raises and lets it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from importlib.resources import files

import structlog
from agent.driver import DeviceConfig, DriverContext, DriverSpec, PointInfo, expect_config
from agent.errors import DeviceProtocolError, DeviceUnavailable
from agent.readings import PointValue, Quality

from ssc_driver_example import __version__
from ssc_driver_example.config import AsciiPoint, AsciiTcpDeviceConfig
from ssc_driver_example.protocol import MAX_LINE_BYTES, REQUEST, AnswerError, Value, parse_answer

__all__ = ["SPEC", "AsciiTcpDriver", "create_driver", "point_value"]

log = structlog.get_logger()

SAMPLE_TOML = files("ssc_driver_example").joinpath("sample.toml").read_text(encoding="utf-8")


def point_value(point: AsciiPoint, values: dict[str, Value]) -> PointValue:
    """The reading of ``point`` from a parsed answer, with its quality code."""
    key = point.answer_key
    if key not in values:
        return PointValue(point.name, None, Quality.PROTOCOL_ERROR)  # sensor did not send it
    raw = values[key]
    if raw is None:
        return PointValue(point.name, None, Quality.OUT_OF_RANGE)  # sensor has no value now
    # 10132 × 0.1 is 1013.2000000000001 in binary floats: keep the digits the sensor meant.
    value: int | float = raw if point.scale == 1.0 else float(f"{raw * point.scale:.12g}")
    low, high = point.valid_min, point.valid_max
    if (low is not None and value < low) or (high is not None and value > high):
        return PointValue(point.name, None, Quality.OUT_OF_RANGE)
    return PointValue(point.name, value)


class AsciiTcpDriver:
    """Reads one sensor: ``READ`` → one checksummed answer line → one value per point."""

    # driver contract: one short exchange, so the scheduler's plain hang guard covers a poll
    max_poll_seconds: float | None = None

    def __init__(self, config: AsciiTcpDeviceConfig) -> None:
        self._config = config
        self._where = f"{config.name} ({config.endpoint})"
        self._timeout = config.timeout_seconds
        self._points = [PointInfo(p.name, p.unit) for p in config.points]
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._log = log.bind(device=config.name, endpoint=config.endpoint)

    @property
    def points(self) -> Sequence[PointInfo]:
        """The configured points, in order."""
        return self._points

    async def connect(self) -> None:
        """Open the TCP connection; DeviceUnavailable when the sensor cannot be reached."""
        host, port = self._config.host_port
        try:
            async with asyncio.timeout(self._timeout):
                self._stream = await asyncio.open_connection(host, port, limit=MAX_LINE_BYTES)
        except TimeoutError:
            raise DeviceUnavailable(
                f"{self._where}: no connection within {self._timeout:g} s: check the address "
                "and the network"
            ) from None
        except OSError as exc:
            raise DeviceUnavailable(
                f"{self._where}: cannot connect: {exc.strerror or exc}: check that the sensor "
                f"is powered and listens on port {port}"
            ) from exc
        self._log.debug("ascii_tcp_connected")

    async def read(self) -> Sequence[PointValue]:
        """One value per point; raises DeviceUnavailable (no answer) or DeviceProtocolError."""
        if self._stream is None:
            await self.connect()  # the previous read dropped a desynchronised connection
        assert self._stream is not None
        reader, writer = self._stream
        try:
            async with asyncio.timeout(self._timeout):
                writer.write(REQUEST)
                await writer.drain()
                line = await reader.readuntil(b"\n")
        except TimeoutError:
            # A late answer would be taken for the next poll's: start over on a new connection.
            await self.close()
            raise DeviceUnavailable(
                f"{self._where}: no answer within {self._timeout:g} s: check that the sensor "
                "is powered; raise timeout if it is slow"
            ) from None
        except asyncio.IncompleteReadError:
            await self.close()
            raise DeviceUnavailable(
                f"{self._where}: the sensor closed the connection (restarting, or another "
                "client took its only connection)"
            ) from None
        except asyncio.LimitOverrunError:
            await self.close()
            raise AnswerError(
                f"{self._where}: more than {MAX_LINE_BYTES} bytes without a line end: is this "
                "an ascii_tcp sensor?"
            ) from None
        except OSError as exc:
            await self.close()
            raise DeviceUnavailable(
                f"{self._where}: connection lost: {exc.strerror or exc}"
            ) from exc
        try:
            values = parse_answer(line)
        except DeviceProtocolError as exc:
            raise type(exc)(f"{self._where}: {exc}") from exc
        return [point_value(p, values) for p in self._config.points]

    async def close(self) -> None:
        """Close the connection if open; safe to call any time."""
        if self._stream is None:
            return
        _, writer = self._stream
        self._stream = None
        writer.close()
        with contextlib.suppress(OSError):  # the peer is gone already: closed is what we want
            await writer.wait_closed()


def create_driver(config: DeviceConfig, context: DriverContext) -> AsciiTcpDriver:
    """Build the driver for a validated ``ascii_tcp`` device (it shares nothing)."""
    del context  # one connection per sensor: nothing to share between devices
    return AsciiTcpDriver(expect_config(config, AsciiTcpDeviceConfig))


SPEC = DriverSpec(
    name="ascii_tcp",
    version=__version__,
    description="ASCII line-protocol sensors over TCP (example third-party driver)",
    config_model=AsciiTcpDeviceConfig,
    create=create_driver,
    sample_toml=SAMPLE_TOML,
)
