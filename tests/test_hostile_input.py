"""Hostile input against the real daemon: fuzzed MQTT topics and payloads, events that name
other devices, oversized and deeply nested JSON, Unicode in config names (CONTRACT §3, §7.3).

Every test runs the in-process gateway against a real mosquitto (password login, so the MQTT
password is a secret in play) and the Twilio double. After every hostile input the harness checks
the invariants: the daemon still answers (/healthz 200, and a barrier event sent behind the input
is answered), no session or alarm appeared or changed, the input was counted once in
`jaa_rejected_messages_total` under the reason the contract implies (or accepted at the edge),
and no secret (Twilio auth token, API token, MQTT password) is in any HTTP answer or log line.

HOSTILE_EXAMPLES=<n> in the environment scales the number of generated inputs per test.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jaa_gateway import logs
from jaa_gateway.config import ConfigError, parse_config
from tests.support.broker import MosquittoBroker, MqttProbe
from tests.support.gateway import TOKEN, InProcessGateway, running_gateway, site_config
from tests.support.twilio_double import TwilioDouble

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "60"))

HOSTILE_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # one daemon deliberately receives every example: that is the point of the test
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

KNOWN_DEVICES = ("jaa-0042", "jaa-0043", "jaa-0044")
KNOWN_DOORS = ("door-d1-123", "door-w-1")
EVENT_FILTERS = ("jaa/device/+/event", "jaa/door/+/event")
# The id format of the config (and so of every topic id the gateway can know).
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
EDGE_REASONS = ("bad_topic", "too_large", "bad_json", "not_object", "bad_field", "unknown_type")
ENGINE_REASONS = ("unknown_device", "duplicate", "handler_error")
MAX_PAYLOAD = 4096

_ids = itertools.count(1)


def uid(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}-{time.monotonic_ns()}"


# --------------------------------------------------------------------------- the harness


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, str]]:
    """A broker that needs a login: the gateway's password is one more secret to keep."""
    password = "mqtt-" + secrets.token_hex(12)
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    for i, (user, pw) in enumerate((("jaa-gateway", password), ("fuzzer", "fuzzer-pw"))):
        create = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", "-b", *create, str(passwd), user, pw], check=True)
    acl.write_text("user jaa-gateway\ntopic readwrite jaa/#\nuser fuzzer\ntopic readwrite #\n")
    broker = MosquittoBroker(
        tmp_path / "broker",
        anonymous=False,
        extra_conf=f"password_file {passwd}\nacl_file {acl}\n",
    )
    broker.start()
    try:
        yield broker, password
    finally:
        broker.stop()


