"""Hostile and broken publishers against ``ssc-agent receive`` run as a process.

A publisher that can reach the broker sends what no agent would: a 548-byte zstd frame that
inflates to 17 million empty arrays, a 2 KB one of 64 MiB of them, a 2 KB *valid* batch
declaring 21 million readings, the same within the body cap, a body of nested empty arrays,
a topic that names no gateway. Each must be set aside (kept in the sink's ``rejected`` table,
counted) and acknowledged, so it is not delivered again after a receiver restart; the
receiver must stay up and small, and a good gateway's batches published after them must be
stored. A failing sink (disk full) is the opposite case: nothing is acknowledged, and the
batch is stored once the disk has room again.
"""

from __future__ import annotations

import sqlite3
import struct
import subprocess
from pathlib import Path

import msgpack
import pytest
import zstandard

from agent.platform.sink import SqliteSink
from agent.wire import Batch, Series, encode_batch
from tests.chaos.harness import ReceiverProcess, fill
from tests.conftest import Mosquitto
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(240)

MEMORY_LIMIT_KIB = 512 * 1024  # the receiver unit's MemoryMax in the field report


def _array32(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)


def _zstd(body: bytes) -> bytes:
    return b"SSC1\x01" + zstandard.ZstdCompressor(level=19, write_content_size=True
                                                  ).compress(body)


def empty_arrays(n: int) -> bytes:
    return _zstd(_array32(n) + b"\x90" * n)


def readings_batch(n: int, gw: str) -> bytes:
    """A valid v1 batch of one series of ``n`` readings, built without building them."""
    p = msgpack.Packer(use_bin_type=True)
    head = b"".join(p.pack(x) for x in ("gw", gw, "boot", 1, "seq", 1, "created", 0))
    series = (p.pack_map_header(7) + b"".join(p.pack(x) for x in ("dev", "d", "pt", "p",
                                                                   "unit", None, "t0", 0))
              + p.pack("dt") + _array32(n) + b"\x00" * n + p.pack("v") + _array32(n)
              + b"\xc0" * n + p.pack("q") + _array32(n) + b"\x00" * n)
    return _zstd(p.pack_map_header(7) + head + p.pack("series") + b"\x91" + series
                 + p.pack("aggregates") + b"\x90" + p.pack("events") + b"\x90")


def good_batch(seq: int, gw: str = "gw-good") -> bytes:
    t0 = 1_700_000_000_000 + seq * 10_000
    return encode_batch(Batch(gw, 1, seq, t0 + 10_000, (
        Series("m1", "voltage", "V", t0, (0, 1000, 1000), (230.0, 230.5, 229.5), (0, 0, 0)),)))


def publish(broker: Mosquitto, topic: str, payload: bytes, tmp_path: Path) -> None:
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                    "-t", topic, "-f", str(path)], check=True, timeout=30)


def vm_hwm_kib(rx: ReceiverProcess) -> int:
    assert rx.proc is not None
    for line in Path(f"/proc/{rx.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def totals(sink: Path) -> dict[tuple[str, str], int]:
    with SqliteSink.open(sink) as s:
        return s.rejected_totals()


def test_hostile_messages_are_set_aside_acknowledged_and_block_no_one(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    hostile = {
        "548-byte zstd of 17 M empty arrays": empty_arrays(17_000_000),
        "540-byte zstd of 16 MiB of empty arrays": empty_arrays(16 * 1024 * 1024 - 5),
        "2 KB zstd of 64 MiB of empty arrays": empty_arrays(64 * 1024 * 1024 - 5),
        "2 KB valid batch of 21 M readings": readings_batch(21_000_000, "gw-evil"),
        "628-byte valid batch of 5 M readings": readings_batch(5_000_000, "gw-evil"),
        "nested empty arrays": _zstd(_array32(80) + (_array32(200_000) + b"\x90" * 200_000)
                                     * 80),
    }
    assert len(hostile["548-byte zstd of 17 M empty arrays"]) == 548
    assert len(hostile["2 KB valid batch of 21 M readings"]) < 2200
    sink = tmp_path / "received.db"
    rx = ReceiverProcess(mosquitto.url, sink, tmp_path / "receiver.log", client_id="rx-hostile")
    rx.start()
    try:
        for payload in hostile.values():
            publish(mosquitto, "ssc/v1/gw-evil/batch", payload, tmp_path)
        publish(mosquitto, "ssc/v1/not.a.gateway/batch", good_batch(1), tmp_path)
        for seq in (1, 2, 3):
            publish(mosquitto, "ssc/v1/gw-good/batch", good_batch(seq), tmp_path)
        rx.wait_for_seq("gw-good", 3, seconds=120)
        assert rx.alive, rx.log_text()[-2000:]
        peak = vm_hwm_kib(rx)
        # The field report: 1.2 GiB and 4.7 GiB, OOM-killed under 512 MiB.
        assert peak < MEMORY_LIMIT_KIB / 2, f"receiver peak RSS {peak} KiB"
        assert totals(sink) == {("gw-evil", "undecodable"): len(hostile),
                                ("", "bad_topic"): 1}
        # Logged once per gateway and kind, not once per message.
        assert [(e["gw"], e["kind"]) for e in rx.events("message_set_aside")] == [
            ("gw-evil", "undecodable"), (None, "bad_topic")]
        with SqliteSink.open(sink) as s:
            kept = {m.size: m for m in s.rejected("gw-evil")}
            assert sorted(kept) == sorted(len(p) for p in hostile.values())
            assert all(m.payload == p for p in hostile.values() for m in [kept[len(p)]])
            assert s.seqs("gw-good") == [1, 2, 3]
            assert s.count_readings() == 9  # nothing of gw-evil
        assert rx.terminate() == 0
        assert rx.events("receiver_stopped")
        # Acknowledged: the next run on the same persistent session gets none of them again.
        rx.start()
        publish(mosquitto, "ssc/v1/gw-good/batch", good_batch(4), tmp_path)
        rx.wait_for_seq("gw-good", 4)
        assert totals(sink) == {("gw-evil", "undecodable"): len(hostile),
                                ("", "bad_topic"): 1}
    finally:
        if rx.alive:
            rx.terminate()


def test_a_full_sink_disk_keeps_the_batch_unacknowledged_until_there_is_room(
    mosquitto: Mosquitto, tmp_path: Path, tiny_fs: Path
) -> None:
    sink = tiny_fs / "received.db"
    rx = ReceiverProcess(mosquitto.url, sink, tmp_path / "receiver.log", client_id="rx-full")
    rx.start()
    try:
        publish(mosquitto, "ssc/v1/gw-good/batch", good_batch(1), tmp_path)
        rx.wait_for_seq("gw-good", 1)
        fill(tiny_fs / "filler")
        publish(mosquitto, "ssc/v1/gw-good/batch", good_batch(2), tmp_path)
        assert wait_until(lambda: bool(rx.events("sink_unavailable")), 30), rx.log_text()[-2000:]
        (failure,) = rx.events("sink_unavailable")
        assert "full" in failure["error"], failure
        # Stopped while the sink fails: the batch is abandoned, not acknowledged, not set aside.
        assert rx.terminate() == 0
        assert rx.events("receiver_stopped")
        (tiny_fs / "filler").unlink()
        rx.start()
        rx.wait_for_seq("gw-good", 2)
        with sqlite3.connect(sink) as conn:
            assert conn.execute("SELECT count(*) FROM rejected").fetchone() == (0,)
            assert conn.execute("SELECT seq FROM batches ORDER BY seq").fetchall() == [(1,), (2,)]
    finally:
        if rx.alive:
            rx.terminate()
