"""Lone-work sessions end to end (issue 3): a real mosquitto, the Twilio double, real HTTP.

Every case starts the in-process daemon on `site_config(...)`, patched for the case, and talks
to it only from outside: MQTT events in, `cmd` answers out, the HTTP API, SMS at the double.
Times of day that matter (allowed hours, rosters) are computed from the real Oslo clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jaa_gateway.domain import texts
from tests.support.broker import MosquittoBroker, MqttProbe, Seen, probe
from tests.support.gateway import PHONES, InProcessGateway, running_gateway, site_config
from tests.support.twilio_double import TwilioDouble

OSLO = ZoneInfo("Europe/Oslo")
OLA_DEV, PER_DEV, NILS_DEV = "jaa-0042", "jaa-0043", "jaa-0044"
OLA_BADGE = "04A1B2C3"
DOOR, DOOR_W = "door-d1-123", "door-w-1"
LAB, LAB_NAME = "d1-123", "Realfagbygget D1-123"
ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)")


# ---------------------------------------------------------------------------- helpers


def dev_ev(device: str) -> str:
    return f"jaa/device/{device}/event"


def dev_cmd(device: str) -> str:
    return f"jaa/device/{device}/cmd"


def door_ev(door: str) -> str:
    return f"jaa/door/{door}/event"


def door_cmd(door: str) -> str:
    return f"jaa/door/{door}/cmd"


def start(eid: str, location: str = LAB, **extra: Any) -> dict[str, Any]:
    return {"id": eid, "type": "session_start", "location": location, **extra}


def badge(eid: str, card: str = OLA_BADGE, **extra: Any) -> dict[str, Any]:
    return {"id": eid, "type": "badge", "badge": card, **extra}


def answer_to(eid: str, kind: str | None = None) -> Callable[[Seen], bool]:
    def pred(s: Seen) -> bool:
        try:
            j = s.json()
        except ValueError:
            return False
        return isinstance(j, dict) and j.get("re") == eid and (kind is None or j["type"] == kind)

    return pred


def of_type(kind: str, **fields: Any) -> Callable[[Seen], bool]:
    def pred(s: Seen) -> bool:
        try:
            j = s.json()
        except ValueError:
            return False
        return (
            isinstance(j, dict)
            and j.get("type") == kind
            and all(j.get(k) == v for k, v in fields.items())
        )

    return pred


async def ask(
    p: MqttProbe, topic: str, payload: dict[str, Any], answer_topic: str, timeout: float = 5.0
) -> dict[str, Any]:
    """Publish an event and return the gateway's answer to it (matched on `re`)."""
    since = len(p.seen)
    await p.publish(topic, payload)
    seen = await p.wait_message(answer_topic, answer_to(payload["id"]), timeout, since=since)
    answer: dict[str, Any] = seen.json()
    return answer


def instant(value: str) -> dt.datetime:
    assert _RFC3339.fullmatch(value), f"not RFC 3339 with an offset: {value!r}"
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def oslo_hhmm(hours_from_now: float) -> str:
    return (dt.datetime.now(OSLO) + dt.timedelta(hours=hours_from_now)).strftime("%H:%M")


def window_excluding_now() -> dict[str, str]:
    # an hour-long window two hours ahead (wall clock) never contains the present
    return {"start": oslo_hhmm(2), "end": oslo_hhmm(3)}


async def sessions(gw: InProcessGateway) -> list[dict[str, Any]]:
    status, body = await gw.client.api("GET", "/api/sessions")
    assert status == 200, body
    result: list[dict[str, Any]] = body["sessions"]
    return result


async def audit_since(gw: InProcessGateway, since: dt.datetime) -> list[dict[str, Any]]:
    status, body = await gw.client.api("GET", "/api/audit?since=" + quote(since.isoformat()))
    assert status == 200, body
    events: list[dict[str, Any]] = body["events"]
    return events


