"""End to end: every alarm source, pre-alarm cancel, cancel after escalation, step timing,
repeat/keep-paging, Twilio failures, and the sos -> SMS latency.

Real mosquitto, the Twilio double, the real HTTP API; the site of tests/support/gateway.py whose
chain "guards" has steps at 0 s (guard-1: sms + call), 2 s (guard-2 + the worker's supervisor
kari: sms) and 4 s (head-security: sms). Offsets are measured on the double's arrival clock
(`Recorded.at`, time.monotonic()) from the instant the test published the triggering event.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

from jaa_gateway.domain import texts
from tests.support.broker import MosquittoBroker, MqttProbe, Seen, probe
from tests.support.gateway import (
    PHONES,
    Client,
    InProcessGateway,
    running_gateway,
    site_config,
)
from tests.support.twilio_double import Recorded, TwilioDouble

# Early is a bug at any size (a step must never go out before its time); late is allowed up to
# the contract's tolerance for timing tests.
EARLY = 0.1
LATE = 1.0

_ids = itertools.count(1)


def new_id(prefix: str = "e") -> str:
    return f"{prefix}-{next(_ids)}-{time.monotonic_ns()}"


def event_topic(device: str) -> str:
    return f"jaa/device/{device}/event"


def cmd_topic(device: str) -> str:
    return f"jaa/device/{device}/cmd"


def alarm_topic(alarm_id: str) -> str:
    return f"jaa/gateway/alarm/{alarm_id}"


async def wait_cmd(
    p: MqttProbe,
    device: str,
    type_: str,
    pred: Callable[[dict[str, Any]], bool] = lambda _: True,
    timeout: float = 5.0,
    since: int = 0,
) -> dict[str, Any]:
    seen = await p.wait_message(
        cmd_topic(device),
        lambda s: _is_json(s) and s.json().get("type") == type_ and pred(s.json()),
        timeout,
        since=since,
    )
    body: dict[str, Any] = seen.json()
    return body


def _is_json(s: Seen) -> bool:
    try:
        return isinstance(s.json(), dict)
    except ValueError:
        return False


def cmds(p: MqttProbe, device: str, type_: str, since: int = 0) -> list[dict[str, Any]]:
    out = []
    for s in p.seen[since:]:
        if s.topic == cmd_topic(device) and _is_json(s) and s.json().get("type") == type_:
            out.append(s.json())
    return out


async def start_session(
    p: MqttProbe, device: str = "jaa-0042", location: str = "d1-123"
) -> dict[str, Any]:
    eid = new_id("start")
    await p.publish(event_topic(device), {"id": eid, "type": "session_start", "location": location})
    started = await wait_cmd(p, device, "session_started", lambda m: m.get("re") == eid, timeout=5)
    return started


async def raise_sos(p: MqttProbe, device: str = "jaa-0042", **fields: Any) -> tuple[str, float]:
    """Publish an sos; returns (alarm id, monotonic instant just before the publish)."""
    eid = new_id("sos")
    t0 = time.monotonic()
    await p.publish(event_topic(device), {"id": eid, "type": "sos", **fields})
    raised = await wait_cmd(p, device, "alarm_raised", lambda m: m.get("re") == eid)
    assert raised["kind"] == "sos"
    return str(raised["alarm"]), t0


class HasClient(Protocol):
    client: Client


async def get_alarm(gw: HasClient, alarm_id: str) -> dict[str, Any]:
    status, body = await gw.client.api("GET", f"/api/alarms/{alarm_id}")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def timeline(alarm: dict[str, Any], event: str) -> list[dict[str, Any]]:
    return [e for e in alarm["timeline"] if e["event"] == event]


async def eventually(
    check: Callable[[], Any],
    timeout: float = 5.0,
    interval: float = 0.05,
) -> Any:
    """Poll an (async or sync) check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)


async def retained_on(port: int, topic: str, settle: float = 0.4) -> list[Seen]:
    """What a client subscribing now gets as retained messages on `topic`."""
    async with probe(port, topic) as fresh:
        await asyncio.sleep(settle)
        return [s for s in fresh.seen if s.retain]


def to(double: TwilioDouble, who: str, kind: str | None = None) -> list[Recorded]:
    return [r for r in double.accepted if r.to == PHONES[who] and (kind is None or r.kind == kind)]


