"""Issue 17: a burst of alarms on a broker that carries nothing else.

100 sos from 100 devices, 20 ms apart, against a fresh mosquitto with no other client than the
gateway and the test's publisher (no heartbeats, no probe subscribed), through the real daemon
(`jaa-gateway run`, a child process) and the Twilio double. Each SMS request must reach the
double within 250 ms of its sos at the 95th percentile.

Why a quiet broker: the gateway used to wait for the broker's PUBACK of one event's answer before
taking the next event, and its MQTT socket had Nagle on, so that answer sat in the kernel until
the broker's delayed ACK (~40 ms) unless other traffic came by first. The gateway then took one
event per ~40 ms; with 20 ms between alarms the queue grew by 20 ms per alarm (old code: p50
~240 ms, p95 ~740 ms for this burst). Frequent broker traffic (heartbeats) hid it, which is why
the loaded benchmark and the other end-to-end tests never saw it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from jaa_gateway.adapters.events import parse_message
from jaa_gateway.timeutil import utcnow
from tests.support.broker import HOST, MosquittoBroker, probe
from tests.support.gateway import GatewayProcess, running_gateway, site_config
from tests.support.twilio_double import TwilioDouble
from tests.test_e2e_alarms import eventually, wait_cmd

ALARMS = 100
SPACING_S = 0.020
P95_LIMIT_S = 0.250
ANSWER_MEDIAN_LIMIT_S = 0.030
# far below the edge's 10 s operation timeout, far above a loaded box's handling time
HUNG_PAGE_LIMIT_S = 2.0


def burst_device(i: int) -> str:
    return f"burst-{i:03d}"


def burst_site(db: Path, broker_port: int, twilio: TwilioDouble) -> dict[str, Any]:
    """The test site plus one worker per burst device; every alarm pages guard-1 by SMS."""
    cfg = site_config(db, broker_port, twilio)
    for i in range(ALARMS):
        dev = burst_device(i)
        # the SMS names the worker: the device id in the name matches SMS to sos
        cfg["people"].append(
            {"id": f"w-{dev}", "name": f"Arbeider {dev}", "phone": f"+4795{i:06d}"}
        )
        cfg["devices"].append({"id": dev, "person": f"w-{dev}"})
    cfg["escalation_chains"][0]["steps"] = [
        {"after": "0s", "notify": ["roster:desk"], "via": ["sms"]}
    ]
    return cfg


class Burst(threading.Thread):
    """Publishes the burst from its own thread (paho), on a fixed 20 ms schedule, stamping
    each sos with time.monotonic() just before it is handed to the socket."""

    def __init__(self, port: int) -> None:
        super().__init__(name="sos-burst", daemon=True)
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"quiet-burst-{os.getpid()}",
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        self.client.max_inflight_messages_set(ALARMS)
        self.client.connect(HOST, port)
        self.client.loop_start()
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the publisher is not tested
        self.sent: dict[str, float] = {}

    def run(self) -> None:
        start = time.monotonic() + 0.05
        for i in range(ALARMS):
            delay = start + i * SPACING_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            dev = burst_device(i)
            body = json.dumps({"id": f"sos-{i}-{time.monotonic_ns()}", "type": "sos"})
            self.sent[dev] = time.monotonic()
            self.client.publish(f"jaa/device/{dev}/event", body, qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def stage_means_ms(base: str) -> dict[str, float]:
    """The daemon's own per-stage timings of urgent events (mean ms since the edge received
    them), from its /metrics: for the report, and to show where the time went."""
    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
        text = await r.text()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("jaa_event_stage_seconds_") or 'priority="urgent"' not in line:
            continue
        name, _, value = line.rpartition(" ")
        stage = name.split('stage="', 1)[1].split('"', 1)[0]
        if name.startswith("jaa_event_stage_seconds_sum"):
            sums[stage] = float(value)
        elif name.startswith("jaa_event_stage_seconds_count"):
            counts[stage] = float(value)
    return {
        stage: round(sums[stage] / counts[stage] * 1000, 1) for stage in sums if counts.get(stage)
    }


async def test_quiet_burst_of_100_sos_each_sms_within_250_ms_at_p95(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    gw = GatewayProcess(burst_site(tmp_path / "state.db", mosquitto.port, twilio_double), tmp_path)
    gw.start()
    burst: Burst | None = None
    try:
        await gw.wait_ready()
        burst = await asyncio.to_thread(Burst, mosquitto.port)
        burst.start()
        # every sos gets its SMS (none lost, however late), then the figures
        await twilio_double.wait_for(lambda d: len(d.sms) >= ALARMS, timeout=30)
        await asyncio.to_thread(burst.join, 5)
        latency: dict[str, float] = {}
        for r in twilio_double.sms:
            for dev, t0 in burst.sent.items():
                if dev in (r.body or "") and dev not in latency:
                    latency[dev] = r.at - t0
        assert sorted(latency) == sorted(burst.sent), "an SMS per sos, each naming its worker"
        values = sorted(latency.values())
        p50 = values[len(values) // 2 - 1]
        p95 = values[int(0.95 * len(values)) - 1]  # nearest rank
        stages = await stage_means_ms(gw.base)
        print(
            f"\nquiet burst, {ALARMS} sos {SPACING_S * 1000:.0f} ms apart: sos -> SMS request "
            f"p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, max {values[-1] * 1000:.1f} ms, "
            f"mean {statistics.fmean(values) * 1000:.1f} ms; the daemon's stages (mean ms "
            f"since received): {stages}"
        )
        assert p95 <= P95_LIMIT_S, (
            f"p95 {p95 * 1000:.0f} ms > {P95_LIMIT_S * 1000:.0f} ms "
            f"(p50 {p50 * 1000:.0f} ms, max {values[-1] * 1000:.0f} ms)"
        )
    finally:
        if burst is not None:
            await asyncio.to_thread(burst.close)
        await asyncio.to_thread(gw.terminate)


class Device:
    """One client as a device would be: it publishes sos and hears its answers (paho, own
    thread, stamped with time.monotonic())."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"quiet-device-{os.getpid()}",
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        self.answered: dict[str, float] = {}
        self.client.on_message = self._on_message
        self.client.connect(HOST, port)
        self.client.loop_start()
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.subscribe("jaa/device/+/cmd", qos=1)

    def _on_message(self, cl: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        if body.get("type") == "alarm_raised":
            self.answered.setdefault(str(body["re"]), time.monotonic())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def test_answers_reach_the_device_at_once_on_a_quiet_broker(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    """The gateway's answer goes out right after its PUBACK of the event. With Nagle on the
    gateway's socket it waited for the broker to ACK that PUBACK, which a broker with nothing
    else to say does only when its delayed-ACK timer fires: every answer ~40-50 ms late
    (measured on the old socket: median 44 ms of 20). TCP_NODELAY sends it at once."""
    gw = GatewayProcess(burst_site(tmp_path / "state.db", mosquitto.port, twilio_double), tmp_path)
    gw.start()
    dev: Device | None = None
    try:
        await gw.wait_ready()
        dev = await asyncio.to_thread(Device, mosquitto.port)
        await asyncio.sleep(0.3)  # subscribed; nothing else moves on the broker
        sent: dict[str, float] = {}
        for i in range(20):
            eid = f"sos-{i}-{time.monotonic_ns()}"
            sent[eid] = time.monotonic()
            body = json.dumps({"id": eid, "type": "sos"})
            dev.client.publish(f"jaa/device/{burst_device(i)}/event", body, qos=1)
            await asyncio.sleep(0.2)  # one at a time: the burst test covers the queueing
        await twilio_double.wait_for(lambda d: len(d.sms) >= len(sent), timeout=10)
        await eventually(lambda: len(dev.answered) >= len(sent), timeout=5)
        assert set(dev.answered) == set(sent), "every sos answered"
        values = sorted(dev.answered[e] - t0 for e, t0 in sent.items())
        median = statistics.median(values)
        print(
            f"\nquiet broker, sos -> alarm_raised answer on the device topic: median "
            f"{median * 1000:.1f} ms, max {values[-1] * 1000:.1f} ms (n={len(values)})"
        )
        # a delayed ACK is 40 ms at least (Linux): 30 ms separates the two on a loaded box
        assert median < ANSWER_MEDIAN_LIMIT_S, f"median {median * 1000:.1f} ms"
    finally:
        if dev is not None:
            await asyncio.to_thread(dev.close)
        await asyncio.to_thread(gw.terminate)


async def test_events_do_not_wait_for_a_hung_broker_to_acknowledge_earlier_answers(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    """The broker hangs (SIGSTOP: sockets open, nothing acknowledged) with five sos already
    taken off the wire by the gateway (aiomqtt acknowledges before handing a message over).
    Each is paged at once: handling one never waits for the PUBACK of the previous one's
    answers, which here would come only when the edge gives up on the broker (its operation
    timeout, 10 s: the old code paged the second sos 10 s late). The answers wait in the edge's
    buffer and reach the devices, in order, once the broker answers again."""
    cfg = burst_site(tmp_path / "state.db", mosquitto.port, twilio_double)
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/device/+/cmd") as p:
        app = gw.app
        assert app is not None
        ids = [f"sos-hung-{i}-{time.monotonic_ns()}" for i in range(5)]
        mosquitto.pause()
        try:
            t0 = time.monotonic()
            for i, eid in enumerate(ids):
                topic = f"jaa/device/{burst_device(i)}/event"
                body = json.dumps({"id": eid, "type": "sos"}).encode()
                # what the MQTT edge does with a message it has taken off the wire
                await app._enqueue(parse_message("jaa", topic, body, utcnow()))
            await twilio_double.wait_for(lambda d: len(d.sms) >= len(ids), timeout=8)
            paged = [r.at - t0 for r in twilio_double.sms]
            print(f"\nbroker hung: {len(ids)} sos paged after {[round(s, 3) for s in paged]} s")
            assert max(paged) < HUNG_PAGE_LIMIT_S, paged
        finally:
            mosquitto.resume()
        for i, eid in enumerate(ids):
            answer = await wait_cmd(p, burst_device(i), "alarm_raised", timeout=8)
            assert answer["re"] == eid
