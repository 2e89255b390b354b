"""Hostile input over HTTP against the real daemon: fuzzed Twilio webhooks (signed and not) and
API bodies, raw bodies in wrong encodings and sizes, replayed webhooks, and SMS replies that try
to acknowledge alarms their sender was never told about (CONTRACT §4, §5, §6, §7.3).

Same harness as tests/test_hostile_input.py: one daemon with a standing session (ola) and a
standing escalating sos alarm (per, notified to guard-1 by SMS only); after every input the
daemon must be healthy, sessions/alarms (and here assessments) unchanged, no answer a 5xx, and no
secret in any answer or log line.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from jaa_gateway.domain import guard_texts
from tests.support.broker import MosquittoBroker
from tests.support.gateway import PHONES, PUBLIC_URL, TOKEN
from tests.support.twilio_double import TwilioDouble, sign_webhook
from tests.test_hostile_input import (
    HOSTILE_SETTINGS,
    Hostile,
    get_alarm,
    hostile,
    hostile_site,
    publish_and_wait,
    secured_broker,
    uid,
)

__all__ = ["hostile", "secured_broker"]  # fixtures, used by name

GUARD = PHONES["guard-1"]  # the one person notified of the standing alarm
MAX_BODY = 64 * 1024

_text = st.text(st.characters(codec="utf-8"), max_size=40)
_texts = st.one_of(
    _text,
    st.text(st.characters(codec="utf-8"), min_size=1000, max_size=3000),
    st.sampled_from(("", " ", "\x00", "\u202e", "🚨" * 50, "%00", "+", "&", "=", "\r\n")),
)
phones = st.one_of(st.sampled_from(sorted(PHONES.values())), _text, st.just(GUARD + " "))
# "OK" replies, with {code} standing for the standing alarm's code (filled in by the test)
ack_like = st.sampled_from(
    (
        "OK {code}",
        "ok {code}",
        "OK",
        "OK {code} OK {code}",
        "OK {code} OK 0000",
        "OK 0000",
        "OK {code}5",
        "OK {code} " + "x" * 2000,
        "ＯＫ {code}",
        "OK ١٢٣٤",
        "\u202eOK {code}",
        "OK\x00{code}",
        "KO {code}",
        "OK {code}\n" * 40,
    )
)
bodies = st.one_of(_texts, ack_like)


def _ack_like(body: str) -> bool:
    """Bodies the contract would let guard-1 acknowledge with (CONTRACT §4): skip those."""
    return re.fullmatch(r"\s*ok\W*([0-9]{4})?\W*", body, re.IGNORECASE | re.ASCII) is not None


async def standing_alarm(h: Hostile) -> dict[str, Any]:
    assert h.baseline is not None
    (alarm,) = h.baseline[0]
    return await get_alarm(h, alarm["id"])


async def post(
    h: Hostile,
    path: str,
    data: bytes | dict[str, str] | None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    headers = dict(headers or {})
    if isinstance(data, dict):
        # encoded here: aiohttp refuses (client side) field names with control characters
        data = urlencode(data).encode()
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    async with h.gw.client.session.post(h.gw.client.base + path, data=data, headers=headers) as r:
        text = await r.text(errors="replace")
    h.check_text(text, f"the answer to POST {path}")
    return r.status, text


async def webhook(
    h: Hostile, path: str, params: dict[str, str], signed: bool | str
) -> tuple[int, str]:
    if signed is True:
        sig = sign_webhook(h.twilio.auth_token, PUBLIC_URL + path, params)
    else:
        sig = signed or ""
    status, text = await post(h, path, params, {"X-Twilio-Signature": sig} if sig else None)
    if signed is not True:
        # refused: 403, or 404 for a voice path the router does not take at all
        assert status == 403 or (status == 404 and path.startswith("/twilio/voice/")), (
            path,
            params,
            status,
            text,
        )
    return status, text


def _is_twiml(text: str) -> bool:
    try:
        return ET.fromstring(text).tag == "Response"
    except ET.ParseError:
        return False


signatures = st.one_of(
    st.just(True),
    st.just(True),
    st.just(False),
    st.sampled_from(("forged", "=", "a" * 28 + "=", "\u00e9")),
)


# --------------------------------------------------------------------------- fuzzed webhooks


@HOSTILE_SETTINGS
@given(
    sender=phones,
    body=bodies,
    extra=st.dictionaries(_text, _texts, max_size=5),
    sid=st.one_of(st.none(), _text),
    signed=signatures,
)
@example(sender=PHONES["ola"], body="OK {code}", extra={}, sid=None, signed=True)
@example(sender=PHONES["kari"], body="OK", extra={}, sid=None, signed=True)
@example(sender=GUARD, body="OK {code} OK {code}", extra={}, sid=None, signed=True)
@example(sender=GUARD, body="OK {code}", extra={}, sid=None, signed=False)
async def test_fuzzed_sms_webhooks_ack_nothing(
    hostile: Hostile,
    sender: str,
    body: str,
    extra: dict[str, str],
    sid: str | None,
    signed: bool | str,
) -> None:
    h = hostile
    code = (await standing_alarm(h))["code"]
    body = body.replace("{code}", code)
    if sender == GUARD and signed is True and _ack_like(body):
        return  # a real acknowledgement by the notified guard
    params = {**extra, "From": sender, "Body": body, "To": "+4722334455"}
    if sid is not None:
        params["MessageSid"] = sid
    status, text = await webhook(h, "/twilio/sms", params, signed)
    if signed is True:
        assert status == 200 and _is_twiml(text), (params, status, text)
    await h.assert_unharmed(f"SMS webhook {params!r}")


voice_ids = st.one_of(
    st.just("{alarm}"),
    st.from_regex(r"alm-[0-9a-f]{16}", fullmatch=True),
    st.text(
        st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/?#%\\"),
        min_size=1,
        max_size=30,
    ),
)


@HOSTILE_SETTINGS
@given(
    alarm_id=voice_ids,
    also=st.lists(voice_ids, max_size=3),
    callee=phones,
    digits=st.one_of(st.none(), st.sampled_from(("1", "2", "11", "", "#", "1#", "١")), _text),
    answered_by=st.sampled_from(("", "human", "machine_start", "fax", "unknown")),
    signed=signatures,
)
@example(alarm_id="{alarm}", also=[], callee=PHONES["ola"], digits="1", answered_by="", signed=True)
@example(
    alarm_id="{alarm}",
    also=[],
    callee=GUARD,
    digits="1",
    answered_by="machine_end_beep",
    signed=True,
)
@example(alarm_id="{alarm}", also=[], callee=GUARD, digits="1", answered_by="", signed="forged")
async def test_fuzzed_voice_webhooks_ack_nothing(
    hostile: Hostile,
    alarm_id: str,
    also: list[str],
    callee: str,
    digits: str | None,
    answered_by: str,
    signed: bool | str,
) -> None:
    h = hostile
    real = (await standing_alarm(h))["id"]
    ids = [i.replace("{alarm}", real) for i in (alarm_id, *also)]
    human = not (answered_by.startswith("machine") or answered_by == "fax")
    if callee == GUARD and digits == "1" and real in ids and human and signed is True:
        return  # a real acknowledgement by the notified guard
    path = f"/twilio/voice/{ids[0]}"
    if ids[1:]:
        path += "?also=" + ",".join(ids[1:])
    params = {"CallSid": uid("CA"), "To": callee, "From": "+4722334455", "AnsweredBy": answered_by}
    if digits is not None:
        params["Digits"] = digits
    status, text = await webhook(h, path, params, signed)
    if signed is True:
        # a path the client had to percent-encode is signed over its decoded form: a 403 is a
        # refusal too; what matters is that nothing broke and nothing was acknowledged
        assert (status == 200 and _is_twiml(text)) or (status in (403, 404)), (path, status, text)
    await h.assert_unharmed(f"voice webhook {path} {params!r}")


@HOSTILE_SETTINGS
@given(
    fields=st.dictionaries(
        st.sampled_from(
            (
                "MessageSid",
                "CallSid",
                "MessageStatus",
                "CallStatus",
                "ErrorCode",
                "AnsweredBy",
                "SmsSid",
            )
        ),
        _texts,
    ),
    extra=st.dictionaries(_text, _text, max_size=3),
    signed=signatures,
)
async def test_fuzzed_status_webhooks_change_no_notification(
    hostile: Hostile, fields: dict[str, str], extra: dict[str, str], signed: bool | str
) -> None:
    h = hostile
    before = (await standing_alarm(h))["notifications"]
    params = {**extra, **fields}
    status, text = await webhook(h, "/twilio/status", params, signed)
    if signed is True:
        assert status in (204, 400), (params, status, text)
    await h.assert_unharmed(f"status webhook {params!r}")
    assert (await standing_alarm(h))["notifications"] == before


# --------------------------------------------------------------------------- fuzzed API bodies

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**1000)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=15,
)
VALID_ASSESSMENT: dict[str, Any] = {
    "id": "RA-NEW",
    "person": "nils",
    "locations": ["w-1"],
    "activity": "Welding",
    "acute_injury_risk": True,
    "lone_work_allowed": True,
    "checkin_interval": "30m",
    "max_duration": "4h",
    "allowed_hours": {"start": "07:00", "end": "23:00"},
    "valid_from": "2020-01-01",
    "valid_until": "2099-12-31",
    "approved_by": "kari",
}
WRONG_ASSESSMENT_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=10**300, max_value=10**1000),
    st.integers(max_value=-1),
    st.floats(allow_nan=False, allow_infinity=False, max_value=-0.001),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(_text, st.integers(), max_size=2),
    st.sampled_from(("", "\x00", "9999-99-99", "25:61", "-1s", "1e999", "10000000000h", "ghost")),
)


@st.composite
def wrong_assessments(draw: st.DrawFn) -> dict[str, Any]:
    body = dict(VALID_ASSESSMENT)
    key = draw(st.sampled_from(sorted(body)))
    wrong = WRONG_ASSESSMENT_VALUES
    if key in ("acute_injury_risk", "lone_work_allowed"):
        wrong = wrong.filter(lambda v: not isinstance(v, bool))
    elif key in ("id", "activity"):  # any short text is a fine activity, "ghost" a fine id
        wrong = wrong.filter(lambda v: not isinstance(v, str) or v in ("", "\x00"))
    current = body[key]
    body[key] = draw(wrong.filter(lambda v: v != current))
    if key == "requires_jaa" or (key == "checkin_interval" and body[key] is None):
        body[key] = "\x00"  # optional or forced fields: null would be valid
    if key == "allowed_hours" and body[key] is None:
        body[key] = {"start": "07:00"}
    return body


endpoints = st.sampled_from(("assessments", "ack", "resolve"))


@HOSTILE_SETTINGS
@given(
    endpoint=endpoints,
    target=st.sampled_from(("{alarm}", "alm-0000000000000000", "x" * 300, "%C3%A6", "ø")),
    body=st.one_of(json_values, wrong_assessments()),
)
@example(endpoint="assessments", target="", body=VALID_ASSESSMENT | {"max_duration": 10**400})
@example(endpoint="assessments", target="", body=VALID_ASSESSMENT | {"checkin_interval": 1e308})
@example(endpoint="ack", target="{alarm}", body={"by": 10**400})
@example(endpoint="resolve", target="{alarm}", body={"by": "guard-1", "note": "ok"})
async def test_fuzzed_api_bodies_change_nothing(
    hostile: Hostile, endpoint: str, target: str, body: Any
) -> None:
    h = hostile
    real = (await standing_alarm(h))["id"]
    target = target.replace("{alarm}", real)
    if endpoint == "ack" and target == real and _valid_ack(body):
        return  # an API token holder may acknowledge (CONTRACT §4)
    _, assessments_before = await h.api("GET", "/api/assessments")
    path = "/api/assessments" if endpoint == "assessments" else f"/api/alarms/{target}/{endpoint}"
    status, answer = await h.api("POST", path, body)
    assert status in (400, 404, 409), (path, body, status, answer)
    assert isinstance(answer, dict) and isinstance(answer.get("error"), str), answer
    await h.assert_unharmed(f"POST {path} {body!r:.300}")
    _, assessments = await h.api("GET", "/api/assessments")
    assert assessments == assessments_before


def _valid_ack(body: Any) -> bool:
    by = body.get("by") if isinstance(body, dict) else None
    return isinstance(by, str) and 0 < len(by.strip()) and len(by) <= 100


# --------------------------------------------------------------------------- raw bodies

RAW_CASES: list[tuple[str, str, bytes, set[int]]] = [
    # (path, content type, body, allowed statuses)
    ("/twilio/sms", "application/x-www-form-urlencoded", b"From=%2B4791234569&Body=OK\xff", {400}),
    (
        "/twilio/sms",
        "application/x-www-form-urlencoded; charset=latin-1",
        "From=+4791234569&Body=OK æøå".encode("latin-1"),
        {400},
    ),
    ("/twilio/sms", "application/x-www-form-urlencoded", b"Body=" + b"A" * (MAX_BODY + 10), {400}),
    ("/twilio/sms", "application/json", b'{"From": "+4791234569", "Body": "OK"}', {403}),
    (
        "/twilio/sms",
        "multipart/form-data; boundary=x",
        b'--x\r\nContent-Disposition: form-data; name="Body"\r\n\r\nOK\r\n--x--\r\n',
        {403},
    ),
    ("/twilio/status", "application/x-www-form-urlencoded", b"\x00" * 100, {403}),
    ("/twilio/voice/alm-x", "application/x-www-form-urlencoded", b"%ZZ=%" * 1000, {403}),
    ("/api/assessments", "application/json", b"[" * 50_000 + b"]" * 50, {400}),
    ("/api/assessments", "application/json", b'{"id": NaN}', {400}),
    ("/api/assessments", "application/json", b"\xfe\xff\x00{", {400}),
    ("/api/assessments", "application/json", b'{"a": "' + b"x" * (MAX_BODY + 1) + b'"}', {400}),
    ("/api/assessments", "text/plain", b"id=RA-9", {400}),
    ("/api/alarms/{alarm}/ack", "application/json", b'{"by": "\\ud800"}', {200, 400}),
    ("/api/alarms/{alarm}/resolve", "application/json", b"", {400}),
    ("/api/alarms/{alarm}/ack", "application/json", b'"guard-1"', {400}),
]


async def test_raw_bodies_in_wrong_encodings_and_sizes(hostile: Hostile) -> None:
    h = hostile
    real = (await standing_alarm(h))["id"]
    for path, ctype, body, allowed in RAW_CASES:
        path = path.replace("{alarm}", real)
        headers = {"Content-Type": ctype, "Authorization": f"Bearer {TOKEN}"}
        if path.startswith("/twilio/"):
            # a signature over the empty form: whatever the body, it is not what was signed
            headers["X-Twilio-Signature"] = sign_webhook(h.twilio.auth_token, PUBLIC_URL + path, {})
        try:
            status, text = await post(h, path, body, headers)
        except aiohttp.ClientError as exc:  # the server may cut a body it refuses short
            status, text = 400, repr(exc)
        if status == 200:
            # '\ud800' as a JSON escape is valid JSON; acknowledging as that 'name' is refused
            # or stored, never a crash — but it must not be an acknowledgement by a person
            pytest.fail(f"{path}: {body[:80]!r} was accepted: {text[:300]}")
        assert status in allowed, (path, body[:80], status, text[:300])
        await h.assert_unharmed(f"raw {path} {body[:80]!r}")


# --------------------------------------------------------------------------- replays


async def test_replayed_voice_and_status_webhooks_act_once(hostile: Hostile) -> None:
    h = hostile
    alarm = await standing_alarm(h)
    (sms,) = [n for n in alarm["notifications"] if n["sid"]]
    # delivery status: 'sent' then 'delivered'; a replay of the earlier 'sent' (same signature)
    # must neither move the status back nor be audited again
    sent = {"MessageSid": sms["sid"], "MessageStatus": "sent"}
    delivered = {"MessageSid": sms["sid"], "MessageStatus": "delivered"}
    for params in (sent, delivered, sent, delivered, sent):
        assert (await webhook(h, "/twilio/status", params, True))[0] == 204
    alarm = await standing_alarm(h)
    (note,) = [n for n in alarm["notifications"] if n["sid"] == sms["sid"]]
    assert note["delivery_status"] == "delivered"
    _, audit = await h.api("GET", "/api/audit")
    statuses = [
        e["data"].get("status")
        for e in audit["events"]
        if e["event"] == "delivery_status" and e["data"].get("sid") == sms["sid"]
    ]
    assert statuses == ["sent", "delivered"], statuses

    # the guard presses 1: acknowledged once; the same webhook again changes nothing
    path = f"/twilio/voice/{alarm['id']}"
    press = {"CallSid": uid("CA"), "To": GUARD, "From": "+4722334455", "Digits": "1"}
    for _ in range(2):
        status, text = await webhook(h, path, press, True)
        assert status == 200 and _is_twiml(text), text
    acked = await get_alarm(h, alarm["id"])
    assert acked["state"] == "acknowledged"
    assert len([e for e in acked["timeline"] if e["event"] == "alarm_acknowledged"]) == 1
    h.check_logs()


# --------------------------------------------------------------------------- acks by SMS


async def test_sms_replies_cannot_ack_alarms_their_sender_was_not_told_about(
    tmp_path: Path,
    secured_broker: tuple[MosquittoBroker, str],
    twilio_double: TwilioDouble,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two alarms, each notified to a different guard: each guard's "OK <code>" of the other's
    alarm, a worker's "OK" of his own alarm, two codes in one reply and very long replies are
    all refused; only the notified guard's own plain reply acknowledges, and only his alarm."""

    def patch(cfg: dict[str, Any]) -> None:
        cfg["escalation_chains"].append(
            {
                "id": "workshop",
                "repeat": 0,
                "repeat_after": "1s",
                "keep_paging": "0",
                "steps": [{"after": "0s", "notify": ["person:guard-2"], "via": ["sms"]}],
            }
        )
        cfg["locations"][1]["escalation"] = "workshop"
        cfg["assessments"][0]["locations"] = ["d1-123", "w-1"]

    async with hostile_site(
        tmp_path, secured_broker, twilio_double, caplog, patch, standing=False
    ) as h:
        await publish_and_wait(
            h, "jaa-0042", {"type": "session_start", "location": "w-1"}, "session_started"
        )
        a = (await publish_and_wait(h, "jaa-0042", {"type": "sos"}, "alarm_raised"))["alarm"]
        b = (await publish_and_wait(h, "jaa-0043", {"type": "sos"}, "alarm_raised"))["alarm"]
        await twilio_double.wait_for(
            lambda d: {r.to for r in d.sms} >= {PHONES["guard-1"], PHONES["guard-2"]}
        )
        code_a = (await get_alarm(h, a))["code"]  # ola's, told to guard-2
        code_b = (await get_alarm(h, b))["code"]  # per's, told to guard-1
        await h.settle()

        async def reply(who: str, body: str) -> str:
            params = {"From": PHONES[who], "Body": body, "MessageSid": uid("SM")}
            status, text = await webhook(h, "/twilio/sms", params, True)
            assert status == 200 and _is_twiml(text), text
            return "".join(m.text or "" for m in ET.fromstring(text).iter("Message"))

        not_allowed = guard_texts.ack_reply_error("nb", "not_allowed")
        not_understood = guard_texts.ack_reply_error("nb", "not_understood")
        assert await reply("guard-1", f"OK {code_a}") == not_allowed
        assert await reply("guard-2", f"OK {code_b}") == not_allowed
        assert await reply("ola", f"OK {code_a}") == not_allowed  # the worker himself
        assert await reply("per", "OK") == guard_texts.ack_reply_error("nb", "no_open_alarm")
        for body in (
            f"OK {code_b} OK {code_a}",
            f"OK {code_a},{code_b}",
            f"OK {code_b}" + " " * 50 + "!",
            f"OK {code_b} " + "please " * 300,
            "OK " + code_b * 2,
            f"OK {code_b}\nOK {code_a}",
        ):
            assert await reply("guard-1", body) == not_understood, body
        await h.assert_unharmed("SMS replies naming other alarms")

        # guard-1's plain OK acknowledges per's alarm (his only one), never ola's
        assert code_b in await reply("guard-1", "OK")
        assert (await get_alarm(h, b))["state"] == "acknowledged"
        other = await get_alarm(h, a)
        assert other["state"] == "escalating" and other["acknowledged_by"] is None
        h.check_logs()