@contextlib.contextmanager
def json_logs() -> Iterator[io.StringIO]:
    """Log as `jaa-gateway run` does (JSON lines), into a buffer the test reads, then restore.

    Not pytest's capsys: its stream is replaced between the setup and call phases, and the
    daemon (set up in a fixture) would be left writing to a closed file."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    logs.configure("json")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=buffer))
    try:
        yield buffer
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)


def rejected_total(gw: InProcessGateway, reason: str) -> float:
    assert gw.app is not None
    value = gw.app.metrics.registry.get_sample_value(
        "jaa_rejected_messages_total", {"reason": reason}
    )
    return value or 0.0


@dataclass(repr=False)
class Hostile:
    gw: InProcessGateway
    p: MqttProbe
    twilio: TwilioDouble
    secrets: tuple[str, ...]
    log: io.StringIO
    caplog: pytest.LogCaptureFixture
    log_read: int = 0
    log_lines: int = 0
    answers: int = 0
    baseline: tuple[Any, Any] | None = None
    seen_logs: list[str] = field(default_factory=list)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text("<hostile site>")  # hypothesis prints this in every failing example

    # ------------------------------------------------------------------ observations

    def counts(self) -> dict[str, float]:
        out = {r: rejected_total(self.gw, r) for r in (*EDGE_REASONS, *ENGINE_REASONS)}
        assert self.gw.app is not None
        out["received"] = (
            self.gw.app.metrics.registry.get_sample_value("jaa_mqtt_messages_received_total") or 0.0
        )
        return out

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, answer = await self.gw.client.api(method, path, body)
        self.check_text(json.dumps(answer), f"{method} {path}")
        return status, answer

    async def state(self) -> tuple[Any, Any]:
        """What junk must never change: every alarm (any state) and the active sessions."""
        s1, alarms = await self.api("GET", "/api/alarms")
        s2, sessions = await self.api("GET", "/api/sessions")
        assert s1 == 200 and s2 == 200, (alarms, sessions)
        return alarms["alarms"], sessions["sessions"]

    async def settle(self) -> None:
        """Record the state every later input is compared against."""
        await self.barrier()
        self.baseline = await self.state()
        self.check_logs()

    def check_text(self, text: str, where: str) -> None:
        for secret in self.secrets:
            assert secret not in text, f"a secret leaked into {where}"

    def check_logs(self) -> None:
        out = self.log.getvalue()[self.log_read :]
        self.log_read += len(out)
        text = out + "\n".join(r.getMessage() for r in self.caplog.records)
        self.caplog.clear()
        self.check_text(text, "the log output")
        lines = [ln for ln in out.splitlines() if ln.strip()]
        self.log_lines += len(lines)
        self.seen_logs.extend(lines[-200:])
        del self.seen_logs[:-2000]

    async def barrier(self, timeout: float = 5.0) -> None:
        """Prove the daemon is alive and done with everything published before: a session_start
        from an unregistered device is answered on its cmd topic (CONTRACT §3), after every
        earlier message went through the edge and the engine's queue in order."""
        eid = uid("barrier")
        since = len(self.p.seen)
        await self.p.publish(
            "jaa/device/zz-barrier/event",
            {"id": eid, "type": "session_start", "location": "d1-123"},
        )
        try:
            seen = await self.p.wait_message(
                "jaa/device/zz-barrier/cmd",
                lambda s: _json_or_none(s.payload, "re") == eid,
                timeout,
                since=since,
            )
        except AssertionError as exc:
            self.check_logs()
            raise AssertionError(
                "the daemon did not answer; its last log lines:\n" + "\n".join(self.seen_logs[-15:])
            ) from exc
        assert json.loads(seen.payload)["reason"] == "unknown_device"
        self.answers += 1

    async def assert_unharmed(self, what: str) -> None:
        status, body = await self.api("GET", "/healthz")
        assert status == 200, f"after {what}: /healthz {status} {body}"
        assert self.baseline is not None
        now = await self.state()
        assert now == self.baseline, f"state changed after {what}"
        self.check_logs()


def _json_or_none(payload: bytes, key: str) -> Any:
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return obj.get(key) if isinstance(obj, dict) else None


def hostile_config(
    tmp_path: Path, broker_port: int, twilio: TwilioDouble, mqtt_password: str
) -> dict[str, Any]:
    cfg = site_config(tmp_path / "state.db", broker_port, twilio)
    cfg["mqtt"]["username"] = "jaa-gateway"
    cfg["mqtt"]["password"] = mqtt_password
    # a long fuzzing run must not see the standing session's device go offline
    cfg["timing"]["device_timeout"] = "1h"
    # one SMS step: who has been notified of the standing alarm stays fixed while fuzzing
    cfg["escalation_chains"][0]["steps"] = [
        {"after": "0s", "notify": ["roster:desk"], "via": ["sms"]}
    ]
    # per may work alone in d1-123 too, so both devices can hold sessions
    cfg["assessments"].append(
        cfg["assessments"][0] | {"id": "RA-2", "person": "per", "approved_by": "kari"}
    )
    return cfg


