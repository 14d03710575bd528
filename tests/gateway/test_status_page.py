"""The status page: what it answers, its bounds (a real socket), and escaping everywhere."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.gateway import status_page
from agent.gateway.status_page import StatusPage, answer, render_page
from tests.conftest import free_port

HOSTILE = '<script>alert("x")</script>&<b>'


def snapshot(text: str = "meter") -> dict[str, Any]:
    """A snapshot with ``text`` in every string a config or a device can put there."""
    return {
        "format": 1, "gw": "gw-1", "boot": 2, "version": text, "pid": 1, "t": 1_700_000_000_000,
        "uptime_s": 5.0,
        "devices": [{"name": text, "state": "down", "polls": 3, "failures": 3,
                     "failures_in_a_row": 3, "overruns": 0, "skipped_slots": 0, "readings": 9,
                     "last_good_ms": None, "last_good_age_s": None, "last_error": text,
                     "last_error_ms": 1}],
        "buffer": {"state": text, "reason": text, "held_readings": 0, "batches": 1,
                   "readings": 2, "bytes": 3, "file_bytes": 4, "pending_rows": 0,
                   "oldest_age_s": 1.0, "dropped_batches": 0, "dropped_readings": 0,
                   "drops": {}, "next_seq": 2, "lost_in_memory": 0, "write_errors": 0},
        "uplink": {"connected": False, "broker": text, "last_ack_age_s": None, "in_flight": 0,
                   "acknowledged": 0, "disconnects": 1},
        "kpis": {"open": [{"kpi": text, "start": 0, "end": 10_000}],
                 "latest": [{"kpi": text, "start": 0, "end": 10_000, "value": 1.5,
                             "valid": True, "unit": text, "n": 1, "expected": 1,
                             "coverage": 1.0}]},
    }


def test_every_text_is_escaped() -> None:
    page = render_page(snapshot(HOSTILE))
    assert "<script" not in page and "<b>" not in page
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&lt;b&gt;"
    # device name (cell and attribute), error, buffer state and reason, broker, KPI and unit
    assert page.count(escaped) >= 9, page


@pytest.mark.parametrize(("line", "status", "kind"), [
    ("GET / HTTP/1.1", 200, "text/html; charset=utf-8"),
    ("GET /?x=1 HTTP/1.0", 200, "text/html; charset=utf-8"),
    ("GET /health.json HTTP/1.1", 200, "application/json"),
    ("HEAD /health.json HTTP/1.1", 200, "application/json"),
    ("POST / HTTP/1.1", 405, "text/plain; charset=utf-8"),
    ("DELETE /health.json HTTP/1.1", 405, "text/plain; charset=utf-8"),
    ("GET /metrics HTTP/1.1", 404, "text/plain; charset=utf-8"),
    ("GET /../etc/passwd HTTP/1.1", 404, "text/plain; charset=utf-8"),
    ("GET /", 400, "text/plain; charset=utf-8"),
    ("junk", 400, "text/plain; charset=utf-8"),
])
def test_answers(line: str, status: int, kind: str) -> None:
    response = answer(line, snapshot)
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0].split()[1] == str(status)
    assert f"Content-Type: {kind}" in lines
    if status == 405:
        assert "Allow: GET, HEAD" in lines
    if line.startswith("HEAD"):
        assert body == b""
    elif "health.json" in line and status == 200:
        assert json.loads(body)["gw"] == "gw-1"


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    monkeypatch.setattr(status_page, "REQUEST_SECONDS", 0.3)
    port = free_port()
    page = StatusPage(snapshot)
    srv = await asyncio.start_server(page.handle, "127.0.0.1", port,
                                     limit=status_page.MAX_REQUEST_BYTES)
    async with srv:
        yield port


async def _exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def test_bounded_requests(server: int) -> None:
    ok = await _exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 ") and ok.rstrip().endswith(b"</html>")
    huge = await _exchange(server, b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n")
    assert huge.startswith(b"HTTP/1.1 431 ")
    # a client that never finishes its request is answered 408 and closed
    slow = await _exchange(server, b"GET / HTTP/1.1\r\n")
    assert slow.startswith(b"HTTP/1.1 408 ")
