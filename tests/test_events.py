"""Parsing at the MQTT edge: every reject reason, good cases, and no other exception ever."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaa_gateway.adapters.events import MAX_PAYLOAD_BYTES, Rejected, parse_message
from jaa_gateway.domain.events import DEVICE_EVENT_TYPES, DOOR_EVENT_TYPES, DeviceEvent, DoorEvent

NOW = dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC)
DEV = "jaa/device/jaa-0042/event"
DOOR = "jaa/door/door-d1-123/event"


def parse(topic: str, payload: Any, prefix: str = "jaa") -> DeviceEvent | DoorEvent:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_message(prefix, topic, raw, NOW)


def rejected(topic: str, payload: Any, prefix: str = "jaa") -> Rejected:
    with pytest.raises(Rejected) as info:
        parse(topic, payload, prefix)
    return info.value


# ---------------------------------------------------------------------------- good cases


def test_heartbeat_with_all_fields() -> None:
    ev = parse(
        DEV,
        {
            "id": "m-1",
            "type": "heartbeat",
            "ts": "2026-03-29T02:30:00+02:00",
            "battery": 87.5,
            "lat": 63.4,
            "lon": 10.4,
        },
    )
    assert ev == DeviceEvent(
        device_id="jaa-0042",
        id="m-1",
        type="heartbeat",
        ts=dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC),
        received_at=NOW,
        battery=87.5,
        lat=63.4,
        lon=10.4,
    )


def test_session_start_with_location_and_int_id_normalised() -> None:
    ev = parse(
        DEV, {"id": 17, "type": "session_start", "location": "d1-123", "planned_minutes": 90}
    )
    assert isinstance(ev, DeviceEvent)
    assert (ev.id, ev.location, ev.planned_minutes, ev.ts) == ("17", "d1-123", 90, None)


@pytest.mark.parametrize(
    "extra",
    [
        {"type": "session_end"},
        {"type": "checkin"},
        {"type": "sos", "lat": -90, "lon": 180},
        {"type": "man_down"},
        {"type": "cancel", "alarm": "A-2026-0001"},
        {"type": "low_battery", "battery": 0},
        {"type": "heartbeat", "battery": 100},
    ],
)
def test_every_device_type(extra: dict[str, Any]) -> None:
    ev = parse(DEV, {"id": "x", **extra})
    assert isinstance(ev, DeviceEvent) and ev.type == extra["type"]


def test_badge_event() -> None:
    ev = parse(DOOR, {"id": "b1", "type": "badge", "badge": "04A1B2C3", "action": "end"})
    assert ev == DoorEvent(
        door_id="door-d1-123",
        id="b1",
        type="badge",
        ts=None,
        received_at=NOW,
        badge="04A1B2C3",
        action="end",
    )


@pytest.mark.parametrize("etype", ["open", "closed"])
def test_door_open_closed(etype: str) -> None:
    ev = parse(DOOR, {"id": "d", "type": etype})
    assert isinstance(ev, DoorEvent) and ev.type == etype and ev.badge is None


def test_identity_always_comes_from_the_topic() -> None:
    ev = parse(DEV, {"id": "1", "type": "sos", "device_id": "jaa-9999", "door_id": "x"})
    assert isinstance(ev, DeviceEvent) and ev.device_id == "jaa-0042"


def test_unknown_keys_are_ignored() -> None:
    ev = parse(DEV, {"id": "1", "type": "checkin", "firmware": {"v": [1, 2]}, "rssi": -70})
    assert isinstance(ev, DeviceEvent) and ev.type == "checkin"


def test_multi_level_prefix() -> None:
    ev = parse("site/a/jaa/door/d-1/event", {"id": "1", "type": "open"}, prefix="site/a/jaa")
    assert isinstance(ev, DoorEvent) and ev.door_id == "d-1"


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-03-29T00:30:00Z", dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC)),
        ("2026-03-29t00:30:00z", dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC)),
        ("2026-03-29 01:30:00+01:00", dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC)),
        (
            "2026-03-29T00:30:00.123456789Z",
            dt.datetime(2026, 3, 29, 0, 30, 0, 123456, tzinfo=dt.UTC),
        ),
    ],
)
def test_rfc3339_timestamps(ts: str, expected: dt.datetime) -> None:
    ev = parse(DEV, {"id": "1", "type": "checkin", "ts": ts})
    assert ev.ts == expected and ev.ts is not None and ev.ts.utcoffset() == dt.timedelta(0)


def test_payload_at_the_size_limit_is_accepted() -> None:
    body = {"id": "1", "type": "checkin", "pad": ""}
    base = len(json.dumps(body).encode())
    body["pad"] = "x" * (MAX_PAYLOAD_BYTES - base)
    raw = json.dumps(body).encode()
    assert len(raw) == MAX_PAYLOAD_BYTES
    assert parse(DEV, raw).type == "checkin"


# ---------------------------------------------------------------------------- rejects


@pytest.mark.parametrize(
    "topic",
    [
        "jaa/device/jaa-0042/cmd",
        "jaa/device/jaa-0042",
        "jaa/device/jaa-0042/event/x",
        "jaa/gateway/jaa-0042/event",
        "other/device/jaa-0042/event",
        "jaa2/device/jaa-0042/event",
        "jaa/device//event",
        "jaa/device/-dash-first/event",
        "jaa/device/has space/event",
        "jaa/device/" + "a" * 65 + "/event",
        "jaa/device/x\n/event",
        "jaa/device/ø/event",
        "",
    ],
)
def test_bad_topic(topic: str) -> None:
    assert rejected(topic, {"id": "1", "type": "checkin"}).reason == "bad_topic"


def test_id_of_64_chars_in_topic_is_fine() -> None:
    assert parse("jaa/device/" + "a" * 64 + "/event", {"id": "1", "type": "checkin"})


def test_too_large_is_checked_before_decoding() -> None:
    # Not JSON and not UTF-8 either: the size alone decides.
    r = rejected(DEV, b"\xff" * (MAX_PAYLOAD_BYTES + 1))
    assert r.reason == "too_large"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"\xff\xfe{}",
        b'{"id": "1", "type": "checkin", "battery": NaN}',
        b'{"id": "1", "type": "checkin", "lat": Infinity, "lon": 0}',
        b'{"id": "1", "type": "checkin", "lat": -Infinity, "lon": 0}',
        b"\xef\xbb\xbf{}",  # a UTF-8 BOM is not JSON
        b"[" * 2000 + b"]" * 2000,  # deep nesting: RecursionError inside json
        b"{'id': '1'}",
    ],
)
def test_bad_json(raw: bytes) -> None:
    assert rejected(DEV, raw).reason == "bad_json"


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"sos"', b"null", b"true"])
def test_not_object(raw: bytes) -> None:
    assert rejected(DEV, raw).reason == "not_object"


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "checkin"},
        {"id": None, "type": "checkin"},
        {"id": True, "type": "checkin"},
        {"id": 1.5, "type": "checkin"},
        {"id": "", "type": "checkin"},
        {"id": "x" * 129, "type": "checkin"},
        {"id": "a\nb", "type": "checkin"},
        {"id": "\ud800", "type": "checkin"},
        {"id": ["1"], "type": "checkin"},
        {"id": "1"},
        {"id": "1", "type": None},
        {"id": "1", "type": 3},
        {"id": "1", "type": "checkin", "ts": "2026-03-29T00:30:00"},  # no offset
        {"id": "1", "type": "checkin", "ts": "2026-03-29"},
        {"id": "1", "type": "checkin", "ts": 1774744200},
        {"id": "1", "type": "checkin", "ts": "2026-02-30T00:00:00Z"},
        {"id": "1", "type": "checkin", "ts": "2026-03-29T00:30:60Z"},
        {"id": "1", "type": "checkin", "ts": "２０２６-03-29T00:30:00Z"},
        {"id": "1", "type": "heartbeat", "lat": 90.1, "lon": 0},
        {"id": "1", "type": "heartbeat", "lat": 0, "lon": -180.5},
        {"id": "1", "type": "heartbeat", "lat": 10},  # lat without lon
        {"id": "1", "type": "heartbeat", "lat": "63.4", "lon": 10},
        {"id": "1", "type": "heartbeat", "lat": True, "lon": 10},
        {"id": "1", "type": "heartbeat", "battery": 100.01},
        {"id": "1", "type": "heartbeat", "battery": -1},
        {"id": "1", "type": "heartbeat", "battery": "full"},
        {"id": "1", "type": "session_start"},  # location required
        {"id": "1", "type": "session_start", "location": "no spaces allowed"},
        {"id": "1", "type": "session_start", "location": 123},
        {"id": "1", "type": "session_start", "location": "d1", "planned_minutes": 0},
        {"id": "1", "type": "session_start", "location": "d1", "planned_minutes": 1441},
        {"id": "1", "type": "session_start", "location": "d1", "planned_minutes": 30.0},
        {"id": "1", "type": "session_start", "location": "d1", "planned_minutes": True},
        {"id": "1", "type": "low_battery"},  # battery required
        {"id": "1", "type": "cancel", "alarm": 5},
        {"id": "1", "type": "cancel", "alarm": ""},
    ],
)
def test_bad_field_device(payload: dict[str, Any]) -> None:
    r = rejected(DEV, payload)
    assert r.reason == "bad_field", r


def test_huge_number_is_out_of_range_not_infinite() -> None:
    r = rejected(DEV, b'{"id": "1", "type": "heartbeat", "lat": 1e400, "lon": 0}')
    assert r.reason == "bad_field"


@pytest.mark.parametrize(
    "payload",
    [
        {"id": "1", "type": "badge"},  # badge required
        {"id": "1", "type": "badge", "badge": ""},
        {"id": "1", "type": "badge", "badge": 1234},
        {"id": "1", "type": "badge", "badge": "x" * 65},
        {"id": "1", "type": "badge", "badge": "04A1", "action": "toggle"},
        {"id": "1", "type": "open", "action": 1},
    ],
)
def test_bad_field_door(payload: dict[str, Any]) -> None:
    assert rejected(DOOR, payload).reason == "bad_field"


@pytest.mark.parametrize(
    ("topic", "etype"),
    [
        (DEV, "badge"),
        (DEV, "open"),
        (DEV, "reboot"),
        (DOOR, "sos"),
        (DOOR, "heartbeat"),
        (DOOR, ""),
    ],
)
def test_unknown_type_for_the_topic(topic: str, etype: str) -> None:
    assert rejected(topic, {"id": "1", "type": etype, "badge": "b"}).reason == "unknown_type"


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ({"type": "checkin"}, "id is missing or is not a string or an integer"),
        ({"id": 1.5, "type": "checkin"}, "id is missing or is not a string or an integer"),
        ({"id": "", "type": "checkin"}, "id must be 1..128 printable characters"),
        ({"id": "1"}, "type is missing or not a string"),
        ({"id": "1", "type": ["sos"]}, "type is missing or not a string"),
        ({"id": "1", "type": "checkin", "ts": "2026-03-29"}, "ts must be an RFC 3339 date-time"),
        ({"id": "1", "type": "checkin", "ts": "2026-02-30T00:00:00Z"}, "ts is not a valid date"),
        ({"id": "1", "type": "session_start"}, "session_start needs a location"),
        ({"id": "1", "type": "session_start", "location": None}, "session_start needs a location"),
        ({"id": "1", "type": "session_start", "location": "a/b"}, "location must be an id"),
        (
            {"id": "1", "type": "session_start", "location": "d", "planned_minutes": 30.0},
            "planned_minutes must be an integer within [1, 1440]",
        ),
        ({"id": "1", "type": "heartbeat", "battery": 140}, "battery must be within [0, 100]"),
        ({"id": "1", "type": "heartbeat", "battery": "80"}, "battery must be a number"),
        ({"id": "1", "type": "heartbeat", "lat": 10**400, "lon": 0}, "lat must be within"),
        ({"id": "1", "type": "heartbeat", "lat": 10}, "lat and lon must be given together"),
        ({"id": "1", "type": "low_battery"}, "low_battery needs a battery level"),
        ({"id": "1", "type": "cancel", "alarm": ""}, "alarm must be 1..128 printable characters"),
        # several faults: the first in the order the fields are checked is named
        ({"id": "", "type": "reboot"}, "id must be 1..128 printable characters"),
        ({"id": "1", "type": "session_start", "battery": -1}, "battery must be within"),
        ({"id": "1", "type": "sos", "lat": 1, "alarm": ""}, "lat and lon must be given together"),
    ],
)
def test_bad_field_names_the_field_and_the_rule(payload: dict[str, Any], detail: str) -> None:
    r = rejected(DEV, payload)
    assert r.reason == "bad_field" and r.detail.startswith(detail), r.detail


@pytest.mark.parametrize(
    ("topic", "payload", "detail"),
    [
        (DOOR, {"id": "1", "type": "badge"}, "a badge event needs a badge"),
        (DOOR, {"id": "1", "type": "badge", "badge": "x" * 65}, "badge must be 1..64 printable"),
        (DOOR, {"id": "1", "type": "open", "action": "toggle"}, "action must be start or end"),
    ],
)
def test_bad_door_field_names_the_field(topic: str, payload: dict[str, Any], detail: str) -> None:
    r = rejected(topic, payload)
    assert r.reason == "bad_field" and r.detail.startswith(detail), r.detail


def test_every_event_type_of_the_core_is_parsed_on_its_own_topic_only() -> None:
    # the parser's lists of types and the core's (domain/events.py) are the same lists
    fields = {"location": "d1", "battery": 50, "badge": "04A1"}
    for etype in DEVICE_EVENT_TYPES:
        assert parse(DEV, {"id": "1", "type": etype, **fields}).type == etype
        assert rejected(DOOR, {"id": "1", "type": etype, **fields}).reason == "unknown_type"
    for etype in DOOR_EVENT_TYPES:
        assert parse(DOOR, {"id": "1", "type": etype, **fields}).type == etype
        assert rejected(DEV, {"id": "1", "type": etype, **fields}).reason == "unknown_type"


# JSON that pydantic's own parser reads differently from Python's `json`: the answer is json's.
@pytest.mark.parametrize(
    "raw",
    [
        b'{"id": "1", "type": "checkin", "pad": "\\ud800"}',  # a lone surrogate, ignored
        b'{"id": "1", "type": "checkin", "\\udfff": 1}',
        b'{"id": "1", "type": "checkin", "pad": ' + b"[" * 500 + b"]" * 500 + b"}",
        b'{"id": "1", "type": "checkin", "pad": "NaN Infinity"}',  # only words in a string
        b'{"id": "1", "type": "reboot", "type": "checkin"}',  # the last key wins
    ],
)
def test_json_accepted_as_python_reads_it(raw: bytes) -> None:
    ev = parse(DEV, raw)
    assert isinstance(ev, DeviceEvent) and (ev.id, ev.type) == ("1", "checkin")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id": "1", "type": "checkin", "pad": NaN}',  # not JSON, even where it is ignored
        b'{"id": "1", "type": "checkin", "pad": [-Infinity]}',
        b'{"id": "1", "type": "checkin", "pad": "\xff"}',
    ],
)
def test_not_json_even_in_an_ignored_key(raw: bytes) -> None:
    assert rejected(DEV, raw).reason == "bad_json"


def test_naive_received_at_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        parse_message("jaa", DEV, b'{"id":"1","type":"checkin"}', dt.datetime(2026, 1, 1))


# ---------------------------------------------------------------------------- properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
known_keys = st.sampled_from(
    [
        "id",
        "type",
        "ts",
        "location",
        "planned_minutes",
        "battery",
        "lat",
        "lon",
        "alarm",
        "badge",
        "action",
    ]
)
types = st.sampled_from(
    ["heartbeat", "session_start", "cancel", "low_battery", "sos", "badge", "open", "x"]
)
plausible = st.fixed_dictionaries(
    {"id": st.one_of(st.text(max_size=3), st.integers()), "type": types},
    optional={k: json_values for k in ["ts", "battery", "lat", "lon", "location", "badge"]},
)


@given(raw=st.binary(max_size=5000), topic=st.sampled_from([DEV, DOOR, "jaa/x"]))
@settings(max_examples=300)
def test_arbitrary_bytes_only_ever_reject(raw: bytes, topic: str) -> None:
    try:
        parse_message("jaa", topic, raw, NOW)
    except Rejected:
        pass


@given(
    obj=st.one_of(json_values, st.dictionaries(known_keys, json_values, max_size=6), plausible),
    topic=st.sampled_from([DEV, DOOR]),
)
@settings(max_examples=500)
def test_arbitrary_json_parses_or_rejects(obj: Any, topic: str) -> None:
    raw = json.dumps(obj).encode()
    try:
        ev = parse_message("jaa", topic, raw, NOW)
    except Rejected as r:
        assert r.reason in {"too_large", "bad_json", "not_object", "bad_field", "unknown_type"}
        return
    # Whatever passes is well-formed.
    assert isinstance(obj, dict)
    assert ev.id == str(obj["id"]) and 1 <= len(ev.id) <= 128
    if isinstance(ev, DeviceEvent):
        assert ev.device_id == "jaa-0042"
        assert ev.lat is None or -90 <= ev.lat <= 90
        assert ev.battery is None or 0 <= ev.battery <= 100
    else:
        assert ev.door_id == "door-d1-123"
