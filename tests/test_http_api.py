"""The HTTP edge against the real daemon: health, metrics, auth, error shapes, assessments."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yarl
from prometheus_client.parser import text_string_to_metric_families

from tests.support.broker import MosquittoBroker, probe
from tests.support.gateway import TOKEN, InProcessGateway, running_gateway, site_config
from tests.support.twilio_double import TwilioDouble

API_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/api/sessions", None),
    ("GET", "/api/alarms", None),
    ("GET", "/api/alarms?state=open", None),
    ("GET", "/api/alarms/alm-0000", None),
    ("POST", "/api/alarms/alm-0000/ack", {"by": "guard-1"}),
    ("POST", "/api/alarms/alm-0000/resolve", {"by": "guard-1", "note": "ok"}),
    ("GET", "/api/assessments", None),
    ("POST", "/api/assessments", None),  # filled with a valid assessment below
    ("GET", "/api/audit", None),
    ("GET", "/api/audit?since=2020-01-01T00:00:00%2B01:00", None),
]

NEW_RA: dict[str, Any] = {
    "id": "RA-API-1",
    "person": "per",
    "locations": ["d1-123", "w-1"],
    "activity": "Grinding small parts",
    "acute_injury_risk": False,
    "lone_work_allowed": True,
    "requires_jaa": True,
    "checkin_interval": "20m",
    "max_duration": "2h",
    "allowed_hours": {"start": "07:00", "end": "22:00"},
    "valid_from": "2026-01-01",
    "valid_until": "2027-12-31",
    "approved_by": "kari",
}


@pytest.fixture
def cfg(tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble) -> dict[str, Any]:
    return site_config(tmp_path / "state.db", mosquitto.port, twilio_double)


async def raw(
    gw: InProcessGateway,
    method: str,
    path: str,
    *,
    data: bytes | str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with gw.client.session.request(
        method, gw.client.base + path, data=data, headers=headers or {}
    ) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except json.JSONDecodeError:
            return r.status, text


async def metrics_text(gw: InProcessGateway) -> tuple[str, str]:
    async with gw.client.session.get(gw.client.base + "/metrics") as r:
        assert r.status == 200
        return r.headers["Content-Type"], await r.text()


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def assert_error(body: Any, code: str | None = None) -> None:
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    if code is not None:
        assert body["error"] == code, body


async def wait_health(gw: InProcessGateway, want: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await raw(gw, "GET", "/healthz")
        if status == want:
            assert isinstance(body, dict)
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/healthz stayed {status} {body}, wanted {want}")
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------- health, metrics


async def test_healthz_reports_the_broker_going_away_and_coming_back(
    cfg: dict[str, Any], mosquitto: MosquittoBroker
) -> None:
    async with running_gateway(cfg) as gw:
        body = await wait_health(gw, 200, 2)
        assert body["status"] == "ok" and body["problems"] == []

        await asyncio.to_thread(mosquitto.stop)
        body = await wait_health(gw, 503, 5)
        assert body["status"] == "fail"
        assert any("mqtt" in p.lower() for p in body["problems"]), body
        # the database is still fine: only the broker is named
        assert not any("database" in p for p in body["problems"]), body

        await asyncio.to_thread(mosquitto.start)
        body = await wait_health(gw, 200, 15)
        assert body["problems"] == []


async def test_metrics_exposes_rejections_by_reason(
    cfg: dict[str, Any], mosquitto: MosquittoBroker
) -> None:
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:
        ctype, text = await metrics_text(gw)
        assert ctype.startswith("text/plain")
        assert "jaa_rejected_messages_total" in text
        assert sample(text, "jaa_rejected_messages_total", reason="bad_json") == 0
        assert sample(text, "jaa_sessions_active") == 0

        await p.publish("jaa/device/jaa-0042/event", b"{not json")
        await p.publish("jaa/device/jaa-0042/event", {"id": "h1", "type": "teleport"})
        deadline = time.monotonic() + 5
        while True:
            _, text = await metrics_text(gw)
            bad = sample(text, "jaa_rejected_messages_total", reason="bad_json")
            unknown = sample(text, "jaa_rejected_messages_total", reason="unknown_type")
            if (bad, unknown) == (1, 1) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert (bad, unknown) == (1, 1)


# ---------------------------------------------------------------------------- auth


async def test_every_api_route_needs_a_valid_bearer_token(cfg: dict[str, Any]) -> None:
    async with running_gateway(cfg) as gw:
        wrong_headers: list[dict[str, str]] = [
            {},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": f"Bearer {TOKEN[:-1]}"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
            {"Authorization": "Bearer "},
        ]
        for method, path, body in API_ROUTES:
            if path == "/api/assessments" and method == "POST":
                body = NEW_RA
            for headers in wrong_headers:
                data = json.dumps(body) if body is not None else None
                hdrs = {**headers, "Content-Type": "application/json"}
                status, answer = await raw(gw, method, path, data=data, headers=hdrs)
                assert status == 401, (method, path, headers, status, answer)
                assert_error(answer, "unauthorized")
        # nothing an unauthorised caller sent was stored
        status, listed = await gw.client.api("GET", "/api/assessments")
        assert status == 200 and [a["id"] for a in listed["assessments"]] == ["RA-1"]
        # and the right token works on the same routes
        for method, path, _ in API_ROUTES:
            if method == "GET" and "alm-" not in path:
                status, answer = await gw.client.api(method, path)
                assert status == 200, (path, answer)


async def test_unknown_alarm_ids_and_routes_are_404_with_the_error_shape(
    cfg: dict[str, Any],
) -> None:
    async with running_gateway(cfg) as gw:
        for method, path, body in [
            ("GET", "/api/alarms/alm-nope", None),
            ("POST", "/api/alarms/alm-nope/ack", {"by": "guard-1"}),
            ("POST", "/api/alarms/alm-nope/resolve", {"by": "guard-1", "note": "all fine"}),
            ("GET", "/api/nothing-here", None),
        ]:
            status, answer = await gw.client.api(method, path, body)
            assert status == 404, (path, answer)
            assert_error(answer)
            assert set(answer) == {"error", "detail"}, answer


# ---------------------------------------------------------------------------- assessments


async def test_post_assessment_valid_is_stored_listed_and_audited_with_the_token_name(
    cfg: dict[str, Any], mosquitto: MosquittoBroker
) -> None:
    t0 = dt.datetime.now(dt.UTC)
    async with running_gateway(cfg) as gw:
        status, body = await gw.client.api("POST", "/api/assessments", NEW_RA)
        assert status == 201, body
        assert body["id"] == NEW_RA["id"]
        status, listed = await gw.client.api("GET", "/api/assessments")
        by_id = {a["id"]: a for a in listed["assessments"]}
        assert set(by_id) == {"RA-1", "RA-API-1"}
        stored = by_id["RA-API-1"]
        assert stored["person"] == "per" and stored["locations"] == ["d1-123", "w-1"]
        assert stored["approved_by"] == "kari" and stored["lone_work_allowed"] is True

        changed = {**NEW_RA, "activity": "Grinding and drilling"}
        status, body = await gw.client.api("POST", "/api/assessments", changed)
        assert status == 200, body

        status, audit = await gw.client.api("GET", "/api/audit?since=" + quote(t0.isoformat()))
        assert status == 200
        trail = [e for e in audit["events"] if e["event"].startswith("assessment_")]
        assert [(e["event"], e["actor"]) for e in trail] == [
            ("assessment_created", "facility"),
            ("assessment_updated", "facility"),
        ]
        assert all(e["data"]["assessment"] == "RA-API-1" for e in trail)

    # it outlives a restart, with the change
    async with running_gateway(cfg) as gw:
        status, listed = await gw.client.api("GET", "/api/assessments")
        [stored] = [a for a in listed["assessments"] if a["id"] == "RA-API-1"]
        assert stored["activity"] == "Grinding and drilling"


def _without(key: str) -> dict[str, Any]:
    body = copy.deepcopy(NEW_RA)
    del body[key]
    return body


INVALID_JSON: list[tuple[str, dict[str, Any], str]] = [
    ("unknown location", {**NEW_RA, "locations": ["d1-123", "mars-1"]}, "mars-1"),
    ("unknown person", {**NEW_RA, "person": "nobody"}, "nobody"),
    ("approver may not approve", {**NEW_RA, "approved_by": "ola"}, "approved_by"),
    ("approver unknown", {**NEW_RA, "approved_by": "zed"}, "approved_by"),
    ("bad duration", {**NEW_RA, "max_duration": "4 hours"}, "max_duration"),
    ("negative duration", {**NEW_RA, "checkin_interval": "-5m"}, "checkin_interval"),
    ("missing field", _without("activity"), "activity"),
    ("missing id", _without("id"), "id"),
    ("wrong type", {**NEW_RA, "lone_work_allowed": "yes"}, "lone_work_allowed"),
    ("unknown field", {**NEW_RA, "colour": "red"}, "colour"),
    ("bad window", {**NEW_RA, "allowed_hours": {"start": "25:00", "end": "07:00"}}, "allowed"),
    ("bad date", {**NEW_RA, "valid_until": "2027-02-30"}, "valid_until"),
    ("no locations", {**NEW_RA, "locations": []}, "locations"),
]


async def test_post_assessment_invalid_is_400_with_reasons_and_stores_nothing(
    cfg: dict[str, Any],
) -> None:
    t0 = dt.datetime.now(dt.UTC)
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with running_gateway(cfg) as gw:
        for name, body, mentioned in INVALID_JSON:
            status, answer = await gw.client.api("POST", "/api/assessments", body)
            assert status == 400, (name, answer)
            assert_error(answer, "invalid_assessment")
            assert isinstance(answer["reasons"], list) and answer["reasons"], (name, answer)
            assert mentioned in " ".join(answer["reasons"]), (name, answer)

        oversized = {**NEW_RA, "activity": "x" * (65 * 1024)}
        raw_cases: list[tuple[str, bytes]] = [
            ("not JSON", b"{id: RA-X"),
            ("JSON array", json.dumps([NEW_RA]).encode()),
            ("JSON string", b'"RA-API-1"'),
            ("empty body", b""),
            ("not UTF-8", b'{"id": "\xff\xfe"}'),
            ("oversized", json.dumps(oversized).encode()),
        ]
        for name, data in raw_cases:
            status, answer = await raw(gw, "POST", "/api/assessments", data=data, headers=auth)
            assert status == 400, (name, status, answer)
            assert_error(answer)

        status, listed = await gw.client.api("GET", "/api/assessments")
        assert [a["id"] for a in listed["assessments"]] == ["RA-1"]
        status, audit = await gw.client.api("GET", "/api/audit?since=" + quote(t0.isoformat()))
        assert not [e for e in audit["events"] if e["event"].startswith("assessment_")]

    # nothing reached the store either
    async with running_gateway(cfg) as gw:
        status, listed = await gw.client.api("GET", "/api/assessments")
        assert [a["id"] for a in listed["assessments"]] == ["RA-1"]


async def test_post_assessment_with_a_config_id_is_409_and_changes_nothing(
    cfg: dict[str, Any],
) -> None:
    async with running_gateway(cfg) as gw:
        status, listed = await gw.client.api("GET", "/api/assessments")
        [before] = listed["assessments"]
        hijack = {**NEW_RA, "id": "RA-1", "person": "ola", "activity": "Anything goes"}
        status, answer = await gw.client.api("POST", "/api/assessments", hijack)
        assert status == 409, answer
        assert_error(answer)
        assert "RA-1" in answer["detail"]
        status, listed = await gw.client.api("GET", "/api/assessments")
        assert listed["assessments"] == [before]


# ---------------------------------------------------------------------------- audit


async def test_audit_since_is_validated_and_filters(cfg: dict[str, Any]) -> None:
    async with running_gateway(cfg) as gw:
        for bad in ["bad", "2026-13-01T00:00:00Z", "2026-11-26T08:00:00", "", "yesterday"]:
            status, answer = await gw.client.api("GET", "/api/audit?since=" + quote(bad))
            assert status == 400, (bad, answer)
            assert_error(answer, "bad_since")
        status, answer = await gw.client.api("GET", "/api/audit?limit=0")
        assert status == 400
        assert_error(answer)

        status, everything = await gw.client.api("GET", "/api/audit")
        assert status == 200
        assert "gateway_started" in [e["event"] for e in everything["events"]]
        future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
        status, later = await gw.client.api("GET", "/api/audit?since=" + quote(future))
        assert status == 200 and later["events"] == []
        # every time is RFC 3339 with an offset
        for e in everything["events"]:
            assert dt.datetime.fromisoformat(e["at"]).utcoffset() is not None


async def test_audit_since_accepts_an_offset_typed_without_url_encoding(
    cfg: dict[str, Any],
) -> None:
    """`curl '.../api/audit?since=2026-11-26T08:00:00+01:00'` sends the '+' as is, and a query
    string's '+' decodes to a space; an operator pasting the contract's format must not get 400."""
    async with running_gateway(cfg) as gw:
        past = dt.datetime.now(dt.timezone(dt.timedelta(hours=1))) - dt.timedelta(hours=1)
        future = past + dt.timedelta(hours=2)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        url = gw.client.base + "/api/audit?since="
        for when, want_events in [(past, True), (future, False)]:
            literal = when.isoformat(timespec="seconds")
            assert "+01:00" in literal
            target = yarl.URL(url + literal, encoded=True)
            async with gw.client.session.get(target, headers=headers) as r:
                assert r.status == 200, await r.text()
                body = await r.json()
            assert bool(body["events"]) is want_events, (literal, body)
