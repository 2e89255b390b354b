"""Alarm rules: raise, pre-alarm, escalate step by step, cancel, acknowledge, resolve.

A mixin of the Engine (it shares the engine's lock, transaction and effects). The escalation
timetable itself is pure (`domain/escalation.py`); this module stores its progress on the alarm
row (`next_k`, `next_due_at`, `generation`) so a restart continues where it was.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import and_, insert, update

from jaa_gateway.config import Config, Person
from jaa_gateway.deadlines import Deadlines
from jaa_gateway.domain import escalation, texts
from jaa_gateway.domain.model import ChainSnapshot, StepSnapshot
from jaa_gateway.effects import Publisher, Tx
from jaa_gateway.metrics import Metrics
from jaa_gateway.store import queries as q
from jaa_gateway.store.db import Store
from jaa_gateway.store.schema import alarms, notifications
from jaa_gateway.wire import mqtt as mqtt_wire

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from jaa_gateway.domain.events import DeviceEvent

log = structlog.get_logger("jaa_gateway.alarms")

ESCALATING = ("prealarm", "escalating")
# built once: constructing a statement per row costs more than running it
_INSERT_NOTIFICATION = insert(notifications)
_INSERT_ALARM = insert(alarms)


@dataclass(frozen=True)
class AckResult:
    ok: bool
    error: str | None = None  # not_found | not_open | already_acknowledged | not_allowed
    detail: str = ""
    alarms: tuple[dict[str, Any], ...] = ()


class AlarmOps:
    cfg: Config
    store: Store
    publisher: Publisher
    deadlines: Deadlines
    metrics: Metrics
    clock: Callable[[], dt.datetime]
    alarm_stopped_hook: Callable[[str], None] | None

    if TYPE_CHECKING:

        def unit(self) -> AbstractAsyncContextManager[Tx]: ...
        def to_device(self, tx: Tx, device_id: str | None, payload: dict[str, Any]) -> None: ...
        def alarm_topic(self, alarm_id: str) -> str: ...
        def iso(self, ts: float | None) -> str | None: ...

    # ------------------------------------------------------------------ outbox

    def on_alarm_stopped(self, alarm_id: str) -> None:
        """The outbox drops step rows of this alarm it has claimed but not started yet."""
        if self.alarm_stopped_hook is not None:
            self.alarm_stopped_hook(alarm_id)

    async def enqueue(
        self,
        tx: Tx,
        *,
        alarm: str | None,
        purpose: str,
        k: int | None,
        person: str | None,
        phone: str,
        channel: str,
        body: str,
    ) -> None:
        # The first SMS of an alarm (and any SMS that is no escalation step) is claimed by this
        # very transaction and handed to the sender after the commit: no second transaction
        # stands between an alarm and its first SMS. Later steps wait as 'pending' for the
        # sender's claim, so an acknowledgement stored before that claim cancels them. Calls
        # always go through the sender's pass, which paces them per number.
        direct = channel == "sms" and (purpose != "alarm" or k == 0)
        row: dict[str, Any] = {
            "alarm": alarm,
            "purpose": purpose,
            "k": k,
            "person": person,
            "phone": phone,
            "channel": channel,
            "body": body,
            "state": "sending" if direct else "pending",
            "attempts": 1 if direct else 0,
            "next_attempt_at": tx.ts,
            "created_at": tx.ts,
        }
        res = await tx.conn.execute(_INSERT_NOTIFICATION, row)
        if direct:
            pk = res.inserted_primary_key
            assert pk is not None
            row["id"] = pk[0]
            row["attempts"] = 0  # what the sender's bookkeeping counts from
            tx.direct.append(row)
        tx.wake_outbox = True

    def _publish_alarm(self, tx: Tx, a: dict[str, Any]) -> None:
        """Retained alarm topic while open; an empty retained message clears it."""
        if a["state"] in ("prealarm", "escalating", "acknowledged"):
            tx.publish(
                self.alarm_topic(a["id"]), mqtt_wire.alarm_retained(a, self.cfg.tz), retain=True
            )
        else:
            tx.publish(self.alarm_topic(a["id"]), None, retain=True)

    async def republish_open_alarms(self) -> None:
        """After a (re)connect: the retained topics may have been lost with the broker."""
        async with self.unit() as tx:
            for a in await q.open_alarms(tx.conn):
                self._publish_alarm(tx, a)

    # ------------------------------------------------------------------ raising

    async def _new_code(self, tx: Tx) -> str:
        """A 4-digit code, unique among open alarms while that is possible.

        With thousands of open alarms the 10,000 codes run out; raising the alarm matters more
        than a unique code, so a taken one is used then. An SMS reply is matched only against
        the alarms its sender was told about, and two of those with one code get "ambiguous".
        """
        code = f"{secrets.randbelow(10000):04d}"
        for _ in range(50):
            if not await q.code_taken(tx.conn, code):
                return code
            code = f"{secrets.randbelow(10000):04d}"
        log.warning("alarm_code_reused")
        return code

    async def _open(
        self,
        tx: Tx,
        *,
        kind: str,
        person: str | None,
        location: str | None,
        session: str | None,
        device: str | None,
        lat: float | None,
        lon: float | None,
        chain_id: str,
        prealarm: bool,
    ) -> dict[str, Any]:
        chain = self.cfg.chain(chain_id)
        assert chain is not None  # cross-checked in config
        # the steps are frozen now; who they page is looked up as each goes out (_run_due_steps)
        snap = escalation.snapshot_chain(self.cfg, chain, person, tx.now)
        row: dict[str, Any] = {
            "id": "alm-" + secrets.token_hex(8),
            "code": await self._new_code(tx),
            "kind": kind,
            "state": "prealarm" if prealarm else "escalating",
            "person": person,
            "location": location,
            "session": session,
            "device": device,
            "lat": lat,
            "lon": lon,
            "opened_at": tx.ts,
            "prealarm_until": None,
            "escalation_started_at": None,
            "chain": snap.to_json(),
            "generation": 0,
            "next_k": 0,
            "next_due_at": None,
            "exhausted": False,
            "acknowledged_by": None,
            "acknowledged_at": None,
            "ack_via": None,
            "resolved_at": None,
            "resolved_by": None,
            "note": None,
            "cancelled_at": None,
            "worker_ok_at": None,
        }
        if prealarm:
            row["prealarm_until"] = tx.ts + self.cfg.timing.prealarm_window.total_seconds()
        # stored before any notification goes out (guarantee 1): same transaction as the outbox
        await tx.conn.execute(_INSERT_ALARM, row)
        await q.add_audit(
            tx.conn,
            tx.ts,
            "alarm_raised",
            actor=device or person,
            alarm=row["id"],
            session=session,
            kind=kind,
            state=row["state"],
            location=location,
            chain=chain_id,
            lat=lat,
            lon=lon,
        )
        log.warning(
            "alarm_raised",
            alarm=row["id"],
            kind=kind,
            person=person,
            location=location,
            state=row["state"],
        )
        tx.after_commit.append(lambda: self.metrics.alarms_raised.labels(kind=kind).inc())
        tx.after_commit.append(lambda: self.metrics.alarms_open.inc())
        if prealarm:
            tx.set_timer(("alarm", row["id"]), row["prealarm_until"])
            self._publish_alarm(tx, row)
        else:
            await self._start_escalation(tx, row)
        return row

    async def raise_device_alarm(self, tx: Tx, ev: DeviceEvent, person: Person) -> str:
        """sos / man_down from a device; one open alarm of a kind per device."""
        existing = await q.open_alarm_of_device(tx.conn, ev.device_id, (ev.type,))
        if existing is not None:
            # the worker pressed again: same alarm, answered with its state
            await q.add_audit(
                tx.conn,
                tx.ts,
                "alarm_repeated",
                actor=ev.device_id,
                alarm=existing["id"],
                kind=ev.type,
            )
            self.to_device(
                tx, ev.device_id, mqtt_wire.alarm_state(existing, tx.now) | {"re": ev.id}
            )
            return str(existing["id"])
        s = await q.active_session_of(tx.conn, person.id)
        st = getattr(self, "devices", {}).get(ev.device_id)
        lat = ev.lat if ev.lat is not None else (st.lat if st else None)
        lon = ev.lon if ev.lon is not None else (st.lon if st else None)
        if s is not None:
            loc = self.cfg.location(s["location"])
            chain_id = loc.escalation if loc else self.cfg.gateway.default_escalation
        else:
            chain_id = self.cfg.gateway.default_escalation
        row = await self._open(
            tx,
            kind=ev.type,
            person=person.id,
            location=s["location"] if s else None,
            session=s["id"] if s else None,
            device=ev.device_id,
            lat=lat,
            lon=lon,
            chain_id=chain_id,
            prealarm=ev.type == "man_down",
        )
        # prealarm or alarm_raised, answering the event like every other answer (its "re")
        self.to_device(tx, ev.device_id, mqtt_wire.alarm_state(row, tx.now) | {"re": ev.id})
        return str(row["id"])

    async def raise_session_alarm(self, tx: Tx, s: dict[str, Any], kind: str) -> str:
        loc = self.cfg.location(s["location"])
        chain_id = loc.escalation if loc else self.cfg.gateway.default_escalation
        st = getattr(self, "devices", {}).get(s["device"]) if s["device"] else None
        row = await self._open(
            tx,
            kind=kind,
            person=s["person"],
            location=s["location"],
            session=s["id"],
            device=s["device"],
            lat=st.lat if st else None,
            lon=st.lon if st else None,
            chain_id=chain_id,
            prealarm=False,
        )
        self.to_device(tx, s["device"], mqtt_wire.alarm_state(row, tx.now))
        return str(row["id"])

    async def raise_contact_lost(self, tx: Tx) -> str:
        """A common cause (CONTRACT §4): one contact_lost alarm with no person, location or
        device, through default_escalation. Its texts say how many sessions are unwatched
        (`unwatched_now`, asked each time a step goes out)."""
        row = await self._open(
            tx,
            kind="contact_lost",
            person=None,
            location=None,
            session=None,
            device=None,
            lat=None,
            lon=None,
            chain_id=self.cfg.gateway.default_escalation,
            prealarm=False,
        )
        return str(row["id"])

    def unwatched_now(self, a: dict[str, Any]) -> int | None:
        """For a contact_lost alarm, how many sessions are unwatched now (the engine's presence
        service counts them); None for every other kind."""
        return None

    async def raise_notice(self, tx: Tx, kind: str, location_id: str, door_id: str) -> None:
        """A notice: one SMS to the first step's targets; no calls, no acknowledgement."""
        loc = self.cfg.location(location_id)
        assert loc is not None
        chain = self.cfg.chain(loc.escalation)
        assert chain is not None
        # a notice is one SMS, now: nothing to freeze, the config says who is on duty now
        targets = escalation.resolve_targets(self.cfg, chain.steps[0].notify, None, tx.now)
        aid = "alm-" + secrets.token_hex(8)
        await tx.conn.execute(
            insert(alarms).values(
                id=aid,
                code="----",
                kind=kind,
                state="notice",
                person=None,
                location=location_id,
                session=None,
                device=None,
                opened_at=tx.ts,
                generation=0,
                next_k=0,
                exhausted=False,
            )
        )
        local = tx.now.astimezone(self.cfg.tz).strftime("%H:%M")
        body = texts.notice_sms(self.cfg.gateway.language, kind, loc.name, door_id, local)
        for t in targets:
            await self.enqueue(
                tx,
                alarm=aid,
                purpose="notice",
                k=None,
                person=t.person_id,
                phone=t.phone,
                channel="sms",
                body=body,
            )
        await q.add_audit(
            tx.conn,
            tx.ts,
            "notice_raised",
            alarm=aid,
            kind=kind,
            location=location_id,
            door=door_id,
            targets=[t.person_id for t in targets],
        )
        log.warning("notice_raised", alarm=aid, kind=kind, location=location_id, door=door_id)
        if not targets:
            log.error("notice_without_targets", alarm=aid, kind=kind, location=location_id)

    # ------------------------------------------------------------------ escalation

    def _alarm_timer(self, tx: Tx, a: dict[str, Any]) -> None:
        if a["state"] == "prealarm" and a["prealarm_until"] is not None:
            tx.set_timer(("alarm", a["id"]), a["prealarm_until"])
        elif a["state"] == "escalating" and a["next_due_at"] is not None:
            tx.set_timer(("alarm", a["id"]), a["next_due_at"])
        else:
            tx.set_timer(("alarm", a["id"]), None)

    async def _start_escalation(self, tx: Tx, a: dict[str, Any]) -> None:
        a["state"] = "escalating"
        a["escalation_started_at"] = tx.ts
        await q.update_alarm(
            tx.conn,
            a,
            state="escalating",
            escalation_started_at=tx.ts,
        )
        await q.add_audit(
            tx.conn,
            tx.ts,
            "escalation_started",
            alarm=a["id"],
            chain=a["chain"]["chain_id"] if a["chain"] else None,
        )
        await self._run_due_steps(tx, a)
        self._publish_alarm(tx, a)

    async def _run_due_steps(self, tx: Tx, a: dict[str, Any]) -> None:
        snap = ChainSnapshot.from_json(a["chain"])
        start = dt.datetime.fromtimestamp(a["escalation_started_at"], dt.UTC)
        steps = escalation.due_steps(snap, start, int(a["next_k"]), tx.now)
        lang = self.cfg.gateway.language
        person = self.cfg.person(a["person"]) if a["person"] else None
        loc = self.cfg.location(a["location"]) if a["location"] else None
        worker = person.name if person else None
        where = loc.name if loc else None
        exhausted_at = escalation.exhausted_after(snap)
        next_k = int(a["next_k"])
        for p in steps:
            step = snap.steps[p.step_index]
            # who is on duty is looked up now, as this step goes out (CONTRACT §4)
            people = escalation.resolve_step(self.cfg, step, a["person"], tx.now)
            n = self.unwatched_now(a)
            sms = texts.alarm_sms(
                lang, a["kind"], worker, where, a["code"], a["lat"], a["lon"], unwatched=n
            )
            voice = texts.alarm_voice(lang, a["kind"], worker, where, unwatched=n)
            for t in people.targets:
                for ch in step.via:
                    await self.enqueue(
                        tx,
                        alarm=a["id"],
                        purpose="alarm",
                        k=p.k,
                        person=t.person_id,
                        phone=t.phone,
                        channel=ch,
                        body=sms if ch == "sms" else voice,
                    )
            await self._audit_step(tx, a, p, step, people, start)
            next_k = p.k + 1
            if next_k >= exhausted_at and not a["exhausted"]:
                a["exhausted"] = True
                await q.add_audit(tx.conn, tx.ts, "escalation_exhausted", alarm=a["id"])
                log.error("escalation_exhausted", alarm=a["id"])
        nxt = escalation.next_due(snap, start, next_k)
        a["next_k"] = next_k
        a["next_due_at"] = nxt.timestamp() if nxt is not None else None
        await q.update_alarm(
            tx.conn, a, next_k=next_k, next_due_at=a["next_due_at"], exhausted=a["exhausted"]
        )
        self._alarm_timer(tx, a)

    async def _audit_step(
        self,
        tx: Tx,
        a: dict[str, Any],
        p: escalation.PlannedStep,
        step: StepSnapshot,
        people: escalation.StepPeople,
        start: dt.datetime,
    ) -> None:
        """The timeline entry of one step: who was paged and which entry named each of them;
        an entry the config no longer knows, and a step that reached nobody, are errors."""
        await q.add_audit(
            tx.conn,
            tx.ts,
            "escalation_step",
            alarm=a["id"],
            k=p.k,
            run=p.run,
            step=p.step_index,
            keep_paging=p.is_keep_paging,
            due_at=self.iso((start + p.offset).timestamp()),
            targets=[t.person_id for t in people.targets],
            paged=[pg.to_json() for pg in people.pages],
            via=list(step.via),
        )
        for entry in people.missing:
            fell_back = [pg.target.person_id for pg in people.pages if pg.source == entry]
            await q.add_audit(
                tx.conn,
                tx.ts,
                "escalation_target_missing",
                alarm=a["id"],
                k=p.k,
                entry=entry,
                fallback=fell_back,
            )
            log.error(
                "escalation_target_missing", alarm=a["id"], k=p.k, entry=entry, fallback=fell_back
            )
        if not people.pages:
            await q.add_audit(
                tx.conn,
                tx.ts,
                "escalation_step_without_targets",
                alarm=a["id"],
                k=p.k,
                step=p.step_index,
                spec=list(step.spec),
            )
            log.error("escalation_step_without_targets", alarm=a["id"], k=p.k, step=p.step_index)

    async def alarm_deadline(self, tx: Tx, alarm_id: str) -> None:
        a = await q.get_alarm(tx.conn, alarm_id)
        if a is None:
            return
        if a["state"] == "prealarm":
            if a["prealarm_until"] is not None and a["prealarm_until"] > tx.ts + 0.001:
                self._alarm_timer(tx, a)
                return
            await self._start_escalation(tx, a)
            self.to_device(tx, a["device"], mqtt_wire.alarm_state(a, tx.now))
        elif a["state"] == "escalating":
            await self._run_due_steps(tx, a)

    # ------------------------------------------------------------------ the worker

    async def worker_cancel(self, tx: Tx, ev: DeviceEvent, person: Person) -> str | None:
        a: dict[str, Any] | None = None
        if ev.alarm:
            a = await q.get_alarm(tx.conn, ev.alarm)
            if a is not None and a["device"] != ev.device_id:
                log.warning("cancel_for_foreign_alarm", device=ev.device_id, alarm=ev.alarm)
                a = None
        if a is None:
            a = await q.open_alarm_of_device(tx.conn, ev.device_id)
        if a is None:
            await q.add_audit(tx.conn, tx.ts, "cancel_without_alarm", actor=ev.device_id)
            self.to_device(tx, ev.device_id, mqtt_wire.alarm_cancelled(None) | {"re": ev.id})
            return None
        if a["state"] == "prealarm":
            await q.update_alarm(
                tx.conn,
                a,
                state="cancelled",
                cancelled_at=tx.ts,
            )
            a["state"] = "cancelled"
            await q.add_audit(
                tx.conn, tx.ts, "alarm_cancelled", actor=person.id, alarm=a["id"], by="worker"
            )
            log.info("alarm_cancelled", alarm=a["id"])
            tx.set_timer(("alarm", a["id"]), None)
            self._publish_alarm(tx, a)
            tx.after_commit.append(lambda: self.metrics.alarms_open.dec())
        elif a["state"] == "escalating":
            await self._worker_ok(tx, a, person)
        self.to_device(tx, ev.device_id, mqtt_wire.alarm_state(a, tx.now) | {"re": ev.id})
        return str(a["id"])

    async def worker_reports_ok(self, tx: Tx, device_id: str, kinds: tuple[str, ...]) -> None:
        a = await q.open_alarm_of_device(tx.conn, device_id, kinds)
        if a is not None and a["state"] == "escalating":
            p = self.cfg.person(a["person"]) if a["person"] else None
            if p is not None:
                await self._worker_ok(tx, a, p)

    async def _worker_ok(self, tx: Tx, a: dict[str, Any], person: Person) -> None:
        """Escalation goes on; those already told get an SMS that the worker reports OK."""
        if a["worker_ok_at"] is not None:
            return
        await q.update_alarm(tx.conn, a, worker_ok_at=tx.ts)
        a["worker_ok_at"] = tx.ts
        loc = self.cfg.location(a["location"]) if a["location"] else None
        body = texts.worker_ok_sms(
            self.cfg.gateway.language, a["kind"], person.name, loc.name if loc else None, a["code"]
        )
        told = await q.notified_people(tx.conn, a["id"])
        seen: set[str] = set()
        for t in told:
            if t["phone"] in seen:
                continue
            seen.add(t["phone"])
            await self.enqueue(
                tx,
                alarm=a["id"],
                purpose="worker_ok",
                k=None,
                person=t["person"],
                phone=t["phone"],
                channel="sms",
                body=body,
            )
        await q.add_audit(
            tx.conn,
            tx.ts,
            "worker_reports_ok",
            actor=person.id,
            alarm=a["id"],
            told=sorted({t["person"] for t in told if t["person"]}),
        )

    # ------------------------------------------------------------------ guards

    async def ack(
        self,
        alarm_ids: list[str],
        *,
        by: str,
        via: str,
        person_id: str | None,
    ) -> AckResult:
        """Acknowledge. `person_id` set (SMS/voice): only someone notified for the alarm."""
        async with self.unit() as tx:
            done: list[dict[str, Any]] = []
            for aid in alarm_ids:
                a = await q.get_alarm(tx.conn, aid)
                if a is None or a["state"] == "notice":
                    return AckResult(False, "not_found", f"No alarm {aid}.")
                if a["state"] in ("acknowledged", "resolved"):
                    if len(alarm_ids) == 1:
                        return AckResult(
                            False,
                            "already_acknowledged",
                            f"Alarm {aid} was already acknowledged by {a['acknowledged_by']}.",
                            (a,),
                        )
                    continue
                if a["state"] not in ESCALATING:
                    return AckResult(False, "not_open", f"Alarm {aid} is {a['state']}.")
                if person_id is not None and not await q.was_notified(tx.conn, aid, person_id):
                    await q.add_audit(
                        tx.conn,
                        tx.ts,
                        "ack_refused",
                        actor=person_id,
                        alarm=aid,
                        via=via,
                        why="not notified for this alarm",
                    )
                    return AckResult(
                        False, "not_allowed", f"{person_id} was not notified for alarm {aid}."
                    )
                gen = int(a["generation"]) + 1
                await q.update_alarm(
                    tx.conn,
                    a,
                    state="acknowledged",
                    acknowledged_by=by,
                    acknowledged_at=tx.ts,
                    ack_via=via,
                    next_due_at=None,
                )
                # nothing may start after the ack is stored: pending step rows are cancelled
                # in the same transaction, and the sender's claim checks the alarm's state
                res = await tx.conn.execute(
                    update(notifications)
                    .where(
                        and_(
                            notifications.c.alarm == aid,
                            notifications.c.purpose == "alarm",
                            notifications.c.state == "pending",
                        )
                    )
                    .values(state="cancelled", error="acknowledged")
                )
                a.update(
                    state="acknowledged",
                    acknowledged_by=by,
                    acknowledged_at=tx.ts,
                    ack_via=via,
                    generation=gen,
                    next_due_at=None,
                )
                await q.add_audit(
                    tx.conn,
                    tx.ts,
                    "alarm_acknowledged",
                    actor=by,
                    alarm=aid,
                    via=via,
                    person=person_id,
                    cancelled_pending=res.rowcount,
                )
                log.info("alarm_acknowledged", alarm=aid, by=by, via=via)
                tx.set_timer(("alarm", aid), None)
                tx.after_commit.append(lambda aid=aid: self.on_alarm_stopped(aid))
                self.to_device(tx, a["device"], mqtt_wire.alarm_state(a, tx.now))
                self._publish_alarm(tx, a)
                done.append(a)
            return AckResult(True, alarms=tuple(done))

    async def resolve(
        self, alarm_id: str, *, by: str, note: str, via: str | None = None
    ) -> AckResult:
        async with self.unit() as tx:
            a = await q.get_alarm(tx.conn, alarm_id)
            if a is None or a["state"] == "notice":
                return AckResult(False, "not_found", f"No alarm {alarm_id}.")
            if a["state"] != "acknowledged":
                return AckResult(
                    False,
                    "not_acknowledged",
                    f"Alarm {alarm_id} is {a['state']}; only an acknowledged "
                    "alarm can be resolved.",
                )
            await q.update_alarm(
                tx.conn, a, state="resolved", resolved_at=tx.ts, resolved_by=by, note=note
            )
            a.update(state="resolved", resolved_at=tx.ts, resolved_by=by, note=note)
            await q.add_audit(
                tx.conn, tx.ts, "alarm_resolved", actor=by, alarm=alarm_id, note=note, via=via
            )
            log.info("alarm_resolved", alarm=alarm_id, by=by)
            self._publish_alarm(tx, a)
            tx.after_commit.append(lambda: self.metrics.alarms_open.dec())
            return AckResult(True, alarms=(a,))
