"""The report as JSON (every figure, its validity and why) and as CSV (one row per figure,
the same ``key`` the HTML's ``data-fig`` carries); docs/reports.md §7."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterator
from typing import Any

from agent.platform.report.model import Report
from agent.platform.report.trend import Figure

__all__ = ["CSV_COLUMNS", "csv_rows", "render_csv", "render_json"]

CSV_COLUMNS = ("key", "section", "indicator", "station", "year", "what", "value", "unit",
               "valid", "reason", "n", "expected", "partial", "meets")


def render_json(report: Report) -> str:
    """The whole report as one JSON document (keys are the model's field names)."""
    return json.dumps(dataclasses.asdict(report), default=str, ensure_ascii=False, indent=1)


Head = tuple[str, str, str, int | str, str]  # section, indicator, station, year, what


def _row(key: str, head: Head, figure: Figure, unit: str, *, meets: bool | None = None
         ) -> dict[str, Any]:
    section, indicator, station, year, what = head
    return {"key": key, "section": section, "indicator": indicator, "station": station,
            "year": year, "what": what, "value": "" if figure.value is None else figure.value,
            "unit": unit, "valid": int(figure.valid), "reason": figure.reason,
            "n": "" if figure.n is None else figure.n,
            "expected": "" if figure.expected is None else figure.expected,
            "partial": "" if figure.partial is None else figure.partial,
            "meets": "" if meets is None else int(meets)}


def csv_rows(report: Report) -> Iterator[dict[str, Any]]:
    """Every figure the HTML shows, one row each."""
    for t in report.targets:
        yield _row(f"target/{t.id}/value", ("target", t.indicator, "", t.by, "target value"),
                   t.target, t.unit)
        if t.baseline is not None:
            yield _row(f"target/{t.id}/baseline",
                       ("target", t.indicator, "", t.baseline.year, "baseline (city config)"),
                       t.baseline.figure, t.unit)
        for ty in t.years:
            yield _row(f"target/{t.id}/{ty.year}",
                       ("target", t.indicator, "", ty.year, t.statement), ty.figure, t.unit,
                       meets=ty.meets)
        for site, site_years in t.sites:
            for ty in site_years:
                yield _row(f"target/{t.id}/{site}/{ty.year}",
                           ("target", t.indicator, site, ty.year, "the site's figure"),
                           ty.figure, t.site_unit, meets=ty.meets)
        yield _row(f"target/{t.id}/slope", ("target", t.indicator, "", "", "trend per year"),
                   t.slope, f"{t.unit}/yr")
        yield _row(f"target/{t.id}/projection",
                   ("target", t.indicator, "", t.by, f"projection ({t.status})"),
                   t.projection, t.unit, meets=t.on_track)
    for s in report.indicators:
        if s.not_computed:
            yield _row(s.id, ("indicator", s.id, "", "", s.name),
                       Figure.invalid(s.not_computed), s.unit)
        for station in s.stations:
            for sy in station.years:
                if sy.figure is not None:
                    yield _row(f"{s.id}/{station.id}/{sy.year}",
                               ("station", s.id, station.id, sy.year, sy.what), sy.figure,
                               s.unit)
                for check in sy.checks:
                    yield _row(f"{s.id}/{station.id}/{sy.year}/{check.limit}/{check.what}",
                               ("limit", s.id, station.id, sy.year, check.what), check.figure,
                               check.unit, meets=check.meets)
        for cl in s.city_limits:
            yield _row(f"{s.id}/city/{cl.year}/{cl.limit}",
                       ("city", s.id, "", cl.year, f"share of stations meeting {cl.limit}"),
                       cl.share, "%")
        for cf in s.city_figures:
            yield _row(f"{s.id}/city/{cf.year}/{cf.what}", ("city", s.id, "", cf.year, cf.what),
                       cf.figure, s.unit)
    for c in report.capture:
        yield _row(f"capture/{c.site}/{c.kpi}",
                   ("capture", "", c.site, "", f"{c.kpi} capture{'; ' if c.short else ''}"
                    f"{c.short}"), c.figure, "%", meets=not c.short)


def render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(report))
    return out.getvalue()
