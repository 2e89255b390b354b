"""The gateway's own alarm: Twilio failing longer than notify.degraded_after makes the gateway
say `degraded` (status topic, /healthz, audit), try its gateway_degraded notice on every
channel, and recover by itself when Twilio comes back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.broker import MosquittoBroker
from tests.support.gateway import PHONES
from tests.support.twilio_double import TwilioDouble
from tests.test_e2e_alarms import eventually, raise_sos, site, start_session

STATUS = "jaa/gateway/status"


def fast_degrade(cfg: dict[str, Any]) -> None:
    cfg["notify"]["degraded_after"] = "1s"


def last_status(p: Any) -> dict[str, Any]:
    return json.loads([s for s in p.seen if s.topic == STATUS][-1].payload)


async def test_twilio_down_makes_the_gateway_degraded_then_it_recovers(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with site(tmp_path, mosquitto, twilio_double, fast_degrade) as (gw, p, _):
        await start_session(p)
        twilio_double.fail_next(10_000, status=503)
        await raise_sos(p)
        await p.wait_message(STATUS, lambda s: s.json()["state"] == "degraded", timeout=8)
        assert "notifications_failing" in last_status(p)["reasons"]
        status, body = await gw.client.api("GET", "/healthz", token=None)
        assert status == 503 and any("degraded" in x for x in body["problems"]), body
        # the notice was tried on both channels for the first step's guard
        await twilio_double.wait_for(
            lambda d: any(
                r.to == PHONES["guard-1"] and r.kind == "call" and "redusert" in (r.twiml or "")
                for r in d.attempts
            ),
            timeout=5,
        )
        # Twilio comes back: the retried alarm SMS goes out and the gateway recovers
        twilio_double.reset()
        await twilio_double.wait_for(lambda d: len(d.sms) >= 1, timeout=10)
        await p.wait_message(STATUS, lambda s: s.json()["state"] == "online", timeout=8)

        async def healthy() -> bool:
            return (await gw.client.api("GET", "/healthz", token=None))[0] == 200

        await eventually(healthy, timeout=5)
        status, audit = await gw.client.api("GET", "/api/audit")
        events = [e["event"] for e in audit["events"]]
        assert "gateway_degraded" in events and "gateway_recovered" in events
