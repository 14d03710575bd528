"""``ssc-agent demo``: the whole chain on one machine, no hardware.

Simulated Modbus TCP meters (the ``ssc-demo-meter`` profile) → the agent (its real config
loader, scheduler, store and uplink) → a broker on a free loopback port (mosquitto when it is
on PATH, otherwise the embedded pure-Python amqtt broker) → the receiver into SQLite, printing
batches and readings as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog

from agent.config import load_config, parse_kpi_duration
from agent.endpoints import parse_broker_url
from agent.errors import AgentError
from agent.gateway.supervisor import AgentRuntime, run_agent
from agent.logs import configure_logging
from agent.platform.receiver import ReceiverSettings, ReceiverStats, run_receiver
from agent.platform.sink import StoreOutcome
from agent.profiles import load_profile
from agent.wire import Batch
from drivers.modbus.simulator import serve_many

log = structlog.get_logger(__name__)

SHOWN_POINTS = ("voltage_l1", "power_total", "energy_import", "enclosure_temperature")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open while choosing, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def find_mosquitto() -> str | None:
    """The mosquitto binary, or None."""
    # Debian installs mosquitto in /usr/sbin, which is not on a normal user's PATH.
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


EMBEDDED_EXTRA = "pip install '.[demo]' in a checkout of ssc-edge-agent, or its wheel with [demo]"


@contextlib.asynccontextmanager
async def local_broker(workdir: Path, *, embedded: bool = False) -> AsyncIterator[str]:
    """A broker on a free loopback port for the demo's lifetime; yields its URL.

    mosquitto when it is installed, else the embedded (amqtt) one; ``embedded`` asks for the
    embedded one even when mosquitto is there.
    """
    port = free_port()
    installed = find_mosquitto()
    mosquitto = None if embedded else installed
    if mosquitto is not None:
        conf = workdir / "mosquitto.conf"
        lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false",
                 "max_queued_messages 0"]
        import os

        if os.geteuid() == 0:
            lines.insert(0, "user root")  # else it drops to 'mosquitto' and cannot read workdir
        conf.write_text("\n".join(lines) + "\n")
        logfile = (workdir / "mosquitto.log").open("ab")
        proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=logfile,
                                stderr=subprocess.STDOUT)
        try:
            for _ in range(200):
                if proc.poll() is not None:
                    text = (workdir / "mosquitto.log").read_text(errors="replace")
                    raise RuntimeError(f"mosquitto exited: {text.strip()[-300:]}")
                if " running" in (workdir / "mosquitto.log").read_text(errors="replace"):
                    break
                await asyncio.sleep(0.02)
            print(f"broker:   mosquitto on mqtt://127.0.0.1:{port}", flush=True)
            yield f"mqtt://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
            logfile.close()
        return
    try:
        from amqtt.broker import Broker
    except ImportError:
        if embedded:
            other = (f"or leave --broker out to use mosquitto ({installed})" if installed
                     else "or pass --broker mqtt://HOST:PORT")
            raise AgentError(f"demo --broker embedded: the embedded broker (amqtt) is not "
                             f"installed ({EMBEDDED_EXTRA}); {other}") from None
        raise AgentError(
            "demo: no broker to run: mosquitto is not installed (apt-get install mosquitto) "
            f"and neither is the embedded one ({EMBEDDED_EXTRA}); or pass "
            "--broker mqtt://HOST:PORT") from None

    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await broker.start()
    why = "as asked" if embedded else "mosquitto not found"
    print(f"broker:   embedded (amqtt) on mqtt://127.0.0.1:{port} ({why})", flush=True)
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        await broker.shutdown()


def _config_text(data_dir: Path, broker: str, ports: list[int], interval: str,
                 status_page: int | None = None) -> str:
    devices = "\n".join(
        f'[[devices]]\nname = "meter-{i + 1}"\ndriver = "modbus"\n'
        f'endpoint = "tcp://127.0.0.1:{port}"\nunit = 1\nprofile = "ssc-demo-meter"\n'
        f'interval = "{interval}"\n'
        for i, port in enumerate(ports)
    )
    # KPIs on the first meter, with short windows so they close while you watch (only when
    # the poll interval is a whole number of seconds, as a KPI's sample_interval must be).
    try:
        kpi_ok = not parse_kpi_duration(interval).is_calendar
    except ValueError:
        kpi_ok = False
    kpis = "" if not kpi_ok else f"""
[[kpis]]
name = "power_10s"
source = "meter-1.power_total"
operator = "mean"
window = "10 s"
sample_interval = "{interval}"
unit = "W"

