"""Wire formats at exact instants: the API's session and alarm (CONTRACT §6) and the device
commands (CONTRACT §3), in the site's zone across a DST change."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from jaa_gateway.wire import api, mqtt

OSLO = ZoneInfo("Europe/Oslo")
# 2026-03-29 01:00 UTC: Oslo goes from +01:00 to +02:00
BEFORE_DST = dt.datetime(2026, 3, 29, 0, 59, 59, 500_000, tzinfo=dt.UTC).timestamp()
AFTER_DST = dt.datetime(2026, 3, 29, 1, 0, 0, tzinfo=dt.UTC).timestamp()


def _session(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "ses-1",
        "person": "ola",
        "location": "d1-123",
        "device": "jaa-1",
        "door": None,
        "assessment": "RA-1",
        "started_at": BEFORE_DST,
        "checkin_due_at": AFTER_DST,
        "checkin_grace_until": AFTER_DST + 120,
        "checkin_state": "waiting",
        "checkin_interval_s": 1800,
        "ends_at": AFTER_DST + 3600,
    }
    return row | over


def _alarm(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "alm-1",
        "code": "1234",
        "kind": "man_down",
        "state": "prealarm",
        "person": "ola",
        "location": "d1-123",
        "session": "ses-1",
        "device": "jaa-1",
        "lat": None,
        "lon": None,
        "opened_at": BEFORE_DST,
        "prealarm_until": BEFORE_DST + 30,
        "escalation_started_at": None,
        "exhausted": 0,
        "acknowledged_by": None,
        "acknowledged_at": None,
        "resolved_at": None,
        "note": None,
    }
    return row | over


@pytest.mark.parametrize(
    ("state", "due"),
    [
        ("waiting", "2026-03-29T03:00:00.000+02:00"),
        ("due", "2026-03-29T03:02:00.000+02:00"),
        ("alarmed", None),
        ("none", None),
    ],
)
def test_session_checkin_due_at_follows_the_checkin_state(state: str, due: str | None) -> None:
    body = api.session(_session(checkin_state=state), OSLO)
    assert body == {
        "id": "ses-1",
        "person": "ola",
        "location": "d1-123",
        "device": "jaa-1",
        "door": None,
        "assessment": "RA-1",
        "started_at": "2026-03-29T01:59:59.500+01:00",
        "checkin_due_at": due,
        "ends_at": "2026-03-29T04:00:00.000+02:00",
    }


# CONTRACT §6: what an alarm has (the gateway adds device, position, escalation and exhaustion)
CONTRACT_ALARM = {"id", "code", "kind", "state", "person", "location", "session", "opened_at"} | {
    "acknowledged_by",
    "acknowledged_at",
    "resolved_at",
    "note",
}


def test_alarm_api_shape() -> None:
    row = _alarm(state="acknowledged", acknowledged_by="kari", acknowledged_at=AFTER_DST)
    body = api.alarm(row | {"exhausted": 1, "lat": 59.9, "lon": 10.7, "note": "ok"}, OSLO)
    assert CONTRACT_ALARM <= set(body)
    assert set(body) - CONTRACT_ALARM == {"device", "lat", "lon", "exhausted"} | {
        "escalation_started_at"
    }
    assert body["opened_at"] == "2026-03-29T01:59:59.500+01:00"
    assert body["acknowledged_at"] == "2026-03-29T03:00:00.000+02:00"
    assert body["exhausted"] is True and body["escalation_started_at"] is None
    assert (body["state"], body["acknowledged_by"], body["note"]) == ("acknowledged", "kari", "ok")
    assert (body["lat"], body["lon"], body["resolved_at"]) == (59.9, 10.7, None)
    # the retained MQTT topic carries the same shape
    assert mqtt.alarm_retained(row, OSLO) == api.alarm(row, OSLO)


def test_alarm_detail_adds_timeline_and_notifications() -> None:
    event = {
        "seq": 7,
        "ts": AFTER_DST,
        "event": "alarm_raised",
        "actor": "jaa-1",
        "alarm": "alm-1",
        "session": None,
        "data": None,
    }
    body = api.alarm_detail(_alarm(), [event], [], OSLO)
    assert body["timeline"] == [
        {
            "seq": 7,
            "at": "2026-03-29T03:00:00.000+02:00",
            "event": "alarm_raised",
            "actor": "jaa-1",
            "alarm": "alm-1",
            "session": None,
            "data": {},
        }
    ]
    assert body["notifications"] == []


@pytest.mark.parametrize(
    ("row", "now", "expected"),
    [
        (
            {},
            BEFORE_DST + 12.3456,
            {"type": "prealarm", "alarm": "alm-1", "kind": "man_down", "cancel_within_s": 17.654},
        ),
        (  # past its end: never a negative countdown
            {},
            BEFORE_DST + 31,
            {"type": "prealarm", "alarm": "alm-1", "kind": "man_down", "cancel_within_s": 0.0},
        ),
        (
            {"state": "escalating"},
            AFTER_DST,
            {"type": "alarm_raised", "alarm": "alm-1", "kind": "man_down"},
        ),
        (
            {"state": "acknowledged", "acknowledged_by": "kari"},
            AFTER_DST,
            {"type": "alarm_acknowledged", "alarm": "alm-1", "by": "kari"},
        ),
        (
            {"state": "resolved", "acknowledged_by": "kari"},
            AFTER_DST,
            {"type": "alarm_acknowledged", "alarm": "alm-1", "by": "kari"},
        ),
        ({"state": "cancelled"}, AFTER_DST, {"type": "alarm_cancelled", "alarm": "alm-1"}),
    ],
)
def test_alarm_state_command(row: dict[str, Any], now: float, expected: dict[str, Any]) -> None:
    at = dt.datetime.fromtimestamp(now, dt.UTC)
    assert mqtt.alarm_state(_alarm(**row), at) == expected


def test_session_commands() -> None:
    assert mqtt.session_started(_session(), OSLO) == {
        "type": "session_started",
        "session": "ses-1",
        "location": "d1-123",
        "checkin_interval_s": 1800,
        "ends_at": "2026-03-29T04:00:00.000+02:00",
    }
    assert mqtt.session_ended(None) == {"type": "session_ended", "session": None}
    assert mqtt.session_denied("no_assessment", "x") == {
        "type": "session_denied",
        "reason": "no_assessment",
        "detail": "x",
    }
    assert mqtt.checkin_due("ses-1", "overrun", 300.0) == {
        "type": "checkin_due",
        "session": "ses-1",
        "reason": "overrun",
        "grace_s": 300.0,
    }
    assert mqtt.alarm_cancelled(None) == {"type": "alarm_cancelled", "alarm": None}
    assert mqtt.gateway_status("offline") == {"state": "offline"}