def offsets(records: list[Recorded], t0: float) -> list[float]:
    return [round(r.at - t0, 3) for r in records]


def assert_on_time(records: list[Recorded], t0: float, offset: float, what: str) -> None:
    assert records, f"{what}: nothing arrived"
    for r in records:
        d = r.at - t0
        assert offset - EARLY <= d <= offset + LATE, (
            f"{what}: {r.kind} to {r.to} arrived at +{d:.3f} s, expected +{offset} s "
            f"(-{EARLY}/+{LATE})"
        )


@contextlib.asynccontextmanager
async def site(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    twilio: TwilioDouble,
    patch: Callable[[dict[str, Any]], None] | None = None,
    db_url: str | None = None,
) -> AsyncIterator[tuple[InProcessGateway, MqttProbe, dict[str, Any]]]:
    """`db_url` (the `db_url` fixture) runs the site on that database (default: SQLite)."""
    cfg = site_config(tmp_path / "state.db", mosquitto.port, twilio)
    if db_url is not None:
        cfg["gateway"]["database"] = db_url
    if patch is not None:
        patch(cfg)
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:
        yield gw, p, cfg


# --------------------------------------------------------------------------- alarm sources


async def test_sos_in_a_session_escalates_at_once(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble, db_url: str
) -> None:
    async with site(tmp_path, mosquitto, twilio_double, db_url=db_url) as (gw, p, _):
        started = await start_session(p)
        alarm_id, t0 = await raise_sos(p)
        await twilio_double.wait_for(
            lambda d: len(to(d, "guard-1", "sms")) == 1 and len(to(d, "guard-1", "call")) == 1,
            timeout=3,
        )
        sms = to(twilio_double, "guard-1", "sms")[0]
        call = to(twilio_double, "guard-1", "call")[0]
        assert_on_time([sms, call], t0, 0.0, "step 0")
        a = await get_alarm(gw, alarm_id)
        assert (a["state"], a["kind"], a["person"]) == ("escalating", "sos", "ola")
        assert (a["location"], a["session"]) == ("d1-123", started["session"])
        body = sms.body or ""
        assert "Ola Nordmann" in body and "Realfagbygget D1-123" in body
        assert f"OK {a['code']}" in body
        assert sms.from_ == "+4722334455" and sms.status_callback is not None
        twiml = call.twiml or ""
        assert '<Say language="nb-NO">' in twiml and "<Gather" in twiml
        assert f"/twilio/voice/{alarm_id}" in twiml
        # the alarm is stored before any notification: its first audit entry precedes the sends
        events = [e["event"] for e in a["timeline"]]
        assert events.index("alarm_raised") < events.index("notification_sent")
        retained = await retained_on(mosquitto.port, alarm_topic(alarm_id))
        assert len(retained) == 1 and retained[0].json()["state"] == "escalating"
        # nobody else yet: step 1 is at 2 s
        assert {r.to for r in twilio_double.attempts} == {PHONES["guard-1"]}


