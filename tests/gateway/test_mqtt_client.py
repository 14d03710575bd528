"""agent/gateway/mqtt_client.py against a real mosquitto (and against things that are not a
broker): PUBACKs, retained messages, subscriptions, refusals, a broker killed or frozen under
a publish, garbage on the port; and `ssc-agent run` without aiomqtt or paho."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest

from agent.endpoints import parse_broker_url
from agent.gateway.mqtt_client import Client, ConnectRefused, MqttError, uplink_client
from agent.mqtt import MqttSettings, describe_mqtt_error, read_retained
from agent.mqtt_packets import SUBACK_FAILURE, Decoder, SubAck, Will, encode
from tests.conftest import Mosquitto
from tests.gateway.test_uplink import agent_config, retained_status
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
# Bounds waits the broker answers within milliseconds: a hang fails, nothing is timed.
WAIT = 10.0


def client_for(broker: Mosquitto, client_id: str, **kwargs: object) -> Client:
    return Client("127.0.0.1", broker.port, client_id=client_id, timeout=WAIT,
                  **kwargs)  # type: ignore[arg-type]


async def test_publish_returns_on_puback_retained_stays_and_subscriptions_deliver(
        mosquitto: Mosquitto) -> None:
    settings = MqttSettings(parse_broker_url(mosquitto.url), "reader")
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as platform:
        await platform.subscribe("t/live", qos=1)
        async with client_for(mosquitto, "gw-pub", max_inflight=2) as client:
            # more publishes than the window: each waits for a place, none is lost
            await asyncio.gather(*(client.publish("t/live", f"m{i}".encode(), qos=1)
                                   for i in range(7)))
            await client.publish("t/state", b"kept", qos=1, retain=True)
            await client.publish("t/zero", b"q0", qos=0)
            got: list[bytes] = []
            async with asyncio.timeout(WAIT):
                async for message in platform.messages:
                    assert isinstance(message.payload, bytes)
                    got.append(message.payload)
                    if len(got) == 7:
                        break
        assert sorted(got) == sorted(f"m{i}".encode() for i in range(7))
    assert await read_retained(settings, "t/#", quiet=0.3, limit=WAIT) == [("t/state", b"kept")]

    async with client_for(mosquitto, "gw-sub") as client:
        assert await client.subscribe("cfg/set", qos=1) == (1,)
        assert await client.subscribe("t/state", qos=1) == (1,)  # retained: arrives at once
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as platform:
            await platform.publish("cfg/set", b"push", qos=1)
        incoming: list[tuple[str, bytes, bool]] = []
        async with asyncio.timeout(WAIT):
            async for pushed in client.incoming():
                incoming.append((pushed.topic, pushed.payload, pushed.retain))
                if len(incoming) == 2:
                    break
        assert sorted(incoming) == [("cfg/set", b"push", False), ("t/state", b"kept", True)]


async def test_a_bad_login_is_refused_and_named(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(tmp_path / "passwd"), "gw", "right"],
                   check=True, capture_output=True)
    broker = mosquitto_factory(f"password_file {tmp_path / 'passwd'}\n",
                               per_listener_settings=True)
    async with client_for(broker, "gw", username="gw", password="right") as client:
        await client.publish("ssc/ok", b"x", qos=1)
    with pytest.raises(ConnectRefused) as refused:
        async with client_for(broker, "gw", username="gw", password="wrong"):
            pass
    assert refused.value.return_code == 5
    assert "not authorised" in str(refused.value)
    assert "wrong" not in str(refused.value)
    settings = MqttSettings(parse_broker_url(broker.url), "gw", username="gw")
    assert describe_mqtt_error(refused.value, settings) == (
        "broker refused the login of user 'gw': check password_file")


async def _until_error(awaitable: Awaitable[object]) -> MqttError:
    try:
        async with asyncio.timeout(WAIT * 3):
            await awaitable
    except MqttError as exc:
        return exc
    raise AssertionError("no MqttError")


async def _next(messages: AsyncIterator[object]) -> object:
    return await anext(messages)


async def test_a_killed_broker_fails_pending_publishes_and_a_frozen_one_the_keepalive(
        mosquitto: Mosquitto) -> None:
    async with client_for(mosquitto, "gw-kill", keepalive=30) as client:
        await client.publish("t", b"before", qos=1)
        mosquitto.stop()  # frozen: the publish below stays in flight
        pending = asyncio.create_task(client.publish("t", b"in flight", qos=1, timeout=60))
        watcher = asyncio.create_task(_next(client.incoming()))
        await asyncio.sleep(0.2)
        assert not pending.done()
        mosquitto.kill()  # SIGKILL ends a stopped process too; it never answers
        # long before the publish's own 60 s: the lost connection fails both at once
        error = await _until_error(pending)
        assert "closed the connection" in str(error) or "reset" in str(error), error
        assert isinstance(await _until_error(watcher), MqttError)
        with pytest.raises(MqttError):
            await client.publish("t", b"after", qos=1)
    mosquitto.start()
    async with client_for(mosquitto, "gw-frozen", keepalive=1) as client:
        mosquitto.stop()
        try:
            error = await _until_error(_next(client.incoming()))
        finally:
            mosquitto.cont()
    assert "no PINGRESP within the keepalive of 1 s" in str(error)


class NotABroker:
    """Answers each packet it reads (in order) with the next of ``answers``' bytes."""

    def __init__(self, *answers: bytes) -> None:
        self.answers = answers
        self.handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        decoder = Decoder()
        replies = list(self.answers)
        with contextlib.suppress(OSError):
            while data := await reader.read(1024):  # until the client leaves
                for _ in decoder.feed(data):
                    if replies:
                        writer.write(replies.pop(0))
        writer.close()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[int]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        async with server:
            yield server.sockets[0].getsockname()[1]
            if self.handlers:  # they end when the client has gone
                await asyncio.wait(self.handlers, timeout=WAIT)