@contextlib.asynccontextmanager
async def hostile_site(
    tmp_path: Path,
    broker: tuple[MosquittoBroker, str],
    twilio: TwilioDouble,
    caplog: pytest.LogCaptureFixture,
    patch: Callable[[dict[str, Any]], None] | None = None,
    standing: bool = True,
) -> AsyncIterator[Hostile]:
    """The daemon with a standing session (ola on jaa-0042) and a standing escalating sos alarm
    (per on jaa-0043, no session), so junk has real state to damage."""
    mosq, password = broker
    cfg = hostile_config(tmp_path, mosq.port, twilio, password)
    if patch is not None:
        patch(cfg)
    caplog.set_level(logging.INFO)
    with json_logs() as log_buffer:
        async with (
            running_gateway(cfg) as gw,
            MqttProbe(mosq.port, username="fuzzer", password="fuzzer-pw") as p,
        ):
            await p.subscribe("jaa/#")
            h = Hostile(gw, p, twilio, (twilio.auth_token, TOKEN, password), log_buffer, caplog)
            if standing:
                await publish_and_wait(
                    h,
                    "jaa-0042",
                    {"type": "session_start", "location": "d1-123"},
                    "session_started",
                )
                await publish_and_wait(h, "jaa-0043", {"type": "sos"}, "alarm_raised")
                await twilio.wait_for(1)
            await h.settle()
            yield h
            # the counters the harness read are the ones /metrics exports
            async with gw.client.session.get(gw.client.base + "/metrics") as r:
                exported = await r.text()
            h.check_text(exported, "/metrics")
            for reason, value in h.counts().items():
                if reason in EDGE_REASONS:
                    line = f'jaa_rejected_messages_total{{reason="{reason}"}} {value}'
                    assert line in exported, line
            h.check_logs()
            # the log really was captured (else "no secret in the logs" would prove nothing)
            assert h.log_lines > 0


