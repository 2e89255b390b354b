"""Lone-work sessions: the gate (start or deny), ending, check-ins. Their deadlines are
`session_timers.py`'s."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import insert

from jaa_gateway.alarms import Acks
from jaa_gateway.assessments import Assessments
from jaa_gateway.config import Config, Person
from jaa_gateway.devices import Devices
from jaa_gateway.domain import gate, texts
from jaa_gateway.domain.events import DeviceEvent
from jaa_gateway.domain.session import CheckinState, OverrunState, checked_in
from jaa_gateway.effects import Tx
from jaa_gateway.metrics import Metrics
from jaa_gateway.notifications import enqueue
from jaa_gateway.session_timers import SessionTimers
from jaa_gateway.store import queries as q
from jaa_gateway.store.schema import sessions
from jaa_gateway.timeutil import from_ts, rfc3339
from jaa_gateway.topics import Topics
from jaa_gateway.wire import mqtt as mqtt_wire

log = structlog.get_logger("jaa_gateway.sessions")

_INSERT_SESSION = insert(sessions)


@dataclass(eq=False, repr=False)
class Sessions:
    cfg: Config
    metrics: Metrics
    topics: Topics
    devices: Devices
    assessments: Assessments
    timers: SessionTimers
    acks: Acks

    def _answer(
        self, tx: Tx, device_id: str | None, door_id: str | None, msg: dict[str, Any]
    ) -> None:
        self.topics.to_device(tx, device_id, msg)
        self.topics.to_door(tx, door_id, msg)

    async def start(
        self,
        tx: Tx,
        person: Person | None,
        *,
        source: str,
        device_id: str | None,
        door_id: str | None,
        location_id: str | None,
        planned_minutes: int | None,
        event_id: str,
    ) -> tuple[str | None, dict[str, Any] | None]:
        """Run the gate; returns (session id, None) or (None, the denial reply)."""
        where = (person, location_id, device_id, door_id, event_id)
        if person is not None:
            active = await q.active_session_of(tx.conn, person.id)
            if active is not None:
                if active["location"] == location_id:
                    return await self._again(tx, person, active, device_id, door_id, event_id)
                loc = self.cfg.location(active["location"])
                return None, await self._deny(
                    tx,
                    *where,
                    "session_active",
                    f"You already have a lone-work session at "
                    f"{loc.name if loc else active['location']}; end it first.",
                )
        # only the holder's device matters to the gate; the fleet may be 10,000 devices
        own = self.cfg.device_of(person.id) if person is not None else None
        own_state = self.devices.get(own.id) if own is not None else None
        last_seen = {own.id: from_ts(own_state.last_seen)} if own and own_state else {}
        decision = gate.decide_start(
            self.cfg,
            now=tx.now,
            person=person,
            location_id=location_id,
            source="device" if source == "device" else "badge",
            device_id=device_id,
            assessments=self.assessments.of_person(person.id) if person else [],
            device_last_seen=last_seen,
            planned_minutes=planned_minutes,
        )
        if isinstance(decision, gate.Denied):
            return None, await self._deny(tx, *where, decision.reason, decision.detail)
        assert person is not None and location_id is not None
        dev = device_id
        if dev is None:
            own = self.cfg.device_of(person.id)
            # monitor the worker's device only if it is alive now: a device left at home
            # (where the assessment does not require one) must not page the guards
            if own is not None and self.devices.alive(own.id, tx.now):
                dev = own.id
        sid = "ses-" + secrets.token_hex(8)
        interval = decision.checkin_interval
        row: dict[str, Any] = {
            "id": sid,
            "person": person.id,
            "location": location_id,
            "device": dev,
            "door": door_id,
            "assessment": decision.assessment_id,
            "source": source,
            "started_at": tx.ts,
            "ends_at": decision.ends_at.timestamp(),
            "checkin_interval_s": interval.total_seconds() if interval else None,
            "checkin_due_at": (tx.now + interval).timestamp() if interval else None,
            "checkin_grace_until": None,
            "checkin_state": (CheckinState.WAITING if interval else CheckinState.NONE).value,
            "overrun_state": OverrunState.NONE.value,
            "offline_alarmed": False,
            "active": True,
            "generation": 0,
        }
        await tx.conn.execute(_INSERT_SESSION, row)
        await q.add_audit(
            tx.conn,
            tx.ts,
            "session_started",
            actor=person.id,
            session=sid,
            location=location_id,
            device=dev,
            door=door_id,
            source=source,
            assessment=decision.assessment_id,
            ends_at=rfc3339(row["ends_at"], self.cfg.tz),
        )
        log.info("session_started", session=sid, person=person.id, location=location_id)
        self.timers.set(tx, row)
        self._answer(
            tx, dev, door_id, mqtt_wire.session_started(row, self.cfg.tz) | {"re": event_id}
        )
        metrics = self.metrics
        tx.after_commit.append(lambda: metrics.sessions_active.inc())
        return sid, None

    async def _again(
        self,
        tx: Tx,
        person: Person,
        active: dict[str, Any],
        device_id: str | None,
        door_id: str | None,
        event_id: str,
    ) -> tuple[str | None, dict[str, Any] | None]:
        """A start where the person's session already runs: answered with that session."""
        if active["device"] is None and device_id is not None:
            # badged in with the JAA off, now started from it: monitor the device from here on
            # (check-in requests had nowhere to go until now)
            active = dict(active) | {"device": device_id}
            await q.update_session(tx.conn, active, device=device_id)
            await q.add_audit(
                tx.conn,
                tx.ts,
                "session_device_attached",
                actor=person.id,
                session=active["id"],
                device=device_id,
            )
            self.timers.set(tx, active)
        msg = mqtt_wire.session_started(active, self.cfg.tz) | {"re": event_id}
        self._answer(tx, device_id or active["device"], door_id, msg)
        return active["id"], None

    async def _deny(
        self,
        tx: Tx,
        person: Person | None,
        location_id: str | None,
        device_id: str | None,
        door_id: str | None,
        event_id: str,
        reason: str,
        detail: str,
    ) -> dict[str, Any]:
        reply = mqtt_wire.session_denied(reason, detail)
        await q.add_audit(
            tx.conn,
            tx.ts,
            "session_denied",
            actor=person.id if person else None,
            reason=reason,
            detail=detail,
            location=location_id,
            device=device_id,
            door=door_id,
        )
        log.info(
            "session_denied",
            person=person.id if person else None,
            reason=reason,
            location=location_id,
        )
        metrics = self.metrics
        tx.after_commit.append(lambda: metrics.session_denials.labels(reason=reason).inc())
        self._answer(tx, device_id, door_id, reply | {"re": event_id})
        if person is not None and person.supervisor:
            sup = self.cfg.person(person.supervisor)
            loc = self.cfg.location(location_id) if location_id else None
            if sup is not None:
                body = texts.denial_sms(
                    self.cfg.gateway.language,
                    person.name,
                    loc.name if loc else (location_id or "?"),
                    reason,
                    detail,
                )
                await enqueue(
                    tx,
                    alarm=None,
                    purpose="denial",
                    k=None,
                    person=sup.id,
                    phone=sup.phone,
                    channel="sms",
                    body=body,
                )
        return reply

    async def end_by_person(
        self,
        tx: Tx,
        person: Person,
        *,
        reason: str,
        device_id: str | None,
        door_id: str | None,
        event_id: str,
    ) -> str | None:
        s = await q.active_session_of(tx.conn, person.id)
        if s is None:
            log.info("session_end_without_session", person=person.id)
            await q.add_audit(
                tx.conn, tx.ts, "session_end_ignored", actor=person.id, reason="no active session"
            )
            # answered all the same: a reader or device that repeats until answered must stop
            nothing = mqtt_wire.session_ended(None) | {"re": event_id}
            self._answer(tx, device_id, door_id, nothing)
            return None
        await self.end(tx, s, reason=reason, actor=person.id)
        msg = mqtt_wire.session_ended(s["id"]) | {"re": event_id}
        self._answer(tx, s["device"] or device_id, door_id, msg)
        return str(s["id"])

    async def end(self, tx: Tx, s: dict[str, Any], *, reason: str, actor: str) -> None:
        await q.update_session(tx.conn, s, active=False, ended_at=tx.ts, end_reason=reason)
        self.timers.drop(tx, s["id"])
        await q.add_audit(
            tx.conn,
            tx.ts,
            "session_ended",
            actor=actor,
            session=s["id"],
            reason=reason,
            location=s["location"],
        )
        log.info("session_ended", session=s["id"], reason=reason)
        metrics = self.metrics
        tx.after_commit.append(lambda: metrics.sessions_active.dec())

    async def checkin(self, tx: Tx, person: Person, ev: DeviceEvent) -> None:
        s = await q.active_session_of(tx.conn, person.id)
        if s is None:
            await q.add_audit(tx.conn, tx.ts, "checkin_without_session", actor=ev.device_id)
            return
        step = checked_in(
            CheckinState(s["checkin_state"]), now=tx.ts, interval_s=s["checkin_interval_s"]
        )
        if step.values:
            await q.update_session(tx.conn, s, **step.values)
        if step.timer is not None:
            tx.set_timer(("checkin", s["id"]), step.timer)
        await q.add_audit(tx.conn, tx.ts, "checkin", actor=person.id, session=s["id"])
        await self.acks.worker_reports_ok(tx, ev.device_id, kinds=("missed_checkin",))
