"""deploy/mosquitto-receiver.conf and deploy/mosquitto-ssc.acl, as shipped, on a real mosquitto.

Only ports and file locations are adapted (free loopback ports, a temp dir); the ACL file is
used unchanged. Gateway B's credentials must not get B into gateway A's data: a publish into
A's topics never reaches the receiver (mosquitto drops it silently for MQTT 3.1.1 and answers
"not authorized" for MQTT 5), a subscription to ``#`` gets nothing, and A's batches arrive.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.endpoints import parse_broker_url
from agent.platform.receiver import ReceiverSettings, ReceiverStats, run_receiver
from agent.platform.sink import SqliteSink
from agent.wire import Batch, HealthSummary, Series, encode_batch, encode_health
from tests.conftest import Mosquitto, free_port
from tests.waiting import wait_until_async

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("mosquitto_factory")]

ROOT = Path(__file__).resolve().parents[2]
PASSWORDS = {"gw-a": "pw-a-3f9", "gw-b": "pw-b-77c", "ssc.receiver": "pw-rx-1d2",
             "ssc.platform": "pw-pf-5e1"}


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "30", "-subj", "/CN=test-ca", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, cn, ext in (("server", "localhost", ["-extfile", "san.ext"]),
                          ("gw-c", "gw-c", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "30", *ext, cwd=d)


def shipped_config(d: Path, password_port: int, cert_port: int) -> str:
    """deploy/mosquitto-receiver.conf with ports and paths moved into ``d``."""
    text = (ROOT / "deploy" / "mosquitto-receiver.conf").read_text()
    replacements = {
        "listener 8883": f"listener {password_port} 127.0.0.1",
        "listener 8884": f"listener {cert_port} 127.0.0.1",
        "/etc/mosquitto/ssc-passwd": str(d / "passwd"),
        "/etc/mosquitto/ssc-acl": str(ROOT / "deploy" / "mosquitto-ssc.acl"),
        "/etc/mosquitto/certs/": f"{d}/",
        "/var/lib/mosquitto/": f"{d}/",
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return ("user root\n" if os.geteuid() == 0 else "") + text


def batch(gw: str, seq: int, created: int) -> Batch:
    return Batch(gw, 1, seq, created, (Series("m1", "v", "V", created - 1000, (0,), (230.0,),
                                              (0,)),))


class Client:
    def __init__(self, d: Path, port: int, user: str | None = None) -> None:
        self.args = ["-h", "127.0.0.1", "-p", str(port), "--cafile", str(d / "ca.crt")]
        if user is None:
            self.args += ["--cert", str(d / "gw-c.crt"), "--key", str(d / "gw-c.key")]
        else:
            (d / f"{user}.pw").write_text(PASSWORDS[user])
            self.args += ["-u", user, "-P", PASSWORDS[user]]
        self.d = d

    async def publish(self, topic: str, payload: bytes, *, v5: bool = False,
                      retain: bool = False) -> str:
        """Publish at QoS 1 with mosquitto_pub; returns what it printed."""
        path = self.d / "payload.bin"
        path.write_bytes(payload)
        proc = await asyncio.create_subprocess_exec(
            "mosquitto_pub", *self.args, "-t", topic, "-q", "1", "-f", str(path),
            *(["-V", "mqttv5"] if v5 else []), *(["-r"] if retain else []),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out
        return out.decode()


async def test_a_gateway_can_write_only_its_own_topics_and_read_nothing(tmp_path: Path) -> None:
    d = tmp_path / "broker"
    d.mkdir()
    make_certs(d)
    first = True
    for user, password in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", *(["-c"] if first else []), "-b", str(d / "passwd"),
                        user, password], check=True, capture_output=True)
        first = False
    port, cert_port = free_port(), free_port()
    broker = Mosquitto(d, port)
    broker.conf_path.write_text(shipped_config(d, port, cert_port))
    broker.start()
    sub = None
    try:
        a, b, c = Client(d, port, "gw-a"), Client(d, port, "gw-b"), Client(d, cert_port)
        rx = Client(d, port, "ssc.receiver")
        # B listens to everything it can.
        sub_out = (d / "b-sub.txt").open("wb")
        sub = subprocess.Popen(["mosquitto_sub", *b.args, "-t", "#", "-v", "-q", "1"],
                               stdout=sub_out, stderr=subprocess.STDOUT)
        settings = ReceiverSettings(
            broker=parse_broker_url(f"mqtts://127.0.0.1:{port}"),
            sink_url=f"sqlite:///{tmp_path}/r.db", username="ssc.receiver",
            password_file=d / "ssc.receiver.pw", ca_file=d / "ca.crt", client_id="rx-acl")
        stats = ReceiverStats()
        stop = asyncio.Event()
        with capture_logs() as logs:
            task = asyncio.create_task(run_receiver(settings, stop=stop, stats=stats))
            assert await wait_until_async(
                lambda: any(e["event"] == "mqtt_subscribed" for e in logs), 20)
        try:
            # B forges A's seq 1 (3.1.1: accepted and dropped silently) and an absurd seq
            # (MQTT 5: the broker says so); the receiver account cannot publish at all.
            assert await b.publish("ssc/v1/gw-a/batch", encode_batch(batch("gw-a", 1, 111))) == ""
            refused = await b.publish("ssc/v1/gw-a/batch",
                                      encode_batch(batch("gw-a", 2**63 - 1, 111)), v5=True)
            assert "Not authorized" in refused
            assert "Not authorized" in await rx.publish(
                "ssc/v1/gw-a/status", b'{"state":"online"}', v5=True)
            assert "Not authorized" in await c.publish(
                "ssc/v1/gw-a/batch", encode_batch(batch("gw-a", 3, 111)), v5=True)
            # What each may do arrives.
            await a.publish("ssc/v1/gw-a/batch", encode_batch(batch("gw-a", 1, 1_000)))
            await b.publish("ssc/v1/gw-b/batch", encode_batch(batch("gw-b", 1, 2_000)))
            await c.publish("ssc/v1/gw-c/batch", encode_batch(batch("gw-c", 1, 3_000)))
            await a.publish("ssc/v1/gw-a/batch", encode_batch(batch("gw-a", 2, 4_000)))
            assert await wait_until_async(lambda: stats.batches == 4, 20)
            assert stats.rejected == stats.duplicates == 0
            sink = SqliteSink.open(tmp_path / "r.db")
            assert sink.seqs("gw-a") == [1, 2]
            assert sink.seqs("gw-b") == sink.seqs("gw-c") == [1]
            assert sink.rejected_totals() == {}
            sink.close()
            with sqlite3.connect(tmp_path / "r.db") as conn:
                created = conn.execute(
                    "SELECT seq, created FROM batches WHERE gw = 'gw-a' ORDER BY seq").fetchall()
            assert created == [(1, 1_000), (2, 4_000)]  # A's own, not B's forgery
            # Remote configuration: only the platform account pushes configs, only the gateway
            # they are for reads them (B's '#' below stays empty), each writes its own report.
            pf = Client(d, port, "ssc.platform")
            assert await pf.publish("ssc/v1/gw-a/config/set", b"signed", retain=True) == ""
            for forger in (a, b):
                assert "Not authorized" in await forger.publish(
                    "ssc/v1/gw-a/config/set", b"forged", v5=True, retain=True)
            got = subprocess.run(["mosquitto_sub", *a.args, "-t", "ssc/v1/gw-a/config/set",
                                  "-C", "1", "-W", "5"], capture_output=True, check=False)
            assert got.stdout == b"signed\n"
            assert await a.publish("ssc/v1/gw-a/config/state", b"{}", v5=True) == ""
            # A's health summary reaches the receiver (it may read every gateway's), stored
            health = encode_health(HealthSummary(
                gw="gw-a", boot=1, t=5_000, version="0.9", devices_up=1, devices_down=0,
                devices_pending=0, buffer_state="ok", buffer_batches=0, buffer_readings=0,
                buffer_bytes=0, buffer_oldest_age_s=None, buffer_dropped_readings=0,
                uplink_in_flight=0, uplink_last_ack_age_s=None, kpis_open=0, kpis_closed=0))
            assert await a.publish("ssc/v1/gw-a/health", health, v5=True) == ""
            assert await wait_until_async(lambda: stats.health_summaries == 1, 20)
            assert "Not authorized" in await b.publish("ssc/v1/gw-a/health", b"{}", v5=True)
            assert "Not authorized" in await b.publish("ssc/v1/gw-a/config/state", b"{}",
                                                       v5=True)
        finally:
            stop.set()
            async with asyncio.timeout(10):
                await task
        # The receiver got everything through the same broker; B's '#' got nothing of it.
        assert (d / "b-sub.txt").read_bytes() == b""
    finally:
        if sub is not None:
            sub.terminate()
            sub.wait()
        broker.terminate()
