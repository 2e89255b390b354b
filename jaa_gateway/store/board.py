"""The guard console's reads (CONTRACT §9): everything its page shows, in one transaction."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, select

from jaa_gateway.store.db import Conn
from jaa_gateway.store.queries import OPEN_STATES, Row
from jaa_gateway.store.schema import alarms, audit, devices, notifications

# a page shows at most this many of each: a wave of alarms must not make a page of megabytes
OPEN_ALARMS_SHOWN = 200
DENIALS_SHOWN = 100


async def open_alarms_newest_first(conn: Conn) -> list[Row]:
    rows = await conn.execute(
        select(alarms)
        .where(alarms.c.state.in_(OPEN_STATES))
        .order_by(alarms.c.opened_at.desc(), alarms.c.id.desc())
        .limit(OPEN_ALARMS_SHOWN)
    )
    return [dict(r) for r in rows.mappings()]


async def notifications_of(conn: Conn, alarm_ids: Sequence[str]) -> list[Row]:
    if not alarm_ids:
        return []
    rows = await conn.execute(
        select(notifications)
        .where(notifications.c.alarm.in_(list(alarm_ids)))
        .order_by(notifications.c.id)
    )
    return [dict(r) for r in rows.mappings()]


async def devices_by_id(conn: Conn, ids: Sequence[str]) -> list[Row]:
    if not ids:
        return []
    rows = await conn.execute(select(devices).where(devices.c.id.in_(list(ids))))
    return [dict(r) for r in rows.mappings()]


async def denials_since(conn: Conn, since: float) -> list[Row]:
    """`session_denied` audit events at or after ``since`` (epoch seconds), newest first."""
    rows = await conn.execute(
        select(audit)
        .where(and_(audit.c.event == "session_denied", audit.c.ts >= since))
        .order_by(audit.c.seq.desc())
        .limit(DENIALS_SHOWN)
    )
    return [dict(r) for r in rows.mappings()]


async def alarm_timeline(conn: Conn, alarm_id: str) -> list[Row]:
    rows = await conn.execute(select(audit).where(audit.c.alarm == alarm_id).order_by(audit.c.seq))
    return [dict(r) for r in rows.mappings()]
