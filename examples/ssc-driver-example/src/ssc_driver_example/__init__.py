"""Example third-party driver for ssc-edge-agent: ASCII line-protocol sensors over TCP.

The agent finds it through the ``ssc_agent.drivers`` entry point ``ascii_tcp`` (see
``pyproject.toml``), which points at :data:`ssc_driver_example.driver.SPEC`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
