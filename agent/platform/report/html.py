"""The report as one self-contained HTML page for a council (docs/reports.md §6): headings,
plain words, units, the limits' sources cited, inline CSS and inline SVG charts, no script
and no external asset. Everything that comes from the city config, the catalogue or the
database is escaped.

Each figure's cell carries ``data-fig`` (a stable key, the same as the JSON's and CSV's
``key``) so that a test or a reader's tool can find it; the text shown is :func:`shown`.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape

from agent.platform.report import svg
from agent.platform.report.model import IndicatorReport, LimitInfo, Report, TargetReport
from agent.platform.report.trend import Figure

__all__ = ["render_html", "shown"]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.7rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.5rem}
h3{margin-top:1.5rem}table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;white-space:nowrap}
.ok{color:#1e7b34;font-weight:600}.bad{color:#b3261e;font-weight:600}
.invalid{color:#8a5a00}.na{color:#777}.small{font-size:.85rem;color:#555}
.legend span{display:inline-block;width:.9rem;height:.9rem;margin:0 .3rem 0 1rem;
vertical-align:middle}svg{max-width:100%;height:auto}
.cal{display:inline-block;margin:.3rem 1rem .3rem 0}
"""


def _fmt(value: float, unit: str = "") -> str:
    if unit in ("d", "h") and float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.1f}"


def shown(figure: Figure, unit: str = "") -> str:
    """The text a figure is shown as: its value rounded (counts of days or hours whole,
    others to one decimal), else ``not valid`` (what the report shows next to it says why)."""
    if figure.valid and figure.value is not None:
        return _fmt(figure.value, unit)
    return "not valid"


def _figure(figure: Figure, unit: str, key: str) -> str:
    if figure.valid and figure.value is not None:
        return (f'<td class="num" data-fig="{escape(key)}">{escape(shown(figure, unit))} '
                f"{escape(unit)}</td>")
    partial = ("" if figure.partial is None else
               f" (from the data present: {escape(_fmt(figure.partial, unit))} {escape(unit)})")
    return (f'<td class="invalid" data-fig="{escape(key)}">not valid: '
            f"{escape(figure.reason)}{partial}</td>")


def _verdict(meets: bool | None, why: str, words: tuple[str, str] = ("meets", "exceeds")) -> str:
    if meets is None:
        return f'<span class="na">not judged: {escape(why)}</span>' if why else ""
    return (f'<span class="ok">{words[0]}</span>' if meets else
            f'<span class="bad">{words[1]}</span>')


def _limit_line(info: LimitInfo) -> str:
    words = {">": "over", ">=": "at or over"}[info.comparison]
    text = f"{info.value:g} {info.unit} ({info.averaging} average)"
    if info.allowed is not None:
        text += f", {words} it on at most {info.allowed} per year"
    if info.percentile is not None:
        text += f" (equivalent: the {info.percentile:g}th percentile at or under it)"
    if info.years_averaged:
        text += f", averaged over {info.years_averaged} years"
    return text


def _limits_table(section: IndicatorReport) -> str:
    rows = []
    for info in section.limits:
        note = "" if info.verified else f" <em>(not verified: {escape(info.note)})</em>"
        applies = f"from {info.applies_from}" if info.applies_from else ""
        rows.append(f"<tr><td>{escape(info.label)}</td><td>{escape(_limit_line(info))}</td>"
                    f"<td>{escape(applies)}</td><td class=small>{escape(info.source)}: "
                    f"{escape(info.ref)}{note}</td></tr>")
    if not rows:
        return "<p>No limit value or guideline level applies to this indicator.</p>"
    return ("<table><tr><th>Limit</th><th>Value</th><th>Applies</th><th>Source</th></tr>"
            + "".join(rows) + "</table>")


