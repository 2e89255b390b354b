"""Doors: a badge starts or ends a session where the reader is; a door opened after hours with
nobody working there raises an unattended_entry notice (spaced, so a flapping door does not
send an SMS per swing)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from jaa_gateway.alarms import Raiser
from jaa_gateway.config import Config
from jaa_gateway.domain import roster
from jaa_gateway.domain.events import DoorEvent
from jaa_gateway.effects import Tx
from jaa_gateway.sessions import Sessions
from jaa_gateway.store import queries as q

# a door that flaps should not send an SMS per swing
NOTICE_SPACING = dt.timedelta(minutes=10)


@dataclass(eq=False, repr=False)
class Doors:
    cfg: Config
    sessions: Sessions
    raiser: Raiser
    _last_notice: dict[str, dt.datetime] = field(default_factory=dict, init=False)

    def forget(self) -> None:
        """Hot standby: a node that steps down forgets when it last sent a notice."""
        self._last_notice.clear()

    async def handle(self, tx: Tx, ev: DoorEvent) -> tuple[str | None, dict[str, Any] | None]:
        """A door event (not a repeat); returns what it refers to and the reply to store."""
        loc = self.cfg.location_of_door(ev.door_id)
        if ev.type == "badge":
            person = self.cfg.person_by_badge(ev.badge or "")
            action = ev.action
            if person is not None and action is None:
                active = await q.active_session_of(tx.conn, person.id)
                at_here = active is not None and loc is not None and active["location"] == loc.id
                action = "end" if at_here else "start"
            if person is not None and action == "end":
                ref = await self.sessions.end_by_person(
                    tx, person, reason="badge", device_id=None, door_id=ev.door_id, event_id=ev.id
                )
                return ref, None
            return await self.sessions.start(
                tx,
                person,
                source="badge",
                device_id=None,
                door_id=ev.door_id,
                location_id=loc.id if loc else None,
                planned_minutes=None,
                event_id=ev.id,
            )
        if ev.type == "open" and loc is not None:
            await self._opened(tx, ev, loc.id)
        return None, None

    async def _opened(self, tx: Tx, ev: DoorEvent, location_id: str) -> None:
        loc = self.cfg.location(location_id)
        if loc is None or loc.after_hours is None:
            return
        if not roster.in_window(loc.after_hours, self.cfg.tz, tx.now):
            return
        if await q.active_at_location(tx.conn, location_id):
            return
        last = self._last_notice.get(location_id)
        if last is not None and tx.now - last < NOTICE_SPACING:
            await q.add_audit(
                tx.conn,
                tx.ts,
                "notice_suppressed",
                kind="unattended_entry",
                location=location_id,
                door=ev.door_id,
            )
            return
        self._last_notice[location_id] = tx.now
        await self.raiser.notice(tx, "unattended_entry", location_id, ev.door_id)
