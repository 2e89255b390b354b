"""The console's parts at exact instants: sessions and their expiry, the login throttle,
password hashes, the config field, `hash-password`, the page's shapes (DST midnight, warning
colours, reasons in words), SSE framing and the feed's coalescing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from jaa_gateway import passwords
from jaa_gateway.adapters.console import model
from jaa_gateway.adapters.console.auth import Sessions, Throttle
from jaa_gateway.adapters.console.feed import Feed, sse_event
from jaa_gateway.board import Snapshot
from jaa_gateway.config import ConfigError
from tests.support.cfg import OSLO, config_dict, make_config, oslo
from tests.support.console import HASHED, PASSWORD

T0 = oslo(2026, 11, 26, 8, 0).timestamp()

# --------------------------------------------------------------------------- sessions


def test_a_session_lives_exactly_its_lifetime() -> None:
    s = Sessions(lifetime_s=3600)
    made = s.create("guard-1", T0)
    assert s.get(made.token, T0 + 3599.999) is made
    assert s.get(made.token, T0 + 3600) is None
    assert s.get(made.token, T0) is None  # gone for good, not only while late
    other = s.create("guard-1", T0)
    assert other.token != made.token and other.csrf != made.csrf and len(other.token) >= 40
    s.drop_person("guard-1")
    assert s.get(other.token, T0) is None
    assert s.get(None, T0) is None and s.get("", T0) is None


# --------------------------------------------------------------------------- throttle


def test_the_throttle_blocks_a_person_after_five_failures_for_the_window() -> None:
    th = Throttle(person_limit=5, address_limit=20, window_s=900)
    for i in range(4):
        th.failed("guard-1", "10.0.0.1", T0 + i)
    assert th.retry_after("guard-1", "10.0.0.1", T0 + 4) is None
    th.failed("guard-1", "10.0.0.1", T0 + 4)
    # blocked until the oldest of the five ages out: T0 + 900
    assert th.retry_after("guard-1", "10.0.0.2", T0 + 5) == 895
    assert th.retry_after("guard-1", "10.0.0.2", T0 + 899.5) == 1
    assert th.retry_after("guard-1", "10.0.0.2", T0 + 900) is None
    # another person from the same address may (5 < 20)
    assert th.retry_after("guard-2", "10.0.0.1", T0 + 5) is None


def test_the_throttle_blocks_an_address_and_a_success_does_not_reopen_it() -> None:
    th = Throttle(person_limit=5, address_limit=20, window_s=900)
    for i in range(20):
        th.failed(f"p{i}", "10.0.0.9", T0)
    assert th.retry_after("guard-1", "10.0.0.9", T0 + 1) == 899
    th.succeeded("guard-1")
    assert th.retry_after("guard-1", "10.0.0.9", T0 + 1) == 899
    assert th.retry_after("guard-1", "10.0.0.8", T0 + 1) is None
    for _ in range(5):
        th.failed("guard-1", "10.0.0.8", T0)
    th.succeeded("guard-1")  # the person's count goes with a good login
    assert th.retry_after("guard-1", "10.0.0.8", T0 + 1) is None


# --------------------------------------------------------------------------- passwords


def test_password_hash_and_check() -> None:
    assert passwords.HASH_RE.match(HASHED)
    assert passwords.check(PASSWORD, HASHED)
    assert not passwords.check(PASSWORD + "x", HASHED)
    assert not passwords.check("", HASHED)
    assert not passwords.check(PASSWORD, None)  # an unknown person: a dummy check, False
    assert not passwords.check("x" * 500, HASHED)
    with pytest.raises(passwords.BadPassword, match="at least 10"):
        passwords.hash_password("short")
    with pytest.raises(passwords.BadPassword, match="at most 72 bytes"):
        passwords.hash_password("æ" * 40)  # 80 bytes: bcrypt would silently cut it


def test_console_password_in_config_must_be_a_bcrypt_hash_of_a_console_role() -> None:
    data = config_dict()
    guard = next(p for p in data["people"] if "guard" in p["roles"])
    guard["console_password"] = HASHED
    person = make_config(data).person(guard["id"])
    assert person is not None and person.may_use_console
    guard["console_password"] = "hunter2-plain-text"
    with pytest.raises(ConfigError) as bad:
        make_config(data)
    assert "bcrypt hash" in str(bad.value.problems) and "hunter2" not in str(bad.value.problems)
    worker = config_dict()
    worker["people"][0]["console_password"] = HASHED  # ola: role worker only
    with pytest.raises(ConfigError) as bad:
        make_config(worker)
    assert "none of the roles" in str(bad.value.problems)


def _cli(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jaa_gateway.cli", "hash-password"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_hash_password_reads_stdin_once_and_prints_a_usable_hash() -> None:
    done = _cli("correct horse battery\n")
    assert done.returncode == 0, done.stderr
    hashed = done.stdout.strip()
    assert passwords.HASH_RE.match(hashed) and hashed.startswith("$2b$12$")
    assert passwords.check("correct horse battery", hashed)
    short = _cli("short\n")
    assert short.returncode == 1 and "at least 10" in short.stderr and short.stdout == ""


# --------------------------------------------------------------------------- shapes


def test_day_start_is_local_midnight_on_dst_days() -> None:
    # the spring night: 02:00 -> 03:00; midnight is still 00:00 CET = 23:00 UTC the day before
    noon = oslo(2026, 3, 29, 12, 0).timestamp()
    assert model.day_start(OSLO, noon) == oslo(2026, 3, 29, 0, 0).timestamp()
    autumn = oslo(2026, 10, 25, 23, 30).timestamp()  # a 25-hour day
    assert autumn - model.day_start(OSLO, autumn) == 24.5 * 3600


def test_clock_text_has_the_date_only_when_not_today() -> None:
    assert model.clock_text(T0 - 3600, OSLO, T0) == "07:00"
    assert model.clock_text(T0 - 86400, OSLO, T0) == "25.11. 08:00"


def _session(**kw: Any) -> dict[str, Any]:
    row = {
        "id": "s1",
        "person": "ola",
        "location": "d1-123",
        "device": "jaa-0042",
        "started_at": T0 - 600,
        "ends_at": T0 + 3600,
        "checkin_state": "waiting",
        "checkin_due_at": T0 + 1200,
        "checkin_grace_until": None,
    }
    return row | kw


def test_a_session_turns_amber_when_a_checkin_is_close_or_the_device_is_quiet() -> None:
    cfg = make_config()
    fresh = {"id": "jaa-0042", "last_seen": T0 - 5, "battery": 87.4}
    calm = model.session_view(cfg, "nb", _session(), fresh, T0, quiet_after_s=60)
    assert not calm.warn and calm.battery == "87 %" and calm.due_ms == (T0 + 1200) * 1000
    assert calm.worker == "Ola Nordmann"
    close = model.session_view(
        cfg, "nb", _session(checkin_due_at=T0 + 300), fresh, T0, quiet_after_s=60
    )
    assert close.warn
    quiet = {"id": "jaa-0042", "last_seen": T0 - 60, "battery": None}
    assert model.session_view(cfg, "nb", _session(), quiet, T0, quiet_after_s=60).warn
    never = model.session_view(cfg, "nb", _session(), None, T0, quiet_after_s=60)
    assert never.warn and never.heard_ms is None and never.battery is None
    due = model.session_view(
        cfg,
        "en",
        _session(checkin_state="due", checkin_grace_until=T0 + 30),
        fresh,
        T0,
        quiet_after_s=60,
    )
    assert due.due_ms == (T0 + 30) * 1000 and due.warn


def _alarm(**kw: Any) -> dict[str, Any]:
    row = {
        "id": "a1",
        "code": "1234",
        "kind": "sos",
        "state": "escalating",
        "person": "ola",
        "location": None,
        "device": "jaa-0042",
        "lat": 63.4152,
        "lon": 10.4069,
        "opened_at": T0 - 30,
        "exhausted": 0,
        "acknowledged_by": None,
        "acknowledged_at": None,
    }
    return row | kw


def test_alarm_view_words_map_link_notified_and_what_may_be_done() -> None:
    cfg = make_config()
    notes = [
        {"purpose": "alarm", "person": "kari", "channel": "sms", "state": "sent",
         "delivery_status": "delivered"},
        {"purpose": "alarm", "person": "kari", "channel": "call", "state": "sent",
         "delivery_status": "no-answer"},
        {"purpose": "worker_ok", "person": "kari", "channel": "sms", "state": "sent",
         "delivery_status": None},
    ]  # fmt: skip
    v = model.alarm_view(cfg, "nb", _alarm(), notes, T0)
    assert v.kind_words == "SOS, nødknappen er trykket" and v.state_words == "Varsler vakter"
    assert (
        v.location == "ukjent sted" and v.map_url == "https://maps.google.com/?q=63.41520,10.40690"
    )
    assert [(n.channel, n.status, n.bad) for n in v.notified] == [
        ("SMS", "levert", False),
        ("Anrop", "ikke svar", True),
    ]
    assert v.may_ack and not v.may_resolve
    acked = model.alarm_view(
        cfg, "en", _alarm(state="acknowledged", acknowledged_by="kari", acknowledged_at=T0), [], T0
    )
    assert not acked.may_ack and acked.may_resolve and acked.acknowledged_by == "Kari Hansen"
    assert acked.state_words.startswith("Acknowledged")


def test_denials_are_in_words() -> None:
    cfg = make_config()
    e = {"ts": T0, "actor": "ola", "data": {"reason": "training_expired", "location": "d1-123"}}
    d = model.denial_view(cfg, "nb", e, T0)
    assert (d.worker, d.reason) == ("Ola Nordmann", "HMS-opplæringen mangler eller er utløpt")
    dev = {"ts": T0, "actor": "jaa-9999", "data": {"reason": "unknown_device"}}
    assert model.denial_view(cfg, "en", dev, T0).reason == "unknown alarm device"


def test_status_names_who_is_on_duty_and_the_problems() -> None:
    cfg = make_config()
    at = oslo(2026, 11, 26, 9, 0).timestamp()  # a Thursday: the day shift
    ok = model.status_view(cfg, "nb", model.DeskStatus(mqtt_connected=True), at)
    assert ok.ok and ok.role_line is None
    assert ("security-desk", "Dag Vakt") in ok.on_duty and ("saturday", "ingen") in ok.on_duty
    bad = model.status_view(
        cfg,
        "en",
        model.DeskStatus(
            mqtt_connected=False,
            twilio_failing=True,
            clustered=True,
            may_act=False,
            leader="node-a",
            node="node-b",
        ),
        at,
    )
    assert not bad.ok and "no contact with the MQTT broker" in bad.problems
    assert "SMS and calls are failing" in bad.problems
    assert bad.role_line is not None and "node-a" in bad.role_line and not bad.may_act


def test_board_view_keeps_the_store_order() -> None:
    cfg = make_config()
    snap = Snapshot(
        alarms=[_alarm(id="new", opened_at=T0 - 1), _alarm(id="old", opened_at=T0 - 99)],
        notifications={},
        sessions=[_session()],
        devices={},
        denials=[],
    )
    view = model.board_view(cfg, "nb", snap, T0)
    assert [a.id for a in view.alarms] == ["new", "old"]
    assert view.quiet_after_ms == cfg.timing.device_timeout.total_seconds() * 500


# --------------------------------------------------------------------------- live


def test_an_sse_event_carries_every_line() -> None:
    assert (
        sse_event("board", "<p>a</p>\n<p>b</p>")
        == "event: board\ndata: <p>a</p>\ndata: <p>b</p>\n\n"
    )
    assert sse_event("status", "x\r\ny") == "event: status\ndata: x\ndata: y\n\n"


async def test_a_burst_of_changes_is_one_read_and_every_watcher_gets_it() -> None:
    reads = 0

    async def render() -> str:
        nonlocal reads
        reads += 1
        return f"<p>board {reads}</p>"

    feed = Feed(render, lambda: "<p>ok</p>", lambda: True)
    task = asyncio.create_task(feed.run())
    try:
        first = await feed.current()
        feed.watchers = 3
        waiting = [asyncio.create_task(feed.next_frame(first.version, 5.0)) for _ in range(3)]
        for _ in range(200):
            feed.changed("state")
        frames = await asyncio.gather(*waiting)
        assert {f.board for f in frames if f is not None} == {"<p>board 2</p>"}
        await asyncio.sleep(0.2)
        assert reads == 2  # the first page, then one read for the whole burst
        # device state refreshes the board too, but not more than every DEVICES_GAP_S
        feed.changed("devices")
        feed.changed("devices")
        nxt = await feed.next_frame(frames[0].version if frames[0] else 0, 7.0)
        assert nxt is not None and reads == 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
