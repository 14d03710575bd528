"""Receiver peak memory on hostile messages: a real ``ssc-agent receive`` and mosquitto.

Each message is published (QoS 1, mosquitto_pub) to a fresh broker and a fresh receiver
process, which runs under an address-space cap (``prlimit --as``) so a receiver that balloons
fails inside the cap instead of hurting the machine. The receiver's peak RSS (``VmHWM``) is
read from /proc until it has logged what it did with the message (or died). Messages:

- ``empty-arrays-548B``: 548 bytes of zstd that inflate to a body of 17 M empty arrays;
- ``empty-arrays-16MiB``: the same just within the 16 MiB body cap (540 bytes);
- ``empty-arrays-2KB``: ~2 KB of zstd, a 64 MiB body of empty arrays;
- ``readings-21M-2KB``: a 2 KB valid batch declaring 21,000,000 readings;
- ``readings-5M-620B``: the same within the 16 MiB body cap (5,000,000 readings);
- ``nested-empty-16MiB``: 80 arrays of 200,000 empty arrays (the container budget's case);
- ``string-chain-16MiB``: 26 nested arrays of 199,998 2-character strings each (the object
  budget's dearest case).

``--source DIR`` runs the receiver of another checkout (e.g. one of an older release) for a
before/after comparison. Prints one line per message and a JSON summary.

    .venv/bin/python benchmarks/hostile.py [--source DIR] [--cap-mib 3072] [--only NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import zstandard

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ("message_set_aside", "batch_rejected", "batch_stored", "messages_set_aside")


def _array32(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)


def _zstd(body: bytes, level: int) -> bytes:
    return b"SSC1\x01" + zstandard.ZstdCompressor(level=level, write_content_size=True
                                                  ).compress(body)


def empty_arrays(n: int, level: int = 19) -> bytes:
    """A payload whose body is one array of ``n`` empty arrays."""
    return _zstd(_array32(n) + b"\x90" * n, level)


def readings_batch(n: int, gw: str = "gw-hostile", level: int = 19) -> bytes:
    """A valid v1 batch of one series of ``n`` readings (dt 0, value nil, quality 0)."""
    p = msgpack.Packer(use_bin_type=True)
    head = b"".join(p.pack(x) for x in ("gw", gw, "boot", 1, "seq", 1, "created", 0))
    series = (p.pack_map_header(7) + b"".join(p.pack(x) for x in ("dev", "d", "pt", "p",
                                                                   "unit", None, "t0", 0))
              + p.pack("dt") + _array32(n) + b"\x00" * n + p.pack("v") + _array32(n)
              + b"\xc0" * n + p.pack("q") + _array32(n) + b"\x00" * n)
    body = (p.pack_map_header(7) + head + p.pack("series") + b"\x91" + series
            + p.pack("aggregates") + b"\x90" + p.pack("events") + b"\x90")
    return _zstd(body, level)


def string_chain(levels: int = 26, run: int = 199_998) -> bytes:
    """[s × run, [s × run, [...]]] with s a 2-character string: every level open at once, the
    dearest objects per byte (a 3-byte string is a ~59-byte Python object)."""
    return _zstd(b"".join(_array32(run + 1) + b"\xa2ab" * run for _ in range(levels)) + b"\x90",
                 19)


def nested_empty(outer: int = 80, inner: int = 200_000) -> bytes:
    return _zstd(_array32(outer) + (_array32(inner) + b"\x90" * inner) * outer, 19)


MESSAGES: dict[str, Callable[[], bytes]] = {
    "empty-arrays-548B": lambda: empty_arrays(17_000_000),
    "empty-arrays-16MiB": lambda: empty_arrays(16 * 1024 * 1024 - 5),
    "empty-arrays-2KB": lambda: empty_arrays(64 * 1024 * 1024 - 5, level=19),
    "readings-21M-2KB": lambda: readings_batch(21_000_000),
    "readings-5M-620B": lambda: readings_batch(5_000_000),
    "nested-empty-16MiB": nested_empty,
    "string-chain-16MiB": string_chain,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def measure(name: str, payload: bytes, source: Path, cap_mib: int, work: Path) -> dict[str, object]:
    port = _free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(("user root\n" if os.geteuid() == 0 else "")
                    + f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    log = work / f"{name}.log"
    sink = work / f"{name}.db"
    receiver = None
    try:
        time.sleep(0.3)
        env = dict(os.environ, PYTHONPATH=str(source))
        receiver = subprocess.Popen(
            ["prlimit", f"--as={cap_mib * 1024 * 1024}", sys.executable, "-m", "agent.cli",
             "--log-json", "receive", "--broker", f"mqtt://127.0.0.1:{port}",
             "--sink", f"sqlite:///{sink}", "--client-id", "hostile-bench"],
            cwd=source, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=log.open("wb"))
        deadline = time.monotonic() + 30
        while not any(e.get("event") == "mqtt_subscribed" for e in _events(log)):
            if time.monotonic() > deadline or receiver.poll() is not None:
                raise RuntimeError(f"receiver did not subscribe: {log.read_text()[-500:]}")
            time.sleep(0.05)
        baseline = _vm_hwm_kib(receiver.pid) or 0
        path = work / f"{name}.bin"
        path.write_bytes(payload)
        started = time.monotonic()
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                        "-t", "ssc/v1/gw-hostile/batch", "-f", str(path)], check=True)
        peak, outcome = baseline, "timeout"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            hwm = _vm_hwm_kib(receiver.pid)
            if hwm is not None:
                peak = max(peak, hwm)
            if receiver.poll() is not None:
                outcome = f"receiver exited {receiver.returncode}"
                break
            done = [e for e in _events(log) if e.get("event") in OUTCOMES]
            if done:
                e = done[0]
                outcome = f"{e['event']}: {str(e.get('error', ''))[:80]}"
                break
            time.sleep(0.01)
        seconds = time.monotonic() - started
        return {"message": name, "payload_bytes": len(payload), "baseline_rss_mib":
                round(baseline / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
                "seconds": round(seconds, 2), "outcome": outcome,
                "sink_bytes": sink.stat().st_size if sink.exists() else 0}
    finally:
        if receiver is not None and receiver.poll() is None:
            receiver.send_signal(signal.SIGTERM)
            try:
                receiver.wait(20)
            except subprocess.TimeoutExpired:
                receiver.kill()
                receiver.wait()
        broker.terminate()
        broker.wait()
        for f in (sink, sink.with_name(sink.name + "-wal")):
            f.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout to run")
    parser.add_argument("--cap-mib", type=int, default=3072,
                        help="address-space cap of the receiver (prlimit --as)")
    parser.add_argument("--only", action="append", choices=sorted(MESSAGES))
    args = parser.parse_args()
    for tool in ("mosquitto", "mosquitto_pub", "prlimit"):
        if shutil.which(tool) is None:
            print(f"hostile.py: {tool} is not on PATH", file=sys.stderr)
            return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="ssc-hostile-") as tmp:
        for name in args.only or list(MESSAGES):
            result = measure(name, MESSAGES[name](), args.source.resolve(), args.cap_mib,
                             Path(tmp))
            results.append(result)
            print(f"{name:20} {result['payload_bytes']:>6} B  peak RSS "
                  f"{result['peak_rss_mib']:>7} MiB (idle {result['baseline_rss_mib']} MiB)  "
                  f"{result['seconds']:>6} s  {result['outcome']}", flush=True)
    print(json.dumps({"source": str(args.source), "cap_mib": args.cap_mib,
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
