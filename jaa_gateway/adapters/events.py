"""Inbound MQTT messages -> typed, frozen events (CONTRACT §3).

Everything a device or door reader sends is untrusted: this module is the only place that looks
at raw topics and payloads. It either returns a core `DeviceEvent` / `DoorEvent`
(`jaa_gateway/domain/events.py`) or raises `Rejected`
with one of a few stable reason codes (they label `jaa_rejected_messages_total`). Nothing else
may escape, whatever the bytes: the daemon must survive any input (CONTRACT §7.3).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from typing import Any, Final, Literal, NoReturn

from jaa_gateway.domain.events import (
    DEVICE_EVENT_TYPES,
    DOOR_EVENT_TYPES,
    DeviceEvent,
    DoorEvent,
)

MAX_PAYLOAD_BYTES: Final = 4096
MAX_MESSAGE_ID_CHARS: Final = 128

RejectReason = Literal[
    "bad_topic", "too_large", "bad_json", "not_object", "bad_field", "unknown_type"
]
# Same shape as config ids, so a topic id can be looked up in the config without surprises.
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# RFC 3339 date-time; [0-9] rather than \d, which would also accept non-ASCII digits.
_RFC3339_RE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


class Rejected(Exception):
    """An inbound message that is dropped at the edge, with a stable reason code."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RejectReason = reason
        self.detail = detail


def is_valid_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None


def parse_topic(prefix: str, topic: str) -> tuple[Literal["device", "door"], str]:
    """`{prefix}/device/{id}/event` or `{prefix}/door/{id}/event` -> (kind, id)."""
    head = prefix + "/"
    if not topic.startswith(head):
        _reject("bad_topic", "topic is outside the prefix")
    parts = topic[len(head) :].split("/")
    if len(parts) != 3 or parts[2] != "event" or parts[0] not in ("device", "door"):
        _reject("bad_topic", "expected {prefix}/device/{id}/event or {prefix}/door/{id}/event")
    if not is_valid_id(parts[1]):
        _reject("bad_topic", "the id in the topic is not a valid id")
    kind: Literal["device", "door"] = "device" if parts[0] == "device" else "door"
    return kind, parts[1]


def parse_message(
    prefix: str, topic: str, payload: bytes, received_at: dt.datetime
) -> DeviceEvent | DoorEvent:
    """Parse one inbound message or raise `Rejected`.

    The sender's id always comes from the topic (which the broker's ACL ties to the sender's
    login), never from the payload, so a device cannot speak for another one.
    """
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    kind, sender = parse_topic(prefix, topic)
    # Size first, before any decoding work is spent on a hostile payload.
    if len(payload) > MAX_PAYLOAD_BYTES:
        _reject("too_large", f"{len(payload)} bytes, at most {MAX_PAYLOAD_BYTES} allowed")
    obj = _decode_json(payload)
    if not isinstance(obj, dict):
        _reject("not_object", f"the payload is a JSON {type(obj).__name__}, not an object")

    msg_id = _message_id(obj)
    etype = obj.get("type")
    if "type" not in obj or not isinstance(etype, str):
        _reject("bad_field", "type is missing or not a string")
    ts = _timestamp(obj)
    if kind == "device":
        return _device_event(obj, sender, msg_id, etype, ts, received_at)
    return _door_event(obj, sender, msg_id, etype, ts, received_at)


# ---------------------------------------------------------------------------- internals


def _reject(reason: RejectReason, detail: str) -> NoReturn:
    raise Rejected(reason, detail)


def _no_constants(name: str) -> NoReturn:
    # NaN and Infinity are not JSON; Python's json accepts them unless told otherwise.
    raise ValueError(f"{name} is not valid JSON")


def _decode_json(payload: bytes) -> Any:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        _reject("bad_json", "the payload is not valid UTF-8")
    try:
        return json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        _reject("bad_json", "the payload is nested too deeply")
    except ValueError as exc:  # JSONDecodeError is a ValueError
        _reject("bad_json", f"the payload is not JSON ({exc})")


def _is_token(value: str, max_chars: int) -> bool:
    # isprintable() rules out control characters and lone surrogates (which JSON escapes can
    # produce and which would fail later when the value is stored or logged as UTF-8).
    return 1 <= len(value) <= max_chars and value.isprintable()


def _message_id(obj: dict[str, Any]) -> str:
    raw = obj.get("id")
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        _reject("bad_field", "id is missing or is not a string or an integer")
    value = str(raw)
    if not _is_token(value, MAX_MESSAGE_ID_CHARS):
        _reject("bad_field", f"id must be 1..{MAX_MESSAGE_ID_CHARS} printable characters")
    return value


