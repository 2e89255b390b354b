"""A session's deadlines: check-in due and missed, overrun, device offline (CONTRACT §4).

Each kind has one timer per session; its state is on the session row (`checkin_state`,
`overrun_state`, `offline_alarmed`, compare-and-set on `generation`), so a restart rebuilds the
timers from the store (`set`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jaa_gateway.alarms import Raiser
from jaa_gateway.config import Config
from jaa_gateway.effects import Tx
from jaa_gateway.presence import Presence
from jaa_gateway.store import queries as q
from jaa_gateway.topics import Topics

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
        if s["checkin_state"] == "waiting" and s["checkin_due_at"] is not None:
            tx.set_timer(("checkin", sid), s["checkin_due_at"])
        elif s["checkin_state"] == "due" and s["checkin_grace_until"] is not None:
            tx.set_timer(("checkin", sid), s["checkin_grace_until"])
        if s["overrun_state"] == "none":
            tx.set_timer(("overrun", sid), s["ends_at"])
        elif s["overrun_state"] == "due":
            tx.set_timer(("overrun", sid), s["ends_at"] + self._overrun_grace())
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

    def _due(self, tx: Tx, s: dict[str, Any], reason: str, grace: float) -> None:
        self.topics.to_device(
            tx,
            s["device"],
            {"type": "checkin_due", "session": s["id"], "reason": reason, "grace_s": grace},
        )

    async def _checkin(self, tx: Tx, s: dict[str, Any]) -> None:
        if s["checkin_state"] == "waiting":
            if s["checkin_due_at"] is None or s["checkin_due_at"] > tx.ts + 0.001:
                if s["checkin_due_at"] is not None:
                    tx.set_timer(("checkin", s["id"]), s["checkin_due_at"])
                return
            grace = self.cfg.timing.checkin_grace.total_seconds()
            until = s["checkin_due_at"] + grace
            await q.update_session(tx.conn, s, checkin_state="due", checkin_grace_until=until)
            await q.add_audit(tx.conn, tx.ts, "checkin_due", session=s["id"], reason="checkin")
            self._due(tx, s, "checkin", grace)
            tx.set_timer(("checkin", s["id"]), until)
        elif s["checkin_state"] == "due":
            if s["checkin_grace_until"] is not None and s["checkin_grace_until"] > tx.ts + 0.001:
                tx.set_timer(("checkin", s["id"]), s["checkin_grace_until"])
                return
            await q.update_session(tx.conn, s, checkin_state="alarmed")
            await self.raiser.session_alarm(tx, s, "missed_checkin")

    async def _overrun(self, tx: Tx, s: dict[str, Any]) -> None:
        grace = self._overrun_grace()
        if s["overrun_state"] == "none":
            if s["ends_at"] > tx.ts + 0.001:
                tx.set_timer(("overrun", s["id"]), s["ends_at"])
                return
            await q.update_session(tx.conn, s, overrun_state="due")
            await q.add_audit(tx.conn, tx.ts, "checkin_due", session=s["id"], reason="overrun")
            self._due(tx, s, "overrun", grace)
            tx.set_timer(("overrun", s["id"]), s["ends_at"] + grace)
        elif s["overrun_state"] == "due":
            if s["ends_at"] + grace > tx.ts + 0.001:
                tx.set_timer(("overrun", s["id"]), s["ends_at"] + grace)
                return
            await q.update_session(tx.conn, s, overrun_state="alarmed")
            await self.raiser.session_alarm(tx, s, "session_overrun")

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
