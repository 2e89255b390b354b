"""End to end: acknowledging and resolving alarms (SMS, voice, API), the refusals (forged
signature, strangers, replays, unknown codes), and the ack/step race.

Same site as tests/test_e2e_alarms.py: steps at 0 s (guard-1: sms + call), 2 s (guard-2 and
kari: sms), 4 s (head-security: sms).
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from jaa_gateway.domain import guard_texts
from jaa_gateway.timeutil import parse_rfc3339
from tests.support.broker import MosquittoBroker, MqttProbe
from tests.support.gateway import PHONES, InProcessGateway
from tests.support.twilio_double import TwilioDouble, sign_webhook
from tests.test_e2e_alarms import (
    alarm_topic,
    eventually,
    get_alarm,
    new_id,
    raise_sos,
    retained_on,
    site,
    start_session,
    timeline,
    to,
    wait_cmd,
)

TWILIO_NUMBER = "+4722334455"


def sms_params(sender: str, body: str, sid: str | None = None) -> dict[str, str]:
    """An incoming-SMS webhook as Twilio posts it, blank parameters included."""
    return {
        "ToCountry": "NO",
        "ToState": "",
        "SmsMessageSid": sid or new_id("SM"),
        "NumMedia": "0",
        "ToCity": "",
        "FromZip": "",
        "SmsSid": sid or new_id("SM"),
        "FromState": "",
        "SmsStatus": "received",
        "FromCity": "",
        "Body": body,
        "FromCountry": "NO",
        "To": TWILIO_NUMBER,
        "ToZip": "",
        "NumSegments": "1",
        "MessageSid": sid or new_id("SM"),
        "AccountSid": "AC0123456789abcdef0123456789abcdef",
        "From": sender,
        "ApiVersion": "2010-04-01",
    }


def voice_params(callee: str, digits: str | None, **extra: str) -> dict[str, str]:
    params = {
        "CallSid": new_id("CA"),
        "AccountSid": "AC0123456789abcdef0123456789abcdef",
        "From": TWILIO_NUMBER,
        "To": callee,
        "CallStatus": "in-progress",
        "Direction": "outbound-api",
        "ApiVersion": "2010-04-01",
        **extra,
    }
    if digits is not None:
        params["Digits"] = digits
    return params


def reply_text(twiml: str) -> str | None:
    root = ET.fromstring(twiml)
    assert root.tag == "Response", twiml
    msgs = [m.text or "" for m in root.iter("Message")]
    assert len(msgs) <= 1, twiml
    return msgs[0] if msgs else None


def said(twiml: str) -> list[str]:
    return [s.text or "" for s in ET.fromstring(twiml).iter("Say")]


async def sms(gw: InProcessGateway, who: str, body: str, sid: str | None = None) -> str | None:
    phone = PHONES.get(who, who)
    status, text = await gw.client.webhook("/twilio/sms", sms_params(phone, body, sid))
    assert status == 200, text
    return reply_text(text)


async def sos_notified(
    gw: InProcessGateway, p: MqttProbe, twilio: TwilioDouble, device: str = "jaa-0042"
) -> tuple[str, str, float]:
    """An sos whose step 0 has reached guard-1 (sms + call); returns (alarm id, code, t0)."""
    n = len(to(twilio, "guard-1"))
    alarm_id, t0 = await raise_sos(p, device)
    await twilio.wait_for(lambda d: len(to(d, "guard-1")) >= n + 2, timeout=3)
    a = await get_alarm(gw, alarm_id)
    return alarm_id, str(a["code"]), t0


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 10000:04d}"


async def assert_untouched(gw: InProcessGateway, alarm_id: str) -> None:
    a = await get_alarm(gw, alarm_id)
    assert a["state"] == "escalating", a["state"]
    assert a["acknowledged_by"] is None and timeline(a, "alarm_acknowledged") == []


# --------------------------------------------------------------------------- acknowledging


async def test_ack_by_sms_stops_escalation_then_resolve(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble, db_url: str
) -> None:
    async with site(tmp_path, mosquitto, twilio_double, db_url=db_url) as (gw, p, _):
        await start_session(p)
        alarm_id, code, t0 = await sos_notified(gw, p, twilio_double)
        assert f"OK {code}" in (to(twilio_double, "guard-1", "sms")[0].body or "")
        reply = await sms(gw, "guard-1", f" ok {code} ")
        assert reply == guard_texts.ack_confirmation("nb", code, "sos", "Ola Nordmann")
        t_ack = time.monotonic()
        ack = await wait_cmd(p, "jaa-0042", "alarm_acknowledged")
        assert ack == {"type": "alarm_acknowledged", "alarm": alarm_id, "by": "guard-1"}
        a = await get_alarm(gw, alarm_id)
        assert (a["state"], a["acknowledged_by"]) == ("acknowledged", "guard-1")
        assert [e["data"]["via"] for e in timeline(a, "alarm_acknowledged")] == ["sms"]
        retained = await retained_on(mosquitto.port, alarm_topic(alarm_id))
        assert [r.json()["state"] for r in retained] == ["acknowledged"]
        # past step 1's time (2 s): nobody else is paged
        await asyncio.sleep(max(0.0, t0 + 2.8 - time.monotonic()))
        assert all(r.at <= t_ack for r in twilio_double.attempts)
        assert {r.to for r in twilio_double.attempts} == {PHONES["guard-1"]}
        # resolving needs a note...
        path = f"/api/alarms/{alarm_id}/resolve"
        for body in ({"by": "guard-1"}, {"by": "guard-1", "note": "  "}, {"note": "x"}):
            status, err = await gw.client.api("POST", path, body)
            assert status == 400 and "error" in err and "detail" in err, (body, err)
        assert (await get_alarm(gw, alarm_id))["state"] == "acknowledged"
        status, done = await gw.client.api(
            "POST", path, {"by": "guard-1", "note": "Fell, bruised knee; walked out with Geir."}
        )
        assert status == 200, done
        assert done["state"] == "resolved" and done["note"].startswith("Fell")
        await p.wait_message(alarm_topic(alarm_id), lambda s: s.payload == b"")
        assert await retained_on(mosquitto.port, alarm_topic(alarm_id)) == []
        status, _ = await gw.client.api("POST", path, {"by": "guard-1", "note": "again"})
        assert status == 409


async def test_plain_ok_acks_the_only_open_alarm_and_is_ambiguous_with_two(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        ola, _, _ = await sos_notified(gw, p, twilio_double, "jaa-0042")
        per, per_code, _ = await sos_notified(gw, p, twilio_double, "jaa-0043")
        assert await sms(gw, "guard-1", "OK") == guard_texts.ack_reply_error("nb", "ambiguous")
        await assert_untouched(gw, ola)
        await assert_untouched(gw, per)
        assert await sms(gw, "guard-1", f"Ok,{per_code}!") == guard_texts.ack_confirmation(
            "nb", per_code, "sos", "Per Student"
        )
        assert (await get_alarm(gw, per))["state"] == "acknowledged"
        await assert_untouched(gw, ola)
        reply = await sms(gw, "guard-1", "OK")
        assert reply is not None and reply.startswith("Kvittert")
        assert (await get_alarm(gw, ola))["state"] == "acknowledged"
        assert await sms(gw, "guard-1", "ok") == guard_texts.ack_reply_error("nb", "no_open_alarm")
        assert await sms(gw, "guard-1", "on my way") == guard_texts.ack_reply_error(
            "nb", "not_understood"
        )


async def test_ack_by_voice_and_voicemail_never_acks(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        await start_session(p)
        alarm_id, _, _ = await sos_notified(gw, p, twilio_double)
        call = to(twilio_double, "guard-1", "call")[0]
        path = f"/twilio/voice/{alarm_id}"
        assert f"https://jaa.example.test{path}" in (call.twiml or "")
        g1 = PHONES["guard-1"]
        # an answering machine "pressing" 1 (or its beep decoded as a digit) acknowledges nothing
        for machine in ("machine_start", "machine_end_beep"):
            status, twiml = await gw.client.webhook(path, voice_params(g1, "1", AnsweredBy=machine))
            assert status == 200 and "Gather" not in twiml
        await assert_untouched(gw, alarm_id)
        # no digit: the message again, inside a Gather
        status, twiml = await gw.client.webhook(path, voice_params(g1, None))
        assert status == 200 and "<Gather" in twiml
        assert any("Ola Nordmann" in s for s in said(twiml))
        status, twiml = await gw.client.webhook(path, voice_params(g1, "7"))
        assert status == 200 and "<Gather" in twiml
        await assert_untouched(gw, alarm_id)
        status, twiml = await gw.client.webhook(path, voice_params(g1, "1", AnsweredBy="human"))
        assert status == 200
        assert said(twiml) == [guard_texts.ack_voice_confirmation("nb")]
        ack = await wait_cmd(p, "jaa-0042", "alarm_acknowledged")
        assert ack["by"] == "guard-1"
        a = await get_alarm(gw, alarm_id)
        assert (a["state"], a["acknowledged_by"]) == ("acknowledged", "guard-1")
        assert [e["data"]["via"] for e in timeline(a, "alarm_acknowledged")] == ["voice"]


async def test_ack_by_api_and_resolve_rules(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        alarm_id, _, t0 = await sos_notified(gw, p, twilio_double)
        base = f"/api/alarms/{alarm_id}"
        status, err = await gw.client.api("POST", base + "/resolve", {"by": "x", "note": "n"})
        assert status == 409 and err["error"] == "not_acknowledged"
        status, _ = await gw.client.api("POST", base + "/ack", {"by": "kari"}, token="wrong")
        assert status == 401
        status, _ = await gw.client.api("POST", base + "/ack", {})
        assert status == 400
        status, _ = await gw.client.api("POST", "/api/alarms/alm-nope/ack", {"by": "kari"})
        assert status == 404
        await assert_untouched(gw, alarm_id)
        status, body = await gw.client.api("POST", base + "/ack", {"by": "kari"})
        assert (
            status == 200 and body["state"] == "acknowledged" and body["acknowledged_by"] == "kari"
        )
        t_ack = time.monotonic()
        assert (await wait_cmd(p, "jaa-0042", "alarm_acknowledged"))["by"] == "kari"
        status, err = await gw.client.api("POST", base + "/ack", {"by": "guard-1"})
        assert status == 409 and err["error"] == "already_acknowledged"
        await asyncio.sleep(max(0.0, t0 + 2.6 - time.monotonic()))
        assert all(r.at <= t_ack for r in twilio_double.attempts)
        a = await get_alarm(gw, alarm_id)
        assert [e["data"]["via"] for e in timeline(a, "alarm_acknowledged")] == ["api:facility"]
        assert all(n["state"] in ("sent", "cancelled") for n in a["notifications"])
        status, body = await gw.client.api("POST", base + "/resolve", {"by": "kari", "note": "ok"})
        assert status == 200 and body["state"] == "resolved"


# --------------------------------------------------------------------------- refusals


async def test_forged_signature_is_403_and_changes_nothing(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        alarm_id, code, _ = await sos_notified(gw, p, twilio_double)
        params = sms_params(PHONES["guard-1"], f"OK {code}")
        for sig in ("", "forged", "a" * 28 + "="):
            status, _ = await gw.client.webhook("/twilio/sms", params, signature=sig)
            assert status == 403
        # signed for other parameters, or for another URL
        other = sign_webhook(
            twilio_double.auth_token,
            "https://jaa.example.test/twilio/sms",
            params | {"Body": "OK 0000"},
        )
        status, _ = await gw.client.webhook("/twilio/sms", params, signature=other)
        assert status == 403
        wrong_url = sign_webhook(
            twilio_double.auth_token, "http://jaa.example.test/twilio/sms", params
        )
        status, _ = await gw.client.webhook("/twilio/sms", params, signature=wrong_url)
        assert status == 403
        status, _ = await gw.client.webhook(
            f"/twilio/voice/{alarm_id}", voice_params(PHONES["guard-1"], "1"), signature="forged"
        )
        assert status == 403
        await assert_untouched(gw, alarm_id)
        a = await get_alarm(gw, alarm_id)
        assert timeline(a, "sms_received") == [] and timeline(a, "voice_input") == []
        assert cmds_of(p, "alarm_acknowledged") == []


def cmds_of(p: MqttProbe, type_: str) -> list[dict[str, Any]]:
    return [
        s.json()
        for s in p.seen
        if s.topic == "jaa/device/jaa-0042/cmd" and s.payload and s.json().get("type") == type_
    ]


async def test_ack_from_someone_not_notified_is_refused(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        alarm_id, code, _ = await sos_notified(gw, p, twilio_double)
        # head-security is in the chain, but only at 4 s: not notified yet
        reply = await sms(gw, "head-security", f"OK {code}")
        assert reply == guard_texts.ack_reply_error("nb", "not_allowed")
        # a number the site does not know at all
        reply = await sms(gw, "+4799999999", f"OK {code}")
        assert reply == guard_texts.ack_reply_error("nb", "not_allowed")
        for callee in (PHONES["head-security"], "+4799999999"):
            status, twiml = await gw.client.webhook(
                f"/twilio/voice/{alarm_id}", voice_params(callee, "1")
            )
            assert status == 200 and said(twiml) != [guard_texts.ack_voice_confirmation("nb")]
        await assert_untouched(gw, alarm_id)
        a = await get_alarm(gw, alarm_id)
        refused = timeline(a, "ack_refused")
        assert refused and {e["actor"] for e in refused} == {"head-security"}


async def test_replayed_sms_webhook_acts_once(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        first, _, _ = await sos_notified(gw, p, twilio_double, "jaa-0042")
        sid = "SM" + "ab" * 16
        reply = await sms(gw, "guard-1", "OK", sid=sid)
        assert reply is not None and reply.startswith("Kvittert")
        assert (await get_alarm(gw, first))["state"] == "acknowledged"
        # a second alarm: guard-1 again has exactly one open alarm, so a replayed "OK" that
        # acted again would acknowledge it
        second, _, _ = await sos_notified(gw, p, twilio_double, "jaa-0043")
        assert await sms(gw, "guard-1", "OK", sid=sid) is None
        await assert_untouched(gw, second)
        a = await get_alarm(gw, first)
        assert len(timeline(a, "alarm_acknowledged")) == 1


async def test_unknown_code_is_explained_and_changes_nothing(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        alarm_id, code, _ = await sos_notified(gw, p, twilio_double)
        wrong = "9999" if code != "9999" else "9998"
        assert await sms(gw, "guard-1", f"OK {wrong}") == guard_texts.ack_reply_error(
            "nb", "unknown_code"
        )
        assert await sms(gw, "guard-1", f"OK {code}5") == guard_texts.ack_reply_error(
            "nb", "not_understood"
        )
        await assert_untouched(gw, alarm_id)


# --------------------------------------------------------------------------- the race


def _race_chain(step_after: float) -> Any:
    def patch(cfg: dict[str, Any]) -> None:
        cfg["escalation_chains"][0]["steps"] = [
            {"after": "0s", "notify": ["roster:desk"], "via": ["sms"]},
            {"after": f"{step_after}s", "notify": ["person:guard-2"], "via": ["sms"]},
        ]

    return patch


def _step_requests(twilio: TwilioDouble, code: str) -> list[Any]:
    return [
        r for r in twilio.attempts if r.to == PHONES["guard-2"] and f"OK {code}" in (r.body or "")
    ]


async def test_ack_right_after_the_step_is_stored_stops_its_notifications(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    """The worst case, made deterministic in-process: the step's outbox rows are committed and
    the ack runs next, before the sender has had a turn. Nothing of that step may be sent."""
    step_after = 0.3
    async with site(tmp_path, mosquitto, twilio_double, _race_chain(step_after)) as (gw, p, _):
        assert gw.app is not None
        engine, deadlines = gw.app.engine, gw.app.deadlines
        for _ in range(3):
            alarm_id, _ = await raise_sos(p, "jaa-0042")
            # this test fires the step itself, at the moment it chooses
            deadlines.discard(("alarm", alarm_id))

            async def step0_sent(aid: str = alarm_id) -> bool:
                a = await get_alarm(gw, aid)
                return bool(a["notifications"]) and all(
                    n["state"] == "sent" for n in a["notifications"]
                )

            await eventually(step0_sent)
            a = await get_alarm(gw, alarm_id)
            due = parse_rfc3339(a["escalation_started_at"]).timestamp() + step_after
            await asyncio.sleep(max(0.0, due + 0.02 - time.time()))
            await engine.on_deadline(("alarm", alarm_id), due)
            res = await engine.ack([alarm_id], by="guard-1", via="api:race", person_id=None)
            assert res.ok, res
            await asyncio.sleep(0.4)
            a = await get_alarm(gw, alarm_id)
            step1 = [n for n in a["notifications"] if n["k"] == 1]
            assert step1, "the step did not run: the test would prove nothing"
            assert [n["state"] for n in step1] == ["cancelled"], step1
            assert _step_requests(twilio_double, a["code"]) == []
            assert [e["data"]["k"] for e in timeline(a, "escalation_step")] == [0, 1]


async def test_no_step_starts_after_the_ack_even_when_due_in_the_same_instant(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble, db_url: str
) -> None:
    """Ack and step 1 at the same instant, many times, swept across the step's due time.

    Both are driven at once: the ack through the HTTP API and the step deadline in-process
    (`engine.on_deadline`, beside the gateway's own timer). Whatever order they run in, no
    step-1 SMS may reach Twilio after the ack is stored.
    """
    step_after = 0.3
    async with site(tmp_path, mosquitto, twilio_double, _race_chain(step_after), db_url=db_url) as (
        gw,
        p,
        _,
    ):
        assert gw.app is not None
        engine = gw.app.engine
        n = 10
        orders = {"ack_first": 0, "step_first": 0}
        for i in range(n):
            skew = -0.012 + 0.024 * i / (n - 1)
            alarm_id, _ = await raise_sos(p, "jaa-0042")
            a = await get_alarm(gw, alarm_id)
            started = parse_rfc3339(a["escalation_started_at"]).timestamp()
            due = started + step_after
            await asyncio.sleep(max(0.0, due + skew - time.time()))
            (status, body), _ = await asyncio.gather(
                gw.client.api("POST", f"/api/alarms/{alarm_id}/ack", {"by": "guard-1"}),
                engine.on_deadline(("alarm", alarm_id), due),
            )
            assert status == 200, body
            await asyncio.sleep(0.25)
            a = await get_alarm(gw, alarm_id)
            acked_at = parse_rfc3339(a["acknowledged_at"]).timestamp()
            step1 = [x for x in a["notifications"] if x["k"] == 1]
            assert all(x["state"] in ("sent", "cancelled") for x in step1), step1
            orders["step_first" if step1 else "ack_first"] += 1
            arrived = _step_requests(twilio_double, a["code"])
            # every request that reached Twilio was claimed (sent), never a cancelled row
            assert len(arrived) == len([x for x in step1 if x["state"] == "sent"]), (
                arrived,
                step1,
            )
            for r in arrived:
                late = r.wall - acked_at  # both epoch: the wall clock may be slewed
                # a row claimed before the ack may land a few ms after it; nothing later
                assert late < 0.2, f"step 1 reached Twilio {late:.3f} s after the ack"
        print(f"\nack/step race over {n} rounds: {orders}")
        assert sum(orders.values()) == n


# --------------------------------------------------------------------------- delivery status


async def test_status_callback_is_recorded_in_the_audit(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        alarm_id, _, _ = await sos_notified(gw, p, twilio_double)
        sent = to(twilio_double, "guard-1", "sms")[0]

        async def stored() -> bool:
            a = await get_alarm(gw, alarm_id)
            return any(n["sid"] == sent.sid for n in a["notifications"])

        await eventually(stored, timeout=3)  # Twilio's callback comes after its API answer
        assert sent.status_callback == "https://jaa.example.test/twilio/status"
        params = {"MessageSid": sent.sid or "", "MessageStatus": "delivered", "ErrorCode": ""}
        status, _ = await gw.client.webhook("/twilio/status", params, signature="forged")
        assert status == 403
        status, _ = await gw.client.webhook("/twilio/status", params)
        assert status == 204

        async def recorded() -> bool:
            a = await get_alarm(gw, alarm_id)
            rows = [n for n in a["notifications"] if n["sid"] == sent.sid]
            return rows[0]["delivery_status"] == "delivered"

        await eventually(recorded, timeout=3)
        a = await get_alarm(gw, alarm_id)
        statuses = timeline(a, "delivery_status")
        assert [(e["data"]["sid"], e["data"]["status"]) for e in statuses] == [
            (sent.sid, "delivered")
        ]


async def test_second_guards_ok_is_told_who_already_acknowledged(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        await start_session(p)
        alarm_id, code, _t0 = await sos_notified(gw, p, twilio_double)
        # step 1 (2 s) tells guard-2 too
        await twilio_double.wait_for(lambda d: len(to(d, "guard-2")) >= 1, timeout=4)
        assert await sms(gw, "guard-2", f"OK {code}") == guard_texts.ack_confirmation(
            "nb", code, "sos", "Ola Nordmann"
        )
        late = await sms(gw, "guard-1", f"OK {code}")
        assert late == guard_texts.already_acknowledged("nb", code, "Guro Vakt")
        a = await get_alarm(gw, alarm_id)
        assert (a["state"], a["acknowledged_by"]) == ("acknowledged", "guard-2")
        assert len(timeline(a, "alarm_acknowledged")) == 1
