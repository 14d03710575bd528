"""The report's charts as inline SVG text (no script, no external asset): a time series of
daily values against limits, a year's exceedance calendar, a target's progress with its trend
and projection, and data capture per station. Every label is escaped."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from html import escape

from agent.platform.report.model import Capture, TargetReport, TargetYear

__all__ = ["calendar", "capture_bars", "progress", "time_series"]

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#d62728")
LIMIT_COLOUR = "#c0392b"


def _n(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _svg(width: int, height: int, label: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">'
            f"<title>{escape(label)}</title>" + "".join(body) + "</svg>")


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 2)
            if first + i * step <= high + 1e-9]


def _scale(top: float, height: float, low: float, high: float) -> Callable[[float], float]:
    """Where a value goes on a plot's y axis (SVG's y grows downwards)."""
    def y(value: float) -> float:
        return top + height * (1 - (value - low) / (high - low))
    return y


def _frame(left: int, top: int, width: int, height: int, *,
           ticks: Sequence[tuple[float, float]], grid: bool) -> list[str]:
    """A plot's area and its y axis labels (``(value, y)``), with grid lines or without."""
    body = [f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="#fff" '
            'stroke="#999"/>']
    for value, y in ticks:
        if grid:
            body.append(f'<line x1="{left}" x2="{left + width}" y1="{_n(y)}" y2="{_n(y)}" '
                        'stroke="#eee"/>')
        body.append(f'<text x="{left - 4}" y="{_n(y + 4)}" text-anchor="end" '
                    f'font-size="11">{_n(value)}</text>')
    return body


def time_series(title: str, unit: str, first: date, last: date, *,
                lines: Sequence[tuple[str, Sequence[tuple[str, float | None]]]],
                limits: Sequence[tuple[str, float]], width: int = 900, height: int = 260) -> str:
    """Daily values of each station (gaps where a day has no valid value) and a horizontal
    line per limit."""
    left, right, top, bottom = 56, 170, 14, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for _, series in lines for _, v in series if v is not None]
    high = max([*values, *(v for _, v in limits), 1.0]) * 1.08
    low = min([0.0, *values])
    days = max((last - first).days, 1)
    def x(day: date) -> float:
        return left + plot_w * (day - first).days / days
    y = _scale(top, plot_h, low, high)
    body = _frame(left, top, plot_w, plot_h, ticks=[(t, y(t)) for t in _ticks(low, high)],
                  grid=True)
    month = date(first.year, first.month, 1)
    # over more than a year, January and July only: twelve labels a year would overlap
    shown_months = range(1, 13) if days <= 400 else (1, 7)
    while month <= last:
        if month >= first and month.month in shown_months:
            body.append(f'<text x="{_n(x(month))}" y="{height - 10}" font-size="10">'
                        f"{month:%b %Y}</text>" if month.month == 1 or month == first else
                        f'<text x="{_n(x(month))}" y="{height - 10}" font-size="10">'
                        f"{month:%b}</text>")
        month = date(month.year + month.month // 12, month.month % 12 + 1, 1)
    body.append(f'<text x="4" y="{top + 10}" font-size="11">{escape(unit)}</text>')
    for index, (name, series) in enumerate(lines):
        colour = PALETTE[index % len(PALETTE)]
        path: list[str] = []
        pen_up = True
        for day_text, v in series:
            if v is None:
                pen_up = True
                continue
            day = date.fromisoformat(day_text)
            path.append(f"{'M' if pen_up else 'L'}{_n(x(day))} {_n(y(v))}")
            pen_up = False
        if path:
            body.append(f'<path d="{"".join(path)}" fill="none" stroke="{colour}" '
                        f'stroke-width="1" opacity="0.8"><title>{escape(name)}</title></path>')
        if index < 12:
            body.append(f'<text x="{left + plot_w + 8}" y="{top + 12 + 13 * index}" '
                        f'font-size="11" fill="{colour}">{escape(name[:24])}</text>')
    if len(lines) > 12:
        body.append(f'<text x="{left + plot_w + 8}" y="{top + 12 + 13 * 12}" font-size="11">'
                    f"and {len(lines) - 12} more</text>")
    for index, (label, value) in enumerate(limits):
        # labels side by side along the line: two close limits must not print on each other
        body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{_n(y(value))}" '
                    f'y2="{_n(y(value))}" stroke="{LIMIT_COLOUR}" stroke-dasharray="6 3"/>'
                    f'<text x="{left + 4 + index * plot_w // max(len(limits), 1)}" '
                    f'y="{_n(y(value) - 3)}" font-size="10" fill="{LIMIT_COLOUR}" '
                    f'stroke="#fff" stroke-width="3" paint-order="stroke">'
                    f"{escape(label[:max(12, plot_w // max(len(limits), 1) // 6)])}</text>")
    return _svg(width, height, title, body)


