"""What the edges read, and the little the Twilio webhooks write: the HTTP API's way into the
store. Returns stored rows (`wire.api` shapes them); every query is in `store/`.

Writes here are bookkeeping of what came in (audit of a received SMS or key press, a delivery
status, a handled webhook's key); every state change of an alarm goes through the alarm
service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jaa_gateway.domain.replies import OpenAlarm
from jaa_gateway.store import queries as q
from jaa_gateway.store import reads
from jaa_gateway.store.db import Store, describe_error
from jaa_gateway.store.rows import AlarmRow

Row = dict[str, Any]
# processed_events.sender of the webhooks' keys
WEBHOOK_SENDER = "twilio"


@dataclass(frozen=True)
class AlarmDetail:
    alarm: AlarmRow
    timeline: list[Row]
    notifications: list[Row]


class Views:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        delivered: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._clock = clock
        # console hook: told after a delivery status is stored
        self._delivered = delivered

    # ------------------------------------------------------------------ reads

    async def database_problem(self, timeout: float) -> str | None:
        """Why the database does not take a write now (/healthz), or None when it does."""
        try:
            async with asyncio.timeout(timeout):
                await self._store.probe_write()
        except Exception as exc:
            return f"database: not writable ({describe_error(exc, 120)})"
        return None

    async def active_sessions(self) -> list[Row]:
        async with self._store.tx() as conn:
            return await q.active_sessions(conn)

    async def alarms(self, state: str | None = None) -> list[Row]:
        """Newest first; ``state`` "open" is any open state, None every alarm."""
        async with self._store.tx() as conn:
            return await reads.alarms_newest_first(conn, state)

    async def alarms_by_id(self, ids: Sequence[str]) -> list[AlarmRow]:
        """The alarms of ``ids`` that exist, in that order."""
        async with self._store.tx() as conn:
            found = [await q.get_alarm(conn, i) for i in ids]
        return [a for a in found if a is not None]

    async def alarm_with_timeline(self, alarm_id: str) -> AlarmDetail | None:
        async with self._store.tx() as conn:
            a = await q.get_alarm(conn, alarm_id)
            if a is None:
                return None
            return AlarmDetail(
                a,
                await q.alarm_timeline(conn, alarm_id),
                await q.alarm_notifications(conn, alarm_id),
            )

    async def audit_since(self, since: float | None, limit: int) -> list[Row]:
        """Audit events at or after ``since`` (epoch seconds; None: from the first), in order."""
        async with self._store.tx() as conn:
            return await reads.audit_from(conn, since, limit)

    async def open_alarms_for(self, person_id: str) -> list[OpenAlarm]:
        """Open alarms, oldest first, as this person's SMS reply sees them."""
        async with self._store.tx() as conn:
            return [
                OpenAlarm(
                    id=a["id"],
                    code=a["code"],
                    state=a["state"],
                    acknowledged_by=a["acknowledged_by"],
                    notified=await q.was_notified(conn, a["id"], person_id),
                )
                for a in await q.open_alarms(conn)
            ]

    # ------------------------------------------------------------------ what came in

    async def record_received(
        self, event: str, *, actor: str, alarm: str | None = None, **data: Any
    ) -> None:
        """Audit an inbound webhook (``sms_received``, ``voice_input``) before it acts."""
        async with self._store.tx() as conn:
            await q.add_audit(conn, self._clock(), event, actor=actor, alarm=alarm, **data)

    async def record_delivery_status(
        self, sid: str, status: str, *, error_code: str | None, answered_by: str | None
    ) -> None:
        """Twilio's delivery status of a message or call: stored on its notifications (the
        latest one received wins) and audited, known or not. A replay is the caller's to drop
        (`webhook_seen`)."""
        async with self._store.tx() as conn:
            alarms = await reads.set_delivery_status(conn, sid, status)
            await q.add_audit(
                conn,
                self._clock(),
                "delivery_status",
                alarm=alarms[0] if alarms else None,
                sid=sid,
                status=status,
                error_code=error_code,
                answered_by=answered_by,
                known=bool(alarms),
            )
        self._delivered()

    async def webhook_seen(self, key: str) -> bool:
        """Whether a webhook with this key has been handled already."""
        async with self._store.tx() as conn:
            return await q.get_processed(conn, WEBHOOK_SENDER, key) is not None

    async def webhook_done(self, key: str) -> None:
        """Remember a handled webhook (idempotent)."""
        async with self._store.tx() as conn:
            if await q.get_processed(conn, WEBHOOK_SENDER, key) is None:
                await q.add_processed(conn, WEBHOOK_SENDER, key, self._clock(), "webhook")
