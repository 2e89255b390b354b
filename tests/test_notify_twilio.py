"""TwilioNotifier against the local Twilio double, and the console notifier."""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import socket
import statistics
import time
import warnings
from collections.abc import AsyncIterator

import pytest
import structlog
from twilio.request_validator import RequestValidator

from jaa_gateway.notify import ConsoleNotifier, TransportError, make_notifier, start_notifier
from jaa_gateway.notify.twilio import TwilioNotifier
from jaa_gateway.notify.twiml import call_twiml
from tests.support.cfg import config_dict, make_config
from tests.support.twilio_double import TwilioDouble, sign_webhook

TO = "+4791234567"
CALLBACK = "https://jaa.example.org/twilio/status"


@pytest.fixture
async def notifier(twilio_double: TwilioDouble) -> AsyncIterator[TwilioNotifier]:
    n = TwilioNotifier(twilio_double.section(request_timeout=1))
    try:
        yield n
    finally:
        await n.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- happy paths


async def test_sms_reaches_twilio_with_form_fields_and_basic_auth(
    twilio_double: TwilioDouble, notifier: TwilioNotifier
) -> None:
    result = await notifier.send_sms(
        TO, "SOS: Ola Nordmann, D1-123. Svar OK 1234", status_callback=CALLBACK
    )

    (rec,) = twilio_double.attempts
    assert rec.kind == "sms"
    assert rec.authorization_ok
    assert rec.form["To"] == TO
    assert rec.form["From"] == "+4722000000"
    assert rec.form["Body"] == "SOS: Ola Nordmann, D1-123. Svar OK 1234"
    assert rec.form["StatusCallback"] == CALLBACK
    assert rec.status_callback == CALLBACK
    assert result.sid == rec.sid
    assert result.sid.startswith("SM") and len(result.sid) == 34
    assert result.status == "queued"


async def test_call_reaches_twilio_with_twiml(
    twilio_double: TwilioDouble, notifier: TwilioNotifier
) -> None:
    twiml = call_twiml(
        ["Alarm for Ola.", "Press 1."], "en-GB", "https://jaa.example.org/twilio/voice/A1"
    )
    result = await notifier.place_call(TO, twiml, status_callback=CALLBACK)

    (rec,) = twilio_double.calls
    assert rec.form["Twiml"] == twiml
    assert rec.form["To"] == TO and rec.form["From"] == "+4722000000"
    assert rec.status_callback == CALLBACK
    assert "Body" not in rec.form
    assert result.sid == rec.sid and result.sid.startswith("CA")


async def test_no_status_callback_sends_no_field(
    twilio_double: TwilioDouble, notifier: TwilioNotifier
) -> None:
    await notifier.send_sms(TO, "hei")
    assert "StatusCallback" not in twilio_double.sms[0].form


async def test_api_base_is_honoured(twilio_double: TwilioDouble) -> None:
    # Two doubles with the same credentials: only the configured one may see the request.
    async with TwilioDouble(auth_token=twilio_double.auth_token) as other:
        n = TwilioNotifier(other.section())
        try:
            await n.send_sms(TO, "hei")
        finally:
            await n.aclose()
        assert len(other.sms) == 1
    assert twilio_double.attempts == []


async def test_wrong_auth_token_is_permanent(twilio_double: TwilioDouble) -> None:
    n = TwilioNotifier(twilio_double.section(auth_token="not-the-token"))
    try:
        with pytest.raises(TransportError) as info:
            await n.send_sms(TO, "hei")
    finally:
        await n.aclose()
    assert info.value.permanent
    assert (info.value.status, info.value.code) == (401, 20003)
    assert twilio_double.attempts[0].authorization_ok is False
    assert twilio_double.sms == []


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize(("status", "code"), [(500, None), (503, None), (429, 20429)])
async def test_server_errors_and_429_are_transient(
    twilio_double: TwilioDouble, notifier: TwilioNotifier, status: int, code: int | None
) -> None:
    twilio_double.fail_next(1, status=status, code=code)
    with pytest.raises(TransportError) as info:
        await notifier.send_sms(TO, "hei")
    assert info.value.permanent is False
    assert info.value.status == status
    assert info.value.code == (code if code is not None else 20000 + status)
    # The notifier itself never retries: one attempt, nothing accepted; the next one goes through.
    assert len(twilio_double.attempts) == 1 and twilio_double.sms == []
    await notifier.send_sms(TO, "hei")
    assert len(twilio_double.sms) == 1


async def test_invalid_number_is_permanent(
    twilio_double: TwilioDouble, notifier: TwilioNotifier
) -> None:
    twilio_double.fail_number(TO)
    with pytest.raises(TransportError) as info:
        await notifier.place_call(TO, call_twiml(["x"], "nb-NO", "https://h/a"))
    assert info.value.permanent
    assert (info.value.status, info.value.code) == (400, 21211)


async def test_unsubscribed_recipient_is_permanent(
    twilio_double: TwilioDouble, notifier: TwilioNotifier
) -> None:
    twilio_double.fail_number(TO, status=400, code=21614)
    with pytest.raises(TransportError) as info:
        await notifier.send_sms(TO, "hei")
    assert info.value.permanent and info.value.code == 21614


