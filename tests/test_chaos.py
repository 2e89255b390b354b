"""Crash loop (issue 7, item 1): SIGKILL the real daemon at random moments while alarms are
raised, escalated and acknowledged and sessions start and lapse; after each restart the
invariants are checked against the database and the Twilio double (tests/support/chaos.py).

`make test` runs a fixed seed with 15 kills (about 30 s); `make chaos` the long run
(CHAOS_KILLS=200). CHAOS_SEED picks another seed, CHAOS_REPORT a file for the JSON counts.

The first tests feed the invariant checker hand-made states to show that each invariant can
fail: an oracle that cannot fail would make the crash loop prove nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from jaa_gateway.domain import guard_texts
from tests.support.broker import MosquittoBroker
from tests.support.chaos import (
    INF,
    ChaosRun,
    ChaosSettings,
    CheckParams,
    History,
    Outage,
    Req,
    Snapshot,
    call_alarm_ids,
    check,
    step_offset,
)
from tests.support.gateway import PHONES
from tests.support.twilio_double import TwilioDouble
from tests.test_e2e_ack import reply_text, sms_params, sos_notified
from tests.test_e2e_alarms import get_alarm, site

# --------------------------------------------------------------------------- the oracle

T0 = 1_000_000.0
G1, G2 = "+4711111111", "+4722222222"
CHAIN: dict[str, Any] = {
    "chain_id": "guards",
    "repeat": 0,
    "repeat_after": 1.0,
    "keep_paging": 1.0,
    "steps": [
        {
            "after": 0.0,
            "via": ["sms", "call"],
            "targets": [{"person_id": "g1", "name": "G1", "phone": G1}],
            "spec": ["person:g1"],
        },
        {
            "after": 1.0,
            "via": ["sms"],
            "targets": [{"person_id": "g2", "name": "G2", "phone": G2}],
            "spec": ["person:g2"],
        },
    ],
}
ACK = T0 + 3.5  # k0 at +0, k1 at +1, pages k2 at +2 and k3 at +3; k4 (+4) falls after the ack


def _alarm(**kw: Any) -> dict[str, Any]:
    a: dict[str, Any] = {
        "id": "alm-1",
        "code": "1234",
        "kind": "sos",
        "state": "acknowledged",
        "person": "w1",
        "device": "dev-1",
        "session": None,
        "opened_at": T0,
        "escalation_started_at": T0,
        "chain": CHAIN,
        "acknowledged_at": ACK,
        "acknowledged_by": "g1",
        "resolved_at": None,
        "note": None,
    }
    a.update(kw)
    return a


def _world() -> tuple[list[dict[str, Any]], list[Req]]:
    """The rows and requests of a clean escalation of alm-1 up to its acknowledgement."""
    rows: list[dict[str, Any]] = []
    reqs: list[Req] = []
    plan = [(0, "g1", G1, "sms"), (0, "g1", G1, "call"), (1, "g2", G2, "sms")]
    plan += [(2, "g2", G2, "sms"), (3, "g2", G2, "sms")]
    for i, (k, person, phone, ch) in enumerate(plan, start=1):
        due = T0 + float(k)
        body = "JAA-ALARM sos 1234" if ch == "sms" else "Alarm for Ola"
        rows.append(
            {
                "id": i,
                "alarm": "alm-1",
                "purpose": "alarm",
                "k": k,
                "person": person,
                "phone": phone,
                "channel": ch,
                "body": body,
                "state": "sent",
                "attempts": 1,
                "created_at": due,
                "sid": f"SID{i}",
            }
        )
        twiml = '<Gather action="https://x.test/twilio/voice/alm-1">' if ch == "call" else ""
        reqs.append(Req(ch, phone, body if ch == "sms" else "", twiml, f"SID{i}", due + 0.05))
    return rows, reqs


def _check(
    rows: list[dict[str, Any]],
    reqs: list[Req],
    hist: History | None = None,
    alarms: list[dict[str, Any]] | None = None,
    sessions: list[dict[str, Any]] | None = None,
) -> list[str]:
    snap = Snapshot(T0 + 10, alarms if alarms is not None else [_alarm()], rows, sessions or [])
    return check(snap, reqs, reqs, hist or History(), CheckParams()).violations


def test_a_clean_escalation_passes_and_is_counted() -> None:
    rows, reqs = _world()
    snap = Snapshot(T0 + 10, [_alarm()], rows, [])
    rep = check(snap, reqs, reqs, History(), CheckParams())
    assert rep.violations == []
    assert (rep.counts["steps"], rep.counts["duplicates"], rep.counts["requests"]) == (4, 0, 5)


# acknowledged late enough that step k=1 (due +1) had its whole allowance (3 s) before it;
# the pages after +3 are still within theirs
LATE_ACK = [_alarm(acknowledged_at=T0 + 6.0)]


def test_a_due_step_never_enqueued_is_caught() -> None:
    rows, reqs = _world()
    rows, reqs = rows[:2] + rows[3:], reqs[:2] + reqs[3:]  # step k=1 lost
    assert _check(rows, reqs) == []  # acknowledged (+3.5) within the step's allowance: fine
    v = _check(rows, reqs, alarms=LATE_ACK)
    assert any("k=1" in x and "never enqueued" in x for x in v), v


def test_a_due_step_that_never_reached_twilio_is_caught() -> None:
    rows, reqs = _world()
    rows[2].update(state="pending", sid=None)
    del reqs[2]
    v = _check(rows, reqs, alarms=LATE_ACK)
    assert any("k=1" in x and "never reached" in x for x in v), v


def test_a_step_due_during_an_outage_is_owed_only_after_the_restart() -> None:
    rows, reqs = _world()
    rows[2].update(state="pending", sid=None)
    del reqs[2]
    alarms = [_alarm(acknowledged_at=T0 + 9.5)]
    assert any("never reached" in x for x in _check(rows, reqs, alarms=alarms))
    hist = History()
    hist.outages = [Outage(T0 + 0.5, T0 + 8.0)]  # back at +8: +3 s of uptime is after +10
    hist.kills = [T0 + 0.5]
    assert _check(rows, reqs, hist, alarms) == []


def test_a_request_after_the_acknowledgement_is_caught() -> None:
    rows, reqs = _world()
    late = reqs[4]
    reqs[4] = Req(late.kind, late.to, late.body, late.twiml, late.sid, ACK + 2.0)
    assert any("after the acknowledgement" in v for v in _check(rows, reqs))


def test_a_step_enqueued_after_the_acknowledgement_is_caught() -> None:
    rows, reqs = _world()
    rows.append(rows[4] | {"id": 6, "k": 4, "created_at": T0 + 4.0, "sid": "SID6"})
    reqs.append(Req("sms", G2, rows[4]["body"], "", "SID6", T0 + 4.05))
    assert any("after its acknowledgement" in v for v in _check(rows, reqs))


def test_a_duplicate_needs_a_kill_and_only_one_per_kill() -> None:
    rows, reqs = _world()
    rows[2]["attempts"] = 2  # claimed, killed before recording, claimed again
    dup = Req("sms", G2, rows[2]["body"], "", "SID-lost", T0 + 1.02)
    assert any("with 0 kill(s)" in v for v in _check(rows, [*reqs, dup]))
    hist = History()
    hist.killed(T0 + 1.03)
    hist.ready(T0 + 1.5)
    assert _check(rows, [*reqs, dup], hist) == []
    # a second copy of the same step across the same single kill is one too many
    dup2 = Req("sms", G2, rows[2]["body"], "", "SID-lost-2", T0 + 1.6)
    assert any("matches no claimed" in v for v in _check(rows, [*reqs, dup, dup2], hist))


def test_a_lost_call_is_attributed_through_its_twiml() -> None:
    rows, reqs = _world()
    rows[1]["attempts"] = 2
    dup = Req("call", G1, "", reqs[1].twiml, "SID-lost", T0 + 0.02)
    hist = History()
    hist.killed(T0 + 0.03)
    hist.ready(T0 + 0.9)
    assert _check(rows, [*reqs, dup], hist) == []
    assert call_alarm_ids('<x action="https://h/twilio/voice/a-1?also=a-2,a-3"/>') == [
        "a-1",
        "a-2",
        "a-3",
    ]


def test_an_early_step_is_caught() -> None:
    rows, reqs = _world()
    rows[2]["created_at"] = T0 + 0.5
    assert any("early" in v for v in _check(rows, reqs))


def test_a_confirmed_ack_that_was_lost_is_caught() -> None:
    rows, reqs = _world()
    hist = History()
    hist.acks_confirmed["alm-1"] = ACK + 0.01
    assert _check(rows, reqs, hist) == []
    escalating = _alarm(state="escalating", acknowledged_at=None, acknowledged_by=None)
    assert any("confirmed" in v for v in _check(rows, reqs, hist, [escalating]))


def test_alarms_told_to_devices_must_exist_and_repeats_name_one_alarm() -> None:
    rows, reqs = _world()
    hist = History()
    hist.told["alm-1"] = ("dev-1", "sos")
    assert _check(rows, reqs, hist) == []
    hist.told["alm-gone"] = ("dev-1", "sos")
    hist.event_alarms["e-1"] |= {"alm-1", "alm-2"}
    v = _check(rows, reqs, hist)
    assert any("alm-gone" in x for x in v) and any("e-1" in x for x in v)


def test_a_lapsed_session_must_have_exactly_one_missed_checkin_alarm() -> None:
    session = {
        "id": "ses-1",
        "started_at": T0,
        "checkin_interval_s": 1.0,
        "ended_at": None,
    }
    assert any("no missed_checkin" in v for v in _check([], [], alarms=[], sessions=[session]))
    alarm = _alarm(
        id="alm-m", kind="missed_checkin", session="ses-1", opened_at=T0 + 2.0, chain=None
    )
    assert _check([], [], alarms=[alarm], sessions=[session]) == []
    early = alarm | {"opened_at": T0 + 1.2}
    assert any("early" in v for v in _check([], [], alarms=[early], sessions=[session]))
    second = alarm | {"id": "alm-m2"}
    assert any("2 missed" in v for v in _check([], [], alarms=[alarm, second], sessions=[session]))


def test_uptime_deadlines_and_the_timetable() -> None:
    h = History()
    h.outages = [Outage(10.0, 20.0), Outage(21.0, INF)]
    assert h.deadline_after(0.0, 3.0) == 3.0
    assert h.deadline_after(9.0, 1.5) == 20.5  # 1 s before the outage, 0.5 s after it
    assert h.deadline_after(9.0, 3.0) == INF  # 1 s, 1 s, then down for good
    assert h.deadline_after(15.0, 0.5) == 20.5
    assert h.deadline_after(15.0, 3.0) == INF  # down for good
    assert [step_offset(CHAIN, k) for k in range(4)] == [
        (0.0, 0, False),
        (1.0, 1, False),
        (2.0, 1, True),
        (3.0, 1, True),
    ]
    assert step_offset(CHAIN | {"keep_paging": 0.0}, 2) is None


# --------------------------------------------------------------------------- what it found


async def test_a_retried_sms_ack_whose_first_try_failed_takes_effect(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    twilio_double: TwilioDouble,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the crash loop: the SMS webhook's replay key was stored before the ack, so a
    try cut short between the two (a kill, a database error) turned Twilio's retry of it into
    a "replay" and the guard's OK was lost. A failing ack stands in for the kill here."""
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        alarm_id, code, _ = await sos_notified(gw, p, twilio_double)
        assert gw.app is not None
        engine = gw.app.engine
        real_ack = engine.ack
        tries = 0

        async def ack_dies_once(*args: Any, **kwargs: Any) -> Any:
            nonlocal tries
            tries += 1
            if tries == 1:
                raise RuntimeError("the daemon died here")
            return await real_ack(*args, **kwargs)

        monkeypatch.setattr(engine, "ack", ack_dies_once)
        params = sms_params(PHONES["guard-1"], f"OK {code}", sid="SM" + "cd" * 16)
        status, _ = await gw.client.webhook("/twilio/sms", params)
        assert status == 500
        assert (await get_alarm(gw, alarm_id))["state"] == "escalating"
        status, twiml = await gw.client.webhook("/twilio/sms", params)  # Twilio's retry
        assert status == 200
        assert reply_text(twiml) == guard_texts.ack_confirmation("nb", code, "sos", "Ola Nordmann")
        assert (await get_alarm(gw, alarm_id))["state"] == "acknowledged"
        # once it has acted, the same webhook again is a replay: no reply, no effect
        status, twiml = await gw.client.webhook("/twilio/sms", params)
        assert status == 200 and reply_text(twiml) is None
        assert tries == 2


