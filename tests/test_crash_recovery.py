"""Crash safety (CONTRACT §7.1, §7.2, §7.4) with the daemon as a real subprocess, killed with
SIGKILL mid-escalation; and a broker that goes away mid-escalation under an in-process daemon.

Site of tests/support/gateway.py: chain steps at 0 s (guard-1: sms + call), 2 s (guard-2 and
kari: sms), 4 s (head-security: sms).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.support.broker import MosquittoBroker, probe
from tests.support.gateway import Client, GatewayProcess, site_config
from tests.support.twilio_double import Recorded, TwilioDouble
from tests.test_e2e_alarms import (
    EARLY,
    LATE,
    alarm_topic,
    assert_on_time,
    event_topic,
    eventually,
    get_alarm,
    new_id,
    retained_on,
    site,
    start_session,
    to,
    wait_cmd,
)


class _ProcessGateway:
    """Just enough of InProcessGateway (`.client`) for the shared helpers."""

    def __init__(self, proc: GatewayProcess, twilio: TwilioDouble) -> None:
        self.proc = proc
        self.client = Client(proc.base, twilio.auth_token)


@contextlib.asynccontextmanager
async def gateway_process(
    tmp_path: Path, cfg: dict[str, Any], twilio: TwilioDouble
) -> AsyncIterator[_ProcessGateway]:
    proc = GatewayProcess(cfg, tmp_path)
    proc.start()
    gw = _ProcessGateway(proc, twilio)
    try:
        await proc.wait_ready()
        yield gw
    finally:
        with contextlib.suppress(Exception):
            if proc.proc is not None and proc.proc.poll() is None:
                proc.terminate()
        proc.kill9()
        await gw.client.close()


async def restart(gw: _ProcessGateway) -> float:
    """kill -9 happened; start again and return how long until /healthz said ready."""
    gw.proc.start()
    return await gw.proc.wait_ready()


def assert_on_time_across_restart(
    records: list[Recorded], t0: float, offset: float, t_ready: float, what: str
) -> None:
    """On time from the original start; when the daemon was still down at that time (a busy
    machine), at once when it is back. A timetable restarted from the restart would be late by
    the whole restart time either way."""
    assert records, f"{what}: nothing arrived"
    latest = max(offset, t_ready) + LATE
    for r in records:
        d = r.at - t0
        assert offset - EARLY <= d <= latest, (
            f"{what}: {r.kind} to {r.to} arrived at +{d:.3f} s, expected +{offset} s "
            f"(back at +{t_ready:.3f} s)"
        )


async def test_kill9_mid_escalation_resumes_on_the_original_timetable(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble, db_url: str
) -> None:
    cfg = site_config(tmp_path / "state.db", mosquitto.port, twilio_double)
    cfg["gateway"]["database"] = db_url
    # steps 1 and 2 later than in the default site: the daemon needs 2-4 s to start again on a
    # busy 2-core machine, and a step due before it is back would (rightly) go out late
    steps = cfg["escalation_chains"][0]["steps"]
    steps[1]["after"], steps[2]["after"] = "4.5s", "6.5s"
    async with (
        gateway_process(tmp_path, cfg, twilio_double) as gw,
        probe(mosquitto.port, "jaa/#") as p,
    ):
        await start_session(p)
        eid = new_id("sos")
        t0 = time.monotonic()
        await p.publish(event_topic("jaa-0042"), {"id": eid, "type": "sos"})
        raised = await wait_cmd(p, "jaa-0042", "alarm_raised", lambda m: m.get("re") == eid)
        alarm_id = raised["alarm"]
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1")) == 2, timeout=3)

        async def step0_recorded() -> bool:
            a = await get_alarm(gw, alarm_id)
            return bool(a["notifications"]) and all(
                n["state"] == "sent" for n in a["notifications"]
            )

        await eventually(step0_recorded, timeout=3)
        gw.proc.kill9()
        t_kill = time.monotonic() - t0
        took = await restart(gw)
        t_ready = time.monotonic() - t0
        print(f"\nkilled at +{t_kill:.2f} s, ready again after {took:.2f} s")
        a = await get_alarm(gw, alarm_id)
        assert a["state"] == "escalating"
        await twilio_double.wait_for(lambda d: len(to(d, "head-security")) == 1, timeout=7)
        await asyncio.sleep(0.5)
        # steps 1 and 2 at their offsets from the ORIGINAL escalation start (a timetable
        # restarted at the restart would put them 2-4 s later)
        step1 = to(twilio_double, "guard-2") + to(twilio_double, "kari")
        assert_on_time_across_restart(step1, t0, 4.5, t_ready, "step 1")
        assert_on_time_across_restart(
            to(twilio_double, "head-security"), t0, 6.5, t_ready, "step 2"
        )
        # step 0 was recorded as sent: not sent again
        assert sorted(r.kind for r in to(twilio_double, "guard-1")) == ["call", "sms"]
        assert len(twilio_double.attempts) == 5
        a = await get_alarm(gw, alarm_id)
        assert a["state"] == "escalating"
        status, body = await gw.client.api("POST", f"/api/alarms/{alarm_id}/ack", {"by": "kari"})
        assert status == 200, body


async def test_overdue_steps_run_at_once_after_a_long_outage(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    cfg = site_config(tmp_path / "state.db", mosquitto.port, twilio_double)
    async with (
        gateway_process(tmp_path, cfg, twilio_double) as gw,
        probe(mosquitto.port, "jaa/#") as p,
    ):
        eid = new_id("sos")
        await p.publish(event_topic("jaa-0042"), {"id": eid, "type": "sos"})
        raised = await wait_cmd(p, "jaa-0042", "alarm_raised", lambda m: m.get("re") == eid)
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1")) == 2, timeout=3)
        await asyncio.sleep(0.3)
        gw.proc.kill9()
        await asyncio.sleep(2.5)  # step 1 falls due while the gateway is dead
        assert to(twilio_double, "guard-2") == []
        t_restart = time.monotonic()
        await restart(gw)
        await twilio_double.wait_for(
            lambda d: len(to(d, "guard-2")) == 1 and len(to(d, "kari")) == 1, timeout=3
        )
        for r in to(twilio_double, "guard-2") + to(twilio_double, "kari"):
            assert r.at >= t_restart
        a = await get_alarm(gw, raised["alarm"])
        assert a["state"] == "escalating"
        assert sorted(r.kind for r in to(twilio_double, "guard-1")) == ["call", "sms"]


async def test_sos_published_while_the_gateway_is_down_is_processed_after_restart(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble, db_url: str
) -> None:
    cfg = site_config(tmp_path / "state.db", mosquitto.port, twilio_double)
    cfg["gateway"]["database"] = db_url
    async with (
        gateway_process(tmp_path, cfg, twilio_double) as gw,
        probe(mosquitto.port, "jaa/#") as p,
    ):
        await start_session(p)
        gw.proc.kill9()
        eid = new_id("sos")
        await p.publish(event_topic("jaa-0042"), {"id": eid, "type": "sos"}, qos=1)
        await asyncio.sleep(0.3)
        assert twilio_double.attempts == []
        await restart(gw)
        raised = await wait_cmd(
            p, "jaa-0042", "alarm_raised", lambda m: m.get("re") == eid, timeout=5
        )
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1")) == 2, timeout=3)
        a = await get_alarm(gw, raised["alarm"])
        assert (a["state"], a["location"]) == ("escalating", "d1-123")


async def test_prealarm_keeps_its_original_deadline_across_kill9(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    cfg = site_config(tmp_path / "state.db", mosquitto.port, twilio_double)
    # long enough to outlast a restart (the daemon needs 2-4 s to start on this machine)
    cfg["timing"]["prealarm_window"] = "6s"
    async with (
        gateway_process(tmp_path, cfg, twilio_double) as gw,
        probe(mosquitto.port, "jaa/#") as p,
    ):
        await start_session(p)
        eid = new_id("md")
        t0 = time.monotonic()
        await p.publish(event_topic("jaa-0042"), {"id": eid, "type": "man_down"})
        pre = await wait_cmd(p, "jaa-0042", "prealarm", lambda m: m.get("re") == eid)
        gw.proc.kill9()
        await restart(gw)
        t_ready = time.monotonic() - t0
        a = await get_alarm(gw, pre["alarm"])
        if t_ready < 5.5:
            assert a["state"] == "prealarm"
            assert twilio_double.attempts == []
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1")) == 2, timeout=7)
        # 6 s from the man_down, not 6 s from the restart
        assert_on_time_across_restart(
            to(twilio_double, "guard-1"), t0, 6.0, t_ready, "after the prealarm window"
        )
        # a repeat of the man_down (same id) is answered with the current state, no new alarm
        n = len(p.seen)
        await p.publish(event_topic("jaa-0042"), {"id": eid, "type": "man_down"})
        again = await wait_cmd(p, "jaa-0042", "alarm_raised", lambda m: m.get("re") == eid, since=n)
        assert again["alarm"] == pre["alarm"]
        status, body = await gw.client.api("GET", "/api/alarms?state=open")
        assert status == 200
        assert [x["id"] for x in body["alarms"]] == [pre["alarm"]]


async def test_broker_stopped_mid_escalation(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double) as (gw, p, _):
        await start_session(p)
        eid = new_id("sos")
        t0 = time.monotonic()
        await p.publish(event_topic("jaa-0042"), {"id": eid, "type": "sos"})
        raised = await wait_cmd(p, "jaa-0042", "alarm_raised", lambda m: m.get("re") == eid)
        alarm_id = raised["alarm"]
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1")) == 2, timeout=3)
        await asyncio.sleep(0.3)  # the retained alarm topic has been saved by the broker
        mosquitto.stop()
        # the broker's saved retained messages are lost with its store: only a republish by
        # the gateway can bring the alarm topic back
        for f in mosquitto.workdir.glob("*.db"):
            f.unlink()
        await twilio_double.wait_for(lambda d: len(to(d, "head-security")) == 1, timeout=6)
        assert_on_time(to(twilio_double, "guard-2") + to(twilio_double, "kari"), t0, 2.0, "step 1")
        assert_on_time(to(twilio_double, "head-security"), t0, 4.0, "step 2")
        assert gw.app is not None and not gw.app.mqtt.connected
        status, health = await gw.client.api("GET", "/healthz")
        assert status == 503 and any("mqtt" in x for x in health["problems"])
        mosquitto.start()
        await eventually(lambda: gw.app is not None and gw.app.mqtt.connected, timeout=8)
        retained = await eventually(
            lambda: retained_on(mosquitto.port, alarm_topic(alarm_id), settle=0.3), timeout=5
        )
        assert retained[0].json()["state"] == "escalating"
        assert retained[0].json()["id"] == alarm_id
        # and the gateway hears devices again
        async with probe(mosquitto.port, "jaa/device/+/cmd") as p2:
            await p2.publish(event_topic("jaa-0042"), {"id": eid, "type": "sos"})
            again = await wait_cmd(p2, "jaa-0042", "alarm_raised", lambda m: m.get("re") == eid)
            assert again["alarm"] == alarm_id


async def test_an_alarm_stored_before_late_resolution_resumes_and_pages_who_is_on_duty(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    """An upgrade mid-escalation: the alarm's chain was stored by the previous version (each
    step's people frozen as `targets`), and the config changed while the gateway was down (a
    new guard on the roster, the head of security gone). The frozen steps go on; the roster is
    read when the step goes out; the person the config no longer knows is paged on the number
    frozen with the alarm, and that is audited."""

    def chain(second: list[str]) -> list[dict[str, Any]]:
        return [
            {
                "id": "guards",
                "repeat": 0,
                "repeat_after": "1s",
                "keep_paging": "0",
                "steps": [
                    {"after": "0s", "notify": ["roster:desk"], "via": ["sms"]},
                    {"after": "3s", "notify": second, "via": ["sms"]},
                ],
            }
        ]

    def before(cfg: dict[str, Any]) -> None:
        cfg["escalation_chains"] = chain(["roster:desk", "person:head-security"])

    def after(cfg: dict[str, Any]) -> None:
        cfg["rosters"][0]["shifts"][0]["people"] = ["guard-2"]
        cfg["people"] = [x for x in cfg["people"] if x["id"] != "head-security"]
        cfg["escalation_chains"] = chain(["roster:desk", "person:kari"])  # not for this alarm

    async with site(tmp_path, mosquitto, twilio_double, before) as (_gw, p, _):
        eid = new_id("sos")
        await p.publish(event_topic("jaa-0042"), {"id": eid, "type": "sos"})
        raised = await wait_cmd(p, "jaa-0042", "alarm_raised", lambda m: m.get("re") == eid)
        alarm_id = raised["alarm"]
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1")) == 1, timeout=3)
    # the previous version's shape: the people of each step frozen as `targets`
    with sqlite3.connect(tmp_path / "state.db") as db:
        (chain_json, next_k) = db.execute(
            "SELECT chain, next_k FROM alarms WHERE id = ?", (alarm_id,)
        ).fetchone()
        assert next_k == 1, "the gateway took more than 3 s to stop: step 1 already ran"
        stored = json.loads(chain_json)
        for step in stored["steps"]:
            step["targets"] = step.pop("at_open")
            del step["named"]
        assert [[t["person_id"] for t in s["targets"]] for s in stored["steps"]] == [
            ["guard-1"],
            ["guard-1", "head-security"],
        ]
        db.execute("UPDATE alarms SET chain = ? WHERE id = ?", (json.dumps(stored), alarm_id))
    async with site(tmp_path, mosquitto, twilio_double, after) as (gw, _p, _):
        await twilio_double.wait_for(
            lambda d: len(to(d, "guard-2")) == 1 and len(to(d, "head-security")) == 1, timeout=6
        )
        await asyncio.sleep(0.5)
        assert len(to(twilio_double, "guard-1")) == 1  # step 0 only: they went home
        assert to(twilio_double, "kari") == []  # the new chain does not rewrite this alarm
        a = await get_alarm(gw, alarm_id)
        step1 = [e["data"] for e in a["timeline"] if e["event"] == "escalation_step"][-1]
        assert step1["k"] == 1
        assert step1["paged"] == [
            {"person": "guard-2", "from": "roster:desk", "fallback": False},
            {"person": "head-security", "from": "person:head-security", "fallback": True},
        ]
        missing = [e["data"] for e in a["timeline"] if e["event"] == "escalation_target_missing"]
        assert missing == [{"k": 1, "entry": "person:head-security", "fallback": ["head-security"]}]
        status, body = await gw.client.api("POST", f"/api/alarms/{alarm_id}/ack", {"by": "kari"})
        assert status == 200, body
