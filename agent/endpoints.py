"""Broker URLs (``mqtt://host:port``, ``mqtts://host:port``): pure parsing."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the MQTT broker is and whether to speak TLS to it."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse a broker URL; credentials in it are refused (they belong in files)."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"{url!r}: a broker URL starts with mqtt:// or mqtts://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("put no credentials in the broker URL: use username and password_file")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host: write mqtt://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a broker URL has only a host and a port")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535") from exc
    return BrokerAddress(parts.hostname, port, parts.scheme == "mqtts")
