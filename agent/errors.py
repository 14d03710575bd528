"""One flat error tree; every message says what went wrong and what to do."""

from __future__ import annotations

import re

# An error line echoes at most this much of a value: a 100,000-character name must not make a
# 100 kB log or terminal line.
EXCERPT_HEAD, EXCERPT_TAIL = 40, 20
_LONG_RUN = 100
# A quoted value (as repr() writes it) or an unbroken run of characters, longer than _LONG_RUN.
_QUOTED = re.compile(
    rf"'(?:[^'\\\n]|\\.){{{_LONG_RUN},}}'|\"(?:[^\"\\\n]|\\.){{{_LONG_RUN},}}\""
)
_UNBROKEN = re.compile(rf"[^\s'\"]{{{_LONG_RUN + 1},}}")
MAX_LINE_CHARS = 600


def excerpt(text: str) -> str:
    """``text`` itself when short, else its head and tail around an ellipsis."""
    if len(text) <= _LONG_RUN:
        return text
    return f"{text[:EXCERPT_HEAD]}…{text[-EXCERPT_TAIL:]}"


def _cut(match: re.Match[str]) -> str:
    text = match.group(0)
    quote = text[0] if text[0] in "'\"" else ""
    inner = text[1:-1] if quote else text
    return f"{quote}{excerpt(inner)}{quote} ({len(inner):,} characters)"


def shorten(line: str) -> str:
    """The line with every long value cut to a short excerpt (and the whole line capped)."""
    line = _UNBROKEN.sub(_cut, _QUOTED.sub(_cut, line))
    if len(line) > MAX_LINE_CHARS:
        line = f"{line[:MAX_LINE_CHARS]}… ({len(line):,} characters)"
    return line


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration is invalid; ``problems`` holds one line per error, each naming where."""

    def __init__(self, problems: list[str] | str) -> None:
        lines = [problems] if isinstance(problems, str) else problems
        self.problems = [shorten(line) for line in lines]
        super().__init__("\n".join(self.problems))


class DeviceUnavailable(AgentError):
    """The device did not answer (timeout, refused, unplugged): retry with backoff."""


class PortMissing(DeviceUnavailable):
    """The device's serial port is not there (USB adapter unplugged, or not plugged in yet):
    retried at every slot, since opening a missing path costs nothing on the wire."""


class DeviceProtocolError(AgentError):
    """The device answered, but wrongly (bad CRC, exception code, malformed frame)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        self.code = code
        super().__init__(message)


class StorageError(AgentError):
    """The data_dir or its store cannot be used at all (cannot be created, not writable, in
    use by another agent, locked): the agent cannot start; ``run`` exits 2 with one line."""


class BufferFull(AgentError):
    """The store-and-forward buffer cannot take more data (bounds or disk full)."""


class UplinkError(AgentError):
    """The MQTT uplink failed (connect, TLS, authorization, publish)."""


class WireFormatError(AgentError):
    """A payload is not a valid wire format v1 batch."""


def first_line(exc: BaseException) -> str:
    """An error's first line, at most 300 characters (a database's message can be a page)."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
