"""HTTP edge (aiohttp): the API, Twilio webhooks, /healthz and /metrics.

Wire formats live here; every rule is the engine's. Bad input gets a clear JSON error and
changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from sqlalchemy import and_, select, update
from twilio.request_validator import RequestValidator

from jaa_gateway.calls import MAX_SPOKEN
from jaa_gateway.config import UNREADABLE_RE as _UNSTORABLE_RE
from jaa_gateway.config import Assessment, check_assessment
from jaa_gateway.domain import texts
from jaa_gateway.domain.replies import parse_sms_reply
from jaa_gateway.engine import Engine
from jaa_gateway.notify.twiml import sms_reply, voice_regather, voice_reply
from jaa_gateway.store import queries as q
from jaa_gateway.store.db import describe_error
from jaa_gateway.store.schema import alarms, audit, notifications
from jaa_gateway.timeutil import parse_rfc3339

log = structlog.get_logger("jaa_gateway.http")

MAX_BODY = 64 * 1024
_PLUS_OFFSET = re.compile(r" ([0-9]{2}:[0-9]{2})$")
_ID_MAX = 64


@dataclass
class Health:
    mqtt_connected: Callable[[], bool]
    loop_lag: Callable[[], float]
    extra: Callable[[], list[str]] = lambda: []
    # not failures, but what an operator must know (e.g. the console notifier pages nobody)
    warnings: Callable[[], list[str]] = lambda: []


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


def _xml(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/xml")


class HttpApi:
    def __init__(self, engine: Engine, health: Health) -> None:
        self.engine = engine
        self.cfg = engine.cfg
        self.health = health
        self._tokens = self.cfg.http.token_names()
        self._webhooks_in_progress: set[str] = set()
        self._validator = (
            RequestValidator(self.cfg.twilio.auth_token.get_secret_value())
            if self.cfg.twilio is not None
            else None
        )
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
        r.add_post("/twilio/sms", self._twilio(self.twilio_sms))
        r.add_post("/twilio/voice/{id}", self._twilio(self.twilio_voice))
        r.add_post("/twilio/status", self._twilio(self.twilio_status))

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            # the contract's error statuses are 400/401/403/404/409: too large is a bad request
            return _error(400, "too_large", f"The body is larger than {MAX_BODY} bytes.")
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("http_handler_failed", path=request.path)
            return _error(500, "internal", "The gateway could not handle this request.")

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

    def _api(
        self, fn: Callable[[web.Request, str], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            name = self._token_name(request)
            if name is None:
                return _error(
                    401,
                    "unauthorized",
                    "A valid 'Authorization: Bearer <token>' header is required.",
                )
            return await fn(request, name)

        return handler

    def _twilio(
        self, fn: Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            try:
                params = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
            except UnicodeDecodeError:
                return _error(400, "bad_body", "The body is not UTF-8 form data.")
            sig = request.headers.get("X-Twilio-Signature", "")
            url = self.cfg.http.public_url + request.path_qs
            # blank parameters are part of the signature: they are kept above
            if self._validator is None or not sig or not self._validator.validate(url, params, sig):
                log.warning("twilio_signature_invalid", path=request.path)
                return _error(403, "forbidden", "The X-Twilio-Signature is missing or wrong.")
            return await fn(request, params)

        return handler

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json(loads=lambda s: json.loads(s))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise _BadRequest("bad_json", "The body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _BadRequest("bad_body", "The body must be a JSON object.")
        return body

    # ------------------------------------------------------------------ health

    async def healthz(self, request: web.Request) -> web.Response:
        problems: list[str] = []
        if not self.health.mqtt_connected():
            problems.append("mqtt: not connected to the broker")
        try:
            async with asyncio.timeout(2.0):
                await self.engine.store.probe_write()
        except Exception as exc:
            problems.append(f"database: not writable ({describe_error(exc, 120)})")
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
            },
            status=status,
        )

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.engine.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ------------------------------------------------------------------ API

    def _session_public(self, s: dict[str, Any]) -> dict[str, Any]:
        iso = self.engine.iso
        return {
            "id": s["id"],
            "person": s["person"],
            "location": s["location"],
            "device": s["device"],
            "door": s["door"],
            "assessment": s["assessment"],
            "started_at": iso(s["started_at"]),
            "checkin_due_at": iso(s["checkin_due_at"])
            if s["checkin_state"] == "waiting"
            else iso(s["checkin_grace_until"])
            if s["checkin_state"] == "due"
            else None,
            "ends_at": iso(s["ends_at"]),
        }

    async def sessions(self, request: web.Request, who: str) -> web.Response:
        async with self.engine.store.tx() as conn:
            rows = await q.active_sessions(conn)
        return web.json_response({"sessions": [self._session_public(s) for s in rows]})

    async def list_alarms(self, request: web.Request, who: str) -> web.Response:
        state = request.query.get("state")
        valid = (
            "open",
            "prealarm",
            "escalating",
            "acknowledged",
            "resolved",
            "cancelled",
            "notice",
        )
        if state is not None and state not in valid:
            return _error(400, "bad_state", f"state must be one of {', '.join(valid)}.")
        query = select(alarms).order_by(alarms.c.opened_at.desc()).limit(1000)
        if state == "open":
            query = query.where(alarms.c.state.in_(q.OPEN_STATES))
        elif state is not None:
            query = query.where(alarms.c.state == state)
        async with self.engine.store.tx() as conn:
            rows = [dict(r) for r in (await conn.execute(query)).mappings()]
        return web.json_response({"alarms": [self.engine.alarm_public(a) for a in rows]})

    async def get_alarm(self, request: web.Request, who: str) -> web.Response:
        aid = request.match_info["id"]
        async with self.engine.store.tx() as conn:
            a = await q.get_alarm(conn, aid)
            if a is None:
                return _error(404, "not_found", f"No alarm {aid[:_ID_MAX]}.")
            tl = await q.alarm_timeline(conn, aid)
            notes = await q.alarm_notifications(conn, aid)
        body = self.engine.alarm_public(a)
        body["timeline"] = [self._audit_public(e) for e in tl]
        body["notifications"] = [
            {
                "id": n["id"],
                "purpose": n["purpose"],
                "k": n["k"],
                "person": n["person"],
                "channel": n["channel"],
                "state": n["state"],
                "attempts": n["attempts"],
                "sid": n["sid"],
                "delivery_status": n["delivery_status"],
                "error": n["error"],
                "created_at": self.engine.iso(n["created_at"]),
                "sent_at": self.engine.iso(n["sent_at"]),
            }
            for n in notes
        ]
        return web.json_response(body)

    def _audit_public(self, e: dict[str, Any]) -> dict[str, Any]:
        return {
            "seq": e["seq"],
            "at": self.engine.iso(e["ts"]),
            "event": e["event"],
            "actor": e["actor"],
            "alarm": e["alarm"],
            "session": e["session"],
            "data": e["data"] or {},
        }

    @staticmethod
    def _text_field(body: dict[str, Any], key: str, limit: int, required: bool = True) -> str:
        value = body.get(key)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or not value.strip():
            raise _BadRequest("bad_field", f"'{key}' is required and must be a non-empty string.")
        if _UNSTORABLE_RE.search(value):
            # a lone surrogate (a JSON escape like \ud800) cannot be stored or logged as UTF-8
            raise _BadRequest("bad_field", f"'{key}' contains control characters or surrogates.")
        if len(value) > limit:
            raise _BadRequest("bad_field", f"'{key}' is longer than {limit} characters.")
        return value.strip()

    async def ack(self, request: web.Request, who: str) -> web.Response:
        aid = request.match_info["id"]
        try:
            body = await self._json_body(request)
            by = self._text_field(body, "by", 100)
        except _BadRequest as exc:
            return _error(400, exc.code, exc.detail)
        res = await self.engine.ack([aid], by=by, via=f"api:{who}", person_id=None)
        if not res.ok:
            status = 404 if res.error == "not_found" else 409
            return _error(status, res.error or "conflict", res.detail)
        return web.json_response(self.engine.alarm_public(res.alarms[0]))

    async def resolve(self, request: web.Request, who: str) -> web.Response:
        aid = request.match_info["id"]
        try:
            body = await self._json_body(request)
            by = self._text_field(body, "by", 100)
            note = self._text_field(body, "note", 4000)
        except _BadRequest as exc:
            return _error(400, exc.code, exc.detail)
        res = await self.engine.resolve(aid, by=f"{by}", note=note)
        if not res.ok:
            status = 404 if res.error == "not_found" else 409
            return _error(status, res.error or "conflict", res.detail)
        return web.json_response(self.engine.alarm_public(res.alarms[0]))

    async def list_assessments(self, request: web.Request, who: str) -> web.Response:
        items = sorted(self.engine.assessments.values(), key=lambda a: a.id)
        return web.json_response({"assessments": [a.model_dump(mode="json") for a in items]})

    async def post_assessment(self, request: web.Request, who: str) -> web.Response:
        try:
            body = await self._json_body(request)
        except _BadRequest as exc:
            return _error(400, exc.code, exc.detail)
        try:
            a = Assessment.model_validate(body)
        except ValidationError as exc:
            reasons = [
                f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: "
                f"{e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            ]
            return web.json_response(
                {"error": "invalid_assessment", "detail": "; ".join(reasons), "reasons": reasons},
                status=400,
            )
        problems = [
            f"{k.removeprefix('assessment.')}: {why}"
            for k, why in check_assessment(self.cfg, a, "assessment")
        ]
        if problems:
            return web.json_response(
                {"error": "invalid_assessment", "detail": "; ".join(problems), "reasons": problems},
                status=400,
            )
        try:
            result = await self.engine.put_assessment(a, actor=who)
        except PermissionError as exc:
            return _error(409, "defined_in_config", str(exc))
        return web.json_response(
            a.model_dump(mode="json"), status=201 if result == "created" else 200
        )

    async def audit(self, request: web.Request, who: str) -> web.Response:
        since_raw = request.query.get("since")
        query = select(audit).order_by(audit.c.seq)
        if since_raw is not None:
            # an offset typed unencoded ('?since=...T08:00:00+01:00') decodes to a space
            since_raw = _PLUS_OFFSET.sub(r"+\1", since_raw)
            try:
                since = parse_rfc3339(since_raw)
            except ValueError:
                return _error(
                    400,
                    "bad_since",
                    "since must be an RFC 3339 time with an offset, "
                    "e.g. 2026-11-26T08:00:00+01:00.",
                )
            query = query.where(audit.c.ts >= since.timestamp())
        try:
            limit = int(request.query.get("limit", "1000"))
        except ValueError:
            return _error(400, "bad_limit", "limit must be a whole number.")
        if not 1 <= limit <= 10000:
            return _error(400, "bad_limit", "limit must be between 1 and 10000.")
        async with self.engine.store.tx() as conn:
            rows = [dict(r) for r in (await conn.execute(query.limit(limit))).mappings()]
        return web.json_response({"events": [self._audit_public(e) for e in rows]})

    # ------------------------------------------------------------------ Twilio webhooks

    @contextlib.asynccontextmanager
    async def _once(self, key: str | None) -> AsyncIterator[bool]:
        """A webhook Twilio (or an attacker replaying it) sends twice acts once: yields True for
        a replay (seen before, or being handled right now). Otherwise the webhook acts in the
        body and its key is stored after that, not before: a try cut short by a crash or an
        error must not turn Twilio's retry of it into a "replay" (a guard's OK would be lost).
        """
        if key is None:
            yield False
            return
        if key in self._webhooks_in_progress:
            yield True
            return
        async with self.engine.store.tx() as conn:
            seen = await q.get_processed(conn, "twilio", key) is not None
        if seen:
            yield True
            return
        self._webhooks_in_progress.add(key)
        try:
            yield False
            async with self.engine.unit() as tx:
                if await q.get_processed(tx.conn, "twilio", key) is None:
                    await q.add_processed(tx.conn, "twilio", key, tx.ts, "webhook")
        finally:
            self._webhooks_in_progress.discard(key)

    async def twilio_sms(self, request: web.Request, params: dict[str, str]) -> web.Response:
        lang = self.cfg.gateway.language
        sid = params.get("MessageSid") or params.get("SmsSid") or ""
        sender = params.get("From", "")
        body = params.get("Body", "")[:1600]
        person = self.cfg.person_by_phone(sender)
        async with self.engine.store.tx() as conn:
            await q.add_audit(
                conn,
                time.time(),
                "sms_received",
                actor=person.id if person else sender,
                sid=sid,
                body=body[:200],
            )
        async with self._once(f"sms:{sid}" if sid else None) as replayed:
            if replayed:
                return _xml(sms_reply(None))
            if person is None:
                return _xml(sms_reply(texts.ack_reply_error(lang, "not_allowed")))
            reply = parse_sms_reply(body)
            if reply is None:
                return _xml(sms_reply(texts.ack_reply_error(lang, "not_understood")))
            async with self.engine.store.tx() as conn:
                candidates = [
                    a
                    for a in await q.open_alarms(conn, ("prealarm", "escalating"))
                    if await q.was_notified(conn, a["id"], person.id)
                ]
            if reply.code is not None:
                chosen = [a for a in candidates if a["code"] == reply.code]
                if not chosen:
                    # the code of an open alarm this person was not told about: let the engine
                    # refuse it (audited as ack_refused) rather than answer "unknown code"
                    # (acknowledged alarms keep their code until resolved: a second guard's OK
                    # is told who is already on the way)
                    async with self.engine.store.tx() as conn:
                        chosen = [a for a in await q.open_alarms(conn) if a["code"] == reply.code]
                if not chosen:
                    return _xml(sms_reply(texts.ack_reply_error(lang, "unknown_code")))
                if chosen[0]["state"] == "acknowledged":
                    return _xml(sms_reply(self._already(chosen[0])))
            else:
                if not candidates:
                    return _xml(sms_reply(texts.ack_reply_error(lang, "no_open_alarm")))
                if len(candidates) > 1:
                    return _xml(sms_reply(texts.ack_reply_error(lang, "ambiguous")))
                chosen = candidates
            res = await self.engine.ack(
                [chosen[0]["id"]], by=person.id, via="sms", person_id=person.id
            )
            if res.error == "already_acknowledged" and res.alarms:
                return _xml(sms_reply(self._already(res.alarms[0])))
            if not res.ok:
                problem: texts.AckProblem = (
                    "not_allowed" if res.error == "not_allowed" else "no_open_alarm"
                )
                return _xml(sms_reply(texts.ack_reply_error(lang, problem)))
            a = res.alarms[0]
            worker = self.cfg.person(a["person"]) if a["person"] else None
            return _xml(
                sms_reply(
                    texts.ack_confirmation(
                        lang, a["code"], a["kind"], worker.name if worker else None
                    )
                )
            )

    def _already(self, a: Mapping[str, Any]) -> str:
        by = self.cfg.person(a["acknowledged_by"] or "")
        return texts.already_acknowledged(
            self.cfg.gateway.language, a["code"], by.name if by else a["acknowledged_by"]
        )

    async def twilio_voice(self, request: web.Request, params: dict[str, str]) -> web.Response:
        lang = self.cfg.gateway.language
        vlang = texts.VOICE_LANG[lang]
        # the URL is covered by the signature, so these are the alarms our call read; a call
        # reads at most MAX_SPOKEN, and more ids than that is no URL this gateway wrote
        also = [x for x in request.query.get("also", "").split(",") if x]
        if len(also) > MAX_SPOKEN - 1:
            log.warning("voice_too_many_alarms", count=len(also) + 1, kept=MAX_SPOKEN)
            also = also[: MAX_SPOKEN - 1]
        ids = [request.match_info["id"], *also]
        digits = params.get("Digits", "")
        callee = params.get("To", "")
        answered_by = params.get("AnsweredBy", "")
        call_sid = params.get("CallSid", "")
        person = self.cfg.person_by_phone(callee)
        async with self.engine.store.tx() as conn:
            await q.add_audit(
                conn,
                time.time(),
                "voice_input",
                actor=person.id if person else callee,
                alarm=ids[0],
                digits=digits[:8],
                sid=call_sid,
                answered_by=answered_by or None,
            )
        if answered_by.startswith("machine") or answered_by == "fax":
            # voicemail never acknowledges
            return _xml(voice_reply(texts.ack_reply_error(lang, "not_allowed"), vlang))
        if person is None:
            return _xml(voice_reply(texts.ack_reply_error(lang, "not_allowed"), vlang))
        if digits != "1":
            async with self.engine.store.tx() as conn:
                rows = [a for a in [await q.get_alarm(conn, i) for i in ids] if a is not None]
            spoken = [
                texts.alarm_voice(
                    lang,
                    a["kind"],
                    (p.name if (p := self.cfg.person(a["person"] or "")) else None),
                    (loc.name if (loc := self.cfg.location(a["location"] or "")) else None),
                )
                for a in rows
                if a["state"] in ("prealarm", "escalating")
            ]
            if not spoken:
                return _xml(voice_reply(texts.ack_reply_error(lang, "no_open_alarm"), vlang))
            return _xml(voice_regather(spoken, vlang, self.cfg.http.public_url + request.path_qs))
        async with self._once(f"voice:{call_sid}:{','.join(ids)}" if call_sid else None) as again:
            if again:
                return _xml(voice_reply(texts.ack_voice_confirmation(lang), vlang))
            res = await self.engine.ack(ids, by=person.id, via="voice", person_id=person.id)
        if not res.ok and res.error != "already_acknowledged":
            return _xml(
                voice_reply(
                    texts.ack_reply_error(
                        lang, "not_allowed" if res.error == "not_allowed" else "no_open_alarm"
                    ),
                    vlang,
                )
            )
        return _xml(voice_reply(texts.ack_voice_confirmation(lang), vlang))

    async def twilio_status(self, request: web.Request, params: dict[str, str]) -> web.Response:
        sid = params.get("MessageSid") or params.get("CallSid") or ""
        status = params.get("MessageStatus") or params.get("CallStatus") or ""
        if not sid or not status or len(sid) > 64 or len(status) > 32:
            return _error(400, "bad_status", "MessageSid/CallSid and a status are required.")
        # a replayed callback (same signature) must not move the status back or audit twice
        async with self._once(f"status:{sid}:{status}") as replayed:
            if replayed:
                return web.Response(status=204)
            async with self.engine.store.tx() as conn:
                rows = (
                    await conn.execute(
                        select(notifications.c.id, notifications.c.alarm).where(
                            notifications.c.sid == sid
                        )
                    )
                ).all()
                await conn.execute(
                    update(notifications)
                    .where(and_(notifications.c.sid == sid))
                    .values(delivery_status=status)
                )
                await q.add_audit(
                    conn,
                    time.time(),
                    "delivery_status",
                    alarm=rows[0][1] if rows else None,
                    sid=sid,
                    status=status,
                    error_code=params.get("ErrorCode") or None,
                    answered_by=params.get("AnsweredBy") or None,
                    known=bool(rows),
                )
        return web.Response(status=204)


class _BadRequest(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
