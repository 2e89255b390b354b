"""A session's deadlines: check-in due and missed, overrun, device offline (CONTRACT §4).

Each kind has one timer per session; its state is on the session row (`checkin_state`,
`overrun_state`, `offline_alarmed`, compare-and-set on `generation`), so a restart rebuilds the
timers from the store (`set`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from jaa_gateway.alarms import Raiser
from jaa_gateway.config import Config
from jaa_gateway.domain import session as rule
from jaa_gateway.domain.session import CheckinState, OverrunState
from jaa_gateway.effects import Tx
from jaa_gateway.presence import Presence
from jaa_gateway.store import queries as q
from jaa_gateway.topics import Topics
from jaa_gateway.wire import mqtt as mqtt_wire

KINDS = ("checkin", "overrun", "offline")


@dataclass(eq=False, repr=False)
class SessionTimers:
    cfg: Config
    topics: Topics
    presence: Presence
    raiser: Raiser

    def set(self, tx: Tx, s: dict[str, Any]) -> None:
        """Every timer of an active session, as its row says."""
        sid = s["id"]
        checkin = rule.checkin_timer(
            CheckinState(s["checkin_state"]),
            due_at=s["checkin_due_at"],
            grace_until=s["checkin_grace_until"],
        )
        if checkin is not None:
            tx.set_timer(("checkin", sid), checkin)
        overrun = rule.overrun_timer(
            OverrunState(s["overrun_state"]), ends_at=s["ends_at"], grace=self._overrun_grace()
        )
        if overrun is not None:
            tx.set_timer(("overrun", sid), overrun)
        if s["device"] and not s["offline_alarmed"]:
            dev, started = str(s["device"]), float(s["started_at"])
            tx.set_timer(("offline", sid), self.presence.due(sid, dev, started))
            presence = self.presence
            tx.after_commit.append(lambda: presence.watch(sid, dev, started))

    def drop(self, tx: Tx, sid: str) -> None:
        """The session ended: none of its timers runs on."""
        for kind in KINDS:
            tx.set_timer((kind, sid), None)
        presence = self.presence
        tx.after_commit.append(lambda: presence.unwatch(sid))

    def _overrun_grace(self) -> float:
        return self.cfg.timing.overrun_grace.total_seconds()

    async def deadline(self, tx: Tx, kind: str, session_id: str) -> None:
        s = await q.get_session(tx.conn, session_id)
        if s is None or not s["active"]:
            return
        if kind == "checkin":
            await self._checkin(tx, s)
        elif kind == "overrun":
            await self._overrun(tx, s)
        elif kind == "offline":
            await self._offline(tx, s)

    async def _checkin(self, tx: Tx, s: dict[str, Any]) -> None:
        grace = self.cfg.timing.checkin_grace.total_seconds()
        step = rule.checkin_deadline(
            CheckinState(s["checkin_state"]),
            now=tx.ts,
            due_at=s["checkin_due_at"],
            grace_until=s["checkin_grace_until"],
            grace=grace,
        )
        await self._apply(tx, s, step, "checkin", grace, "missed_checkin")

    async def _overrun(self, tx: Tx, s: dict[str, Any]) -> None:
        grace = self._overrun_grace()
        step = rule.overrun_deadline(
            OverrunState(s["overrun_state"]), now=tx.ts, ends_at=s["ends_at"], grace=grace
        )
        await self._apply(tx, s, step, "overrun", grace, "session_overrun")

    async def _apply(
        self,
        tx: Tx,
        s: dict[str, Any],
        step: rule.Step,
        kind: Literal["checkin", "overrun"],
        grace: float,
        alarm: str,
    ) -> None:
        """Carry out a step of the check-in or overrun machine: compare-and-set its columns,
        ask the worker (checkin_due, reason `kind`) or raise `alarm`, set the timer."""
        if step.values:
            await q.update_session(tx.conn, s, **step.values)
        if step.ask:
            await q.add_audit(tx.conn, tx.ts, "checkin_due", session=s["id"], reason=kind)
            self.topics.to_device(tx, s["device"], mqtt_wire.checkin_due(s["id"], kind, grace))
        if step.timer is not None:
            tx.set_timer((kind, s["id"]), step.timer)
        if step.alarm:
            await self.raiser.session_alarm(tx, s, alarm)

    async def _offline(self, tx: Tx, s: dict[str, Any]) -> None:
        if not s["device"] or s["offline_alarmed"]:
            return
        due = self.presence.due(s["id"], s["device"], s["started_at"])
        if due > tx.ts + 0.001:
            tx.set_timer(("offline", s["id"]), due)
            return
        # held, or one of a common cause
        if await self.presence.lapsed(tx, s, self.raiser.contact_lost):
            return
        await q.update_session(tx.conn, s, offline_alarmed=True)
        sid = s["id"]
        presence = self.presence
        tx.after_commit.append(lambda: presence.unwatch(sid))
        await self.raiser.session_alarm(tx, s, "device_offline")
