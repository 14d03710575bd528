"""The technician's tools: ``demo`` (the whole chain on one machine) and ``sample_config``
(``ssc-agent init``). Driver-specific tools (probe, scan, simulate) live in each driver's
folder under ``drivers/``.
"""
