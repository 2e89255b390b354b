"""The demo's scripted scenario, played through the real MQTT broker and the real HTTP server.

Nothing here calls into the engine: the actors are MQTT clients (the worker's JAA device, the
door's badge reader, an observer of the gateway's topics) and an HTTP client (the guard's SMS
reply, signed as Twilio signs it, and the API). Each scene waits for what the contract says must
happen and raises `StoryFailed` when it does not, so the demo doubles as an end-to-end test.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from twilio.request_validator import RequestValidator

from jaa_gateway.config import Assessment, Chain, Config, Location, Person
from jaa_gateway.demo.democonfig import DemoSite
from jaa_gateway.demo.simulator import Kind, MqttActor, Received, build_event, cmd_topic
from jaa_gateway.demo.timeline import Notification, Timeline

# how long a reply may take over loopback before a scene counts as failed (not scaled)
SLACK = 5.0
HEARTBEAT_EVERY = 2.0  # seconds at speed 1
SHOW_EVERY_NTH_HEARTBEAT = 5
_CODE_RE = re.compile(r"\bOK ([0-9]{4})\b")


class StoryFailed(Exception):
    """A step of the story did not happen."""

    def __init__(self, scene: str, detail: str) -> None:
        super().__init__(f"{scene}: {detail}")
        self.scene = scene
        self.detail = detail


@dataclass(frozen=True)
class Cast:
    """Who plays which part, read from the demo config (so the file may be edited)."""

    worker: Person
    device: str
    assessment: Assessment
    location: Location
    door: str
    student: Person
    chain: Chain

    @staticmethod
    def of(cfg: Config) -> Cast:
        for dev in cfg.devices:
            worker = cfg.person(dev.person)
            if worker is None or not worker.badges:
                continue
            for a in cfg.assessments:
                if a.person != worker.id or a.checkin_interval is None:
                    continue
                for lid in a.locations:
                    loc = cfg.location(lid)
                    chain = cfg.chain(loc.escalation) if loc else None
                    if loc is None or not loc.doors or chain is None:
                        continue
                    student = _student(cfg, worker)
                    return Cast(worker, dev.id, a, loc, loc.doors[0], student, chain)
        raise ValueError(
            "the demo config needs a worker with a device, a badge and a risk assessment with "
            "check-ins for a location that has a door"
        )


def _student(cfg: Config, worker: Person) -> Person:
    assessed = {a.person for a in cfg.assessments}
    for p in cfg.people:
        if p.id != worker.id and p.badges and p.id not in assessed and p.supervisor:
            return p
    raise ValueError(
        "the demo config needs a person with a badge and a supervisor but no risk assessment"
    )


def _secs(td: dt.timedelta | None) -> float:
    return td.total_seconds() if td is not None else 0.0


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.3g} s"


def describe(payload: dict[str, Any] | None) -> str:
    """One line for a command the gateway sent."""
    if payload is None:
        return "(not JSON)"
    t = payload.get("type", "?")
    re_ = f" [answers {payload['re']}]" if payload.get("re") else ""
    if t == "session_started":
        every = payload.get("checkin_interval_s")
        ask = f"check in every {_fmt_s(every)}" if every else "no check-ins"
        return f"session_started {payload.get('session')} ({ask}){re_}"
    if t == "session_denied":
        return f"session_denied {payload.get('reason')}: {payload.get('detail')}{re_}"
    if t == "checkin_due":
        return (
            f"checkin_due ({payload.get('reason')}): check in within "
            f"{_fmt_s(float(payload.get('grace_s') or 0))}{re_}"
        )
    if t == "prealarm":
        return (
            f"prealarm {payload.get('kind')} {payload.get('alarm')}: cancel within "
            f"{_fmt_s(float(payload.get('cancel_within_s') or 0))}{re_}"
        )
    if t == "alarm_raised":
        return f"alarm_raised {payload.get('kind')} {payload.get('alarm')}: guards are called{re_}"
    if t == "alarm_acknowledged":
        return f"alarm_acknowledged {payload.get('alarm')} by {payload.get('by')}: help is coming"
    if t in ("alarm_cancelled", "session_ended"):
        return f"{t} {payload.get('alarm') or payload.get('session')}{re_}"
    return f"{t} {payload}"


@dataclass
class Outcome:
    """What the story saw, for the summary."""

    heartbeats: int = 0
    missed_alarm: str | None = None
    man_down_alarm: str | None = None
    guard: Person | None = None
    code: str | None = None
    ack_latency_s: float | None = None
    cancelled_by_ack: int = 0
    audit: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class Story:
    def __init__(self, site: DemoSite, tl: Timeline, mqtt_port: int, speed: float) -> None:
        self.site = site
        self.cfg = site.cfg
        self.tl = tl
        self.port = mqtt_port
        self.speed = speed
        self.prefix = self.cfg.mqtt.topic_prefix
        self.cast = Cast.of(self.cfg)
        self.out = Outcome()
        self.scene_title = "start"
        self.show_heartbeats = True
        # after the missed check-in scene the worker answers every checkin_due at once, so a
        # slow machine cannot turn the rest of the tour into a second missed check-in
        self.answer_checkins = False
        self._http: aiohttp.ClientSession | None = None
        self.device: MqttActor | None = None
        self.door: MqttActor | None = None
        self.observer: MqttActor | None = None

    # ------------------------------------------------------------------ plumbing

    def fail(self, detail: str) -> StoryFailed:
        return StoryFailed(self.scene_title, detail)

    def scene(self, title: str) -> None:
        self.scene_title = title
        self.tl.scene(title)

    async def pause(self, seconds_at_speed_1: float) -> None:
        await asyncio.sleep(seconds_at_speed_1 / self.speed)

    def _show_cmd(self, actor: MqttActor, rec: Received) -> None:
        self.tl.line("gateway", "mqtt", f"-> {actor.name}: {describe(rec.payload)}", at=rec.at)

    def _show_gateway_topic(self, actor: MqttActor, rec: Received) -> None:
        name = rec.topic.removeprefix(f"{self.prefix}/gateway/")
        p = rec.payload
        if name == "status":
            what = f"status {p.get('state') if p else rec.raw!r} (retained)"
        elif not rec.raw:
            what = f"{name}: cleared (empty retained message)"
        elif p is not None:
            what = f"{name}: {p.get('state')} {p.get('kind')}, code {p.get('code')} (retained)"
        else:
            what = f"{name}: {rec.raw!r}"
        self.tl.line("gateway", "mqtt", what, at=rec.at)

    @asynccontextmanager
    async def actors(self) -> AsyncIterator[None]:
        """Connect the actors and keep the worker's device sending heartbeats."""
        c, host = self.cast, "127.0.0.1"
        self.scene("The gateway starts")
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            MqttActor(
                host,
                self.port,
                "observer",
                topics=[f"{self.prefix}/gateway/#"],
                on_message=self._show_gateway_topic,
            ) as observer,
            MqttActor(
                host,
                self.port,
                c.device,
                topics=[cmd_topic(self.prefix, "device", c.device)],
                on_message=self._show_cmd,
            ) as device,
            MqttActor(
                host,
                self.port,
                c.door,
                topics=[cmd_topic(self.prefix, "door", c.door)],
                on_message=self._show_cmd,
            ) as door,
        ):
            self._http, self.device, self.door, self.observer = http, device, door, observer
            tasks = [
                asyncio.create_task(self._heartbeats(device), name="demo-heartbeats"),
                asyncio.create_task(self._checkins(device), name="demo-checkins"),
            ]
            try:
                yield
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t

    async def _heartbeats(self, device: MqttActor) -> None:
        battery = 100.0
        while True:
            self.out.heartbeats += 1
            n = self.out.heartbeats
            fields = {
                "battery": round(battery, 1),
                "lat": 63.4190 + secrets.randbelow(10) / 100_000,
                "lon": 10.4020 + secrets.randbelow(10) / 100_000,
            }
            await self._send(device, "device", self.cast.device, "heartbeat", fields, quiet=True)
            if self.show_heartbeats and (n == 1 or n % SHOW_EVERY_NTH_HEARTBEAT == 0):
                self.tl.line(
                    self.cast.device,
                    "mqtt",
                    f"heartbeat #{n} (battery {battery:.0f} %) - one every "
                    f"{_fmt_s(HEARTBEAT_EVERY / self.speed)}, shown every "
                    f"{SHOW_EVERY_NTH_HEARTBEAT}th",
                )
            battery = max(5.0, battery - 0.5)
            await self.pause(HEARTBEAT_EVERY)

    async def _checkins(self, device: MqttActor) -> None:
        since = 0
        while True:
            rec = await device.wait_for(lambda r: r.type == "checkin_due", 3600.0, since)
            if rec is None:
                continue
            since = next(i for i, r in enumerate(device.received) if r is rec) + 1
            if self.answer_checkins and rec.payload and rec.payload.get("reason") == "checkin":
                await self._send(
                    device,
                    "device",
                    self.cast.device,
                    "checkin",
                    {},
                    label="checkin (the worker answers checkin_due)",
                )

    async def _send(
        self,
        actor: MqttActor,
        kind: Kind,
        sender: str,
        etype: str,
        fields: dict[str, Any],
        *,
        quiet: bool = False,
        label: str = "",
    ) -> str:
        """Publish one event as `sender`; `label` replaces the default 'type key=value' text."""
        eid = f"{etype}-{secrets.token_hex(4)}"
        topic, payload = build_event(
            self.prefix, kind, sender, etype, fields, event_id=eid, now=dt.datetime.now(dt.UTC)
        )
        if not quiet:
            extra = "".join(f" {k}={v}" for k, v in fields.items() if v is not None)
            self.tl.line(sender, "mqtt", f"{label or etype + extra} (id {eid})")
        await actor.publish(topic, payload)
        return eid

    async def _badge(self, door: MqttActor, who: Person) -> str:
        card = who.badges[0]
        label = f"badge {card} ({who.name}'s card)"
        return await self._send(door, "door", self.cast.door, "badge", {"badge": card}, label=label)

    async def expect(
        self,
        actor: MqttActor,
        what: str,
        pred: Callable[[dict[str, Any]], bool],
        timeout: float,
        since: int = 0,
    ) -> dict[str, Any]:
        rec = await actor.wait_for(
            lambda r: r.payload is not None and pred(r.payload), timeout, since
        )
        if rec is None or rec.payload is None:
            raise self.fail(
                f"{what} did not arrive on {actor.name}'s cmd topic within {timeout:.1f} s"
            )
        return rec.payload

    async def expect_notification(
        self, what: str, pred: Callable[[Notification], bool], timeout: float, since: int = 0
    ) -> Notification:
        deadline = time.monotonic() + timeout
        while True:
            for n in self.tl.notifications[since:]:
                if pred(n):
                    return n
            if time.monotonic() > deadline:
                raise self.fail(f"{what} was not sent within {timeout:.1f} s")
            await asyncio.sleep(0.02)

    async def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        assert self._http is not None
        headers = {"Authorization": f"Bearer {self.site.api_token}"}
        async with self._http.request(
            method, self.site.http_url + path, json=body, headers=headers
        ) as r:
            data = await r.json(content_type=None)
            if r.status >= 300:
                raise self.fail(f"{method} {path} answered {r.status}: {data}")
            return data

    # ------------------------------------------------------------------ the scenes

    async def play(self) -> Outcome:
        assert self.device is not None and self.door is not None and self.observer is not None
        await self._start(self.observer)
        await self._badge_in(self.door, self.device)
        await self._student_denied(self.door)
        alarm_id, code, guard = await self._missed_checkin(self.device)
        await self._guard_acks(self.device, alarm_id, code, guard)
        await self._man_down(self.device)
        await self._badge_out(self.door, self.device)
        await self._final_checks()
        return self.out

    async def _start(self, observer: MqttActor) -> None:
        got = await observer.wait_for(
            lambda r: (
                r.topic.endswith("/gateway/status")
                and r.payload is not None
                and r.payload.get("state") == "online"
            ),
            SLACK,
        )
        if got is None:
            raise self.fail("the gateway did not publish status online")
        c = self.cast
        self.tl.note(
            f"{c.worker.name} carries the JAA device {c.device}; it sends heartbeats all along."
        )
        await self.pause(1.0)

    async def _badge_in(self, door: MqttActor, device: MqttActor) -> None:
        c = self.cast
        self.scene(f"{c.worker.name} (chemist) badges in at {c.location.name}")
        self.tl.note(
            f"risk assessment {c.assessment.id}: '{c.assessment.activity}', lone work allowed, "
            f"check-in every {_fmt_s(_secs(c.assessment.checkin_interval))}"
        )
        d0, m0 = door.mark(), device.mark()
        eid = await self._badge(door, c.worker)
        started = await self.expect(
            door,
            "session_started",
            lambda p: p.get("type") == "session_started" and p.get("re") == eid,
            SLACK,
            d0,
        )
        await self.expect(
            device,
            "session_started (to the worker's device)",
            lambda p: p.get("type") == "session_started" and p.get("session") == started["session"],
            SLACK,
            m0,
        )
        await self.pause(1.0)

    async def _student_denied(self, door: MqttActor) -> None:
        c = self.cast
        sup = self.cfg.person(c.student.supervisor or "")
        assert sup is not None
        self.scene(f"{c.student.name} (student, no risk assessment) badges in")
        d0, n0 = door.mark(), len(self.tl.notifications)
        eid = await self._badge(door, c.student)
        await self.expect(
            door,
            "session_denied (no_assessment)",
            lambda p: (
                p.get("type") == "session_denied"
                and p.get("re") == eid
                and p.get("reason") == "no_assessment"
            ),
            SLACK,
            d0,
        )
        await self.expect_notification(
            f"the SMS to the supervisor {sup.name}",
            lambda n: n.channel == "sms" and n.to == sup.phone and c.student.name in n.text,
            SLACK,
            n0,
        )
        await self.pause(1.0)

    async def _missed_checkin(self, device: MqttActor) -> tuple[str, str, Person]:
        c = self.cast
        interval = _secs(c.assessment.checkin_interval)
        grace = _secs(self.cfg.timing.checkin_grace)
        self.scene(f"{c.worker.name} misses a check-in")
        self.tl.note(
            f"a check-in is due {_fmt_s(interval)} after the start; {c.worker.name} is busy "
            "and does not press OK"
        )
        due = await self.expect(
            device,
            "checkin_due",
            lambda p: p.get("type") == "checkin_due" and p.get("reason") == "checkin",
            interval + SLACK,
        )
        self.tl.note(f"{_fmt_s(float(due.get('grace_s') or grace))} of grace, then the alarm")
        n0 = len(self.tl.notifications)
        raised = await self.expect(
            device,
            "alarm_raised (missed_checkin)",
            lambda p: p.get("type") == "alarm_raised" and p.get("kind") == "missed_checkin",
            grace + SLACK,
        )
        alarm_id = str(raised["alarm"])
        first = self.cast.chain.steps[0]
        sms = await self.expect_notification(
            "the first step's alarm SMS (with the code to reply)",
            lambda n: (
                n.channel == "sms" and c.worker.name in n.text and bool(_CODE_RE.search(n.text))
            ),
            SLACK,
            n0,
        )
        m = _CODE_RE.search(sms.text)
        assert m is not None
        guard = self.cfg.person_by_phone(sms.to)
        if guard is None:
            raise self.fail(f"the alarm SMS went to {sms.to}, who is nobody in the config")
        if "call" in first.via:
            await self.expect_notification(
                f"the call to {guard.name}",
                lambda n: n.channel == "call" and n.to == guard.phone,
                SLACK,
                n0,
            )
        if len(self.cast.chain.steps) > 1:
            after = _secs(self.cast.chain.steps[1].after)
            self.scene("Nobody has answered yet: the escalation goes on")
            self.tl.note(f"step 2 of chain '{c.chain.id}' runs {_fmt_s(after)} after the start")
            n1 = len(self.tl.notifications)
            await self.expect_notification(
                "the second escalation step",
                lambda n: c.worker.name in n.text,
                after + SLACK,
                n1,
            )
        self.out.missed_alarm, self.out.code, self.out.guard = alarm_id, m.group(1), guard
        return alarm_id, m.group(1), guard

    async def _guard_acks(self, device: MqttActor, alarm_id: str, code: str, guard: Person) -> None:
        c = self.cast
        self.scene(f"{guard.name} acknowledges by replying to the SMS")
        await self.pause(1.0)
        body = f"OK {code}"
        params = {
            # what Twilio posts for an incoming SMS, blank fields included (they are signed too)
            "ToCountry": "NO",
            "SmsMessageSid": "SM" + secrets.token_hex(16),
            "NumMedia": "0",
            "FromZip": "",
            "FromCity": "",
            "From": guard.phone,
            "To": self.cfg.twilio.from_number if self.cfg.twilio else "",
            "Body": body,
            "AccountSid": self.cfg.twilio.account_sid if self.cfg.twilio else "",
            "ApiVersion": "2010-04-01",
        }
        params["MessageSid"] = params["SmsMessageSid"]
        url = self.cfg.http.public_url + "/twilio/sms"
        signature = RequestValidator(self.site.twilio_token).compute_signature(url, params)
        self.tl.line(
            guard.name, "sms", f"-> gateway: {body!r} (Twilio posts it to /twilio/sms, signed)"
        )
        m0 = device.mark()
        assert self._http is not None
        async with self._http.post(
            self.site.http_url + "/twilio/sms",
            data=params,
            headers={"X-Twilio-Signature": str(signature)},
        ) as r:
            text = await r.text()
            if r.status != 200:
                raise self.fail(f"POST /twilio/sms answered {r.status}: {text[:200]}")
        reply = " ".join(m.text or "" for m in ET.fromstring(text).iter("Message")).strip()
        self.tl.line("gateway", "sms", f"-> {guard.name} (the webhook's reply): {reply}")
        await self.expect(
            device,
            "alarm_acknowledged",
            lambda p: (
                p.get("type") == "alarm_acknowledged"
                and p.get("alarm") == alarm_id
                and p.get("by") == guard.id
            ),
            SLACK,
            m0,
        )
        self.answer_checkins = True
        self.scene(f"{c.worker.name} checks in; {guard.name} closes the alarm")
        self.tl.note(f"{c.worker.name} was in the fume cupboard with gloves on, and presses OK")
        await self._send(device, "device", c.device, "checkin", {})
        await self.pause(0.5)
        note = f"{c.worker.name} was fine: busy at the fume cupboard. Talked to them."
        self.tl.line(guard.name, "http", f"POST /api/alarms/{alarm_id}/resolve note={note!r}")
        res = await self.api(
            "POST", f"/api/alarms/{alarm_id}/resolve", {"by": guard.id, "note": note}
        )
        if res.get("state") != "resolved":
            raise self.fail(f"the alarm is {res.get('state')} after resolve, not resolved")
        self.tl.line("gateway", "http", f"200: alarm {alarm_id} is {res['state']}")
        await self.pause(0.5)

    async def _man_down(self, device: MqttActor) -> None:
        c = self.cast
        self.scene(f"{c.worker.name}'s device detects a fall, and the pre-alarm is cancelled")
        m0 = device.mark()
        await self._send(device, "device", c.device, "man_down", {"lat": 63.41905, "lon": 10.40231})
        pre = await self.expect(
            device,
            "prealarm (man_down)",
            lambda p: p.get("type") == "prealarm" and p.get("kind") == "man_down",
            SLACK,
            m0,
        )
        alarm_id = str(pre["alarm"])
        window = float(pre.get("cancel_within_s") or 0.0)
        self.tl.note("only a dropped glove: the worker presses cancel")
        await asyncio.sleep(min(1.0 / self.speed, window / 3))
        m1 = device.mark()
        eid = await self._send(device, "device", c.device, "cancel", {"alarm": alarm_id})
        await self.expect(
            device,
            "alarm_cancelled",
            lambda p: p.get("type") == "alarm_cancelled" and p.get("re") == eid,
            SLACK,
            m1,
        )
        info = await self.api("GET", f"/api/alarms/{alarm_id}")
        sent = info.get("notifications") or []
        if info.get("state") != "cancelled" or sent:
            raise self.fail(
                f"the man_down alarm is {info.get('state')} with {len(sent)} notification(s); "
                "expected cancelled with none"
            )
        self.tl.line("gateway", "http", f"GET /api/alarms/{alarm_id}: cancelled, nobody was paged")
        self.out.man_down_alarm = alarm_id
        await self.pause(1.0)

    async def _badge_out(self, door: MqttActor, device: MqttActor) -> None:
        c = self.cast
        self.scene(f"{c.worker.name} badges out: the session ends")
        d0, m0 = door.mark(), device.mark()
        eid = await self._badge(door, c.worker)
        await self.expect(
            door,
            "session_ended",
            lambda p: p.get("type") == "session_ended" and p.get("re") == eid,
            SLACK,
            d0,
        )
        await self.expect(
            device,
            "session_ended (to the worker's device)",
            lambda p: p.get("type") == "session_ended",
            SLACK,
            m0,
        )

    async def _final_checks(self) -> None:
        self.scene_title = "final checks"
        sessions = await self.api("GET", "/api/sessions")
        if sessions.get("sessions"):
            raise self.fail(f"sessions are still active: {sessions['sessions']}")
        open_alarms = await self.api("GET", "/api/alarms?state=open")
        if open_alarms.get("alarms"):
            ids = [a["id"] for a in open_alarms["alarms"]]
            raise self.fail(f"alarms are still open: {ids}")
        assert self.out.missed_alarm is not None
        alarm = await self.api("GET", f"/api/alarms/{self.out.missed_alarm}")
        opened = dt.datetime.fromisoformat(alarm["opened_at"])
        acked = dt.datetime.fromisoformat(alarm["acknowledged_at"])
        self.out.ack_latency_s = (acked - opened).total_seconds()
        self.out.cancelled_by_ack = sum(
            1 for n in alarm.get("notifications", []) if n.get("state") == "cancelled"
        )
        events = await self.api("GET", "/api/audit")
        counts: dict[str, int] = {}
        for e in events.get("events", []):
            counts[e["event"]] = counts.get(e["event"], 0) + 1
        self.out.audit = counts
        assert self._http is not None
        async with self._http.get(self.site.http_url + "/metrics") as r:
            text = await r.text()
        self.out.metrics = _metric_values(text)
        expected = {
            "session_started": 1,
            "session_denied": 1,
            "session_ended": 1,
            "alarm_raised": 2,
            "alarm_acknowledged": 1,
            "alarm_resolved": 1,
            "alarm_cancelled": 1,
        }
        wrong = {k: counts.get(k, 0) for k, v in expected.items() if counts.get(k, 0) != v}
        if wrong:
            raise self.fail(f"the audit log disagrees with the story: {wrong}, expected {expected}")
        for channel, seen in (("sms", len(self.tl.sms())), ("call", len(self.tl.calls()))):
            counted = self.out.metrics.get(
                f'jaa_notifications_total{{channel="{channel}",outcome="sent"}}', 0
            )
            if int(counted) != seen:
                raise self.fail(
                    f"/metrics counts {int(counted)} {channel} sent, the console showed {seen}"
                )


def _metric_values(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{label="v",...}': value}."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out