@pytest.fixture
async def hostile(
    tmp_path: Path,
    secured_broker: tuple[MosquittoBroker, str],
    twilio_double: TwilioDouble,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[Hostile]:
    async with hostile_site(tmp_path, secured_broker, twilio_double, caplog) as h:
        yield h


async def publish_and_wait(
    h: Hostile, device: str, event: dict[str, Any], answer: str, timeout: float = 5.0
) -> dict[str, Any]:
    eid = uid("ev")
    since = len(h.p.seen)
    await h.p.publish(f"jaa/device/{device}/event", {"id": eid, **event})
    seen = await h.p.wait_message(
        f"jaa/device/{device}/cmd",
        lambda s: (
            _json_or_none(s.payload, "re") == eid and _json_or_none(s.payload, "type") == answer
        ),
        timeout,
        since=since,
    )
    body: dict[str, Any] = json.loads(seen.payload)
    return body


# --------------------------------------------------------------------------- the oracle


def delivered(topic: str) -> bool:
    return any(aiomqtt.Topic(topic).matches(f) for f in EVENT_FILTERS)


class _Constant(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _Constant(name)


def edge_outcomes(topic: str, payload: bytes) -> set[str]:
    """What the contract lets the edge do with one message: the reasons it may be rejected for,
    or "received" (accepted at the edge). Written from CONTRACT §3/§7.3, not from the parser."""
    if not delivered(topic):
        return {"not_delivered"}
    if not ID_RE.fullmatch(topic.split("/")[2]):
        return {"bad_topic"}
    if len(payload) > MAX_PAYLOAD:
        return {"too_large"}
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {"bad_json"}
    if not isinstance(obj, dict):
        return {"not_object"}
    return {"bad_field", "unknown_type", "received"}


def outcome(before: dict[str, float], after: dict[str, float]) -> list[str]:
    """The counters an input moved, after removing the barrier's own `received`."""
    moved = []
    for key in (*EDGE_REASONS, *ENGINE_REASONS, "received"):
        delta = after[key] - before[key] - (1 if key == "received" else 0)
        moved.extend([key] * int(delta))
    return moved


async def send_hostile(h: Hostile, topic: str, payload: bytes, allowed: set[str]) -> list[str]:
    """Publish one hostile message and check every invariant; returns the counters it moved."""
    before = h.counts()
    await h.p.publish(topic, payload)
    await h.barrier()
    moved = outcome(before, h.counts())
    what = f"{topic!r} <- {payload[:300]!r}"
    edge = [m for m in moved if m in (*EDGE_REASONS, "received")]
    if "not_delivered" in allowed:
        assert moved == [], f"{what}: {moved}"
    else:
        # counted exactly once at the edge, under a reason the contract allows
        assert len(edge) == 1 and edge[0] in allowed, f"{what}: moved {moved}, allowed {allowed}"
    assert "handler_error" not in moved, what
    if edge != ["received"]:
        assert moved == edge, f"{what}: {moved}"
    await h.assert_unharmed(what)
    return moved


# --------------------------------------------------------------------------- strategies

_topic_char = st.characters(
    # no level separator or wildcard (paho refuses to publish those), no control characters or
    # surrogates (mosquitto drops a client sending such a topic), no unassigned code points
    blacklist_categories=("Cc", "Cs", "Cn"),
    blacklist_characters="/+#",
)
topic_ids = st.one_of(
    st.sampled_from((*KNOWN_DEVICES, *KNOWN_DOORS)),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", fullmatch=True),
    st.text(_topic_char, max_size=80),
    st.sampled_from(
        (
            "",
            " ",
            "jaa-0043 ",
            " jaa-0043",
            "jaa-0043\u200f",  # RTL mark after an otherwise valid id
            "\u202ejaa-0043",
            "jaa\u20100043",  # a hyphen that is not '-'
            "ｊａａ-0043",  # full-width letters
            "＋",  # wildcard-like
            "%2B",
            "%23",
            "*",
            "..",
            ".",
            "-jaa",
            "jaa-0042🚨",
            "a" * 64,
            "a" * 65,
            "ü" * 300,
        )
    ),
)
topics = st.one_of(
    st.builds("jaa/{}/{}/event".format, st.sampled_from(("device", "door")), topic_ids),
    st.builds("jaa/device/{}/event/{}".format, topic_ids, st.text(_topic_char, max_size=8)),
    st.builds("jaa/{}/{}".format, st.text(_topic_char, max_size=10), topic_ids),
    st.sampled_from(
        (
            "jaa/device/jaa-0042/cmd",
            "jaa/device/jaa-0042",
            "jaa/device/jaa-0042/event/",
            "jaa//device/jaa-0042/event",
            "/jaa/device/jaa-0042/event",
            "JAA/device/jaa-0042/event",
            "jaa/devices/jaa-0042/event",
            "jaa/device/jaa-0042/Event",
            "jaa/gateway/alarm/alm-1",
            "other/device/jaa-0042/event",
            "jaa/device//event",
            "jaa/door//event",
            "jaa/door/door-d1-123/event/x",
        )
    ),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(),  # NaN and infinities encode as bare NaN/Infinity: not JSON
    st.text(),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
raw_payloads = st.one_of(
    st.binary(max_size=300),
    st.binary(min_size=MAX_PAYLOAD - 4, max_size=MAX_PAYLOAD + 4),
    json_values.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.text().map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        (b"", b"{", b"null", b"[]", b"{}", b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b'{"id":')
    ),
)

# Events the contract's rules could act on: junk must never be one of them.
ACTING_TYPES = ("session_start", "sos", "man_down", "badge")


def may_act(payload: bytes) -> bool:
    obj = _json_or_none(payload, "type")
    return obj in ACTING_TYPES


# --------------------------------------------------------------------------- fuzzing


@HOSTILE_SETTINGS
@given(topic=topics, payload=raw_payloads)
@example(topic="jaa/device/jaa-0042/event", payload=b"\x00" * (MAX_PAYLOAD + 1))
@example(topic="jaa/device/jaa-0042/event", payload=b"[" * 3000)
@example(topic="jaa/device/jaa-0042/event", payload=b"[1]")
@example(topic="jaa/device/\u202ejaa-0043/event", payload=b'{"id":1,"type":"sos"}')
@example(topic="jaa/device/jaa-0043/event/x", payload=b'{"id":1,"type":"sos"}')
@example(topic="jaa/door/door-d1-123/event", payload=b'{"id":1,"type":"badge","badge":"\\u0000"}')
async def test_fuzzed_topics_and_payloads_change_nothing(
    hostile: Hostile, topic: str, payload: bytes
) -> None:
    if may_act(payload):
        return  # arbitrary data that happens to be a real alarm or session start
    await send_hostile(hostile, topic, payload, edge_outcomes(topic, payload))


WRONG_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.sampled_from(("", "\x00", "a\nb", "\u202e", "\ud800", "x" * 129)),
    ),
    "type": st.one_of(
        st.none(),
        st.integers(),
        st.booleans(),
        st.lists(st.text(max_size=3), max_size=2),
        st.sampled_from(("", "SOS", "sos ", "s\u200bos", "heartbeat\x00", "ｓｏｓ", "alarm")),
    ),
    "ts": st.one_of(
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.sampled_from(
            (
                "",
                "yesterday",
                "2026-13-45T25:61:61Z",
                "2026-02-30T10:00:00Z",
                "2026-01-01T00:00:00",  # no offset
                "2026-01-01T00:00:00+25:00",
                "２０２６-01-01T00:00:00Z",
                "99999-01-01T00:00:00Z",
            )
        ),
    ),
    "battery": st.one_of(
        st.text(max_size=5),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.floats(max_value=-1e-9, allow_infinity=False),
        st.floats(min_value=100.0001, allow_infinity=False),
        st.integers(min_value=10**300, max_value=10**400),
        st.integers(max_value=-1),
    ),
    "lat": st.one_of(
        st.text(max_size=5),
        st.booleans(),
        st.floats(min_value=90.0001, allow_infinity=False),
        st.integers(min_value=10**300, max_value=10**400),
        st.integers(max_value=-91),
    ),
    "lon": st.one_of(
        st.text(max_size=5),
        st.floats(max_value=-180.0001, allow_infinity=False),
        st.integers(min_value=181, max_value=10**400),
    ),
    "location": st.one_of(
        st.integers(),
        st.booleans(),
        st.lists(st.just("d1-123"), min_size=1, max_size=2),
        st.sampled_from(("", " d1-123", "d1-123\u200f", "d1 123", "x" * 65, "../d1-123")),
    ),
    "planned_minutes": st.one_of(
        st.integers(max_value=0),
        st.integers(min_value=1441, max_value=10**400),
        st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)),
        st.booleans(),
        st.just("30"),
    ),
    "alarm": st.one_of(
        st.integers(),
        st.booleans(),
        st.sampled_from(("", "\x00", "alm\u0007", "x" * 129, "\udfff")),
    ),
}
VALID_DEVICE_EVENTS: dict[str, dict[str, Any]] = {
    "heartbeat": {"battery": 80, "lat": 63.4, "lon": 10.4},
    "session_start": {"location": "d1-123", "planned_minutes": 30},
    "session_end": {},
    "checkin": {},
    "sos": {"lat": 63.4, "lon": 10.4},
    "man_down": {},
    "cancel": {},
    "low_battery": {"battery": 5},
}


