"""The HTTP edge's read service (`jaa_gateway.views`) on SQLite and PostgreSQL: the listings,
the open alarms a sender's "OK" sees, delivery statuses (the latest received wins, an unknown
sid is audited and changes nothing), and the webhooks' replay keys."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select

from jaa_gateway.domain.replies import OpenAlarm
from jaa_gateway.store import queries as q
from jaa_gateway.store.db import Store
from jaa_gateway.store.schema import alarms, audit, notifications
from jaa_gateway.views import Views

T0 = 1_800_000_000.0


def _alarm(aid: str, code: str, state: str, opened: float, by: str | None = None) -> dict[str, Any]:
    return {
        "id": aid,
        "code": code,
        "kind": "sos",
        "state": state,
        "opened_at": opened,
        "generation": 0,
        "next_k": 1,
        "exhausted": False,
        "acknowledged_by": by,
    }


def _note(alarm: str, person: str, sid: str, state: str = "sent") -> dict[str, Any]:
    return {
        "alarm": alarm,
        "purpose": "alarm",
        "k": 0,
        "person": person,
        "phone": "+4790000000",
        "channel": "sms",
        "body": "ALARM",
        "state": state,
        "attempts": 1,
        "next_attempt_at": T0,
        "created_at": T0,
        "sid": sid,
    }


async def _views(db_url: str) -> tuple[Store, Views]:
    store = Store(db_url)
    await store.migrate()
    async with store.tx() as conn:
        await conn.execute(
            insert(alarms),
            [
                _alarm("alm-old", "1111", "escalating", T0),
                _alarm("alm-ack", "2222", "acknowledged", T0 + 1, by="kari"),
                _alarm("alm-new", "3333", "prealarm", T0 + 2),
                _alarm("alm-done", "4444", "resolved", T0 + 3),
            ],
        )
        await conn.execute(
            insert(notifications),
            [
                _note("alm-old", "kari", "SM1"),
                _note("alm-new", "kari", "SM2", state="cancelled"),
                _note("alm-new", "per", "SM3"),
            ],
        )
    return store, Views(store, clock=lambda: T0 + 100)


async def _audit(store: Store, event: str) -> list[dict[str, Any]]:
    async with store.tx() as conn:
        rows = await conn.execute(select(audit).where(audit.c.event == event).order_by(audit.c.seq))
        return [dict(r) for r in rows.mappings()]


async def test_listings(db_url: str) -> None:
    store, views = await _views(db_url)
    try:
        assert [a["id"] for a in await views.alarms("open")] == ["alm-new", "alm-ack", "alm-old"]
        assert [a["id"] for a in await views.alarms("resolved")] == ["alm-done"]
        assert len(await views.alarms(None)) == 4
        assert await views.alarms("cancelled") == []
        assert [a["id"] for a in await views.alarms_by_id(["alm-new", "nope", "alm-old"])] == [
            "alm-new",
            "alm-old",
        ]
        assert await views.alarm_with_timeline("nope") is None
        detail = await views.alarm_with_timeline("alm-new")
        assert detail is not None and detail.alarm["code"] == "3333"
        assert [n["sid"] for n in detail.notifications] == ["SM2", "SM3"]
        assert await views.database_problem(timeout=2.0) is None
    finally:
        await store.close()


async def test_open_alarms_for_a_sender(db_url: str) -> None:
    store, views = await _views(db_url)
    try:
        kari = await views.open_alarms_for("kari")
        assert kari == [
            OpenAlarm("alm-old", "1111", "escalating", None, notified=True),
            OpenAlarm("alm-ack", "2222", "acknowledged", "kari", notified=False),
            # a cancelled notification told nobody
            OpenAlarm("alm-new", "3333", "prealarm", None, notified=False),
        ]
        assert [a.notified for a in await views.open_alarms_for("per")] == [False, False, True]
    finally:
        await store.close()


async def test_delivery_status_latest_wins_and_unknown_changes_nothing(db_url: str) -> None:
    store, views = await _views(db_url)
    try:
        await views.record_delivery_status("SM1", "sent", error_code=None, answered_by=None)
        await views.record_delivery_status("SM1", "delivered", error_code=None, answered_by=None)
        await views.record_delivery_status("SMX", "failed", error_code="30008", answered_by=None)
        async with store.tx() as conn:
            res = await conn.execute(select(notifications.c.sid, notifications.c.delivery_status))
            statuses = {sid: status for sid, status in res.all()}
        assert statuses == {"SM1": "delivered", "SM2": None, "SM3": None}
        events = await _audit(store, "delivery_status")
        none = {"error_code": None, "answered_by": None}
        assert [(e["alarm"], e["ts"], e["data"]) for e in events] == [
            ("alm-old", T0 + 100, {"sid": "SM1", "status": "sent", **none, "known": True}),
            ("alm-old", T0 + 100, {"sid": "SM1", "status": "delivered", **none, "known": True}),
            (
                None,
                T0 + 100,
                {"sid": "SMX", "status": "failed", **none, "error_code": "30008", "known": False},
            ),
        ]
    finally:
        await store.close()


async def test_webhook_keys(db_url: str) -> None:
    store, views = await _views(db_url)
    try:
        assert not await views.webhook_seen("sms:SMa")
        await views.webhook_done("sms:SMa")
        await views.webhook_done("sms:SMa")  # twice is no error and no second row
        assert await views.webhook_seen("sms:SMa")
        assert not await views.webhook_seen("sms:SMb")
        async with store.tx() as conn:
            row = await q.get_processed(conn, "twilio", "sms:SMa")
        assert row is not None and row["received_at"] == T0 + 100 and row["type"] == "webhook"
        await views.record_received("sms_received", actor="kari", sid="SMa", body="OK")
        (got,) = await _audit(store, "sms_received")
        assert (got["actor"], got["data"]) == ("kari", {"sid": "SMa", "body": "OK"})
    finally:
        await store.close()
