"""The HTTP API's JSON shapes (CONTRACT §6): alarms, sessions, audit events, notifications.

Pure: a stored row and the site's zone in, a JSON object out. Times are RFC 3339 with the
site's offset, to the millisecond.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from jaa_gateway.domain.session import CheckinState, checkin_timer
from jaa_gateway.timeutil import rfc3339

Row = Mapping[str, Any]


ALARM_FIELDS = (
    "id",
    "code",
    "kind",
    "state",
    "person",
    "location",
    "session",
    "device",
    "lat",
    "lon",
    "opened_at",
    "escalation_started_at",
    "exhausted",
    "acknowledged_by",
    "acknowledged_at",
    "resolved_at",
    "note",
)
NOTIFICATION_FIELDS = (
    "id",
    "purpose",
    "k",
    "person",
    "channel",
    "state",
    "attempts",
    "sid",
    "delivery_status",
    "error",
    "created_at",
    "sent_at",
)
# stored as epoch seconds, shown as RFC 3339
_TIMES = frozenset(
    {
        "opened_at",
        "escalation_started_at",
        "acknowledged_at",
        "resolved_at",
        "created_at",
        "sent_at",
    }
)


def _fields(row: Row, names: tuple[str, ...], tz: ZoneInfo) -> dict[str, Any]:
    return {n: rfc3339(row[n], tz) if n in _TIMES else row[n] for n in names}


def alarm(a: Row, tz: ZoneInfo) -> dict[str, Any]:
    """An alarm as `GET /api/alarms` lists it (and as its retained MQTT topic carries it)."""
    body = _fields(a, ALARM_FIELDS, tz)
    body["exhausted"] = bool(body["exhausted"])
    return body


def alarm_detail(
    a: Row, timeline: Sequence[Row], notifications: Sequence[Row], tz: ZoneInfo
) -> dict[str, Any]:
    """`GET /api/alarms/{id}`: the alarm with its timeline and its notifications."""
    body = alarm(a, tz)
    body["timeline"] = [audit_event(e, tz) for e in timeline]
    body["notifications"] = [notification(n, tz) for n in notifications]
    return body


def notification(n: Row, tz: ZoneInfo) -> dict[str, Any]:
    return _fields(n, NOTIFICATION_FIELDS, tz)


def session(s: Row, tz: ZoneInfo) -> dict[str, Any]:
    """An active session; `checkin_due_at` is the next moment a check-in is needed by: the
    interval's end while waiting, the grace's end once due, else null."""
    due = checkin_timer(
        CheckinState(s["checkin_state"]),
        due_at=s["checkin_due_at"],
        grace_until=s["checkin_grace_until"],
    )
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
