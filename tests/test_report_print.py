"""The report's HTML printed by Debian's Chromium (headless, --print-to-pdf): one or two A4
pages for a busy month of a site with several locations, and for an empty month.

Pages are counted in the PDF itself (its page objects and their MediaBox), no poppler needed.
With $REPORT_SCREENSHOTS set, the busy month's HTML and a PNG of its first page go there (the
README's come from `REPORT_SCREENSHOTS=docs/report pytest tests/test_report_print.py`).
Skipped with the reason when Chromium is missing, except under CI=true (tests/support/browser).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from jaa_gateway.config import Config
from jaa_gateway.domain.report import (
    AlarmRow,
    CheckinDueRow,
    DenialRow,
    MonthlyReport,
    Rows,
    SessionRow,
    month_of,
    monthly_report,
)
from jaa_gateway.report import render
from jaa_gateway.report.service import validity
from tests.support.browser import CHROMIUM_FLAGS, chromium_path
from tests.support.cfg import config_dict, make_config, oslo

pytestmark = pytest.mark.browser

A4_PT = (595.0, 842.0)  # 210 x 297 mm in points


def busy_site(lang: str = "nb") -> Config:
    d: dict[str, Any] = config_dict()
    d["gateway"]["site"] = "gloshaugen"
    d["gateway"]["language"] = lang
    chain = d["locations"][0]["escalation"]
    d["locations"] += [
        {
            "id": "k5-012",
            "name": "Kjemiblokk 5, K5-012 (syrelab)",
            "kind": "lab",
            "escalation": chain,
        },
        {
            "id": "verksted",
            "name": "Mekanisk verksted, hall B",
            "kind": "workshop",
            "escalation": chain,
        },
        {"id": "felt-dovre", "name": "Feltarbeid Dovrefjell", "kind": "field", "escalation": chain},
        {
            "id": "el-lab",
            "name": "Elektrobygget E-214 (høyspentlab)",
            "kind": "lab",
            "escalation": chain,
        },
    ]
    for p in d["people"]:
        if p["id"] == "nils":
            p["hse_training_until"] = "2026-11-20"
        if p["id"] == "ola":
            p["hse_training_until"] = "2026-12-18"
    d["assessments"][0]["valid_until"] = "2026-12-12"
    return make_config(d)


def busy_month(cfg: Config) -> MonthlyReport:
    """October 2026 (the clocks go back on the 25th): sessions every weekday, denials, alarms
    of several kinds, one never acknowledged, a cancelled pre-alarm, missed check-ins."""
    month = month_of("2026-10", cfg.tz)
    locs = [x.id for x in cfg.locations]
    sessions, denials, alarms, dues = [], [], [], []
    n = 0
    for day in month.days():
        if day.weekday() >= 5 and day.day % 3:
            continue
        for i, loc in enumerate(locs):
            if (day.day + i) % 3 == 0:
                continue
            n += 1
            start = oslo(day.year, day.month, day.day, 16 + i % 3, 10 * i)
            length = dt.timedelta(hours=1 + (n % 4) * 0.75)
            sessions.append(
                SessionRow(f"s{n}", "ola", loc, start.timestamp(), (start + length).timestamp())
            )
            if n % 9 == 0:
                dues.append(CheckinDueRow((start + dt.timedelta(minutes=31)).timestamp(), loc))
    reasons = ["training_expired", "no_assessment", "outside_allowed_hours", "jaa_required"]
    for k in range(11):
        t = oslo(2026, 10, 2 + k * 2, 17, 5)
        denials.append(DenialRow(t.timestamp(), reasons[k % 4], locs[k % len(locs)], "nils"))
    kinds = ["sos", "missed_checkin", "man_down", "device_offline", "session_overrun"]
    answers = [35, 48, 52, 61, 75, 90, 110, 140, 170, 200, 260, 42, 58]
    for k, secs in enumerate(answers):
        t = oslo(2026, 10, 1 + (k * 5) % 30, 18 + k % 5, 7)
        alarms.append(
            AlarmRow(
                f"a{k}",
                kinds[k % 5],
                "resolved",
                locs[k % len(locs)],
                t.timestamp(),
                t.timestamp(),
                (t + dt.timedelta(seconds=secs)).timestamp(),
            )
        )
    t = oslo(2026, 10, 25, 2, 40, fold=1)  # the second 02:40 of the night the clocks go back
    alarms.append(
        AlarmRow("never", "sos", "escalating", locs[1], t.timestamp(), t.timestamp(), None)
    )
    alarms.append(AlarmRow("cx", "man_down", "cancelled", locs[2], t.timestamp(), None, None))
    for k in range(3):
        t = oslo(2026, 10, 6 + k * 7, 22, 15)
        alarms.append(
            AlarmRow(f"u{k}", "unattended_entry", "notice", locs[0], t.timestamp(), None, None)
        )
    rows = Rows(sessions=sessions, denials=denials, alarms=alarms, checkins_due=dues)
    now = oslo(2026, 11, 2, 9, 30).timestamp()
    return monthly_report(rows, month, cfg.tz, now, locs, validity(cfg, []))


def print_pdf(html_file: Path, pdf: Path) -> bytes:
    exe = chromium_path()
    subprocess.run(
        [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={pdf.parent / 'chromium-profile'}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={pdf}",
            html_file.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=90,
    )
    return pdf.read_bytes()


def pdf_pages(data: bytes) -> list[tuple[float, float]]:
    """The size (points) of every page object of a PDF written without object streams for
    pages (Chromium's Skia writer): `/Type /Page` objects and their `/MediaBox`."""
    pages = []
    for m in re.finditer(rb"/Type\s*/Page(?![a-zA-Z])(.*?)endobj", data, re.S):
        box = re.search(
            rb"/MediaBox\s*\[\s*([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)", m.group(0)
        )
        assert box is not None, m.group(0)[:200]
        x0, y0, x1, y1 = (float(v) for v in box.groups())
        pages.append((x1 - x0, y1 - y0))
    # the page tree says the same
    count = re.search(rb"/Type\s*/Pages.*?/Count\s+(\d+)", data, re.S)
    assert count is not None and int(count.group(1)) == len(pages)
    return pages


def shots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("REPORT_SCREENSHOTS") or tmp_path).resolve()
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.mark.parametrize("lang", ["nb", "en"])
def test_a_busy_month_prints_on_one_or_two_a4_pages(tmp_path: Path, lang: str) -> None:
    cfg = busy_site(lang)
    report = busy_month(cfg)
    assert report.site.sessions > 60 and report.site.ack.unanswered == 1
    out = shots(tmp_path) if lang == "nb" else tmp_path
    html_file = out / "monthly-report.html"
    html_file.write_text(render.html(cfg, report), encoding="utf-8")
    pages = pdf_pages(print_pdf(html_file, tmp_path / "report.pdf"))
    assert 1 <= len(pages) <= 2, pages
    for w, h in pages:
        assert abs(w - A4_PT[0]) < 1.5 and abs(h - A4_PT[1]) < 1.5, (w, h)
    if lang == "nb":
        # the first page as a picture for the README (screen rendering at A4 width)
        subprocess.run(
            [
                chromium_path(),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / 'chromium-shot'}",
                "--hide-scrollbars",
                "--window-size=794,1123",
                f"--screenshot={out / 'monthly-report-page1.png'}",
                html_file.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )
        assert (out / "monthly-report-page1.png").stat().st_size > 10_000


def test_an_empty_month_prints_on_one_page(tmp_path: Path) -> None:
    cfg = busy_site("nb")
    month = month_of("2026-02", cfg.tz)
    report = monthly_report(Rows(), month, cfg.tz, oslo(2026, 3, 1).timestamp(), [])
    html_file = tmp_path / "empty.html"
    html_file.write_text(render.html(cfg, report), encoding="utf-8")
    pages = pdf_pages(print_pdf(html_file, tmp_path / "empty.pdf"))
    assert len(pages) == 1, pages
