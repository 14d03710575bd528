"""The supervisor: wires drivers → scheduler → batcher → store → uplink in one task group.

Shutdown (SIGTERM, SIGINT or ``stop``): stop the pollers first, flush and seal the open batch
into the store, give the uplink until ``shutdown_timeout`` to send what it can, then close.
Whatever is left stays in the store and goes out after the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from agent import __version__
from agent.config import AgentConfig, UplinkConfig
from agent.driver import DriverContext
from agent.fdlimit import prepare_open_files
from agent.gateway.batcher import Batcher
from agent.gateway.clock import ClockWatch, elapsed_clock, kernel_clock_synced
from agent.gateway.devices import DeviceSet, TrackedResources
from agent.gateway.devices import cancel_all as _cancel_all
from agent.gateway.reload import Reloader, ReloadOutcome
from agent.gateway.scheduler import DevicePoller
from agent.gateway.store import BatchStore, DataDirLock, StoreBounds
from agent.gateway.watchdog import ServiceWatch

if TYPE_CHECKING:
    from agent.gateway.remote_config import RemoteConfig
    from agent.gateway.uplink import Uplink, UplinkChannel

log = structlog.get_logger(__name__)

STORE_FILE = "buffer.db"
METRICS_REFRESH_SECONDS = 5.0


async def _serve_metrics(config: AgentConfig, runtime: AgentRuntime, uplink: Uplink) -> None:
    from agent.gateway.metrics import DeliveryCollector, start_metrics_server

    collector = DeliveryCollector(runtime.store, runtime.batcher, uplink, runtime.pollers)
    assert config.metrics.port is not None
    try:
        start_metrics_server(collector, config.metrics.address, config.metrics.port)
    except OSError as exc:
        log.error("metrics_unavailable", address=config.metrics.address,
                  port=config.metrics.port, error=str(exc))
        return
    log.info("metrics_serving", url=f"http://{config.metrics.address}:{config.metrics.port}"
             "/metrics")
    while True:
        await asyncio.sleep(METRICS_REFRESH_SECONDS)
        collector.refresh()


@dataclass
class AgentRuntime:
    """Live objects of a running agent (tests and the demo look at them)."""

    store: BatchStore
    batcher: Batcher
    pollers: list[DevicePoller] = field(default_factory=list)
    boot: int = 0
    config: AgentConfig | None = None  # the config running now (a reload replaces it)
    reloader: Reloader | None = None  # set once the tasks run

    async def reload(self, new: AgentConfig) -> ReloadOutcome:
        """Apply ``new`` to the running agent, or reject it and keep the running config:
        :meth:`agent.gateway.reload.Reloader.reload`. Callable once the agent runs."""
        if self.reloader is None:
            raise RuntimeError("the agent is not running yet: no reload before its tasks run")
        return await self.reloader.reload(new)


@dataclass
class _Gateway:
    """What :func:`_build_runtime` built, held until :func:`_release` closes it."""

    config: AgentConfig
    context: DriverContext
    lock: DataDirLock
    runtime: AgentRuntime
    uplink: Uplink
    devices: DeviceSet
    make_uplink: Callable[[AgentConfig], Uplink]  # a reload that changes [uplink] builds anew
    # systemd's READY/STATUS/watchdog (a no-op outside systemd); a reload calls its
    # reloading() when it starts and reloaded() when it is done
    service: ServiceWatch = field(default_factory=ServiceWatch.from_environment)
    monotonic: Callable[[], float] = elapsed_clock  # the clock the pollers' ages are on


@dataclass
class _Tasks:
    """The task group's tasks, in the order shutdown stops them."""

    flusher: asyncio.Task[None]
    sender: asyncio.Task[None]
    extras: list[asyncio.Task[None]]


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run_agent(
    config: AgentConfig,
    *,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = elapsed_clock,
    on_start: Callable[[AgentRuntime], None] | None = None,
    install_signal_handlers: bool = True,
    config_source: Callable[[], AgentConfig] | None = None,
) -> None:
    """Run the agent until ``stop`` is set or SIGTERM/SIGINT arrives.

    With ``config_source`` (e.g. loading the config file again), SIGHUP reloads the config
    from it (:mod:`agent.gateway.reload`); ``runtime.reload`` applies a config handed in.
    """
    stop = stop or asyncio.Event()
    hup = asyncio.Event()  # a SIGHUP came: reload once the agent runs
    remote = _remote_config(config, clock, monotonic)
    if remote is not None:  # a config the platform pushed may run instead of the local file
        config = remote.running.config
        config_source = config_source and remote.reload_source(config_source)
    # The handlers come first: a SIGTERM while the agent starts (a service stopped during a
    # slow start) is a clean stop once it runs, not the default death of the process; a
    # SIGHUP then (systemctl reload during the start) is a reload once it runs.
    with (_stop_on_signals(stop) if install_signal_handlers else contextlib.nullcontext(),
          _hup_sets(hup) if install_signal_handlers and config_source is not None
          else contextlib.nullcontext()):
        gateway = _build_runtime(config, clock, monotonic,
                                 channel=None if remote is None else remote.channel)
        if on_start is not None:
            on_start(gateway.runtime)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = _start_tasks(tg, gateway)
                reloader = _reloader(gateway, tasks, tg, clock, monotonic)
                if config_source is not None:
                    tasks.extras.append(tg.create_task(
                        _reload_on_request(hup, reloader, config_source), name="reload"))
                remote_task = _start_remote(tg, gateway, remote)
                await stop.wait()
                log.info("agent_stopping")
                gateway.service.stopping()
                if remote_task is not None:
                    remote_task.cancel()
                await reloader.close()
                await _wind_down(gateway, tasks)
        finally:
            await gateway.context.close()
            _release(gateway)
            if remote is not None:
                remote.close()


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` while the block runs."""
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def _reloader(gateway: _Gateway, tasks: _Tasks, tg: asyncio.TaskGroup,
              clock: Callable[[], float], monotonic: Callable[[], float]) -> Reloader:
    runtime = gateway.runtime

    async def restart_uplink(config: AgentConfig) -> None:
        await _cancel_all([tasks.sender])  # its in-flight batches stay stored: sent again
        uplink = gateway.make_uplink(config)
        uplink.take_over(gateway.uplink)  # counters go on (/metrics holds the first uplink)
        runtime.batcher.on_health_change = uplink.status_changed
        gateway.uplink = uplink
        tasks.sender = tg.create_task(uplink.run(), name="uplink")

    def follow(_: ReloadOutcome) -> None:
        gateway.config = runtime.config = reloader.config

    reloader = Reloader(gateway.config, gateway.devices, runtime.batcher, runtime.store,
                        restart_uplink=restart_uplink, clock=clock, monotonic=monotonic)
    reloader.on_reload_done.append(follow)
    reloader.on_reload_start.append(gateway.service.reloading)
    reloader.on_reload_done.append(lambda _: gateway.service.reloaded())
    runtime.reloader = reloader
    return reloader


@contextlib.contextmanager
def _hup_sets(hup: asyncio.Event) -> Iterator[None]:
    """SIGHUP sets ``hup`` while the block runs."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


async def _reload_on_request(hup: asyncio.Event, reloader: Reloader,
                             source: Callable[[], AgentConfig]) -> None:
    """Reload from ``source`` each time ``hup`` is set; SIGHUPs during a reload make one
    more reload after it."""
    while True:
        await hup.wait()
        hup.clear()
        try:
            await reloader.reload_from(source)
        except Exception as exc:  # a reload gone wrong must not take the agent down
            log.exception("config_reload_failed", error=f"{type(exc).__name__}: {exc}"[:300])


def _remote_config(config: AgentConfig, clock: Callable[[], float],
                   monotonic: Callable[[], float]) -> RemoteConfig | None:
    if not config.remote_config.enabled:
        return None  # nor is cryptography imported
    from agent.gateway.remote_config import RemoteConfig

    return RemoteConfig.start(config, clock=clock, monotonic=monotonic)


def _start_remote(tg: asyncio.TaskGroup, gateway: _Gateway,
                  remote: RemoteConfig | None) -> asyncio.Task[None] | None:
    """Pushed configs go through the reload path; the health a config on trial must show is
    some device answering and the (current) uplink connected."""
    if remote is None:
        return None
    return tg.create_task(remote.run(
        gateway.runtime.reload,
        lambda: (gateway.devices.pollers, gateway.uplink.stats.connected)),
        name="remote-config")


# --------------------------------------------------------------------------------------------
# Building the runtime


def _build_runtime(
    config: AgentConfig, clock: Callable[[], float], monotonic: Callable[[], float],
    *, channel: UplinkChannel | None = None,
) -> _Gateway:
    """Drivers, the data_dir's lock and store, batcher, uplink and pollers, wired together."""
    context = DriverContext(buses=config.buses_by_name, resources=TrackedResources())
    devices = DeviceSet(context, lambda device, driver: DevicePoller(
        device.name, driver, device.interval.seconds,
        emit=batcher.add, event=batcher.add_event, watch=watch), [])
    drivers = devices.create(config)
    prepare_open_files(len(drivers))
    data_dir = Path(config.gateway.data_dir)
    # one agent per data_dir: a second one would poll every device again under the same seqs
    # (first: a data_dir the agent cannot use ends the start with its one line, nothing else)
    lock = DataDirLock.acquire(data_dir)
    # One watch for the whole agent: a wall-clock step is seen, logged and sent upstream once.
    watch = ClockWatch(clock, monotonic, synced=kernel_clock_synced)
    store = _open_store(config, data_dir / STORE_FILE, clock, monotonic)
    store.lock = lock  # the store retakes it if the data_dir is deleted and comes back
    boot = store.start_boot()
    wake = asyncio.Event()
    batcher = _build_batcher(config, store, boot=boot, wake=wake, watch=watch, clock=clock)
    recovered = batcher.recover()
    batcher.seal()  # what a crash left pending goes out first, in its own batch
    make_uplink = functools.partial(_build_uplink, store=store, batcher=batcher, boot=boot,
                                    wake=wake, clock=clock, monotonic=monotonic,
                                    channel=channel)
    uplink = make_uplink(config)
    batcher.on_health_change = uplink.status_changed
    wake.set()
    devices.add_pollers(drivers)
    runtime = AgentRuntime(store, batcher, devices.pollers, boot=boot, config=config)
    watch.synced()  # logs clock_not_synchronised if the kernel says so
    log.info("agent_started", gw=config.gateway.id, boot=boot, version=__version__,
             devices=len(drivers), recovered_readings=recovered, store=str(store.path),
             backlog_batches=store.stats().batches)
    return _Gateway(config, context, lock, runtime, uplink, devices, make_uplink,
                    monotonic=monotonic)


def _open_store(
    config: AgentConfig, path: Path, clock: Callable[[], float], monotonic: Callable[[], float]
) -> BatchStore:
    buf = config.buffer
    return BatchStore.open(
        path,
        sync=buf.sync,
        bounds=StoreBounds(max_bytes=buf.max_bytes.bytes,
                           max_age_ms=int(buf.max_age.seconds * 1000),
                           when_full=buf.when_full),
        clock=clock,
        monotonic=monotonic,
        clock_synced=kernel_clock_synced,
    )


def _build_batcher(
    config: AgentConfig,
    store: BatchStore,
    *,
    boot: int,
    wake: asyncio.Event,
    watch: ClockWatch,
    clock: Callable[[], float],
) -> Batcher:
    """The batcher, with the live KPI engine (resumed from its checkpoint) if KPIs are set."""
    up = _uplink_config(config)
    kpis = None
    if config.kpis:
        from agent.kpi.live import LiveKpis

        kpis = LiveKpis.resume(config, store, clock,
                               int(config.gateway.kpi_lateness.seconds * 1000),
                               config.gateway.kpi_checkpoint_interval.seconds)
    return Batcher(
        store,
        gw=config.gateway.id,
        boot=boot,
        max_readings=up.batch_max_readings,
        max_age=up.batch_max_age.seconds,
        codec=1 if up.compression == "zstd" else 0,
        level=up.zstd_level,
        clock=clock,
        on_sealed=wake.set,
        kpis=kpis,
        watch=watch,
    )


def _build_uplink(
    config: AgentConfig,
    store: BatchStore,
    batcher: Batcher,
    *,
    boot: int,
    wake: asyncio.Event,
    clock: Callable[[], float],
    monotonic: Callable[[], float],
    channel: UplinkChannel | None = None,
) -> Uplink:
    from agent.gateway.uplink import Uplink  # the MQTT client only when we really connect
    from agent.mqtt import MqttSettings

    up = _uplink_config(config)
    gw = config.gateway.id
    settings = MqttSettings(
        address=up.broker_address,
        client_id=up.client_id or gw,
        username=up.username,
        password_file=up.password_file,
        ca_file=up.ca_file,
        cert_file=up.cert_file,
        key_file=up.key_file,
        keepalive=up.keepalive.seconds,
        timeout=up.publish_timeout.seconds,
    )
    return Uplink(settings, store, gw=gw, boot=boot, topic_prefix=up.topic_prefix,
                  max_inflight=up.max_inflight, wake=wake, clock=clock,
                  event=batcher.add_event, replay_rate=up.replay_rate_per_second,
                  replay_order=up.replay_order,
                  reconnect_min=up.reconnect_min.seconds,
                  reconnect_max=up.reconnect_max.seconds, monotonic=monotonic,
                  buffer_health=batcher.health, brokers=up.broker_addresses,
                  channel=channel)


def _uplink_config(config: AgentConfig) -> UplinkConfig:
    assert config.uplink is not None  # load_config requires [uplink] for run
    return config.uplink


def _start_tasks(tg: asyncio.TaskGroup, gateway: _Gateway) -> _Tasks:
    runtime, uplink, config = gateway.runtime, gateway.uplink, gateway.config
    flush_every = _uplink_config(config).flush_interval.seconds
    gateway.devices.start(tg)
    flusher = tg.create_task(runtime.batcher.run(flush_every), name="batcher")
    sender = tg.create_task(uplink.run(), name="uplink")
    extras = []
    if config.metrics.port is not None:
        extras.append(tg.create_task(_serve_metrics(config, runtime, uplink), name="metrics"))
    from agent.gateway.health import start_health

    extras.extend(start_health(tg, config, runtime, lambda: gateway.uplink, gateway.monotonic))
    if gateway.service.enabled:  # last: READY=1 once the tasks above run
        extras.append(tg.create_task(gateway.service.run(
            runtime, lambda: gateway.uplink.stats.connected, flush_every), name="systemd"))
    return _Tasks(flusher, sender, extras)


# --------------------------------------------------------------------------------------------
# Shutting it down


async def _wind_down(gateway: _Gateway, tasks: _Tasks) -> None:
    """Stop polling, seal the open batch, give the uplink until shutdown_timeout to send it."""
    await gateway.devices.stop_all()
    tasks.flusher.cancel()
    gateway.runtime.batcher.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(gateway.config.gateway.shutdown_timeout.seconds):
            await gateway.uplink.drained()
    await gateway.uplink.say_offline()
    tasks.sender.cancel()
    for task in tasks.extras:
        task.cancel()


def _release(gateway: _Gateway) -> None:
    """Close the store and free the data_dir; what is left goes out after the next start."""
    store = gateway.runtime.store
    left = store.stats()
    store.close()
    gateway.lock.release()
    gateway.service.close()
    log.info("agent_stopped", gw=gateway.config.gateway.id, boot=gateway.runtime.boot,
             unsent_batches=left.batches, unsent_readings=left.readings)