def _stations_table(section: IndicatorReport) -> str:
    labels = {info.key: info for info in section.limits}
    rows = []
    for station in section.stations:
        for sy in station.years:
            cells = [f"<td>{escape(station.name)}<br><span class=small>"
                     f"{escape(station.source or station.problem)}</span></td>",
                     f"<td>{sy.year}</td>"]
            if sy.figure is not None:
                cells.append(f"<td>{escape(sy.what)}</td>"
                             + _figure(sy.figure, section.unit,
                                       f"{section.id}/{station.id}/{sy.year}"))
            else:
                cells.append("<td></td><td></td>")
            checks = []
            for check in sy.checks:
                info = labels.get(check.limit)
                name = escape(info.label if info else check.limit)
                value = (escape(shown(check.figure, check.unit)) + " " + escape(check.unit)
                         if check.figure.valid else
                         f"not valid ({escape(check.figure.reason)})")
                force = "" if check.in_force else " <span class=small>(not yet in force)</span>"
                checks.append(
                    f'<li data-fig="{escape(section.id)}/{escape(station.id)}/{sy.year}/'
                    f'{escape(check.limit)}/{escape(check.what)}">{name}: {escape(check.what)}'
                    f' = <b>{value}</b> {_verdict(check.meets, check.why)}{force}</li>')
            cells.append(f"<td><ul>{''.join(checks)}</ul></td>" if checks else "<td></td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
    return ("<table><tr><th>Station</th><th>Year</th><th>Figure</th><th>Value</th>"
            "<th>Against each limit</th></tr>" + "".join(rows) + "</table>")


def _city_table(section: IndicatorReport) -> str:
    labels = {info.key: info.label for info in section.limits}
    rows = [f"<tr><td>{escape(labels.get(c.limit, c.limit))}</td><td>{c.year}</td>"
            + _figure(c.share, "%", f"{section.id}/city/{c.year}/{c.limit}")
            + f"<td class=num>{c.share.n} of {c.share.expected}</td></tr>"
            for c in section.city_limits]
    rows += [f"<tr><td>{escape(c.what)}</td><td>{c.year}</td>"
             + _figure(c.figure, section.unit, f"{section.id}/city/{c.year}/{c.what}")
             + "<td></td></tr>" for c in section.city_figures]
    if not rows:
        return ""
    return ("<h3>City-wide</h3><table><tr><th>Share of stations meeting / figure</th>"
            "<th>Year</th><th>Value</th><th>Stations</th></tr>" + "".join(rows) + "</table>")


def _charts(section: IndicatorReport, report: Report) -> Iterable[str]:
    lines = [(s.name, s.daily) for s in section.stations if s.daily]
    if lines:
        daily_limits = [(f"{info.label} {info.value:g}", info.value) for info in section.limits
                        if info.averaging in ("1 d", "8 h") or (
                            section.window == "1 d" and info.averaging == "1 y")]
        what = "daily mean" if section.window == "1 h" else "daily value"
        unit = (section.limits[0].unit if section.statistic == "exceedances"
                and section.limits else section.unit)
        yield (f"<h3>Time series ({what}s)</h3>"
               + svg.time_series(f"{section.name}: {what}s", unit, report.first, report.last,
                                 lines=lines, limits=daily_limits[:4]))
    if section.calendar_limit and any(s.calendar for s in section.stations):
        info = next(i for i in section.limits if i.key == section.calendar_limit)
        hourly = section.window == "1 h"
        yield (f"<h3>Exceedance calendars: {escape(info.label)} ({info.value:g} {escape(info.unit)}"
               f")</h3><p class=legend><span style=background:#8fd19e></span>not over"
               f"<span style=background:#ff0028></span>{'hours over' if hourly else 'over'}"
               "<span style=background:#ccc></span>no valid value (blank: outside the period)"
               "</p>")
        for station in section.stations:
            for year in report.years:
                if station.calendar:
                    yield (f'<div class=cal><div class=small>{escape(station.name)}, {year}'
                           "</div>" + svg.calendar(f"{station.name} {year}", year,
                                                  station.calendar, hourly) + "</div>")


def _indicator(section: IndicatorReport, report: Report) -> str:
    parts = [f'<h2 id="{escape(section.id)}">{escape(section.name)} '
             f"({escape(section.unit)})</h2><p>{escape(section.description)}</p>"]
    meta = []
    if section.u4ssc:
        meta.append(f"U4SSC KPI {escape(section.u4ssc)}")
    meta += [f"SDG {escape(s)}" for s in section.sdgs]
    if section.kpi:
        meta.append(f"from the gateways' KPI <code>{escape(section.kpi)}</code> "
                    f"({escape(section.window or '')} windows)")
    parts.append(f"<p class=small>{'; '.join(meta)}</p>")
    if section.not_computed:
        parts.append(f'<p class="invalid" data-fig="{escape(section.id)}">'
                     f"{escape(section.not_computed)}</p>")
        return "".join(parts)
    stations = ["<h3>Stations</h3>", _stations_table(section)] if section.stations else []
    parts += [_limits_table(section), *stations, _city_table(section),
              *_charts(section, report)]
    return "".join(parts)


def _target(target: TargetReport) -> str:
    rows = "".join(
        f"<tr><td>{ty.year}</td>" + _figure(ty.figure, target.unit,
                                             f"target/{target.id}/{ty.year}")
        + f"<td>{_verdict(ty.meets, '', ('met', 'not met'))}</td></tr>" for ty in target.years)
    slope = (f"{target.slope.value:+.2f} {escape(target.unit)} a year"
             if target.slope.valid and target.slope.value is not None
             else f"not valid: {escape(target.slope.reason)}")
    goal = (f"{_fmt(target.target.value)} {escape(target.unit)}"
            if target.target.value is not None else f"not valid: {escape(target.target.reason)}")
    projection = (f"{_fmt(target.projection.value)} {escape(target.unit)}"
                  if target.projection.value is not None else
                  f"not valid: {escape(target.projection.reason)}")
    baseline = ""
    if target.baseline is not None and target.baseline.figure.value is not None:
        baseline = (f"<tr><th>Baseline {target.baseline.year} (city config)</th>"
                    f'<td data-fig="target/{escape(target.id)}/baseline">'
                    f"{_fmt(target.baseline.figure.value)} {escape(target.unit)}</td></tr>")
    return (f'<h3 id="target-{escape(target.id)}">{escape(target.name)}</h3>'
            f"<p>{escape(target.statement)}.</p>"
            f'<p><b data-fig="target/{escape(target.id)}/status">{escape(target.status)}</b></p>'
            f"<table><tr><th>Target value</th><td data-fig=\"target/{escape(target.id)}/value\">"
            f"{goal}</td></tr>{baseline}<tr><th>Trend (least squares)</th>"
            f"<td data-fig=\"target/{escape(target.id)}/slope\">{slope}</td></tr>"
            f"<tr><th>Projection to {target.by}</th>"
            f"<td data-fig=\"target/{escape(target.id)}/projection\">{projection}</td></tr>"
            "</table>"
            + (f"<table><tr><th>Year</th><th>Figure</th><th></th></tr>{rows}</table>"
               if rows else "")
            + _target_sites(target)
            + (svg.progress(target) if target.years else ""))


def _target_sites(target: TargetReport) -> str:
    """Each site's figure in each year, folded: which site holds the city back."""
    if not target.sites:
        return ""
    years = [ty.year for ty in target.years]
    head = "".join(f"<th>{year}</th>" for year in years)
    rows = "".join(
        f"<tr><td>{escape(site)}</td>"
        + "".join(_figure(ty.figure, target.site_unit,
                          f"target/{target.id}/{site}/{ty.year}").replace(
                              "</td>", f" {_verdict(ty.meets, '', ('met', 'not met'))}</td>", 1)
                  for ty in site_years)
        + "</tr>" for site, site_years in target.sites)
    return (f"<details><summary>Each site ({len(target.sites)})</summary><table><tr>"
            f"<th>Site</th>{head}</tr>{rows}</table></details>")


def render_html(report: Report) -> str:
    """The whole page."""
    title = f"{report.city}: city indicators {report.first} to {report.last}"
    toc = "".join(f'<li><a href="#{escape(s.id)}">{escape(s.name)}</a></li>'
                  for s in report.indicators)
    capture_rows = "".join(
        f"<tr><td>{escape(c.site_name)}</td><td><code>{escape(c.kpi)}</code></td>"
        f"<td>{escape(c.window)}</td>"
        + _figure(c.figure, "%", f"capture/{c.site}/{c.kpi}")
        + f"<td class=num>{c.figure.n} of {c.figure.expected}</td>"
        + f"<td class=invalid>{escape(c.short)}</td></tr>"
        for c in report.capture)
    sources = "".join(
        f"<li><b>{escape(s.id)}</b>: {escape(s.title)} ({escape(s.identifier)}), "
        f"{escape(s.url)}</li>" for s in report.sources)
    notes = "".join(f"<li>{escape(n)}</li>" for n in report.notes)
    body = [
        f"<h1>{escape(title)}</h1>",
        f"<p>Figures of the local dates {report.first} to {report.last} "
        f"({escape(report.timezone)}), computed from the KPI windows the city's gateways "
        f"sent, by the rules of the documents each limit cites. Generated "
        f"{escape(report.generated)}. A figure marked <span class=invalid>not valid</span> "
        "does not meet its data-capture rule: the report says why, and shows what the data "
        "present gives only as such.</p>",
        f"<h2>Contents</h2><ul><li><a href=#targets>Targets</a></li>{toc}"
        "<li><a href=#capture>Data capture</a></li><li><a href=#sources>Sources</a></li></ul>",
        "<h2 id=targets>Progress toward the city's targets</h2>",
        *(_target(t) for t in report.targets),
        "" if report.targets else "<p>The city config sets no target.</p>",
        *(_indicator(s, report) for s in report.indicators),
        "<h2 id=capture>Data capture per station</h2><p>Valid KPI windows of the windows the "
        "period holds. A yearly figure needs 90 % of its year (Directive 2008/50/EC, "
        "Annex I A).</p>",
        f"<table><tr><th>Station</th><th>KPI</th><th>Window</th><th>Capture</th>"
        f"<th>Windows</th><th></th></tr>{capture_rows}</table>",
        svg.capture_bars(report.capture) if report.capture else "",
        f"<h2 id=sources>Sources of the limits</h2><ul>{sources}</ul>",
        f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "",
    ]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
            f"{escape(title)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")
