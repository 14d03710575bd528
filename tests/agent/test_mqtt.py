"""agent.mqtt against a real mosquitto: the receiver's manual acknowledgement."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiomqtt

from agent.endpoints import parse_broker_url
from agent.mqtt import MqttSettings, manual_acks, new_client
from tests.conftest import Mosquitto

TOPIC = "ssc/v1/gw-ack/batch"
# Bounds a wait that the broker answers within milliseconds: a hang fails, it times nothing.
WAIT = 10.0


async def _next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(WAIT):
        async for message in client.messages:
            return message
    raise AssertionError("the message stream ended")


async def _publish(settings: MqttSettings, payload: bytes) -> None:
    """Publish at QoS 1 from another client; returns after the broker's PUBACK."""
    async with new_client(settings) as publisher:
        await publisher.publish(TOPIC, payload, qos=1)


async def test_an_unacknowledged_message_comes_again_an_acknowledged_one_does_not(
    mosquitto: Mosquitto,
) -> None:
    address = parse_broker_url(mosquitto.url)
    receiver = MqttSettings(address=address, client_id="rx-manual-ack")
    sender = MqttSettings(address=address, client_id="tx-manual-ack")

    def session() -> tuple[aiomqtt.Client, Callable[[aiomqtt.Message], None]]:
        # the same client id and clean_session off: every connection resumes one session
        client = new_client(receiver, clean_session=False)
        return client, manual_acks(client)

    client, _ = session()
    async with client:
        await client.subscribe(TOPIC, qos=1)
        await _publish(sender, b"first")
        got = await _next_message(client)
        assert (got.payload, got.qos) == (b"first", 1)
        # not acknowledged: the broker keeps it in flight for this session

    client, acknowledge = session()
    async with client:
        again = await _next_message(client)
        assert again.payload == b"first"
        acknowledge(again)
        # The broker handles one connection's packets in order: once this SUBACK is back,
        # it has handled the PUBACK sent before it.
        await client.subscribe(TOPIC, qos=1)

    client, acknowledge = session()
    async with client:
        await _publish(sender, b"second")
        after = await _next_message(client)
        # "first" was acknowledged: what comes now is the next message, not "first" again
        assert after.payload == b"second"
        acknowledge(after)
