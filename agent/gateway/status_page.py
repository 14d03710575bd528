"""The local status page (``[status_page] port``): read-only HTTP on the agent's event loop.

``GET /`` is one self-contained HTML page (inline CSS, no script, no external asset; it
reloads itself every :data:`REFRESH_SECONDS`) with the devices, the buffer, the uplink and
the KPI windows; ``GET /health.json`` is the same snapshot as JSON
(:func:`agent.gateway.health.build_health`, built per request). Nothing else: another path
is 404, another method 405. A request is bounded in size (:data:`MAX_REQUEST_BYTES`) and
time (:data:`REQUEST_SECONDS`), and at most :data:`MAX_CLIENTS` are served at once, so a
stuck or hostile client cannot hold the agent up. Every text put into the page is escaped:
error messages carry serial port names and device answers, and names come from the config.

The page binds to loopback by default; another address shows it to whoever reaches that
network (it holds no secrets and changes nothing, but tells what is installed where).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import html
import json
from collections.abc import Callable
from typing import Any

import structlog

from agent.gateway.health import age_text as _age
from agent.gateway.health import figure, problems

log = structlog.get_logger(__name__)

MAX_REQUEST_BYTES = 8192
REQUEST_SECONDS = 5.0
MAX_CLIENTS = 8
REFRESH_SECONDS = 5

Snapshot = Callable[[], dict[str, Any]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.05em;margin:1.2em 0 .3em}
table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
.up{color:#176f2c;font-weight:600}.down{color:#b00020;font-weight:600}.pending{color:#777}
.problems{background:#fde8e8;border:1px solid #f5b5b5;padding:.4em .8em}
.ok{background:#e6f4ea;border:1px solid #a8d5b5;padding:.4em .8em}
.meta{color:#555}.err{max-width:40em;word-break:break-word}
"""


def _utc(ms: int | None) -> str:
    if ms is None:
        return "never"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _cell(value: object, *, cls: str = "", ident: str = "") -> str:
    attrs = (f' class="{cls}"' if cls else "") + (f' id="{ident}"' if ident else "")
    text = "-" if value is None else str(value)
    return f"<td{attrs}>{html.escape(text)}</td>"


def _num(value: object, ident: str = "") -> str:
    return _cell(value, cls="n", ident=ident)


def _table(head: list[str], rows: list[str], ident: str) -> str:
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f'<table id="{ident}"><tr>{header}</tr>{"".join(rows)}</table>'


def render_page(snapshot: dict[str, Any]) -> str:
    """The status page of a health snapshot (escaped throughout)."""
    e = html.escape
    wrong = problems(snapshot)
    banner = (f'<p class="problems" id="problems">{"<br>".join(e(p) for p in wrong)}</p>'
              if wrong else '<p class="ok" id="problems">all devices up, uplink connected, '
              "buffer ok</p>")
    devices = [
        f'<tr data-device="{e(d["name"])}">{_cell(d["name"])}'
        f'{_cell(d["state"], cls=d["state"])}{_cell(_utc(d["last_good_ms"]))}'
        f'{_cell(_age(d["last_good_age_s"]))}{_num(d["polls"])}{_num(d["failures"])}'
        f'{_num(d["failures_in_a_row"])}{_cell(d["last_error"], cls="err")}</tr>'
        for d in snapshot["devices"]]
    b = snapshot["buffer"]
    buffer = [
        f"<tr>{_cell(b['state'], cls='up' if b['state'] == 'ok' else 'down', ident='buffer-state')}"
        f"{_num(b['batches'], 'buffer-batches')}{_num(b['readings'], 'buffer-readings')}"
        f"{_num(b['bytes'], 'buffer-bytes')}{_cell(_age(b['oldest_age_s']), ident='buffer-oldest')}"
        f"{_num(b['pending_rows'], 'buffer-pending')}"
        f"{_num(b['dropped_batches'], 'buffer-dropped-batches')}"
        f"{_num(b['dropped_readings'], 'buffer-dropped-readings')}"
        f"{_cell(b['reason'])}</tr>"]
    u = snapshot["uplink"]
    uplink = [
        f"<tr>{_cell('connected' if u['connected'] else 'not connected', ident='uplink-state', cls='up' if u['connected'] else 'down')}"  # noqa: E501
        f"{_cell(u['broker'])}{_cell(_age(u['last_ack_age_s']))}"
        f"{_num(u['in_flight'], 'uplink-in-flight')}{_num(u['acknowledged'])}"
        f"{_num(u['disconnects'])}</tr>"]
    kpis = snapshot["kpis"]
    opened = [f'<tr data-kpi="{e(k["kpi"])}">{_cell(k["kpi"])}{_cell(_utc(k["start"]))}'
              f'{_cell(_utc(k["end"]))}</tr>' for k in kpis["open"]]
    latest = [
        f'<tr data-kpi="{e(k["kpi"])}" data-start="{k["start"]}" data-end="{k["end"]}">'
        f'{_cell(k["kpi"])}{_cell(_utc(k["start"]))}{_cell(_utc(k["end"]))}'
        f'{_num(figure(k["value"]), "kpi-value-" + e(k["kpi"]))}{_cell(k["unit"])}'
        f'{_cell("valid" if k["valid"] else "not valid")}{_num(figure(k["coverage"]))}</tr>'
        for k in kpis["latest"]]
    title = f"{snapshot['gw']}: {'problems' if wrong else 'ok'}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>ssc-agent {e(snapshot['gw'])}</h1>"
        f'<p class="meta">version {e(snapshot["version"])}, boot {snapshot["boot"]}, '
        f"up {_age(snapshot['uptime_s'])}; at {_utc(snapshot['t'])} "
        f"(reloads every {REFRESH_SECONDS} s; <a href=\"/health.json\">JSON</a>)</p>"
        f"{banner}"
        "<h2>Devices</h2>"
        + _table(["device", "state", "last good poll (UTC)", "age", "polls", "failed",
                  "in a row", "last error"], devices, "devices")
        + "<h2>Buffer</h2>"
        + _table(["state", "batches", "readings", "bytes", "oldest", "pending flushes",
                  "dropped batches", "dropped readings", "reason"], buffer, "buffer")
        + "<h2>Uplink</h2>"
        + _table(["state", "broker", "last ack", "in flight", "acknowledged",
                  "disconnects"], uplink, "uplink")
        + "<h2>KPI windows open</h2>"
        + _table(["kpi", "start (UTC)", "end"], opened, "kpis-open")
        + "<h2>Latest closed KPI windows</h2>"
        + _table(["kpi", "start (UTC)", "end", "value", "unit", "valid", "coverage"],
                 latest, "kpis-latest")
        + "</body></html>\n")


