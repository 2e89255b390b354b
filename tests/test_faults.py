"""Dependency faults (issue 7, item 2; CONTRACT §5, §6, §7.2, §7.4).

For each fault the gateway must not crash (or loop), must say what is wrong on /healthz, must send
the alarms it still can, and must recover by itself when the fault clears:

* the MQTT broker killed with SIGKILL and unreachable for a while (JAA_FAULT_BROKER_OUTAGE_S,
  5 s by default; run it once by hand with 60), and a broker that hangs (SIGSTOP) for less than
  the edge's operation timeout, so only the timers are at stake there;
* Twilio answering 500 for one number, and 429, slowly (10 s, beyond request_timeout) or not at
  all for every request (a sustained 5xx outage is tests/test_selfwatch.py's case; single 500s
  and 429s, and a 3 s delay, are tests/test_e2e_alarms.py's);
* the database read-only (SQLite's own `PRAGMA query_only`, set on the gateway's one pooled
  connection through the public `app.store.tx()`: as root, chmod does not stop writes) and the
  disk full (a real ENOSPC: the database on a small tmpfs filled up; skipped where `mount` is not
  permitted).

Site of tests/support/gateway.py: chain "guards" with steps at 0 s (guard-1: sms + call), 2 s
(guard-2 and kari: sms), 4 s (head-security: sms).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from jaa_gateway import logs
from jaa_gateway.domain import guard_texts
from tests.support.broker import MosquittoBroker, MqttProbe, free_port
from tests.support.gateway import PHONES, InProcessGateway, running_gateway, site_config
from tests.support.twilio_double import Recorded, TwilioDouble
from tests.test_e2e_alarms import (
    EARLY,
    LATE,
    alarm_topic,
    assert_on_time,
    cmd_topic,
    event_topic,
    eventually,
    get_alarm,
    new_id,
    raise_sos,
    retained_on,
    site,
    start_session,
    to,
    wait_cmd,
)

BROKER_OUTAGE_S = float(os.environ.get("JAA_FAULT_BROKER_OUTAGE_S", "5"))
STATUS = "jaa/gateway/status"
STEP_OFFSETS = (0.0, 2.0, 4.0)
STEP_TARGETS = (("guard-1",), ("guard-2", "kari"), ("head-security",))
DEVICE_TIMEOUT = 30.0  # site_config's timing.device_timeout
MISSED = "Uteblitt innsjekk"  # the nb SMS title of a missed_checkin alarm


@pytest.fixture(autouse=True)
def json_logs() -> Iterator[None]:
    """Log like the daemon does (`run`: JSON lines).

    structlog's default console renderer pretty-prints every logged exception with its locals,
    which blocks the event loop for seconds when a fault makes every transaction fail; that lag
    is the test harness's, not the daemon's, and would hide real timing faults.
    """
    saved = structlog.get_config()
    logs.configure("json")
    try:
        yield
    finally:
        structlog.configure(**saved)


async def healthz(gw: InProcessGateway) -> tuple[int, dict[str, Any]]:
    status, body = await gw.client.api("GET", "/healthz", token=None)
    assert isinstance(body, dict), body
    return status, body


async def problems_mention(gw: InProcessGateway, *words: str) -> list[str] | None:
    status, body = await healthz(gw)
    found = [p for p in body["problems"] if all(w in p for w in words)]
    return body["problems"] if status == 503 and found else None


async def healthy(gw: InProcessGateway) -> bool:
    return (await healthz(gw))[0] == 200


def first_at(records: list[Recorded]) -> float | None:
    return min((r.at for r in records), default=None)


# =========================================================================== MQTT broker


@contextlib.asynccontextmanager
async def device(port: int, client_id: str) -> AsyncIterator[MqttProbe]:
    """The worker's device: a persistent MQTT session (clean_session=False), so answers the
    gateway sends while the device is away wait for it at the broker."""
    async with MqttProbe(port, client_id=client_id, clean_session=False) as dev:
        await dev.subscribe(cmd_topic("jaa-0042"))
        yield dev


async def next_save(broker: MosquittoBroker, timeout: float = 5.0) -> None:
    """Wait for the broker's next autosave: it writes mosquitto.db.new and renames it."""
    db = broker.workdir / "mosquitto.db"

    def stamp() -> tuple[int, int] | None:
        with contextlib.suppress(FileNotFoundError):
            st = db.stat()
            return (st.st_ino, st.st_mtime_ns)
        return None

    before = stamp()
    await eventually(lambda: stamp() not in (None, before), timeout=timeout)


