"""An alarm stopped or answered: the worker's cancel and "I am OK", a guard's acknowledgement,
and resolving an acknowledged alarm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import and_, update

from jaa_gateway.alarms.shapes import AlarmShapes
from jaa_gateway.config import Config, Person
from jaa_gateway.domain import texts
from jaa_gateway.domain.events import DeviceEvent
from jaa_gateway.effects import Tx
from jaa_gateway.metrics import Metrics
from jaa_gateway.notifications import OutboxPort, enqueue
from jaa_gateway.store import queries as q
from jaa_gateway.store.schema import notifications

log = structlog.get_logger("jaa_gateway.alarms")

ESCALATING = ("prealarm", "escalating")


@dataclass(frozen=True)
class AckResult:
    ok: bool
    error: str | None = None  # not_found | not_open | already_acknowledged | not_allowed
    detail: str = ""
    alarms: tuple[dict[str, Any], ...] = ()


@dataclass(eq=False, repr=False)
class Acks:
    cfg: Config
    metrics: Metrics
    shapes: AlarmShapes
    # told when an alarm stops: it drops step rows it has claimed but not started yet
    outbox: OutboxPort

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
            self.shapes.topics.to_device(
                tx, ev.device_id, {"type": "alarm_cancelled", "alarm": None, "re": ev.id}
            )
            return None
        if a["state"] == "prealarm":
            await q.update_alarm(tx.conn, a, state="cancelled", cancelled_at=tx.ts)
            a["state"] = "cancelled"
            await q.add_audit(
                tx.conn, tx.ts, "alarm_cancelled", actor=person.id, alarm=a["id"], by="worker"
            )
            log.info("alarm_cancelled", alarm=a["id"])
            tx.set_timer(("alarm", a["id"]), None)
            self.shapes.publish(tx, a)
            metrics = self.metrics
            tx.after_commit.append(lambda: metrics.alarms_open.dec())
        elif a["state"] == "escalating":
            await self._worker_ok(tx, a, person)
        self.shapes.tell(tx, ev.device_id, a, re=ev.id)
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
            await enqueue(
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
        self, tx: Tx, alarm_ids: list[str], *, by: str, via: str, person_id: str | None
    ) -> AckResult:
        """Acknowledge. `person_id` set (SMS/voice): only someone notified for the alarm."""
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
            await self._acknowledge(tx, a, by=by, via=via, person_id=person_id)
            done.append(a)
        return AckResult(True, alarms=tuple(done))

    async def _acknowledge(
        self, tx: Tx, a: dict[str, Any], *, by: str, via: str, person_id: str | None
    ) -> None:
        aid = a["id"]
        values = dict(
            state="acknowledged",
            acknowledged_by=by,
            acknowledged_at=tx.ts,
            ack_via=via,
            next_due_at=None,
        )
        await q.update_alarm(tx.conn, a, **values)
        a.update(values)
        # nothing may start after the ack is stored: pending step rows are cancelled in the
        # same transaction, and the sender's claim checks the alarm's state
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
        outbox = self.outbox
        tx.after_commit.append(lambda: outbox.alarm_stopped(aid))
        self.shapes.tell(tx, a["device"], a)
        self.shapes.publish(tx, a)

    async def resolve(self, tx: Tx, alarm_id: str, *, by: str, note: str) -> AckResult:
        a = await q.get_alarm(tx.conn, alarm_id)
        if a is None or a["state"] == "notice":
            return AckResult(False, "not_found", f"No alarm {alarm_id}.")
        if a["state"] != "acknowledged":
            return AckResult(
                False,
                "not_acknowledged",
                f"Alarm {alarm_id} is {a['state']}; only an acknowledged alarm can be resolved.",
            )
        values = dict(state="resolved", resolved_at=tx.ts, resolved_by=by, note=note)
        await q.update_alarm(tx.conn, a, **values)
        a.update(values)
        await q.add_audit(tx.conn, tx.ts, "alarm_resolved", actor=by, alarm=alarm_id, note=note)
        log.info("alarm_resolved", alarm=alarm_id, by=by)
        self.shapes.publish(tx, a)
        metrics = self.metrics
        tx.after_commit.append(lambda: metrics.alarms_open.dec())
        return AckResult(True, alarms=(a,))
