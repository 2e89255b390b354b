"""Reads the HTTP API needs (and the one write of a Twilio delivery status): SQL stays in the
store layer, the edges call `jaa_gateway.views`."""

from __future__ import annotations

from sqlalchemy import select, update

from jaa_gateway.store.db import Conn
from jaa_gateway.store.queries import OPEN_STATES, Row
from jaa_gateway.store.schema import alarms, audit, notifications

# what one API listing returns at the most
ALARMS_LISTED = 1000


async def alarms_newest_first(conn: Conn, state: str | None) -> list[Row]:
    """Alarms in ``state`` ("open" = any of OPEN_STATES; None = all), newest first."""
    query = select(alarms).order_by(alarms.c.opened_at.desc()).limit(ALARMS_LISTED)
    if state == "open":
        query = query.where(alarms.c.state.in_(OPEN_STATES))
    elif state is not None:
        query = query.where(alarms.c.state == state)
    return [dict(r) for r in (await conn.execute(query)).mappings()]


async def audit_from(conn: Conn, since: float | None, limit: int) -> list[Row]:
    """Audit events at or after ``since`` (epoch seconds; None = from the first), in order."""
    query = select(audit).order_by(audit.c.seq)
    if since is not None:
        query = query.where(audit.c.ts >= since)
    return [dict(r) for r in (await conn.execute(query.limit(limit))).mappings()]


async def set_delivery_status(conn: Conn, sid: str, status: str) -> list[str | None]:
    """Store the delivery status of the notifications Twilio knows as ``sid``; returns their
    alarms in id order (empty: the sid is unknown and nothing was written)."""
    rows = (
        await conn.execute(
            select(notifications.c.alarm)
            .where(notifications.c.sid == sid)
            .order_by(notifications.c.id)
        )
    ).all()
    if rows:
        await conn.execute(
            update(notifications).where(notifications.c.sid == sid).values(delivery_status=status)
        )
    return [r[0] for r in rows]