async def test_man_down_prealarms_then_escalates(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        await start_session(p)
        eid = new_id("md")
        t0 = time.monotonic()
        await p.publish(event_topic("jaa-0042"), {"id": eid, "type": "man_down"})
        pre = await wait_cmd(p, "jaa-0042", "prealarm", lambda m: m.get("re") == eid)
        assert pre["kind"] == "man_down"
        assert 0.5 <= pre["cancel_within_s"] <= 1.0
        alarm_id = pre["alarm"]
        retained = await retained_on(mosquitto.port, alarm_topic(alarm_id), settle=0.2)
        assert retained and retained[0].json()["state"] == "prealarm"
        assert (await get_alarm(gw, alarm_id))["state"] == "prealarm"
        # inside the window nobody is called
        await asyncio.sleep(max(0.0, t0 + 0.8 - time.monotonic()))
        assert twilio_double.attempts == []
        raised = await wait_cmd(p, "jaa-0042", "alarm_raised", lambda m: m["alarm"] == alarm_id)
        assert raised["kind"] == "man_down"
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1")) == 2, timeout=3)
        assert_on_time(to(twilio_double, "guard-1"), t0, 1.0, "man_down after prealarm_window")
        a = await get_alarm(gw, alarm_id)
        assert a["state"] == "escalating"
        assert "Mann ned" in (to(twilio_double, "guard-1", "sms")[0].body or "")


async def test_missed_checkin_then_alarm_and_checkin_in_time_raises_nothing(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    def patch(cfg: dict[str, Any]) -> None:
        ra = cfg["assessments"][0]
        ra["checkin_interval"] = "1s"
        # per works under the same assessment, and checks in on time
        cfg["assessments"].append(ra | {"id": "RA-2", "person": "per"})

    async with site(tmp_path, mosquitto, twilio_double, patch) as (gw, p, _):
        t0 = time.monotonic()
        s_ola = await start_session(p, "jaa-0042")
        s_per = await start_session(p, "jaa-0043")
        assert s_ola["checkin_interval_s"] == 1.0

        async def per_checks_in() -> None:
            for _ in range(8):
                await asyncio.sleep(0.4)
                await p.publish(event_topic("jaa-0043"), {"id": new_id("ci"), "type": "checkin"})

        keeper = asyncio.create_task(per_checks_in())
        due = await wait_cmd(p, "jaa-0042", "checkin_due", timeout=3)
        assert due == {
            "type": "checkin_due",
            "session": s_ola["session"],
            "reason": "checkin",
            "grace_s": 1.0,
        }
        raised = await wait_cmd(p, "jaa-0042", "alarm_raised", timeout=3)
        t_raised = time.monotonic() - t0
        assert raised["kind"] == "missed_checkin"
        assert 1.9 <= t_raised <= 3.2, t_raised
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1", "sms")) == 1, timeout=3)
        assert "Uteblitt innsjekk" in (to(twilio_double, "guard-1", "sms")[0].body or "")
        a = await get_alarm(gw, raised["alarm"])
        assert (a["kind"], a["session"], a["location"]) == (
            "missed_checkin",
            s_ola["session"],
            "d1-123",
        )
        await keeper
        # per checked in every 0.4 s: neither a checkin_due nor an alarm
        assert cmds(p, "jaa-0043", "checkin_due") == []
        assert cmds(p, "jaa-0043", "alarm_raised") == []
        status, body = await gw.client.api("GET", "/api/alarms?state=open")
        assert status == 200
        assert [x["person"] for x in body["alarms"]] == ["ola"]
        assert s_per["session"] not in [x["session"] for x in body["alarms"]]


async def test_session_overrun_then_alarm(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    def patch(cfg: dict[str, Any]) -> None:
        ra = cfg["assessments"][0]
        ra["max_duration"] = "2s"
        del ra["checkin_interval"]

    async with site(tmp_path, mosquitto, twilio_double, patch) as (gw, p, _):
        t0 = time.monotonic()
        s = await start_session(p)
        due = await wait_cmd(p, "jaa-0042", "checkin_due", timeout=4)
        assert 1.8 <= time.monotonic() - t0 <= 3.0
        assert due == {
            "type": "checkin_due",
            "session": s["session"],
            "reason": "overrun",
            "grace_s": 1.0,
        }
        raised = await wait_cmd(p, "jaa-0042", "alarm_raised", timeout=3)
        assert raised["kind"] == "session_overrun"
        assert 2.8 <= time.monotonic() - t0 <= 4.2
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1")) == 2, timeout=3)
        a = await get_alarm(gw, raised["alarm"])
        assert (a["kind"], a["state"], a["session"]) == (
            "session_overrun",
            "escalating",
            s["session"],
        )


async def test_device_offline_raises_and_heartbeats_keep_it_quiet(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    def patch(cfg: dict[str, Any]) -> None:
        cfg["timing"]["device_timeout"] = "2s"
        cfg["assessments"].append(cfg["assessments"][0] | {"id": "RA-2", "person": "per"})

    async with site(tmp_path, mosquitto, twilio_double, patch) as (gw, p, _):
        t0 = time.monotonic()
        s_ola = await start_session(p, "jaa-0042")
        await start_session(p, "jaa-0043")

        async def per_heartbeats() -> None:
            for _ in range(8):
                await asyncio.sleep(0.4)
                await p.publish(event_topic("jaa-0043"), {"id": new_id("hb"), "type": "heartbeat"})

        keeper = asyncio.create_task(per_heartbeats())
        raised = await wait_cmd(p, "jaa-0042", "alarm_raised", timeout=4)
        assert raised["kind"] == "device_offline"
        assert 1.9 <= time.monotonic() - t0 <= 3.2
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1")) == 2, timeout=3)
        assert "mistet forbindelsen" in (to(twilio_double, "guard-1", "sms")[0].body or "")
        a = await get_alarm(gw, raised["alarm"])
        assert (a["kind"], a["session"]) == ("device_offline", s_ola["session"])
        await keeper
        assert cmds(p, "jaa-0043", "alarm_raised") == []
        # one device_offline alarm per session, not one per timeout
        status, body = await gw.client.api("GET", "/api/alarms?state=open")
        assert status == 200
        assert [x["kind"] for x in body["alarms"]] == ["device_offline"]


async def test_unattended_entry_notice_is_one_sms_no_call_no_ack(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        # with a session at the location, opening its door is normal
        await start_session(p)
        await p.publish("jaa/door/door-d1-123/event", {"id": new_id("open"), "type": "open"})
        # a location without after_hours never raises a notice
        await p.publish("jaa/door/door-w-1/event", {"id": new_id("open"), "type": "open"})
        await p.publish(event_topic("jaa-0042"), {"id": new_id("end"), "type": "session_end"})
        await wait_cmd(p, "jaa-0042", "session_ended")
        await asyncio.sleep(0.3)
        assert twilio_double.attempts == []

        eid = new_id("open")
        await p.publish("jaa/door/door-d1-123/event", {"id": eid, "type": "open"})
        await p.publish("jaa/door/door-d1-123/event", {"id": eid, "type": "open"})  # a repeat
        await twilio_double.wait_for(1, timeout=3)
        await asyncio.sleep(1.5)
        assert [(r.kind, r.to) for r in twilio_double.attempts] == [("sms", PHONES["guard-1"])]
        body = twilio_double.sms[0].body or ""
        assert "Realfagbygget D1-123" in body and "door-d1-123" in body
        status, listed = await gw.client.api("GET", "/api/alarms?state=open")
        assert listed["alarms"] == []
        status, listed = await gw.client.api("GET", "/api/alarms?state=notice")
        assert [(x["kind"], x["location"]) for x in listed["alarms"]] == [
            ("unattended_entry", "d1-123")
        ]
        # no acknowledgement needed, nor possible
        nid = listed["alarms"][0]["id"]
        status, _ = await gw.client.api("POST", f"/api/alarms/{nid}/ack", {"by": "guard-1"})
        assert status == 404


async def test_sos_without_session_uses_default_chain_and_position(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        alarm_id, t0 = await raise_sos(p, "jaa-0043", lat=63.4184, lon=10.4029)
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1")) == 2, timeout=3)
        assert_on_time(to(twilio_double, "guard-1"), t0, 0.0, "step 0")
        a = await get_alarm(gw, alarm_id)
        assert (a["person"], a["location"], a["session"]) == ("per", None, None)
        assert (a["lat"], a["lon"]) == (63.4184, 10.4029)
        assert timeline(a, "alarm_raised")[0]["data"]["chain"] == "guards"
        body = to(twilio_double, "guard-1", "sms")[0].body or ""
        assert "Per Student" in body
        assert "https://maps.google.com/?q=63.41840,10.40290" in body


# --------------------------------------------------------------------------- worker cancel


async def test_prealarm_cancelled_by_worker_calls_nobody(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        await start_session(p)
        eid = new_id("md")
        await p.publish(event_topic("jaa-0042"), {"id": eid, "type": "man_down"})
        pre = await wait_cmd(p, "jaa-0042", "prealarm", lambda m: m.get("re") == eid)
        alarm_id = pre["alarm"]
        await p.wait_message(alarm_topic(alarm_id), lambda s: bool(s.payload))
        cid = new_id("cancel")
        await p.publish(event_topic("jaa-0042"), {"id": cid, "type": "cancel", "alarm": alarm_id})
        cancelled = await wait_cmd(p, "jaa-0042", "alarm_cancelled", lambda m: m.get("re") == cid)
        assert cancelled["alarm"] == alarm_id
        await p.wait_message(alarm_topic(alarm_id), lambda s: s.payload == b"")
        # well past the pre-alarm window: still no request at all
        await asyncio.sleep(1.5)
        assert twilio_double.attempts == []
        assert cmds(p, "jaa-0042", "alarm_raised") == []
        a = await get_alarm(gw, alarm_id)
        assert a["state"] == "cancelled"
        assert a["notifications"] == []
        assert await retained_on(mosquitto.port, alarm_topic(alarm_id)) == []
        # a repeat of the cancel is answered again and changes nothing
        await p.publish(event_topic("jaa-0042"), {"id": cid, "type": "cancel", "alarm": alarm_id})
        await eventually(lambda: len(cmds(p, "jaa-0042", "alarm_cancelled")) == 2)


async def test_cancel_after_escalation_tells_the_notified_and_goes_on(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        await start_session(p)
        alarm_id, t0 = await raise_sos(p)
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1")) == 2, timeout=3)

        async def step0_recorded() -> bool:
            a = await get_alarm(gw, alarm_id)
            return all(n["state"] == "sent" for n in a["notifications"])

        await eventually(step0_recorded)
        cid = new_id("cancel")
        await p.publish(event_topic("jaa-0042"), {"id": cid, "type": "cancel"})
        # the worker is told the alarm stands: guards are still being called
        answer = await wait_cmd(p, "jaa-0042", "alarm_raised", lambda m: m.get("re") == cid)
        assert answer["alarm"] == alarm_id
        a = await get_alarm(gw, alarm_id)
        ok_text = texts.worker_ok_sms(
            "nb", "sos", "Ola Nordmann", "Realfagbygget D1-123", a["code"]
        )
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1", "sms")) == 2, timeout=3)
        assert to(twilio_double, "guard-1", "sms")[1].body == ok_text
        # the escalation goes on: step 1 at 2 s reaches guard-2 and kari with the alarm itself
        await twilio_double.wait_for(
            lambda d: len(to(d, "guard-2")) == 1 and len(to(d, "kari")) == 1, timeout=4
        )
        assert_on_time(to(twilio_double, "guard-2") + to(twilio_double, "kari"), t0, 2.0, "step 1")
        for who in ("guard-2", "kari"):
            assert "JAA-ALARM" in (to(twilio_double, who)[0].body or "")
        a = await get_alarm(gw, alarm_id)
        assert a["state"] == "escalating"
        assert [e["data"]["told"] for e in timeline(a, "worker_reports_ok")] == [["guard-1"]]
        # a second cancel does not tell them twice
        await p.publish(event_topic("jaa-0042"), {"id": new_id("cancel"), "type": "cancel"})
        await asyncio.sleep(0.3)
        assert len(to(twilio_double, "guard-1", "sms")) == 2
        status, body = await gw.client.api("POST", f"/api/alarms/{alarm_id}/ack", {"by": "guard-1"})
        assert status == 200 and body["state"] == "acknowledged"


# --------------------------------------------------------------------------- timing


async def test_steps_arrive_at_their_offsets(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble, db_url: str
) -> None:
    async with site(tmp_path, mosquitto, twilio_double, db_url=db_url) as (gw, p, _):
        await start_session(p)
        alarm_id, t0 = await raise_sos(p)
        await twilio_double.wait_for(lambda d: len(to(d, "head-security")) == 1, timeout=6)
        await asyncio.sleep(max(0.0, t0 + 5.5 - time.monotonic()))
        assert_on_time(to(twilio_double, "guard-1"), t0, 0.0, "step 0")
        assert_on_time(to(twilio_double, "guard-2") + to(twilio_double, "kari"), t0, 2.0, "step 1")
        assert_on_time(to(twilio_double, "head-security"), t0, 4.0, "step 2")
        got = sorted((r.to, r.kind) for r in twilio_double.attempts)
        assert got == sorted(
            [
                (PHONES["guard-1"], "sms"),
                (PHONES["guard-1"], "call"),
                (PHONES["guard-2"], "sms"),
                (PHONES["kari"], "sms"),
                (PHONES["head-security"], "sms"),
            ]
        ), got
        a = await get_alarm(gw, alarm_id)
        # keep_paging 0: the chain ends, audited once, and the alarm stays open
        assert len(timeline(a, "escalation_exhausted")) == 1
        assert a["state"] == "escalating" and a["exhausted"] is True
        assert [e["data"]["k"] for e in timeline(a, "escalation_step")] == [0, 1, 2]


async def test_repeat_and_keep_paging_until_ack(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    def patch(cfg: dict[str, Any]) -> None:
        cfg["escalation_chains"] = [
            {
                "id": "guards",
                "repeat": 1,
                "repeat_after": "1s",
                "keep_paging": "1s",
                "steps": [
                    {"after": "0s", "notify": ["roster:desk"], "via": ["sms"]},
                    {"after": "1s", "notify": ["person:guard-2"], "via": ["sms"]},
                ],
            }
        ]

    async with site(tmp_path, mosquitto, twilio_double, patch) as (gw, p, _):
        alarm_id, t0 = await raise_sos(p)
        # run 0: 0 s, 1 s; run 1 starts 1 s after run 0's last step: 2 s, 3 s; exhausted;
        # then guard-2 (the last step) again every second: 4 s, 5 s, ...
        await twilio_double.wait_for(lambda d: len(to(d, "guard-2")) >= 4, timeout=7)
        status, body = await gw.client.api("POST", f"/api/alarms/{alarm_id}/ack", {"by": "guard-2"})
        assert status == 200, body
        t_ack = time.monotonic()
        await asyncio.sleep(1.6)
        g1 = offsets(to(twilio_double, "guard-1"), t0)
        g2 = offsets(to(twilio_double, "guard-2"), t0)
        assert len(g1) == 2 and len(g2) == 4, (g1, g2)
        for got, want in zip(g1 + g2, [0.0, 2.0, 1.0, 3.0, 4.0, 5.0], strict=True):
            assert want - EARLY <= got <= want + 0.7, (g1, g2)
        assert all(r.at <= t_ack for r in twilio_double.attempts), "paged after the ack"
        a = await get_alarm(gw, alarm_id)
        assert len(timeline(a, "escalation_exhausted")) == 1
        steps = timeline(a, "escalation_step")
        assert [e["data"]["keep_paging"] for e in steps] == [False] * 4 + [True] * 2


# --------------------------------------------------------------------------- Twilio trouble


def _audit_for(a: dict[str, Any], event: str, who: str) -> list[dict[str, Any]]:
    return [e for e in timeline(a, event) if e["actor"] == who]


async def test_twilio_failing_twice_then_succeeding_is_retried(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        twilio_double.fail_next(2, 500)
        alarm_id, _ = await raise_sos(p)
        await twilio_double.wait_for(
            lambda d: len(to(d, "guard-1", "sms")) == 1 and len(to(d, "guard-1", "call")) == 1,
            timeout=5,
        )
        failed = [r for r in twilio_double.attempts if r.http_status == 500]
        assert len(failed) == 2

        async def both_recorded() -> dict[str, Any] | None:
            a = await get_alarm(gw, alarm_id)
            done = [n["state"] for n in a["notifications"]] == ["sent", "sent"]
            return a if done else None

        a = await eventually(both_recorded, timeout=3)
        retries = timeline(a, "notification_retry")
        assert len(retries) == 2 and {e["data"]["status"] for e in retries} == {500}
        assert timeline(a, "notification_failed") == []
        sent = [n for n in a["notifications"] if n["state"] == "sent"]
        assert len(sent) == 2 and sum(n["attempts"] for n in sent) == 4


async def test_429_is_retried(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        twilio_double.fail_next(1, 429)
        alarm_id, _ = await raise_sos(p)
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1")) == 2, timeout=4)
        assert [r.http_status for r in twilio_double.attempts].count(429) == 1
        a = await get_alarm(gw, alarm_id)
        assert [e["data"]["status"] for e in timeline(a, "notification_retry")] == [429]


async def test_permanent_error_is_not_retried_and_others_still_get_theirs(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    def patch(cfg: dict[str, Any]) -> None:
        cfg["rosters"][0]["shifts"][0]["people"] = ["guard-1", "guard-2"]

    async with site(tmp_path, mosquitto, twilio_double, patch) as (gw, p, _):
        twilio_double.fail_number(PHONES["guard-1"], 400, 21211)
        alarm_id, t0 = await raise_sos(p)
        await twilio_double.wait_for(lambda d: len(to(d, "guard-2")) == 2, timeout=3)
        assert_on_time(to(twilio_double, "guard-2"), t0, 0.0, "step 0, other target")

        async def failed_recorded() -> list[dict[str, Any]]:
            a = await get_alarm(gw, alarm_id)
            return _audit_for(a, "notification_failed", "guard-1")

        failures = await eventually(lambda: failed_recorded(), timeout=3)
        await asyncio.sleep(1.2)  # longer than any first backoff
        to_g1 = [r for r in twilio_double.attempts if r.to == PHONES["guard-1"]]
        assert sorted(r.kind for r in to_g1) == ["call", "sms"]  # one attempt each
        assert all(r.http_status == 400 for r in to_g1)
        a = await get_alarm(gw, alarm_id)
        failures = _audit_for(a, "notification_failed", "guard-1")
        assert len(failures) == 2
        assert all(e["data"]["code"] == 21211 and e["data"]["permanent"] for e in failures)
        assert _audit_for(a, "notification_retry", "guard-1") == []
        g1_rows = [n for n in a["notifications"] if n["person"] == "guard-1"]
        assert [n["state"] for n in g1_rows] == ["failed", "failed"]
        assert a["state"] == "escalating"


async def test_slow_twilio_does_not_delay_the_next_step(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    # request_timeout is 2 s in site_config: every answer now comes after the gateway gave up
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        await start_session(p)
        twilio_double.set_delay(3.0)
        alarm_id, t0 = await raise_sos(p)
        await twilio_double.wait_for(
            lambda d: (
                any(r.to == PHONES["kari"] for r in d.attempts)
                and any(r.to == PHONES["guard-2"] for r in d.attempts)
            ),
            timeout=4,
        )
        step1 = [r for r in twilio_double.attempts if r.to in (PHONES["kari"], PHONES["guard-2"])]
        assert_on_time(step1, t0, 2.0, "step 1 while Twilio hangs on step 0")
        first_g1 = [r for r in twilio_double.attempts if r.to == PHONES["guard-1"]][:2]
        assert_on_time(first_g1, t0, 0.0, "step 0 attempt")
        twilio_double.set_delay(0.0)
        a = await get_alarm(gw, alarm_id)
        assert [e["data"]["k"] for e in timeline(a, "escalation_step")] == [0, 1]


# --------------------------------------------------------------------------- latency


async def test_sos_to_sms_latency_median_of_20(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        await start_session(p)
        samples: list[float] = []
        for _ in range(20):
            n = len(to(twilio_double, "guard-1", "sms"))
            eid = new_id("sos")
            t0 = time.monotonic()
            await p.publish(event_topic("jaa-0042"), {"id": eid, "type": "sos"})
            await twilio_double.wait_for(lambda d, n=n: len(to(d, "guard-1", "sms")) > n, timeout=3)
            samples.append(to(twilio_double, "guard-1", "sms")[n].at - t0)
            raised = await wait_cmd(p, "jaa-0042", "alarm_raised", lambda m, e=eid: m["re"] == e)
            status, _ = await gw.client.api(
                "POST", f"/api/alarms/{raised['alarm']}/ack", {"by": "guard-1"}
            )
            assert status == 200
        med = statistics.median(samples)
        print(
            f"\nsos publish -> Twilio double SMS: median {med * 1000:.1f} ms, "
            f"min {min(samples) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms (n=20)"
        )
        assert med < 1.0


# --------------------------------------------------------------------------- call pacing


async def test_calls_to_one_number_are_paced_and_a_held_call_speaks_every_open_alarm(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    # call_spacing is 1 s in site_config; SMS are never held back
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        t0 = time.monotonic()
        ids = [(await raise_sos(p, dev))[0] for dev in ("jaa-0042", "jaa-0043", "jaa-0044")]
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1", "call")) == 2, timeout=4)
        assert_on_time(to(twilio_double, "guard-1", "sms"), t0, 0.0, "sms, not paced")
        assert len(to(twilio_double, "guard-1", "sms")) == 3
        first, second = to(twilio_double, "guard-1", "call")
        assert first.at - t0 <= LATE
        assert second.at - first.at >= 1.0 - EARLY, "two calls to one number within 1 s"
        assert second.at - first.at <= 1.0 + LATE
        assert f"/twilio/voice/{ids[0]}" in (first.twiml or "")
        # the held-back call speaks both alarms raised meanwhile, and pressing 1 acks both
        twiml = second.twiml or ""
        assert "Per Student" in twiml and "Nils Nyansatt" in twiml
        action = f"/twilio/voice/{ids[1]}?also={ids[2]}"
        assert action in twiml.replace("&amp;", "&"), twiml
        status, _ = await gw.client.webhook(
            action,
            {"CallSid": new_id("CA"), "To": PHONES["guard-1"], "Digits": "1"},
        )
        assert status == 200
        for aid, state in zip(ids, ["escalating", "acknowledged", "acknowledged"], strict=True):
            assert (await get_alarm(gw, aid))["state"] == state