@st.composite
def wrong_events(draw: st.DrawFn) -> tuple[str, bytes, set[str]]:
    """A valid device event of a registered device with exactly one field made wrong."""
    device = draw(st.sampled_from(KNOWN_DEVICES))
    etype = draw(st.sampled_from(sorted(VALID_DEVICE_EVENTS)))
    event: dict[str, Any] = {"id": uid("w"), "type": etype, **VALID_DEVICE_EVENTS[etype]}
    key = draw(st.sampled_from(sorted(WRONG_FIELDS)))
    event[key] = draw(WRONG_FIELDS[key])
    if key == "lat" or key == "lon":
        event.setdefault("lon" if key == "lat" else "lat", 10.0)
    if event.get(key) is None and key in ("ts", "battery", "location", "alarm", "planned_minutes"):
        event[key] = "\x00"  # null means absent for optional fields: not wrong at all
    allowed = {"bad_field"}
    if key == "type" and isinstance(event["type"], str):
        allowed = {"unknown_type"}
    text = json.dumps(event, ensure_ascii=draw(st.booleans()))
    data = text.encode("utf-8", "surrogatepass")
    if "\\ud" not in text and any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        allowed = {"bad_json"}  # a raw lone surrogate is not UTF-8
    return f"jaa/device/{device}/event", data, allowed


