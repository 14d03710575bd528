"""A broker link that drops every fraction of a second: the uplink logs a few changes, then one
uplink_flapping line, not a pair of lines per reconnect (agent.damper)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path

from structlog.testing import capture_logs

from agent.damper import FLAP_LIMIT
from agent.endpoints import parse_broker_url
from agent.gateway.store import BatchStore
from agent.gateway.uplink import Uplink
from agent.mqtt import MqttSettings
from tests.conftest import Mosquitto
from tests.waiting import wait_until_async

CUT_AFTER_SECONDS = 0.3


async def cutting_proxy(target_port: int, cuts: list[float]) -> asyncio.Server:
    """A TCP proxy to the broker that cuts every connection ``CUT_AFTER_SECONDS`` after it
    opened, like a flaky mobile link."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CUT_AFTER_SECONDS):
                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        cuts.append(time.monotonic())
        for w in (writer, up_writer):
            w.transport.abort()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_a_flapping_broker_link_is_logged_once_as_flapping(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    cuts: list[float] = []
    proxy = await cutting_proxy(mosquitto.port, cuts)
    port = proxy.sockets[0].getsockname()[1]
    settings = MqttSettings(address=parse_broker_url(f"mqtt://127.0.0.1:{port}"),
                            client_id="gw-flap", keepalive=2)
    store = BatchStore.open(tmp_path / "buffer.db")
    store.seal(lambda seq, ev: b"SSC1\x00x", created=1, n_readings=3, pending_upto=0)
    uplink = Uplink(settings, store, gw="gw-flap", boot=1, topic_prefix="ssc/v1",
                    max_inflight=4, wake=asyncio.Event(), clock=time.time,
                    reconnect_min=0.05, reconnect_max=0.1)
    with capture_logs() as logs:
        task = asyncio.create_task(uplink.run())
        try:
            # the input: at least 12 sessions cut, i.e. 24 changes of state
            await wait_until_async(lambda: uplink.stats.disconnects >= 12, 30)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            proxy.close()
            await proxy.wait_closed()
            store.close()
    assert uplink.stats.disconnects >= 12 and uplink.stats.connects >= 12, uplink.stats
    kinds = Counter(str(line["event"]) for line in logs if line["log_level"] != "debug")
    changes = kinds["uplink_down"] + kinds["uplink_restored"]
    assert changes == FLAP_LIMIT, kinds
    assert kinds["uplink_flapping"] == 1, kinds
    assert kinds["uplink_backlog"] <= 1, kinds  # not a line per reconnect
    flapping = next(line for line in logs if line["event"] == "uplink_flapping")
    assert flapping["broker"] == f"mqtt://127.0.0.1:{port}"
    assert flapping["changes"] == FLAP_LIMIT + 1
    # nothing else is logged per reconnect: every other info line is a one-off
    others = {k: n for k, n in kinds.items()
              if k not in {"uplink_down", "uplink_restored", "uplink_flapping"}}
    assert all(n <= 1 for n in others.values()), kinds