[[kpis]]
name = "energy_30s"
source = "meter-1.energy_import"
operator = "counter_delta"
window = "30 s"
sample_interval = "{interval}"
unit = "kWh"
"""
    return (
        f'[gateway]\nid = "gw-demo"\ntimezone = "UTC"\ndata_dir = "{data_dir}"\n'
        f'kpi_lateness = "2 s"\n\n'
        f'[uplink]\nbroker = "{broker}"\nbatch_max_age = "5 s"\n\n'
        + ("" if status_page is None else f"[status_page]\nport = {status_page}\n\n")
        + f"{devices}{kpis}"
    )


class DemoPrinter:
    """Prints each batch the receiver stores, with the latest values of a few points."""

    def __init__(self, started: float, on_output_gone: Callable[[], None] = lambda: None) -> None:
        self.started = started
        self.bytes = 0
        self.readings = 0
        self.output_gone = False
        self._on_output_gone = on_output_gone

    def on_payload_size(self, size: int) -> None:
        self.bytes += size

    def __call__(self, batch: Batch, outcome: StoreOutcome) -> None:
        try:
            self._print(batch, outcome)
        except BrokenPipeError:
            # `demo | head`: the reader has gone; stop the demo instead of logging every batch.
            self.output_gone = True
            self._on_output_gone()

    def _print(self, batch: Batch, outcome: StoreOutcome) -> None:
        n = sum(len(s.v) for s in batch.series)
        self.readings += n if not outcome.duplicate else 0
        when = datetime.fromtimestamp(batch.created / 1000, UTC).strftime("%H:%M:%S")
        tag = " (duplicate, dropped)" if outcome.duplicate else ""
        print(f"[{when}] batch {batch.gw} seq {batch.seq}: {n} readings, "
              f"{len(batch.series)} series, {len(batch.events)} events{tag}", flush=True)
        latest: dict[str, list[str]] = {}
        for s in batch.series:
            if s.pt not in SHOWN_POINTS or not s.v:
                continue
            value, quality = s.v[-1], s.q[-1]
            shown = "—" if value is None else f"{value:.7g}"
            flag = "" if quality == 0 else f" (q={quality})"
            latest.setdefault(s.dev, []).append(f"{s.pt}={shown}{s.unit or ''}{flag}")
        for dev in sorted(latest):
            print(f"           {dev}: " + "  ".join(latest[dev]), flush=True)
        for a in batch.aggregates:
            start = datetime.fromtimestamp(a["start"] / 1000, UTC).strftime("%H:%M:%S")
            end = datetime.fromtimestamp(a["end"] / 1000, UTC).strftime("%H:%M:%S")
            shown_kpi = ("not valid" if not a["valid"]
                         else f"{a['value']:.7g} {a['unit'] or ''}")
            print(f"           KPI {a['kpi']} [{start}, {end}): {shown_kpi} "
                  f"(n {a['n']}/{a['expected']})", flush=True)
        for event in batch.events:
            print(f"           event {event.get('kind')} {event.get('dev')}: {event.get('msg')}",
                  flush=True)


async def run_demo(
    *,
    duration: float | None,
    meters: int,
    interval: str,
    broker_url: str | None,
    data_dir: Path | None,
    status_page: int | None = None,
) -> int:
    """Run the demo; returns the exit status."""
    configure_logging("warning")
    if meters < 1 or meters > 200:
        print("ssc-agent: --meters must be between 1 and 200", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        workdir = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="ssc-demo-")))
        workdir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(meters)
        fleet = await serve_many({1: load_profile("ssc-demo-meter")}, "127.0.0.1", ports)
        print(f"meters:   {meters} simulated ssc-demo-meter on "
              + ", ".join(f"tcp://127.0.0.1:{p}" for p in ports), flush=True)
        try:
            async with contextlib.AsyncExitStack() as brokers:
                if broker_url is None or broker_url == "embedded":
                    broker = await brokers.enter_async_context(
                        local_broker(workdir, embedded=broker_url == "embedded"))
                else:
                    broker = broker_url
                config_path = workdir / "agent.toml"
                config_path.write_text(_config_text(workdir / "agent", broker, ports, interval,
                                                    status_page))
                config = load_config(config_path)
                print(f"agent:    config {config_path}, buffer {workdir / 'agent'}", flush=True)
                if status_page is not None:
                    print(f"status:   http://127.0.0.1:{status_page}/", flush=True)
                sink = workdir / "received.db"
                print(f"receiver: sqlite:///{sink}", flush=True)
                stats = ReceiverStats()
                stop_agent, stop_receiver = asyncio.Event(), asyncio.Event()
                printer = DemoPrinter(time.time(), on_output_gone=stop_agent.set)
                runtime: list[AgentRuntime] = []
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop_agent.set)
                settings = ReceiverSettings(broker=parse_broker_url(broker),
                                            sink_url=f"sqlite:///{sink}",
                                            client_id="ssc-demo-receiver")
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(run_receiver(settings, stop=stop_receiver, on_batch=printer,
                                                stats=stats), name="receiver")
                    agent = tg.create_task(
                        run_agent(config, stop=stop_agent, on_start=runtime.append,
                                  install_signal_handlers=False), name="agent")
                    assert config.uplink is not None
                    print(f"running{'' if duration is None else f' for {duration:g} s'}; "
                          f"batches are sealed every {config.uplink.batch_max_age} "
                          "(Ctrl-C stops)\n", flush=True)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(duration):
                            await stop_agent.wait()
                    stop_agent.set()
                    await agent
                    # let the receiver take the last batch the agent sent on its way out
                    polled = runtime[0].batcher.stats.readings if runtime else 0
                    deadline = time.monotonic() + 5
                    while stats.readings < polled and time.monotonic() < deadline:
                        await asyncio.sleep(0.1)
                    stop_receiver.set()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
        finally:
            await fleet.stop()
        print(f"\nsummary: {polled} readings polled, {stats.readings} stored by the receiver "
              f"in {stats.batches} batches ({stats.duplicates} duplicates dropped, "
              f"{stats.rejected} rejected)", flush=True)
        return 0 if stats.readings >= polled else 1