async def test_slow_answer_times_out_as_transient(twilio_double: TwilioDouble) -> None:
    twilio_double.set_delay(3.0)
    n = TwilioNotifier(twilio_double.section(request_timeout=0.5))
    started = time.monotonic()
    try:
        with pytest.raises(TransportError) as info:
            await n.send_sms(TO, "hei")
    finally:
        await n.aclose()
    elapsed = time.monotonic() - started
    assert info.value.permanent is False
    assert 0.45 <= elapsed < 1.2, elapsed
    # Twilio got it (a late answer is not a lost request): the outbox's retry may duplicate it.
    assert len(twilio_double.sms) == 1


async def test_hanging_server_times_out_as_transient(twilio_double: TwilioDouble) -> None:
    twilio_double.hang()
    n = TwilioNotifier(twilio_double.section(request_timeout=0.3))
    started = time.monotonic()
    try:
        with pytest.raises(TransportError) as info:
            await n.place_call(TO, call_twiml(["x"], "nb-NO", "https://h/a"))
    finally:
        await n.aclose()
    assert info.value.permanent is False
    assert 0.25 <= time.monotonic() - started < 1.0


async def test_timeout_then_recovery_on_the_same_notifier(twilio_double: TwilioDouble) -> None:
    n = TwilioNotifier(twilio_double.section(request_timeout=0.3))
    try:
        twilio_double.hang()
        with pytest.raises(TransportError):
            await n.send_sms(TO, "first")
        twilio_double.reset()
        result = await n.send_sms(TO, "second")
    finally:
        await n.aclose()
    assert [r.body for r in twilio_double.sms] == ["second"]
    assert result.sid == twilio_double.sms[0].sid


async def test_connection_refused_is_transient(twilio_double: TwilioDouble) -> None:
    section = twilio_double.section().model_copy(
        update={"api_base": f"http://127.0.0.1:{_free_port()}"}
    )
    n = TwilioNotifier(section)
    started = time.monotonic()
    try:
        with pytest.raises(TransportError) as info:
            await n.send_sms(TO, "hei")
    finally:
        await n.aclose()
    assert info.value.permanent is False
    assert info.value.status is None
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("to", "body"),
    [
        ("91234567", "hei"),
        ("+47 912 34 567", "hei"),
        ("+4791234567\n", "hei"),
        (TO, "  "),
        (TO, "x" * 1601),
    ],
)
async def test_bad_input_is_refused_before_sending(
    twilio_double: TwilioDouble, notifier: TwilioNotifier, to: str, body: str
) -> None:
    with pytest.raises(TransportError) as info:
        await notifier.send_sms(to, body)
    assert info.value.permanent
    assert twilio_double.attempts == []


async def test_oversized_twiml_is_refused_before_sending(
    twilio_double: TwilioDouble, notifier: TwilioNotifier
) -> None:
    with pytest.raises(TransportError) as info:
        await notifier.place_call(TO, "<Response>" + "<Say>x</Say>" * 400 + "</Response>")
    assert info.value.permanent
    assert twilio_double.attempts == []


async def test_closed_notifier_refuses_transiently(twilio_double: TwilioDouble) -> None:
    n = TwilioNotifier(twilio_double.section())
    await n.send_sms(TO, "hei")
    await n.aclose()
    with pytest.raises(TransportError) as info:
        await n.send_sms(TO, "hei")
    assert info.value.permanent is False
    assert len(twilio_double.attempts) == 1


async def test_aclose_closes_the_http_session(twilio_double: TwilioDouble) -> None:
    n = TwilioNotifier(twilio_double.section())
    await n.send_sms(TO, "hei")
    await n.aclose()
    del n
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert not [w for w in caught if "Unclosed" in str(w.message)]


def test_construction_needs_no_event_loop(twilio_double: TwilioDouble) -> None:
    # The config is built at start-up before the loop runs; the HTTP client is built later.
    TwilioNotifier(twilio_double.section())


def test_zero_request_timeout_is_refused(twilio_double: TwilioDouble) -> None:
    with pytest.raises(ValueError, match="request_timeout"):
        TwilioNotifier(twilio_double.section(request_timeout=0))


