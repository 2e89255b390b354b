"""The HTTP API's JSON shapes (CONTRACT §6): alarms, sessions, audit events, notifications.

Pure: a stored row and the site's zone in, a JSON object out. Times are RFC 3339 with the
site's offset, to the millisecond.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from jaa_gateway.timeutil import rfc3339

Row = Mapping[str, Any]


def alarm(a: Row, tz: ZoneInfo) -> dict[str, Any]:
    """An alarm as `GET /api/alarms` lists it (and as its retained MQTT topic carries it)."""
    return {
        "id": a["id"],
        "code": a["code"],
        "kind": a["kind"],
        "state": a["state"],
        "person": a["person"],
        "location": a["location"],
        "session": a["session"],
        "device": a["device"],
        "lat": a["lat"],
        "lon": a["lon"],
        "opened_at": rfc3339(a["opened_at"], tz),
        "escalation_started_at": rfc3339(a["escalation_started_at"], tz),
        "exhausted": bool(a["exhausted"]),
        "acknowledged_by": a["acknowledged_by"],
        "acknowledged_at": rfc3339(a["acknowledged_at"], tz),
        "resolved_at": rfc3339(a["resolved_at"], tz),
        "note": a["note"],
    }


def alarm_detail(
    a: Row, timeline: Sequence[Row], notifications: Sequence[Row], tz: ZoneInfo
) -> dict[str, Any]:
    """`GET /api/alarms/{id}`: the alarm with its timeline and its notifications."""
    body = alarm(a, tz)
    body["timeline"] = [audit_event(e, tz) for e in timeline]
    body["notifications"] = [notification(n, tz) for n in notifications]
    return body


def notification(n: Row, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "id": n["id"],
        "purpose": n["purpose"],
        "k": n["k"],
        "person": n["person"],
        "channel": n["channel"],
        "state": n["state"],
        "attempts": n["attempts"],
        "sid": n["sid"],
        "delivery_status": n["delivery_status"],
        "error": n["error"],
        "created_at": rfc3339(n["created_at"], tz),
        "sent_at": rfc3339(n["sent_at"], tz),
    }


def session(s: Row, tz: ZoneInfo) -> dict[str, Any]:
    """An active session; `checkin_due_at` is the next moment a check-in is needed by: the
    interval's end while waiting, the grace's end once due, else null."""
    if s["checkin_state"] == "waiting":
        due = s["checkin_due_at"]
    elif s["checkin_state"] == "due":
        due = s["checkin_grace_until"]
    else:
        due = None
    return {
        "id": s["id"],
        "person": s["person"],
        "location": s["location"],
        "device": s["device"],
        "door": s["door"],
        "assessment": s["assessment"],
        "started_at": rfc3339(s["started_at"], tz),
        "checkin_due_at": rfc3339(due, tz),
        "ends_at": rfc3339(s["ends_at"], tz),
    }


def audit_event(e: Row, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "seq": e["seq"],
        "at": rfc3339(e["ts"], tz),
        "event": e["event"],
        "actor": e["actor"],
        "alarm": e["alarm"],
        "session": e["session"],
        "data": e["data"] or {},
    }


def error(code: str, detail: str) -> dict[str, str]:
    """Every API error: a machine code and a sentence."""
    return {"error": code, "detail": detail}