async def metric(gw: InProcessGateway, name: str, **labels: str) -> float | None:
    async with gw.client.session.get(gw.client.base + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def ra1(cfg: dict[str, Any]) -> dict[str, Any]:
    ra: dict[str, Any] = next(a for a in cfg["assessments"] if a["id"] == "RA-1")
    return ra


def person(cfg: dict[str, Any], pid: str) -> dict[str, Any]:
    p: dict[str, Any] = next(x for x in cfg["people"] if x["id"] == pid)
    return p


def nobody_on_duty(cfg: dict[str, Any]) -> None:
    w = window_excluding_now()
    cfg["rosters"][0]["shifts"] = [
        {"days": ALL_DAYS, "start": w["start"], "end": w["end"], "people": ["guard-1"]}
    ]


@pytest.fixture
def cfg(tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble) -> dict[str, Any]:
    return site_config(tmp_path / "state.db", mosquitto.port, twilio_double)


# ---------------------------------------------------------------------------- 1. starts


async def test_device_start_accepted_listed_audited_and_ended(
    cfg: dict[str, Any], mosquitto: MosquittoBroker, db_url: str
) -> None:
    cfg["gateway"]["database"] = db_url
    t0 = dt.datetime.now(dt.UTC)
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:
        ans = await ask(p, dev_ev(OLA_DEV), start("s1"), dev_cmd(OLA_DEV))
        assert ans["type"] == "session_started", ans
        sid = ans["session"]
        assert isinstance(sid, str) and sid
        assert ans["location"] == LAB
        assert ans["checkin_interval_s"] == 1800
        ends_at = instant(ans["ends_at"])
        assert abs((ends_at - t0).total_seconds() - 4 * 3600) < 10

        [s] = await sessions(gw)
        assert s["id"] == sid and s["person"] == "ola" and s["location"] == LAB
        assert s["device"] == OLA_DEV
        started_at = instant(s["started_at"])
        assert abs((started_at - t0).total_seconds()) < 10
        due = instant(s["checkin_due_at"])
        assert abs((due - started_at).total_seconds() - 1800) < 1
        assert instant(s["ends_at"]) == ends_at
        assert await metric(gw, "jaa_sessions_active") == 1

        ended = await ask(p, dev_ev(OLA_DEV), {"id": "s2", "type": "session_end"}, dev_cmd(OLA_DEV))
        assert ended["type"] == "session_ended" and ended["session"] == sid
        assert await sessions(gw) == []
        assert await metric(gw, "jaa_sessions_active") == 0

        # planned_minutes shortens the session (never past max_duration)
        t1 = dt.datetime.now(dt.UTC)
        short = await ask(p, dev_ev(OLA_DEV), start("s3", planned_minutes=30), dev_cmd(OLA_DEV))
        assert short["type"] == "session_started" and short["session"] != sid
        assert abs((instant(short["ends_at"]) - t1).total_seconds() - 1800) < 10

        events = await audit_since(gw, t0)
        started = [e for e in events if e["event"] == "session_started"]
        assert [e["session"] for e in started] == [sid, short["session"]]
        assert started[0]["actor"] == "ola" and started[0]["data"]["location"] == LAB
        ends = [e for e in events if e["event"] == "session_ended"]
        assert [e["session"] for e in ends] == [sid]
        assert all(instant(e["at"]) >= t0 - dt.timedelta(seconds=1) for e in events)
        # `since` really filters
        assert await audit_since(gw, dt.datetime.now(OSLO) + dt.timedelta(hours=1)) == []


async def test_badge_start_toggle_and_actions(
    cfg: dict[str, Any], mosquitto: MosquittoBroker
) -> None:
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:
        # the worker's JAA is alive, so the badge start is answered on the door and the device
        await p.publish(dev_ev(OLA_DEV), {"id": "hb1", "type": "heartbeat", "battery": 0.9})
        door_ans = await ask(p, door_ev(DOOR), badge("b1"), door_cmd(DOOR))
        assert door_ans["type"] == "session_started" and door_ans["location"] == LAB
        sid = door_ans["session"]
        dev_ans = await p.wait_message(dev_cmd(OLA_DEV), answer_to("b1"))
        assert dev_ans.json()["session"] == sid
        [s] = await sessions(gw)
        assert s["id"] == sid and s["device"] == OLA_DEV and s["person"] == "ola"

        # the same badge again at the same door toggles the session off
        off = await ask(p, door_ev(DOOR), badge("b2"), door_cmd(DOOR))
        assert off["type"] == "session_ended" and off["session"] == sid
        dev_off = await p.wait_message(dev_cmd(OLA_DEV), answer_to("b2"))
        assert dev_off.json()["type"] == "session_ended"
        assert await sessions(gw) == []

        # explicit actions: start, start again (same session), end
        on = await ask(p, door_ev(DOOR), badge("b3", action="start"), door_cmd(DOOR))
        assert on["type"] == "session_started" and on["session"] != sid
        again = await ask(p, door_ev(DOOR), badge("b4", action="start"), door_cmd(DOOR))
        assert again["type"] == "session_started" and again["session"] == on["session"]
        assert len(await sessions(gw)) == 1
        end = await ask(p, door_ev(DOOR), badge("b5", action="end"), door_cmd(DOOR))
        assert end["type"] == "session_ended" and end["session"] == on["session"]
        assert await sessions(gw) == []


async def test_badge_start_without_live_jaa_answers_only_the_door(
    cfg: dict[str, Any], mosquitto: MosquittoBroker
) -> None:
    ra = ra1(cfg)
    ra["acute_injury_risk"] = False
    ra["requires_jaa"] = False
    del ra["checkin_interval"]
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:
        ans = await ask(p, door_ev(DOOR), badge("b1"), door_cmd(DOOR))
        assert ans["type"] == "session_started"
        [s] = await sessions(gw)
        # a device never heard from is not monitored (it would page the guards for nothing)
        assert s["device"] is None
        await asyncio.sleep(0.3)
        assert not [x for x in p.seen if x.topic == dev_cmd(OLA_DEV)]


async def test_device_start_answers_existing_session_at_same_place_and_denies_elsewhere(
    cfg: dict[str, Any], mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:
        first = await ask(p, dev_ev(OLA_DEV), start("s1"), dev_cmd(OLA_DEV))
        assert first["type"] == "session_started"
        same = await ask(p, dev_ev(OLA_DEV), start("s2"), dev_cmd(OLA_DEV))
        assert same["type"] == "session_started" and same["session"] == first["session"]
        assert same["ends_at"] == first["ends_at"]

        other = await ask(p, dev_ev(OLA_DEV), start("s3", location="w-1"), dev_cmd(OLA_DEV))
        assert other["type"] == "session_denied" and other["reason"] == "session_active"
        assert "Realfagbygget D1-123" in other["detail"]
        # a badge at another door while the session runs elsewhere: also refused
        at_w = await ask(p, door_ev(DOOR_W), badge("b1"), door_cmd(DOOR_W))
        assert at_w["type"] == "session_denied" and at_w["reason"] == "session_active"

        [s] = await sessions(gw)
        assert s["id"] == first["session"] and s["location"] == LAB
        assert await metric(gw, "jaa_session_denials_total", reason="session_active") == 2


# ---------------------------------------------------------------------------- 2-3. denials


@dataclass(frozen=True)
class DenyCase:
    reason: str
    patch: Callable[[dict[str, Any]], None]
    topic: str
    payload: dict[str, Any]
    answer_topic: str
    worker: str | None  # name in the supervisor's SMS; None: no SMS expected
    place: str = LAB_NAME
    prelude: Callable[[MqttProbe], Awaitable[None]] | None = None


def _nothing(cfg: dict[str, Any]) -> None:
    pass


def _expired(cfg: dict[str, Any]) -> None:
    ra1(cfg)["valid_until"] = "2021-12-31"


def _not_allowed(cfg: dict[str, Any]) -> None:
    ra1(cfg)["lone_work_allowed"] = False


def _outside_hours(cfg: dict[str, Any]) -> None:
    ra1(cfg)["allowed_hours"] = window_excluding_now()


def _training_past(cfg: dict[str, Any]) -> None:
    person(cfg, "ola")["hse_training_until"] = "2021-06-30"


def _untrained_nils(cfg: dict[str, Any]) -> None:
    assert "hse_training_until" not in person(cfg, "nils")
    cfg["assessments"].append({**ra1(cfg), "id": "RA-N", "person": "nils"})


def _short_device_timeout(cfg: dict[str, Any]) -> None:
    cfg["timing"]["device_timeout"] = "1s"


async def _heard_long_ago(p: MqttProbe) -> None:
    await p.publish(dev_ev(OLA_DEV), {"id": "hb-old", "type": "heartbeat"})
    await asyncio.sleep(1.5)


DENY_CASES = [
    DenyCase(
        "unknown_badge", _nothing, door_ev(DOOR), badge("x1", card="DEADBEEF"), door_cmd(DOOR), None
    ),
    DenyCase(
        "unknown_device", _nothing, dev_ev("jaa-9999"), start("x1"), dev_cmd("jaa-9999"), None
    ),
    DenyCase(
        "unknown_location",
        _nothing,
        dev_ev(OLA_DEV),
        start("x1", location="nowhere"),
        dev_cmd(OLA_DEV),
        "Ola Nordmann",
        place="nowhere",
    ),
    DenyCase("no_assessment", _nothing, dev_ev(PER_DEV), start("x1"), dev_cmd(PER_DEV), "Per"),
    DenyCase(
        "assessment_not_valid", _expired, dev_ev(OLA_DEV), start("x1"), dev_cmd(OLA_DEV), "Ola"
    ),
    DenyCase(
        "lone_work_not_allowed",
        _not_allowed,
        dev_ev(OLA_DEV),
        start("x1"),
        dev_cmd(OLA_DEV),
        "Ola",
    ),
    DenyCase(
        "outside_allowed_hours",
        _outside_hours,
        dev_ev(OLA_DEV),
        start("x1"),
        dev_cmd(OLA_DEV),
        "Ola",
    ),
    DenyCase(
        "training_expired", _training_past, dev_ev(OLA_DEV), start("x1"), dev_cmd(OLA_DEV), "Ola"
    ),
    DenyCase(
        "training_expired",
        _untrained_nils,
        dev_ev(NILS_DEV),
        start("x1"),
        dev_cmd(NILS_DEV),
        "Nils Nyansatt",
    ),
    DenyCase("jaa_required", _nothing, door_ev(DOOR), badge("x1"), door_cmd(DOOR), "Ola"),
    DenyCase(
        "jaa_required",
        _short_device_timeout,
        door_ev(DOOR),
        badge("x1"),
        door_cmd(DOOR),
        "Ola",
        prelude=_heard_long_ago,
    ),
    DenyCase(
        "no_assistance", nobody_on_duty, dev_ev(OLA_DEV), start("x1"), dev_cmd(OLA_DEV), "Ola"
    ),
]
DENY_IDS = [
    "unknown_badge",
    "unknown_device",
    "unknown_location",
    "no_assessment",
    "assessment_not_valid",
    "lone_work_not_allowed",
    "outside_allowed_hours",
    "training_expired-past",
    "training_expired-absent",
    "jaa_required-never_heard",
    "jaa_required-heard_long_ago",
    "no_assistance",
]


def test_deny_cases_follow_the_contract_order() -> None:
    from jaa_gateway.domain.gate import DENY_REASONS

    seen = list(dict.fromkeys(c.reason for c in DENY_CASES))
    assert seen == list(DENY_REASONS)
    # the SMS check below looks for the reason in words: each must be its own phrase
    phrases = [texts.reason_name("nb", r) for r in DENY_REASONS]
    assert len(set(phrases)) == len(phrases) and not set(phrases) & set(DENY_REASONS)


@pytest.mark.parametrize("case", DENY_CASES, ids=DENY_IDS)
async def test_denial_answered_audited_counted_and_sent_to_supervisor(
    case: DenyCase,
    cfg: dict[str, Any],
    mosquitto: MosquittoBroker,
    twilio_double: TwilioDouble,
) -> None:
    case.patch(cfg)
    t0 = dt.datetime.now(dt.UTC)
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:
        if case.prelude is not None:
            await case.prelude(p)
        ans = await ask(p, case.topic, case.payload, case.answer_topic)
        assert ans["type"] == "session_denied", ans
        assert ans["reason"] == case.reason, ans
        assert isinstance(ans["detail"], str) and len(ans["detail"]) > 10
        assert await sessions(gw) == []

        denials = [e for e in await audit_since(gw, t0) if e["event"] == "session_denied"]
        assert [e["data"]["reason"] for e in denials] == [case.reason]
        assert await metric(gw, "jaa_session_denials_total", reason=case.reason) == 1
        assert await metric(gw, "jaa_sessions_active") == 0

        if case.worker is not None:
            [sms] = await twilio_double.wait_for(1)
            assert sms.to == PHONES["kari"]
            body = sms.body or ""
            assert case.worker in body and case.place in body, body
            assert texts.reason_name("nb", case.reason) in body, body
        else:
            # nobody to tell: an SMS a later denial causes is the only one that arrives
            later = await ask(p, dev_ev(PER_DEV), start("x2"), dev_cmd(PER_DEV))
            assert later["reason"] == "no_assessment"
            [sms] = await twilio_double.wait_for(1)
            assert "Per Student" in (sms.body or "")
            await asyncio.sleep(0.3)
            assert len(twilio_double.sms) == 1


async def test_heard_recently_passes_the_jaa_rule(
    cfg: dict[str, Any], mosquitto: MosquittoBroker
) -> None:
    """The other side of `jaa_required-heard_long_ago`: the same badge start right after a
    heartbeat is accepted, so the denial above is about the heartbeat's age."""
    _short_device_timeout(cfg)
    async with running_gateway(cfg), probe(mosquitto.port, "jaa/#") as p:
        await _heard_long_ago(p)
        denied = await ask(p, door_ev(DOOR), badge("b1"), door_cmd(DOOR))
        assert denied["reason"] == "jaa_required"
        await p.publish(dev_ev(OLA_DEV), {"id": "hb-new", "type": "heartbeat"})
        ok = await ask(p, door_ev(DOOR), badge("b2"), door_cmd(DOOR))
        assert ok["type"] == "session_started", ok


async def test_reasons_come_in_contract_order_as_each_is_fixed(
    cfg: dict[str, Any], mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    """One worker fails every rule; fixing them one at a time (run-time assessments through the
    API, config through restarts) walks the reasons in the contract's order, then starts."""
    cfg["assessments"] = []
    _training_past(cfg)
    nobody_on_duty(cfg)
    hours = window_excluding_now()
    ra: dict[str, Any] = {
        "id": "RA-L",
        "person": "ola",
        "locations": [LAB],
        "activity": "Soldering",
        "acute_injury_risk": True,
        "lone_work_allowed": False,
        "max_duration": "1h",
        "allowed_hours": hours,
        "valid_from": "2020-01-01",
        "valid_until": "2021-12-31",
        "approved_by": "kari",
    }

    async def badge_reason(p: MqttProbe, eid: str, door: str = DOOR, card: str = OLA_BADGE) -> str:
        ans = await ask(p, door_ev(door), badge(eid, card=card), door_cmd(door))
        return str(ans.get("reason", ans["type"]))

    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:
        assert await badge_reason(p, "a1", door="door-nowhere", card="DEADBEEF") == "unknown_badge"
        unknown = await ask(p, dev_ev("jaa-9999"), start("a2", "nowhere"), dev_cmd("jaa-9999"))
        assert unknown["reason"] == "unknown_device"
        assert await badge_reason(p, "a3", door="door-nowhere") == "unknown_location"
        assert await badge_reason(p, "a4") == "no_assessment"
        steps: list[tuple[dict[str, Any], int, str]] = [
            ({}, 201, "assessment_not_valid"),
            ({"valid_until": "2099-12-31"}, 200, "lone_work_not_allowed"),
            ({"lone_work_allowed": True}, 200, "outside_allowed_hours"),
            ({"allowed_hours": None}, 200, "training_expired"),
        ]
        for i, (change, code, reason) in enumerate(steps):
            ra.update(change)
            body = {k: v for k, v in ra.items() if v is not None}
            status, answer = await gw.client.api("POST", "/api/assessments", body)
            assert status == code, answer
            assert await badge_reason(p, f"b{i}") == reason

    person(cfg, "ola")["hse_training_until"] = "2099-12-31"
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:
        # the API's assessment outlived the restart; the JAA was never heard from
        assert await badge_reason(p, "c1") == "jaa_required"
        await p.publish(dev_ev(OLA_DEV), {"id": "hb1", "type": "heartbeat"})
        assert await badge_reason(p, "c2") == "no_assistance"

    cfg["rosters"][0]["shifts"][0].update(start="00:00", end="00:00")
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:
        await p.publish(dev_ev(OLA_DEV), {"id": "hb2", "type": "heartbeat"})
        assert await badge_reason(p, "d1") == "session_started"
        [s] = await sessions(gw)
        assert s["location"] == LAB and s["device"] == OLA_DEV


# ---------------------------------------------------------------------------- 5. restart


async def test_restart_keeps_the_session_its_timers_and_its_dedupe(
    cfg: dict[str, Any], mosquitto: MosquittoBroker, db_url: str
) -> None:
    cfg["gateway"]["database"] = db_url
    ra1(cfg)["checkin_interval"] = "3s"
    async with probe(mosquitto.port, "jaa/#") as p:
        async with running_gateway(cfg) as gw:
            ans = await ask(p, dev_ev(OLA_DEV), start("s1"), dev_cmd(OLA_DEV))
            t_start = time.monotonic()
            sid = ans["session"]
            [before] = await sessions(gw)
        async with running_gateway(cfg) as gw:
            assert await sessions(gw) == [before]
            assert await metric(gw, "jaa_sessions_active") == 1
            # the stored dedupe answers the device's repeat with the same session
            again = await ask(p, dev_ev(OLA_DEV), start("s1"), dev_cmd(OLA_DEV))
            assert again == ans
            assert await metric(gw, "jaa_rejected_messages_total", reason="duplicate") == 1
            # the check-in timer was rebuilt from the store
            due = await p.wait_message(
                dev_cmd(OLA_DEV), of_type("checkin_due", session=sid), timeout=6
            )
            assert due.json()["reason"] == "checkin"
            assert time.monotonic() - t_start > 2.7
            end = await ask(
                p, dev_ev(OLA_DEV), {"id": "s2", "type": "session_end"}, dev_cmd(OLA_DEV)
            )
            assert end["type"] == "session_ended" and end["session"] == sid
            assert await sessions(gw) == []
            assert await metric(gw, "jaa_sessions_active") == 0


# ---------------------------------------------------------------------------- 6. duplicates


async def test_duplicates_change_nothing_and_are_answered_again(
    cfg: dict[str, Any], mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    t0 = dt.datetime.now(dt.UTC)
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:

        async def dupes() -> float | None:
            return await metric(gw, "jaa_rejected_messages_total", reason="duplicate")

        first = await ask(p, dev_ev(OLA_DEV), start("s1"), dev_cmd(OLA_DEV))
        repeat = await ask(p, dev_ev(OLA_DEV), start("s1"), dev_cmd(OLA_DEV))
        assert repeat == first
        assert [s["id"] for s in await sessions(gw)] == [first["session"]]
        assert await dupes() == 1

        # a repeated session_end must not end the session started after it
        ended = await ask(p, dev_ev(OLA_DEV), {"id": "e1", "type": "session_end"}, dev_cmd(OLA_DEV))
        assert ended["session"] == first["session"]
        second = await ask(p, dev_ev(OLA_DEV), start("s2"), dev_cmd(OLA_DEV))
        await p.publish(dev_ev(OLA_DEV), {"id": "e1", "type": "session_end"})
        # events of one device are handled in order: this answer means e1's repeat was handled
        again = await ask(p, dev_ev(OLA_DEV), start("s2"), dev_cmd(OLA_DEV))
        assert again == second
        assert [s["id"] for s in await sessions(gw)] == [second["session"]]
        assert await dupes() == 3

        # a repeated denial: the same answer, no second SMS, counted once
        denied = await ask(p, dev_ev(PER_DEV), start("p1"), dev_cmd(PER_DEV))
        assert denied["reason"] == "no_assessment"
        await twilio_double.wait_for(1)
        denied_again = await ask(p, dev_ev(PER_DEV), start("p1"), dev_cmd(PER_DEV))
        assert denied_again == denied
        assert await metric(gw, "jaa_session_denials_total", reason="no_assessment") == 1
        assert await dupes() == 4

        # a repeated toggling badge is answered with the session it started, not ended
        await ask(p, dev_ev(OLA_DEV), {"id": "e2", "type": "session_end"}, dev_cmd(OLA_DEV))
        await p.publish(dev_ev(OLA_DEV), {"id": "hb1", "type": "heartbeat"})
        on = await ask(p, door_ev(DOOR), badge("b1"), door_cmd(DOOR))
        assert on["type"] == "session_started"
        on_again = await ask(p, door_ev(DOOR), badge("b1"), door_cmd(DOOR))
        assert on_again["type"] == "session_started" and on_again["session"] == on["session"]
        assert [s["id"] for s in await sessions(gw)] == [on["session"]]
        assert await dupes() == 5

        await asyncio.sleep(0.3)
        assert len(twilio_double.sms) == 1
        events = await audit_since(gw, t0)
        assert [e["session"] for e in events if e["event"] == "session_started"] == [
            first["session"],
            second["session"],
            on["session"],
        ]
        assert len([e for e in events if e["event"] == "session_ended"]) == 2
        assert len([e for e in events if e["event"] == "session_denied"]) == 1


# ---------------------------------------------------------------------------- 7. check-ins


async def test_checkin_due_after_interval_and_checkin_restarts_it(
    cfg: dict[str, Any], mosquitto: MosquittoBroker, db_url: str
) -> None:
    cfg["gateway"]["database"] = db_url
    ra1(cfg)["checkin_interval"] = "1s"
    async with running_gateway(cfg), probe(mosquitto.port, "jaa/#") as p:
        ans = await ask(p, dev_ev(OLA_DEV), start("s1"), dev_cmd(OLA_DEV))
        t_start = time.monotonic()
        sid = ans["session"]
        assert ans["checkin_interval_s"] == 1

        await asyncio.sleep(0.6)
        since = len(p.seen)
        await p.publish(dev_ev(OLA_DEV), {"id": "c1", "type": "checkin"})
        t_checkin = time.monotonic()
        due = await p.wait_message(
            dev_cmd(OLA_DEV), of_type("checkin_due", session=sid), timeout=3, since=since
        )
        t_due = time.monotonic()
        assert due.json()["reason"] == "checkin" and due.json()["grace_s"] == 1
        # pushed back by the check-in: ~1 s after it, not ~1 s after the start
        assert 0.8 <= t_due - t_checkin <= 2.0, t_due - t_checkin
        assert t_due - t_start >= 1.4
        assert not [s for s in p.seen[:since] if of_type("checkin_due")(s)]

        # answering the due check-in starts a fresh interval
        since = len(p.seen)
        await p.publish(dev_ev(OLA_DEV), {"id": "c2", "type": "checkin"})
        t_checkin = time.monotonic()
        await p.wait_message(
            dev_cmd(OLA_DEV), of_type("checkin_due", session=sid), timeout=3, since=since
        )
        assert 0.8 <= time.monotonic() - t_checkin <= 2.0
        assert not [s for s in p.seen if of_type("alarm_raised")(s)]
        await ask(p, dev_ev(OLA_DEV), {"id": "e1", "type": "session_end"}, dev_cmd(OLA_DEV))


async def test_overrun_due_at_max_duration_despite_checkins(
    cfg: dict[str, Any], mosquitto: MosquittoBroker
) -> None:
    ra = ra1(cfg)
    del ra["checkin_interval"]
    ra["max_duration"] = "2s"
    async with running_gateway(cfg), probe(mosquitto.port, "jaa/#") as p:
        ans = await ask(p, dev_ev(OLA_DEV), start("s1"), dev_cmd(OLA_DEV))
        t_start = time.monotonic()
        assert ans["checkin_interval_s"] is None
        await asyncio.sleep(1.0)
        await p.publish(dev_ev(OLA_DEV), {"id": "c1", "type": "checkin"})
        due = await p.wait_message(
            dev_cmd(OLA_DEV), of_type("checkin_due", session=ans["session"]), timeout=4
        )
        elapsed = time.monotonic() - t_start
        assert 1.8 <= elapsed <= 3.2, elapsed
        assert due.json()["reason"] == "overrun" and due.json()["grace_s"] == 1
        assert not [s for s in p.seen if of_type("checkin_due", reason="checkin")(s)]


async def test_unknown_device_repeat_is_answered_again_and_counted_once(
    cfg: dict[str, Any], mosquitto: MosquittoBroker
) -> None:
    t0 = dt.datetime.now(dt.UTC)
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:
        first = await ask(p, dev_ev("jaa-9999"), start("u1"), dev_cmd("jaa-9999"))
        again = await ask(p, dev_ev("jaa-9999"), start("u1"), dev_cmd("jaa-9999"))
        assert first["reason"] == "unknown_device" and again == first
        assert await metric(gw, "jaa_session_denials_total", reason="unknown_device") == 1
        assert await metric(gw, "jaa_rejected_messages_total", reason="duplicate") == 1
        denials = [e for e in await audit_since(gw, t0) if e["event"] == "session_denied"]
        assert len(denials) == 1


async def test_device_start_joins_a_badge_session_that_had_no_device(
    cfg: dict[str, Any], mosquitto: MosquittoBroker
) -> None:
    """Badged in with the JAA off (allowed here), then the worker switches it on and presses
    start at the same place: the session is the same, and from now on it is the device's."""
    ra = ra1(cfg)
    ra["acute_injury_risk"] = False
    ra["requires_jaa"] = False
    del ra["checkin_interval"]
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:
        on = await ask(p, door_ev(DOOR), badge("b1"), door_cmd(DOOR))
        [s] = await sessions(gw)
        assert s["device"] is None
        joined = await ask(p, dev_ev(OLA_DEV), start("s1"), dev_cmd(OLA_DEV))
        assert joined["type"] == "session_started" and joined["session"] == on["session"]
        [s] = await sessions(gw)
        assert s["device"] == OLA_DEV


async def test_badge_start_with_checkins_but_no_live_jaa_is_denied(
    cfg: dict[str, Any], mosquitto: MosquittoBroker
) -> None:
    """Check-ins are asked of the JAA: without a live one the first checkin_due would go
    nowhere and end in a certain missed_checkin alarm, so the gate says jaa_required."""
    ra = ra1(cfg)
    ra["acute_injury_risk"] = False
    ra["requires_jaa"] = False
    ra["checkin_interval"] = "2s"
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:
        ans = await ask(p, door_ev(DOOR), badge("b1"), door_cmd(DOOR))
        assert ans["type"] == "session_denied" and ans["reason"] == "jaa_required"
        assert "check-ins" in ans["detail"]
        assert await sessions(gw) == []


async def test_routine_events_queued_together_share_one_commit_and_fail_alone(
    cfg: dict[str, Any], mosquitto: MosquittoBroker, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    """Check-ins that queue up run in one transaction (one fsync for the lot, issue 6), each
    under its own SAVEPOINT: one that fails is rolled back alone and the rest are stored."""
    cfg["gateway"]["database"] = db_url
    from sqlalchemy import event as sa_event

    from jaa_gateway import engine as engine_mod
    from jaa_gateway.domain.events import DeviceEvent

    t0 = dt.datetime.now(dt.UTC)
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:
        ans = await ask(p, dev_ev(OLA_DEV), start("s1"), dev_cmd(OLA_DEV))
        assert gw.app is not None
        engine = gw.app.engine
        commits: list[int] = []
        sa_event.listen(gw.app.store.engine, "commit", lambda _c: commits.append(1))
        sessions = engine.svc.inbound.sessions
        real = sessions.checkin

        async def checkin(tx: Any, person: Any, ev: DeviceEvent) -> None:
            await real(tx, person, ev)
            if ev.id == "c-bad":
                raise RuntimeError("poisoned check-in")

        monkeypatch.setattr(sessions, "checkin", checkin)
        # a loaded CI machine may take longer than the 20 ms a transaction may hold the loop
        monkeypatch.setattr(engine_mod, "UNIT_BUDGET_S", 60.0)
        now = dt.datetime.now(dt.UTC)
        evs = [
            DeviceEvent(device_id=OLA_DEV, id=i, type="checkin", ts=None, received_at=now)
            for i in ("c-1", "c-bad", "c-2")
        ]
        await engine.handle_batch(list(evs))
        assert len(commits) == 1
        checkins = [
            e for e in await audit_since(gw, t0) if e["event"] == "checkin" and e["session"]
        ]
        assert len(checkins) == 2 and {e["session"] for e in checkins} == {ans["session"]}
        # the poisoned one left nothing behind: sent again, it is handled, not a duplicate
        monkeypatch.setattr(sessions, "checkin", real)
        await engine.handle_batch([evs[1], evs[0]])
        checkins = [e for e in await audit_since(gw, t0) if e["event"] == "checkin"]
        assert len(checkins) == 3
        assert await metric(gw, "jaa_rejected_messages_total", reason="duplicate") == 1
        # with no time left in the budget, every event gets a transaction of its own
        monkeypatch.setattr(engine_mod, "UNIT_BUDGET_S", 0.0)
        commits.clear()
        more = [
            DeviceEvent(device_id=OLA_DEV, id=f"c-{i}", type="checkin", ts=None, received_at=now)
            for i in range(3, 6)
        ]
        await engine.handle_batch(more)
        assert len(commits) == 3
