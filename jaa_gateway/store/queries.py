"""Reads and small writes shared by the engine, the outbox and the HTTP API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, Update, and_, bindparam, func, insert, select, update

from jaa_gateway.store.db import Conn
from jaa_gateway.store.schema import alarms, audit, notifications, processed_events, sessions

Row = dict[str, Any]

OPEN_STATES = ("prealarm", "escalating", "acknowledged")
# Statements on the hot paths are built once, with bound parameters: building one per call
# costs ~4x more than running it (SQLAlchemy's cache key generation; measured: 190 us against
# 47 us for a look-up by id, 162 against 29 for an update), and these run on every event
_INSERT_AUDIT = insert(audit)


def _one(result: Any) -> Row | None:
    row = result.mappings().first()
    return dict(row) if row is not None else None


async def add_audit(
    conn: Conn,
    ts: float,
    event: str,
    *,
    actor: str | None = None,
    alarm: str | None = None,
    session: str | None = None,
    **data: Any,
) -> None:
    await conn.execute(
        _INSERT_AUDIT,
        {
            "ts": ts,
            "event": event,
            "actor": actor,
            "alarm": alarm,
            "session": session,
            "data": data or None,
        },
    )


_CODE_TAKEN = (
    select(alarms.c.id)
    .where(and_(alarms.c.code == bindparam("code"), alarms.c.state.in_(OPEN_STATES)))
    .limit(1)
)


async def code_taken(conn: Conn, code: str) -> bool:
    """Whether an open alarm has this code (an index look-up, not a scan of every alarm)."""
    return (await conn.execute(_CODE_TAKEN, {"code": code})).first() is not None


_GET_PROCESSED = select(processed_events).where(
    and_(
        processed_events.c.sender == bindparam("sender"),
        processed_events.c.event_id == bindparam("event_id"),
    )
)
_INSERT_PROCESSED = insert(processed_events)


async def get_processed(conn: Conn, sender: str, event_id: str) -> Row | None:
    return _one(await conn.execute(_GET_PROCESSED, {"sender": sender, "event_id": event_id}))


async def add_processed(
    conn: Conn,
    sender: str,
    event_id: str,
    ts: float,
    type_: str,
    ref: str | None = None,
    reply: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        _INSERT_PROCESSED,
        {
            "sender": sender,
            "event_id": event_id,
            "received_at": ts,
            "type": type_,
            "ref": ref,
            "reply": reply,
        },
    )


_GET_SESSION = select(sessions).where(sessions.c.id == bindparam("id"))
_ACTIVE_SESSION_OF = select(sessions).where(
    and_(sessions.c.active.is_(True), sessions.c.person == bindparam("person"))
)


async def get_session(conn: Conn, session_id: str) -> Row | None:
    return _one(await conn.execute(_GET_SESSION, {"id": session_id}))


async def active_session_of(conn: Conn, person: str) -> Row | None:
    return _one(await conn.execute(_ACTIVE_SESSION_OF, {"person": person}))


async def active_sessions(conn: Conn) -> list[Row]:
    rows = await conn.execute(
        select(sessions).where(sessions.c.active.is_(True)).order_by(sessions.c.started_at)
    )
    return [dict(r) for r in rows.mappings()]


async def active_session_count(conn: Conn) -> int:
    res = await conn.execute(
        select(func.count()).select_from(sessions).where(sessions.c.active.is_(True))
    )
    return int(res.scalar_one())


async def active_at_location(conn: Conn, location: str) -> bool:
    res = await conn.execute(
        select(sessions.c.id)
        .where(and_(sessions.c.active.is_(True), sessions.c.location == location))
        .limit(1)
    )
    return res.first() is not None


def _update_by_id(table: Table, columns: frozenset[str]) -> Update:
    """UPDATE table SET <columns> WHERE id = :_id, built once per set of columns."""
    key = (table.name, columns)
    stmt = _UPDATES.get(key)
    if stmt is None:
        stmt = _UPDATES[key] = (
            update(table)
            .where(table.c.id == bindparam("_id"))
            .values({c: bindparam(f"v_{c}") for c in sorted(columns)})
        )
    return stmt


_UPDATES: dict[tuple[str, frozenset[str]], Update] = {}


async def _update(conn: Conn, table: Table, row_id: str, values: dict[str, Any]) -> None:
    params = {f"v_{k}": v for k, v in values.items()}
    params["_id"] = row_id
    await conn.execute(_update_by_id(table, frozenset(values)), params)


async def update_session(conn: Conn, session_id: str, **values: Any) -> None:
    await _update(conn, sessions, session_id, values)


_GET_ALARM = select(alarms).where(alarms.c.id == bindparam("id"))


async def get_alarm(conn: Conn, alarm_id: str) -> Row | None:
    return _one(await conn.execute(_GET_ALARM, {"id": alarm_id}))


async def open_alarms(conn: Conn, states: tuple[str, ...] = OPEN_STATES) -> list[Row]:
    rows = await conn.execute(
        select(alarms).where(alarms.c.state.in_(states)).order_by(alarms.c.opened_at)
    )
    return [dict(r) for r in rows.mappings()]


async def open_alarm_of_device(
    conn: Conn, device: str, kinds: tuple[str, ...] | None = None
) -> Row | None:
    if kinds is None:
        return _one(await conn.execute(_OPEN_OF_DEVICE, {"device": device}))
    return _one(await conn.execute(_OPEN_OF_DEVICE_KINDS, {"device": device, "kinds": list(kinds)}))


_OPEN_OF_DEVICE = (
    select(alarms)
    .where(
        and_(
            alarms.c.device == bindparam("device"),
            alarms.c.state.in_(("prealarm", "escalating")),
        )
    )
    .order_by(alarms.c.opened_at.desc())
    .limit(1)
)
_OPEN_OF_DEVICE_KINDS = _OPEN_OF_DEVICE.where(alarms.c.kind.in_(bindparam("kinds", expanding=True)))


async def update_alarm(conn: Conn, alarm_id: str, **values: Any) -> None:
    await _update(conn, alarms, alarm_id, values)


async def notified_people(conn: Conn, alarm_id: str) -> list[Row]:
    """People an escalation step was addressed to (not cancelled), with their phone."""
    rows = await conn.execute(
        select(notifications.c.person, notifications.c.phone)
        .where(
            and_(
                notifications.c.alarm == alarm_id,
                notifications.c.purpose == "alarm",
                notifications.c.state != "cancelled",
            )
        )
        .distinct()
    )
    return [dict(r) for r in rows.mappings()]


async def was_notified(conn: Conn, alarm_id: str, person: str) -> bool:
    res = await conn.execute(
        select(notifications.c.id)
        .where(
            and_(
                notifications.c.alarm == alarm_id,
                notifications.c.purpose == "alarm",
                notifications.c.person == person,
                notifications.c.state.in_(("sending", "sent", "failed")),
            )
        )
        .limit(1)
    )
    return res.first() is not None


async def alarm_timeline(conn: Conn, alarm_id: str) -> list[Row]:
    rows = await conn.execute(select(audit).where(audit.c.alarm == alarm_id).order_by(audit.c.seq))
    return [dict(r) for r in rows.mappings()]


async def alarm_notifications(conn: Conn, alarm_id: str) -> list[Row]:
    rows = await conn.execute(
        select(notifications).where(notifications.c.alarm == alarm_id).order_by(notifications.c.id)
    )
    return [dict(r) for r in rows.mappings()]
