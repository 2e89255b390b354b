"""The guard console over HTTP, against the real daemon (mosquitto, the Twilio double): login,
wrong passwords, the throttle, CSRF, expiry, roles, 401 on the data, XSS, acting via console."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.broker import MosquittoBroker, MqttProbe
from tests.support.console import PASSWORD, ConsoleClient, with_console
from tests.support.gateway import InProcessGateway
from tests.support.twilio_double import TwilioDouble
from tests.test_e2e_alarms import (
    cmd_topic,
    get_alarm,
    raise_sos,
    site,
    start_session,
    timeline,
    wait_cmd,
)

DATA_ENDPOINTS = (
    ("GET", "/console/board"),
    ("GET", "/console/events"),
    ("GET", "/console/alarms/x/timeline"),
    ("POST", "/console/alarms/x/ack"),
    ("POST", "/console/alarms/x/resolve"),
)


@contextlib.asynccontextmanager
async def console_site(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    twilio: TwilioDouble,
    patch: Callable[[dict[str, Any]], None] | None = None,
) -> AsyncIterator[tuple[InProcessGateway, MqttProbe, ConsoleClient]]:
    def both(cfg: dict[str, Any]) -> None:
        with_console(cfg)
        if patch is not None:
            patch(cfg)

    async with site(tmp_path, mosquitto, twilio, both) as (gw, p, _cfg):
        c = ConsoleClient(gw.client.base)
        try:
            yield gw, p, c
        finally:
            await c.close()


async def test_login_sets_a_strict_httponly_secure_cookie_and_logout_ends_it(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with console_site(tmp_path, mosquitto, twilio_double) as (gw, _p, c):
        # nothing but the login form without a session: the page sends you there
        status, _, r = await c.request("GET", "/console")
        assert status == 303 and r.headers["Location"] == "/console/login"
        assert await c.login() == 303
        session_cookie = [h for h in c.set_cookie_headers if h.startswith("jaa_console=")]
        assert len(session_cookie) == 1
        flags = session_cookie[0].lower()
        # public_url is https in the test site: the cookie is Secure
        assert "httponly" in flags and "samesite=strict" in flags and "secure" in flags
        assert "path=/console" in flags
        status, page, r = await c.request("GET", "/console")
        assert status == 200 and "Geir Vakt" in page
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert (await c.request("GET", "/console/board"))[0] == 200
        # logout needs the CSRF token too
        status, _, _ = await c.request("POST", "/console/logout", {"csrf": "wrong"})
        assert status == 403
        assert (await c.request("GET", "/console/board"))[0] == 200
        status, _, r = await c.request("POST", "/console/logout", {"csrf": c.csrf or ""})
        assert status == 303 and r.headers["Location"] == "/console/login"
        assert "jaa_console" not in c.cookies
        # the old token is dead even when a copy of it is replayed
        replay = ConsoleClient(gw.client.base)
        replay.cookies["jaa_console"] = session_cookie[0].split(";")[0].split("=", 1)[1]
        try:
            assert (await replay.request("GET", "/console/board"))[0] == 401
        finally:
            await replay.close()


async def test_wrong_password_unknown_person_and_roles_are_refused_alike(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with console_site(tmp_path, mosquitto, twilio_double) as (_gw, _p, c):
        assert await c.login("guard-1", "not the password") == 401
        # kari is a supervisor without a console password; ola is a worker; nobody is unknown
        for who in ("kari", "ola", "nobody"):
            assert await c.login(who, PASSWORD) == 401
        assert "jaa_console" not in c.cookies
        status, body, _ = await c.request("GET", "/console/login")
        assert status == 200 and 'name="person"' in body and 'name="password"' in body
        # head-security (roles head + guard) may
        assert await c.login("head-security", PASSWORD) == 303


async def test_data_endpoints_answer_401_without_a_session(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with console_site(tmp_path, mosquitto, twilio_double) as (_gw, _p, c):
        for method, path in DATA_ENDPOINTS:
            status, body, _ = await c.request(method, path)
            assert status == 401, (method, path, body)
            assert json.loads(body)["error"] == "unauthorized"
        # a forged cookie is no session either
        c.cookies["jaa_console"] = "forged"
        for method, path in DATA_ENDPOINTS:
            assert (await c.request(method, path))[0] == 401, path
        # the login form and its static files are public
        assert (await c.request("GET", "/console/static/console.css"))[0] == 200
        assert (await c.request("GET", "/console/static/console.js"))[0] == 200


async def test_login_is_throttled_per_person_and_per_address(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with console_site(tmp_path, mosquitto, twilio_double) as (gw, _p, c):
        for _ in range(5):
            assert await c.login("guard-1", "wrong password!") == 401
        # the sixth try is refused before the password is looked at: even the right one
        assert await c.login("guard-1", PASSWORD) == 429
        status, body, r = await c.request("GET", "/console/login")
        form = {"csrf": c.cookies["jaa_console_login"], "person": "guard-1", "password": "x"}
        status, body, r = await c.request("POST", "/console/login", form)
        assert status == 429 and int(r.headers["Retry-After"]) > 60
        assert "For mange mislykkede" in body
        # another person from the same address still may (5 < 20 failures from it) ...
        assert await c.login("head-security", PASSWORD) == 303
        # ... until the address itself has failed too often: then nobody from it may
        app = gw.app
        assert app is not None
        for i in range(15):
            assert await c.login(f"nobody-{i}", "wrong password!") == 401
        assert await c.login("head-security", PASSWORD) == 429


async def test_csrf_login_without_the_form_token_and_cross_site_posts_are_refused(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with console_site(tmp_path, mosquitto, twilio_double) as (gw, p, c):
        status, _, _ = await c.request(
            "POST", "/console/login", {"person": "guard-1", "password": PASSWORD}
        )
        assert status == 403 and "jaa_console" not in c.cookies
        assert await c.login() == 303
        await start_session(p)
        alarm_id, _ = await raise_sos(p)
        # no token, a wrong token, and the right token from another site: all refused
        assert (await c.act(alarm_id, "ack", csrf=""))[0] == 403
        assert (await c.act(alarm_id, "ack", csrf="x" * 43))[0] == 403
        c.origin = "https://evil.example.org"
        assert (await c.act(alarm_id, "ack"))[0] == 403
        c.origin = None
        status, _, _ = await c.request(
            "POST",
            f"/console/alarms/{alarm_id}/ack",
            {"csrf": c.csrf or ""},
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert status == 403
        assert (await get_alarm(gw, alarm_id))["state"] == "escalating"
        # same origin with the token: done
        c.origin = gw.client.base
        assert (await c.act(alarm_id, "ack"))[0] == 200


async def test_a_session_expires(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with console_site(tmp_path, mosquitto, twilio_double) as (gw, _p, c):
        assert gw.app is not None
        gw.app.console.sessions.lifetime_s = 1.0
        assert await c.login() == 303
        assert (await c.request("GET", "/console/board"))[0] == 200
        await asyncio.sleep(1.2)
        assert (await c.request("GET", "/console/board"))[0] == 401
        status, _, r = await c.request("GET", "/console")
        assert status == 303 and r.headers["Location"] == "/console/login"


async def test_ack_and_resolve_via_console_are_audited_with_the_person(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with console_site(tmp_path, mosquitto, twilio_double) as (gw, p, c):
        assert await c.login("head-security") == 303
        await start_session(p)
        alarm_id, _ = await raise_sos(p)
        status, body, _ = await c.request("GET", "/console/board")
        assert f'data-alarm-id="{alarm_id}"' in body
        # resolving before the ack is refused and changes nothing
        status, answer = await c.act(alarm_id, "resolve", note="too early")
        assert status == 409 and json.loads(answer)["ok"] is False
        since = len(p.seen)
        status, answer = await c.act(alarm_id, "ack")
        assert status == 200, answer
        acked = await wait_cmd(p, "jaa-0042", "alarm_acknowledged", since=since)
        assert acked["by"] == "head-security"
        # a note is required
        assert (await c.act(alarm_id, "resolve", note="   "))[0] == 400
        assert (await c.act(alarm_id, "resolve"))[0] == 400
        status, answer = await c.act(alarm_id, "resolve", note="Ola was fine; lab checked")
        assert status == 200, answer
        a = await get_alarm(gw, alarm_id)
        assert a["state"] == "resolved" and a["note"] == "Ola was fine; lab checked"
        ack = timeline(a, "alarm_acknowledged")
        assert len(ack) == 1
        assert ack[0]["actor"] == "head-security" and ack[0]["data"]["via"] == "console"
        res = timeline(a, "alarm_resolved")
        assert res[0]["actor"] == "head-security" and res[0]["data"]["via"] == "console"
        # the resolved alarm has left the board; its timeline is still there to read
        status, body, _ = await c.request("GET", "/console/board")
        assert f'data-alarm-id="{alarm_id}"' not in body
        status, tl, _ = await c.request("GET", f"/console/alarms/{alarm_id}/timeline")
        assert status == 200 and "Kvittert" in tl and "Ola was fine" in tl
        assert (await c.act("no-such-alarm", "ack"))[0] == 404


def _hostile(cfg: dict[str, Any]) -> None:
    for p in cfg["people"]:
        if p["id"] == "ola":
            p["name"] = "<script>window.pwned=1</script>Ola"
    cfg["locations"][0]["name"] = '<img src=x onerror="window.pwned=2">Lab'


async def test_names_with_markup_are_shown_as_text(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with console_site(tmp_path, mosquitto, twilio_double, _hostile) as (_gw, p, c):
        assert await c.login() == 303
        started = await start_session(p)
        alarm_id, _ = await raise_sos(p, lat=63.41, lon=10.40)
        # a denial names the location too (nils has no assessment there)
        await p.publish(
            "jaa/device/jaa-0044/event",
            {"id": "deny-1", "type": "session_start", "location": "d1-123"},
        )
        await wait_cmd(p, "jaa-0044", "session_denied")
        status, body, _ = await c.request("GET", "/console")
        assert status == 200
        for html in (body, (await c.request("GET", "/console/board"))[1]):
            assert "<script>window.pwned" not in html and "<img src=x" not in html
            assert "&lt;script&gt;window.pwned=1&lt;/script&gt;Ola" in html
            assert "&lt;img src=x onerror=" in html
        assert f'data-session-id="{started["session"]}"' in body
        assert f'data-alarm-id="{alarm_id}"' in body
        assert "https://maps.google.com/?q=63.41000,10.40000" in body
        assert "ingen risikovurdering for arbeidet" in body  # the reason, in words


async def test_console_login_and_logout_are_not_sent_to_the_leader_check(
    tmp_path: Path,
) -> None:
    """On a standby the leader middleware refuses writes; a console login is this node's own."""
    from aiohttp import web

    from jaa_gateway.adapters.leader_http import leader_middleware

    class Standby:
        node = "b"
        leader = "a"

        def may_act(self) -> bool:
            return False

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[leader_middleware(Standby())])
    for path in ("/console/login", "/console/logout", "/console/alarms/x/ack"):
        app.router.add_post(path, ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site_ = web.TCPSite(runner, "127.0.0.1", 0)
    await site_.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as s:
            for path, want in (
                ("/console/login", 200),
                ("/console/logout", 200),
                ("/console/alarms/x/ack", 503),
            ):
                async with s.post(f"http://127.0.0.1:{port}{path}") as r:
                    assert r.status == want, path
                    if want == 503:
                        assert (await r.json())["error"] == "not_leader"
    finally:
        await runner.cleanup()


def test_cmd_topic_helper_is_the_contract_topic() -> None:
    assert cmd_topic("jaa-0042") == "jaa/device/jaa-0042/cmd"