async def test_broker_killed_and_unreachable_then_back(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    """SIGKILL the broker; for BROKER_OUTAGE_S the gateway cannot reach any broker, while the
    worker's device still reaches one (a second mosquitto on another port, on the same
    persistence: how a device on another network path sees it). Timers run on; the device's sos
    waits in the gateway's persistent session and is processed after the reconnect; the answers
    and retained alarm topics the gateway could not publish arrive afterwards."""
    outage = BROKER_OUTAGE_S
    cfg = site_config(tmp_path / "state.db", mosquitto.port, twilio_double)
    cfg["assessments"][0]["checkin_interval"] = "3s"  # grace 1 s: missed_checkin at +4 s
    dev_id = f"dev-jaa-0042-{os.getpid()}"
    async with running_gateway(cfg) as gw:
        app = gw.app
        assert app is not None
        async with device(mosquitto.port, dev_id) as dev:
            t_started = time.monotonic()  # the session's timers start a moment later: never early
            started = await start_session(dev)
        # SIGKILL loses what the broker has not saved yet: wait for a save that holds both
        # persistent sessions (gateway and device) and their subscriptions
        await next_save(mosquitto)
        mosquitto.kill()
        t_kill = time.monotonic()
        side = MosquittoBroker(mosquitto.workdir, port=free_port())
        side.start()
        try:
            await eventually(lambda: problems_mention(gw, "mqtt"), timeout=3)
            # the worker presses sos while the gateway is cut off from every broker
            sos_id = new_id("sos")
            async with device(side.port, dev_id) as dev:
                await dev.publish(event_topic("jaa-0042"), {"id": sos_id, "type": "sos"})
            # timers keep running: the missed check-in alarm is raised and paged meanwhile
            await twilio_double.wait_for(lambda d: len(to(d, "guard-1", "sms")) >= 1, timeout=6)
            sms = to(twilio_double, "guard-1", "sms")[0]
            assert MISSED in (sms.body or ""), sms.body
            t_alarm = t_started + 3.0 + 1.0
            assert t_alarm - EARLY <= sms.at <= t_alarm + LATE, sms.at - t_started
            # ride out the outage: every step due well within it goes out on its time
            while time.monotonic() < t_kill + outage:
                status, body = await healthz(gw)
                assert status == 503, body
                assert any("mqtt" in x for x in body["problems"]), body
                assert body["loop_lag_s"] < 0.5, body
                assert not app.mqtt.connected
                await asyncio.sleep(min(1.0, max(0.0, t_kill + outage - time.monotonic())))
            t_back = time.monotonic()
            for offset, people in zip(STEP_OFFSETS, STEP_TARGETS, strict=True):
                if t_alarm + offset + LATE >= t_back:
                    continue
                for who in people:
                    got = first_at(to(twilio_double, who, "sms"))
                    assert got is not None, (who, offset)
                    assert t_alarm + offset - EARLY <= got <= t_alarm + offset + LATE, (
                        who,
                        offset,
                        round(got - t_alarm, 3),
                    )
            missed_sms = [
                r for r in to(twilio_double, "guard-1", "sms") if MISSED in (r.body or "")
            ]
            assert len(missed_sms) == 1  # nothing sent twice
        finally:
            side.stop()
        mosquitto.start()
        t_restart = time.monotonic()
        # reconnect backoff is capped at 5 s (adapters/mqtt.py), jittered
        await eventually(lambda: app.mqtt.connected, timeout=8)
        t_connected = time.monotonic()
        async with device(mosquitto.port, dev_id) as dev:
            # the sos published while the gateway was away is processed after it reconnects
            raised = await wait_cmd(
                dev, "jaa-0042", "alarm_raised", lambda m: m.get("re") == sos_id, timeout=8
            )
            assert raised["kind"] == "sos"
            t_sos = time.monotonic()
            # what the gateway had for the device during the outage arrives too
            due = await wait_cmd(dev, "jaa-0042", "checkin_due", timeout=3)
            assert due["session"] == started["session"]
            missed = await wait_cmd(dev, "jaa-0042", "alarm_raised", lambda m: m["kind"] != "sos")
            assert missed["kind"] == "missed_checkin"
        await eventually(lambda: healthy(gw), timeout=5)
        await twilio_double.wait_for(
            lambda d: any("SOS" in (r.body or "") for r in to(d, "guard-1", "sms")), timeout=5
        )
        # retained topics: the gateway is online and both alarms (one raised during the outage,
        # the other after it) are on their retained topics
        status_msgs = await retained_on(mosquitto.port, STATUS)
        assert [s.json() for s in status_msgs] == [{"state": "online"}]
        for alarm_id, kind in ((missed["alarm"], "missed_checkin"), (raised["alarm"], "sos")):
            kept = await retained_on(mosquitto.port, alarm_topic(alarm_id), settle=0.2)
            assert [(m.json()["kind"], m.json()["state"]) for m in kept] == [(kind, "escalating")]
        status, body = await gw.client.api("GET", "/api/alarms?state=open")
        kinds = sorted(a["kind"] for a in body["alarms"])
        steps = {
            who: [round(r.at - t_alarm, 2) for r in to(twilio_double, who, "sms")]
            for who in ("guard-1", "guard-2", "kari", "head-security")
        }
        print(  # the numbers for a report (pytest -s)
            f"\nbroker outage {outage:.0f} s: missed_checkin sms at {sms.at - t_alarm:+.2f} s "
            f"of its due time; sms offsets from the alarm: {steps}; reconnected "
            f"{t_connected - t_restart:.2f} s after the broker came back; queued sos answered "
            f"{t_sos - t_restart:.2f} s after; open alarms {kinds}"
        )
        # a device not heard for device_timeout (30 s here) while the gateway cannot reach the
        # broker is a common cause (CONTRACT §4): one contact_lost, no device_offline
        if t_back > t_started + DEVICE_TIMEOUT + LATE:
            assert kinds == ["contact_lost", "missed_checkin", "sos"], kinds
        elif t_back < t_started + DEVICE_TIMEOUT - LATE:
            assert kinds == ["missed_checkin", "sos"], kinds


async def test_hung_broker_does_not_hold_the_timers(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    """The broker stops answering without closing the connection (SIGSTOP: what a network
    partition looks like). Deadlines hand their answers to the edge without waiting for a
    PUBACK, so the missed check-in alarm and its next step are paged on time; the answers reach
    the device once the broker answers again."""
    cfg = site_config(tmp_path / "state.db", mosquitto.port, twilio_double)
    cfg["assessments"][0]["checkin_interval"] = "2s"  # grace 1 s: missed_checkin at +3 s
    dev_id = f"dev-jaa-0042-{os.getpid()}"
    async with running_gateway(cfg) as gw, device(mosquitto.port, dev_id) as dev:
        t0 = time.monotonic()  # the session's timers start a moment later: never early
        started = await start_session(dev)
        mosquitto.pause()
        try:
            await twilio_double.wait_for(lambda d: len(to(d, "kari", "sms")) >= 1, timeout=8)
            t_alarm = t0 + 2.0 + 1.0
            for who, offset in (("guard-1", 0.0), ("guard-2", 2.0), ("kari", 2.0)):
                got = first_at(to(twilio_double, who, "sms"))
                assert got is not None, who
                assert t_alarm + offset - EARLY <= got <= t_alarm + offset + LATE, (
                    who,
                    round(got - t_alarm, 3),
                )
            assert MISSED in (to(twilio_double, "guard-1", "sms")[0].body or "")
        finally:
            mosquitto.resume()
        due = await wait_cmd(dev, "jaa-0042", "checkin_due", timeout=10)
        assert due["session"] == started["session"]
        raised = await wait_cmd(dev, "jaa-0042", "alarm_raised", timeout=5)
        assert raised["kind"] == "missed_checkin"
        kept = await retained_on(mosquitto.port, alarm_topic(raised["alarm"]), settle=0.3)
        assert [m.json()["state"] for m in kept] == ["escalating"]
        await eventually(lambda: healthy(gw), timeout=5)


# =========================================================================== Twilio


def two_guards_on_duty(cfg: dict[str, Any]) -> None:
    cfg["rosters"][0]["shifts"][0]["people"] = ["guard-1", "guard-2"]


def attempts_to(double: TwilioDouble, who: str, kind: str | None = None) -> list[Recorded]:
    """Every request for `who`, answered or not (`to()` counts only accepted ones)."""
    return [r for r in double.attempts if r.to == PHONES[who] and (kind is None or r.kind == kind)]


async def all_sent(gw: InProcessGateway, alarm_id: str) -> dict[str, Any] | None:
    a = await get_alarm(gw, alarm_id)
    rows = [n for n in a["notifications"] if n["purpose"] == "alarm"]
    return a if rows and all(n["state"] == "sent" for n in rows) else None


async def test_twilio_failing_for_one_number_leaves_the_others_and_the_timetable_alone(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    """Twilio answers 500 for every request to guard-1 (its carrier is down, say): guard-1's
    SMS and call are retried with backoff while guard-2 (on duty with guard-1) and every later
    step go out on time; once Twilio takes guard-1's requests again, they are delivered."""
    async with site(tmp_path, mosquitto, twilio_double, two_guards_on_duty) as (gw, p, _):
        await start_session(p)
        twilio_double.fail_number(PHONES["guard-1"], 500, 20500)
        alarm_id, t0 = await raise_sos(p)
        await twilio_double.wait_for(lambda d: len(to(d, "head-security")) >= 1, timeout=6)
        assert_on_time(to(twilio_double, "guard-2", "call"), t0, 0.0, "step 0, guard-2 call")
        g2_sms = sorted(to(twilio_double, "guard-2", "sms"), key=lambda r: r.at)
        assert len(g2_sms) == 2, g2_sms  # step 0 and step 1
        assert_on_time(g2_sms[:1], t0, 0.0, "step 0, guard-2 sms")
        assert_on_time(g2_sms[1:] + to(twilio_double, "kari"), t0, 2.0, "step 1")
        assert_on_time(to(twilio_double, "head-security"), t0, 4.0, "step 2")
        g1 = attempts_to(twilio_double, "guard-1")
        assert {r.http_status for r in g1} == {500}
        assert len([r for r in g1 if r.kind == "sms"]) >= 2, g1  # retried, not given up
        assert_on_time(sorted(g1, key=lambda r: r.at)[:1], t0, 0.0, "step 0, guard-1 try")
        a = await get_alarm(gw, alarm_id)
        retries = [e for e in a["timeline"] if e["event"] == "notification_retry"]
        assert retries and {e["data"]["status"] for e in retries} == {500}
        assert all(e["actor"] == "guard-1" for e in retries)
        assert [e for e in a["timeline"] if e["event"] == "notification_failed"] == []
        # Twilio takes guard-1's requests again: the pending SMS and call go out
        twilio_double.reset()
        await twilio_double.wait_for(
            lambda d: len(to(d, "guard-1", "sms")) >= 1 and len(to(d, "guard-1", "call")) >= 1,
            timeout=15,
        )
        await eventually(lambda: all_sent(gw, alarm_id), timeout=5)
        assert (await get_alarm(gw, alarm_id))["state"] == "escalating"


def fast_degrade(cfg: dict[str, Any]) -> None:
    cfg["notify"]["degraded_after"] = "1s"
    cfg["twilio"]["request_timeout"] = "1s"


def apply_fault(double: TwilioDouble, fault: str) -> None:
    if fault == "429":
        double.fail_next(100_000, status=429)
    elif fault == "slow":
        double.set_delay(10.0)  # far beyond request_timeout (1 s here)
    elif fault == "hang":
        double.hang()
    else:
        raise ValueError(fault)


@pytest.mark.parametrize("fault", ["429", "slow", "hang"])
async def test_twilio_unusable_then_back(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble, fault: str
) -> None:
    """Every request rate-limited (429), answered only after 10 s, or never answered. Each step
    is still tried on its time, failures are retried, the gateway says degraded after
    notify.degraded_after and tries its own notice; when Twilio is back every alarm
    notification is delivered and the gateway says online again, by itself.
    (A sustained 5xx is tests/test_selfwatch.py's case.)"""
    async with site(tmp_path, mosquitto, twilio_double, fast_degrade) as (gw, p, _):
        await start_session(p)
        apply_fault(twilio_double, fault)
        alarm_id, t0 = await raise_sos(p)
        await p.wait_message(STATUS, lambda s: s.json()["state"] == "degraded", timeout=8)
        degraded = [s.json() for s in p.seen if s.topic == STATUS][-1]
        assert degraded["reasons"] == ["notifications_failing"], degraded
        problems = await eventually(lambda: problems_mention(gw, "degraded", "notifications"))
        assert not any("mqtt" in x or "database" in x for x in problems), problems
        await twilio_double.wait_for(lambda d: len(attempts_to(d, "head-security")) >= 1, timeout=6)
        # the escalation's timetable does not wait on Twilio: each step tried at its time
        for offset, people in zip(STEP_OFFSETS, STEP_TARGETS, strict=True):
            for who in people:
                first = sorted(attempts_to(twilio_double, who), key=lambda r: r.at)[:1]
                assert_on_time(first, t0, offset, f"step at +{offset} s, {who}")
        # guard-1's alarm SMS tried again, and the degraded notice tried on some channel
        g1 = attempts_to(twilio_double, "guard-1")
        alarm_sms = [r for r in g1 if r.kind == "sms" and "SOS" in (r.body or "")]
        assert len(alarm_sms) >= 2, [(r.kind, r.body) for r in g1]
        assert any("redusert" in (r.body or r.twiml or "") for r in g1), g1
        if fault != "slow":
            assert twilio_double.accepted == []  # nothing got through: the fault is real
        # Twilio is back
        since = len(p.seen)
        twilio_double.reset()
        a = await eventually(lambda: all_sent(gw, alarm_id), timeout=15)
        await p.wait_message(
            STATUS, lambda s: s.json()["state"] == "online", timeout=8, since=since
        )
        await eventually(lambda: healthy(gw), timeout=5)
        assert {(n["person"], n["channel"]) for n in a["notifications"]} == {
            ("guard-1", "sms"),
            ("guard-1", "call"),
            ("guard-2", "sms"),
            ("kari", "sms"),
            ("head-security", "sms"),
        }
        assert [e["data"]["k"] for e in a["timeline"] if e["event"] == "escalation_step"] == [
            0,
            1,
            2,
        ]
        _, audit = await gw.client.api("GET", "/api/audit")
        events = [e["event"] for e in audit["events"]]
        assert events.index("gateway_degraded") < events.index("gateway_recovered")


# =========================================================================== database

NOTICE = "redusert funksjon"  # the nb gateway_degraded notice


async def set_query_only(gw: InProcessGateway, on: bool) -> None:
    """SQLite's own read-only switch, on the gateway's single connection (the store runs one),
    in a transaction of its own: every write then fails as on a read-only file
    ("attempt to write a readonly database"), reads go on."""
    assert gw.app is not None
    async with gw.app.store.tx() as conn:
        await conn.exec_driver_sql(f"PRAGMA query_only={1 if on else 0}")


async def notices_in_outbox(gw: InProcessGateway) -> int:
    assert gw.app is not None
    async with gw.app.store.tx() as conn:
        n = (
            await conn.exec_driver_sql(
                "SELECT count(*) FROM notifications WHERE body LIKE ?", (f"%{NOTICE}%",)
            )
        ).scalar_one()
    return int(n)


async def repeat_until_answered(
    p: MqttProbe, dev: str, event: dict[str, Any], answer: str, *, every: float = 1.0
) -> dict[str, Any]:
    """What a device does with an sos (CONTRACT §3): send it again, same id, until answered."""
    while True:
        since = len(p.seen)
        await p.publish(event_topic(dev), event)
        with contextlib.suppress(AssertionError):
            return await wait_cmd(
                p, dev, answer, lambda m: m.get("re") == event["id"], timeout=every, since=since
            )


async def assert_database_degraded(gw: InProcessGateway, p: MqttProbe, words: str) -> None:
    """/healthz names the database, the status topic says why, the notice went out."""
    await eventually(lambda: problems_mention(gw, "database: not writable", words))
    await p.wait_message(
        STATUS,
        lambda s: (
            s.json()
            == {
                "state": "degraded",
                "reason": guard_texts.degraded_reasons("en", ["database_unwritable"]),
                "reasons": ["database_unwritable"],
            }
        ),
        timeout=6,
    )
    status, body = await healthz(gw)
    assert status == 503 and body["loop_lag_s"] < 0.5, body
    assert any(x.startswith("degraded: database not writable") for x in body["problems"]), body


async def test_database_read_only_then_writable_again(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    """Every write refused. The daemon keeps running and says so (/healthz 503 naming the
    database, status degraded/database_unwritable, the notice sent straight through the
    notifier: the outbox lives in that database). Device events fail unanswered; the device
    repeats them, so once the database takes writes again the repeated sos is processed and
    escalated, and the steps of an open alarm that fell due meanwhile go out, once each."""
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        await eventually(lambda: healthy(gw))  # the health probe's table exists
        await start_session(p)
        # step 0 still in flight (Twilio answers late) when writes start failing: its outcome
        # cannot be recorded until the database is back
        twilio_double.set_delay(0.7)
        alarm_id, t0 = await raise_sos(p)
        await twilio_double.wait_for(lambda d: len(d.attempts) >= 1, timeout=3)
        await set_query_only(gw, True)
        twilio_double.set_delay(0.0)
        try:
            per_sos = {"id": new_id("sos"), "type": "sos"}
            since = len(p.seen)
            await p.publish(event_topic("jaa-0043"), per_sos)
            await assert_database_degraded(gw, p, "readonly")
            await twilio_double.wait_for(
                lambda d: any(NOTICE in (r.body or "") for r in to(d, "guard-1", "sms")),
                timeout=5,
            )
            # the sos was taken from MQTT but could not be stored: no answer, nothing paged
            assert [s for s in p.seen[since:] if s.topic == cmd_topic("jaa-0043")] == []
            assert to(twilio_double, "per") == [] and to(twilio_double, "kari") == []
            await asyncio.sleep(max(0.0, t0 + 4.5 - time.monotonic()))  # steps 1, 2 fall due
            assert to(twilio_double, "guard-2") == [] and to(twilio_double, "head-security") == []
        finally:
            await set_query_only(gw, False)
        t_back = time.monotonic()
        raised = await repeat_until_answered(p, "jaa-0043", per_sos, "alarm_raised")
        assert raised["kind"] == "sos" and raised["alarm"] != alarm_id
        await twilio_double.wait_for(
            lambda d: any("Per Student" in (r.body or "") for r in to(d, "guard-1", "sms")),
            timeout=5,
        )
        # the overdue steps of the first alarm run at once, each once; the outcome of step 0
        # is recorded, not sent again
        await twilio_double.wait_for(lambda d: len(to(d, "head-security")) >= 1, timeout=5)
        await eventually(lambda: all_sent(gw, alarm_id), timeout=5)
        for who in ("guard-1", "guard-2", "kari", "head-security"):
            got = [r for r in to(twilio_double, who) if "Ola Nordmann" in (r.body or "")]
            assert len(got) == 1, (who, got)
            if who != "guard-1":
                assert got[0].at - t_back <= 3.0, (who, got[0].at - t_back)
        await p.wait_message(
            STATUS, lambda s: s.json()["state"] == "online", timeout=6, since=since
        )
        await eventually(lambda: healthy(gw), timeout=5)
        assert await notices_in_outbox(gw) == 0  # the notice never went through the outbox
        _, audit = await gw.client.api("GET", "/api/audit")
        mine = [e for e in audit["events"] if e["event"].startswith("gateway_")]
        degraded = [e for e in mine if e["event"] == "gateway_degraded"]
        assert len(degraded) == 1 and degraded[0]["data"]["reasons"] == ["database_unwritable"]
        assert degraded[0]["data"]["delayed"] is True  # written once the database took it
        assert [e["event"] for e in mine][-2:] == ["gateway_degraded", "gateway_recovered"]


@contextlib.contextmanager
def small_filesystem(where: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` at `where`, to fill up for a real 'disk full' (ENOSPC)."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("disk-full test: mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"disk-full test: mount is not permitted here ({done.stderr.strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> int:
    """Write zeros to `path` until the filesystem says it is full; returns the bytes written."""
    chunk = b"\0" * 65536
    written = 0
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk) or 0
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    return written
                raise


async def test_disk_full_then_space_again(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    """The database's filesystem fills up (a real ENOSPC, SQLite's 'database or disk is full').
    Same expectations as a read-only database; the repeated sos is escalated once there is
    space again."""
    with small_filesystem(tmp_path / "dbfs") as fs:

        def db_on_fs(cfg: dict[str, Any]) -> None:
            cfg["gateway"]["database"] = f"sqlite:///{fs}/state.db"

        async with site(tmp_path, mosquitto, twilio_double, db_on_fs) as (gw, p, _):
            await eventually(lambda: healthy(gw))
            await start_session(p)
            filler = fs / "filler"
            assert fill(filler) > 0
            try:
                sos = {"id": new_id("sos"), "type": "sos"}
                since = len(p.seen)
                await p.publish(event_topic("jaa-0042"), sos)
                await assert_database_degraded(gw, p, "full")
                await twilio_double.wait_for(
                    lambda d: any(NOTICE in (r.body or "") for r in to(d, "guard-1", "sms")),
                    timeout=5,
                )
                await asyncio.sleep(1.0)  # the device would have repeated by now
                assert [s for s in p.seen[since:] if s.topic == cmd_topic("jaa-0042")] == []
                status, body = await gw.client.api("GET", "/api/alarms?state=open")
                assert status == 200 and body == {"alarms": []}  # reads still work
            finally:
                filler.unlink()
            raised = await repeat_until_answered(p, "jaa-0042", sos, "alarm_raised")
            assert raised["kind"] == "sos"
            await twilio_double.wait_for(
                lambda d: any("SOS" in (r.body or "") for r in to(d, "guard-1", "sms")),
                timeout=5,
            )
            await p.wait_message(
                STATUS, lambda s: s.json()["state"] == "online", timeout=6, since=since
            )
            await eventually(lambda: healthy(gw), timeout=5)
            assert await notices_in_outbox(gw) == 0
