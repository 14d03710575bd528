"""ssc-edge-agent: poll city meters and sensors, compute KPIs, forward batches over MQTT."""

from agent.errors import (
    AgentError,
    BufferFull,
    ConfigError,
    DeviceProtocolError,
    DeviceUnavailable,
    UplinkError,
    WireFormatError,
)

__version__ = "0.1.0"

__all__ = [
    "AgentError",
    "BufferFull",
    "ConfigError",
    "DeviceProtocolError",
    "DeviceUnavailable",
    "UplinkError",
    "WireFormatError",
    "__version__",
]
