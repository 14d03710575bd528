"""systemd's service notifications (``sd_notify``), spoken directly: no library needed.

A service started with ``Type=notify`` finds a datagram socket's address in ``$NOTIFY_SOCKET``
(a path, or an abstract name written with a leading ``@``) and sends it newline-separated
``KEY=VALUE`` lines: ``READY=1``, ``STATUS=…``, ``WATCHDOG=1``, ``RELOADING=1``,
``STOPPING=1``. Without the variable (run by hand, in a container, in tests) every send is a
no-op. A send that fails is logged once and never stops the agent: systemd not listening
must not cost a reading.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)

# STATUS= is shown by `systemctl status`; systemd keeps far more, but one line reads best.
MAX_STATUS_CHARS = 200


def socket_address(value: str | None) -> str | None:
    """The ``AF_UNIX`` address ``$NOTIFY_SOCKET`` names, or None when it names none we use.

    ``@name`` is Linux's abstract namespace (a leading NUL byte); ``/path`` a file system
    socket. systemd 254's ``vsock:`` addresses are not spoken here (None).
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_seconds(env: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout systemd set for this process (``WatchdogSec=``), or None.

    ``WATCHDOG_PID``, when set, names the process the watchdog is for: another process that
    inherited the environment (a child) must not feed it.
    """
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1_000_000


def status_text(text: str) -> str:
    """``text`` as one STATUS= value: one line, not too long."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_STATUS_CHARS else line[: MAX_STATUS_CHARS - 1] + "…"


class Notifier:
    """Sends notifications to the service manager named by ``$NOTIFY_SOCKET``, if any."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._sock: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(socket_address(env.get("NOTIFY_SOCKET")))

    @property
    def enabled(self) -> bool:
        """A service manager listens: notifications are sent."""
        return self._address is not None

    def send(self, *lines: str) -> bool:
        """Send ``lines`` in one datagram; True when it went out (False: disabled or failed)."""
        if self._address is None or not lines:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning("service_notify_failed", error=exc.strerror or str(exc),
                            what=lines[0].split("=", 1)[0])
            return False
        if self._failing:
            self._failing = False
            log.info("service_notify_works_again")
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status_text(status)}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status_text(status)}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (253+) tell this reload from an earlier one
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}",
                         "STATUS=reloading the config")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping: sealing the open batch, sending what "
                         "the uplink can")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
