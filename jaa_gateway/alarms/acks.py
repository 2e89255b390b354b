"""An alarm stopped or answered: the worker's cancel and "I am OK", a guard's acknowledgement,
and resolving an acknowledged alarm."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from jaa_gateway.alarms.writer import AlarmWriter
from jaa_gateway.config import Config, Person
from jaa_gateway.domain import alarm as rule
from jaa_gateway.domain import texts
from jaa_gateway.domain.alarm import AlarmState
from jaa_gateway.domain.events import DeviceEvent
from jaa_gateway.effects import Tx
from jaa_gateway.notifications import enqueue
from jaa_gateway.store import queries as q
from jaa_gateway.store.rows import AlarmRow
from jaa_gateway.wire import mqtt as mqtt_wire

log = structlog.get_logger("jaa_gateway.alarms")


@dataclass(frozen=True)
class AckResult:
    ok: bool
    error: str | None = None  # not_found | not_open | already_acknowledged | not_allowed
    detail: str = ""
    alarms: tuple[AlarmRow, ...] = ()


@dataclass(eq=False, repr=False)
class Acks:
    cfg: Config
    writer: AlarmWriter

    # ------------------------------------------------------------------ the worker

    async def worker_cancel(self, tx: Tx, ev: DeviceEvent, person: Person) -> str | None:
        a: AlarmRow | None = None
        if ev.alarm:
            a = await q.get_alarm(tx.conn, ev.alarm)
            if a is not None and a["device"] != ev.device_id:
                log.warning("cancel_for_foreign_alarm", device=ev.device_id, alarm=ev.alarm)
                a = None
        if a is None:
            a = await q.open_alarm_of_device(tx.conn, ev.device_id)
        if a is None:
            await q.add_audit(tx.conn, tx.ts, "cancel_without_alarm", actor=ev.device_id)
            self.writer.announce.topics.to_device(
                tx, ev.device_id, mqtt_wire.alarm_cancelled(None) | {"re": ev.id}
            )
            return None
        change = rule.worker_cancel(
            AlarmState(a["state"]), now=tx.ts, worker_ok_at=a["worker_ok_at"]
        )
        if change is not None and change.state is AlarmState.CANCELLED:

            async def cancelled(_: int) -> None:
                await q.add_audit(
                    tx.conn, tx.ts, "alarm_cancelled", actor=person.id, alarm=a["id"], by="worker"
                )
                log.info("alarm_cancelled", alarm=a["id"])

            await self.writer.write(tx, a, change, cancelled)
        elif change is not None:
            await self._worker_ok(tx, a, person, change)
        self.writer.announce.tell(tx, ev.device_id, a, re=ev.id)
        return str(a["id"])

    async def worker_reports_ok(self, tx: Tx, device_id: str, kinds: tuple[str, ...]) -> None:
        a = await q.open_alarm_of_device(tx.conn, device_id, kinds)
        if a is None or a["state"] != AlarmState.ESCALATING:
            return
        p = self.cfg.person(a["person"]) if a["person"] else None
        change = rule.worker_cancel(
            AlarmState.ESCALATING, now=tx.ts, worker_ok_at=a["worker_ok_at"]
        )
        if p is not None and change is not None:
            await self._worker_ok(tx, a, p, change)

    async def _worker_ok(self, tx: Tx, a: AlarmRow, person: Person, change: rule.Change) -> None:
        """Escalation goes on; those already told get an SMS that the worker reports OK."""

        async def tell_them(_: int) -> None:
            loc = self.cfg.location(a["location"]) if a["location"] else None
            body = texts.worker_ok_sms(
                self.cfg.gateway.language,
                a["kind"],
                person.name,
                loc.name if loc else None,
                a["code"],
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

        await self.writer.write(tx, a, change, tell_them)

    # ------------------------------------------------------------------ guards

    async def ack(
        self, tx: Tx, alarm_ids: list[str], *, by: str, via: str, person_id: str | None
    ) -> AckResult:
        """Acknowledge. `person_id` set (SMS/voice): only someone notified for the alarm."""
        done: list[AlarmRow] = []
        for aid in alarm_ids:
            a = await q.get_alarm(tx.conn, aid)
            change = _transition(
                aid, a, lambda state: rule.acknowledge(state, now=tx.ts, by=by, via=via)
            )
            if isinstance(change, AckResult):
                if change.error == "already_acknowledged" and len(alarm_ids) > 1:
                    continue
                return change
            assert a is not None
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

            async def audit(cancelled: int, aid: str = aid) -> None:
                await q.add_audit(
                    tx.conn,
                    tx.ts,
                    "alarm_acknowledged",
                    actor=by,
                    alarm=aid,
                    via=via,
                    person=person_id,
                    cancelled_pending=cancelled,
                )
                log.info("alarm_acknowledged", alarm=aid, by=by, via=via)

            await self.writer.write(tx, a, change, audit)
            done.append(a)
        return AckResult(True, alarms=tuple(done))

    async def resolve(
        self, tx: Tx, alarm_id: str, *, by: str, note: str, via: str | None = None
    ) -> AckResult:
        a = await q.get_alarm(tx.conn, alarm_id)
        change = _transition(
            alarm_id, a, lambda state: rule.resolve(state, now=tx.ts, by=by, note=note)
        )
        if isinstance(change, AckResult):
            return change
        assert a is not None

        async def audit(_: int) -> None:
            await q.add_audit(
                tx.conn, tx.ts, "alarm_resolved", actor=by, alarm=alarm_id, note=note, via=via
            )
            log.info("alarm_resolved", alarm=alarm_id, by=by)

        await self.writer.write(tx, a, change, audit)
        return AckResult(True, alarms=(a,))


def _transition(
    alarm_id: str, a: AlarmRow | None, step: Callable[[AlarmState], rule.Change]
) -> rule.Change | AckResult:
    """The transition `step` of alarm `a`, or the refusal the API and the replies show."""
    if a is None:
        return AckResult(False, "not_found", f"No alarm {alarm_id}.")
    try:
        return step(AlarmState(a["state"]))
    except rule.IllegalTransition as e:
        if e.reason == "already_acknowledged":
            by = a["acknowledged_by"]
            return AckResult(
                False, e.reason, f"Alarm {alarm_id} was already acknowledged by {by}.", (a,)
            )
        if e.reason == "not_found":
            return AckResult(False, e.reason, f"No alarm {alarm_id}.")
        if e.reason == "not_acknowledged":
            return AckResult(
                False,
                e.reason,
                f"Alarm {alarm_id} is {a['state']}; only an acknowledged alarm can be resolved.",
            )
        return AckResult(False, e.reason, f"Alarm {alarm_id} is {a['state']}.")