def _response(status: int, body: bytes, content_type: str, *,
              extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    headers = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'",
        "Connection: close",
        *(f"{k}: {v}" for k, v in extra),
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + body


def _plain(status: int, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    return _response(status, f"{status} {_REASONS[status]}\n".encode(),
                     "text/plain; charset=utf-8", extra=extra)


def answer(request_line: str, snapshot: Snapshot) -> bytes:
    """The whole response to one request line (``GET /path HTTP/1.1``)."""
    parts = request_line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _plain(400)
    method, target = parts[0], parts[1]
    path = target.split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _plain(405, (("Allow", "GET, HEAD"),))
    if path == "/":
        body, kind = render_page(snapshot()).encode(), "text/html; charset=utf-8"
    elif path == "/health.json":
        body = json.dumps(snapshot(), indent=1, ensure_ascii=False).encode()
        kind = "application/json"
    else:
        return _plain(404)
    response = _response(200, body, kind)
    if method == "HEAD":
        return response[: len(response) - len(body)]
    return response


class StatusPage:
    """The HTTP side: read one bounded request, answer, close."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._clients = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._clients >= MAX_CLIENTS:
                writer.write(_plain(503))
                return
            self._clients += 1
            try:
                writer.write(await self._respond(reader))
                async with asyncio.timeout(REQUEST_SECONDS):
                    await writer.drain()
            finally:
                self._clients -= 1
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(REQUEST_SECONDS):
                    await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> bytes:
        try:
            async with asyncio.timeout(REQUEST_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return _plain(408)
        except asyncio.LimitOverrunError:
            return _plain(431)
        except asyncio.IncompleteReadError:
            return _plain(400)
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        try:
            return answer(line, self._snapshot)
        except Exception as exc:  # a bug here must not end the agent: say it, answer 503
            log.error("status_page_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return _plain(503)


async def serve_status_page(snapshot: Snapshot, address: str, port: int) -> None:
    """Serve the page until cancelled; a port that cannot be bound is logged, not fatal."""
    page = StatusPage(snapshot)
    try:
        server = await asyncio.start_server(page.handle, address, port,
                                            limit=MAX_REQUEST_BYTES)
    except OSError as exc:
        log.error("status_page_unavailable", address=address, port=port, error=str(exc))
        return
    host = f"[{address}]" if ":" in address else address
    log.info("status_page_serving", url=f"http://{host}:{port}/")
    async with server:
        await server.serve_forever()
