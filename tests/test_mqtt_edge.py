"""The MQTT edge against a real mosquitto (tests/support/broker.py): delivery, persistent
session, rejects, reconnects, status/last will and the outgoing buffer."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from pydantic import SecretStr

from jaa_gateway.adapters.mqtt import MAX_IN_FLIGHT, MqttEdge, reconnect_delay
from jaa_gateway.config import MqttSection
from jaa_gateway.domain.events import DeviceEvent, DoorEvent
from jaa_gateway.metrics import Metrics
from tests.support.broker import MosquittoBroker, MqttProbe, free_port, probe

REPO = Path(__file__).resolve().parents[1]
STATUS = "jaa/gateway/status"
Event = DeviceEvent | DoorEvent


class Collector:
    """An on_event handler that records events and lets a test wait for them."""

    def __init__(self, fail_on: Callable[[Event], bool] = lambda _: False) -> None:
        self.events: list[Event] = []
        self._fail_on = fail_on
        self._changed = asyncio.Event()

    async def __call__(self, ev: Event) -> None:
        if self._fail_on(ev):
            raise RuntimeError("handler failure injected by the test")
        self.events.append(ev)
        self._changed.set()

    async def wait_for(self, pred: Callable[[list[Event]], bool], timeout: float = 5.0) -> None:
        async def loop() -> None:
            while not pred(self.events):
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            raise AssertionError(f"condition not met; events: {self.events}") from None

    def ids(self) -> list[str]:
        return [e.id for e in self.events]


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll until pred() holds; returns the seconds it took."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


def section(port: int, client_id: str = "jaa-gw-test", **kw: Any) -> MqttSection:
    return MqttSection(host="127.0.0.1", port=port, client_id=client_id, topic_prefix="jaa", **kw)


@asynccontextmanager
async def running_edge(
    port: int,
    on_event: Callable[[Event], Awaitable[None]],
    *,
    metrics: Metrics | None = None,
    wait_connected: bool = True,
    edge: MqttEdge | None = None,
    **kw: Any,
) -> AsyncIterator[MqttEdge]:
    edge = edge or MqttEdge(section(port), metrics or Metrics(), on_event, **kw)
    task = asyncio.create_task(edge.run(), name="edge-under-test")
    try:
        if wait_connected:
            await wait_until(lambda: edge.connected)
        yield edge
    finally:
        await edge.stop()
        await asyncio.wait_for(task, 10)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# ---------------------------------------------------------------------------- inbound


async def test_events_reach_the_handler(mosquitto: MosquittoBroker) -> None:
    got = Collector()
    metrics = Metrics()
    async with running_edge(mosquitto.port, got, metrics=metrics), probe(mosquitto.port) as p:
        await p.publish(
            "jaa/device/jaa-0042/event", {"id": "e1", "type": "sos", "lat": 63.4, "lon": 10.4}
        )
        await p.publish("jaa/door/door-1/event", {"id": 7, "type": "badge", "badge": "04A1"})
        await got.wait_for(lambda evs: len(evs) == 2)
    sos, badge = got.events
    assert isinstance(sos, DeviceEvent) and (sos.device_id, sos.type, sos.lat) == (
        "jaa-0042",
        "sos",
        63.4,
    )
    assert isinstance(badge, DoorEvent) and (badge.door_id, badge.id, badge.badge) == (
        "door-1",
        "7",
        "04A1",
    )
    assert sos.received_at.tzinfo is not None
    assert sample(metrics, "jaa_mqtt_messages_received_total") == 2


async def test_received_at_comes_from_the_injected_clock(mosquitto: MosquittoBroker) -> None:
    import datetime as dt

    fixed = dt.datetime(2026, 10, 25, 1, 30, tzinfo=dt.UTC)
    got = Collector()
    async with running_edge(mosquitto.port, got, clock=lambda: fixed), probe(mosquitto.port) as p:
        await p.publish("jaa/device/d1/event", {"id": "1", "type": "checkin"})
        await got.wait_for(lambda evs: len(evs) == 1)
    assert got.events[0].received_at == fixed


async def test_bad_inputs_are_rejected_counted_and_the_next_good_one_is_processed(
    mosquitto: MosquittoBroker,
) -> None:
    got = Collector()
    metrics = Metrics()
    bad: list[tuple[str, str, Any]] = [
        ("bad_topic", "jaa/device/not ok!/event", {"id": "1", "type": "checkin"}),
        ("too_large", "jaa/device/d1/event", b"{" + b" " * 5000 + b"}"),
        ("bad_json", "jaa/device/d1/event", b"{not json"),
        ("bad_json", "jaa/device/d1/event", b"\xc3\x28"),
        ("not_object", "jaa/device/d1/event", b"[1, 2]"),
        ("bad_field", "jaa/device/d1/event", {"id": "2", "type": "heartbeat", "battery": 101}),
        ("bad_field", "jaa/door/door-1/event", {"id": "3", "type": "badge"}),
        ("unknown_type", "jaa/door/door-1/event", {"id": "4", "type": "sos"}),
    ]
    async with running_edge(mosquitto.port, got, metrics=metrics), probe(mosquitto.port) as p:
        for _, topic, payload in bad:
            await p.publish(topic, payload)
        await p.publish("jaa/device/d1/event", {"id": "good", "type": "checkin"})
        await got.wait_for(lambda evs: len(evs) >= 1)
        await asyncio.sleep(0.1)  # anything wrongly accepted would show up by now
    assert got.ids() == ["good"]
    expected: dict[str, int] = {}
    for reason, _, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1
    for reason, count in expected.items():
        assert sample(metrics, "jaa_rejected_messages_total", reason=reason) == count, reason
    assert sample(metrics, "jaa_mqtt_messages_received_total") == 1


async def test_a_failing_handler_is_counted_and_does_not_stop_the_loop(
    mosquitto: MosquittoBroker,
) -> None:
    got = Collector(fail_on=lambda ev: ev.id == "boom")
    metrics = Metrics()
    async with (
        running_edge(mosquitto.port, got, metrics=metrics) as edge,
        probe(mosquitto.port) as p,
    ):
        await p.publish("jaa/device/d1/event", {"id": "boom", "type": "sos"})
        await p.publish("jaa/device/d1/event", {"id": "after", "type": "sos"})
        await got.wait_for(lambda evs: evs and evs[-1].id == "after")
        assert edge.connected
    assert got.ids() == ["after"]
    assert edge.handler_errors == 1
    assert sample(metrics, "jaa_rejected_messages_total", reason="handler_error") == 1


async def test_a_slow_handler_applies_backpressure_without_losing_events(
    mosquitto: MosquittoBroker,
) -> None:
    got: list[str] = []

    async def slow(ev: Event) -> None:
        await asyncio.sleep(0.002)
        got.append(ev.id)

    async with running_edge(mosquitto.port, slow), probe(mosquitto.port) as p:
        for i in range(300):
            await p.publish("jaa/device/d1/event", {"id": i, "type": "heartbeat"})
        await wait_until(lambda: len(got) == 300, timeout=10)
    assert got == [str(i) for i in range(300)]


# ---------------------------------------------------------------------------- session


async def test_events_published_while_the_edge_is_away_arrive_after_it_returns(
    mosquitto: MosquittoBroker,
) -> None:
    first = Collector()
    async with running_edge(mosquitto.port, first):
        pass  # establishes the persistent session and its subscriptions, then stops cleanly
    async with probe(mosquitto.port) as p:
        for i in range(50):
            await p.publish("jaa/device/d1/event", {"id": f"q{i}", "type": "checkin"})
    second = Collector()
    async with running_edge(mosquitto.port, second):
        await second.wait_for(lambda evs: len(evs) == 50)
    assert second.ids() == [f"q{i}" for i in range(50)]
    assert first.events == []


async def test_queued_events_survive_a_broker_restart_too(mosquitto: MosquittoBroker) -> None:
    async with running_edge(mosquitto.port, Collector()):
        pass
    async with probe(mosquitto.port) as p:
        await p.publish("jaa/device/d1/event", {"id": "kept", "type": "sos"})
    mosquitto.restart()  # SIGTERM: the broker saves sessions and queues (persistence true)
    got = Collector()
    async with running_edge(mosquitto.port, got):
        await got.wait_for(lambda evs: len(evs) == 1)
    assert got.ids() == ["kept"]


async def test_broker_restart_reconnects_and_delivers(mosquitto: MosquittoBroker) -> None:
    got = Collector()
    metrics = Metrics()
    connects = 0

    async def on_connect() -> None:
        nonlocal connects
        connects += 1

    async with running_edge(mosquitto.port, got, metrics=metrics, on_connect=on_connect) as edge:
        await wait_until(lambda: connects == 1)
        t_stop = time.monotonic()
        mosquitto.stop()
        lost_after = await wait_until(lambda: not edge.connected)
        assert sample(metrics, "jaa_mqtt_connected") == 0
        await asyncio.sleep(1.0)
        mosquitto.start()
        t_up = time.monotonic()
        await wait_until(lambda: edge.connected, timeout=BACKOFF_BOUND)
        t_back = time.monotonic()
        await wait_until(lambda: connects == 2)
        async with probe(mosquitto.port) as p:
            await p.publish("jaa/device/d1/event", {"id": "after-restart", "type": "sos"})
            await got.wait_for(lambda evs: len(evs) == 1)
    assert sample(metrics, "jaa_mqtt_reconnects_total") == 2
    print(
        f"\nreconnect: loss noticed {lost_after * 1000:.0f} ms after broker stop; "
        f"reconnected {(t_back - t_up) * 1000:.0f} ms after the broker was ready; "
        f"{t_back - t_stop:.2f} s from broker stop (broker down ~1 s)"
    )


# The first retry comes after 0.1-0.2 s and the pause never exceeds BACKOFF_CAP (5 s).
BACKOFF_BOUND = 5.5


def test_backoff_is_jittered_exponential_and_capped() -> None:
    assert reconnect_delay(0, lambda: 0.0) == pytest.approx(0.1)
    assert reconnect_delay(0, lambda: 1.0) == pytest.approx(0.2)
    assert reconnect_delay(3, lambda: 1.0) == pytest.approx(1.6)
    assert reconnect_delay(50, lambda: 1.0) == pytest.approx(5.0)
    assert reconnect_delay(50, lambda: 0.0) == pytest.approx(2.5)
    assert len({round(reconnect_delay(4), 6) for _ in range(20)}) > 1


async def test_stop_while_the_broker_is_unreachable_is_prompt(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "never-started")  # a free port nobody listens on
    async with running_edge(broker.port, Collector(), wait_connected=False) as edge:
        await asyncio.sleep(0.5)
        assert not edge.connected
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 1.0


async def test_refused_credentials_never_count_as_connected(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    _passwd(pw, {"gw": "right"})
    broker = MosquittoBroker(tmp_path / "auth", anonymous=False, extra_conf=f"password_file {pw}")
    broker.start()
    try:
        wrong = Metrics()
        bad = MqttEdge(
            section(broker.port, username="gw", password=SecretStr("wrong")), wrong, Collector()
        )
        async with running_edge(broker.port, Collector(), edge=bad, wait_connected=False):
            seen_connected = False
            for _ in range(100):  # 1 s: several refused attempts
                seen_connected |= bad.connected
                await asyncio.sleep(0.01)
        assert not seen_connected
        assert sample(wrong, "jaa_mqtt_reconnects_total") == 0
        assert sample(wrong, "jaa_mqtt_connected") == 0

        good = MqttEdge(
            section(broker.port, username="gw", password=SecretStr("right")), Metrics(), Collector()
        )
        async with running_edge(broker.port, Collector(), edge=good):
            assert good.connected
    finally:
        broker.stop()


# ---------------------------------------------------------------------------- status


async def test_online_is_retained_after_connect_and_offline_after_stop(
    mosquitto: MosquittoBroker,
) -> None:
    metrics = Metrics()
    async with running_edge(mosquitto.port, Collector(), metrics=metrics) as edge:
        async with probe(mosquitto.port, STATUS) as p:
            m = await p.wait_message(STATUS)
            assert m.retain and m.json() == {"state": "online"}
        assert sample(metrics, "jaa_mqtt_connected") == 1
    assert not edge.connected
    assert sample(metrics, "jaa_mqtt_connected") == 0
    async with probe(mosquitto.port, STATUS) as p:
        m = await p.wait_message(STATUS)
        assert m.retain and m.json() == {"state": "offline"}


EDGE_SCRIPT = """
import asyncio, sys
from jaa_gateway.adapters.mqtt import MqttEdge
from jaa_gateway.config import MqttSection
from jaa_gateway.metrics import Metrics

