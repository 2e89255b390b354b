"""HTTP edge (aiohttp): the API (CONTRACT §6), /healthz and /metrics; the Twilio webhooks are
`adapters/twilio_webhooks.py`.

Here: routes, tokens, request parsing and errors. Reads go through `jaa_gateway.views`, commands
through the core's `AlarmDesk`, shapes through `jaa_gateway.wire.api`; every rule is the core's.
Bad input gets a clear JSON error and changes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from jaa_gateway.adapters.http_common import ID_MAX, MAX_BODY, AlarmDesk, error
from jaa_gateway.adapters.report_http import ReportHttp
from jaa_gateway.adapters.twilio_webhooks import TwilioWebhooks
from jaa_gateway.config import UNREADABLE_RE as _UNSTORABLE_RE
from jaa_gateway.config import Config, ConfigError, parse_assessment
from jaa_gateway.domain.alarm import AlarmState
from jaa_gateway.timeutil import parse_rfc3339
from jaa_gateway.views import Views
from jaa_gateway.wire import api as api_wire

log = structlog.get_logger("jaa_gateway.http")

__all__ = ["MAX_BODY", "Health", "HttpApi"]

_PLUS_OFFSET = re.compile(r" ([0-9]{2}:[0-9]{2})$")
# the ?state= filter: "open" (any open state) or one state
ALARM_STATES = ("open", *(s.value for s in AlarmState))

ApiHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Health:
    mqtt_connected: Callable[[], bool]
    loop_lag: Callable[[], float]
    extra: Callable[[], list[str]] = lambda: []
    # not failures, but what an operator must know (e.g. the console notifier pages nobody)
    warnings: Callable[[], list[str]] = lambda: []
    # more fields for the answer (hot standby: `role` and `leader`, CONTRACT §8)
    fields: Callable[[], dict[str, Any]] = lambda: {}


class HttpApi:
    def __init__(
        self,
        cfg: Config,
        desk: AlarmDesk,
        views: Views,
        registry: CollectorRegistry,
        health: Health,
        reports: ReportHttp | None = None,
    ) -> None:
        self.cfg = cfg
        self.desk = desk
        self.views = views
        self.registry = registry
        self.health = health
        self._tokens = cfg.http.token_names()
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors])
        r = self.app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/api/sessions", self._api(self.sessions))
        r.add_get("/api/alarms", self._api(self.list_alarms))
        r.add_get("/api/alarms/{id}", self._api(self.get_alarm))
        r.add_post("/api/alarms/{id}/ack", self._api(self.ack))
        r.add_post("/api/alarms/{id}/resolve", self._api(self.resolve))
        r.add_get("/api/assessments", self._api(self.list_assessments))
        r.add_post("/api/assessments", self._api(self.post_assessment))
        r.add_get("/api/audit", self._api(self.audit))
        if reports is not None:  # the monthly report (CONTRACT §10): adapters/report_http.py
            r.add_get("/api/reports/monthly", self._api(reports.api))
        TwilioWebhooks(cfg, desk, views).routes(r)

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            # the contract's error statuses are 400/401/403/404/409: too large is a bad request
            return error(400, "too_large", f"The body is larger than {MAX_BODY} bytes.")
        except web.HTTPException as exc:
            if exc.status >= 400:
                return error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
            raise
        except _BadRequest as exc:
            return error(400, exc.code, exc.detail)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("http_handler_failed", path=request.path)
            return error(500, "internal", "The gateway could not handle this request.")

    def _token_name(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        given = header[7:].strip().encode()
        found: str | None = None
        # compare against every token in constant time, so timing says nothing of which
        for secret, name in self._tokens.items():
            if hmac.compare_digest(given, secret.encode()):
                found = name
        return found

    def _api(self, fn: ApiHandler) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            name = self._token_name(request)
            if name is None:
                return error(
                    401,
                    "unauthorized",
                    "A valid 'Authorization: Bearer <token>' header is required.",
                )
            return await fn(request, name)

        return handler

    # ------------------------------------------------------------------ health

    async def healthz(self, request: web.Request) -> web.Response:
        problems: list[str] = []
        if not self.health.mqtt_connected():
            problems.append("mqtt: not connected to the broker")
        if (db := await self.views.database_problem(timeout=2.0)) is not None:
            problems.append(db)
        lag = self.health.loop_lag()
        if lag > 1.0:
            problems.append(f"event loop: lagging {lag:.2f}s")
        problems.extend(self.health.extra())
        status = 503 if problems else 200
        return web.json_response(
            {
                "status": "fail" if problems else "ok",
                "problems": problems,
                "warnings": self.health.warnings(),
                "notify_driver": self.cfg.notify.driver,
                "loop_lag_s": round(lag, 4),
                **self.health.fields(),
            },
            status=status,
        )

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ------------------------------------------------------------------ API

    async def sessions(self, request: web.Request, who: str) -> web.Response:
        rows = await self.views.active_sessions()
        tz = self.cfg.tz
        return web.json_response({"sessions": [api_wire.session(s, tz) for s in rows]})

    async def list_alarms(self, request: web.Request, who: str) -> web.Response:
        state = request.query.get("state")
        if state is not None and state not in ALARM_STATES:
            return error(400, "bad_state", f"state must be one of {', '.join(ALARM_STATES)}.")
        rows = await self.views.alarms(state)
        return web.json_response({"alarms": [api_wire.alarm(a, self.cfg.tz) for a in rows]})

    async def get_alarm(self, request: web.Request, who: str) -> web.Response:
        aid = request.match_info["id"]
        found = await self.views.alarm_with_timeline(aid)
        if found is None:
            return error(404, "not_found", f"No alarm {aid[:ID_MAX]}.")
        return web.json_response(
            api_wire.alarm_detail(found.alarm, found.timeline, found.notifications, self.cfg.tz)
        )

    async def ack(self, request: web.Request, who: str) -> web.Response:
        aid = request.match_info["id"]
        body = await _json_body(request)
        by = _text_field(body, "by", 100)
        res = await self.desk.ack([aid], by=by, via=f"api:{who}", person_id=None)
        if not res.ok:
            status = 404 if res.error == "not_found" else 409
            return error(status, res.error or "conflict", res.detail)
        return web.json_response(api_wire.alarm(res.alarms[0], self.cfg.tz))

    async def resolve(self, request: web.Request, who: str) -> web.Response:
        aid = request.match_info["id"]
        body = await _json_body(request)
        by = _text_field(body, "by", 100)
        note = _text_field(body, "note", 4000)
        res = await self.desk.resolve(aid, by=by, note=note, via=f"api:{who}")
        if not res.ok:
            status = 404 if res.error == "not_found" else 409
            return error(status, res.error or "conflict", res.detail)
        return web.json_response(api_wire.alarm(res.alarms[0], self.cfg.tz))

    async def list_assessments(self, request: web.Request, who: str) -> web.Response:
        items = sorted(self.desk.assessments.values(), key=lambda a: a.id)
        return web.json_response({"assessments": [a.model_dump(mode="json") for a in items]})

    async def post_assessment(self, request: web.Request, who: str) -> web.Response:
        body = await _json_body(request)
        try:
            a = parse_assessment(self.cfg, body)
        except ConfigError as exc:
            return web.json_response(
                {
                    "error": "invalid_assessment",
                    "detail": "; ".join(exc.problems),
                    "reasons": exc.problems,
                },
                status=400,
            )
        try:
            result = await self.desk.put_assessment(a, actor=who)
        except PermissionError as exc:
            return error(409, "defined_in_config", str(exc))
        return web.json_response(
            a.model_dump(mode="json"), status=201 if result == "created" else 200
        )

    async def audit(self, request: web.Request, who: str) -> web.Response:
        since_raw = request.query.get("since")
        since: float | None = None
        if since_raw is not None:
            # an offset typed unencoded ('?since=...T08:00:00+01:00') decodes to a space
            since_raw = _PLUS_OFFSET.sub(r"+\1", since_raw)
            try:
                since = parse_rfc3339(since_raw).timestamp()
            except ValueError:
                return error(
                    400,
                    "bad_since",
                    "since must be an RFC 3339 time with an offset, "
                    "e.g. 2026-11-26T08:00:00+01:00.",
                )
        try:
            limit = int(request.query.get("limit", "1000"))
        except ValueError:
            return error(400, "bad_limit", "limit must be a whole number.")
        if not 1 <= limit <= 10000:
            return error(400, "bad_limit", "limit must be between 1 and 10000.")
        rows = await self.views.audit_since(since, limit)
        return web.json_response({"events": [api_wire.audit_event(e, self.cfg.tz) for e in rows]})


class _BadRequest(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=lambda s: json.loads(s))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise _BadRequest("bad_json", "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _BadRequest("bad_body", "The body must be a JSON object.")
    return body


def _text_field(body: dict[str, Any], key: str, limit: int) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _BadRequest("bad_field", f"'{key}' is required and must be a non-empty string.")
    if _UNSTORABLE_RE.search(value):
        # a lone surrogate (a JSON escape like \ud800) cannot be stored or logged as UTF-8
        raise _BadRequest("bad_field", f"'{key}' contains control characters or surrogates.")
    if len(value) > limit:
        raise _BadRequest("bad_field", f"'{key}' is longer than {limit} characters.")
    return value.strip()
