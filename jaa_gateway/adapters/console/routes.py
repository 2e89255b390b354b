"""The guard console over HTTP (CONTRACT §9): login, the page, its data, its live stream, and
acknowledge / resolve. Everything but the login form and the static files needs a session.

Pages (``/console``) send a browser without a session to the login form; the data endpoints
(``/console/board``, ``/console/events``, timelines, actions) answer 401. Every POST needs the
session's CSRF token (form field ``csrf`` or header ``X-CSRF-Token``) and is refused when the
browser says it came from another site; the login form has its own token (double submit).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import jinja2
import structlog
from aiohttp import web
from markupsafe import Markup

from jaa_gateway import passwords
from jaa_gateway.adapters.console import model
from jaa_gateway.adapters.console.auth import (
    COOKIE,
    COOKIE_PATH,
    LOGIN_COOKIE,
    SECURITY_HEADERS,
    ConsoleSession,
    Sessions,
    Throttle,
    new_token,
    same,
)
from jaa_gateway.adapters.console.feed import Feed, sse_frames
from jaa_gateway.adapters.console.texts import JS_WORDS, words
from jaa_gateway.adapters.http_common import ID_MAX, AlarmDesk
from jaa_gateway.adapters.report_http import CONSOLE_PATH as REPORT_PATH
from jaa_gateway.adapters.report_http import ReportHttp
from jaa_gateway.alarms import AckResult
from jaa_gateway.board import Board
from jaa_gateway.changes import Changes
from jaa_gateway.config import UNREADABLE_RE, Config

log = structlog.get_logger("jaa_gateway.console")

HERE = Path(__file__).parent
KEEPALIVE_S: Final = 15.0
NOTE_MAX: Final = 4000
PERSON_MAX: Final = 64
PASSWORD_MAX: Final = 200
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Console:
    def __init__(
        self,
        cfg: Config,
        desk: AlarmDesk,
        board: Board,
        changes: Changes,
        status: Callable[[], model.DeskStatus],
        *,
        clock: Callable[[], float] = time.time,
        sessions: Sessions | None = None,
        throttle: Throttle | None = None,
        reports: ReportHttp | None = None,
    ) -> None:
        self.cfg = cfg
        self.desk = desk
        self.board = board
        self.status = status
        self.clock = clock
        self.sessions = sessions or Sessions()
        self.throttle = throttle or Throttle()
        self.reports = reports
        self.lang = cfg.gateway.language
        self.t = words(self.lang)
        self.secure = cfg.http.public_url.lower().startswith("https://")
        self.public_host = urlsplit(cfg.http.public_url).netloc.lower()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.database_ok = True
        self.closing = False
        self.feed = Feed(self._render_board, self._render_status, lambda: self.status().may_act)
        changes.subscribe(self.feed.changed)

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/console", self.page)
        r.add_get("/console/", self.page)
        r.add_get("/console/login", self.login_form)
        r.add_post("/console/login", self.login)
        r.add_post("/console/logout", self.logout)
        r.add_get("/console/board", self.board_fragment)
        r.add_get("/console/events", self.events)
        r.add_get("/console/alarms/{id}/timeline", self.timeline)
        r.add_post("/console/alarms/{id}/ack", self.ack)
        r.add_post("/console/alarms/{id}/resolve", self.resolve)
        if self.reports is not None:
            r.add_get(REPORT_PATH, self.report)
        r.add_static("/console/static", HERE / "static", append_version=False)
        app.on_shutdown.append(self._on_shutdown)
        app.on_response_prepare.append(self._headers)

    # ------------------------------------------------------------------ plumbing

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.path.startswith(COOKIE_PATH):
            for k, v in SECURITY_HEADERS.items():
                response.headers.setdefault(k, v)

    async def _on_shutdown(self, app: web.Application) -> None:
        self.closing = True
        self.feed.wake()

    def _html(self, name: str, status: int = 200, **ctx: Any) -> web.Response:
        body = self.env.get_template(name).render(t=self.t, lang=self.lang, **ctx)
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    def _session(self, request: web.Request) -> ConsoleSession | None:
        s = self.sessions.get(request.cookies.get(COOKIE), self.clock())
        if s is None:
            return None
        person = self.cfg.person(s.person)
        if person is None or not person.may_use_console:
            self.sessions.drop(s.token)
            return None
        return s

    def _cookie(self, response: web.StreamResponse, name: str, value: str, **kw: Any) -> None:
        response.set_cookie(
            name,
            value,
            httponly=True,
            samesite="Strict",
            secure=self.secure,
            **kw,
        )

    def _cross_site(self, request: web.Request) -> bool:
        """The browser says this request came from another site."""
        if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            return True
        origin = request.headers.get("Origin")
        if origin is None:
            return False
        host = urlsplit(origin).netloc.lower()
        return host not in (request.host.lower(), self.public_host)

    @staticmethod
    def _wants_json(request: web.Request) -> bool:
        return "application/json" in request.headers.get("Accept", "")

    def _unauthorized(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"error": "unauthorized", "detail": "Log in to the console first."}, status=401
        )

    def _answer(self, request: web.Request, status: int, message: str) -> web.Response:
        if self._wants_json(request):
            return web.json_response({"ok": status < 300, "message": message}, status=status)
        if status < 300:
            raise web.HTTPSeeOther("/console")
        return web.Response(text=message, status=status, content_type="text/plain")

    async def _form(self, request: web.Request) -> dict[str, str]:
        data = await request.post()
        return {k: v for k, v in data.items() if isinstance(v, str)}

    def _csrf_ok(self, request: web.Request, s: ConsoleSession, form: dict[str, str]) -> bool:
        given = request.headers.get("X-CSRF-Token") or form.get("csrf")
        return not self._cross_site(request) and same(given, s.csrf)

    # ------------------------------------------------------------------ rendering

    async def _render_board(self) -> str:
        now = self.clock()
        try:
            snap = await self.board.snapshot(model.day_start(self.cfg.tz, now))
        except Exception:
            self.database_ok = False
            raise
        self.database_ok = True
        view = model.board_view(self.cfg, self.lang, snap, now)
        return self.env.get_template("board.html").render(
            t=self.t, lang=self.lang, b=view, csrf="", may_act=self.status().may_act
        )

    def _render_status(self) -> str:
        st = self.status()
        if not self.database_ok:
            st = model.DeskStatus(**{**st.__dict__, "database_ok": False})
        view = model.status_view(self.cfg, self.lang, st, self.clock())
        return self.env.get_template("status.html").render(t=self.t, st=view)

    # ------------------------------------------------------------------ login

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if self._session(request) is not None:
            raise web.HTTPSeeOther("/console")
        return self._login_page(None, 200)

    def _login_page(
        self, error: str | None, status: int, person: str = "", retry_after: int | None = None
    ) -> web.Response:
        token = new_token()
        resp = self._html("login.html", status, error=error, person=person, csrf=token)
        self._cookie(resp, LOGIN_COOKIE, token, path="/console/login", max_age=3600)
        if retry_after is not None:
            resp.headers["Retry-After"] = str(retry_after)
        return resp

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await self._form(request)
        if self._cross_site(request) or not same(
            form.get("csrf"), request.cookies.get(LOGIN_COOKIE)
        ):
            return self._login_page(self.t["form_expired"], 403)
        pid = form.get("person", "").strip()[:PERSON_MAX]
        password = form.get("password", "")[:PASSWORD_MAX]
        address = request.remote or "unknown"
        now = self.clock()
        wait = self.throttle.retry_after(pid, address, now)
        if wait is not None:
            log.warning("console_login_throttled", person=pid, address=address, retry_after=wait)
            msg = self.t["throttled"].format(minutes=max(1, (wait + 59) // 60))
            return self._login_page(msg, 429, person=pid, retry_after=wait)
        person = self.cfg.person(pid) if pid else None
        hashed = (
            person.console_password.get_secret_value()
            if person is not None and person.may_use_console and person.console_password
            else None
        )
        # bcrypt takes ~0.2 s of CPU: not on the loop that runs the alarms
        ok = await asyncio.to_thread(passwords.check, password, hashed)
        if not ok:
            self.throttle.failed(pid, address, self.clock())
            log.warning("console_login_failed", person=pid, address=address)
            return self._login_page(self.t["bad_login"], 401, person=pid)
        self.throttle.succeeded(pid)
        s = self.sessions.create(pid, self.clock())
        log.info("console_login", person=pid, address=address)
        resp = web.HTTPSeeOther("/console")
        self._cookie(resp, COOKIE, s.token, path=COOKIE_PATH)
        resp.del_cookie(LOGIN_COOKIE, path="/console/login")
        raise resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        s = self._session(request)
        if s is not None:
            form = await self._form(request)
            if not self._csrf_ok(request, s, form):
                return web.Response(text="forbidden", status=403)
            self.sessions.drop(s.token)
            log.info("console_logout", person=s.person)
        resp = web.HTTPSeeOther("/console/login")
        resp.del_cookie(COOKIE, path=COOKIE_PATH)
        raise resp

    # ------------------------------------------------------------------ the page

    async def page(self, request: web.Request) -> web.StreamResponse:
        s = self._session(request)
        if s is None:
            raise web.HTTPSeeOther("/console/login")
        frame = await self.feed.current()
        person = self.cfg.person(s.person)
        return self._html(
            "page.html",
            csrf=s.csrf,
            me=person.name if person is not None else s.person,
            # the monthly report, for heads and admins (adapters/report_http.py)
            report_url=(
                REPORT_PATH
                if self.reports is not None and self.reports.may_read(s.person)
                else None
            ),
            board_html=Markup(frame.board),
            status_html=Markup(frame.status),
            js_words={k: self.t[k] for k in JS_WORDS},
        )

    async def report(self, request: web.Request) -> web.StreamResponse:
        """The monthly report (CONTRACT §10) on the console's login: heads and admins."""
        s = self._session(request)
        if s is None:
            raise web.HTTPSeeOther("/console/login")
        assert self.reports is not None
        return await self.reports.console(request, s.person, self.clock())

    async def board_fragment(self, request: web.Request) -> web.StreamResponse:
        if self._session(request) is None:
            return self._unauthorized(request)
        frame = await self.feed.current()
        return web.Response(text=frame.board, content_type="text/html", charset="utf-8")

    async def events(self, request: web.Request) -> web.StreamResponse:
        s = self._session(request)
        if s is None:
            return self._unauthorized(request)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        self.feed.watchers += 1
        try:
            frame = await self.feed.current()
            await resp.write(b"retry: 2000\n\n" + sse_frames(frame, None))
            while not self.closing:
                nxt = await self.feed.next_frame(frame.version, KEEPALIVE_S)
                if self.sessions.get(s.token, self.clock()) is None:
                    await resp.write(b"event: expired\ndata: \n\n")
                    break
                if nxt is None or nxt.version == frame.version:
                    await resp.write(b": keepalive\n\n")
                    continue
                await resp.write(sse_frames(nxt, frame))
                frame = nxt
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.feed.watchers -= 1
        return resp

    async def timeline(self, request: web.Request) -> web.StreamResponse:
        if self._session(request) is None:
            return self._unauthorized(request)
        aid = request.match_info["id"]
        found = await self.board.timeline(aid)
        if found is None:
            return web.Response(text="", status=404)
        _alarm, events = found
        lines = model.timeline_lines(self.cfg, self.lang, events, self.clock())
        return self._html("timeline.html", lines=lines)

    # ------------------------------------------------------------------ acting

    async def _acting(
        self, request: web.Request
    ) -> tuple[ConsoleSession, dict[str, str]] | web.Response:
        """A POST that acts: its session and form, or the answer that refuses it."""
        s = self._session(request)
        if s is None:
            return self._unauthorized(request)
        form = await self._form(request)
        if not self._csrf_ok(request, s, form):
            return self._answer(request, 403, "forbidden")
        return s, form

    def _outcome(self, request: web.Request, res: AckResult, done: str) -> web.Response:
        if not res.ok:
            status = 404 if res.error == "not_found" else 409
            return self._answer(request, status, self.t["failed"].format(detail=res.detail))
        return self._answer(request, 200, self.t[done])

    async def ack(self, request: web.Request) -> web.StreamResponse:
        checked = await self._acting(request)
        if isinstance(checked, web.Response):
            return checked
        s, _form = checked
        aid = request.match_info["id"][:ID_MAX]
        # a console user is authenticated like an API token holder: they may acknowledge any
        # open alarm (the desk answers for whoever is sent), and the audit names them
        res = await self.desk.ack([aid], by=s.person, via="console", person_id=None)
        return self._outcome(request, res, "done_ack")

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        checked = await self._acting(request)
        if isinstance(checked, web.Response):
            return checked
        s, form = checked
        note = form.get("note", "").strip()
        if not note or len(note) > NOTE_MAX or UNREADABLE_RE.search(note):
            return self._answer(request, 400, self.t["need_note"])
        aid = request.match_info["id"][:ID_MAX]
        res = await self.desk.resolve(aid, by=s.person, note=note, via="console")
        return self._outcome(request, res, "done_resolve")
