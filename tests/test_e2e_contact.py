"""End to end: common cause (CONTRACT §4, issue 11 finding 5).

Five workers in sessions, their devices heartbeating every HB_S over their own MQTT
connections (which reconnect like a device does). Real mosquitto, stopped and started; the
Twilio double; the in-process daemon of tests/support/gateway.py (chain "guards": guard-1 by
sms + call at once, then guard-2 at 2 s and head-security at 4 s, by sms).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt

from tests.support.broker import MosquittoBroker, MqttProbe, probe
from tests.support.gateway import InProcessGateway, running_gateway, site_config
from tests.support.twilio_double import TwilioDouble
from tests.test_e2e_alarms import (
    EARLY,
    LATE,
    event_topic,
    eventually,
    get_alarm,
    new_id,
    start_session,
    timeline,
    to,
    wait_cmd,
)

WORKERS = [f"w{i}" for i in range(1, 6)]
HB_S = 0.4


def dev(worker: str) -> str:
    return f"dev-{worker}"


def five_workers(tmp_path: Path, port: int, twilio: TwilioDouble, timeout: str) -> dict[str, Any]:
    cfg = site_config(tmp_path / "state.db", port, twilio)
    cfg["timing"]["device_timeout"] = timeout
    for i, w in enumerate(WORKERS):
        cfg["people"].append(
            {
                "id": w,
                "name": f"Arbeider {i + 1}",
                "phone": f"+47912000{i:02d}",
                "roles": ["worker"],
                "supervisor": "kari",
                "hse_training_until": "2099-12-31",
            }
        )
        cfg["devices"].append({"id": dev(w), "person": w})
        cfg["assessments"].append(cfg["assessments"][0] | {"id": f"RA-{w}", "person": w})
    return cfg


class Devices:
    """The workers' devices: heartbeats every HB_S, reconnecting (like a device) while the
    broker is away; `silent` devices send nothing."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.silent: set[str] = set()
        self.sent = 0

    async def run(self) -> None:
        while True:
            try:
                async with MqttProbe(self.port) as p:
                    while True:
                        for w in WORKERS:
                            if dev(w) not in self.silent:
                                hb = {"id": new_id("hb"), "type": "heartbeat"}
                                await p.publish(event_topic(dev(w)), hb)
                                self.sent += 1
                        await asyncio.sleep(HB_S)
            except (aiomqtt.MqttError, OSError):
                await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def five_in_sessions(
    cfg: dict[str, Any],
    port: int,
    silent: set[str] = frozenset(),  # type: ignore[assignment]
) -> AsyncIterator[tuple[InProcessGateway, Devices, dict[str, str], float]]:
    """The gateway, five sessions (worker -> session id), the heartbeating devices, and the
    monotonic instant just before the first session started."""
    async with running_gateway(cfg) as gw, probe(port, "jaa/device/+/cmd") as p:
        devices = Devices(port)
        devices.silent |= silent
        beating = asyncio.create_task(devices.run())
        try:
            t0 = time.monotonic()
            sessions = {w: (await start_session(p, dev(w)))["session"] for w in WORKERS}
            yield gw, devices, sessions, t0
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating


async def sleep_until(instant: float) -> None:
    await asyncio.sleep(max(0.0, instant - time.monotonic()))


async def open_alarms(gw: InProcessGateway) -> list[dict[str, Any]]:
    status, body = await gw.client.api("GET", "/api/alarms?state=open")
    assert status == 200, body
    alarms: list[dict[str, Any]] = body["alarms"]
    return alarms


