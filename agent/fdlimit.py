"""Open files (file descriptors): the agent needs one per device with its own connection.

A Linux process starts with a soft limit of 1,024 open files (systemd's default too); with
about a thousand Modbus TCP devices the agent runs out, and every further connect fails at
once, which looked like "connection refused" per device. :func:`raise_open_files_limit` lifts
the soft limit towards the hard one at start; :func:`fds_exhausted` tells a connect that failed
for want of a descriptor from one the device refused, and :func:`report_fds_exhausted` says so
once, naming the limit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import socket
from dataclasses import dataclass

import structlog

__all__ = [
    "FD_RESERVE",
    "OpenFiles",
    "fds_exhausted",
    "open_files_limit",
    "prepare_open_files",
    "raise_open_files_limit",
    "report_fds_exhausted",
]

log = structlog.get_logger(__name__)

# Descriptors the agent uses besides device connections: SQLite (database, WAL, shm, seq
# file), the MQTT socket, the event loop's epoll and self-pipe, metrics, std streams, imports.
FD_RESERVE = 48
# When the hard limit is unlimited, raise the soft one this far, not to "infinity".
_UNLIMITED_TARGET = 65536


@dataclass(frozen=True, slots=True)
class OpenFiles:
    """The open-files limits after start: ``soft`` is what the agent may use."""

    soft: int
    hard: int
    raised_from: int | None  # the soft limit before start, if it was raised


def open_files_limit() -> int:
    """The current soft limit on open files."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_files_limit() -> OpenFiles:
    """Lift the soft limit to the hard limit (an unprivileged process may); never lowers it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return OpenFiles(soft, hard, None)  # a sandbox may forbid it: keep what we have
        return OpenFiles(target, hard, soft)
    return OpenFiles(soft, hard, None)


def fds_exhausted() -> bool:
    """True when the process cannot open one more descriptor (EMFILE, or ENFILE system-wide)."""
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    probe.close()
    return False


class _Reported:
    done = False


def report_fds_exhausted() -> str:
    """The reason to give a device whose connect failed for want of a descriptor.

    Logs ``fd_limit_reached`` once per process: it is one condition of the agent, not one per
    device (each device still reports itself down, with this reason).
    """
    limit = open_files_limit()
    reason = (
        f"no file descriptor left for its connection (the open files limit, {limit}, is "
        "reached): raise LimitNOFILE= in the systemd unit, or poll fewer devices per agent"
    )
    if not _Reported.done:
        _Reported.done = True
        in_use = None
        with contextlib.suppress(OSError):
            in_use = len(os.listdir("/proc/self/fd"))
        log.error("fd_limit_reached", limit=limit, open_files=in_use,
                  hint="raise LimitNOFILE= in the systemd unit, or poll fewer devices")
    return reason


def prepare_open_files(devices: int) -> OpenFiles:
    """At agent start: raise the soft limit, log it, and warn when the devices will not fit.

    ``devices`` counts the enabled devices: at most one connection each (devices on a bus or
    a shared endpoint share one).
    """
    limits = raise_open_files_limit()
    if limits.raised_from is not None:
        log.info("open_files_limit_raised", soft=limits.soft, hard=limits.hard,
                 was=limits.raised_from)
    needed = devices + FD_RESERVE
    if needed > limits.soft:
        log.warning("fd_limit_low", limit=limits.soft, hard_limit=limits.hard, devices=devices,
                    needed=needed,
                    hint="raise LimitNOFILE= in the systemd unit, or poll fewer devices")
    return limits