# --------------------------------------------------------------------------- the crash loop


SETTINGS = ChaosSettings.from_env()


@pytest.mark.slow
# the run bounds itself (max_wall_s); the margin covers the settle time and the last check
@pytest.mark.timeout(SETTINGS.max_wall_s + 60)
async def test_crash_loop(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    twilio_double: TwilioDouble,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = SETTINGS

    def progress(line: str) -> None:
        with capsys.disabled():
            print(line, flush=True)

    run = ChaosRun(tmp_path, mosquitto, twilio_double, settings, log=progress)
    result = await run.run()
    report_path = Path(os.environ.get("CHAOS_REPORT") or tmp_path / "chaos-report.json")
    await asyncio.to_thread(report_path.write_text, json.dumps(result.as_json(), indent=2))
    # printed past pytest's capture, so the counts show with or without -s
    with capsys.disabled():
        print("\n" + result.summary() + f"\n  report: {report_path}", flush=True)
    assert result.violations == [], result.summary() + "\n" + run.gw.log_tail(60)
    c = result.counts
    assert result.kills >= settings.kills
    assert result.checks == result.kills - result.startup_kills + 1
    # the loop did what it claims: many alarms, both sources, both ways of acknowledging,
    # escalations that got past their first step, and nothing left escalating at the end
    assert c["alarms_sos"] >= settings.kills // 3, c
    assert c["alarms_missed_checkin"] >= 3, c
    assert result.acks_by["api"] >= 3 and result.acks_by["sms"] >= 1, result.acks_by
    assert c["steps"] > c["alarms"], c
    assert c["state_escalating"] == 0, c
