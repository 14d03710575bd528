"""MQTT addressing: broker URLs (``mqtt://host:port``, ``mqtts://host:port``) and topic
prefixes. Pure parsing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# A topic is {prefix}/{gateway id}/{batch|status}; MQTT allows 65,535 bytes, some brokers far
# fewer. 256 bytes of prefix keeps every topic under 330 bytes with a 64-character gateway id.
MAX_TOPIC_PREFIX_BYTES = 256
MAX_HOST_CHARS = 253  # DNS: longer names cannot be resolved


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
    if len(parts.hostname) > MAX_HOST_CHARS or any(
            len(label) > 63 for label in parts.hostname.split(".")):
        raise ValueError(f"{url!r}: a host name has at most {MAX_HOST_CHARS} characters, "
                         "63 per label")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a broker URL has only a host and a port")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535") from exc
    if port == 0:  # not "no port": it would have silently become the default one
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535")
    port = port or DEFAULT_PORTS[parts.scheme]
    return BrokerAddress(parts.hostname, port, parts.scheme == "mqtts")


def _has_credentials(url: str) -> bool:
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return False


def parse_broker_urls(value: str | Sequence[object]) -> tuple[BrokerAddress, ...]:
    """One broker URL, or a list of them that the uplink tries in turn (a clustered broker
    tier); a bad element is named by its position. All must agree on TLS."""
    if isinstance(value, str):
        urls: list[object] = [value]
    elif isinstance(value, Sequence) and value:
        urls = list(value)
    else:
        raise ValueError("give one broker URL or a non-empty list of them")
    addresses = []
    for index, url in enumerate(urls, 1):
        where = "" if isinstance(value, str) else f"element {index}: "
        if not isinstance(url, str):
            raise ValueError(  # noqa: TRY004  # a config problem, reported like the others
                f"{where}{repr(url)[:40]} is not a string: write a broker URL in quotes")
        # parse_broker_url quotes the URL in some messages: refuse credentials before that.
        if _has_credentials(url):
            raise ValueError(f"{where}put no credentials in the broker URL: use username and "
                             "password_file")
        try:
            addresses.append(parse_broker_url(url))
        except ValueError as exc:
            raise ValueError(f"{where}{exc}") from None
    if len({address.tls for address in addresses}) > 1:
        raise ValueError("mixes mqtt:// and mqtts://: all brokers must use TLS, or none")
    return tuple(addresses)


def printable_problem(text: str) -> str | None:
    """Why ``text`` cannot go into an MQTT string (a control character), or None."""
    for char in text:
        if ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F:
            return f"{text!r}: control character U+{ord(char):04X} is not allowed here"
    return None


def topic_prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot start every topic of a gateway, or None.

    Refused: empty levels (the receiver splits topics on '/'), wildcards (+ #: not allowed in
    a topic one publishes to), a leading '$' (brokers reserve $SYS/… and refuse publishes
    there), control characters, and more than MAX_TOPIC_PREFIX_BYTES bytes of UTF-8.
    """
    if not prefix:
        return "must not be empty, e.g. 'ssc/v1'"
    size = len(prefix.encode("utf-8", errors="surrogatepass"))
    if size > MAX_TOPIC_PREFIX_BYTES:
        return f"is {size:,} bytes long: at most {MAX_TOPIC_PREFIX_BYTES} bytes of UTF-8"
    if "#" in prefix or "+" in prefix:
        return f"{prefix!r}: MQTT wildcards # and + are not allowed in a topic prefix"
    if prefix.startswith("$"):
        return f"{prefix!r}: topics starting with '$' are reserved by the broker, e.g. 'ssc/v1'"
    if prefix.startswith("/") or prefix.endswith("/"):
        return f"{prefix!r}: no leading or trailing '/', e.g. 'ssc/v1'"
    if "//" in prefix:
        return f"{prefix!r}: topic levels must not be empty"
    if any(0xD800 <= ord(char) <= 0xDFFF for char in prefix):
        return f"{prefix!r}: not valid UTF-8 (a lone surrogate)"
    return printable_problem(prefix)
