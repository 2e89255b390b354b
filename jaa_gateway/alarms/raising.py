"""Raising alarms: from a device (sos, man_down), from a session's deadline, for a common
cause (contact_lost), and notices (one SMS, no escalation)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import insert

from jaa_gateway.alarms.announce import Announcer
from jaa_gateway.alarms.escalation import Escalator
from jaa_gateway.config import Config, Person
from jaa_gateway.devices import Devices
from jaa_gateway.domain import escalation, texts
from jaa_gateway.domain.alarm import AlarmState
from jaa_gateway.domain.events import DeviceEvent
from jaa_gateway.effects import Tx
from jaa_gateway.metrics import Metrics
from jaa_gateway.notifications import enqueue
from jaa_gateway.store import queries as q
from jaa_gateway.store.rows import AlarmRow
from jaa_gateway.store.schema import alarms

log = structlog.get_logger("jaa_gateway.alarms")

# built once: constructing a statement per row costs more than running it
_INSERT_ALARM = insert(alarms)


@dataclass(eq=False, repr=False)
class Raiser:
    cfg: Config
    metrics: Metrics
    devices: Devices
    escalator: Escalator
    announce: Announcer

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
    ) -> AlarmRow:
        chain = self.cfg.chain(chain_id)
        assert chain is not None  # cross-checked in config
        # the steps are frozen now; who they page is looked up as each goes out
        snap = escalation.snapshot_chain(self.cfg, chain, person, tx.now)
        row: AlarmRow = {
            "id": "alm-" + secrets.token_hex(8),
            "code": await self._new_code(tx),
            "kind": kind,
            "state": (AlarmState.PREALARM if prealarm else AlarmState.ESCALATING).value,
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
        metrics = self.metrics
        tx.after_commit.append(lambda: metrics.alarms_raised.labels(kind=kind).inc())
        tx.after_commit.append(lambda: metrics.alarms_open.inc())
        if prealarm:
            tx.set_timer(("alarm", row["id"]), row["prealarm_until"])
            self.announce.publish(tx, row)
        else:
            await self.escalator.start(tx, row)
        return row

    def _chain_of(self, location_id: str | None) -> str:
        loc = self.cfg.location(location_id) if location_id else None
        return loc.escalation if loc else self.cfg.gateway.default_escalation

    async def device_alarm(self, tx: Tx, ev: DeviceEvent, person: Person) -> str:
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
            self.announce.tell(tx, ev.device_id, existing, re=ev.id)
            return str(existing["id"])
        s = await q.active_session_of(tx.conn, person.id)
        st = self.devices.get(ev.device_id)
        lat = ev.lat if ev.lat is not None else (st.lat if st else None)
        lon = ev.lon if ev.lon is not None else (st.lon if st else None)
        row = await self._open(
            tx,
            kind=ev.type,
            person=person.id,
            location=s["location"] if s else None,
            session=s["id"] if s else None,
            device=ev.device_id,
            lat=lat,
            lon=lon,
            chain_id=self._chain_of(s["location"] if s else None),
            prealarm=ev.type == "man_down",
        )
        # prealarm or alarm_raised, answering the event like every other answer (its "re")
        self.announce.tell(tx, ev.device_id, row, re=ev.id)
        return str(row["id"])

    async def session_alarm(self, tx: Tx, s: dict[str, Any], kind: str) -> str:
        st = self.devices.get(s["device"])
        row = await self._open(
            tx,
            kind=kind,
            person=s["person"],
            location=s["location"],
            session=s["id"],
            device=s["device"],
            lat=st.lat if st else None,
            lon=st.lon if st else None,
            chain_id=self._chain_of(s["location"]),
            prealarm=False,
        )
        self.announce.tell(tx, s["device"], row)
        return str(row["id"])

    async def contact_lost(self, tx: Tx) -> str:
        """A common cause (CONTRACT §4): one contact_lost alarm with no person, location or
        device, through default_escalation. Its texts say how many sessions are unwatched
        (asked each time a step goes out)."""
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

    async def notice(self, tx: Tx, kind: str, location_id: str, door_id: str) -> None:
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
                state=AlarmState.NOTICE.value,
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
            await enqueue(
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
