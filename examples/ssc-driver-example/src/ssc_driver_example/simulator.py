"""A simulated ascii_tcp sensor: a TCP server that answers ``READ`` lines.

For tests, and to try the driver without hardware::

    python -m ssc_driver_example.simulator --port 7070

Each answer carries ``t``, ``rh``, ``p`` (random walks) and ``n``, the answer's number. A test
sets :attr:`SensorSimulator.fault` to make the sensor misbehave, and reads back
:attr:`SensorSimulator.served` to compare what the agent stored with what was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
from collections.abc import Callable
from enum import StrEnum

import structlog

from ssc_driver_example.protocol import REQUEST, Value, encode_answer, encode_error

log = structlog.get_logger()


class Fault(StrEnum):
    """How the simulated sensor misbehaves (NONE: it does not)."""

    NONE = "none"
    SILENT = "silent"  # reads the request, never answers
    GARBAGE = "garbage"  # answers a line that is no answer
    BAD_CHECKSUM = "bad_checksum"  # a valid line with one digit changed
    ERROR = "error"  # answers ERR
    HANG_UP = "hang_up"  # closes the connection instead of answering


def random_walk(seed: int | None = None) -> Callable[[int], dict[str, Value]]:
    """Plausible weather values that drift a little between answers."""
    rng = random.Random(seed)
    state = {"t": 21.5, "rh": 48.0, "p": 10132}

    def values(n: int) -> dict[str, Value]:
        state["t"] = round(min(35.0, max(-10.0, state["t"] + rng.uniform(-0.2, 0.2))), 1)
        state["rh"] = round(min(95.0, max(10.0, state["rh"] + rng.uniform(-0.5, 0.5))), 1)
        state["p"] = int(min(10500, max(9500, state["p"] + rng.randint(-2, 2))))
        return {**state, "n": n}

    return values


class SensorSimulator:
    """A TCP server that answers like an ascii_tcp sensor."""

    def __init__(self, values: Callable[[int], dict[str, Value]] | None = None) -> None:
        self._values = values or random_walk()
        self.fault = Fault.NONE
        self.served: list[dict[str, Value]] = []
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0: a free port, then in :attr:`port`)."""
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("ascii_tcp_simulator_listening", host=host, port=self.port)

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):
                writer.close()  # wait_closed() waits for the handlers, which then end
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while await reader.readline() == REQUEST:
                self.requests += 1
                answer = self._answer()
                if answer is None:
                    if self.fault is Fault.HANG_UP:
                        break
                    continue
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to answer
        finally:
            self._clients.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self) -> bytes | None:
        match self.fault:
            case Fault.SILENT | Fault.HANG_UP:
                return None
            case Fault.GARBAGE:
                return b"\x00\xffgarbage\r\n"
            case Fault.ERROR:
                return encode_error("warming up")
            case _:
                values = self._values(len(self.served) + 1)
                line = encode_answer(values)
                if self.fault is Fault.BAD_CHECKSUM:
                    # Change one value digit, keep the checksum: what line noise looks like.
                    return line.replace(b"n=", b"n=9", 1)
                self.served.append(values)
                return line


async def _main(host: str, port: int, duration: float | None) -> None:
    sim = SensorSimulator()
    await sim.start(host, port)
    try:
        if duration is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(duration)
    finally:
        await sim.stop()


def main() -> None:
    """``python -m ssc_driver_example.simulator``: serve a simulated sensor until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Serve a simulated ascii_tcp sensor.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7070, help="TCP port (default 7070)")
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.host, args.port, args.duration))


if __name__ == "__main__":
    main()