CONNACK_OK = b"\x20\x02\x00\x00"


@pytest.mark.parametrize(("answer", "error"), [
    (b"HTTP/1.1 400 Bad Request\r\n" + b"x" * 100,
     "malformed packet: packet type 4 with flags 0x8"),
    (b"\x30\xff\xff\xff\x7f", "announces 268435455 bytes, more than the 1048576 accepted"),
    (b"\x20\x02\x00\x03", "server unavailable"),
    (b"\xd0\x00", "with Empty, not a CONNACK"),
    (b"", "no CONNACK within 1 s"),
])
async def test_a_port_that_does_not_speak_mqtt_is_a_clear_error(answer: bytes,
                                                                error: str) -> None:
    async with NotABroker(answer).serving() as port:
        client = Client("127.0.0.1", port, client_id="gw-garbage", timeout=1.0)
        with pytest.raises(MqttError, match=error):
            async with client:
                pass


async def test_a_refused_subscription_is_0x80_and_garbage_later_ends_the_connection() -> None:
    # mosquitto grants what its ACL denies (and delivers nothing): other brokers answer 0x80
    suback = encode(SubAck(1, (SUBACK_FAILURE,)))
    broker = NotABroker(CONNACK_OK, suback + b"\xf0\x00")
    async with contextlib.AsyncExitStack() as stack:
        port = await stack.enter_async_context(broker.serving())
        client = await stack.enter_async_context(
            Client("127.0.0.1", port, client_id="gw-garbage", timeout=1.0))
        assert await client.subscribe("not/ours", qos=1) == (SUBACK_FAILURE,)
        error = await _until_error(_next(client.incoming()))
    assert "malformed packet: packet type 15" in str(error)


async def test_the_uplink_client_sends_the_will_a_sigkill_leaves(mosquitto: Mosquitto,
                                                                 tmp_path: Path) -> None:
    settings = MqttSettings(parse_broker_url(mosquitto.url), "reader", keepalive=5)
    script = (
        "import asyncio, sys\n"
        "from agent.endpoints import parse_broker_url\n"
        "from agent.gateway.mqtt_client import uplink_client\n"
        "from agent.mqtt import MqttSettings\n"
        "from agent.mqtt_packets import Will\n"
        "async def main():\n"
        f"    s = MqttSettings(parse_broker_url({mosquitto.url!r}), 'gw-will')\n"
        "    will = Will('gw-will/status', b'offline', 1, True)\n"
        "    async with uplink_client(s, will=will, max_inflight=2) as c:\n"
        "        await c.publish('gw-will/status', b'online', qos=1, retain=True)\n"
        "        print('up', flush=True)\n"
        "        await asyncio.sleep(60)\n"
        "asyncio.run(main())\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        retained = await read_retained(settings, "gw-will/#", quiet=0.3, limit=WAIT)
        assert retained == [("gw-will/status", b"online")]
    finally:
        proc.kill()
        proc.wait()

    async def offline() -> bool:
        got = await read_retained(settings, "gw-will/#", quiet=0.3, limit=WAIT)
        return got == [("gw-will/status", b"offline")]

    for _ in range(50):
        if await offline():
            break
    else:
        raise AssertionError("the will was not published")
    # a clean exit sends DISCONNECT: the broker keeps the will to itself
    will = Will("gw-clean/status", b"offline", 1, True)
    clean = replace(settings, client_id="gw-clean")
    async with uplink_client(clean, will=will, max_inflight=2) as client:
        await client.publish("gw-clean/status", b"online", qos=1, retain=True)
    assert await read_retained(settings, "gw-clean/#", quiet=0.3, limit=WAIT) == [
        ("gw-clean/status", b"online")]


def test_ssc_agent_run_imports_neither_aiomqtt_nor_paho(tmp_path: Path,
                                                        mosquitto: Mosquitto) -> None:
    config = agent_config(tmp_path, mosquitto)
    agent = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "agent.cli", "run",
                              "--config", str(config)], cwd=ROOT, stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True)
    try:  # online: it connected and published through its uplink
        assert wait_until(lambda: retained_status(mosquitto, "gw-st") == "online", 10)
    finally:
        os.kill(agent.pid, signal.SIGTERM)
        _, imports = agent.communicate(timeout=20)
    modules = {line.rsplit("|", 1)[-1].strip() for line in imports.splitlines()
               if line.startswith("import time:")}
    assert "agent.gateway.mqtt_client" in modules  # the list is the real one
    assert not {m for m in modules if m.split(".")[0] in ("aiomqtt", "paho")}, sorted(modules)