def calendar(title: str, year: int, days: Sequence[tuple[str, int | None]],
             hourly: bool) -> str:
    """A year grid (weeks across, Monday to Sunday down) of the days in ``days``: green with
    no window over the limit, red with one (darker with more hours), grey without a valid
    value; days outside the period are left blank."""
    cell, left, top = 11, 28, 16
    by_day = {d: v for d, v in days if d.startswith(f"{year}-")}
    start = date(year, 1, 1)
    weeks = 54
    body = []
    for row, name in enumerate(("Mon", "", "Wed", "", "Fri", "", "Sun")):
        if name:
            body.append(f'<text x="0" y="{top + row * cell + 9}" font-size="9">{name}</text>')
    cells: dict[str, list[str]] = {}  # colour → the squares' path: one path a colour is small
    day = start
    while day.year == year:
        column = ((day - start).days + start.weekday()) // 7
        row = day.weekday()
        key = day.isoformat()
        if day.day == 1:
            body.append(f'<text x="{left + column * cell}" y="{top - 4}" font-size="9">'
                        f"{day:%b}</text>")
        if key in by_day:
            value = by_day[key]
            if value is None:
                colour = "#cccccc"
            elif value == 0:
                colour = "#8fd19e"
            else:
                shade = min(1.0, 0.45 + 0.1 * value) if hourly else 1.0
                colour = f"rgb({int(120 + 135 * shade)},{int(60 * (1 - shade))},40)"
            cells.setdefault(colour, []).append(
                f"M{left + column * cell} {top + row * cell}h{cell - 1}v{cell - 1}h-{cell - 1}z")
        day += timedelta(days=1)
    body += [f'<path fill="{colour}" d="{"".join(squares)}"/>'
             for colour, squares in cells.items()]
    return _svg(left + weeks * cell, top + 7 * cell + 2, title, body)


