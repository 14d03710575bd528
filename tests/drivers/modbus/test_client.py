"""The driver's own Modbus client (drivers/modbus/client.py) on a real loopback connection: a
late answer is never taken for the next request's, a cancelled request stays cancelled, and
``ssc-agent run`` with a Modbus device polls without importing pymodbus."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.modbus.client import ExchangeFailed, ModbusClient
from drivers.modbus.frames import read_request
from tests.conftest import free_port
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[3]


class SlowServer:
    """Modbus TCP: register A holds A; request number n (from 0) is answered after delays[n]."""

    def __init__(self, delays: dict[int, float]) -> None:
        self.delays = delays
        self.requests = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def _answer(self, writer: asyncio.StreamWriter, delay: float, frame: bytes) -> None:
        await asyncio.sleep(delay)
        writer.write(frame)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while header := await reader.readexactly(7):
                tid, _, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                _fc, address, count = struct.unpack(">BHH", pdu)
                data = b"".join(struct.pack(">H", address + i) for i in range(count))
                body = bytes([3, len(data)]) + data
                frame = struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
                task = asyncio.create_task(
                    self._answer(writer, self.delays.get(self.requests, 0.0), frame))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                self.requests += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def slow() -> AsyncIterator[tuple[SlowServer, ModbusClient]]:
    port = free_port()
    server = SlowServer({0: 0.3})
    listening = await asyncio.start_server(server.serve, "127.0.0.1", port)
    client = ModbusClient(rtu=False, host="127.0.0.1", port=port)
    await client.connect(1.0)
    yield server, client
    await client.close()
    listening.close()
    await listening.wait_closed()


async def test_a_late_answer_is_not_taken_for_the_next_requests(
    slow: tuple[SlowServer, ModbusClient],
) -> None:
    server, client = slow
    with pytest.raises(ExchangeFailed, match=r"no answer within 0\.1 s") as failed:
        await client.request(1, read_request(3, 100, 2), seconds=0.1)
    assert failed.value.heard == b""
    # The late answer (registers 100, 101) arrives while the client waits for this one.
    server.delays[1] = 0.35
    answer = await client.request(1, read_request(3, 200, 2), seconds=1.0)
    assert answer.registers == (200, 201)
    assert answer.transaction_id == client.sent_tid
    assert (await client.request(1, read_request(3, 7, 1), seconds=1.0)).registers == (7,)


async def test_a_cancelled_request_is_cancelled_and_the_client_goes_on(
    slow: tuple[SlowServer, ModbusClient],
) -> None:
    _server, client = slow
    task = asyncio.create_task(client.request(1, read_request(3, 100, 2), seconds=5.0))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    answer = await client.request(1, read_request(3, 300, 1), seconds=1.0)
    assert answer.registers == (300,)


async def test_a_refused_connection_raises_oserror() -> None:
    client = ModbusClient(rtu=False, host="127.0.0.1", port=free_port())
    with pytest.raises(ConnectionRefusedError):
        await client.connect(1.0)
    assert not client.connected


# ``ssc-agent run`` until the driver has read the meter once, then its modules.
_RUN = """
import functools, json, os, signal, sys
import agent.cli
from drivers.modbus.driver import ModbusDriver

read = ModbusDriver.read

async def read_once(self):
    values = await read(self)
    if any(v.value is not None for v in values):
        print("MODULES " + json.dumps(sorted(m for m, v in sys.modules.items() if v)), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
    return values

ModbusDriver.read = read_once
sys.exit(agent.cli.main(["--log-level", "error", "run", "--config", sys.argv[1]]))
"""


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_agent_polls_modbus_without_importing_pymodbus(tmp_path: Path) -> None:
    meter, broker = free_port(), free_port()
    simulator = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "simulate", "--port", str(meter), "ssc-demo-meter"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: _listening(meter), 30)
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[gateway]\nid = "gw-mb"\ndata_dir = "{tmp_path / "data"}"\n'
            'shutdown_timeout = "1 s"\n\n'
            f'[uplink]\nbroker = "mqtt://127.0.0.1:{broker}"\n\n'
            f'[[devices]]\nname = "m1"\ndriver = "modbus"\n'
            f'endpoint = "tcp://127.0.0.1:{meter}"\nprofile = "ssc-demo-meter"\n'
            'interval = "200 ms"\n')
        done = subprocess.run([sys.executable, "-c", _RUN, str(config)], check=False,
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
    finally:
        simulator.terminate()
        simulator.wait(10)
    lines = [line for line in done.stdout.splitlines() if line.startswith("MODULES ")]
    assert len(lines) == 1, done.stdout[-3000:] + done.stderr[-3000:]
    modules = set(json.loads(lines[0].removeprefix("MODULES ")))
    assert "drivers.modbus.client" in modules
    assert sorted(m for m in modules if m.split(".")[0] == "pymodbus") == []
