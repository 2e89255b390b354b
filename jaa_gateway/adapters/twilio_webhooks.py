"""Twilio's webhooks (CONTRACT §5): a guard's SMS reply, the digits pressed on a call, and
delivery statuses. Every request is checked against `X-Twilio-Signature` first (403).

Which alarm an "OK" means is a rule (`domain.replies.choose_alarm`); acknowledging is the alarm
service's. Here: the signature, the replay guard, and the reply texts.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qsl

import structlog
from aiohttp import web
from twilio.request_validator import RequestValidator

from jaa_gateway.adapters.http_common import AlarmDesk, error, xml
from jaa_gateway.alarms import AckResult
from jaa_gateway.calls import MAX_SPOKEN
from jaa_gateway.config import Config
from jaa_gateway.domain import guard_texts, texts
from jaa_gateway.domain.alarm import RUNNING
from jaa_gateway.domain.replies import (
    Acknowledge,
    AlreadyAcknowledged,
    Refuse,
    choose_alarm,
    parse_sms_reply,
)
from jaa_gateway.notify.twiml import sms_reply, voice_regather, voice_reply
from jaa_gateway.views import Views

log = structlog.get_logger("jaa_gateway.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Webhook = Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]


class TwilioWebhooks:
    def __init__(self, cfg: Config, desk: AlarmDesk, views: Views) -> None:
        self.cfg = cfg
        self.desk = desk
        self.views = views
        self._in_progress: set[str] = set()
        self._validator = (
            RequestValidator(cfg.twilio.auth_token.get_secret_value())
            if cfg.twilio is not None
            else None
        )

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/twilio/sms", self._signed(self.sms))
        r.add_post("/twilio/voice/{id}", self._signed(self.voice))
        r.add_post("/twilio/status", self._signed(self.status))

    def _signed(self, fn: Webhook) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            try:
                params = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
            except UnicodeDecodeError:
                return error(400, "bad_body", "The body is not UTF-8 form data.")
            sig = request.headers.get("X-Twilio-Signature", "")
            url = self.cfg.http.public_url + request.path_qs
            # blank parameters are part of the signature: they are kept above
            if self._validator is None or not sig or not self._validator.validate(url, params, sig):
                log.warning("twilio_signature_invalid", path=request.path)
                return error(403, "forbidden", "The X-Twilio-Signature is missing or wrong.")
            return await fn(request, params)

        return handler

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
        if key in self._in_progress or await self.views.webhook_seen(key):
            yield True
            return
        self._in_progress.add(key)
        try:
            yield False
            await self.views.webhook_done(key)
        finally:
            self._in_progress.discard(key)

    async def sms(self, request: web.Request, params: dict[str, str]) -> web.Response:
        lang = self.cfg.gateway.language
        sid = params.get("MessageSid") or params.get("SmsSid") or ""
        sender = params.get("From", "")
        body = params.get("Body", "")[:1600]
        person = self.cfg.person_by_phone(sender)
        await self.views.record_received(
            "sms_received", actor=person.id if person else sender, sid=sid, body=body[:200]
        )
        async with self._once(f"sms:{sid}" if sid else None) as replayed:
            if replayed:
                return xml(sms_reply(None))
            if person is None:
                return xml(sms_reply(guard_texts.ack_reply_error(lang, "not_allowed")))
            reply = parse_sms_reply(body)
            if reply is None:
                return xml(sms_reply(guard_texts.ack_reply_error(lang, "not_understood")))
            choice = choose_alarm(reply, await self.views.open_alarms_for(person.id))
            if isinstance(choice, Refuse):
                return xml(sms_reply(guard_texts.ack_reply_error(lang, choice.problem)))
            if isinstance(choice, AlreadyAcknowledged):
                return xml(
                    sms_reply(self._already(choice.alarm.code, choice.alarm.acknowledged_by))
                )
            assert isinstance(choice, Acknowledge)
            res = await self.desk.ack(
                [choice.alarm.id], by=person.id, via="sms", person_id=person.id
            )
            if res.error == "already_acknowledged" and res.alarms:
                a = res.alarms[0]
                return xml(sms_reply(self._already(a["code"], a["acknowledged_by"])))
            if not res.ok:
                return xml(sms_reply(guard_texts.ack_reply_error(lang, _refusal(res))))
            a = res.alarms[0]
            worker = self.cfg.person(a["person"]) if a["person"] else None
            return xml(
                sms_reply(
                    guard_texts.ack_confirmation(
                        lang, a["code"], a["kind"], worker.name if worker else None
                    )
                )
            )

    def _already(self, code: str, acknowledged_by: str | None) -> str:
        by = self.cfg.person(acknowledged_by or "")
        return guard_texts.already_acknowledged(
            self.cfg.gateway.language, code, by.name if by else acknowledged_by
        )

    async def voice(self, request: web.Request, params: dict[str, str]) -> web.Response:
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
        await self.views.record_received(
            "voice_input",
            actor=person.id if person else callee,
            alarm=ids[0],
            digits=digits[:8],
            sid=call_sid,
            answered_by=answered_by or None,
        )
        if answered_by.startswith("machine") or answered_by == "fax":
            # voicemail never acknowledges
            return xml(voice_reply(guard_texts.ack_reply_error(lang, "not_allowed"), vlang))
        if person is None:
            return xml(voice_reply(guard_texts.ack_reply_error(lang, "not_allowed"), vlang))
        if digits != "1":
            spoken = [
                texts.alarm_voice(
                    lang,
                    a["kind"],
                    (p.name if (p := self.cfg.person(a["person"] or "")) else None),
                    (loc.name if (loc := self.cfg.location(a["location"] or "")) else None),
                )
                for a in await self.views.alarms_by_id(ids)
                if a["state"] in RUNNING
            ]
            if not spoken:
                return xml(voice_reply(guard_texts.ack_reply_error(lang, "no_open_alarm"), vlang))
            return xml(voice_regather(spoken, vlang, self.cfg.http.public_url + request.path_qs))
        async with self._once(f"voice:{call_sid}:{','.join(ids)}" if call_sid else None) as again:
            if again:
                return xml(voice_reply(guard_texts.ack_voice_confirmation(lang), vlang))
            res = await self.desk.ack(ids, by=person.id, via="voice", person_id=person.id)
        if not res.ok and res.error != "already_acknowledged":
            return xml(voice_reply(guard_texts.ack_reply_error(lang, _refusal(res)), vlang))
        return xml(voice_reply(guard_texts.ack_voice_confirmation(lang), vlang))

    async def status(self, request: web.Request, params: dict[str, str]) -> web.Response:
        sid = params.get("MessageSid") or params.get("CallSid") or ""
        status = params.get("MessageStatus") or params.get("CallStatus") or ""
        if not sid or not status or len(sid) > 64 or len(status) > 32:
            return error(400, "bad_status", "MessageSid/CallSid and a status are required.")
        # a replayed callback (same signature) must not move the status back or audit twice
        async with self._once(f"status:{sid}:{status}") as replayed:
            if not replayed:
                await self.views.record_delivery_status(
                    sid,
                    status,
                    error_code=params.get("ErrorCode") or None,
                    answered_by=params.get("AnsweredBy") or None,
                )
        return web.Response(status=204)


def _refusal(res: AckResult) -> guard_texts.AckProblem:
    """What a guard is told when the alarm service refused an acknowledgement."""
    return "not_allowed" if res.error == "not_allowed" else "no_open_alarm"