def _timestamp(obj: dict[str, Any]) -> dt.datetime | None:
    raw = obj.get("ts")
    if raw is None:
        return None
    if not isinstance(raw, str) or _RFC3339_RE.fullmatch(raw) is None:
        _reject("bad_field", "ts must be an RFC 3339 date-time with an offset")
    text = raw.upper().replace(" ", "T")
    frac = re.search(r"\.([0-9]+)", text)
    if frac and len(frac.group(1)) > 6:
        # datetime keeps microseconds; drop the extra digits rather than reject nanoseconds.
        text = text[: frac.start(1) + 6] + text[frac.end(1) :]
    try:
        return dt.datetime.fromisoformat(text).astimezone(dt.UTC)
    except (ValueError, OverflowError):
        _reject("bad_field", "ts is not a valid date and time")


def _number(obj: dict[str, Any], key: str, low: float, high: float) -> float | None:
    raw = obj.get(key)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        _reject("bad_field", f"{key} must be a number")
    try:
        value = float(raw)
    except OverflowError:  # an integer literal too large for a float (e.g. 400 digits)
        _reject("bad_field", f"{key} must be within [{low:g}, {high:g}]")
    if not math.isfinite(value) or not low <= value <= high:
        _reject("bad_field", f"{key} must be within [{low:g}, {high:g}]")
    return value


def _id_field(obj: dict[str, Any], key: str) -> str | None:
    raw = obj.get(key)
    if raw is None:
        return None
    if not isinstance(raw, str) or not is_valid_id(raw):
        _reject("bad_field", f"{key} must be an id")
    return raw


def _token_field(obj: dict[str, Any], key: str, max_chars: int) -> str | None:
    raw = obj.get(key)
    if raw is None:
        return None
    if not isinstance(raw, str) or not _is_token(raw, max_chars):
        _reject("bad_field", f"{key} must be 1..{max_chars} printable characters")
    return raw


def _device_event(
    obj: dict[str, Any],
    device_id: str,
    msg_id: str,
    etype: str,
    ts: dt.datetime | None,
    received_at: dt.datetime,
) -> DeviceEvent:
    if etype not in DEVICE_EVENT_TYPES:
        _reject("unknown_type", "not a device event type")
    # Known fields are checked whenever present, so a malformed field is never silently lost.
    location = _id_field(obj, "location")
    planned = obj.get("planned_minutes")
    if planned is not None and (
        isinstance(planned, bool) or not isinstance(planned, int) or not 1 <= planned <= 1440
    ):
        _reject("bad_field", "planned_minutes must be an integer within [1, 1440]")
    battery = _number(obj, "battery", 0, 100)
    lat = _number(obj, "lat", -90, 90)
    lon = _number(obj, "lon", -180, 180)
    if (lat is None) != (lon is None):
        _reject("bad_field", "lat and lon must be given together")
    alarm = _token_field(obj, "alarm", MAX_MESSAGE_ID_CHARS)
    if etype == "session_start" and location is None:
        _reject("bad_field", "session_start needs a location")
    if etype == "low_battery" and battery is None:
        _reject("bad_field", "low_battery needs a battery level")
    return DeviceEvent(
        device_id=device_id,
        id=msg_id,
        type=etype,  # type: ignore[arg-type]  # checked against DEVICE_EVENT_TYPES above
        ts=ts,
        received_at=received_at,
        location=location,
        planned_minutes=planned,
        battery=battery,
        lat=lat,
        lon=lon,
        alarm=alarm,
    )


def _door_event(
    obj: dict[str, Any],
    door_id: str,
    msg_id: str,
    etype: str,
    ts: dt.datetime | None,
    received_at: dt.datetime,
) -> DoorEvent:
    if etype not in DOOR_EVENT_TYPES:
        _reject("unknown_type", "not a door event type")
    badge = _token_field(obj, "badge", 64)
    action = obj.get("action")
    if action is not None and action not in ("start", "end"):
        _reject("bad_field", "action must be start or end")
    if etype == "badge" and badge is None:
        _reject("bad_field", "a badge event needs a badge")
    return DoorEvent(
        door_id=door_id,
        id=msg_id,
        type=etype,  # type: ignore[arg-type]  # checked against DOOR_EVENT_TYPES above
        ts=ts,
        received_at=received_at,
        badge=badge,
        action=action,
    )
