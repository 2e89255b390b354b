"""Escalation: an alarm's chain run step by step from its frozen snapshot.

The timetable itself is pure (`domain/escalation.py`); this service stores its progress on the
alarm row (`next_k`, `next_due_at`, compare-and-set on `generation`) so a restart continues
where it was.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from jaa_gateway.alarms.writer import AlarmWriter
from jaa_gateway.config import Config
from jaa_gateway.domain import alarm as rule
from jaa_gateway.domain import escalation, texts
from jaa_gateway.domain.alarm import AlarmState
from jaa_gateway.domain.model import ChainSnapshot, StepSnapshot
from jaa_gateway.effects import Tx
from jaa_gateway.notifications import enqueue
from jaa_gateway.presence import Presence
from jaa_gateway.store import queries as q
from jaa_gateway.store.rows import AlarmRow
from jaa_gateway.timeutil import rfc3339

log = structlog.get_logger("jaa_gateway.alarms")


@dataclass(eq=False, repr=False)
class Escalator:
    cfg: Config
    writer: AlarmWriter
    presence: Presence
    clock: Callable[[], dt.datetime]

    def timer(self, tx: Tx, a: AlarmRow) -> None:
        """The alarm's deadline as its row says (none once it is no longer running)."""
        if a["state"] == AlarmState.PREALARM and a["prealarm_until"] is not None:
            tx.set_timer(("alarm", a["id"]), a["prealarm_until"])
        elif a["state"] == AlarmState.ESCALATING and a["next_due_at"] is not None:
            tx.set_timer(("alarm", a["id"]), a["next_due_at"])
        else:
            tx.set_timer(("alarm", a["id"]), None)

    def _unwatched_now(self, a: AlarmRow) -> int | None:
        """For a contact_lost alarm, how many sessions are unwatched now; None otherwise."""
        if a["kind"] != "contact_lost":
            return None
        return self.presence.unwatched_now(self.clock().timestamp())

    async def start(self, tx: Tx, a: AlarmRow, change: rule.Change | None = None) -> None:
        """Escalation begins (`change`: how, if not for an alarm just raised escalating)."""
        if change is None:
            change = rule.start_escalation(
                AlarmState(a["state"]), now=tx.ts, started_at=a["escalation_started_at"]
            )

        async def steps(_: int) -> None:
            await q.add_audit(
                tx.conn,
                tx.ts,
                "escalation_started",
                alarm=a["id"],
                chain=a["chain"]["chain_id"] if a["chain"] else None,
            )
            await self._run_due_steps(tx, a)

        await self.writer.write(tx, a, change, steps)

    async def _run_due_steps(self, tx: Tx, a: AlarmRow) -> None:
        started_at = a["escalation_started_at"]
        if started_at is None:  # the state machine starts escalation before any step runs
            raise ValueError(f"alarm {a['id']} has no escalation start: no steps to run")
        snap = ChainSnapshot.from_json(a["chain"])
        start = dt.datetime.fromtimestamp(started_at, dt.UTC)
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
            n = self._unwatched_now(a)
            sms = texts.alarm_sms(
                lang, a["kind"], worker, where, a["code"], a["lat"], a["lon"], unwatched=n
            )
            voice = texts.alarm_voice(lang, a["kind"], worker, where, unwatched=n)
            for t in people.targets:
                for ch in step.via:
                    await enqueue(
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
        self.timer(tx, a)

    async def _audit_step(
        self,
        tx: Tx,
        a: AlarmRow,
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
            due_at=rfc3339((start + p.offset).timestamp(), self.cfg.tz),
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

    async def deadline(self, tx: Tx, alarm_id: str) -> None:
        a = await q.get_alarm(tx.conn, alarm_id)
        if a is None:
            return
        state = AlarmState(a["state"])
        if state is AlarmState.PREALARM:
            change = rule.prealarm_expired(state, now=tx.ts, until=a["prealarm_until"])
            if change is None:
                self.timer(tx, a)
                return
            await self.start(tx, a, change)
        elif state is AlarmState.ESCALATING:
            await self._run_due_steps(tx, a)
