"""The monthly report over HTTP (CONTRACT §10): ``GET /api/reports/monthly`` for API token
holders, and ``GET /console/report`` for console users with the role ``head`` or ``admin``.

Why the console has its own address: its login is a cookie scoped to ``/console`` (HttpOnly,
SameSite=Strict), so a browser never sends it to ``/api/``, and the API's bearer tokens are
for machines, not to be put in a page. The console's route checks the session and the
person's roles (from the config in force, on every request) and serves the same HTML;
without a session it sends the browser to the login form, with one but without the role it
answers 403. Both are reads: they work on a standby node too.
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from jaa_gateway.adapters.http_common import error
from jaa_gateway.config import Config
from jaa_gateway.domain.report import BadMonth, Month, month_at, month_of, previous_month
from jaa_gateway.report import render
from jaa_gateway.report.service import Reports

REPORT_ROLES = frozenset({"head", "admin"})
CONSOLE_PATH = "/console/report"


def _csp() -> str:
    # the report is one file: its inline style (by hash), inline SVG, no script at all
    return (
        f"default-src 'none'; style-src {render.style_hash()}; img-src data:; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    )


class ReportHttp:
    def __init__(self, cfg: Config, reports: Reports) -> None:
        self.cfg = cfg
        self.reports = reports

    def may_read(self, person_id: str) -> bool:
        p = self.cfg.person(person_id)
        return p is not None and bool(REPORT_ROLES & set(p.roles))

    def _format(self, request: web.Request) -> str | None:
        fmt = request.query.get("format", "html")
        return fmt if fmt in ("html", "csv") else None

    async def _answer(self, month: Month, fmt: str, nav: render.Nav | None = None) -> web.Response:
        report = await self.reports.monthly(month)
        if fmt == "csv":
            return web.Response(
                text=render.csv_text(self.cfg, report),
                content_type="text/csv",
                charset="utf-8",
                headers={
                    "Content-Disposition": (
                        f'attachment; filename="jaa-report-{self.cfg.gateway.site}-'
                        f'{month.label}.csv"'
                    ),
                    "Cache-Control": "no-store",
                },
            )
        return web.Response(
            text=render.html(self.cfg, report, nav),
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": _csp(), "Cache-Control": "no-store"},
        )

    async def api(self, request: web.Request, who: str) -> web.Response:
        """``GET /api/reports/monthly?month=YYYY-MM[&format=csv]`` (the token is checked)."""
        raw = request.query.get("month")
        if raw is None:
            return error(400, "bad_month", "month=YYYY-MM is required, e.g. month=2026-10.")
        try:
            month = month_of(raw, self.cfg.tz)
        except BadMonth as exc:
            return error(400, "bad_month", f"{exc}.")
        fmt = self._format(request)
        if fmt is None:
            return error(400, "bad_format", "format must be html or csv.")
        return await self._answer(month, fmt)

    async def console(self, request: web.Request, person_id: str, now: float) -> web.Response:
        """The console's page of the report: ``month`` defaults to the month before ``now``."""
        if not self.may_read(person_id):
            return web.Response(
                text="The monthly report is for the roles head and admin.",
                status=403,
                content_type="text/plain",
            )
        raw = request.query.get("month")
        try:
            month = month_of(raw, self.cfg.tz) if raw else previous_month(now, self.cfg.tz)
        except BadMonth as exc:
            return web.Response(text=f"{exc}.", status=400, content_type="text/plain")
        fmt = self._format(request)
        if fmt is None:
            return web.Response(text="format must be html or csv.", status=400)
        current = month_at(now, self.cfg.tz)
        nav = render.Nav(
            prev=self.link(_step(month, -1)),
            next=self.link(_step(month, 1)) if month.label < current.label else None,
            csv=self.link(month.label, "csv"),
        )
        return await self._answer(month, fmt, nav)

    @staticmethod
    def link(month: str, fmt: str | None = None) -> str:
        q = {"month": month} | ({"format": fmt} if fmt else {})
        return f"{CONSOLE_PATH}?{urlencode(q)}"


def _step(month: Month, by: int) -> str:
    n = month.year * 12 + month.month - 1 + by
    return f"{n // 12:04d}-{n % 12 + 1:02d}"
