"""`jaa-gateway device` / `jaa-gateway door`: contract events by hand, answers printed.

The commands run as real subprocesses against a mosquitto broker; a probe subscriber sees what
they publish and plays the gateway's part (or the real gateway answers, in the last test).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from jaa_gateway.cli import main
from tests.support.broker import HOST, MosquittoBroker, MqttProbe, free_port, probe
from tests.support.gateway import running_gateway, site_config, to_toml
from tests.support.twilio_double import TwilioDouble


async def _cli(
    *args: str, timeout: float = 20.0, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jaa_gateway.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_device_sos_is_published_qos1_and_the_answer_printed(
    mosquitto: MosquittoBroker,
) -> None:
    topic = "jaa/device/jaa-0042/event"
    async with aiomqtt.Client(HOST, mosquitto.port, identifier="qos-check") as sub:
        await sub.subscribe(topic, qos=1)

        async def gateway_double() -> dict[str, object]:
            async for m in sub.messages:
                assert m.qos == 1  # delivered at QoS 1: published at QoS 1
                event = json.loads(m.payload if isinstance(m.payload, bytes) else b"")
                answer = {
                    "type": "alarm_raised",
                    "alarm": "alm-1",
                    "kind": "sos",
                    "re": event["id"],
                }
                await sub.publish("jaa/device/jaa-0042/cmd", json.dumps(answer), qos=1)
                return event
            raise AssertionError("no event")

        double = asyncio.create_task(gateway_double())
        rc, out, err = await _cli(
            "device", "jaa-0042", "sos", "--lat", "63.418", "--lon", "10.403",
            "--port", str(mosquitto.port), "--wait", "2",
        )  # fmt: skip
        event = await asyncio.wait_for(double, 5)
    assert rc == 0, err
    assert event["type"] == "sos"
    assert event["lat"] == 63.418 and event["lon"] == 10.403
    assert isinstance(event["id"], str) and event["id"]
    assert isinstance(event["ts"], str) and event["ts"].endswith("+00:00")
    assert "-> jaa/device/jaa-0042/event" in out
    assert "<- jaa/device/jaa-0042/cmd (answers this event)" in out
    assert '"type": "alarm_raised"' in out  # printed as it came


async def test_each_run_has_a_fresh_id_unless_given(mosquitto: MosquittoBroker) -> None:
    port = str(mosquitto.port)
    async with probe(mosquitto.port, "jaa/door/+/event") as p:
        for args in (
            ("door", "door-d1-123", "badge", "04A1B2C3"),
            ("door", "door-d1-123", "badge", "04A1B2C3"),
            ("door", "door-d1-123", "badge", "04A1B2C3", "--id", "badge-7", "--action", "end"),
        ):
            rc, _, err = await _cli(*args, "--port", port, "--wait", "0")
            assert rc == 0, err
        await p.wait_message("jaa/door/door-d1-123/event", lambda s: s.json()["id"] == "badge-7")
    events = [s.json() for s in p.seen]
    assert [e["type"] for e in events] == ["badge"] * 3
    assert all(e["badge"] == "04A1B2C3" for e in events)
    assert events[0]["id"] != events[1]["id"]
    assert events[2]["id"] == "badge-7" and events[2]["action"] == "end"
    assert "action" not in events[0]


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("device", "jaa-0042", "sos", "--lat", "63.4"), "lat and lon must be given together"),
        (("device", "jaa-0042", "session_start"), "session_start needs a location"),
        (("device", "jaa-0042", "low_battery"), "low_battery needs a battery level"),
        (("device", "jaa-0042", "heartbeat", "--battery", "140"), "battery must be within"),
        (("device", "jaa-0042", "session_start", "--location", "a/b"), "location must be an id"),
        (("device", "jaa 42", "heartbeat"), "not a valid device id"),
        (("door", "door-d1-123", "badge"), "a badge event needs a badge"),
        (("door", "door-d1-123", "open", "04A1B2C3"), "belong to a badge event only"),
        (("device", "jaa-0042", "heartbeat", "--wait", "-1"), "--wait must be between"),
    ],
)
def test_bad_input_is_refused_before_connecting(
    args: tuple[str, ...], why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # nobody listens on this port: a command that tried to send would fail with 1, not 2
    rc = main([*args, "--port", str(free_port())])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert why in err


def test_unknown_event_type_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["device", "jaa-0042", "explode"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


async def test_broker_down_is_a_clear_error() -> None:
    rc, _, err = await _cli("device", "jaa-0042", "heartbeat", "--port", str(free_port()))
    assert rc == 1
    assert "error: MQTT broker 127.0.0.1:" in err


async def test_config_gives_broker_and_prefix(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    cfg = site_config(tmp_path / "state.db", mosquitto.port, None)
    cfg["mqtt"]["topic_prefix"] = "site7"
    path = tmp_path / "site.toml"
    path.write_text(to_toml(cfg))
    async with probe(mosquitto.port, "site7/#") as p:
        rc, _, err = await _cli(
            "device", "jaa-0042", "heartbeat", "--battery", "55", "--config", str(path),
            "--wait", "0",
        )  # fmt: skip
        assert rc == 0, err
        seen = await p.wait_message("site7/device/jaa-0042/event")
    assert seen.json()["battery"] == 55


async def test_against_the_real_gateway(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    cfg = site_config(tmp_path / "state.db", mosquitto.port, twilio_double)
    port = str(mosquitto.port)
    async with running_gateway(cfg):
        rc, out, err = await _cli(
            "device", "jaa-0042", "session_start", "--location", "d1-123", "--port", port,
            "--wait", "1",
        )  # fmt: skip
        assert rc == 0, err
        assert '"type":"session_started"' in out and "(answers this event)" in out
        rc, out, err = await _cli(
            "door", "door-d1-123", "badge", "FFFF0000", "--port", port, "--wait", "1"
        )
        assert rc == 0, err
        assert '"reason":"unknown_badge"' in out


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker like production: no anonymous access, each device pinned to its own topics."""
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    for i, (user, password) in enumerate((("jaa-0042", "device-secret"), ("admin", "admin-pw"))):
        create = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", "-b", *create, str(passwd), user, password], check=True)
    acl.write_text(
        "user admin\ntopic readwrite jaa/#\n"
        "pattern write jaa/device/%u/event\npattern read jaa/device/%u/cmd\n"
    )
    broker = MosquittoBroker(
        tmp_path / "broker",
        anonymous=False,
        extra_conf=f"password_file {passwd}\nacl_file {acl}\n",
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_logs_in_as_the_device_with_the_password_from_the_environment(
    secured_broker: MosquittoBroker,
) -> None:
    port = str(secured_broker.port)
    async with MqttProbe(secured_broker.port, username="admin", password="admin-pw") as p:
        await p.subscribe("jaa/device/+/event")
        env = {**os.environ, "JAA_MQTT_PASSWORD": "device-secret"}
        rc, _, err = await _cli(
            "device", "jaa-0042", "checkin", "--port", port, "--wait", "0", env=env
        )
        assert rc == 0, err
        await p.wait_message("jaa/device/jaa-0042/event", lambda s: s.json()["type"] == "checkin")
        # without the password the broker refuses the login: a clear error, exit 1
        env.pop("JAA_MQTT_PASSWORD")
        rc, _, err = await _cli("device", "jaa-0042", "checkin", "--port", port, env=env)
        assert rc == 1 and "error: MQTT broker" in err, err