async def main() -> None:
    async def on_event(ev):
        pass
    section = MqttSection(host="127.0.0.1", port=int(sys.argv[1]), client_id="jaa-gw-child")
    await MqttEdge(section, Metrics(), on_event).run()

asyncio.run(main())
"""


async def test_last_will_says_offline_when_the_process_dies(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    script = tmp_path / "edge_child.py"
    script.write_text(EDGE_SCRIPT)
    async with probe(mosquitto.port, STATUS) as p:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            str(mosquitto.port),
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            await p.wait_message(STATUS, lambda m: m.json() == {"state": "online"}, timeout=10)
            mark = len(p.seen)
            child.send_signal(signal.SIGKILL)
            await asyncio.wait_for(child.wait(), 5)
            # The kernel closes the socket without a DISCONNECT: the broker sends the will.
            m = await p.wait_message(STATUS, since=mark, timeout=5)
            assert m.json() == {"state": "offline"}
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    async with probe(mosquitto.port, STATUS) as p:
        m = await p.wait_message(STATUS)
        assert m.retain and m.json() == {"state": "offline"}


# ---------------------------------------------------------------------------- outbound


async def test_publish_when_connected_reaches_subscribers(mosquitto: MosquittoBroker) -> None:
    async with (
        running_edge(mosquitto.port, Collector()) as edge,
        probe(mosquitto.port, "jaa/#") as p,
    ):
        topic = edge.topics.device_cmd("jaa-0042")
        await edge.publish(topic, {"type": "alarm_raised", "alarm": "A1", "kind": "sos"})
        m = await p.wait_message(topic)
        assert m.json() == {"type": "alarm_raised", "alarm": "A1", "kind": "sos"}
        assert not m.retain
        await edge.publish(edge.topics.alarm("A1"), {"id": "A1"}, retain=True)
        await edge.publish(edge.topics.alarm("A1"), None, retain=True)  # resolved: clear it
    async with probe(mosquitto.port, "jaa/gateway/alarm/#") as p2:
        await asyncio.sleep(0.2)
        assert p2.seen == []  # an empty retained message removed the alarm


def test_topic_helpers_refuse_ids_that_would_escape_their_topic() -> None:
    edge = MqttEdge(section(1), Metrics(), Collector())  # the edge uses the core's builders
    assert edge.topics.device_cmd("jaa-0042") == "jaa/device/jaa-0042/cmd"
    assert edge.topics.door_cmd("door-1") == "jaa/door/door-1/cmd"
    assert edge.topics.alarm("A-17") == "jaa/gateway/alarm/A-17"
    for bad in ["a/b", "#", "+", "", "x y"]:
        with pytest.raises(ValueError):
            edge.topics.device_cmd(bad)
    for bad in ["a/b", "#", "+", ""]:
        with pytest.raises(ValueError):
            edge.topics.alarm(bad)


async def test_buffered_while_disconnected_flushed_in_order_bounded_and_retained_replaced(
    mosquitto: MosquittoBroker,
) -> None:
    edge = MqttEdge(section(mosquitto.port), Metrics(), Collector(), buffer_limit=4)
    async with probe(mosquitto.port, "jaa/#") as p:
        t0 = time.monotonic()
        for i in range(5):  # not connected yet: parked, the oldest one dropped at the limit
            await edge.publish(edge.topics.device_cmd("d1"), {"n": i})
        await edge.publish(edge.topics.alarm("A1"), {"state": "prealarm"}, retain=True)
        await edge.publish(edge.topics.alarm("A1"), {"state": "escalating"}, retain=True)
        assert time.monotonic() - t0 < 0.1  # never waits for a broker it does not have
        # Limit 4: n=0 and n=1 went to make room; the first A1 value was replaced.
        assert edge.buffered == 4
        assert edge.dropped_publishes == 2
        async with running_edge(mosquitto.port, Collector(), edge=edge):
            await p.wait_message("jaa/gateway/alarm/A1")
            await wait_until(lambda: edge.buffered == 0)
            await asyncio.sleep(0.1)
    cmds = [m.json()["n"] for m in p.seen if m.topic == "jaa/device/d1/cmd"]
    alarms = [m.json() for m in p.seen if m.topic == "jaa/gateway/alarm/A1"]
    assert cmds == [2, 3, 4]
    assert alarms == [{"state": "escalating"}]


async def test_publishes_during_a_broker_outage_are_flushed_after_reconnect(
    mosquitto: MosquittoBroker,
) -> None:
    # A persistent probe session, so what the edge sends right after the restart is queued for
    # the probe even before the probe itself has reconnected.
    async with MqttProbe(mosquitto.port, client_id="observer", clean_session=False) as p:
        await p.subscribe("jaa/device/+/cmd")
    async with running_edge(mosquitto.port, Collector()) as edge:
        mosquitto.stop()
        await wait_until(lambda: not edge.connected)
        for i in range(20):
            await edge.publish(edge.topics.device_cmd("d1"), {"n": i})
        assert edge.buffered == 20
        mosquitto.start()
        await wait_until(lambda: edge.connected, timeout=BACKOFF_BOUND)
        await wait_until(lambda: edge.buffered == 0)
        async with MqttProbe(mosquitto.port, client_id="observer", clean_session=False) as p:
            await p.wait_message("jaa/device/d1/cmd", lambda m: m.json()["n"] == 19)
    assert [m.json()["n"] for m in p.seen] == list(range(20))


async def test_on_connect_can_republish_retained_alarms(mosquitto: MosquittoBroker) -> None:
    edge_ref: list[MqttEdge] = []

    async def on_connect() -> None:
        await edge_ref[0].publish("jaa/gateway/alarm/A9", {"id": "A9"}, retain=True)

    edge = MqttEdge(section(mosquitto.port), Metrics(), Collector(), on_connect=on_connect)
    edge_ref.append(edge)
    async with running_edge(mosquitto.port, Collector(), edge=edge):
        async with probe(mosquitto.port, "jaa/gateway/alarm/+") as p:
            m = await p.wait_message("jaa/gateway/alarm/A9")
            assert m.retain and m.json() == {"id": "A9"}


async def test_unacknowledged_sends_go_again_first_and_in_order(
    mosquitto: MosquittoBroker,
) -> None:
    async with MqttProbe(mosquitto.port, client_id="observer", clean_session=False) as p:
        await p.subscribe("jaa/device/+/cmd")
    mosquitto.restart()  # saves the observer's session to disk: it must survive the SIGKILL
    n = MAX_IN_FLIGHT + 22
    async with running_edge(mosquitto.port, Collector()) as edge:
        mosquitto.pause()  # sends go out but are never acknowledged
        sends = [
            asyncio.create_task(edge.publish(edge.topics.device_cmd("d1"), {"n": i}))
            for i in range(n)
        ]
        await asyncio.sleep(0.2)
        assert edge.buffered == n - MAX_IN_FLIGHT  # a window in flight, the rest behind it
        mosquitto.kill()  # the connection dies with the sends unacknowledged
        await wait_until(lambda: not edge.connected)
        await asyncio.wait_for(asyncio.gather(*sends), 2)  # callers are released, not stuck
        assert edge.buffered == n
        mosquitto.start()
        await wait_until(lambda: edge.connected, timeout=BACKOFF_BOUND)
        await wait_until(lambda: edge.buffered == 0)
        async with MqttProbe(mosquitto.port, client_id="observer", clean_session=False) as p:
            await p.wait_message("jaa/device/d1/cmd", lambda m: m.json()["n"] == n - 1)
    assert [m.json()["n"] for m in p.seen] == list(range(n))


# ---------------------------------------------------------------------------- production broker


def _passwd(path: Path, accounts: dict[str, str]) -> None:
    for user, secret in accounts.items():
        flags = ["-b", "-c"] if not path.exists() else ["-b"]
        subprocess.run(["mosquitto_passwd", *flags, str(path), user, secret], check=True)


def _make_certs(d: Path) -> None:
    d.mkdir()
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make a test CA"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=t")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext",
    )  # fmt: skip


def _production_broker(tmp: Path, accounts: dict[str, str]) -> tuple[MosquittoBroker, int]:
    """config/mosquitto as shipped, with only ports and file locations moved into tmp."""
    _make_certs(tmp / "certs")
    (tmp / "jaa").mkdir()
    (tmp / "data").mkdir()
    shutil.copy(REPO / "config/mosquitto/acl", tmp / "jaa/acl")
    _passwd(tmp / "jaa/passwd", accounts)
    plain, tls = free_port(), free_port()
    text = (REPO / "config/mosquitto/mosquitto.conf").read_text()
    for old, new in [
        ("listener 8883\n", f"listener {tls} 127.0.0.1\n"),
        ("listener 1883 127.0.0.1\n", f"listener {plain} 127.0.0.1\n"),
        ("/etc/mosquitto/certs/", f"{tmp}/certs/"),
        ("/etc/mosquitto/jaa/", f"{tmp}/jaa/"),
        ("/var/lib/mosquitto/", f"{tmp}/data/"),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    return MosquittoBroker(tmp, port=plain, conf_text=text), tls


async def test_shipped_broker_config_tls_passwords_and_acl(tmp_path: Path) -> None:
    accounts = {"jaa-gateway": "gw-secret", "jaa-0042": "dev-secret", "door-1": "door-secret"}
    broker, tls_port = _production_broker(tmp_path, accounts)
    broker.start()
    ca = str(tmp_path / "certs/ca.crt")
    tls = aiomqtt.TLSParameters(ca_certs=ca)
    try:
        got = Collector()
        gw = MqttEdge(
            section(broker.port, username="jaa-gateway", password=SecretStr("gw-secret")),
            Metrics(),
            got,
        )
        device = MqttProbe(
            tls_port, client_id="jaa-0042", username="jaa-0042", password="dev-secret",
            tls_params=tls,
        )  # fmt: skip
        door = MqttProbe(
            tls_port, client_id="door-1", username="door-1", password="door-secret",
            tls_params=tls,
        )  # fmt: skip
        async with running_edge(broker.port, got, edge=gw), device as dev, door as dr:
            await dev.subscribe("jaa/#")
            await dr.subscribe("jaa/#")
            # Only one's own event topic is writable: the spoofed ones never reach the gateway.
            await dev.publish("jaa/device/jaa-0099/event", {"id": "spoof", "type": "sos"})
            await dev.publish("jaa/door/door-1/event", {"id": "spoof2", "type": "open"})
            await dr.publish("jaa/device/jaa-0042/event", {"id": "spoof3", "type": "sos"})
            await dev.publish("jaa/device/jaa-0042/event", {"id": "real", "type": "sos"})
            await dr.publish("jaa/door/door-1/event", {"id": "real2", "type": "open"})
            await got.wait_for(lambda evs: len(evs) == 2)
            await gw.publish(gw.topics.device_cmd("jaa-0099"), {"type": "x", "to": "other"})
            await gw.publish(gw.topics.door_cmd("door-1"), {"type": "x", "to": "door"})
            await gw.publish(gw.topics.device_cmd("jaa-0042"), {"type": "x", "to": "me"})
            await dev.wait_message("jaa/device/jaa-0042/cmd")
            await dr.wait_message("jaa/door/door-1/cmd")
            await asyncio.sleep(0.1)
            # Readable: own cmd topic and the gateway status, nothing else.
            assert {m.topic for m in dev.seen} == {STATUS, "jaa/device/jaa-0042/cmd"}
            assert {m.topic for m in dr.seen} == {STATUS, "jaa/door/door-1/cmd"}
        assert sorted(got.ids()) == ["real", "real2"]

        # Anonymous clients and wrong passwords are refused on both listeners.
        for port, kw in [(broker.port, {}), (tls_port, {"tls_params": tls})]:
            with pytest.raises(aiomqtt.MqttError):
                async with MqttProbe(port, **kw):
                    pass
            with pytest.raises(aiomqtt.MqttError):
                async with MqttProbe(port, username="jaa-0042", password="nope", **kw):
                    pass

        # The gateway itself can also use the TLS listener (the MqttSection tls_* settings).
        over_tls = MqttEdge(
            section(
                tls_port, client_id="gw-tls", username="jaa-gateway",
                password=SecretStr("gw-secret"), tls_ca=ca,
            ),
            Metrics(),
            Collector(),
        )  # fmt: skip
        async with running_edge(tls_port, Collector(), edge=over_tls):
            assert over_tls.connected
    finally:
        broker.stop()
