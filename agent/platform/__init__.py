"""The platform side: what the central platform runs to receive the gateways' batches.

``receiver`` subscribes to the gateways' topics, decodes every message within bounds and
hands it to a ``sink`` that stores it (SQLite today), acknowledging only after the commit.
"""