@st.composite
def crafted_payloads(draw: st.DrawFn) -> tuple[str, bytes, set[str]]:
    """Byte-level shapes json.dumps cannot make: NaN/Infinity, huge literals, deep nesting,
    sizes around the 4 KiB limit."""
    device = draw(st.sampled_from(KNOWN_DEVICES))
    topic = f"jaa/device/{device}/event"
    head = f'{{"id":"{uid("c")}","type":"heartbeat"'
    shape = draw(st.sampled_from(("constant", "huge", "nested", "boundary", "multibyte")))
    if shape == "constant":
        lit = draw(st.sampled_from(("NaN", "Infinity", "-Infinity", "nan", "1e999", "-1e999")))
        field_ = draw(st.sampled_from(("battery", "lat", "id", "ts", "x")))
        extra = ',"lon":1' if field_ == "lat" else ""
        data = f'{head},"{field_}":{lit}{extra}}}'.encode()
        if lit in ("NaN", "Infinity", "-Infinity", "nan"):
            return topic, data, {"bad_json"}
        # 1e999 parses as inf: a wrong number where a number is read, ignored elsewhere
        return (
            topic,
            data,
            {"bad_field"} if field_ in ("battery", "lat", "id", "ts") else {"received"},
        )
    if shape == "huge":
        digits = draw(st.integers(min_value=300, max_value=3900))
        field_ = draw(st.sampled_from(("battery", "lat", "lon", "planned_minutes", "id")))
        extra = ',"lon":1' if field_ == "lat" else ',"lat":1' if field_ == "lon" else ""
        body = f'{head},"{field_}":{"9" * digits}{extra}}}'.encode()
        if len(body) > MAX_PAYLOAD:
            return topic, body, {"too_large"}
        return topic, body, {"bad_field"}
    if shape == "nested":
        depth = draw(st.integers(min_value=1, max_value=2040))
        opener, closer = draw(st.sampled_from((("[", "]"), ('{"a":', "}"))))
        nested = opener * depth + "1" + closer * depth
        data = f'{head},"x":{nested}}}'.encode()
        return topic, data, edge_outcomes(topic, data) - {"bad_field", "unknown_type"}
    size = draw(st.integers(min_value=MAX_PAYLOAD - 2, max_value=MAX_PAYLOAD + 2))
    if shape == "boundary":
        pad = size - len(head) - len(',"x":""}')
        data = f'{head},"x":"{"p" * pad}"}}'.encode()
    else:
        # characters of 2 bytes: the limit is bytes on the wire, not characters
        pad = (size - len(head) - len(',"x":""}')) // 2
        data = f'{head},"x":"{"é" * pad}"}}'.encode()
    assert abs(len(data) - size) <= 1
    return topic, data, {"received"} if len(data) <= MAX_PAYLOAD else {"too_large"}


@HOSTILE_SETTINGS
@given(case=st.one_of(wrong_events(), crafted_payloads()))
@example(
    case=(
        "jaa/device/jaa-0042/event",
        b'{"id":"b1","type":"heartbeat","battery":' + b"9" * 400 + b"}",
        {"bad_field"},
    )
)
@example(
    case=(
        "jaa/device/jaa-0043/event",
        b'{"id":"b2","type":"session_start","location":"d1-123","planned_minutes":'
        + b"9" * 400
        + b"}",
        {"bad_field"},
    )
)
async def test_valid_looking_events_with_wrong_fields_are_refused(
    hostile: Hostile, case: tuple[str, bytes, set[str]]
) -> None:
    topic, payload, allowed = case
    await send_hostile(hostile, topic, payload, allowed)


# --------------------------------------------------------------------------- specific cases