def progress(target: TargetReport, width: int = 640, height: int = 240) -> str:
    """A target's yearly figures (dots), the target value (dashed line), the trend (line)
    and its projection to the target year (dotted)."""
    left, right, top, bottom = 56, 20, 14, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    judged: list[TargetYear] = [target.baseline] if target.baseline else []
    judged += target.years
    points = [(ty.year, ty.figure.value) for ty in judged
              if ty.figure.valid and ty.figure.value is not None]
    years = [ty.year for ty in judged] or [target.by]
    first, last = min(years), max(*years, target.by)
    numbers = [v for _, v in points]
    goal = target.target.value
    if goal is not None:
        numbers.append(goal)
    if target.projection.value is not None:
        numbers.append(target.projection.value)
    high = max([*numbers, 1.0]) * 1.1
    low = min([0.0, *numbers])
    span = max(last - first, 1)
    def x(year: float) -> float:
        return left + plot_w * (year - first) / span
    y = _scale(top, plot_h, low, high)
    body = _frame(left, top, plot_w, plot_h, ticks=[(t, y(t)) for t in _ticks(low, high)],
                  grid=False)
    step = max(1, span // 10)
    for year in range(first, last + 1, step):
        body.append(f'<text x="{_n(x(year))}" y="{height - 10}" font-size="10" '
                    f'text-anchor="middle">{year}</text>')
    if goal is not None:
        body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{_n(y(goal))}" '
                    f'y2="{_n(y(goal))}" stroke="{LIMIT_COLOUR}" stroke-dasharray="6 3"/>'
                    f'<text x="{left + 4}" y="{_n(y(goal) - 4)}" font-size="10" '
                    f'fill="{LIMIT_COLOUR}">target {escape(_n(goal))} {escape(target.unit)}'
                    "</text>")
    if target.slope.valid and target.slope.value is not None and target.intercept is not None:
        a, b = target.intercept, target.slope.value
        x0, x1 = min(y_ for y_, _ in points), max(y_ for y_, _ in points)
        body.append(f'<line x1="{_n(x(x0))}" y1="{_n(y(a + b * x0))}" x2="{_n(x(x1))}" '
                    f'y2="{_n(y(a + b * x1))}" stroke="#333" stroke-width="1.5"/>'
                    f'<line x1="{_n(x(x1))}" y1="{_n(y(a + b * x1))}" '
                    f'x2="{_n(x(target.by))}" y2="{_n(y(a + b * target.by))}" stroke="#333" '
                    'stroke-dasharray="2 3"/>'
                    f'<circle cx="{_n(x(target.by))}" cy="{_n(y(a + b * target.by))}" r="4" '
                    'fill="none" stroke="#333"><title>projection</title></circle>')
    for year, value in points:
        if target.baseline is not None and year == target.baseline.year:  # given, not measured
            body.append(f'<rect x="{_n(x(year) - 4)}" y="{_n(y(value) - 4)}" width="8" '
                        'height="8" fill="none" stroke="#1f77b4" stroke-width="2">'
                        f"<title>baseline {year}: {_n(value)}</title></rect>")
            continue
        body.append(f'<circle cx="{_n(x(year))}" cy="{_n(y(value))}" r="4" fill="#1f77b4">'
                    f"<title>{year}: {_n(value)}</title></circle>")
    return _svg(width, height, f"progress toward {target.name}", body)


def capture_bars(rows: Sequence[Capture], width: int = 640) -> str:
    """Data capture per station and KPI: a bar each, the 90 % line a yearly figure needs."""
    left, bar, gap, top = 260, 12, 4, 16
    plot_w = width - left - 50
    height = top + len(rows) * (bar + gap) + 20
    body = []
    for index, row in enumerate(rows):
        share = row.figure.value if row.figure.value is not None else row.figure.partial
        y0 = top + index * (bar + gap)
        label = f"{row.site_name} · {row.kpi}"
        body.append(f'<text x="{left - 6}" y="{y0 + bar - 2}" text-anchor="end" '
                    f'font-size="11">{escape(label[:42])}</text>')
        if share is not None:
            colour = "#e67e22" if row.short else "#2ca02c"
            body.append(f'<rect x="{left}" y="{y0}" width="{_n(plot_w * share / 100)}" '
                        f'height="{bar}" fill="{colour}"><title>{escape(label)}: '
                        f"{share:.1f} %</title></rect>"
                        f'<text x="{_n(left + plot_w * share / 100 + 4)}" y="{y0 + bar - 2}" '
                        f'font-size="10">{share:.1f} %</text>')
        else:
            body.append(f'<text x="{left + 4}" y="{y0 + bar - 2}" font-size="10">no data'
                        "</text>")
    x90 = left + plot_w * 0.9
    body.append(f'<line x1="{_n(x90)}" x2="{_n(x90)}" y1="{top - 4}" y2="{height - 16}" '
                f'stroke="{LIMIT_COLOUR}" stroke-dasharray="4 3"/><text x="{_n(x90)}" '
                f'y="{top - 6}" font-size="10" text-anchor="middle">90 %</text>')
    return _svg(width, height, "data capture per station", body)
