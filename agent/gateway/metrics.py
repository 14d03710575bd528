"""Prometheus ``/metrics`` (``[metrics] port``): delivery counters read at scrape time.

Nothing is counted per reading here: the collector reads the stats the scheduler, batcher,
store and uplink keep anyway, so metrics cost nothing between scrapes. Scrapes come in on
prometheus_client's HTTP thread, and an SQLite connection belongs to one thread, so the store's
figures are refreshed from the event loop (``refresh()``, every few seconds) and scrapes read
that snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.gateway.batcher import Batcher
    from agent.gateway.scheduler import DevicePoller
    from agent.gateway.store import BatchStore
    from agent.gateway.uplink import Uplink


class DeliveryCollector:
    """A prometheus_client collector over the live agent objects."""

    def __init__(self, store: BatchStore, batcher: Batcher, uplink: Uplink,
                 pollers: list[DevicePoller], *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._batcher = batcher
        self._uplink = uplink
        self._pollers = pollers
        self._monotonic = monotonic
        self._snapshot = (store.stats(), store.drop_totals())
        self._taken = monotonic()

    def refresh(self) -> None:
        """Take the store's figures (call from the event loop's thread)."""
        self._snapshot = (self._store.stats(), self._store.drop_totals())
        self._taken = self._monotonic()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"ssc_agent_{name}", doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"ssc_agent_{name}", doc, value=value)

        b, u = self._batcher.stats, self._uplink.stats
        yield counter("readings_polled", "Readings taken from devices (any quality)",
                      b.readings)
        yield counter("batches_sealed", "Batches sealed and stored", b.batches_sealed)
        yield counter("batches_published", "Publish attempts of stored batches", u.published)
        yield counter("batches_acknowledged", "Batches the broker acknowledged (PUBACK)",
                      u.acknowledged)
        yield counter("readings_acknowledged", "Readings in acknowledged batches",
                      u.readings_acknowledged)
        yield counter("buffer_write_errors", "Failed writes to the buffer (e.g. disk full)",
                      b.write_errors)
        dropped_b = CounterMetricFamily("ssc_agent_dropped_batches",
                                        "Batches dropped from the buffer", labels=["reason"])
        dropped_r = CounterMetricFamily("ssc_agent_dropped_readings",
                                        "Readings dropped, by reason", labels=["reason"])
        s, totals = self._snapshot
        for reason, (batches, readings) in sorted(totals.items()):
            dropped_b.add_metric([reason], batches)
            dropped_r.add_metric([reason], readings)
        yield dropped_b
        yield dropped_r
        yield counter("dropped_events", "Events (device down/up, outages) in dropped batches",
                      s.dropped_events)
        yield counter("dropped_aggregates", "Closed KPI windows in dropped batches",
                      s.dropped_aggregates)
        yield gauge("backlog_batches", "Stored batches not yet acknowledged", s.batches)
        yield gauge("backlog_readings", "Readings in stored batches not yet acknowledged",
                    s.readings)
        # elapsed time, not a wall-clock difference: an NTP step must not show a bogus age
        age = 0.0 if s.oldest_age_ms is None else (
            s.oldest_age_ms / 1000 + self._monotonic() - self._taken)
        yield gauge("backlog_age_seconds", "Age of the oldest unacknowledged batch", age)
        yield gauge("buffer_file_bytes", "Size of the buffer's SQLite files", s.file_bytes)
        yield gauge("uplink_connected", "1 while connected to the broker", int(u.connected))
        yield counter("uplink_disconnects", "Connection attempts that failed or dropped",
                      u.disconnects)
        up = GaugeMetricFamily("ssc_agent_device_up", "1 while the device answers",
                               labels=["device"])
        polls = CounterMetricFamily("ssc_agent_device_polls", "Polls of a device",
                                    labels=["device"])
        fails = CounterMetricFamily("ssc_agent_device_failures", "Failed polls of a device",
                                    labels=["device"])
        overruns = CounterMetricFamily("ssc_agent_device_overruns",
                                       "Polls that overran their interval", labels=["device"])
        skipped = CounterMetricFamily("ssc_agent_device_skipped_slots",
                                      "Slots not polled because a poll overran into them",
                                      labels=["device"])
        for p in self._pollers:
            up.add_metric([p.name], 0 if p.stats.down else 1)
            polls.add_metric([p.name], p.stats.polls)
            fails.add_metric([p.name], p.stats.failures)
            overruns.add_metric([p.name], p.stats.overruns)
            skipped.add_metric([p.name], p.stats.skipped_slots)
        yield from (up, polls, fails, overruns, skipped)


def start_metrics_server(collector: DeliveryCollector, address: str, port: int) -> None:
    """Serve ``/metrics`` on ``address:port`` from a daemon thread (prometheus_client's own)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    start_http_server(port, addr=address, registry=registry)
