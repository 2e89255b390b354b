"""Dependency faults (issue 7, item 2; CONTRACT §5, §6, §7.2, §7.4).

For each fault the gateway must not crash (or loop), must say what is wrong on /healthz, must send
the alarms it still can, and must recover by itself when the fault clears:

* the MQTT broker killed with SIGKILL and unreachable for a while (JAA_FAULT_BROKER_OUTAGE_S,
  5 s by default; run it once by hand with 60), and a broker that hangs (SIGSTOP);
* Twilio answering 500 or 429 for one number, and 429, slowly (beyond request_timeout) or not at
  all for every request (a sustained 5xx outage is tests/test_selfwatch.py's case);
* the database read-only (SQLite's own `PRAGMA query_only`, set on the gateway's one pooled
  connection through the public `app.store.engine`: as root, chmod does not stop writes) and the
  disk full (a real ENOSPC: the database on a small tmpfs filled up; skipped where `mount` is not
  permitted).

Site of tests/support/gateway.py: chain "guards" with steps at 0 s (guard-1: sms + call), 2 s
(guard-2 and kari: sms), 4 s (head-security: sms).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from jaa_gateway import logs
from jaa_gateway.domain import texts
from tests.support.broker import MosquittoBroker, MqttProbe, free_port
from tests.support.gateway import PHONES, InProcessGateway, running_gateway, site_config
from tests.support.twilio_double import Recorded, TwilioDouble
from tests.test_e2e_alarms import (
    EARLY,
    LATE,
    alarm_topic,
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
            started = await start_session(dev)
        t_started = time.monotonic()
        # both persistent sessions (gateway and device) are in the broker's autosave (1 s)
        await asyncio.sleep(1.3)
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
            assert "Uteblitt innsjekk" in (sms.body or ""), sms.body
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
            assert len(to(twilio_double, "guard-1", "sms")) == 1  # nothing sent twice
        finally:
            side.stop()
        mosquitto.start()
        async with device(mosquitto.port, dev_id) as dev:
            # the sos published while the gateway was away is processed after it reconnects
            raised = await wait_cmd(dev, "jaa-0042", "alarm_raised", lambda m: m.get("re") == sos_id)
            assert raised["kind"] == "sos"
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
        assert sorted(a["kind"] for a in body["alarms"]) == ["missed_checkin", "sos"]


async def test_explore_hung(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    def patch(cfg: dict[str, Any]) -> None:
        cfg["assessments"][0]["checkin_interval"] = "2s"

    async with site(tmp_path, mosquitto, twilio_double, patch) as (gw, p, _):
        await start_session(p)
        t0 = time.monotonic()
        mosquitto.pause()
        try:
            await twilio_double.wait_for(lambda d: len(to(d, "guard-1", "sms")) >= 1, timeout=30)
            print("missed sms at", to(twilio_double, "guard-1", "sms")[0].at - t0)
            await twilio_double.wait_for(lambda d: len(to(d, "head-security", "sms")) >= 1, timeout=30)
            for r in twilio_double.accepted:
                print(r.kind, r.to, round(r.at - t0, 2))
            for i in range(30):
                print(round(time.monotonic() - t0, 1), await healthz(gw), gw.app.mqtt.connected)
                await asyncio.sleep(1)
                if not gw.app.mqtt.connected:
                    break
        finally:
            mosquitto.resume()
