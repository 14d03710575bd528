"""City KPIs at the edge (docs/kpis.md): calendar windows, operators, streaming engine, replay.

Import from the modules themselves (``agent.kpi.engine``, ``agent.kpi.replay``, …): config
validation imports this package, and an agent without ``[[kpis]]`` should not pay for the
engine (docs/architecture.md "Footprint").
"""