async def test_auth_token_never_logged(
    twilio_double: TwilioDouble, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    twilio_double.fail_next(1, status=500)
    n = TwilioNotifier(twilio_double.section())
    with structlog.testing.capture_logs() as events:
        try:
            with pytest.raises(TransportError) as info:
                await n.send_sms(TO, "hei")
            await n.send_sms(TO, "hei")
        finally:
            await n.aclose()
    token = twilio_double.auth_token
    basic = base64.b64encode(f"{twilio_double.account_sid}:{token}".encode()).decode()
    assert any(e["event"] == "twilio_request_failed" for e in events)
    for text in (repr(events), caplog.text, str(info.value), repr(info.value)):
        assert token not in text and basic not in text


# ---------------------------------------------------------------------------- latency


async def test_sequential_sends_reuse_one_connection(
    twilio_double: TwilioDouble, notifier: TwilioNotifier, capsys: pytest.CaptureFixture[str]
) -> None:
    await notifier.start()
    latencies = []
    for i in range(200):
        t0 = time.perf_counter()
        await notifier.send_sms(TO, f"melding {i}")
        latencies.append(time.perf_counter() - t0)

    peers = {r.peer for r in twilio_double.sms}
    assert len(twilio_double.sms) == 200
    assert len(peers) == 1, f"{len(peers)} connections for 200 sequential requests"
    median_ms = statistics.median(latencies) * 1000
    p95_ms = statistics.quantiles(latencies, n=20)[-1] * 1000
    with capsys.disabled():
        print(
            f"\n[twilio double] 200 sequential SMS over 1 connection: "
            f"median {median_ms:.2f} ms, p95 {p95_ms:.2f} ms, first {latencies[0] * 1000:.2f} ms"
        )
    # Nagle + delayed ACK would show up as ~40 ms per request; loopback is ~1 ms.
    assert median_ms < 25


async def test_concurrent_sends_all_arrive(
    twilio_double: TwilioDouble, notifier: TwilioNotifier
) -> None:
    results = await asyncio.gather(*(notifier.send_sms(TO, f"m{i}") for i in range(50)))
    assert len({r.sid for r in results}) == 50
    assert sorted(r.body or "" for r in twilio_double.sms) == sorted(f"m{i}" for i in range(50))


# ---------------------------------------------------------------------------- the double itself


async def test_double_wait_for_count_and_predicate(
    twilio_double: TwilioDouble, notifier: TwilioNotifier
) -> None:
    async def later() -> None:
        await asyncio.sleep(0.05)
        await notifier.send_sms(TO, "a")
        await notifier.place_call(TO, call_twiml(["x"], "nb-NO", "https://h/a"))

    task = asyncio.create_task(later())
    got = await twilio_double.wait_for(lambda d: len(d.calls) == 1, timeout=2)
    await task
    assert [r.kind for r in got] == ["sms", "call"]
    with pytest.raises(AssertionError, match="requests seen"):
        await twilio_double.wait_for(3, timeout=0.1)


def test_sign_webhook_matches_twilio_validator() -> None:
    url = "https://jaa.example.org/twilio/sms"
    params = {"From": TO, "Body": "OK 1234", "FromZip": ""}
    sig = sign_webhook("secret-token", url, params)
    validator = RequestValidator("secret-token")
    assert validator.validate(url, params, sig)
    assert not validator.validate(url, {**params, "Body": "OK 9999"}, sig)
    # The blank parameter is part of the signature: dropping it must break validation.
    assert not validator.validate(url, {"From": TO, "Body": "OK 1234"}, sig)


# ---------------------------------------------------------------------------- console notifier


async def test_console_notifier_prints_sms_and_spoken_call() -> None:
    lines: list[str] = []
    n = ConsoleNotifier(lines.append)
    r1 = await n.send_sms(TO, "SOS: Ola\nSvar OK 1234")
    r2 = await n.send_sms(TO, "second")
    twiml = call_twiml(["Alarm for Ola & Kari.", "Press 1."], "en-GB", "https://h/voice/A1")
    r3 = await n.place_call(TO, twiml)
    assert (r1.sid, r2.sid, r3.sid) == (
        "CONSOLE-SM-000001",
        "CONSOLE-SM-000002",
        "CONSOLE-CA-000001",
    )
    assert lines[0] == f"SMS  to {TO} [CONSOLE-SM-000001]: SOS: Ola"
    assert lines[1] == "     Svar OK 1234"
    # The call line is readable: the spoken text once, no XML, no repetition.
    assert lines[-1] == f"CALL to {TO} [CONSOLE-CA-000001]: «Alarm for Ola & Kari. Press 1.»"


async def test_console_notifier_rejects_bad_input() -> None:
    lines: list[str] = []
    n = ConsoleNotifier(lines.append)
    with pytest.raises(TransportError) as info:
        await n.place_call(TO, "<Response><Say>unclosed</Response>")
    assert info.value.permanent
    with pytest.raises(TransportError):
        await n.send_sms("12345", "hei")
    await n.aclose()
    with pytest.raises(TransportError) as closed:
        await n.send_sms(TO, "hei")
    assert closed.value.permanent is False
    assert lines == []


async def test_make_notifier_follows_the_driver(twilio_double: TwilioDouble) -> None:
    data = config_dict()
    assert isinstance(make_notifier(make_config(data)), ConsoleNotifier)
    data["notify"] = {"driver": "twilio"}
    data["twilio"] = {
        "account_sid": twilio_double.account_sid,
        "auth_token": twilio_double.auth_token,
        "from_number": "+4722000000",
        "api_base": twilio_double.api_base,
    }
    n = await start_notifier(make_config(data))
    try:
        assert isinstance(n, TwilioNotifier)
        await n.send_sms(TO, "hei")
    finally:
        await n.aclose()
    assert len(twilio_double.sms) == 1
    # config.py already refuses this; make_notifier must not rely on it.
    with pytest.raises(ValueError, match=r"\[twilio\]"):
        make_notifier(make_config(data).model_copy(update={"twilio": None}))
