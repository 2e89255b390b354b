"""First end-to-end path: session start, sos, SMS at the double, ack by API."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

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


async def test_the_daemon_collects_garbage_again_once_started(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    twilio_double: TwilioDouble,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`jaa-gateway run` starts with the cycle collector off (start-up time, issue 6); App.run
    must freeze what start-up built and turn it back on, or a daemon would never collect."""
    from jaa_gateway import app as app_mod

    original = app_mod.App.__init__

    def init(self: app_mod.App, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.freeze_gc = True  # as run_daemon sets it

    frozen: list[bool] = []
    monkeypatch.setattr(app_mod.App, "__init__", init)
    # the test process's own objects stay collectable: record the call instead of freezing
    monkeypatch.setattr(app_mod.gc, "freeze", lambda: frozen.append(gc.isenabled()))
    gc.disable()
    try:
        cfg = site_config(tmp_path / "state.db", mosquitto.port, twilio_double)
        async with running_gateway(cfg):
            assert frozen == [False]  # frozen while still off...
            assert gc.isenabled()  # ...and on again once running
    finally:
        gc.enable()
