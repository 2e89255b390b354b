"""The monthly report's reads (CONTRACT §10): what began in one window of epoch seconds.

Read-only SELECTs, so the report runs beside a running daemon (SQLite in WAL mode lets a reader
in while the gateway writes; PostgreSQL readers never block writers). The rows go to the pure
aggregation in `domain/report.py`, which applies the month's window again.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, select

from jaa_gateway.domain.report import AlarmRow, CheckinDueRow, DenialRow, Rows, SessionRow
from jaa_gateway.store.db import Conn
from jaa_gateway.store.schema import alarms, assessments, audit, schema_migrations, sessions


def _data(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


async def month_rows(conn: Conn, start: float, end: float) -> Rows:
    """Sessions started, denials, alarms opened and missed-check-in reminders in [start, end)."""
    s_rows = await conn.execute(
        select(
            sessions.c.id,
            sessions.c.person,
            sessions.c.location,
            sessions.c.started_at,
            sessions.c.ended_at,
        )
        .where(and_(sessions.c.started_at >= start, sessions.c.started_at < end))
        .order_by(sessions.c.started_at)
    )
    d_rows = await conn.execute(
        select(audit.c.ts, audit.c.actor, audit.c.data)
        .where(and_(audit.c.event == "session_denied", audit.c.ts >= start, audit.c.ts < end))
        .order_by(audit.c.seq)
    )
    a_rows = await conn.execute(
        select(
            alarms.c.id,
            alarms.c.kind,
            alarms.c.state,
            alarms.c.location,
            alarms.c.opened_at,
            alarms.c.escalation_started_at,
            alarms.c.acknowledged_at,
        )
        .where(and_(alarms.c.opened_at >= start, alarms.c.opened_at < end))
        .order_by(alarms.c.opened_at)
    )
    # the reminder's audit row names the session; its location is the session's
    c_rows = await conn.execute(
        select(audit.c.ts, audit.c.data, sessions.c.location)
        .select_from(audit.outerjoin(sessions, audit.c.session == sessions.c.id))
        .where(and_(audit.c.event == "checkin_due", audit.c.ts >= start, audit.c.ts < end))
        .order_by(audit.c.seq)
    )
    denials = []
    for ts, actor, data in d_rows:
        d = _data(data)
        denials.append(
            DenialRow(
                ts=ts,
                reason=_text(d.get("reason")) or "unknown",
                location=_text(d.get("location")),
                person=_text(actor),
            )
        )
    return Rows(
        sessions=[SessionRow(r.id, r.person, r.location, r.started_at, r.ended_at) for r in s_rows],
        denials=denials,
        alarms=[
            AlarmRow(
                r.id,
                r.kind,
                r.state,
                r.location,
                r.opened_at,
                r.escalation_started_at,
                r.acknowledged_at,
            )
            for r in a_rows
        ],
        checkins_due=[
            CheckinDueRow(ts, location)
            for ts, data, location in c_rows
            if _data(data).get("reason") == "checkin"
        ],
    )


async def stored_assessments(conn: Conn) -> list[dict[str, Any]]:
    """Every stored assessment's data (the config's, synced at start, and the API's)."""
    rows = await conn.execute(select(assessments.c.data).order_by(assessments.c.id))
    return [d for (d,) in rows if isinstance(d, dict)]


async def has_schema(conn: Conn) -> bool:
    """Whether the gateway has created its tables in this database."""

    def check(c: Any) -> bool:
        from sqlalchemy import inspect

        return bool(inspect(c).has_table(schema_migrations.name))

    return bool(await conn.run_sync(check))
