"""A real 3-node NATS cluster (Debian ``nats-server``) on free 127.0.0.1 ports: JetStream and
MQTT on every node, as the platform's clustered broker tier runs (docs/platform.md §3).

:class:`NatsCluster` writes one config per node (client ``listen``, ``cluster`` with routes to
the other two, ``jetstream`` with its own store, ``mqtt`` listener, distinct ``server_name``),
starts the nodes and waits until JetStream has a meta leader. Tests share one cluster per
module (it takes a few seconds to form); a node can be SIGKILLed and started again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _die_with_parent, free_port, stop_process

NATS_SERVER = "nats-server"
READY_TIMEOUT = 30.0


def _require_nats_server() -> str:
    found = shutil.which(NATS_SERVER) or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
    if found is not None:
        return found
    reason = "nats-server is not installed (apt install nats-server)"
    if os.environ.get("SSC_REQUIRE_NATS"):
        pytest.fail(f"{reason}, and SSC_REQUIRE_NATS is set")
    pytest.skip(reason)


class NatsNode:
    """One nats-server of the cluster."""

    def __init__(self, binary: str, workdir: Path, name: str) -> None:
        self.binary = binary
        self.name = name
        self.workdir = workdir
        self.port = free_port()
        self.cluster_port = free_port()
        self.mqtt_port = free_port()
        self.monitor_port = free_port()
        self.conf_path = workdir / f"{name}.conf"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The NATS client URL."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def mqtt_url(self) -> str:
        """The MQTT URL gateways connect to."""
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def write_config(self, cluster: str, peers: list[NatsNode]) -> None:
        routes = ", ".join(f"nats-route://127.0.0.1:{p.cluster_port}" for p in peers)
        store = self.workdir / f"{self.name}-js"
        self.conf_path.write_text(
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.monitor_port}\n"
            f'cluster {{ name: "{cluster}", listen: 127.0.0.1:{self.cluster_port}, '
            f"routes: [{routes}] }}\n"
            f'jetstream {{ store_dir: "{store}" }}\n'
            # the MQTT side's streams (QoS 1 messages, sessions) on all three nodes
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}, stream_replicas: 3 }}\n"
        )

    def start(self) -> None:
        """Start the node (its JetStream store survives restarts)."""
        assert not self.alive, f"{self.name} already runs"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)], stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509  # nothing but prctl runs there
            )

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the node and reap it."""
        assert self.proc is not None and self.alive
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> None:
        """Stop the node: SIGTERM, then SIGKILL."""
        if self.proc is not None:
            stop_process(self.proc, 5)

    def jsz(self) -> dict[str, object]:
        """The node's JetStream monitoring page (``/jsz``); {} while it does not answer."""
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.monitor_port}/jsz", timeout=1) as page:
                data: dict[str, object] = json.load(page)
                return data
        except (OSError, ValueError):
            return {}

    def log_text(self) -> str:
        """What the node logged (all runs)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class NatsCluster:
    """Three nodes routed to each other, JetStream and MQTT on each."""

    def __init__(self, workdir: Path, size: int = 3, name: str = "ssc") -> None:
        binary = _require_nats_server()
        workdir.mkdir(parents=True, exist_ok=True)
        self.nodes = [NatsNode(binary, workdir, f"n{i + 1}") for i in range(size)]
        for node in self.nodes:
            node.write_config(name, [p for p in self.nodes if p is not node])

    @property
    def urls(self) -> str:
        """Every node's NATS URL, comma-separated (``--source``)."""
        return ",".join(n.url for n in self.nodes)

    @property
    def mqtt_urls(self) -> list[str]:
        """Every node's MQTT URL."""
        return [n.mqtt_url for n in self.nodes]

    def start(self) -> None:
        """Start every node not running and wait until JetStream has a meta leader."""
        for node in self.nodes:
            if not node.alive:
                node.start()
        self.wait_ready()

    def meta_leader(self) -> str | None:
        """The JetStream meta leader's server name as a running node sees it, or None."""
        for node in self.nodes:
            if not node.alive:
                continue
            meta = node.jsz().get("meta_cluster")
            if isinstance(meta, dict) and meta.get("leader"):
                return str(meta["leader"])
        return None

    def wait_ready(self, seconds: float = READY_TIMEOUT) -> None:
        """Wait until every running node answers and the cluster has a meta leader."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None and node.proc.returncode:
                    raise RuntimeError(f"{node.name} exited: {node.log_text()[-2000:]}")
            if self.meta_leader() is not None and all(
                    node.jsz() for node in self.nodes if node.alive):
                return
            time.sleep(0.1)
        logs = "\n".join(n.log_text()[-1500:] for n in self.nodes)
        raise RuntimeError(f"no JetStream meta leader after {seconds} s:\n{logs}")

    def node(self, name: str) -> NatsNode:
        """The node called ``name``."""
        return next(n for n in self.nodes if n.name == name)

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.terminate()


@contextlib.contextmanager
def running_cluster(path: Path) -> Iterator[NatsCluster]:
    """A started 3-node cluster with its files under ``path``, stopped on the way out."""
    nodes = NatsCluster(path)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
