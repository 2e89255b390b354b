"""First end-to-end path: session start, sos, SMS at the double, ack by API."""

from __future__ import annotations

from pathlib import Path

from tests.support.broker import MosquittoBroker, probe
from tests.support.gateway import running_gateway, site_config
from tests.support.twilio_double import TwilioDouble


async def test_session_then_sos_then_api_ack(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    cfg = site_config(tmp_path / "state.db", mosquitto.port, twilio_double)
    async with running_gateway(cfg) as gw, probe(mosquitto.port, "jaa/#") as p:
        await p.publish(
            "jaa/device/jaa-0042/event", {"id": "e1", "type": "session_start", "location": "d1-123"}
        )
        started = await p.wait_message(
            "jaa/device/jaa-0042/cmd", lambda s: s.json()["type"] == "session_started"
        )
        assert started.json()["location"] == "d1-123"
        await p.publish("jaa/device/jaa-0042/event", {"id": "e2", "type": "sos"})
        raised = await p.wait_message(
            "jaa/device/jaa-0042/cmd", lambda s: s.json()["type"] == "alarm_raised"
        )
        alarm_id = raised.json()["alarm"]
        await twilio_double.wait_for(lambda d: len(d.sms) >= 1 and len(d.calls) >= 1)
        sms = twilio_double.sms[0]
        assert sms.to == "+4791234569"
        assert "Ola Nordmann" in (sms.body or "")
        status, body = await gw.client.api("GET", "/api/alarms?state=open")
        assert status == 200 and [a["id"] for a in body["alarms"]] == [alarm_id]
        status, body = await gw.client.api("POST", f"/api/alarms/{alarm_id}/ack", {"by": "guard-1"})
        assert status == 200, body
        assert body["state"] == "acknowledged"
        ack = await p.wait_message(
            "jaa/device/jaa-0042/cmd", lambda s: s.json()["type"] == "alarm_acknowledged"
        )
        assert ack.json()["by"] == "guard-1"
