"""The MQTT payloads the gateway publishes (CONTRACT §3): device and door commands, the
retained alarm topic, the gateway's status.

Pure functions to JSON objects; the edge (`adapters/mqtt.py`) encodes them. An answer to an
event gets ``| {"re": event_id}`` added by its caller.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Literal
from zoneinfo import ZoneInfo

from jaa_gateway.domain.alarm import AlarmState
from jaa_gateway.timeutil import rfc3339
from jaa_gateway.wire import api

Row = Mapping[str, Any]


def gateway_status(state: Literal["online", "offline"]) -> dict[str, Any]:
    """`jaa/gateway/status` (retained; `offline` is also the last will)."""
    return {"state": state}


def alarm_retained(a: Row, tz: ZoneInfo) -> dict[str, Any]:
    """`jaa/gateway/alarm/{id}` while the alarm is open: the API's shape of it."""
    return api.alarm(a, tz)


def alarm_state(a: Row, now: dt.datetime) -> dict[str, Any]:
    """The device command that tells the current state of an alarm."""
    st = a["state"]
    if st == AlarmState.PREALARM:
        left = max(0.0, (a["prealarm_until"] or now.timestamp()) - now.timestamp())
        return {
            "type": "prealarm",
            "alarm": a["id"],
            "kind": a["kind"],
            "cancel_within_s": round(left, 3),
        }
    if st == AlarmState.ESCALATING:
        return {"type": "alarm_raised", "alarm": a["id"], "kind": a["kind"]}
    if st in (AlarmState.ACKNOWLEDGED, AlarmState.RESOLVED):
        return {"type": "alarm_acknowledged", "alarm": a["id"], "by": a["acknowledged_by"]}
    return alarm_cancelled(a["id"])


def alarm_cancelled(alarm_id: str | None) -> dict[str, Any]:
    """None: the answer to a `cancel` that found no alarm to cancel."""
    return {"type": "alarm_cancelled", "alarm": alarm_id}


def session_started(s: Row, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "type": "session_started",
        "session": s["id"],
        "location": s["location"],
        "checkin_interval_s": s["checkin_interval_s"],
        "ends_at": rfc3339(s["ends_at"], tz),
    }


def session_denied(reason: str, detail: str) -> dict[str, Any]:
    return {"type": "session_denied", "reason": reason, "detail": detail}


def session_ended(session_id: str | None) -> dict[str, Any]:
    """None: the answer to a `session_end` (or badge) when there was no session to end."""
    return {"type": "session_ended", "session": session_id}


def checkin_due(
    session_id: str, reason: Literal["checkin", "overrun"], grace_s: float
) -> dict[str, Any]:
    return {"type": "checkin_due", "session": session_id, "reason": reason, "grace_s": grace_s}