async def test_broker_outage_longer_than_device_timeout_is_one_contact_lost(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    """The broker stopped for longer than device_timeout (4 s), then back with the devices
    heartbeating: one contact_lost through default_escalation saying five sessions are
    unwatched, no device_offline; contact back, every device gets a fresh device_timeout."""
    timeout = 4.0
    cfg = five_workers(tmp_path, mosquitto.port, twilio_double, f"{timeout:g}s")
    async with five_in_sessions(cfg, mosquitto.port) as (gw, devices, _sessions, _t0):
        app = gw.app
        assert app is not None
        await asyncio.sleep(1.0)
        mosquitto.stop()
        t_stop = time.monotonic()
        # contact_lost once a watch lapses (devices heard at most HB_S before the stop), and
        # not before half a device_timeout of outage
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1", "sms")) >= 1, timeout=8)
        sms = to(twilio_double, "guard-1", "sms")[0]
        assert t_stop + timeout - HB_S - 0.3 - EARLY <= sms.at <= t_stop + timeout + LATE, (
            sms.at - t_stop
        )
        body = sms.body or ""
        assert "Mistet kontakten med alarmenhetene" in body, body
        assert "5 personer som arbeider alene, er uten overvåking" in body, body
        await sleep_until(t_stop + timeout + 3.0)  # well past every device's timeout
        mosquitto.start()
        t_back = time.monotonic()
        await eventually(lambda: app.mqtt.connected, timeout=8)
        t_connected = time.monotonic()
        # devices heartbeat again; stay well past a fresh device_timeout from the reconnect
        await sleep_until(t_connected + timeout + 2.0)
        alarms = await open_alarms(gw)
        assert [a["kind"] for a in alarms] == ["contact_lost"], alarms
        [a] = alarms
        assert (a["person"], a["location"], a["session"], a["state"]) == (
            None,
            None,
            None,
            "escalating",
        )
        full = await get_alarm(gw, a["id"])
        [lost] = timeline(full, "contact_lost")
        assert lost["data"]["cause"] == "broker" and lost["data"]["unwatched"] == 5
        [restored] = timeline(full, "contact_restored")
        assert restored["data"]["watched"] == 5
        [raised] = timeline(full, "alarm_raised")
        assert raised["data"]["chain"] == "guards"
        # one call and one SMS to guard-1, not five of each
        assert len(to(twilio_double, "guard-1", "sms")) == 1
        assert len(to(twilio_double, "guard-1", "call")) == 1
        assert devices.sent > 0
        print(
            f"\ncontact_lost sms {sms.at - t_stop:.2f} s after the broker stopped; "
            f"gateway reconnected {t_connected - t_back:.2f} s after the broker came back"
        )
        # the guard acknowledges it like any alarm
        status, _ = await gw.client.api("POST", f"/api/alarms/{a['id']}/ack", {"by": "guard-1"})
        assert status == 200
        assert await open_alarms(gw) != [] and (await get_alarm(gw, a["id"]))["state"] == (
            "acknowledged"
        )


async def test_one_silent_device_among_heartbeating_ones_raises_its_own_device_offline(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    timeout = 3.0
    cfg = five_workers(tmp_path, mosquitto.port, twilio_double, f"{timeout:g}s")
    quiet = dev("w3")
    async with (
        five_in_sessions(cfg, mosquitto.port, silent={quiet}) as (gw, _devices, sessions, t0),
        probe(mosquitto.port, f"jaa/device/{quiet}/cmd") as p,
    ):
        raised = await wait_cmd(p, quiet, "alarm_raised", timeout=timeout + 3)
        assert raised["kind"] == "device_offline"
        took = time.monotonic() - t0
        assert timeout - EARLY <= took <= timeout + 2 * LATE, took  # started over ~0.5 s
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1", "sms")) >= 1, timeout=3)
        assert "mistet forbindelsen" in (to(twilio_double, "guard-1", "sms")[0].body or "")
        await asyncio.sleep(1.0)
        alarms = await open_alarms(gw)
        assert [(a["kind"], a["session"]) for a in alarms] == [("device_offline", sessions["w3"])]


async def test_most_devices_silent_together_is_one_contact_lost_then_each_on_its_own(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    """Four of five devices fall silent together (the broker stays up: a network cut on their
    side): one contact_lost, no device_offline. Three come back: contact has returned, every
    device gets a fresh device_timeout, and the one still silent raises its own
    device_offline a device_timeout later."""
    timeout = 3.0
    cfg = five_workers(tmp_path, mosquitto.port, twilio_double, f"{timeout:g}s")
    async with (
        five_in_sessions(cfg, mosquitto.port) as (gw, devices, sessions, _t0),
        probe(mosquitto.port, "jaa/device/+/cmd") as p,
    ):
        await asyncio.sleep(1.0)
        cut = {dev(w) for w in WORKERS[1:]}
        devices.silent |= cut
        t_cut = time.monotonic()
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1", "sms")) >= 1, timeout=6)
        sms = to(twilio_double, "guard-1", "sms")[0]
        assert "4 personer som arbeider alene" in (sms.body or ""), sms.body
        assert t_cut + timeout - HB_S - EARLY <= sms.at <= t_cut + timeout + LATE
        await sleep_until(t_cut + timeout + 1.5)  # every cut device has lapsed
        assert [a["kind"] for a in await open_alarms(gw)] == ["contact_lost"]
        devices.silent -= {dev("w2"), dev("w3"), dev("w4")}
        t_heard = time.monotonic()
        raised = await wait_cmd(
            p, dev("w5"), "alarm_raised", lambda m: m["kind"] == "device_offline", timeout=8
        )
        took = time.monotonic() - t_heard
        assert timeout - EARLY <= took <= timeout + 2 * LATE, took  # a fresh device_timeout
        alarms = await open_alarms(gw)
        assert sorted((a["kind"], a["session"]) for a in alarms) == [
            ("contact_lost", None),
            ("device_offline", sessions["w5"]),
        ]
        assert raised["alarm"] in {a["id"] for a in alarms}
        lost = next(a for a in alarms if a["kind"] == "contact_lost")
        full = await get_alarm(gw, lost["id"])
        assert [e["data"]["cause"] for e in timeline(full, "contact_lost")] == ["silence"]
        assert len(timeline(full, "contact_restored")) == 1


async def test_a_broker_blip_pages_nobody(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    timeout = 6.0
    cfg = five_workers(tmp_path, mosquitto.port, twilio_double, f"{timeout:g}s")
    async with five_in_sessions(cfg, mosquitto.port) as (gw, _devices, _sessions, _t0):
        app = gw.app
        assert app is not None
        await asyncio.sleep(1.0)
        mosquitto.stop()
        await asyncio.sleep(1.0)
        mosquitto.start()
        await eventually(lambda: app.mqtt.connected, timeout=8)
        t_connected = time.monotonic()
        await sleep_until(t_connected + timeout + 1.0)
        assert await open_alarms(gw) == []
        assert twilio_double.sms == [] and twilio_double.calls == []
