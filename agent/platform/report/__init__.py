"""``ssc-agent report``: the city's indicators and its progress toward its targets, from the
KPI windows the receiver stored (docs/reports.md).

The package: ``reader`` (the stored windows, through the sinks' read-only query function),
``figures`` (a station's yearly figures and their checks against each limit, by
:mod:`agent.platform.statistics`), ``trend`` (least-squares trend and projection, data
capture, the share of stations meeting a limit: pure), ``compute`` (the report of a city and a
period), ``targets`` (progress toward each target), ``model`` (what a report holds),
``inputs`` (what it reads of a city config), ``svg`` and ``html`` (the self-contained page),
``export`` (JSON and CSV), ``command`` (the command line). Nothing here touches a gateway.
"""
