"""The monthly report as HTML (printed on A4 and signed) and as CSV (one header row).

The HTML is one self-contained file: its style inline, the alarms-per-day chart inline SVG,
no script and nothing loaded from elsewhere, so the CLI's file prints the same as the page the
console serves. `style_hash` gives the CSP source that lets exactly that style in.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from jaa_gateway.config import Config
from jaa_gateway.domain.report import ACK_WITHIN, Figures, MonthlyReport
from jaa_gateway.report import words as w

HERE = Path(__file__).parent
CSS = (HERE / "templates" / "report.css").read_text(encoding="utf-8")
CSV_COLUMNS = ("month", "scope", "location", "measure", "item", "label", "value")

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def style_hash() -> str:
    """The CSP source of the report's inline style: ``'sha256-…'``."""
    digest = hashlib.sha256(CSS.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


@dataclass(frozen=True)
class Nav:
    """Links shown on screen only (the console's page): previous / next month, CSV."""

    prev: str
    next: str | None
    csv: str


def _location_name(cfg: Config, lang: str, loc: str) -> str:
    found = cfg.location(loc)
    if found is not None:
        return found.name
    return w.words(lang)["removed_location"].format(id=loc)


def _person_name(cfg: Config, pid: str) -> str:
    p = cfg.person(pid)
    return p.name if p is not None else pid


def chart_svg(report: MonthlyReport, lang: str) -> Markup:
    """Bars of alarms per local day; weekends shaded; the count over each non-empty bar."""
    days = report.alarms_per_day
    width, height, left, bottom, top = 640.0, 150.0, 26.0, 20.0, 14.0
    slot = (width - left - 4) / max(1, len(days))
    peak = max((n for _, n in days), default=0)
    scale_max = max(1, peak)
    plot_h = height - bottom - top
    t = w.words(lang)
    title = t["per_day_desc"].format(
        month=w.month_name(lang, report.month.year, report.month.month)
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'role="img" aria-label="{escape(title)}" class="chart">',
        f"<title>{escape(title)}</title>",
    ]
    base_y = height - bottom
    for i, (day, n) in enumerate(days):
        x = left + i * slot
        if day.weekday() >= 5:
            out.append(
                f'<rect x="{x:.1f}" y="{top:.1f}" width="{slot:.1f}" height="{plot_h:.1f}" '
                'class="weekend"/>'
            )
        if n:
            h = plot_h * n / scale_max
            out.append(
                f'<rect x="{x + slot * 0.15:.1f}" y="{base_y - h:.1f}" width="{slot * 0.7:.1f}" '
                f'height="{h:.1f}" class="bar"><title>{day.isoformat()}: {n}</title></rect>'
            )
            out.append(
                f'<text x="{x + slot / 2:.1f}" y="{base_y - h - 2:.1f}" class="n">{n}</text>'
            )
        out.append(f'<text x="{x + slot / 2:.1f}" y="{height - 6:.1f}" class="d">{day.day}</text>')
    # the y axis: 0 and the peak
    out.append(
        f'<line x1="{left:.1f}" y1="{base_y:.1f}" x2="{width - 4:.1f}" y2="{base_y:.1f}" '
        'class="axis"/>'
    )
    out.append(f'<text x="{left - 4:.1f}" y="{base_y:.1f}" class="y">0</text>')
    out.append(f'<text x="{left - 4:.1f}" y="{top + 4:.1f}" class="y">{scale_max}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _row(lang: str, name: str, f: Figures, site: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "site": site,
        "sessions": f.sessions,
        "hours": w.number(lang, f.hours),
        "denied": f.denied,
        "alarms": f.alarm_count,
        "median": w.duration(lang, f.ack.median_s),
        "missed": f.checkins_missed,
        "unattended": f.unattended_entries,
    }


def _ack_row(lang: str, name: str, f: Figures, site: bool = False) -> dict[str, Any]:
    a = f.ack
    return {
        "name": name,
        "site": site,
        "alerted": a.alerted,
        "acknowledged": a.acknowledged,
        "unanswered": a.unanswered,
        "median": w.duration(lang, a.median_s),
        "p90": w.duration(lang, a.p90_s),
        "slowest": w.duration(lang, a.slowest_s),
        "within": [w.share(lang, a.within[s]) for s in ACK_WITHIN],
    }


def _breakdown(
    cfg: Config, lang: str, report: MonthlyReport, attr: str, label: Any
) -> list[dict[str, Any]]:
    total: dict[str, int] = getattr(report.site, attr)
    rows = []
    for key, n in total.items():
        where = [
            f"{_location_name(cfg, lang, loc)}: {getattr(f, attr)[key]}"
            for loc, f in report.locations.items()
            if getattr(f, attr).get(key)
        ]
        rows.append({"label": label(lang, key), "count": n, "where": "; ".join(where)})
    return rows


def _expiring(cfg: Config, lang: str, report: MonthlyReport) -> list[dict[str, Any]]:
    t = w.words(lang)
    out = []
    for e in report.expiring:
        v = e.item
        if v.what == "assessment":
            what = t["assessment"].format(id=v.id)
            places = ", ".join(_location_name(cfg, lang, x) for x in v.locations)
            concerns = _person_name(cfg, v.holder) + (f" ({places})" if places else "")
        else:
            what = t["training"]
            concerns = _person_name(cfg, v.holder)
        if e.days_after_month < 0:
            status = t["expired"]
        elif e.days_after_month == 0:
            status = t["ends_today"]
        elif e.days_after_month == 1:
            status = t["ends_in_one"]
        else:
            status = t["ends_in"].format(n=e.days_after_month)
        out.append(
            {
                "what": what,
                "concerns": concerns,
                "until": w.day_text(lang, v.until),
                "status": status,
                "expired": e.days_after_month < 0,
            }
        )
    return out


def html(cfg: Config, report: MonthlyReport, nav: Nav | None = None) -> str:
    lang = cfg.gateway.language
    t = w.words(lang)
    produced = dt.datetime.fromtimestamp(report.now, cfg.tz)
    locs = [_row(lang, _location_name(cfg, lang, loc), f) for loc, f in report.locations.items()]
    acks = [
        _ack_row(lang, _location_name(cfg, lang, loc), f)
        for loc, f in report.locations.items()
        if f.ack.alerted
    ]
    s = report.site
    return _env.get_template("monthly.html").render(
        t=t,
        lang=lang,
        css=Markup(CSS),
        site=cfg.gateway.site,
        month=w.month_name(lang, report.month.year, report.month.month),
        produced=t["produced"].format(when=f"{w.day_text(lang, produced.date())} {produced:%H:%M}"),
        zone=t["zone"].format(zone=cfg.gateway.timezone),
        s=s,
        site_hours=w.number(lang, s.hours),
        site_median=w.duration(lang, s.ack.median_s),
        within=[w.share(lang, s.ack.within[x]) for x in ACK_WITHIN],
        within_s=[int(x) for x in ACK_WITHIN],
        unlocated=report.unlocated_alarms,
        empty=s.empty,
        chart=chart_svg(report, lang),
        locations=[*locs, _row(lang, t["whole_site"], s, site=True)],
        reasons=_breakdown(cfg, lang, report, "denials", w.reason_label),
        kinds=_breakdown(cfg, lang, report, "alarms", w.kind_label),
        acks=[*acks, _ack_row(lang, t["whole_site"], s, site=True)] if s.ack.alerted else [],
        expiring=_expiring(cfg, lang, report),
        nav=nav,
    )


def _csv_rows(cfg: Config, report: MonthlyReport) -> Iterator[tuple[Any, ...]]:
    lang = cfg.gateway.language
    m = report.month.label
    scopes: list[tuple[str, str, Figures]] = [("site", "", report.site)]
    scopes += [("location", loc, f) for loc, f in report.locations.items()]
    for scope, loc, f in scopes:
        head = (m, scope, loc)
        yield (*head, "sessions", "", "", f.sessions)
        yield (*head, "sessions_ongoing", "", "", f.ongoing)
        yield (*head, "hours", "", "", f"{f.hours:.4f}")
        yield (*head, "denied_starts", "", "", f.denied)
        for reason, n in f.denials.items():
            yield (*head, "denied_starts", reason, w.reason_label(lang, reason), n)
        yield (*head, "alarms", "", "", f.alarm_count)
        for kind, n in f.alarms.items():
            yield (*head, "alarms", kind, w.kind_label(lang, kind), n)
        yield (*head, "alarms_cancelled_in_prealarm", "", "", f.cancelled)
        a = f.ack
        yield (*head, "alarms_alerted", "", "", a.alerted)
        yield (*head, "alarms_acknowledged", "", "", a.acknowledged)
        for measure, value in (
            ("ack_median_s", a.median_s),
            ("ack_p90_s", a.p90_s),
            ("ack_slowest_s", a.slowest_s),
        ):
            yield (*head, measure, "", "", "" if value is None else f"{value:.1f}")
        for secs in ACK_WITHIN:
            share = a.within[secs]
            yield (
                *head,
                f"ack_within_{int(secs)}s_share",
                "",
                "",
                "" if share is None else f"{share:.4f}",
            )
        yield (*head, "missed_checkins", "", "", f.checkins_missed)
        yield (*head, "unattended_entries", "", "", f.unattended_entries)
    yield (m, "site", "", "alarms_unlocated", "", "", report.unlocated_alarms)
    for day, n in report.alarms_per_day:
        yield (m, "site", "", "alarms_per_day", day.isoformat(), "", n)
    for e in report.expiring:
        v = e.item
        yield (
            m,
            "site",
            ";".join(v.locations),
            f"expiring_{v.what}",
            v.id if v.what == "assessment" else v.holder,
            _person_name(cfg, v.holder),
            v.until.isoformat(),
        )


def csv_text(cfg: Config, report: MonthlyReport) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in _csv_rows(cfg, report):
        writer.writerow(row)
    return buf.getvalue()