async def get_alarm(h: Hostile, alarm_id: str) -> dict[str, Any]:
    status, body = await h.api("GET", f"/api/alarms/{alarm_id}")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def test_a_device_cannot_act_for_another_device(
    tmp_path: Path,
    secured_broker: tuple[MosquittoBroker, str],
    twilio_double: TwilioDouble,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sender is the topic's device, whatever the payload names (CONTRACT §3)."""

    def patch(cfg: dict[str, Any]) -> None:
        cfg["timing"]["prealarm_window"] = "20s"  # per's pre-alarm stays open during the test

    async with hostile_site(
        tmp_path, secured_broker, twilio_double, caplog, patch, standing=False
    ) as h:
        ola = await publish_and_wait(
            h, "jaa-0042", {"type": "session_start", "location": "d1-123"}, "session_started"
        )
        per = await publish_and_wait(
            h, "jaa-0043", {"type": "session_start", "location": "d1-123"}, "session_started"
        )
        pre = await publish_and_wait(h, "jaa-0043", {"type": "man_down"}, "prealarm")
        per_alarm = pre["alarm"]
        _, sessions_before = await h.state()
        per_before = next(s for s in sessions_before if s["id"] == per["session"])
        foreign = {"device": "jaa-0043", "person": "per", "session": per["session"]}

        # ola's device cancels per's pre-alarm by id, claiming to be per's device
        cancel_id = uid("cancel")
        since = len(h.p.seen)
        await h.p.publish(
            "jaa/device/jaa-0042/event",
            {"id": cancel_id, "type": "cancel", "alarm": per_alarm, **foreign},
        )
        answer = await h.p.wait_message(
            "jaa/device/jaa-0042/cmd",
            lambda s: _json_or_none(s.payload, "re") == cancel_id,
            since=since,
        )
        assert json.loads(answer.payload) == {
            "type": "alarm_cancelled",
            "alarm": None,
            "re": cancel_id,
        }
        assert (await get_alarm(h, per_alarm))["state"] == "prealarm"

        # a check-in and a session end naming per act on ola's own session only
        await h.p.publish(
            "jaa/device/jaa-0042/event", {"id": uid("ck"), "type": "checkin", **foreign}
        )
        ended = await publish_and_wait(
            h, "jaa-0042", {"type": "session_end", **foreign}, "session_ended"
        )
        assert ended["session"] == ola["session"]
        _, sessions = await h.state()
        assert sessions == [per_before], "per's session changed through ola's device"

        # an sos naming per is ola's alarm
        raised = await publish_and_wait(h, "jaa-0042", {"type": "sos", **foreign}, "alarm_raised")
        mine = await get_alarm(h, raised["alarm"])
        assert (mine["person"], mine["device"]) == ("ola", "jaa-0042")
        assert not [
            s
            for s in h.p.seen
            if s.topic == "jaa/device/jaa-0043/cmd"
            and _json_or_none(s.payload, "alarm") == raised["alarm"]
        ], "ola's alarm was reported to per's device"

        # message ids are per sender: per's device may use the id ola's device used, and its
        # cancel is its own (not a repeat of ola's)
        since = len(h.p.seen)
        await h.p.publish("jaa/device/jaa-0043/event", {"id": cancel_id, "type": "cancel"})
        answer = await h.p.wait_message(
            "jaa/device/jaa-0043/cmd",
            lambda s: _json_or_none(s.payload, "re") == cancel_id,
            since=since,
        )
        assert json.loads(answer.payload)["alarm"] == per_alarm
        assert (await get_alarm(h, per_alarm))["state"] == "cancelled"
        await h.barrier()
        h.check_logs()


NAMES = {
    # right-to-left override and mark, emoji with a zero-width joiner, a combining accent, NUL,
    # BEL, a line break and an Arabic ligature: all reach the config through TOML escapes
    "ola": "Ola \u202eNordmann\u200f 👩\u200d🔧 e\u0301\x00\x07\nBråten ﷽",
    "guard-1": "Geir \u2067ابن\u2069 Vakt 🚨",
}
LOCATION = "Lab D1\u2028-123 \x1b[31m 🧪 \u202e321"


def _sendable(text: str) -> bool:
    """An SMS/TTS text any carrier takes: UTF-8 encodable, no control characters but \\n."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any(
        (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in text
    )


async def test_unicode_in_config_names_gives_valid_sms_and_calls(
    tmp_path: Path,
    secured_broker: tuple[MosquittoBroker, str],
    twilio_double: TwilioDouble,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def patch(cfg: dict[str, Any]) -> None:
        for person in cfg["people"]:
            person["name"] = NAMES.get(person["id"], person["name"])
        cfg["locations"][0]["name"] = LOCATION
        cfg["escalation_chains"][0]["steps"] = [
            {"after": "0s", "notify": ["roster:desk"], "via": ["sms", "call"]}
        ]

    async with hostile_site(
        tmp_path, secured_broker, twilio_double, caplog, patch, standing=False
    ) as h:
        await publish_and_wait(
            h, "jaa-0042", {"type": "session_start", "location": "d1-123"}, "session_started"
        )
        raised = await publish_and_wait(h, "jaa-0042", {"type": "sos"}, "alarm_raised")
        await twilio_double.wait_for(lambda d: len(d.sms) >= 1 and len(d.calls) >= 1)
        sms = twilio_double.sms[0]
        assert sms.body is not None and _sendable(sms.body), repr(sms.body)
        code = (await get_alarm(h, raised["alarm"]))["code"]
        assert f"OK {code}" in sms.body
        # the names are still recognisable, only the unsendable characters are gone
        for part in ("Nordmann", "👩\u200d🔧", "Bråten", "Lab D1", "🧪"):
            assert part in sms.body, (part, sms.body)
        # the code line is a paragraph of its own: an override in a name cannot reorder it
        assert [ln for ln in sms.body.split("\n") if f"OK {code}" in ln and "\u202e" not in ln]
        twiml = twilio_double.calls[0].twiml or ""
        root = ET.fromstring(twiml)  # well-formed XML, or Twilio refuses the call
        spoken = " ".join(s.text or "" for s in root.iter("Say"))
        assert "Nordmann" in spoken and _sendable(spoken), spoken

        # an acknowledgement SMS reply from the guard is answered with valid TwiML too
        status, answer = await h.gw.client.webhook(
            "/twilio/sms",
            {"From": "+4791234569", "Body": f"OK {code}", "MessageSid": uid("SM")},
        )
        assert status == 200, answer
        h.check_text(answer, "the SMS webhook answer")
        reply = "".join(m.text or "" for m in ET.fromstring(answer).iter("Message"))
        assert code in reply and _sendable(reply), reply
        assert (await get_alarm(h, raised["alarm"]))["state"] == "acknowledged"


def test_a_name_that_is_not_text_is_a_config_error(tmp_path: Path) -> None:
    """A lone surrogate (possible through ${ENV} with undecodable bytes) cannot become an SMS:
    a clear config error rather than an alarm that cannot be sent."""
    cfg = site_config(tmp_path / "state.db", 1, None)
    cfg["people"][0]["name"] = "Ola \ud800 Nordmann"
    with pytest.raises(ConfigError) as err:
        parse_config(cfg, "site.toml")
    assert "people[ola].name" in str(err.value)


async def test_a_log_line_that_cannot_be_written_stops_nothing(
    tmp_path: Path,
    secured_broker: tuple[MosquittoBroker, str],
    twilio_double: TwilioDouble,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stdout closed under the daemon (journal restarted, pipe reader gone): every log call
    fails to write, and junk, answers and alarms must still go through."""
    async with hostile_site(tmp_path, secured_broker, twilio_double, caplog, standing=False) as h:
        logs.configure("json")  # the daemon's own log set-up, writing to sys.stdout
        broken = io.StringIO()
        broken.close()
        monkeypatch.setattr(sys, "stdout", broken)
        await h.p.publish("jaa/device/jaa-0042/event", b"{not json")
        await h.barrier()
        await publish_and_wait(
            h, "jaa-0042", {"type": "session_start", "location": "d1-123"}, "session_started"
        )
        await publish_and_wait(h, "jaa-0042", {"type": "sos"}, "alarm_raised")
        await twilio_double.wait_for(1)  # the alarm SMS went out
        assert rejected_total(h.gw, "bad_json") == 1
        monkeypatch.undo()
