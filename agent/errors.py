"""One flat error tree; every message says what went wrong and what to do."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration is invalid; ``problems`` holds one line per error, each naming where."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class DeviceUnavailable(AgentError):
    """The device did not answer (timeout, refused, unplugged): retry with backoff."""


class DeviceProtocolError(AgentError):
    """The device answered, but wrongly (bad CRC, exception code, malformed frame)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        self.code = code
        super().__init__(message)


class BufferFull(AgentError):
    """The store-and-forward buffer cannot take more data (bounds or disk full)."""


class UplinkError(AgentError):
    """The MQTT uplink failed (connect, TLS, authorization, publish)."""


class WireFormatError(AgentError):
    """A payload is not a valid wire format v1 batch."""
