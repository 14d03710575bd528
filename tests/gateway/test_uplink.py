"""The uplink against a real mosquitto: status birth and last will, TLS with a CA file, a
password from a file; errors that name the file and never show the secret."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.endpoints import parse_broker_url
from agent.gateway.store import BatchStore
from agent.gateway.uplink import Uplink
from agent.mqtt import MqttSettings, reconnect_delay
from agent.wire import BufferHealth, decode_status
from tests.conftest import Mosquitto, free_port
from tests.waiting import wait_until, wait_until_async

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-Pa55-word"


def retained_status(broker: Mosquitto, gw: str) -> str:
    done = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t",
         f"ssc/v1/{gw}/status", "-C", "1", "-W", "5"],
        capture_output=True, text=True, check=False, timeout=10,
    )
    assert done.returncode == 0, done.stderr
    return decode_status(done.stdout.strip()).state


def agent_config(tmp_path: Path, broker: Mosquitto) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[gateway]\nid = "gw-st"\ndata_dir = "{tmp_path / "data"}"\n'
        f'[uplink]\nbroker = "{broker.url}"\nkeepalive = "2 s"\n'
        f'[[devices]]\nname = "m"\ndriver = "modbus"\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
        'profile = "ssc-demo-meter"\n'
    )
    return path


def test_status_is_online_while_running_and_offline_after_sigkill_and_sigterm(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    config = agent_config(tmp_path, mosquitto)
    for stop_signal in (signal.SIGKILL, signal.SIGTERM):
        agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config",
                                  str(config)], cwd=ROOT, stderr=subprocess.DEVNULL)
        try:
            assert wait_until(lambda: retained_status(mosquitto, "gw-st") == "online", 10)
        finally:
            os.kill(agent.pid, stop_signal)
            agent.wait(20)
        # SIGKILL: the broker publishes the last will; SIGTERM: the agent says so itself.
        assert wait_until(lambda: retained_status(mosquitto, "gw-st") == "offline", 10), (
            stop_signal)


def retained_buffer(broker: Mosquitto, gw: str) -> BufferHealth | None:
    done = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t",
         f"ssc/v1/{gw}/status", "-C", "1", "-W", "5"],
        capture_output=True, text=True, check=False, timeout=10,
    )
    assert done.returncode == 0, done.stderr
    return decode_status(done.stdout.strip()).buffer


async def test_status_says_the_buffer_health_at_connect_and_again_when_it_changes(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    health = [BufferHealth("ok")]
    asked: list[BufferHealth] = []

    def current() -> BufferHealth:
        asked.append(health[0])
        return health[0]

    settings = MqttSettings(address=parse_broker_url(mosquitto.url), client_id="gw-bh")
    uplink = Uplink(settings, BatchStore.open(tmp_path / "buffer.db"), gw="gw-bh", boot=1,
                    topic_prefix="ssc/v1", max_inflight=4, wake=asyncio.Event(), clock=time.time,
                    buffer_health=current)

    async def retained() -> BufferHealth | None:
        return await asyncio.to_thread(retained_buffer, mosquitto, "gw-bh")

    async def eventually(want: BufferHealth) -> None:
        for _ in range(50):
            if await retained() == want:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"retained status never said {want}: {await retained()}")

    task = asyncio.create_task(uplink.run())
    try:
        await eventually(BufferHealth("ok"))
        health[0] = BufferHealth("unwritable", since=5, reason="database or disk is full",
                                 held_readings=7, dropped_readings=0)
        uplink.status_changed()
        await eventually(health[0])
        before = len(asked)
        await asyncio.sleep(0.5)  # the input: a while in which nothing changes
        assert len(asked) == before, "published only when told of a change"
        health[0] = BufferHealth("ok")
        uplink.status_changed()
        await eventually(BufferHealth("ok"))
        await uplink.say_offline()
        status = decode_status((await asyncio.to_thread(
            subprocess.run, ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(mosquitto.port),
                             "-t", "ssc/v1/gw-bh/status", "-C", "1", "-W", "5"],
            capture_output=True, text=True, check=False, timeout=10)).stdout.strip())
        assert (status.state, status.buffer) == ("offline", BufferHealth("ok"))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --------------------------------------------------------------------------- TLS and password


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_broker(tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> tuple[Mosquitto,
                                                                                  int, Path]:
    certs = tmp_path / "certs"
    certs.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "30", "-subj", "/CN=test-ca", cwd=certs)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=localhost", cwd=certs)
    (certs / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "30", "-extfile", "san.ext",
            cwd=certs)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out",
            "other-ca.crt", "-days", "30", "-subj", "/CN=other-ca", cwd=certs)
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(certs / "passwd"), "gw-017", PASSWORD],
                   check=True, capture_output=True)
    tls_port = free_port()
    broker = mosquitto_factory(
        f"listener {tls_port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {certs / 'passwd'}\ncafile {certs / 'ca.crt'}\n"
        f"certfile {certs / 'server.crt'}\nkeyfile {certs / 'server.key'}\n",
        per_listener_settings=True,
    )
    return broker, tls_port, certs


async def run_uplink_for(settings: MqttSettings, store: BatchStore, seconds: float) -> Uplink:
    uplink = Uplink(settings, store, gw="gw-017", boot=1, topic_prefix="ssc/v1", max_inflight=4,
                    wake=asyncio.Event(), clock=time.time)
    task = asyncio.create_task(uplink.run())
    await wait_until_async(lambda: not store.stats().batches, seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return uplink


def one_batch_store(tmp_path: Path) -> BatchStore:
    store = BatchStore.open(tmp_path / "buffer.db")
    store.seal(lambda seq, ev: b"SSC1\x00x", created=1, n_readings=3, pending_upto=0)
    return store


def delivered_or_refused_once(case: str, store: BatchStore, uplink: Uplink,
                              logs: list[MutableMapping[str, Any]]) -> str | None:
    """Case "ok": the batch was delivered (None). Else: still stored, and the refusal logged
    once (retries are quiet); returns its error line."""
    if case == "ok":
        assert store.stats().batches == 0, logs
        assert uplink.stats.acknowledged == 1
        return None
    assert store.stats().batches == 1, "nothing is deleted without a PUBACK"
    down = [e for e in logs if e["event"] == "uplink_down"]
    assert len(down) == 1, logs
    return str(down[0]["error"])


@pytest.mark.parametrize("case", ["ok", "wrong_password", "wrong_ca"])
async def test_tls_and_password(tmp_path: Path, tls_broker: tuple[Mosquitto, int, Path],
                                case: str) -> None:
    _, tls_port, certs = tls_broker
    password_file = tmp_path / "mqtt-password"
    password_file.write_text((PASSWORD if case != "wrong_password" else "not-it-" + PASSWORD)
                             + "\n")
    ca = certs / ("other-ca.crt" if case == "wrong_ca" else "ca.crt")
    settings = MqttSettings(parse_broker_url(f"mqtts://127.0.0.1:{tls_port}"), "gw-017",
                            username="gw-017", password_file=password_file, ca_file=ca,
                            keepalive=5, timeout=3)
    store = one_batch_store(tmp_path)
    with capture_logs() as logs:
        uplink = await run_uplink_for(settings, store, 3.0 if case == "ok" else 2.5)
    text = repr(logs)
    assert PASSWORD not in text
    error = delivered_or_refused_once(case, store, uplink, logs)
    if error is None:
        return
    if case == "wrong_password":
        assert error == (
            "broker refused the login of user 'gw-017': check password_file")
    else:
        assert f"not trusted by ca_file {ca}" in error
    assert uplink.stats.disconnects >= 1


# --------------------------------------------------------------------------- mutual TLS


@pytest.fixture
def mtls_broker(tmp_path: Path, tls_broker: tuple[Mosquitto, int, Path],
                mosquitto_factory: Callable[..., Mosquitto]) -> tuple[int, Path]:
    """A listener that requires a client certificate signed by the test CA."""
    _, _, certs = tls_broker
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out",
            "client.csr", "-subj", "/CN=gw-017", cwd=certs)
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "client.crt", "-days", "30", cwd=certs)
    # a certificate the broker does not trust (signed by the other CA's key, self-issued)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "stranger.key", "-out",
            "stranger.crt", "-days", "30", "-subj", "/CN=stranger", cwd=certs)
    port = free_port()
    mosquitto_factory(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nrequire_certificate true\n"
        f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\n"
        f"keyfile {certs / 'server.key'}\n",
        per_listener_settings=True,
    )
    return port, certs


@pytest.mark.parametrize("case", ["ok", "no_client_cert", "untrusted_client_cert",
                                  "garbage_cert_file"])
async def test_mutual_tls(tmp_path: Path, mtls_broker: tuple[int, Path], case: str) -> None:
    port, certs = mtls_broker
    cert = {"ok": certs / "client.crt", "untrusted_client_cert": certs / "stranger.crt",
            "garbage_cert_file": tmp_path / "garbage.pem", "no_client_cert": None}[case]
    key = {"untrusted_client_cert": certs / "stranger.key",
           "garbage_cert_file": certs / "client.key", "no_client_cert": None}.get(
        case, certs / "client.key")
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    settings = MqttSettings(parse_broker_url(f"mqtts://127.0.0.1:{port}"), "gw-017",
                            ca_file=certs / "ca.crt", cert_file=cert, key_file=key,
                            keepalive=5, timeout=3)
    store = one_batch_store(tmp_path)
    with capture_logs() as logs:
        uplink = await run_uplink_for(settings, store, 3.0 if case == "ok" else 4.5)
    error = delivered_or_refused_once(case, store, uplink, logs)
    if error is None:
        return
    if case == "garbage_cert_file":
        assert f"cert_file {cert}" in error and "cannot load the client certificate" in error
    else:
        assert "client certificate" in error and "cert_file" in error, error


# --- reconnect waits ------------------------------------------------------------------------


@given(failures=st.integers(0, 10_000), draw=st.floats(0.0, 0.999999),
       low=st.floats(0.1, 10.0), span=st.floats(0.0, 100.0))
def test_a_reconnect_wait_stays_within_its_bounds(failures: int, draw: float, low: float,
                                                  span: float) -> None:
    high = low + span
    delay = reconnect_delay(failures, low, high, draw)
    assert low <= delay <= high
    # the ceiling doubles from low: the first waits are short whatever the maximum
    assert delay <= low * 2.0 ** min(failures, 64) + 1e-9


def test_reconnect_waits_spread_a_fleet_over_the_bounds() -> None:
    # once the ceiling is reached, draws cover [min, max] evenly: no lockstep
    delays = [reconnect_delay(20, 0.5, 5.0, i / 1000) for i in range(1000)]
    assert min(delays) == 0.5 and max(delays) == pytest.approx(5.0, abs=0.01)
    assert sum(1 for d in delays if d < 2.75) == 500
    assert [reconnect_delay(0, 0.5, 5.0, d) for d in (0.0, 0.9)] == [0.5, 0.5]
